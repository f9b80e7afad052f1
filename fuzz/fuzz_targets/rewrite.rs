//! Fuzz target: any UTF-8 text through the masking rewrite, with masks on the tables a
//! fuzzer's SQL most likely names. The rewrite must never panic (a caught panic is reported
//! as an internal error: also a finding), and whatever it returns changed must parse again
//! and be understood by the analyzer.
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use querygate_sql::{MaskedColumn, Masking, SqlDialect, analyze, mask_reads};

fuzz_target!(|data: &[u8]| {
    let Ok(sql) = std::str::from_utf8(data) else {
        return;
    };
    let columns = || {
        ["a", "b", "ssn", "email"]
            .iter()
            .map(|c| MaskedColumn {
                name: (*c).to_string(),
                mask: (*c != "a").then(|| "''".to_string()),
            })
            .collect::<Vec<_>>()
    };
    let tables: HashMap<String, Vec<MaskedColumn>> = ["p.ds.t", "p.ds.users", "p.crm.customers"]
        .iter()
        .map(|t| ((*t).to_string(), columns()))
        .collect();
    let m = Masking {
        dialect: SqlDialect::BigQuery,
        project: "p",
        dataset: Some("ds"),
        tables: &tables,
    };
    match mask_reads(sql, &m) {
        // `mask_reads` itself checks that every masked read is wrapped (a second pass).
        Ok(out) if out != sql => {
            assert!(analyze(&out, SqlDialect::BigQuery).opaque.is_none(), "{out}");
            assert!(out.contains("__qg_src"), "{out}");
        }
        Ok(_) => {}
        Err(why) => assert!(!why.starts_with("internal error"), "{why}"),
    }
});
