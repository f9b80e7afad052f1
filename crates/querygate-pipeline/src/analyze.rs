//! The analyze stage: facts from SQL text in the source's dialect ([`Analyses`], the
//! memory of statements seen recently), and what policy sees of them ([`Subject`]).
//!
//! `querygate_sql::analyze` is a pure function of the text, and the same statements come
//! back again and again (an agent's retries, a dashboard's refresh, a CI job's checks), so
//! its answer is kept, as pgdog keeps parsed statements. Parsing and walking a short SELECT
//! costs tens of microseconds, a lookup well under one. Facts are kept as analyzed, and
//! beside them as a few default schemas resolve them (PostgreSQL's `public` for every
//! statement of a source, a BigQuery request's default dataset): a hit hands out the
//! shared facts, never a copy.
//!
//! Bounded two ways: statements longer than [`MAX_TEXT`] are never kept, and the entries
//! live in two generations of at most [`GENERATION`] each. A hit in the older generation
//! moves to the newer; when the newer fills, the older is dropped and the newer takes its
//! place — an approximate LRU with no per-hit bookkeeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use querygate_core::{Denial, DenialKind};
use querygate_policy::{StatementKind, TableUse};
use querygate_sql::{Facts, SqlDialect, analyze};

/// Longest statement kept, in bytes.
const MAX_TEXT: usize = 4 * 1024;
/// Entries per generation.
const GENERATION: usize = 512;
/// Default schemas kept per statement (more are applied to a copy each time).
const DEFAULTS: usize = 4;

/// One memory per dialect (the same text can mean different things in two), and beside
/// each one of statements by their shape ([`querygate_sql::shape`]: the numbers they
/// compare against taken out; kept apart, so that no text can stand for a shape).
#[derive(Debug, Default)]
pub(crate) struct Analyses {
    bigquery: Mutex<Generations>,
    postgres: Mutex<Generations>,
    bigquery_shapes: Mutex<Generations>,
    postgres_shapes: Mutex<Generations>,
}

#[derive(Debug, Default)]
struct Generations {
    newer: HashMap<Box<str>, Remembered>,
    older: HashMap<Box<str>, Remembered>,
}

/// One statement's facts, as analyzed and under the default schemas it was asked with.
#[derive(Debug)]
struct Remembered {
    plain: Arc<Facts>,
    under: Vec<(Box<str>, Arc<Facts>)>,
}

/// What a memory holds of a statement.
enum Found {
    /// Its facts as asked for.
    Facts(Arc<Facts>),
    /// Its facts as analyzed: the default schema asked for is still to be applied.
    Plain(Arc<Facts>),
}

impl Generations {
    /// Puts an entry in the newer generation, turning the generations over when it is full.
    fn keep(&mut self, text: Box<str>, facts: Remembered) {
        if self.newer.len() >= GENERATION {
            self.older = std::mem::take(&mut self.newer);
        }
        self.newer.insert(text, facts);
    }

    /// What is kept under `key` (a hit in the older generation moves to the newer).
    fn find(&mut self, key: &str, default: Option<&str>) -> Option<Found> {
        if !self.newer.contains_key(key)
            && let Some((text, facts)) = self.older.remove_entry(key)
        {
            self.keep(text, facts);
        }
        let known = self.newer.get(key)?;
        let found = match default {
            None => Some(&known.plain),
            Some(d) => known.under.iter().find(|(s, _)| &**s == d).map(|(_, f)| f),
        };
        Some(match found {
            Some(facts) => Found::Facts(Arc::clone(facts)),
            None => Found::Plain(Arc::clone(&known.plain)),
        })
    }

    /// `plain` under `default` when one is given, kept beside the entry under `key`.
    fn resolved(&mut self, key: &str, plain: Arc<Facts>, default: Option<&str>) -> Arc<Facts> {
        let Some(d) = default else {
            return plain;
        };
        let facts = under(&plain, d);
        if let Some(known) = self.newer.get_mut(key)
            && known.under.len() < DEFAULTS
        {
            known.under.push((d.into(), Arc::clone(&facts)));
        }
        facts
    }
}

