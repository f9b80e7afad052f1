//! The facts `analyze` returns: the public vocabulary of this crate.
//!
//! These are plain data types with a stable, human-readable rendering (`Display`) that the
//! snapshot tests pin and logs can show. This module must not parse SQL, must not do IO, and must
//! not hold policy: it only says what a statement does, never whether that is allowed.

use std::collections::BTreeSet;
use std::fmt;

use crate::functions;

/// The kind of one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StatementKind {
    /// A query that returns rows (`SELECT`, `VALUES`, `WITH … SELECT`).
    Select,
    Insert,
    Update,
    Delete,
    Merge,
    /// `CREATE` of anything (table, view, function, procedure, schema, index), including
    /// `CREATE TABLE … AS SELECT` and PostgreSQL `SELECT … INTO new_table`.
    Create,
    Drop,
    Alter,
    Truncate,
    /// `GRANT` and `REVOKE`.
    Grant,
    /// BigQuery `EXPORT DATA`.
    Export,
    /// PostgreSQL `COPY`, and BigQuery table copies: `CREATE TABLE … CLONE` and
    /// `CREATE SNAPSHOT TABLE`.
    Copy,
    /// `CALL procedure(…)`.
    Call,
    /// `DECLARE` of BigQuery script variables (a PostgreSQL cursor is a `Select`).
    Declare,
    /// `SET` (BigQuery script variables, PostgreSQL session settings and roles).
    Set,
    /// Transaction and session control, which reads and writes nothing: `BEGIN
    /// [TRANSACTION]`, `COMMIT`, `ROLLBACK`, savepoints; PostgreSQL's `DEALLOCATE`,
    /// `DISCARD`, `CLOSE` and `FETCH` (a cursor's rows are decided when it is declared: a
    /// `DECLARE … CURSOR FOR SELECT` is a `Select`), and `SET` of a setting that only
    /// changes how values are shown or how long a statement may run (`application_name`,
    /// `extra_float_digits`, `DateStyle`, `TimeZone`, timeouts, …).
    Transaction,
    /// Anything else (`SHOW`, `IF` conditions, `RAISE`, `NOTIFY`, …).
    Other,
}

impl StatementKind {
    /// The lower-case name used in messages and logs.
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
            StatementKind::Declare => "declare",
            StatementKind::Set => "set",
            StatementKind::Transaction => "transaction",
            StatementKind::Other => "other",
        }
    }
}

/// A table as the statement names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct TableRef {
    /// Identifiers as written, unquoted: `["proj","ds","t"]`, `["ds","t"]` or `["t"]`.
    /// BigQuery back-ticked paths are split on `.`; PostgreSQL unquoted identifiers are folded
    /// to lower case (as the server does), quoted ones are kept exactly.
    pub parts: Vec<String>,
    /// A BigQuery wildcard table (`events_*`): the last part ends with `*`.
    pub wildcard: bool,
    /// A BigQuery partition (`$20240101`) or snapshot (`@1700000000000`) decorator, stripped
    /// from the last part and kept here with its sigil.
    pub decorator: Option<String>,
    /// Read `FOR SYSTEM_TIME AS OF …` (BigQuery time travel).
    pub time_travel: bool,
    /// Some part is `INFORMATION_SCHEMA` (any case), e.g. `` `region-us`.INFORMATION_SCHEMA.JOBS ``.
    pub information_schema: bool,
}

impl TableRef {
    /// The dotted name without decorator: `proj.ds.t`, `ds.t` or `t`.
    pub fn name(&self) -> String {
        self.parts.join(".")
    }

    /// The fully qualified name: `proj.ds.t`. A two-part name gets `default_project` in front;
    /// a one-part or three-or-more-part name is kept as is.
    pub fn qualified(&self, default_project: &str) -> String {
        if self.parts.len() == 2 && !default_project.is_empty() {
            format!("{default_project}.{}", self.name())
        } else {
            self.name()
        }
    }
}

