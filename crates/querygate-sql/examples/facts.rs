//! Prints the facts `analyze` reports for SQL read from stdin: `cargo run -p querygate-sql
//! --example facts -- [bigquery|postgres] < query.sql`. A debugging aid; no IO beyond stdin/stdout.

use std::io::{Read, Write};

use querygate_sql::{SqlDialect, analyze};

fn main() {
    let dialect = match std::env::args().nth(1).as_deref() {
        Some("postgres" | "pg") => SqlDialect::Postgres,
        _ => SqlDialect::BigQuery,
    };
    let mut sql = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut sql) {
        eprintln!("cannot read stdin: {e}");
        std::process::exit(2);
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    let _ = write!(std::io::stdout(), "{}", analyze(&sql, dialect));
}
