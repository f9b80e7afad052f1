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
//!   hash key's query parameter); when a mask uses a query parameter (the `hash` key), the
//!   text may not hold positional `?` parameters nor a parameter whose name is not plainly
//!   written (back-slash escapes in `` @`…` ``), nor name the key in any case;
//! - `TABLE t` of a masked table is refused (write `SELECT * FROM t`);
//! - the output (also when nothing was rewritten) is parsed again and every reference to a
//!   masked table in it must be the rewrite's own `__qg_src` read (or an INSERT target), in
//!   every syntactic position: FROM items at any depth, `TABLE t`, relation names of any
//!   statement, CLONE/LIKE sources, qualified names in expressions, and, over the tokens,
//!   every dotted name: a second, independent check of the first pass.
//!
//! Table names are compared as [`crate::name_key`] folds them: `shop.CUSTOMERS` is a read
//! of the masked `shop.customers`.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    CreateTableLikeKind, Expr, ObjectName, ObjectNamePart, Query, SetExpr, Spanned, Statement,
    TableAlias, TableFactor, TableObject, Visit, Visitor,
};
use sqlparser::keywords::Keyword;
use sqlparser::tokenizer::{Location, Token};

use crate::SqlDialect;
use crate::facts::TableRef;
use crate::names::{Names, TableNameError, name_key};

/// The alias of the base-table read inside a masking derived table.
pub const SOURCE_ALIAS: &str = "__qg_src";

/// The query parameter that carries the `hash` strategy's key (the BigQuery source adds it
/// to the request's parameters as the call leaves).
pub const MASK_KEY_PARAM: &str = "__querygate_mask_key";

/// Markers a client's SQL may not contain (case-insensitive).
const MARKERS: &[&str] = &["__qg_src", "__querygate"];