impl TableRef {
    /// The fully qualified name in the naming of one request: a two-part name gets
    /// `default_project`, a one-part name gets `default_dataset` (`ds` or `project.ds`,
    /// BigQuery's `defaultDataset`) when there is one.
    pub fn resolve(&self, default_project: &str, default_dataset: Option<&str>) -> String {
        match (self.parts.len(), default_dataset) {
            (1, Some(ds)) if ds.contains('.') => format!("{ds}.{}", self.parts[0]),
            (1, Some(ds)) if !default_project.is_empty() => {
                format!("{default_project}.{ds}.{}", self.parts[0])
            }
            _ => self.qualified(default_project),
        }
    }
}

impl fmt::Display for TableRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(d) = &self.decorator {
            f.write_str(d)?;
        }
        if self.time_travel {
            f.write_str(" (time travel)")?;
        }
        Ok(())
    }
}

/// A base column of a base table. `column == "*"` means every column of the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColumnRef {
    pub table: TableRef,
    /// The top-level column name as written (PostgreSQL: folded like identifiers). A struct field
    /// path `payload.email` is reported as its top-level column `payload`.
    pub column: String,
}

impl ColumnRef {
    /// True for the "every column of the table" reference.
    pub fn is_all(&self) -> bool {
        self.column == "*"
    }
}

impl fmt::Display for ColumnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table.name())?;
        if let Some(d) = &self.table.decorator {
            f.write_str(d)?;
        }
        write!(f, ".{}", self.column)
    }
}

/// One read of a base table: one occurrence of it in a FROM or JOIN (or `TABLE t`, a DML
/// target, a `COPY t TO`, a CLONE/LIKE source), with the columns a predicate of that same
/// query block bounds for this read.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scan {
    pub table: TableRef,
    /// Columns of this read (as written; compare with [`crate::same_name`]) that the WHERE or
    /// the JOIN ON of the query block holding the read restricts to values computed from
    /// constants and parameters: `=`, `<`, `<=`, `>`, `>=`, `BETWEEN` and `IN (list)` against
    /// such a value, the column possibly inside a cast or a date/time conversion
    /// (`DATE(ts) = '2024-01-01'`, `ts >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 DAY)`).
    /// Conjuncts add up; an OR bounds a column only when every branch bounds it. `IS NOT
    /// NULL`, `!=`, `LIKE`, comparisons with columns, anything under NOT, an ON that does not
    /// filter this side of an outer join, and names the analyzer cannot pin to this read
    /// bound nothing: an under-approximation (a read may be bounded without being listed so,
    /// never the other way round). Sorted, deduplicated.
    pub bounded: Vec<String>,
}

impl Scan {
    /// Whether this read is bounded on `column` (names compared as BigQuery does, see
    /// [`crate::name_key`]).
    pub fn bounds(&self, column: &str) -> bool {
        self.bounded.iter().any(|c| crate::same_name(c, column))
    }
}

impl fmt::Display for Scan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.table)?;
        if !self.bounded.is_empty() {
            write!(f, " [{}]", self.bounded.join(", "))?;
        }
        Ok(())
    }
}

/// Text the parser rejected: its message, and where (1-based line and column, when known).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SyntaxError {
    /// The tokenizer's or parser's message, without the position.
    pub message: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
}

impl fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, " at line {l}, column {c}"),
            (Some(l), None) => write!(f, " at line {l}"),
            _ => Ok(()),
        }
    }
}

/// One column of what a statement returns (or writes), with the base columns it is computed from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OutputColumn {
    /// The column's name when the SQL gives one (alias, or the referenced column's name); `"*"`
    /// for a star that the analyzer cannot expand without a schema; empty for an unnamed
    /// expression.
    pub name: String,
    /// Base columns the value is computed from: through expressions, functions, aggregates, CASE,
    /// CTEs, subqueries, UNION branches and aliases. An over-approximation, never an
    /// under-approximation. Sorted; a `t.*` entry makes other columns of `t` redundant, so they
    /// are left out.
    pub sources: Vec<ColumnRef>,
    /// The value is (or is built from) a whole row: `SELECT t`, `TO_JSON_STRING(t)`,
    /// `ARRAY_AGG(t)`, `row_to_json(t.*)`. Masking must expand or refuse it.
    pub whole_row: bool,
    /// For a `"*"` column: the column names `* EXCEPT (…)` leaves out, and the names
    /// `* REPLACE (… AS name)` replaces (the replacement is its own output column).
    pub except: Vec<String>,
}

