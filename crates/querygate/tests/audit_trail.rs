//! The audit trail made tamper-evident end to end, through the binary: signed checkpoints
//! (every N records and at a clean stop), the public key written beside the signing key,
//! `audit verify` checking signatures, and a checkpoint file kept apart catching a log
//! whose tail was cut.

mod support;

use serde_json::{Value, json};
use support::*;

async fn run(g: &Gateway, sql: &str) -> u16 {
    reqwest::Client::new()
        .post(format!(
            "{}/bigquery/v2/projects/test-project/queries",
            g.url()
        ))
        .bearer_auth(KEY)
        .json(&json!({"query": sql, "useLegacySql": false}))
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

fn verify(g: &Gateway, extra: &[&str]) -> (i32, Value, String) {
    let mut args = vec!["audit", "verify", "--json"];
    args.extend_from_slice(extra);
    let (code, out) = g.cli(&args);
    let v = serde_json::from_str(out.trim()).unwrap_or(Value::Null);
    (code, v, out)
}

#[tokio::test]
async fn checkpoints_are_signed_verified_and_catch_a_cut_tail() {
    let up = Recorder::start(|_| (200, query_response("job-a", 2))).await;
    let top = "[audit]\ncheckpoint_every = 3\ncheckpoint_file = \"checkpoints.jsonl\"\n";
    let mut g = Gateway::start_with(
        "checkpoints",
        top,
        "",
        &bigquery_source(&up.url(), "\"none\""),
    )
    .await;
    for i in 0..5 {
        assert_eq!(run(&g, &format!("SELECT {i}")).await, 200);
    }
    // A clean stop signs everything written.
    g.restart().await;

    let (code, report, out) = verify(&g, &[]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(report["ok"], true, "{out}");
    assert!(
        report["checkpoints"].as_u64().is_some_and(|n| n >= 3),
        "{out}"
    );
    assert_eq!(report["unsigned_tail"], 0, "{out}");
    assert!(
        report["external_checkpoints"]
            .as_u64()
            .is_some_and(|n| n >= 3),
        "{out}"
    );
    let dir = g.db().parent().expect("dir").to_path_buf();
    let public = std::fs::read_to_string(dir.join("querygate.db.key.pub")).expect("public key");
    assert_eq!(public.trim().len(), 64, "hex Ed25519 public key");
    let lines = std::fs::read_to_string(dir.join("checkpoints.jsonl")).expect("checkpoint file");
    assert!(lines.lines().all(|l| l.contains(public.trim())), "{lines}");

    // An auditor with only the public key: the same answer; with another key: refused.
    let (code, _, out) = verify(&g, &["--public-key", public.trim()]);
    assert_eq!(code, 0, "{out}");
    let other = "11".repeat(32);
    let (code, report, out) = verify(&g, &["--public-key", &other]);
    assert_eq!(code, 1, "{out}");
    assert!(
        report["problem"]
            .as_str()
            .is_some_and(|p| p.contains("signed with key")),
        "{out}"
    );

    // Cutting the tail leaves a valid chain, but the checkpoint file remembers more.
    let conn = rusqlite::Connection::open(g.db()).expect("open");
    conn.execute_batch(
        "DROP TRIGGER audit_no_delete;
         DELETE FROM audit_log WHERE seq > (SELECT max(seq) - 4 FROM audit_log);",
    )
    .expect("cut");
    let (code, report, out) = verify(&g, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        report["problem"]
            .as_str()
            .is_some_and(|p| p.contains("cut from the end")),
        "{out}"
    );
}

/// The export sink: every record reaches the webhook in order, once, through an outage
/// (503s) and a gateway restart, and the stream is a verifiable chain.
#[tokio::test]
async fn the_export_sink_resumes_after_an_outage_and_a_restart_without_loss_or_duplicates() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let up = Recorder::start(|_| (200, query_response("job-e", 1))).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let accepted: Arc<std::sync::Mutex<Vec<Value>>> = Arc::default();
    let sink = {
        let (calls, accepted) = (calls.clone(), accepted.clone());
        Recorder::start(move |r| {
            // Down for the first three deliveries.
            if calls.fetch_add(1, Ordering::SeqCst) < 3 {
                return (503, "{}".into());
            }
            let mut got = accepted.lock().expect("lock");
            for line in String::from_utf8_lossy(&r.body).lines() {
                got.push(serde_json::from_str(line).expect("json line"));
            }
            (200, "{}".into())
        })
        .await
    };
    let top = format!(
        "[export]\nwebhook = \"{}/collect\"\nbatch = 4\ninterval = \"1s\"\n",
        sink.url()
    );
    let mut g =
        Gateway::start_with("export", &top, "", &bigquery_source(&up.url(), "\"none\"")).await;
    for i in 0..4 {
        assert_eq!(run(&g, &format!("SELECT {i}")).await, 200);
    }
    g.restart().await;
    for i in 4..7 {
        assert_eq!(run(&g, &format!("SELECT {i}")).await, 200);
    }
    // Wait until the sink holds everything the log holds.
    let total = || {
        let (code, out) = g.cli(&["audit", "export", "--format", "jsonl"]);
        assert_eq!(code, 0);
        out.lines().count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let want = total();
        let have = accepted.lock().expect("lock").len();
        if have >= want && want > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the sink has {have} of {want} records:\n{}",
            g.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let got = accepted.lock().expect("lock").clone();
    let seqs: Vec<u64> = got.iter().filter_map(|r| r["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every record once, in order"
    );
    for pair in got.windows(2) {
        assert_eq!(
            pair[1]["prev_hash"], pair[0]["hash"],
            "the stream is the chain"
        );
    }
    assert!(got.iter().any(|r| r["statement"] == "SELECT 6"));
    assert!(calls.load(Ordering::SeqCst) >= 4, "the outage was retried");
    let log = g.log();
    assert!(log.contains("export: the sink answered HTTP 503"), "{log}");
    assert!(
        !log.contains("/collect"),
        "the webhook's path never reaches the log"
    );
    // Each delivery names its range, for a receiver to drop a batch it already has.
    let delivered = sink.requests();
    let ok = delivered.last().expect("a delivery");
    assert!(ok.headers.get("idempotency-key").is_some());
    assert_eq!(
        ok.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/x-ndjson")
    );
}

/// A crash (SIGKILL) in the middle of a stream of concurrent requests: every request the
/// upstream saw has its decided record, and the log verifies, before and after a restart
/// indexes what the crash left in the journal.
#[tokio::test]
async fn a_crash_mid_stream_leaves_a_decided_record_for_everything_the_upstream_saw() {
    let up = Recorder::start(|_| (200, query_response("job-k", 1))).await;
    let mut g = Gateway::start_with("crash", "", "", &bigquery_source(&up.url(), "\"none\"")).await;
    let url = g.url();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0.. {
                let sql = format!("SELECT {worker} AS w, {i} AS i");
                let sent = client
                    .post(format!("{url}/bigquery/v2/projects/test-project/queries"))
                    .bearer_auth(KEY)
                    .json(&json!({"query": sql, "useLegacySql": false}))
                    .send()
                    .await;
                if sent.is_err() {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    g.kill();
    for t in tasks {
        let _ = t.await;
    }
    let forwarded: Vec<String> = up
        .requests()
        .iter()
        .filter_map(|r| serde_json::from_slice::<Value>(&r.body).ok())
        .filter_map(|b| b["query"].as_str().map(str::to_string))
        .collect();
    assert!(
        forwarded.len() > 50,
        "the stream was too short: {}",
        forwarded.len()
    );
    let decided = |g: &Gateway| -> std::collections::HashSet<String> {
        let (code, out) = g.cli(&["audit", "search", "--json"]);
        assert_eq!(code, 0, "{out}");
        out.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["phase"] == "decided" && r["decision"] == "allow")
            .filter_map(|r| r["statement"].as_str().map(str::to_string))
            .collect()
    };
    // Read with the gateway down: SQLite and the journal the crash left.
    let before = decided(&g);
    let missing: Vec<_> = forwarded.iter().filter(|s| !before.contains(*s)).collect();
    assert!(
        missing.is_empty(),
        "forwarded without a decided record: {missing:?}"
    );
    assert_eq!(g.cli(&["audit", "verify"]).0, 0);
    // A restart indexes the journal; nothing is lost and the chain goes on.
    g.restart().await;
    let after = decided(&g);
    assert!(before.is_subset(&after));
    assert_eq!(run(&g, "SELECT 'after the crash'").await, 200);
    let (code, out) = g.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}
