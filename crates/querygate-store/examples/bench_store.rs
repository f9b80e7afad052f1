//! Store benchmark (not a test): durable appends per second with group commit, and
//! `verify` speed over the resulting log.
//!
//! ```sh
//! cargo run --release -p querygate-store --example bench_store -- [RECORDS] [WRITERS] [DIR]
//! ```
//! Defaults: 1,000,000 records from 256 concurrent writers, in a temp dir on the disk that
//! holds /tmp (it must be a real disk for `fdatasync` to mean anything). Each record is a
//! realistic decided record (~600 bytes of canonical JSON); every append is awaited, so each
//! one is on disk (journal `fdatasync`) when counted.

use std::sync::Arc;
use std::time::Instant;

use querygate_core::{AuditRecord, Phase};
use querygate_store::{AuditFilter, Reader, Store, Sync};

fn record(i: u64) -> AuditRecord {
    let mut r = AuditRecord::default_for("jobs.query", &format!("agent:{}", i % 50));
    // One record per millisecond from a fixed start, so `--since` ranges mean something.
    r.time = querygate_store::audit_time(
        time::OffsetDateTime::UNIX_EPOCH
            + time::Duration::milliseconds(1_790_000_000_000 + i as i64),
    );
    r.request_id = format!("qg-{i:032x}");
    r.phase = Phase::Decided;
    r.groups = vec!["agents".into()];
    r.kind = Some("agent".into());
    r.source = "analytics".into();
    r.statement = Some(format!(
        "SELECT customer_id, SUM(amount) AS total FROM `test-project.shop.orders` WHERE order_date >= '2026-01-01' AND region = 'eu-{}' GROUP BY customer_id ORDER BY total DESC LIMIT 100",
        i % 97
    ));
    r.decision = "allow".into();
    r.user_agent = Some("gcloud-python/3.27.0 gl-python/3.11.7".into());
    r.peer = Some("127.0.0.1:54321".into());
    r.statement_kinds = vec!["select".into()];
    r.tables = vec!["test-project.shop.orders".into()];
    r.rule = Some("read".into());
    r.policy_version = Some("0123456789abcdef".into());
    r
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: u64 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let writers: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(256);
    let dir = args.get(3).map_or_else(
        || std::env::temp_dir().join(format!("qg-bench-store-{}", std::process::id())),
        std::path::PathBuf::from,
    );
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("bench.db");
    let store = Arc::new(Store::open_with(&path, Sync::Full).expect("open"));
    let sample = record(1).canonical().len();

    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while i < n {
                store.append(record(i)).await.expect("append");
                i += writers;
            }
        }));
    }
    for t in tasks {
        t.await.expect("join");
    }
    let appended = started.elapsed();
    store.flush().await.expect("flush");
    let indexed = started.elapsed();
    drop(store);
    println!(
        "append: {n} records (~{sample} bytes each), {writers} writers, every append awaited (fdatasync): {:.2} s, {:.0} records/s (indexed in SQLite after {:.2} s)",
        appended.as_secs_f64(),
        n as f64 / appended.as_secs_f64(),
        indexed.as_secs_f64()
    );

    let started = Instant::now();
    let report = Reader::open(&path)
        .expect("reader")
        .verify()
        .expect("read")
        .expect("intact");
    let took = started.elapsed();
    println!(
        "verify: {} records in {:.2} s, {:.0} records/s",
        report.records,
        took.as_secs_f64(),
        report.records as f64 / took.as_secs_f64()
    );
    // Searches as an investigator runs them (`audit search`), over the whole log.
    let reader = Reader::open(&path).expect("reader");
    let last_minute = querygate_store::audit_time(
        time::OffsetDateTime::UNIX_EPOCH
            + time::Duration::milliseconds(1_790_000_000_000 + n as i64 - 60_000),
    );
    let searches: Vec<(&str, AuditFilter)> = vec![
        (
            "one identity (2 % of records)",
            AuditFilter {
                identity: Some("agent:7".into()),
                ..AuditFilter::default()
            },
        ),
        (
            "one identity, last minute",
            AuditFilter {
                identity: Some("agent:7".into()),
                since: Some(last_minute.clone()),
                ..AuditFilter::default()
            },
        ),
        (
            "everything in the last minute",
            AuditFilter {
                since: Some(last_minute),
                ..AuditFilter::default()
            },
        ),
        (
            "free text in the statement (1 % of records)",
            AuditFilter {
                text: Some("region = 'eu-42'".into()),
                ..AuditFilter::default()
            },
        ),
    ];
    for (name, filter) in searches {
        let started = Instant::now();
        let mut found = 0u64;
        reader
            .records(&filter, None, |_| found += 1)
            .expect("search");
        println!(
            "search: {name}: {found} records in {:.3} s",
            started.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let mut found = 0u64;
    reader
        .records(&AuditFilter::default(), Some(20), |_| found += 1)
        .expect("tail");
    println!(
        "search: tail -n 20: {found} records in {:.3} s",
        started.elapsed().as_secs_f64()
    );

    if args.get(3).is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