/// What one statement does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementFacts {
    pub kind: StatementKind,
    /// Base tables read, sorted: FROM and JOIN items at any depth, subqueries, `INSERT … SELECT`
    /// sources, `MERGE … USING`, CTAS sources, `COPY t TO`, and the targets of UPDATE, DELETE and
    /// MERGE (they are scanned). CTE names are resolved away; UNNEST is not a table.
    pub reads: Vec<TableRef>,
    /// Tables (or other objects) created, changed or dropped, sorted: DML targets, CREATE/DROP/
    /// ALTER/TRUNCATE objects, GRANT objects, `SELECT … INTO t`, `COPY t FROM`.
    pub writes: Vec<TableRef>,
    /// Every function called, upper case, qualified names joined with `.`, sorted, deduplicated.
    /// Special forms (`CAST`, `EXTRACT`, `SUBSTRING … FROM`) are not listed.
    pub functions: Vec<String>,
    /// What the statement returns to the client or sends out of the database, one entry per
    /// column in order: a query's result, `RETURNING`, `COPY … TO`, `EXPORT DATA`, a cursor's
    /// query, a `RAISE` message.
    pub output: Vec<OutputColumn>,
    /// What the statement writes into `writes`: `INSERT` values, `UPDATE`/`MERGE` assignments
    /// (named by target column), CTAS and `SELECT … INTO` query columns.
    pub written: Vec<OutputColumn>,
    /// Base columns referenced in WHERE, JOIN ON/USING, HAVING, QUALIFY, aggregate FILTER and
    /// MERGE conditions, anywhere in the statement (subqueries included). Sorted. An
    /// over-approximation: an unqualified column with several candidate tables is listed for each.
    pub predicates: Vec<ColumnRef>,
    /// Base columns that order, group or partition rows: GROUP BY, ORDER BY, DISTINCT ON,
    /// window PARTITION BY / ORDER BY, ordered aggregates. Sorted.
    pub ordering: Vec<ColumnRef>,
    /// Every read of a base table (one per occurrence, so a self-join or two `UNION`
    /// branches over one table are two scans), with the columns its own query block bounds.
    /// What a partition filter is judged on: a table is filtered on `c` only when every scan
    /// of it bounds `c` (see [`StatementFacts::filtered`]). The tables here are exactly
    /// `reads`. Sorted; scans alike in table and bounds are listed once.
    pub scans: Vec<Scan>,
    /// The statement takes row locks (`FOR UPDATE`, `FOR SHARE`).
    pub locks: bool,
    /// Why this statement could not be fully understood, if it could not.
    pub opaque: Option<String>,
}

impl StatementFacts {
    /// Empty facts of a kind.
    pub fn new(kind: StatementKind) -> Self {
        StatementFacts {
            kind,
            reads: vec![],
            writes: vec![],
            functions: vec![],
            output: vec![],
            written: vec![],
            predicates: vec![],
            ordering: vec![],
            scans: vec![],
            locks: false,
            opaque: None,
        }
    }

    /// The columns that every scan of `table` in this statement bounds (see [`Scan`]); empty
    /// when no scan of it bounds anything or the statement does not read it. `table` is a
    /// name as [`TableRef::qualified`] gives it with `default_project`; names compare by
    /// [`crate::name_key`], so `shop.CUSTOMERS` and `shop.customers` are one table, and
    /// every read of either must be bounded.
    pub fn filtered(&self, table: &str, default_project: &str) -> Vec<String> {
        let key = crate::name_key(table);
        let mut scans = self
            .scans
            .iter()
            .filter(|s| crate::name_key(&s.table.qualified(default_project)) == key);
        let Some(first) = scans.next() else {
            return vec![];
        };
        let mut out: Vec<String> = first.bounded.clone();
        for s in scans {
            out.retain(|c| s.bounds(c));
        }
        out
    }

