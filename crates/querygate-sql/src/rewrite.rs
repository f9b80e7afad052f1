//! The masking rewrite: every read of a table with masked columns becomes a read of a
//! derived table that selects the masking expression in place of each masked column.
//!
//! `FROM crm.customers AS c` becomes
//! `FROM (SELECT id, name, <mask of email> AS email FROM crm.customers AS __qg_src) AS c`,
//! so everything above the read — expressions, aggregates, joins, predicates, CTEs,
//! `UNION` branches, `UNNEST` of its arrays, whole-row references (`c`,
//! `TO_JSON_STRING(c)`, `SELECT AS STRUCT *`) and `*` — sees only masked values. This is how
//! the engines that get masking right do it: they mask where the column is read.
//!
//! The caller gives, per masked table, the whole select list (every column of the table,
//! with its mask where it has one; it comes from the table's schema). The rewrite is pure
//! and fails closed: what it cannot wrap safely is an error, never a partial rewrite.
//!
//! - a wildcard table (`events_*`) that could match a masked table, a masked table changed
//!   by UPDATE/DELETE/MERGE or read `FOR SYSTEM_TIME AS OF`, and a CTE named like a masked
//!   table are refused;
//! - the text may not contain `__qg_src` or `__querygate` (the rewrite's own markers, and the
//!   hash key's query parameter);
//! - the output is parsed again and every read of a masked table in it must be the
//!   rewrite's own `__qg_src` read: a second, independent check of the first pass.

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    Ident, ObjectName, Query, SetExpr, Statement, TableAlias, TableFactor, Visit, VisitMut,
    Visitor, VisitorMut,
};
use sqlparser::dialect::{BigQueryDialect, Dialect, PostgreSqlDialect};
use sqlparser::parser::Parser;

use crate::SqlDialect;
use crate::facts::TableRef;
use crate::names::Names;

/// The alias of the base-table read inside a masking derived table.
pub const SOURCE_ALIAS: &str = "__qg_src";

/// Markers a client's SQL may not contain (case-insensitive).
const MARKERS: &[&str] = &["__qg_src", "__querygate"];

/// One column of a masked table's select list.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedColumn {
    /// The column's name, as the schema spells it.
    pub name: String,
    /// The SQL expression selected in its place (over the column, quoted), or `None` to
    /// select the column as it is.
    pub mask: Option<String>,
}

/// What the rewrite needs to know.
#[derive(Debug, Clone, Copy)]
pub struct Masking<'a> {
    pub dialect: SqlDialect,
    /// The project two-part names belong to.
    pub project: &'a str,
    /// The dataset (`ds` or `project.ds`) one-part names belong to (BigQuery's
    /// `defaultDataset`), if any.
    pub dataset: Option<&'a str>,
    /// Every masked table, by qualified name (`project.dataset.table`), with its whole
    /// select list.
    pub tables: &'a HashMap<String, Vec<MaskedColumn>>,
}

impl Masking<'_> {
    fn resolve(&self, table: &TableRef) -> String {
        table.resolve(self.project, self.dataset)
    }

    /// The masked table a name reads, if it reads one.
    fn masked(&self, table: &TableRef) -> Option<(&String, &Vec<MaskedColumn>)> {
        self.tables.get_key_value(&self.resolve(table))
    }

    /// Whether a wildcard name (`ds.events_*`) could read a masked table.
    fn wildcard_reaches(&self, table: &TableRef) -> Option<&String> {
        let pattern = self.resolve(table);
        let prefix = pattern.trim_end_matches('*');
        self.tables.keys().find(|t| t.starts_with(prefix))
    }
}

/// `sql` with every read of a masked table replaced by its masking derived table; the
/// text unchanged when it reads none. `Err` says why it cannot be rewritten safely.
pub fn mask_reads(sql: &str, m: &Masking<'_>) -> Result<String, String> {
    if let Some(marker) = reserved_marker(sql) {
        return Err(format!(
            "the statement contains `{marker}`, a name querygate reserves for masking; rename it"
        ));
    }
    if m.tables.is_empty() {
        return Ok(sql.to_string());
    }
    let mut statements = parse(sql, m.dialect)?;
    let mut wrapper = Wrapper {
        m,
        names: Names { dialect: m.dialect },
        ctes: Vec::new(),
        wrapped: 0,
        error: None,
    };
    for st in &mut statements {
        if let Some(target) = dml_target(st) {
            let t = wrapper.names.table_ref(target)?;
            if let Some((name, _)) = m.masked(&t) {
                return Err(format!(
                    "{name} has columns masked for you, and querygate cannot mask a table that \
                     UPDATE, DELETE or MERGE changes"
                ));
            }
        }
        let _ = st.visit(&mut wrapper);
        if let Some(e) = wrapper.error.take() {
            return Err(e);
        }
    }
    if wrapper.wrapped == 0 {
        return Ok(sql.to_string());
    }
    let out = render(&statements);
    verify(&out, m)?;
    Ok(out)
}

