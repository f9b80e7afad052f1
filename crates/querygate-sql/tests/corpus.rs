//! Snapshot tests: every `tests/corpus/{bigquery,postgres}/*.sql` is analyzed and its facts,
//! rendered with `Display`, must equal the `.facts` file beside it.
//!
//! To accept changed facts run `UPDATE_SNAPSHOTS=1 cargo test -p querygate-sql --test corpus`
//! and review every changed `.facts` file by eye: a snapshot that records a wrong fact is a bug.
//! A `.sql` without a `.facts` file fails until its snapshot is written and reviewed. This test
//! reads files; the crate under test does no IO.

use std::fs;
use std::path::{Path, PathBuf};

use querygate_sql::{SqlDialect, analyze};

fn corpus(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut files: Vec<PathBuf> = fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    files
}

fn check(dir: &str, dialect: SqlDialect) {
    let update = std::env::var_os("UPDATE_SNAPSHOTS").is_some();
    let mut failures = Vec::new();
    let files = corpus(dir);
    assert!(!files.is_empty(), "no corpus files in {dir}");
    for sql_path in files {
        let sql = fs::read_to_string(&sql_path).expect("read corpus file");
        let facts = analyze(&sql, dialect);
        let again = analyze(&sql, dialect);
        assert_eq!(
            facts,
            again,
            "{}: facts differ between runs",
            sql_path.display()
        );
        let rendered = facts.to_string();
        assert!(
            !rendered.contains("opaque: internal error in the SQL analyzer"),
            "{}: {rendered}",
            sql_path.display()
        );
        let facts_path = sql_path.with_extension("facts");
        let expected = fs::read_to_string(&facts_path).ok();
        if expected.as_deref() == Some(rendered.as_str()) {
            continue;
        }
        if update {
            fs::write(&facts_path, &rendered).expect("write snapshot");
            continue;
        }
        failures.push(format!(
            "{}\n--- expected\n{}--- actual\n{}",
            sql_path.display(),
            expected.unwrap_or_else(|| "(no snapshot)\n".into()),
            rendered
        ));
    }
    assert!(
        failures.is_empty(),
        "{} snapshot(s) differ (UPDATE_SNAPSHOTS=1 to accept after review):\n\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn bigquery_corpus() {
    check("bigquery", SqlDialect::BigQuery);
}

#[test]
fn postgres_corpus() {
    check("postgres", SqlDialect::Postgres);
}