    /// The name of the statement's kind (`"select"`, `"delete"`, …).
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }

    /// Why this statement is not read-only, in words for a denial message; empty when it is.
    pub fn not_read_only_reasons(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(why) = &self.opaque {
            out.push(format!("SQL querygate cannot analyze ({why})"));
        }
        if self.kind != StatementKind::Select {
            out.push(self.kind.name().to_uppercase());
        } else if !self.writes.is_empty() {
            let names: Vec<String> = self.writes.iter().map(TableRef::name).collect();
            out.push(format!("a write to {}", names.join(", ")));
        }
        if self.locks {
            out.push("row locks (FOR UPDATE/SHARE)".into());
        }
        for f in self.side_effecting_functions() {
            out.push(format!("the function {f}"));
        }
        out
    }

    /// The functions this statement calls that change state or reach outside the query
    /// (`nextval`, `pg_terminate_backend`, `dblink_exec`, `lo_export`, …).
    pub fn side_effecting_functions(&self) -> impl Iterator<Item = &str> {
        self.functions
            .iter()
            .map(String::as_str)
            .filter(|f| functions::is_side_effecting(f))
    }

    /// True when this statement only reads: a query without writes, locks or side-effecting
    /// functions.
    pub fn read_only(&self) -> bool {
        self.opaque.is_none()
            && self.kind == StatementKind::Select
            && self.writes.is_empty()
            && !self.locks
            && self.side_effecting_functions().next().is_none()
    }
}

/// What the gateway knows about a piece of SQL.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Facts {
    /// One entry per statement of the script, in order. Blocks are flattened: `BEGIN … END`
    /// bodies, IF/WHILE branches (after an `other` entry holding their conditions), procedure
    /// bodies, `EXPLAIN` and `PREPARE` targets contribute their inner statements.
    pub statements: Vec<StatementFacts>,
    /// Set when any part of the text could not be fully understood, with the reason. Never an
    /// error: policy decides what opaque SQL gets.
    pub opaque: Option<String>,
    /// Set when the tokenizer or the parser rejects the text (`opaque` is then set too, so
    /// nothing that relies on it opens up). A caller may answer it as invalid SQL, before
    /// anything goes upstream. sqlparser does not read every BigQuery construct (see the crate
    /// docs), so the message says that querygate cannot parse the text, not that the engine
    /// would reject it.
    pub syntax_error: Option<SyntaxError>,
}