/// The name querygate reserves for masking that `sql` contains, if any (compared without
/// case, anywhere in the text: a client may not name the rewrite's reads nor the hash key's
/// query parameter).
pub fn reserved_marker(sql: &str) -> Option<&'static str> {
    let lower = sql.to_ascii_lowercase();
    MARKERS.iter().copied().find(|k| lower.contains(k))
}

fn parse(sql: &str, dialect: SqlDialect) -> Result<Vec<Statement>, String> {
    let d: &dyn Dialect = match dialect {
        SqlDialect::BigQuery => &BigQueryDialect {},
        SqlDialect::Postgres => &PostgreSqlDialect {},
    };
    Parser::parse_sql(d, sql).map_err(|e| format!("querygate cannot parse this SQL: {e}"))
}

fn render(statements: &[Statement]) -> String {
    statements
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(";\n")
}

/// The table an UPDATE, DELETE or MERGE changes.
fn dml_target(st: &Statement) -> Option<&ObjectName> {
    let factor = match st {
        Statement::Update(u) => &u.table.relation,
        Statement::Delete(d) => match &d.from {
            sqlparser::ast::FromTable::WithFromKeyword(t)
            | sqlparser::ast::FromTable::WithoutKeyword(t) => &t.first()?.relation,
        },
        Statement::Merge(m) => &m.table,
        _ => return None,
    };
    match factor {
        TableFactor::Table { name, .. } => Some(name),
        _ => None,
    }
}

fn quote(dialect: SqlDialect, name: &str) -> String {
    match dialect {
        SqlDialect::BigQuery => format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`")),
        SqlDialect::Postgres => format!("\"{}\"", name.replace('"', "\"\"")),
    }
}

/// A column name quoted for `dialect`, for mask expressions.
pub fn quote_column(dialect: SqlDialect, name: &str) -> String {
    quote(dialect, name)
}

struct Wrapper<'a> {
    m: &'a Masking<'a>,
    names: Names,
    /// CTE names in scope, innermost last.
    ctes: Vec<Vec<String>>,
    wrapped: usize,
    error: Option<String>,
}

impl Wrapper<'_> {
    fn is_cte(&self, t: &TableRef) -> bool {
        t.parts.len() == 1
            && self
                .ctes
                .iter()
                .flatten()
                .any(|c| c.eq_ignore_ascii_case(&t.parts[0]))
    }

    /// The derived table that replaces `factor` (a read of a masked table).
    fn derived(
        &self,
        factor: &TableFactor,
        columns: &[MaskedColumn],
    ) -> Result<TableFactor, String> {
        let TableFactor::Table { name, alias, .. } = factor else {
            return Err("internal: not a table".into());
        };
        let list = columns
            .iter()
            .map(|c| {
                let q = quote(self.m.dialect, &c.name);
                match &c.mask {
                    Some(expr) => format!("{expr} AS {q}"),
                    None => q,
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let text = format!("SELECT {list} FROM __qg_placeholder AS {SOURCE_ALIAS}");
        let mut parsed = parse(&text, self.m.dialect)?;
        let Some(Statement::Query(mut query)) = parsed.pop() else {
            return Err("internal: the masking select list does not parse".into());
        };
        let SetExpr::Select(select) = query.body.as_mut() else {
            return Err("internal: the masking select list does not parse".into());
        };
        let mut inner = factor.clone();
        if let TableFactor::Table { alias, .. } = &mut inner {
            *alias = Some(TableAlias {
                explicit: true,
                name: Ident::new(SOURCE_ALIAS),
                columns: vec![],
                at: None,
            });
        }
        let Some(from) = select.from.first_mut() else {
            return Err("internal: the masking select list has no FROM".into());
        };
        from.relation = inner;
        // Outside, the read keeps the name it was known by: its alias, or (BigQuery's
        // implicit alias) the table's own name.
        let alias = match alias {
            Some(a) => a.clone(),
            None => {
                let t = self.names.table_ref(name)?;
                let last = t.parts.last().cloned().unwrap_or_default();
                TableAlias {
                    explicit: true,
                    name: Ident::with_quote(quote_char(self.m.dialect), last),
                    columns: vec![],
                    at: None,
                }
            }
        };
        Ok(TableFactor::Derived {
            lateral: false,
            subquery: query,
            alias: Some(alias),
            sample: None,
        })
    }
}

fn quote_char(dialect: SqlDialect) -> char {
    match dialect {
        SqlDialect::BigQuery => '`',
        SqlDialect::Postgres => '"',
    }
}