/// `facts` with one-part names resolved in `default`.
fn under(facts: &Facts, default: &str) -> Arc<Facts> {
    let mut facts = facts.clone();
    facts.with_default_dataset(default);
    Arc::new(facts)
}

impl Analyses {
    /// The facts of a statement in `dialect`, its one-part table names in `default` when
    /// one is given, from memory when it (or one of its shape) was analyzed recently.
    pub(crate) fn of(&self, sql: &str, dialect: SqlDialect, default: Option<&str>) -> Arc<Facts> {
        if sql.len() > MAX_TEXT {
            let facts = analyze(sql, dialect);
            return match default {
                Some(d) => under(&facts, d),
                None => Arc::new(facts),
            };
        }
        {
            let mut g = self.lock(dialect, false);
            match g.find(sql, default) {
                Some(Found::Facts(facts)) => return facts,
                Some(Found::Plain(plain)) => return g.resolved(sql, plain, default),
                None => {}
            }
        }
        let shape = querygate_sql::shape(sql);
        if let Some(key) = &shape {
            let mut g = self.lock(dialect, true);
            match g.find(key, default) {
                Some(Found::Facts(facts)) => return facts,
                Some(Found::Plain(plain)) => return g.resolved(key, plain, default),
                None => {}
            }
        }
        // Analyzed outside the lock: two requests with a new statement may both analyze
        // it, and the same facts are kept either way. A statement kept by its shape is one
        // analyzed whole (what cannot be parsed is kept by its text: its error's position
        // is its own).
        let plain = Arc::new(analyze(sql, dialect));
        let shape = shape.filter(|_| plain.opaque.is_none() && plain.syntax_error.is_none());
        let mut g = self.lock(dialect, shape.is_some());
        let key: Box<str> = shape.map_or_else(|| sql.into(), String::into_boxed_str);
        g.keep(
            key.clone(),
            Remembered {
                plain: Arc::clone(&plain),
                under: Vec::new(),
            },
        );
        g.resolved(&key, plain, default)
    }

    fn lock(&self, dialect: SqlDialect, shapes: bool) -> std::sync::MutexGuard<'_, Generations> {
        let generations = match (dialect, shapes) {
            (SqlDialect::BigQuery, false) => &self.bigquery,
            (SqlDialect::Postgres, false) => &self.postgres,
            (SqlDialect::BigQuery, true) => &self.bigquery_shapes,
            (SqlDialect::Postgres, true) => &self.postgres_shapes,
        };
        // The maps hold no invariant a panicking holder could break halfway.
        generations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        [SqlDialect::BigQuery, SqlDialect::Postgres]
            .into_iter()
            .map(|d| {
                [false, true]
                    .into_iter()
                    .map(|shapes| {
                        let g = self.lock(d, shapes);
                        g.newer.len() + g.older.len()
                    })
                    .sum::<usize>()
            })
            .sum()
    }
}

/// What policy sees of a request: statement kinds, tables, and whether it was understood.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub kinds: Vec<StatementKind>,
    pub tables: Vec<TableUse>,
    pub opaque: Option<String>,
}