/// Why a statement cannot be rewritten so that it reads masked tables only through their
/// masks. Every case refuses the statement; none is retried.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RewriteError {
    /// The text contains one of the rewrite's own markers.
    #[error("the statement contains `{0}`, a name querygate reserves for masking; rename it")]
    ReservedMarker(&'static str),
    /// The analyzer does not understand the statement (its explanation).
    #[error("{0}")]
    Opaque(String),
    /// The text does not tokenize or parse (the tokenizer's or parser's message).
    #[error("querygate cannot parse this SQL: {0}")]
    Parse(String),
    /// A query parameter named like the hash key (the name as written).
    #[error("the query parameter `@{0}` is reserved for querygate's masking; rename it")]
    ReservedParameter(String),
    /// A positional parameter while a mask uses a named one (the marker as written).
    #[error(
        "this query reads columns masked for you, and querygate masks them with a named query \
         parameter, so it cannot take positional parameters (`{0}`): use named parameters \
         (@name) instead of positional ? markers in queries that read masked columns"
    )]
    PositionalParameter(String),
    /// PostgreSQL: a statement reading a hash-masked column (whose key is bound as a
    /// numbered parameter) has a parameter that is not `$n`.
    #[error(
        "this statement reads columns masked for you with the hash strategy, whose key \
         querygate binds as a numbered parameter; {0} is not one ($1, $2, …)"
    )]
    KeyedStatementParameter(String),
    /// A parameter name with a back-slash escape (the parameter as written, quoted).
    #[error(
        "the query parameter {0} has a back-slash escape in its name; in queries that read \
         masked columns write parameter names plainly (@name or @`name`)"
    )]
    EscapedParameter(String),
    #[error(
        "querygate cannot read a query parameter of this statement (`@` not followed by a \
         name); write named parameters as @name"
    )]
    UnnamedParameter,
    #[error(
        "querygate cannot read a system variable of this statement (`@@` not followed by a \
         name); write it as @@name"
    )]
    SystemVariable,
    /// UPDATE, DELETE or MERGE of a masked table.
    #[error(
        "{0} has columns masked for you, and querygate cannot mask a table that UPDATE, DELETE \
         or MERGE changes"
    )]
    MaskedTableChanged(String),
    /// PostgreSQL `COPY t TO …` of a table with masked columns (it names no query to wrap).
    #[error(
        "{0} has columns masked for you, and COPY of a table copies them as stored: write \
         COPY (SELECT * FROM the table) TO STDOUT, whose read is masked"
    )]
    MaskedTableCopied(String),
    /// A CTE named like a masked table.
    #[error("the CTE `{0}` has the name of a table with columns masked for you; rename the CTE")]
    CteNamedLikeMaskedTable(String),
    /// `TABLE t` of a masked table.
    #[error(
        "querygate cannot mask `TABLE {name}`, a read of {table}, which has columns masked for \
         you; write SELECT * FROM {name} instead"
    )]
    TableStatement { name: String, table: String },
    /// A wildcard table that could read a masked table.
    #[error(
        "the wildcard table `{pattern}` could read {table}, which has columns masked for you; \
         querygate masks named tables only, so name the tables"
    )]
    WildcardTable { pattern: String, table: String },
    /// A read of a masked table with a clause the rewrite cannot keep (`how` says which).
    #[error("querygate cannot mask a read of {table}, which has columns masked for you, {how}")]
    ModifiedRead { table: String, how: &'static str },
    #[error("column aliases on a masked table are not supported")]
    ColumnAliases,
    /// The masked read's place in the text could not be found.
    #[error("querygate could not place the masking rewrite; the statement is refused")]
    Unplaced,
    #[error(transparent)]
    TableName(#[from] TableNameError),
    /// The second check found a reference to a masked table outside a masked read.
    #[error(
        "querygate could not prove that the statement masks every read of {table} (it found \
         {how} outside a masked read); read the table in FROM (not with TABLE, CLONE or LIKE) \
         and qualify its columns with an alias or the table's name"
    )]
    Unproven { table: String, how: String },
    /// The rewritten text is not understood by the analyzer (its explanation).
    #[error("the rewritten statement could not be analyzed ({0}); the statement is refused")]
    Reanalysis(String),
    #[error("internal: not a table")]
    NotATable,
    /// The rewrite panicked.
    #[error("internal error in the masking rewrite")]
    Panicked,
}

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

    /// The masked table a name reads, if it reads one. Names compare folded
    /// ([`name_key`]); when several entries fold alike, the one masking most columns wins
    /// (then the smallest name, so the choice does not depend on the map's order).
    fn masked(&self, table: &TableRef) -> Option<(&String, &Vec<MaskedColumn>)> {
        let key = name_key(&self.resolve(table));
        self.tables
            .iter()
            .filter(|(name, _)| name_key(name) == key)
            .max_by(|(a, x), (b, y)| {
                let masks = |c: &Vec<MaskedColumn>| c.iter().filter(|c| c.mask.is_some()).count();
                masks(x).cmp(&masks(y)).then_with(|| b.cmp(a))
            })
    }

    /// Whether a wildcard name (`ds.events_*`) could read a masked table.
    fn wildcard_reaches(&self, table: &TableRef) -> Option<&String> {
        let pattern = name_key(&self.resolve(table));
        let prefix = pattern.trim_end_matches('*');
        let mut reached: Vec<&String> = self
            .tables
            .keys()
            .filter(|t| name_key(t).starts_with(prefix))
            .collect();
        reached.sort();
        reached.first().copied()
    }

    /// Whether a mask expression references a query parameter (the `hash` key).
    fn masks_use_parameters(&self) -> bool {
        self.tables
            .values()
            .flatten()
            .filter_map(|c| c.mask.as_deref())
            .any(|expr| uses_parameters(expr, self.dialect))
    }
}

/// Whether SQL text references a query parameter (`@name`, `` @`name` ``, `?`, `$1`); text
/// that does not tokenize counts as referencing one.
fn uses_parameters(expr: &str, dialect: SqlDialect) -> bool {
    let Ok(tokens) = crate::tokens(expr, dialect) else {
        return true;
    };
    tokens.iter().any(|t| match &t.token {
        Token::Word(w) => w.quote_style.is_none() && w.value.starts_with('@'),
        Token::Placeholder(_) | Token::AtSign | Token::AtAt => true,
        _ => false,
    })
}

