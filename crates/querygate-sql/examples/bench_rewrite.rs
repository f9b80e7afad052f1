//! Measures the masking rewrite: `cargo run --release -p querygate-sql --example bench_rewrite`.
//! Prints microseconds per call for analyze alone and for mask_reads (which analyzes the
//! input, rewrites, re-parses and re-analyzes the output) on three statements.

use std::collections::HashMap;
use std::time::Instant;

use querygate_sql::{MaskedColumn, Masking, SqlDialect, analyze, mask_reads};

fn main() {
    let columns: Vec<MaskedColumn> = ["id", "name", "email", "ssn", "phone", "created"]
        .iter()
        .map(|c| MaskedColumn {
            name: (*c).into(),
            mask: matches!(*c, "email" | "ssn").then(|| format!("IF(`{c}` IS NULL, NULL, '')")),
        })
        .collect();
    let tables: HashMap<String, Vec<MaskedColumn>> = [("p.crm.customers".to_string(), columns)]
        .into_iter()
        .collect();
    let m = Masking {
        dialect: SqlDialect::BigQuery,
        project: "p",
        dataset: None,
        tables: &tables,
    };
    let statements = [
        "SELECT email FROM crm.customers WHERE id = 1",
        "WITH recent AS (SELECT id, email, created FROM crm.customers WHERE created > '2024-01-01') \
         SELECT r.email, COUNT(o.id) AS n FROM recent r JOIN sales.orders o ON o.customer_id = r.id \
         GROUP BY r.email ORDER BY n DESC LIMIT 100",
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/corpus/bigquery/bench_2kb.sql"
        ))
        .expect("corpus")
        .replace("ds.users", "crm.customers")
        .replace("WITH users", "WITH u2"),
    ];
    for sql in statements {
        let n = 2000;
        let t = Instant::now();
        for _ in 0..n {
            std::hint::black_box(analyze(sql, SqlDialect::BigQuery));
        }
        let a = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        let t = Instant::now();
        let mut ok = true;
        for _ in 0..n {
            ok &= std::hint::black_box(mask_reads(sql, &m)).is_ok();
        }
        let r = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        println!(
            "{:>5} bytes: analyze {a:7.1} µs, mask_reads {r:7.1} µs ({})",
            sql.len(),
            if ok { "rewritten" } else { "refused" }
        );
    }
}
