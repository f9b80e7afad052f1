//! Property-style robustness test: thousands of inputs derived from the corpus by byte-level
//! mutation, truncation, token insertion and splicing (deterministic seed) go through `analyze`
//! in both dialects. Properties: no panic (the analyzer's internal-error path never fires), the
//! same facts on a second run, and facts that are internally consistent.
//!
//! `QUERYGATE_SQL_CASES=N` changes the number of generated inputs (default 4000).

use std::fs;
use std::path::Path;

use querygate_sql::{Facts, SqlDialect, StatementKind, analyze};

/// splitmix64: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    "(",
    ")",
    ",",
    ";",
    "*",
    ".",
    "`",
    "'",
    "\"",
    "$",
    "@",
    "@@",
    "::",
    "[",
    "]",
    "--",
    "/*",
    "*/",
    "$$",
    " SELECT ",
    " FROM ",
    " WHERE ",
    " WITH ",
    " AS ",
    " UNION ALL ",
    " JOIN ",
    " ON ",
    " USING ",
    " UNNEST(",
    " STRUCT(",
    " ARRAY(",
    " EXCEPT(",
    " REPLACE(",
    " OVER (",
    " PARTITION BY ",
    " ORDER BY ",
    " GROUP BY ",
    " QUALIFY ",
    " BEGIN ",
    " END ",
    " IF ",
    " THEN ",
    " DECLARE ",
    " SET ",
    " EXECUTE IMMEDIATE ",
    " INSERT INTO ",
    " DELETE ",
    " UPDATE ",
    " MERGE ",
    " CALL ",
    " COPY ",
    " INTO ",
    " LATERAL ",
    " RECURSIVE ",
    " FOR SYSTEM_TIME AS OF ",
    " t ",
    " ds.t ",
    " `p.ds.t$1` ",
    " x.* ",
    " NULL ",
    " 1 ",
    " CASE WHEN ",
    " ELSE ",
    " EXISTS(",
    " IN (",
    " NOT ",
    " AND ",
    " OR ",
    " || ",
    " -> ",
    "\u{0}",
    "\u{feff}",
    "é",
    "\\",
    "\n",
];

fn corpus() -> Vec<String> {
    let mut out = Vec::new();
    for dir in ["bigquery", "postgres"] {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/corpus")
            .join(dir);
        let mut paths: Vec<_> = fs::read_dir(&root)
            .expect("corpus directory")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        paths.sort();
        for p in paths {
            out.push(fs::read_to_string(p).expect("corpus file"));
        }
    }
    out
}

fn mutate(rng: &mut Rng, corpus: &[String]) -> String {
    let base = &corpus[rng.below(corpus.len())];
    let mut bytes = base.as_bytes().to_vec();
    let rounds = 1 + rng.below(4);
    for _ in 0..rounds {
        let len = bytes.len();
        match rng.below(7) {
            // truncate
            0 => bytes.truncate(rng.below(len + 1)),
            // flip a byte
            1 if len > 0 => {
                let i = rng.below(len);
                bytes[i] ^= 1 << rng.below(8);
            }
            // insert a token
            2 => {
                let i = rng.below(len + 1);
                let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                bytes.splice(i..i, t.iter().copied());
            }
            // delete a range
            3 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(16)).min(len);
                bytes.drain(i..j);
            }
            // duplicate a range
            4 if len > 0 => {
                let i = rng.below(len);
                let j = (i + 1 + rng.below(64)).min(len);
                let chunk: Vec<u8> = bytes[i..j].to_vec();
                let at = rng.below(bytes.len() + 1);
                bytes.splice(at..at, chunk);
            }
            // splice in part of another corpus file
            5 => {
                let other = corpus[rng.below(corpus.len())].as_bytes();
                let i = rng.below(other.len() + 1);
                let j = (i + rng.below(80)).min(other.len());
                let at = rng.below(bytes.len() + 1);
                bytes.splice(at..at, other[i..j].iter().copied());
            }
            // random byte
            _ => {
                let i = rng.below(len + 1);
                bytes.insert(i, (rng.next() & 0xff) as u8);
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn check(sql: &str, dialect: SqlDialect) {
    let facts = analyze(sql, dialect);
    let again = analyze(sql, dialect);
    assert_eq!(facts, again, "facts differ between runs for {sql:?}");
    consistent(&facts, sql);
}

fn consistent(f: &Facts, sql: &str) {
    let why = f.opaque.as_deref().unwrap_or("");
    assert!(
        !why.starts_with("internal error in the SQL analyzer"),
        "panic inside analyze for {sql:?}"
    );
    // Facts.opaque is set exactly when some statement is opaque or nothing was understood.
    let any_statement_opaque = f.statements.iter().any(|s| s.opaque.is_some());
    assert_eq!(
        f.opaque.is_some(),
        any_statement_opaque || f.statements.is_empty(),
        "{sql:?}: {f}"
    );
    if f.read_only() {
        assert!(f.kinds().all(|k| k == StatementKind::Select), "{sql:?}");
        assert!(f.writes().is_empty(), "{sql:?}");
    }
    for s in &f.statements {
        for t in s.reads.iter().chain(&s.writes) {
            assert!(!t.parts.is_empty(), "{sql:?}: empty table name");
        }
        let _ = f.to_string();
    }
}

#[test]
fn mutated_corpus_never_panics_and_is_deterministic() {
    let cases: usize = std::env::var("QUERYGATE_SQL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    let corpus = corpus();
    assert!(!corpus.is_empty());
    let mut rng = Rng(0x5157_4741_5445_0001);
    for original in &corpus {
        check(original, SqlDialect::BigQuery);
        check(original, SqlDialect::Postgres);
    }
    for _ in 0..cases {
        let sql = mutate(&mut rng, &corpus);
        check(&sql, SqlDialect::BigQuery);
        check(&sql, SqlDialect::Postgres);
    }
}
