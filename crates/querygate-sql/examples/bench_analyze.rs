//! Times `analyze` on the ~2 KB BigQuery benchmark query of the corpus (2 CTEs,
//! ARRAY_AGG(STRUCT), COUNTIF, 25 CASE WHEN, QUALIFY) and, for comparison, sqlparser's parse
//! alone. Run in release: `cargo run --release -p querygate-sql --example bench_analyze`.
//! Prints microseconds per call; does nothing else.

use std::hint::black_box;
use std::time::{Duration, Instant};

use querygate_sql::{SqlDialect, analyze};
use sqlparser::dialect::BigQueryDialect;
use sqlparser::parser::Parser;

const SQL: &str = include_str!("../tests/corpus/bigquery/bench_2kb.sql");

/// Median and minimum time per call over `rounds` rounds of `per_round` calls.
fn time(rounds: usize, per_round: u32, mut f: impl FnMut()) -> (Duration, Duration) {
    for _ in 0..per_round {
        f();
    }
    let mut samples: Vec<Duration> = (0..rounds)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_round {
                f();
            }
            start.elapsed() / per_round
        })
        .collect();
    samples.sort();
    (samples[samples.len() / 2], samples[0])
}

fn main() {
    // An optional argument scales the work (e.g. `1` under valgrind).
    let per_round: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let facts = analyze(SQL, SqlDialect::BigQuery);
    assert!(facts.opaque.is_none(), "benchmark query must be understood");
    let (analyze_med, analyze_min) = time(30, per_round, || {
        black_box(analyze(black_box(SQL), SqlDialect::BigQuery));
    });
    let (parse_med, parse_min) = time(30, per_round, || {
        let _ = black_box(Parser::parse_sql(&BigQueryDialect {}, black_box(SQL)));
    });
    println!("query: {} bytes", SQL.len());
    println!(
        "analyze:          median {:>7.1} µs   min {:>7.1} µs",
        analyze_med.as_secs_f64() * 1e6,
        analyze_min.as_secs_f64() * 1e6
    );
    println!(
        "sqlparser parse:  median {:>7.1} µs   min {:>7.1} µs",
        parse_med.as_secs_f64() * 1e6,
        parse_min.as_secs_f64() * 1e6
    );
}