fn cte_names(q: &Query) -> Vec<String> {
    q.with
        .as_ref()
        .map(|w| {
            w.cte_tables
                .iter()
                .map(|c| c.alias.name.value.clone())
                .collect()
        })
        .unwrap_or_default()
}

fn is_source_alias(alias: &Option<TableAlias>) -> bool {
    alias.as_ref().is_some_and(|a| a.name.value == SOURCE_ALIAS)
}

impl VisitorMut for Wrapper<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &mut Query) -> ControlFlow<()> {
        let names = cte_names(q);
        // A CTE named like a masked table could hide a read of it (or be mistaken for
        // one): refused rather than guessed.
        if let Some(n) = names.iter().find(|n| {
            self.m.tables.keys().any(|t| {
                t.rsplit('.')
                    .next()
                    .is_some_and(|last| last.eq_ignore_ascii_case(n))
            })
        }) {
            self.error = Some(format!(
                "the CTE `{n}` has the name of a table with columns masked for you; rename the CTE"
            ));
            return ControlFlow::Break(());
        }
        self.ctes.push(names);
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &mut Query) -> ControlFlow<()> {
        self.ctes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            args,
            version,
            ..
        } = &*factor
        else {
            return ControlFlow::Continue(());
        };
        if is_source_alias(alias) {
            return ControlFlow::Continue(());
        }
        let t = match self.names.table_ref(name) {
            Ok(t) => t,
            Err(e) => {
                self.error = Some(e);
                return ControlFlow::Break(());
            }
        };
        if self.is_cte(&t) {
            return ControlFlow::Continue(());
        }
        if t.wildcard {
            if let Some(table) = self.m.wildcard_reaches(&t) {
                self.error = Some(format!(
                    "the wildcard table `{}` could read {table}, which has columns masked for \
                     you; querygate masks named tables only, so name the tables",
                    t.name()
                ));
                return ControlFlow::Break(());
            }
            return ControlFlow::Continue(());
        }
        let Some((table, columns)) = self.m.masked(&t) else {
            return ControlFlow::Continue(());
        };
        if args.is_some() {
            self.error = Some(format!("{table} is called as a table function"));
            return ControlFlow::Break(());
        }
        if version.is_some() {
            // sqlparser prints `AS alias` before `FOR SYSTEM_TIME AS OF` (as BigQuery
            // writes it) but parses only the other order, so the rewrite could not be
            // checked: refused.
            self.error = Some(format!(
                "querygate cannot mask a FOR SYSTEM_TIME AS OF read of {table}, which has \
                 columns masked for you; query the current table"
            ));
            return ControlFlow::Break(());
        }
        match self.derived(factor, columns) {
            Ok(d) => {
                *factor = d;
                self.wrapped += 1;
                ControlFlow::Continue(())
            }
            Err(e) => {
                self.error = Some(e);
                ControlFlow::Break(())
            }
        }
    }
}

/// The second check: in the rewritten text, every read of a masked table is a masking
/// derived table's own read.
fn verify(sql: &str, m: &Masking<'_>) -> Result<(), String> {
    struct Check<'a> {
        m: &'a Masking<'a>,
        names: Names,
        ctes: Vec<Vec<String>>,
        bad: Option<String>,
    }
    impl Visitor for Check<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            self.ctes.push(cte_names(q));
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            self.ctes.pop();
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table { name, alias, .. } = factor {
                let Ok(t) = self.names.table_ref(name) else {
                    self.bad = Some(name.to_string());
                    return ControlFlow::Break(());
                };
                let cte = t.parts.len() == 1
                    && self
                        .ctes
                        .iter()
                        .flatten()
                        .any(|c| c.eq_ignore_ascii_case(&t.parts[0]));
                if !cte && !is_source_alias(alias) && self.m.masked(&t).is_some() {
                    self.bad = Some(t.name());
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let statements = parse(sql, m.dialect)?;
    let mut check = Check {
        m,
        names: Names { dialect: m.dialect },
        ctes: vec![],
        bad: None,
    };
    for st in &statements {
        // A DML target passes: one that is masked was refused before the rewrite.
        let _ = st.visit(&mut check);
        if let Some(bad) = check.bad.take() {
            return Err(format!(
                "querygate could not prove that the rewritten statement masks every read of \
                 {bad}; the statement is refused"
            ));
        }
    }
    if crate::analyze(sql, m.dialect).opaque.is_some() {
        return Err(
            "the rewritten statement could not be analyzed; the statement is refused".into(),
        );
    }
    Ok(())
}
