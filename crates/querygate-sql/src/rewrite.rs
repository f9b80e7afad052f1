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
//! with its mask where it has one; it comes from the table's schema). The reads are found
//! on sqlparser's AST and replaced *in the text*, by their source spans: everything else
//! stays byte for byte as the client wrote it (comments, string escapes, spelling), since
//! re-rendering the AST does not round-trip BigQuery SQL (`'it\'s'` would print as
//! `'it''s'`, which BigQuery rejects). The rewrite is pure and fails closed: what it cannot
//! wrap safely is an error, never a partial rewrite.
//!
//! - a wildcard table (`events_*`) that could match a masked table, a masked table changed
//!   by UPDATE/DELETE/MERGE, read `FOR SYSTEM_TIME AS OF`, sampled or with hints (clauses
//!   outside the table's span), and a CTE named like a masked table are refused;
//! - the text may not contain `__qg_src` or `__querygate` (the rewrite's own markers, and the
//!   hash key's query parameter);
//! - the output is parsed again and every read of a masked table in it must be the
//!   rewrite's own `__qg_src` read: a second, independent check of the first pass.

use std::collections::HashMap;
use std::ops::ControlFlow;

use sqlparser::ast::{
    ObjectName, Query, Spanned, Statement, TableAlias, TableFactor, Visit, Visitor,
};
use sqlparser::dialect::{BigQueryDialect, Dialect, PostgreSqlDialect};
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Location;

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
/// text unchanged when it reads none. `Err` says why it cannot be rewritten safely. Never
/// panics: like [`crate::analyze`], what goes wrong inside is an `Err`.
pub fn mask_reads(sql: &str, m: &Masking<'_>) -> Result<String, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mask_reads_inner(sql, m)))
        .unwrap_or_else(|_| Err("internal error in the masking rewrite".into()))
}

fn mask_reads_inner(sql: &str, m: &Masking<'_>) -> Result<String, String> {
    if let Some(marker) = reserved_marker(sql) {
        return Err(format!(
            "the statement contains `{marker}`, a name querygate reserves for masking; rename it"
        ));
    }
    if m.tables.is_empty() {
        return Ok(sql.to_string());
    }
    // Only what the analyzer understands is rewritten (this also keeps the input within
    // the analyzer's bounds on size and nesting before it is parsed here).
    if let Some(why) = crate::analyze(sql, m.dialect).opaque {
        return Err(why);
    }
    // BigQuery ends comments at a carriage return too (as `analyze` does, line breaks
    // become `\n`), and sqlparser counts lines by `\n`: the spans below index this text.
    let text = if sql.contains('\r') {
        sql.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        sql.to_string()
    };
    let statements = parse(&text, m.dialect)?;
    let mut wrapper = Wrapper {
        m,
        text: &text,
        names: Names { dialect: m.dialect },
        ctes: Vec::new(),
        splices: Vec::new(),
        error: None,
    };
    for st in &statements {
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
    if wrapper.splices.is_empty() {
        return Ok(sql.to_string());
    }
    let out = splice(&text, wrapper.splices)?;
    verify(&out, m)?;
    Ok(out)
}

/// One masked read: the text at `start..end` (byte offsets) becomes `with`.
struct Splice {
    start: usize,
    end: usize,
    with: String,
}

/// The byte offset of a location (line and column from 1, columns in characters).
fn offset(text: &str, at: Location) -> Option<usize> {
    let line_start = if at.line <= 1 {
        0
    } else {
        text.match_indices('\n')
            .nth(usize::try_from(at.line).ok()? - 2)?
            .0
            + 1
    };
    let column = usize::try_from(at.column).ok()?.checked_sub(1)?;
    let line = &text[line_start..];
    match line.char_indices().nth(column) {
        Some((i, _)) => Some(line_start + i),
        None if line.chars().count() == column => Some(text.len()),
        None => None,
    }
}

/// The text with every splice applied; only the masked reads change, so comments, literals
/// and spelling stay byte for byte as the client wrote them.
fn splice(text: &str, mut splices: Vec<Splice>) -> Result<String, String> {
    splices.sort_by_key(|s| s.start);
    let mut out = String::with_capacity(text.len() + 256 * splices.len());
    let mut at = 0;
    for s in splices {
        if s.start < at || s.end < s.start || s.end > text.len() {
            return Err(
                "querygate could not place the masking rewrite; the statement is refused".into(),
            );
        }
        out.push_str(&text[at..s.start]);
        out.push_str(&s.with);
        at = s.end;
    }
    out.push_str(&text[at..]);
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
    /// The statement text the spans index.
    text: &'a str,
    names: Names,
    /// CTE names in scope, innermost last.
    ctes: Vec<Vec<String>>,
    splices: Vec<Splice>,
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

    /// The derived table's text that replaces `factor` (a read of a masked table), and
    /// where `factor` is in `text`.
    fn derived(
        &self,
        text: &str,
        factor: &TableFactor,
        columns: &[MaskedColumn],
    ) -> Result<Splice, String> {
        let TableFactor::Table { name, alias, .. } = factor else {
            return Err("internal: not a table".into());
        };
        let unplaced = || {
            "querygate could not place the masking rewrite; the statement is refused".to_string()
        };
        let whole = factor.span();
        let start = offset(text, whole.start).ok_or_else(unplaced)?;
        let end = offset(text, whole.end).ok_or_else(unplaced)?;
        let name_span = name.span();
        let name_end = offset(text, name_span.end).ok_or_else(unplaced)?;
        if name_span.start != whole.start || name_end > end {
            return Err(unplaced());
        }
        let name_text = &text[start..name_end];
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
        // Outside, the read keeps the name it was known by: its alias, or (BigQuery's
        // implicit alias) the table's own name.
        let alias = match alias {
            Some(a) if a.columns.is_empty() => a.name.to_string(),
            Some(_) => return Err("column aliases on a masked table are not supported".into()),
            None => {
                let t = self.names.table_ref(name)?;
                quote(self.m.dialect, t.parts.last().map_or("", String::as_str))
            }
        };
        Ok(Splice {
            start,
            end,
            with: format!("(SELECT {list} FROM {name_text} AS {SOURCE_ALIAS}) AS {alias}"),
        })
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

impl Visitor for Wrapper<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
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

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.ctes.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let TableFactor::Table {
            name,
            alias,
            args,
            version,
            with_hints,
            partitions,
            json_path,
            sample,
            index_directives,
            ..
        } = factor
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
        let modifier = if args.is_some() {
            Some("called as a table function")
        } else if version.is_some() {
            // `FOR SYSTEM_TIME AS OF` lies outside the span the rewrite replaces.
            Some("read FOR SYSTEM_TIME AS OF (query the current table)")
        } else if sample.is_some() {
            Some("sampled (TABLESAMPLE)")
        } else if !with_hints.is_empty()
            || !partitions.is_empty()
            || json_path.is_some()
            || !index_directives.is_empty()
        {
            Some("read with hints")
        } else {
            None
        };
        if let Some(what) = modifier {
            self.error = Some(format!(
                "querygate cannot mask a read of {table}, which has columns masked for you, \
                 {what}"
            ));
            return ControlFlow::Break(());
        }
        match self.derived(self.text, factor, columns) {
            Ok(splice) => {
                self.splices.push(splice);
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
    if let Some(why) = crate::analyze(sql, m.dialect).opaque {
        return Err(format!(
            "the rewritten statement could not be analyzed ({why}); the statement is refused"
        ));
    }
    Ok(())
}