/// Refuses what could bind a value the client did not name, or name the hash key, when a
/// mask references a query parameter: positional parameters (an upstream given named ones
/// binds them by position, the key included), parameter names that are not plainly written
/// (`` @`\x5f_…` `` would decode to the key's name), and the key's own name in any case.
fn check_parameters(sql: &str, dialect: SqlDialect) -> Result<(), RewriteError> {
    let tokens = crate::tokens(sql, dialect).map_err(|e| RewriteError::Parse(e.to_string()))?;
    let named = |name: &str| -> Result<(), RewriteError> {
        if name_key(name) == MASK_KEY_PARAM {
            return Err(RewriteError::ReservedParameter(name.to_string()));
        }
        Ok(())
    };
    let mut iter = tokens.iter().peekable();
    while let Some(t) = iter.next() {
        match &t.token {
            // PostgreSQL numbers its parameters: the source binds the key one past the
            // highest the statement uses, which no `$n` here can name.
            Token::Placeholder(p)
                if dialect == SqlDialect::Postgres
                    && p.len() > 1
                    && p.starts_with('$')
                    && p[1..].bytes().all(|b| b.is_ascii_digit()) => {}
            Token::Placeholder(p) if dialect == SqlDialect::Postgres => {
                return Err(RewriteError::KeyedStatementParameter(p.clone()));
            }
            Token::Placeholder(p) => {
                return Err(RewriteError::PositionalParameter(p.clone()));
            }
            Token::Word(w) if w.quote_style.is_none() && w.value.starts_with('@') => {
                let name = w.value.trim_start_matches('@');
                if !w.value.starts_with("@@") {
                    named(name)?;
                }
                if name.contains(['\\', '`']) {
                    return Err(RewriteError::EscapedParameter(format!("`{}`", w.value)));
                }
            }
            Token::AtSign => match iter.peek().map(|n| &n.token) {
                Some(Token::Word(w)) if w.quote_style == Some('`') => {
                    if w.value.contains('\\') {
                        return Err(RewriteError::EscapedParameter(format!("@`{}`", w.value)));
                    }
                    named(&w.value)?;
                    iter.next();
                }
                _ => return Err(RewriteError::UnnamedParameter),
            },
            Token::AtAt => return Err(RewriteError::SystemVariable),
            _ => {}
        }
    }
    Ok(())
}

/// `sql` with every read of a masked table replaced by its masking derived table; the
/// text unchanged when it reads none. `Err` says why it cannot be rewritten safely. Never
/// panics: like [`crate::analyze`], what goes wrong inside is an `Err`.
pub fn mask_reads(sql: &str, m: &Masking<'_>) -> Result<String, RewriteError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| mask_reads_inner(sql, m)))
        .unwrap_or(Err(RewriteError::Panicked))
}

