//! Fuzz target: any UTF-8 text through `analyze` in both dialects. A panic anywhere (even one the
//! analyzer would catch and report as an internal error) aborts and is a finding; so are facts
//! that differ between two runs on the same input. No IO.
#![no_main]

use libfuzzer_sys::fuzz_target;
use querygate_sql::{SqlDialect, analyze};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    for dialect in [SqlDialect::BigQuery, SqlDialect::Postgres] {
        let first = analyze(sql, dialect);
        let second = analyze(sql, dialect);
        assert_eq!(first, second, "facts differ between runs");
        assert!(
            !first
                .opaque
                .as_deref()
                .unwrap_or("")
                .starts_with("internal error in the SQL analyzer"),
            "the analyzer caught a panic"
        );
    }
});