impl Subject {
    /// From SQL facts; table names are qualified with the source's project. Each
    /// statement's reads are kept apart, each with the columns that bound *every* read of
    /// the table in that statement (a predicate that bounds one read, or that does not
    /// bound at all, such as `IS NOT NULL`, filters nothing), so a filtered read never
    /// hides an unfiltered one. Names that differ only in case are one table.
    pub fn of(facts: &Facts, project: &str) -> Subject {
        let mut tables: Vec<TableUse> = Vec::new();
        for st in &facts.statements {
            let mut reads: Vec<TableUse> = Vec::new();
            for t in &st.reads {
                let name = t.qualified(project);
                if reads
                    .iter()
                    .any(|r| querygate_sql::same_name(&r.name, &name))
                {
                    continue;
                }
                let filtered = st.filtered(&name, project);
                reads.push(TableUse {
                    name,
                    write: false,
                    filtered,
                });
            }
            tables.extend(reads);
            for t in &st.writes {
                let name = t.qualified(project);
                if !tables
                    .iter()
                    .any(|u| u.write && querygate_sql::same_name(&u.name, &name))
                {
                    tables.push(TableUse {
                        name,
                        write: true,
                        filtered: vec![],
                    });
                }
            }
        }
        // A SELECT that calls a side-effecting function (nextval, pg_terminate_backend, …) or
        // takes row locks is not a read: rules see it as `other`, which no read rule allows.
        let kinds = facts
            .statements
            .iter()
            .map(|st| {
                let read = st.read_only() || st.opaque.is_some();
                if st.kind == StatementKind::Select && !read {
                    StatementKind::Other
                } else {
                    st.kind
                }
            })
            .collect();
        Subject {
            kinds,
            tables,
            opaque: facts.opaque.clone(),
        }
    }

    /// A direct read of a stored table's rows: a SELECT with no filter.
    pub fn table_read(table: &str) -> Subject {
        Subject {
            kinds: vec![StatementKind::Select],
            tables: vec![TableUse {
                name: table.to_string(),
                write: false,
                filtered: vec![],
            }],
            opaque: None,
        }
    }
}