fn mask_reads_inner(sql: &str, m: &Masking<'_>) -> Result<String, RewriteError> {
    if let Some(marker) = reserved_marker(sql) {
        return Err(RewriteError::ReservedMarker(marker));
    }
    if m.tables.is_empty() {
        return Ok(sql.to_string());
    }
    // Only what the analyzer understands is rewritten (this also keeps the input within
    // the analyzer's bounds on size and nesting before it is parsed here).
    if let Some(why) = crate::analyze(sql, m.dialect).opaque {
        return Err(RewriteError::Opaque(why));
    }
    if m.masks_use_parameters() {
        check_parameters(sql, m.dialect)?;
    }
    // BigQuery ends comments at a carriage return too (as `analyze` does, line breaks
    // become `\n`), and sqlparser counts lines by `\n`: the spans below index this text.
    let text = if sql.contains('\r') {
        sql.replace("\r\n", "\n").replace('\r', "\n")
    } else {
        sql.to_string()
    };
    let statements = crate::parse(&text, m.dialect)?;
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
                return Err(RewriteError::MaskedTableChanged(name.clone()));
            }
        }
        if let Statement::Copy {
            source: sqlparser::ast::CopySource::Table { table_name, .. },
            ..
        } = st
        {
            let t = wrapper.names.table_ref(table_name)?;
            if let Some((name, _)) = m.masked(&t) {
                return Err(RewriteError::MaskedTableCopied(name.clone()));
            }
        }
        let _ = st.visit(&mut wrapper);
        if let Some(e) = wrapper.error.take() {
            return Err(e);
        }
    }
    // The second check runs whether or not anything was rewritten: a read the first pass
    // did not see is exactly what it must catch.
    if wrapper.splices.is_empty() {
        verify(&text, m)?;
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
fn splice(text: &str, mut splices: Vec<Splice>) -> Result<String, RewriteError> {
    splices.sort_by_key(|s| s.start);
    let mut out = String::with_capacity(text.len() + 256 * splices.len());
    let mut at = 0;
    for s in splices {
        if s.start < at || s.end < s.start || s.end > text.len() {
            return Err(RewriteError::Unplaced);
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
    error: Option<RewriteError>,
}

impl Wrapper<'_> {
    fn is_cte(&self, t: &TableRef) -> bool {
        t.parts.len() == 1
            && self
                .ctes
                .iter()
                .flatten()
                .any(|c| name_key(c) == name_key(&t.parts[0]))
    }

    /// The derived table's text that replaces `factor` (a read of a masked table), and
    /// where `factor` is in `text`.
    fn derived(
        &self,
        text: &str,
        factor: &TableFactor,
        columns: &[MaskedColumn],
    ) -> Result<Splice, RewriteError> {
        let TableFactor::Table { name, alias, .. } = factor else {
            return Err(RewriteError::NotATable);
        };
        let unplaced = || RewriteError::Unplaced;
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
            Some(_) => return Err(RewriteError::ColumnAliases),
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
                    .is_some_and(|last| name_key(last) == name_key(n))
            })
        }) {
            self.error = Some(RewriteError::CteNamedLikeMaskedTable(n.clone()));
            return ControlFlow::Break(());
        }
        self.ctes.push(names);
        // `TABLE t` is a read the rewrite does not wrap.
        for t in table_statements(&q.body) {
            let Some(t) = self.names.table_ref_from_parts(t) else {
                continue;
            };
            if !self.is_cte(&t)
                && let Some((table, _)) = self.m.masked(&t)
            {
                self.error = Some(RewriteError::TableStatement {
                    name: t.name(),
                    table: table.clone(),
                });
                return ControlFlow::Break(());
            }
        }
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
                self.error = Some(e.into());
                return ControlFlow::Break(());
            }
        };
        if self.is_cte(&t) {
            return ControlFlow::Continue(());
        }
        if t.wildcard {
            if let Some(table) = self.m.wildcard_reaches(&t) {
                self.error = Some(RewriteError::WildcardTable {
                    pattern: t.name(),
                    table: table.clone(),
                });
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
            self.error = Some(RewriteError::ModifiedRead {
                table: table.clone(),
                how: what,
            });
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

/// The name parts of every `TABLE t` in a query body's set operations (nested queries are
/// visited as queries of their own).
fn table_statements(body: &SetExpr) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut stack = vec![body];
    while let Some(b) = stack.pop() {
        match b {
            SetExpr::SetOperation { left, right, .. } => {
                stack.push(left);
                stack.push(right);
            }
            SetExpr::Table(t) => {
                let parts: Vec<String> = [&t.schema_name, &t.table_name]
                    .into_iter()
                    .flatten()
                    .flat_map(|id| id.value.split('.').map(str::to_string).collect::<Vec<_>>())
                    .collect();
                out.push(parts);
            }
            _ => {}
        }
    }
    out
}

/// The second check: in the (rewritten or unchanged) text, every reference to a masked
/// table, in any syntactic position, is a masking derived table's own read or an INSERT
/// target. Independent of the first pass: it looks at relation names, `TABLE t`,
/// CLONE/LIKE sources, qualified names in expressions, and every dotted name in the tokens.
fn verify(sql: &str, m: &Masking<'_>) -> Result<(), RewriteError> {
    struct Check<'a> {
        m: &'a Masking<'a>,
        names: Names,
        /// Addresses of the names that may be masked tables: `… AS __qg_src` reads and
        /// INSERT targets.
        allowed: HashSet<usize>,
        /// What referenced a masked table, and how.
        bad: Option<(String, String)>,
    }
    impl Check<'_> {
        fn flag(&mut self, table: &str, how: String) -> ControlFlow<()> {
            self.bad = Some((table.to_string(), how));
            ControlFlow::Break(())
        }
        /// A name in any position: refused when it reads a masked table.
        fn name(&mut self, name: &ObjectName, how: &str) -> ControlFlow<()> {
            match self.names.table_ref(name) {
                Ok(t) => match self.m.masked(&t) {
                    Some((table, _)) => {
                        let table = table.clone();
                        self.flag(&table, format!("{how} `{name}`"))
                    }
                    None => ControlFlow::Continue(()),
                },
                Err(_) => self.flag(&name.to_string(), format!("{how} `{name}`")),
            }
        }
        /// A dotted path in an expression: refused when two or more of its leading parts
        /// name a masked table (`crm.customers.email`, `UNNEST(crm.customers.tags)`).
        fn path(&mut self, parts: Vec<String>, text: &str) -> ControlFlow<()> {
            if let Some(table) = masked_window(self.m, &self.names, &parts, false) {
                return self.flag(&table, format!("the name `{text}`"));
            }
            ControlFlow::Continue(())
        }
    }
    impl Visitor for Check<'_> {
        type Break = ();
        fn pre_visit_statement(&mut self, st: &Statement) -> ControlFlow<()> {
            match st {
                Statement::Insert(ins) => {
                    if let TableObject::TableName(name) = &ins.table {
                        self.allowed.insert(addr(name));
                    }
                }
                Statement::CreateTable(ct) => {
                    if let Some(c) = &ct.clone {
                        self.name(c, "CLONE of")?;
                    }
                    if let Some(
                        CreateTableLikeKind::Parenthesized(l) | CreateTableLikeKind::Plain(l),
                    ) = &ct.like
                    {
                        self.name(&l.name, "LIKE")?;
                    }
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            for parts in table_statements(&q.body) {
                match self.names.table_ref_from_parts(parts.clone()) {
                    Some(t) => {
                        if let Some((table, _)) = self.m.masked(&t) {
                            let table = table.clone();
                            return self.flag(&table, format!("`TABLE {}`", t.name()));
                        }
                    }
                    None => {
                        return self.flag(&parts.join("."), "a TABLE statement".into());
                    }
                }
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name,
                alias,
                args: None,
                version: None,
                sample: None,
                with_hints,
                partitions,
                json_path: None,
                index_directives,
                ..
            } = factor
                && is_source_alias(alias)
                && with_hints.is_empty()
                && partitions.is_empty()
                && index_directives.is_empty()
            {
                self.allowed.insert(addr(name));
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_relation(&mut self, name: &ObjectName) -> ControlFlow<()> {
            if self.allowed.contains(&addr(name)) {
                return ControlFlow::Continue(());
            }
            self.name(name, "the table name")
        }
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            let ids = match e {
                Expr::CompoundIdentifier(ids) => ids.clone(),
                Expr::Identifier(id) => vec![id.clone()],
                Expr::QualifiedWildcard(name, _) => name
                    .0
                    .iter()
                    .filter_map(|p| match p {
                        ObjectNamePart::Identifier(id) => Some(id.clone()),
                        ObjectNamePart::Function(_) => None,
                    })
                    .collect(),
                _ => return ControlFlow::Continue(()),
            };
            let mut parts = Vec::with_capacity(ids.len());
            for id in &ids {
                match self.m.dialect {
                    SqlDialect::BigQuery => parts.extend(id.value.split('.').map(str::to_string)),
                    SqlDialect::Postgres => parts.push(self.names.ident(id)),
                }
            }
            self.path(parts, &e.to_string())
        }
    }
    let statements = crate::parse(sql, m.dialect)?;
    let mut check = Check {
        m,
        names: Names { dialect: m.dialect },
        allowed: HashSet::new(),
        bad: None,
    };
    for st in &statements {
        let _ = st.visit(&mut check);
        if let Some((table, how)) = check.bad.take() {
            return Err(RewriteError::Unproven { table, how });
        }
    }
    if let Some((table, how)) = token_sweep(sql, m)? {
        return Err(RewriteError::Unproven { table, how });
    }
    if let Some(why) = crate::analyze(sql, m.dialect).opaque {
        return Err(RewriteError::Reanalysis(why));
    }
    Ok(())
}

fn addr<T>(x: &T) -> usize {
    x as *const T as usize
}

/// The masked table that some run of two to four consecutive `parts` names, if any (only
/// runs from the start when `anywhere` is false).
fn masked_window(
    m: &Masking<'_>,
    names: &Names,
    parts: &[String],
    anywhere: bool,
) -> Option<String> {
    let starts = if anywhere { parts.len() } else { 1 };
    for i in 0..starts.min(parts.len()) {
        for len in 2..=4 {
            let Some(window) = parts.get(i..i + len) else {
                break;
            };
            if let Some(t) = names.table_ref_from_parts(window.to_vec())
                && let Some((table, _)) = m.masked(&t)
            {
                return Some(table.clone());
            }
        }
    }
    None
}

/// Over the tokens: every dotted name (words joined by `.`, back-ticked paths split) that
/// names a masked table must be a masked read (`… AS __qg_src`) or an INSERT target.
/// Catches names in positions no AST pass knows of. One-part names are not looked at (an
/// alias or a column is spelled like a table's last part); the AST passes cover those.
fn token_sweep(sql: &str, m: &Masking<'_>) -> Result<Option<(String, String)>, RewriteError> {
    let tokens = crate::tokens(sql, m.dialect).map_err(|e| RewriteError::Parse(e.to_string()))?;
    let tokens: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let names = Names { dialect: m.dialect };
    let word_parts = |w: &sqlparser::tokenizer::Word| -> Vec<String> {
        match (m.dialect, w.quote_style) {
            (SqlDialect::BigQuery, _) => w.value.split('.').map(str::to_string).collect(),
            (SqlDialect::Postgres, None) => vec![w.value.to_ascii_lowercase()],
            (SqlDialect::Postgres, Some(_)) => vec![w.value.clone()],
        }
    };
    let is_keyword = |t: Option<&&Token>, k: Keyword| matches!(t, Some(Token::Word(w)) if w.quote_style.is_none() && w.keyword == k);
    let mut i = 0;
    while i < tokens.len() {
        let Token::Word(first) = tokens[i] else {
            i += 1;
            continue;
        };
        let start = i;
        let mut parts = word_parts(first);
        let mut text = first.to_string();
        while let (Some(Token::Period), Some(Token::Word(w))) =
            (tokens.get(i + 1), tokens.get(i + 2))
        {
            parts.extend(word_parts(w));
            text.push('.');
            text.push_str(&w.to_string());
            i += 2;
        }
        let end = i;
        i += 1;
        if parts.len() < 2 {
            continue;
        }
        let Some(table) = masked_window(m, &names, &parts, true) else {
            continue;
        };
        // Only the rewrite writes `__qg_src` (clients may not).
        let source = is_keyword(tokens.get(end + 1), Keyword::AS)
            && matches!(tokens.get(end + 2), Some(Token::Word(w)) if w.value == SOURCE_ALIAS);
        let before = start.checked_sub(1).and_then(|b| tokens.get(b));
        let before2 = start.checked_sub(2).and_then(|b| tokens.get(b));
        let insert = is_keyword(before, Keyword::INSERT)
            || (is_keyword(before, Keyword::INTO) && is_keyword(before2, Keyword::INSERT));
        if !source && !insert {
            return Ok(Some((table, format!("`{text}`"))));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> HashMap<String, Vec<MaskedColumn>> {
        let mut t = HashMap::new();
        t.insert(
            "p.crm.customers".to_string(),
            vec![
                MaskedColumn {
                    name: "id".into(),
                    mask: None,
                },
                MaskedColumn {
                    name: "email".into(),
                    mask: Some("''".into()),
                },
            ],
        );
        t
    }

    fn check(sql: &str, dataset: Option<&str>) -> Result<(), String> {
        let t = tables();
        verify(
            sql,
            &Masking {
                dialect: SqlDialect::BigQuery,
                project: "p",
                dataset,
                tables: &t,
            },
        )
        .map_err(|e| e.to_string())
    }

    /// The second check on its own: any reference to a masked table that is not the
    /// rewrite's own read is caught, whatever its position, spelling or case.
    #[test]
    fn the_second_check_catches_every_unwrapped_reference() {
        let unwrapped = [
            "SELECT * FROM crm.customers",
            "SELECT * FROM crm.CUSTOMERS",
            "SELECT * FROM `p.Crm.Customers`",
            "SELECT * FROM `p`.crm.customers",
            "SELECT * FROM (TABLE crm.customers)",
            "SELECT * FROM (TABLE crm.Customers)",
            "SELECT 1 UNION ALL (TABLE crm.customers)",
            "SELECT (SELECT MAX(email) FROM crm.customers)",
            "SELECT 1 FROM crm.orders WHERE cid IN (SELECT id FROM crm.customers)",
            "SELECT 1 FROM crm.orders WHERE EXISTS (SELECT 1 FROM crm.customers)",
            "SELECT 1 FROM crm.orders o JOIN (SELECT * FROM crm.customers) c ON o.cid = c.id",
            "SELECT x FROM crm.orders, UNNEST(crm.customers.tags) AS x",
            "SELECT crm.customers.email FROM crm.orders",
            "SELECT TO_JSON_STRING(`crm.customers`) FROM crm.orders",
            "SELECT * FROM crm.orders WHERE id IN (SELECT id FROM (SELECT * FROM crm.customers))",
            "CREATE TABLE x.y CLONE crm.customers",
            "CREATE TABLE x.y LIKE crm.customers",
            "CREATE TABLE crm.customers AS SELECT 1 AS a",
            "MERGE crm.customers USING crm.orders o ON FALSE WHEN MATCHED THEN DELETE",
            // A `__qg_src` read with a clause outside the span the rewrite replaces.
            "SELECT * FROM (SELECT id FROM crm.customers AS __qg_src TABLESAMPLE SYSTEM (10 PERCENT)) AS c",
        ];
        for sql in unwrapped {
            let err = check(sql, None).expect_err(sql);
            assert!(err.contains("p.crm.customers"), "{sql}: {err}");
        }
        // One-part names through the default dataset.
        for sql in [
            "SELECT * FROM CUSTOMERS",
            "SELECT * FROM (TABLE customers)",
            "CREATE TABLE x.y CLONE customers",
        ] {
            assert!(check(sql, Some("crm")).is_err(), "{sql}");
        }
    }

    #[test]
    fn the_second_check_passes_the_rewrites_own_reads() {
        for sql in [
            "SELECT email FROM (SELECT `id`, '' AS `email` FROM crm.customers AS __qg_src) AS c",
            "SELECT c.email FROM (SELECT `id`, '' AS `email` FROM crm.CUSTOMERS AS __qg_src) AS c",
            "INSERT INTO crm.customers (id) SELECT id FROM crm.orders",
            "SELECT customers.email FROM (SELECT `id`, '' AS `email` FROM crm.customers AS __qg_src) AS `customers`",
            "SELECT * FROM crm.orders",
            "SELECT * FROM (TABLE crm.orders)",
        ] {
            check(sql, Some("crm")).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
    }

    #[test]
    fn parameters_in_mask_expressions_are_recognized() {
        assert!(uses_parameters(
            "TO_HEX(SHA256(CONCAT(@__querygate_mask_key, CAST(`email` AS STRING))))",
            SqlDialect::BigQuery
        ));
        assert!(uses_parameters("CONCAT(@`k`, x)", SqlDialect::BigQuery));
        assert!(uses_parameters("CONCAT(?, x)", SqlDialect::BigQuery));
        assert!(!uses_parameters(
            "IF(`e` IS NULL, NULL, CONCAT('***@', 'x'))",
            SqlDialect::BigQuery
        ));
        assert!(!uses_parameters("''", SqlDialect::BigQuery));
        assert!(uses_parameters("'unterminated", SqlDialect::BigQuery));
    }
}