impl Facts {
    /// The kind of each statement, in order.
    pub fn kinds(&self) -> impl Iterator<Item = StatementKind> + '_ {
        self.statements.iter().map(|s| s.kind)
    }

    /// True when the text is fully understood and every statement only reads (see
    /// [`StatementFacts::read_only`]).
    pub fn read_only(&self) -> bool {
        self.opaque.is_none()
            && !self.statements.is_empty()
            && self.statements.iter().all(StatementFacts::read_only)
    }

    /// Why the text is not read-only, in words for a denial message (deduplicated, in statement
    /// order); empty when [`Facts::read_only`] holds.
    pub fn not_read_only_reasons(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        if self.statements.is_empty() {
            out.push("no statement".into());
        }
        for s in &self.statements {
            for r in s.not_read_only_reasons() {
                if !out.contains(&r) {
                    out.push(r);
                }
            }
        }
        if out.is_empty()
            && let Some(why) = &self.opaque
        {
            out.push(format!("SQL querygate cannot analyze ({why})"));
        }
        out
    }

    /// Gives one-part table names the request's default dataset (`ds` or `project.ds`,
    /// BigQuery's `defaultDataset`), as the engine will resolve them.
    pub fn with_default_dataset(&mut self, dataset: &str) {
        let prefix: Vec<String> = dataset.split('.').map(str::to_string).collect();
        let fix = |t: &mut TableRef| {
            if t.parts.len() == 1 {
                t.parts.splice(0..0, prefix.iter().cloned());
            }
        };
        for st in &mut self.statements {
            st.reads.iter_mut().for_each(fix);
            st.writes.iter_mut().for_each(fix);
            for col in st.output.iter_mut().chain(st.written.iter_mut()) {
                col.sources.iter_mut().for_each(|c| fix(&mut c.table));
            }
            for c in st.predicates.iter_mut().chain(st.ordering.iter_mut()) {
                fix(&mut c.table);
            }
            st.scans.iter_mut().for_each(|s| fix(&mut s.table));
        }
    }

    /// The columns that every scan of `table` in every statement bounds: see
    /// [`StatementFacts::filtered`]. Empty when no statement reads it.
    pub fn filtered(&self, table: &str, default_project: &str) -> Vec<String> {
        let key = crate::name_key(table);
        let mut out: Option<Vec<String>> = None;
        for st in &self.statements {
            if !st
                .scans
                .iter()
                .any(|s| crate::name_key(&s.table.qualified(default_project)) == key)
            {
                continue;
            }
            let here = st.filtered(table, default_project);
            out = Some(match out {
                None => here,
                Some(mut acc) => {
                    acc.retain(|c| here.iter().any(|h| crate::same_name(h, c)));
                    acc
                }
            });
        }
        out.unwrap_or_default()
    }

    /// Every table read by any statement, sorted and deduplicated.
    pub fn reads(&self) -> Vec<&TableRef> {
        let set: BTreeSet<&TableRef> = self.statements.iter().flat_map(|s| &s.reads).collect();
        set.into_iter().collect()
    }

    /// Every table written by any statement, sorted and deduplicated.
    pub fn writes(&self) -> Vec<&TableRef> {
        let set: BTreeSet<&TableRef> = self.statements.iter().flat_map(|s| &s.writes).collect();
        set.into_iter().collect()
    }
}

fn write_list<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    label: &str,
    items: &[T],
) -> fmt::Result {
    if items.is_empty() {
        return Ok(());
    }
    write!(f, "  {label}:")?;
    for (i, item) in items.iter().enumerate() {
        f.write_str(if i == 0 { " " } else { ", " })?;
        write!(f, "{item}")?;
    }
    writeln!(f)
}

fn write_columns(f: &mut fmt::Formatter<'_>, label: &str, cols: &[OutputColumn]) -> fmt::Result {
    if cols.is_empty() {
        return Ok(());
    }
    writeln!(f, "  {label}:")?;
    for c in cols {
        let name = if c.name.is_empty() { "?" } else { &c.name };
        write!(f, "    {name} <-")?;
        if c.sources.is_empty() {
            f.write_str(" (constant)")?;
        }
        for (i, s) in c.sources.iter().enumerate() {
            f.write_str(if i == 0 { " " } else { ", " })?;
            write!(f, "{s}")?;
        }
        if !c.except.is_empty() {
            write!(f, " except({})", c.except.join(", "))?;
        }
        if c.whole_row {
            f.write_str(" [whole row]")?;
        }
        writeln!(f)?;
    }
    Ok(())
}

/// A compact, stable rendering: one block per statement. The corpus snapshots are this text.
impl fmt::Display for Facts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(why) = &self.opaque {
            writeln!(f, "opaque: {why}")?;
        }
        for (i, s) in self.statements.iter().enumerate() {
            writeln!(f, "#{} {}", i + 1, s.kind.name())?;
            write_list(f, "reads", &s.reads)?;
            write_list(f, "writes", &s.writes)?;
            write_list(f, "functions", &s.functions)?;
            write_columns(f, "output", &s.output)?;
            write_columns(f, "written", &s.written)?;
            write_list(f, "predicates", &s.predicates)?;
            write_list(f, "ordering", &s.ordering)?;
            // Scans are shown when some read is bounded (reads say the rest).
            if s.scans.iter().any(|x| !x.bounded.is_empty()) {
                write_list(f, "scans", &s.scans)?;
            }
            if s.locks {
                writeln!(f, "  locks rows")?;
            }
            if let Some(why) = &s.opaque {
                writeln!(f, "  opaque: {why}")?;
            }
        }
        Ok(())
    }
}