/// The denial for SQL the parser rejected: BigQuery's `Syntax error: … at [line:column]`.
pub(crate) fn syntax_error(facts: Option<&Facts>) -> Option<Denial> {
    let e = facts?.syntax_error.as_ref()?;
    let at = match (e.line, e.column) {
        (Some(l), Some(c)) => format!(" at [{l}:{c}]"),
        (Some(l), None) => format!(" at [{l}]"),
        _ => String::new(),
    };
    Some(Denial::new(
        DenialKind::Invalid,
        format!(
            "Syntax error: {}{at} (querygate's SQL parser rejects the statement; nothing was \
             run)",
            e.message
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remembered_statement_has_the_facts_of_a_fresh_analysis() {
        let analyses = Analyses::default();
        for sql in [
            "SELECT email FROM shop.customers",
            "DELETE FROM shop.orders WHERE TRUE",
            "SELECT 1; DROP TABLE shop.orders",
            "SELEC nonsense (",
        ] {
            let fresh = analyze(sql, SqlDialect::BigQuery);
            assert_eq!(
                *analyses.of(sql, SqlDialect::BigQuery, None),
                fresh,
                "first time: {sql}"
            );
            assert_eq!(
                *analyses.of(sql, SqlDialect::BigQuery, None),
                fresh,
                "remembered: {sql}"
            );
        }
        assert_eq!(analyses.len(), 4);
    }

    #[test]
    fn a_default_dataset_applied_to_one_request_does_not_reach_the_next() {
        let analyses = Analyses::default();
        let sql = "SELECT email FROM customers";
        let mut expected = analyze(sql, SqlDialect::BigQuery);
        expected.with_default_dataset("shop");
        for _ in 0..2 {
            let first = analyses.of(sql, SqlDialect::BigQuery, Some("shop"));
            assert_eq!(*first, expected);
            assert_eq!(
                *analyses.of(sql, SqlDialect::BigQuery, None),
                analyze(sql, SqlDialect::BigQuery)
            );
        }
        // Remembered under its default: the same facts are handed out, not a copy.
        assert!(Arc::ptr_eq(
            &analyses.of(sql, SqlDialect::BigQuery, Some("shop")),
            &analyses.of(sql, SqlDialect::BigQuery, Some("shop"))
        ));
        let mut other = analyze(sql, SqlDialect::BigQuery);
        other.with_default_dataset("crm");
        assert_eq!(*analyses.of(sql, SqlDialect::BigQuery, Some("crm")), other);
    }

    #[test]
    fn statements_of_one_shape_are_analyzed_once() {
        let analyses = Analyses::default();
        let a = "SELECT abalance FROM pgbench_accounts WHERE aid = 12345";
        let b = "SELECT abalance FROM pgbench_accounts WHERE aid = 7";
        let first = analyses.of(a, SqlDialect::Postgres, Some("public"));
        let second = analyses.of(b, SqlDialect::Postgres, Some("public"));
        assert!(Arc::ptr_eq(&first, &second), "one analysis for both");
        let mut expected = analyze(b, SqlDialect::Postgres);
        expected.with_default_dataset("public");
        assert_eq!(*second, expected);
        assert_eq!(analyses.len(), 1);
        // Text that does not parse is kept by its text: its error is its own.
        let bad = |n: u32| format!("SELECT abalance FROM WHERE aid = {n}");
        analyses.of(&bad(1), SqlDialect::Postgres, None);
        assert_eq!(
            *analyses.of(&bad(123456), SqlDialect::Postgres, None),
            analyze(&bad(123456), SqlDialect::Postgres)
        );
        assert_eq!(analyses.len(), 3);
    }

    #[test]
    fn statements_differing_in_any_byte_are_analyzed_apart() {
        let analyses = Analyses::default();
        let select = analyses.of("SELECT * FROM a.t", SqlDialect::BigQuery, None);
        let delete = analyses.of("DELETE FROM a.t WHERE TRUE", SqlDialect::BigQuery, None);
        assert_ne!(select, delete);
        assert_eq!(
            *analyses.of("SELECT * FROM a.u", SqlDialect::BigQuery, None),
            analyze("SELECT * FROM a.u", SqlDialect::BigQuery)
        );
    }

    #[test]
    fn memory_stays_within_two_generations_and_long_statements_are_not_kept() {
        let analyses = Analyses::default();
        for i in 0..(GENERATION * 5) {
            analyses.of(&format!("SELECT {i} FROM a.t"), SqlDialect::BigQuery, None);
        }
        assert!(
            analyses.len() <= 2 * GENERATION,
            "{} entries",
            analyses.len()
        );
        // A recent statement is still remembered; the oldest are gone.
        let g = analyses.lock(SqlDialect::BigQuery, false);
        let last = format!("SELECT {} FROM a.t", GENERATION * 5 - 1);
        assert!(g.newer.contains_key(last.as_str()));
        assert!(
            !g.newer.contains_key("SELECT 0 FROM a.t")
                && !g.older.contains_key("SELECT 0 FROM a.t")
        );
        drop(g);

        let long = format!("SELECT '{}' FROM a.t", "x".repeat(MAX_TEXT));
        let before = analyses.len();
        assert_eq!(
            *analyses.of(&long, SqlDialect::BigQuery, None),
            analyze(&long, SqlDialect::BigQuery)
        );
        assert_eq!(analyses.len(), before);
    }

    #[test]
    fn a_hit_in_the_older_generation_survives_the_next_turnover() {
        let analyses = Analyses::default();
        analyses.of("SELECT kept FROM a.t", SqlDialect::BigQuery, None);
        for i in 0..GENERATION {
            analyses.of(&format!("SELECT {i} FROM a.t"), SqlDialect::BigQuery, None);
        }
        // Now in the older generation; a hit moves it to the newer one.
        analyses.of("SELECT kept FROM a.t", SqlDialect::BigQuery, None);
        for i in GENERATION..(2 * GENERATION - 2) {
            analyses.of(&format!("SELECT {i} FROM a.t"), SqlDialect::BigQuery, None);
        }
        let g = analyses.lock(SqlDialect::BigQuery, false);
        assert!(
            g.newer.contains_key("SELECT kept FROM a.t")
                || g.older.contains_key("SELECT kept FROM a.t")
        );
    }
}
