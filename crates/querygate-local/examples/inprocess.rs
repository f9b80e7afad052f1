//! The in-process baseline of bench/local.py: the engine called directly (no HTTP, no gateway)
//! on the demo's data, running the benchmark's queries and paging their results as the REST
//! surface would. Prints one JSON object of timings.
//!
//! `cargo run --release -p querygate-local --example inprocess -- querygate-demo [repeats]`

use std::path::PathBuf;
use std::time::Instant;

use querygate_local::engine::{Engine, QueryRequest, TableSpec};
use querygate_local::values::Format;

const FULL_SCAN: &str = "SELECT * FROM shop.events";
const AGGREGATE: &str = "SELECT page, device, COUNT(*) AS views, SUM(duration_ms) AS ms, MAX(event_time) AS last_seen FROM shop.events GROUP BY page, device";

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "querygate-demo".into()));
    let repeats: usize = args.next().and_then(|r| r.parse().ok()).unwrap_or(3);
    let engine = match Engine::open(
        "demo",
        &[TableSpec {
            dataset: "shop".into(),
            table: "events".into(),
            pattern: dir.join("data/events.parquet"),
        }],
    ) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("inprocess: {e}");
            std::process::exit(1);
        }
    };
    let mut out = serde_json::Map::new();
    for (name, sql) in [("full_scan", FULL_SCAN), ("aggregate", AGGREGATE)] {
        let mut best = f64::MAX;
        let mut rows = 0;
        for _ in 0..repeats {
            let started = Instant::now();
            rows = run(&engine, sql);
            best = best.min(started.elapsed().as_secs_f64());
        }
        out.insert(format!("{name}_s"), serde_json::json!(best));
        out.insert(format!("{name}_rows"), serde_json::json!(rows));
    }
    println!("{}", serde_json::Value::Object(out));
}

/// Runs a query as a job and reads every page, as a client paging getQueryResults would.
fn run(engine: &Engine, sql: &str) -> u64 {
    let job = engine.run(&QueryRequest {
        sql: sql.into(),
        ..Default::default()
    });
    let result = match job.outcome {
        Ok(r) => r,
        Err(e) => {
            eprintln!("inprocess: {sql}: {e}");
            std::process::exit(1);
        }
    };
    let mut start = 0;
    let mut rows = 0;
    loop {
        let page = match engine.result_page(&result, start, None, Format::default(), None) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("inprocess: page at {start}: {e}");
                std::process::exit(1);
            }
        };
        // The page is serialized JSON already, as the REST surface sends it.
        std::hint::black_box(&page.rows);
        rows += page.count;
        match page.next {
            Some(n) => start = n,
            None => return rows,
        }
    }
}
