//! Throughput of the value detectors over result-like text (run with `--release`).
//!
//! `cargo run --release -p querygate-mask --example bench_detect`

use std::time::Instant;

use querygate_mask::{Detector, DetectorKind, Strategy};

fn main() {
    // 1M cells shaped like query results: names, ids, amounts, dates, a few sensitive values.
    let cells: Vec<String> = (0..1_000_000u64)
        .map(|i| match i % 50 {
            0 => format!("user{i}@example.com"),
            1 => "4111 1111 1111 1111".to_string(),
            2 => format!("order {}", 100_000_000 + i),
            3 => format!("2024-01-{:02}T08:30:00Z", i % 28 + 1),
            _ => format!("Customer number {i} of segment {}", i % 7),
        })
        .collect();
    let bytes: usize = cells.iter().map(String::len).sum();
    let detector = Detector::new(&DetectorKind::ALL);
    for round in 0..3 {
        let t = Instant::now();
        let mut masked = 0usize;
        for c in &cells {
            if let std::borrow::Cow::Owned(_) = detector.mask(c, Strategy::Redact, b"k") {
                masked += 1;
            }
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "round {round}: {} cells, {:.1} MB, {masked} masked, {:.0} MB/s, {:.0} ns/cell",
            cells.len(),
            bytes as f64 / 1e6,
            bytes as f64 / 1e6 / s,
            s * 1e9 / cells.len() as f64
        );
    }
}
