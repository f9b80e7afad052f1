//! SQL analysis: SQL text in, [`Facts`] out. Pure and total.
//!
//! Parsing never fails from the caller's point of view: text the grammar cannot
//! read becomes `Facts { opaque: Some(why), .. }`, and policy decides what opaque
//! SQL gets (the default is deny). This crate must not do IO and must not panic on
//! any input; it knows nothing of identities or policy.
//!
//! Today it classifies each statement of a script; table, column and lineage facts
//! come with the policy work.

use sqlparser::ast::Statement;
use sqlparser::dialect::{BigQueryDialect, Dialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

/// Which SQL dialect to parse with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    BigQuery,
    Postgres,
}

/// The kind of one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatementKind {
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    Create,
    Drop,
    Alter,
    Truncate,
    Grant,
    Export,
    Copy,
    Call,
    Other,
}

impl StatementKind {
    pub fn name(self) -> &'static str {
        match self {
            StatementKind::Select => "select",
            StatementKind::Insert => "insert",
            StatementKind::Update => "update",
            StatementKind::Delete => "delete",
            StatementKind::Merge => "merge",
            StatementKind::Create => "create",
            StatementKind::Drop => "drop",
            StatementKind::Alter => "alter",
            StatementKind::Truncate => "truncate",
            StatementKind::Grant => "grant",
            StatementKind::Export => "export",
            StatementKind::Copy => "copy",
            StatementKind::Call => "call",
            StatementKind::Other => "other",
        }
    }
}

/// What the gateway knows about a piece of SQL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// One entry per statement of the script, in order.
    pub statements: Vec<StatementKind>,
    /// Set when the text could not be fully understood, with the reason.
    pub opaque: Option<String>,
}

impl Facts {
    /// The kind of every statement, in order.
    pub fn kinds(&self) -> impl Iterator<Item = StatementKind> + '_ {
        self.statements.iter().copied()
    }

    /// True when every statement only reads.
    pub fn read_only(&self) -> bool {
        self.opaque.is_none()
            && !self.statements.is_empty()
            && self.statements.iter().all(|k| *k == StatementKind::Select)
    }
}

/// Analyzes SQL text. Never panics, never errors.
pub fn analyze(sql: &str, dialect: SqlDialect) -> Facts {
    let d: &dyn Dialect = match dialect {
        SqlDialect::BigQuery => &BigQueryDialect {},
        SqlDialect::Postgres => &PostgreSqlDialect {},
    };
    match Parser::parse_sql(d, sql) {
        Ok(statements) if statements.is_empty() => Facts {
            statements: vec![],
            opaque: Some("the text holds no SQL statement".into()),
        },
        Ok(statements) => Facts {
            statements: statements.iter().map(kind_of).collect(),
            opaque: None,
        },
        Err(e) => Facts {
            statements: vec![],
            opaque: Some(format!("querygate cannot parse this SQL: {e}")),
        },
    }
}

fn kind_of(statement: &Statement) -> StatementKind {
    use StatementKind as K;
    match statement {
        Statement::Query(q) => {
            // `WITH … INSERT/UPDATE` parses as a query whose body is a write.
            use sqlparser::ast::SetExpr;
            match q.body.as_ref() {
                SetExpr::Insert(_) => K::Insert,
                SetExpr::Update(_) => K::Update,
                SetExpr::Delete(_) => K::Delete,
                SetExpr::Merge(_) => K::Merge,
                _ => K::Select,
            }
        }
        Statement::Insert(_) => K::Insert,
        Statement::Update(_) => K::Update,
        Statement::Delete(_) => K::Delete,
        Statement::Merge(_) => K::Merge,
        Statement::CreateTable(_)
        | Statement::CreateView(_)
        | Statement::CreateIndex(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction(_)
        | Statement::CreateProcedure { .. } => K::Create,
        Statement::Drop { .. } | Statement::DropFunction(_) => K::Drop,
        Statement::AlterTable(_) | Statement::AlterView { .. } => K::Alter,
        Statement::Truncate(_) => K::Truncate,
        Statement::Grant(_) | Statement::Revoke(_) => K::Grant,
        Statement::ExportData(_) => K::Export,
        Statement::Copy { .. } => K::Copy,
        Statement::Call(_) => K::Call,
        _ => K::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use StatementKind as K;

    fn check(sql: &str, kinds: &[StatementKind], opaque: bool) {
        let f = analyze(sql, SqlDialect::BigQuery);
        assert_eq!(f.statements, kinds, "{sql}");
        assert_eq!(f.opaque.is_some(), opaque, "{sql}: {:?}", f.opaque);
    }

    #[test]
    fn reads_are_select() {
        check("SELECT 1", &[K::Select], false);
        check(
            "WITH c AS (SELECT email FROM `p.d.t`) SELECT * EXCEPT(email) FROM c",
            &[K::Select],
            false,
        );
        check("SELECT 1; SELECT 2", &[K::Select, K::Select], false);
    }

    #[test]
    fn writes_are_classified() {
        check("INSERT INTO d.t (a) VALUES (1)", &[K::Insert], false);
        check("UPDATE d.t SET a = 1 WHERE true", &[K::Update], false);
        check("DELETE FROM d.t WHERE true", &[K::Delete], false);
        check("CREATE TABLE d.x AS SELECT 1 AS a", &[K::Create], false);
        check("DROP TABLE d.t", &[K::Drop], false);
        check("SELECT 1; DROP TABLE d.t", &[K::Select, K::Drop], false);
        check(
            "EXPORT DATA OPTIONS(uri='gs://b/*.csv', format='CSV') AS SELECT 1",
            &[K::Export],
            false,
        );
    }

    #[test]
    fn unparsable_is_opaque_not_an_error() {
        check("SELEC nonsense", &[], true);
        check("", &[], true);
        check(
            "SELECT * FROM ML.PREDICT(MODEL `d.m`, TABLE d.t)",
            &[],
            true,
        );
        assert!(!analyze("SELEC", SqlDialect::BigQuery).read_only());
    }

    #[test]
    fn hostile_input_does_not_panic() {
        let deep = "(".repeat(10_000);
        let f = analyze(&format!("SELECT {deep}"), SqlDialect::BigQuery);
        assert!(f.opaque.is_some());
        let f = analyze("SELECT '\u{0}\u{ffff}' FROM", SqlDialect::BigQuery);
        assert!(!f.read_only());
    }
}
