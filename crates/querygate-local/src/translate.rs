//! BigQuery Standard SQL → DuckDB SQL, on the sqlparser AST.
//!
//! Parse as BigQuery (as the gateway's analysis reads it: a carriage return ends a comment,
//! `` @`name` `` is `@name`), check that the statement is one read-only query over known tables,
//! rewrite the nodes DuckDB spells differently (table paths, `SAFE_CAST`, `STRUCT(...)`,
//! `arr[OFFSET(n)]`, `x IN UNNEST(arr)`, `DATE_TRUNC(d, MONTH)`, `FORMAT_DATE`, `SHA256`/`TO_HEX`,
//! named and positional query parameters, …) and print the result. Every function must be on
//! the list below: a function the engine does not know fails with `invalidQuery` naming it,
//! which also keeps DuckDB's file-reading and settings functions (`read_text`, `read_csv`,
//! `current_setting`, …) out of reach. Every table must be one the source was configured with
//! (or a CTE), or one of the INFORMATION_SCHEMA views TABLES, COLUMNS and SCHEMATA (rewritten
//! to the engine's rows describing the configured tables); table functions are refused.
//!
//! Pure: no IO, no engine. Must not panic on any input.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::ControlFlow;

use serde_json::Value as Json;
use sqlparser::ast::{
    AccessExpr, CastKind, DictionaryField, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    Ident, InTarget, ObjectName, ObjectNamePart, Query, SetExpr, Statement, Subscript, TableAlias,
    TableFactor, Value, ValueWithSpan, Visit, VisitMut, Visitor, VisitorMut,
};
use sqlparser::dialect::DuckDbDialect;
use sqlparser::parser::Parser;

use crate::engine::LOCATION;
use crate::error::EngineError;

/// What a query may name: the project, its tables, and the default dataset.
#[derive(Debug, Clone)]
pub struct Context<'a> {
    pub project: &'a str,
    /// `(dataset, table)` pairs the source serves.
    pub tables: &'a BTreeSet<(String, String)>,
    pub default_dataset: Option<&'a str>,
    /// `queryParameters` as the client sent them (JSON array), if any.
    pub parameters: Option<&'a Json>,
}

/// A query ready for DuckDB.
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub sql: String,
    /// The configured tables it reads, as `(dataset, table)`.
    pub tables: BTreeSet<(String, String)>,
    /// Every identifier it names (lower case), for the byte estimate's column pruning.
    pub identifiers: HashSet<String>,
    /// Whether it selects `*` anywhere (then every column of every table counts).
    pub wildcard: bool,
}

/// The DuckDB schema holding the INFORMATION_SCHEMA views' rows (`tables`, `columns`,
/// `schemata`), filled by the engine from its catalog. Queries cannot name it: the translator
/// reaches it only by rewriting `dataset.INFORMATION_SCHEMA.TABLES` and its siblings.
pub const META_SCHEMA: &str = "_qg_information_schema";

/// The INFORMATION_SCHEMA views served: (view, its table in [`META_SCHEMA`], the column that
/// names a row's dataset).
const META_VIEWS: &[(&str, &str, &str)] = &[
    ("TABLES", "tables", "table_schema"),
    ("COLUMNS", "columns", "table_schema"),
    ("SCHEMATA", "schemata", "schema_name"),
];

/// Translates one BigQuery query into DuckDB SQL.
pub fn translate(sql: &str, ctx: &Context<'_>) -> Result<Translated, EngineError> {
    let mut statements = parse_bigquery(sql)?;
    let mut statement = match statements.len() {
        0 => return Err(EngineError::invalid("Syntax error: the query is empty")),
        1 => statements.remove(0),
        _ => {
            return Err(EngineError::invalid(
                "querygate's local engine runs one statement per query; scripts are not supported",
            ));
        }
    };
    let Statement::Query(query) = &mut statement else {
        return Err(refuse_statement(&statement));
    };
    check_body(&query.body)?;
    let mut ctes = HashSet::new();
    collect_ctes(query, &mut ctes);
    let mut rewriter = Rewriter {
        ctx,
        ctes,
        tables: BTreeSet::new(),
        positions: positional_markers(query),
        named: false,
        replacements: Vec::new(),
    };
    if let ControlFlow::Break(e) = VisitMut::visit(&mut **query, &mut rewriter) {
        return Err(e);
    }
    if rewriter.named && !rewriter.positions.is_empty() {
        return Err(EngineError::invalid(
            "Query parameters cannot be both named (@name) and positional (?) in one query",
        ));
    }
    let mut names = Names::default();
    let _ = Visit::visit(&**query, &mut names);
    Ok(Translated {
        sql: query.to_string(),
        tables: rewriter.tables,
        identifiers: names.idents,
        wildcard: names.wildcard,
    })
}

/// Parses BigQuery SQL as the gateway's analysis reads it (`querygate_sql::parse_as_analyzed`),
/// so that DuckDB runs the statement the pipeline decided on: a carriage return ends a
/// `--`/`#` comment, and a back-ticked query parameter (`` @`name` ``) is `@name`.
fn parse_bigquery(sql: &str) -> Result<Vec<Statement>, EngineError> {
    querygate_sql::parse_as_analyzed(sql, querygate_sql::SqlDialect::BigQuery)
        .map_err(|e| EngineError::invalid(format!("Syntax error: {}", strip_parser_prefix(&e))))
}

/// Where each positional marker `?` is (line, column), numbered in the order the text has them.
fn positional_markers(query: &Query) -> HashMap<(u64, u64), usize> {
    struct Markers(Vec<(u64, u64)>);
    impl Visitor for Markers {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if let Expr::Value(v) = e
                && matches!(&v.value, Value::Placeholder(p) if p == "?")
            {
                self.0.push((v.span.start.line, v.span.start.column));
            }
            ControlFlow::Continue(())
        }
    }
    let mut markers = Markers(Vec::new());
    let _ = Visit::visit(query, &mut markers);
    markers.0.sort_unstable();
    markers
        .0
        .into_iter()
        .enumerate()
        .map(|(i, at)| (at, i))
        .collect()
}

fn strip_parser_prefix(e: &sqlparser::parser::ParserError) -> String {
    let s = e.to_string();
    s.strip_prefix("sql parser error: ")
        .unwrap_or(&s)
        .to_string()
}

/// Statements other than a query: writes are refused as such, the rest as unsupported.
fn refuse_statement(statement: &Statement) -> EngineError {
    let kind = match statement {
        Statement::Insert(_) => Some("INSERT"),
        Statement::Update(_) => Some("UPDATE"),
        Statement::Delete(_) => Some("DELETE"),
        Statement::Merge(_) => Some("MERGE"),
        Statement::Truncate(_) => Some("TRUNCATE"),
        Statement::CreateTable(_) => Some("CREATE TABLE"),
        Statement::CreateView(_) => Some("CREATE VIEW"),
        Statement::Drop { .. } => Some("DROP"),
        Statement::AlterTable(_) => Some("ALTER TABLE"),
        _ => None,
    };
    match kind {
        Some(kind) => EngineError::read_only(format!(
            "querygate's local engine is read-only: {kind} is not supported"
        )),
        None => {
            let text = statement.to_string();
            let head: String = text
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            EngineError::invalid(format!(
                "querygate's local engine runs queries only; the statement {head} is not supported"
            ))
        }
    }
}

/// `SELECT ... INTO`, DML inside a query, `SELECT AS STRUCT/VALUE`: refused by name.
fn check_body(body: &SetExpr) -> Result<(), EngineError> {
    match body {
        SetExpr::Select(select) => {
            if select.into.is_some() {
                return Err(EngineError::read_only(
                    "querygate's local engine is read-only: SELECT ... INTO is not supported",
                ));
            }
            if select.value_table_mode.is_some() {
                return Err(EngineError::invalid(
                    "querygate's local engine does not support SELECT AS STRUCT / SELECT AS VALUE",
                ));
            }
            Ok(())
        }
        SetExpr::Query(q) => check_body(&q.body),
        SetExpr::SetOperation { left, right, .. } => {
            check_body(left)?;
            check_body(right)
        }
        SetExpr::Values(_) => Ok(()),
        SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
            Err(EngineError::read_only(
                "querygate's local engine is read-only: writes are not supported",
            ))
        }
        SetExpr::Table(_) => Err(EngineError::invalid(
            "querygate's local engine does not support TABLE statements",
        )),
    }
}

fn collect_ctes(query: &Query, out: &mut HashSet<String>) {
    struct Ctes<'a>(&'a mut HashSet<String>);
    impl Visitor for Ctes<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if let Some(with) = &q.with {
                for cte in &with.cte_tables {
                    self.0.insert(cte.alias.name.value.to_ascii_lowercase());
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = Visit::visit(query, &mut Ctes(out));
}

/// Identifiers and wildcards of the translated query (for the byte estimate).
#[derive(Default)]
struct Names {
    idents: HashSet<String>,
    wildcard: bool,
}

impl Visitor for Names {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Identifier(id) => {
                self.idents.insert(id.value.to_ascii_lowercase());
            }
            Expr::CompoundIdentifier(ids) => {
                for id in ids {
                    self.idents.insert(id.value.to_ascii_lowercase());
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
    fn pre_visit_select(&mut self, s: &sqlparser::ast::Select) -> ControlFlow<()> {
        use sqlparser::ast::SelectItem;
        if s.projection.iter().any(|p| {
            matches!(
                p,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(_, _)
            )
        }) {
            self.wildcard = true;
        }
        ControlFlow::Continue(())
    }
}

struct Rewriter<'a> {
    ctx: &'a Context<'a>,
    ctes: HashSet<String>,
    tables: BTreeSet<(String, String)>,
    /// Positional markers `?` by (line, column): the n-th in the text takes the n-th parameter.
    positions: HashMap<(u64, u64), usize>,
    /// Whether a named parameter (`@name`) is used.
    named: bool,
    /// One entry per table factor being visited: what replaces it once its children are done
    /// (an INFORMATION_SCHEMA view becomes a derived table over [`META_SCHEMA`], which must not
    /// itself be visited as a table the query names).
    replacements: Vec<Option<TableFactor>>,
}

impl VisitorMut for Rewriter<'_> {
    type Break = EngineError;

    fn pre_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<EngineError> {
        let result = match factor {
            TableFactor::Table {
                name, args, alias, ..
            } => {
                if args.is_some() {
                    Err(EngineError::invalid(format!(
                        "querygate's local engine does not support table functions ({name})"
                    )))
                } else {
                    match self.resolve_table(name) {
                        Ok(Some((view, last))) => {
                            // BigQuery's implicit alias of a path is its last part.
                            if alias.is_none() {
                                *alias = Some(TableAlias {
                                    explicit: true,
                                    name: Ident::with_quote('"', last),
                                    columns: Vec::new(),
                                    at: None,
                                });
                            }
                            self.replacements.push(Some(TableFactor::Derived {
                                lateral: false,
                                subquery: view,
                                alias: None,
                                sample: None,
                            }));
                            return ControlFlow::Continue(());
                        }
                        Ok(None) => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            }
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => Ok(()),
            TableFactor::UNNEST {
                with_offset,
                with_ordinality,
                ..
            } => {
                if *with_offset || *with_ordinality {
                    Err(EngineError::invalid(
                        "querygate's local engine does not support UNNEST ... WITH OFFSET",
                    ))
                } else {
                    Ok(())
                }
            }
            TableFactor::Pivot { .. } => Err(unsupported("PIVOT")),
            TableFactor::Unpivot { .. } => Err(unsupported("UNPIVOT")),
            TableFactor::MatchRecognize { .. } => Err(unsupported("MATCH_RECOGNIZE")),
            _ => Err(unsupported("this FROM clause (table functions)")),
        };
        self.replacements.push(None);
        match result {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }

    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<EngineError> {
        if let Some(Some(mut replacement)) = self.replacements.pop() {
            // The alias as visited (back-ticks already DuckDB's double quotes).
            if let (TableFactor::Table { alias, .. }, TableFactor::Derived { alias: derived, .. }) =
                (&mut *factor, &mut replacement)
            {
                *derived = alias.take();
            }
            *factor = replacement;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<EngineError> {
        // `arr[OFFSET(i)]` and friends, before the visitor reaches `OFFSET` as a function.
        if let Expr::CompoundFieldAccess { access_chain, .. } = expr {
            for access in access_chain.iter_mut() {
                if let AccessExpr::Subscript(Subscript::Index { index }) = access
                    && let Some((name, arg)) = single_arg_call(index)
                {
                    let one_based = match name.as_str() {
                        "offset" | "safe_offset" => Expr::BinaryOp {
                            left: Box::new(Expr::Nested(Box::new(arg))),
                            op: sqlparser::ast::BinaryOperator::Plus,
                            right: Box::new(number("1")),
                        },
                        "ordinal" | "safe_ordinal" => arg,
                        _ => continue,
                    };
                    *index = one_based;
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<EngineError> {
        match self.rewrite_expr(expr) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => ControlFlow::Break(e),
        }
    }

    fn post_visit_ident(&mut self, ident: &mut Ident) -> ControlFlow<EngineError> {
        // BigQuery quotes names with backticks, DuckDB with double quotes.
        if ident.quote_style == Some('`') {
            ident.quote_style = Some('"');
        }
        ControlFlow::Continue(())
    }

    fn post_visit_value(&mut self, value: &mut ValueWithSpan) -> ControlFlow<EngineError> {
        // BigQuery's "…" and r'…' are strings; in DuckDB "…" would be an identifier.
        let replacement = match &value.value {
            Value::DoubleQuotedString(s)
            | Value::SingleQuotedRawStringLiteral(s)
            | Value::DoubleQuotedRawStringLiteral(s)
            | Value::TripleSingleQuotedString(s)
            | Value::TripleDoubleQuotedString(s)
            | Value::TripleSingleQuotedRawStringLiteral(s)
            | Value::TripleDoubleQuotedRawStringLiteral(s) => {
                Some(Value::SingleQuotedString(s.clone()))
            }
            _ => None,
        };
        if let Some(v) = replacement {
            value.value = v;
        }
        ControlFlow::Continue(())
    }
}

impl Rewriter<'_> {
    /// A table path → the DuckDB view `"dataset"."table"`, or `notFound`; an INFORMATION_SCHEMA
    /// view → the query that replaces it and the path's last part (its implicit alias).
    fn resolve_table(
        &mut self,
        name: &mut ObjectName,
    ) -> Result<Option<(Box<Query>, String)>, EngineError> {
        let mut parts = Vec::new();
        for part in &name.0 {
            let ObjectNamePart::Identifier(id) = part else {
                return Err(EngineError::invalid(format!(
                    "cannot read the table name {name}"
                )));
            };
            parts.extend(id.value.split('.').map(str::to_string));
        }
        if parts.len() == 1 && self.ctes.contains(&parts[0].to_ascii_lowercase()) {
            return Ok(None);
        }
        if parts.len() >= 2 && parts[parts.len() - 2].eq_ignore_ascii_case("INFORMATION_SCHEMA") {
            let view = self.information_schema(&parts)?;
            return Ok(Some((view, parts[parts.len() - 1].clone())));
        }
        let (project, dataset, table) = match parts.as_slice() {
            [p, d, t] => (p.as_str(), d.as_str(), t.as_str()),
            [d, t] => (self.ctx.project, d.as_str(), t.as_str()),
            [t] => match self.ctx.default_dataset {
                Some(d) => (self.ctx.project, d, t.as_str()),
                None => {
                    return Err(EngineError::invalid(format!(
                        "Table \"{t}\" must be qualified with a dataset (e.g. dataset.table)."
                    )));
                }
            },
            _ => {
                return Err(EngineError::invalid(format!(
                    "cannot read the table name {name}"
                )));
            }
        };
        if table.contains('*') {
            return Err(unsupported("wildcard tables"));
        }
        if table.contains('$') || table.contains('@') {
            return Err(unsupported("table decorators"));
        }
        let key = (dataset.to_string(), table.to_string());
        if project != self.ctx.project || !self.ctx.tables.contains(&key) {
            return Err(EngineError::not_found(format!(
                "Not found: Table {project}:{dataset}.{table} was not found in location US"
            )));
        }
        *name = ObjectName::from(vec![
            Ident::with_quote('"', dataset),
            Ident::with_quote('"', table),
        ]);
        self.tables.insert(key);
        Ok(None)
    }

    /// `[[project.]dataset|region-us.]INFORMATION_SCHEMA.VIEW` → a query over the view's rows in
    /// [`META_SCHEMA`], filtered to the dataset when the path names one. The rows are the
    /// configured tables only (the engine writes them from its catalog).
    fn information_schema(&self, parts: &[String]) -> Result<Box<Query>, EngineError> {
        let n = parts.len();
        let written = parts.join(".");
        let view = &parts[n - 1];
        let Some((_, table, dataset_column)) = META_VIEWS
            .iter()
            .find(|(v, _, _)| v.eq_ignore_ascii_case(view))
        else {
            return Err(EngineError::invalid(format!(
                "querygate's local engine serves INFORMATION_SCHEMA.TABLES, INFORMATION_SCHEMA.COLUMNS \
                 and INFORMATION_SCHEMA.SCHEMATA; {written} is not supported"
            )));
        };
        let (project, scope) = match &parts[..n - 2] {
            [] => match self.ctx.default_dataset {
                Some(d) => (self.ctx.project, d),
                None => {
                    return Err(EngineError::invalid(format!(
                        "Table name \"{written}\" missing dataset while no default dataset is set \
                         in the request (write dataset.INFORMATION_SCHEMA.{view} or \
                         `region-us`.INFORMATION_SCHEMA.{view})"
                    )));
                }
            },
            [scope] => (self.ctx.project, scope.as_str()),
            [project, scope] => (project.as_str(), scope.as_str()),
            _ => {
                return Err(EngineError::invalid(format!(
                    "cannot read the table name {written}"
                )));
            }
        };
        if project != self.ctx.project {
            return Err(EngineError::not_found(format!(
                "Not found: Project {project} (this source serves project {})",
                self.ctx.project
            )));
        }
        let filter = match scope.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("region-") => {
                if !scope[7..].eq_ignore_ascii_case(LOCATION) {
                    return Err(EngineError::not_found(format!(
                        "Not found: {scope}: this source's datasets are in region-{}",
                        LOCATION.to_ascii_lowercase()
                    )));
                }
                String::new()
            }
            _ => {
                if !self.ctx.tables.iter().any(|(d, _)| d == scope) {
                    return Err(EngineError::not_found(format!(
                        "Not found: Dataset {project}:{scope} was not found in location {LOCATION}"
                    )));
                }
                format!(" WHERE {dataset_column} = {}", quote(scope))
            }
        };
        Parser::new(&DuckDbDialect {})
            .try_with_sql(&format!(
                "SELECT * FROM \"{META_SCHEMA}\".\"{table}\"{filter}"
            ))
            .and_then(|mut p| p.parse_query())
            .map_err(|e| EngineError::internal(format!("INFORMATION_SCHEMA: {e}")))
    }

    fn rewrite_expr(&mut self, expr: &mut Expr) -> Result<(), EngineError> {
        match expr {
            Expr::Function(f) => {
                let replacement = self.rewrite_function(f)?;
                if let Some(r) = replacement {
                    *expr = r;
                }
            }
            Expr::Cast {
                kind,
                data_type,
                format,
                expr: inner,
            } => {
                if format.is_some() {
                    return Err(unsupported("CAST ... FORMAT"));
                }
                let target = duckdb_type(data_type)?;
                let keyword = match kind {
                    CastKind::SafeCast | CastKind::TryCast => "TRY_CAST",
                    _ => "CAST",
                };
                *expr = parse_expr(&format!("{keyword}({inner} AS {target})"))?;
            }
            Expr::TypedString(ts) => {
                let target = duckdb_type(&ts.data_type)?;
                let text = match &ts.value.value {
                    Value::SingleQuotedString(s)
                    | Value::DoubleQuotedString(s)
                    | Value::SingleQuotedRawStringLiteral(s)
                    | Value::DoubleQuotedRawStringLiteral(s) => s.clone(),
                    other => other.to_string(),
                };
                *expr = parse_expr(&format!("CAST({} AS {target})", quote(&text)))?;
            }
            Expr::Struct { values, fields } => {
                let mut entries = Vec::new();
                for (i, v) in values.iter().enumerate() {
                    let (key, value) = match v {
                        Expr::Named { expr, name } => (name.value.clone(), (**expr).clone()),
                        other => (
                            fields
                                .get(i)
                                .and_then(|f| f.field_name.as_ref())
                                .map_or_else(|| format!("_field_{}", i + 1), |n| n.value.clone()),
                            other.clone(),
                        ),
                    };
                    let value = match fields.get(i) {
                        Some(field) => parse_expr(&format!(
                            "CAST({value} AS {})",
                            duckdb_type(&field.field_type)?
                        ))?,
                        None => value,
                    };
                    entries.push(DictionaryField {
                        key: Ident::with_quote('\'', key),
                        value: Box::new(value),
                    });
                }
                *expr = Expr::Dictionary(entries);
            }
            Expr::Array(array) => array.named = false,
            // BigQuery's parser reads `@name` as an identifier.
            Expr::Identifier(id) if id.quote_style.is_none() && id.value.starts_with('@') => {
                let name = id.value.clone();
                *expr = self.parameter(&name, None)?;
            }
            // `x IN UNNEST(array)`: DuckDB has no such form; the subquery keeps SQL's NULL rules,
            // which are BigQuery's here too (an empty or NULL array: FALSE).
            Expr::In {
                expr: left,
                target: InTarget::Unnest(array),
                negated,
                ..
            } => {
                *expr = parse_expr(&format!(
                    "({left}) {}IN (SELECT unnest({array}))",
                    if *negated { "NOT " } else { "" }
                ))?;
            }
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => {
                    let at = (v.span.start.line, v.span.start.column);
                    *expr = self.parameter(&p.clone(), Some(at))?;
                }
                // b'...' → a BLOB (DuckDB reads the same \x.. escapes in a string cast to BLOB).
                Value::SingleQuotedByteStringLiteral(b)
                | Value::DoubleQuotedByteStringLiteral(b)
                | Value::TripleSingleQuotedByteStringLiteral(b)
                | Value::TripleDoubleQuotedByteStringLiteral(b) => {
                    *expr = parse_expr(&format!("CAST({} AS BLOB)", quote(b)))?;
                }
                _ => {}
            },
            Expr::Collate { .. } => return Err(unsupported("COLLATE")),
            _ => {}
        }
        Ok(())
    }

    /// One function call: kept, renamed, rewritten, or refused. `None` keeps it as is.
    fn rewrite_function(
        &mut self,
        f: &mut sqlparser::ast::Function,
    ) -> Result<Option<Expr>, EngineError> {
        let name = match f.name.0.as_slice() {
            [ObjectNamePart::Identifier(id)] => id.value.to_ascii_lowercase(),
            _ => {
                return Err(EngineError::invalid(format!(
                    "querygate's local engine does not support the function {} (qualified or SAFE. functions)",
                    f.name
                )));
            }
        };
        let args = plain_args(f);
        let arg = |i: usize| -> Result<String, EngineError> {
            args.as_ref()
                .and_then(|a| a.get(i))
                .map(ToString::to_string)
                .ok_or_else(|| {
                    EngineError::invalid(format!(
                        "{} needs at least {} argument(s)",
                        name.to_ascii_uppercase(),
                        i + 1
                    ))
                })
        };
        let argc = args.as_ref().map_or(0, Vec::len);
        let rename = |f: &mut sqlparser::ast::Function, to: &str| {
            f.name = ObjectName::from(vec![Ident::new(to)]);
        };
        if KEEP.contains(&name.as_str()) {
            return Ok(None);
        }
        let template = match name.as_str() {
            "countif" => {
                rename(f, "count_if");
                return Ok(None);
            }
            "logical_and" => {
                rename(f, "bool_and");
                return Ok(None);
            }
            "logical_or" => {
                rename(f, "bool_or");
                return Ok(None);
            }
            "regexp_contains" => {
                rename(f, "regexp_matches");
                return Ok(None);
            }
            "from_hex" => {
                rename(f, "unhex");
                return Ok(None);
            }
            "generate_array" => {
                rename(f, "generate_series");
                return Ok(None);
            }
            "rand" => {
                rename(f, "random");
                return Ok(None);
            }
            "array" if matches!(f.args, FunctionArguments::Subquery(_)) => return Ok(None),
            "concat" => {
                // BigQuery: NULL if any argument is NULL (DuckDB's concat skips NULLs; `||` does not).
                let parts = (0..argc).map(&arg).collect::<Result<Vec<_>, _>>()?;
                if parts.is_empty() {
                    return Err(EngineError::invalid("CONCAT needs at least 1 argument(s)"));
                }
                format!(
                    "({})",
                    parts
                        .iter()
                        .map(|p| format!("({p})"))
                        .collect::<Vec<_>>()
                        .join(" || ")
                )
            }
            "sha256" => format!("unhex(sha256({}))", arg(0)?),
            "sha1" => format!("unhex(sha1({}))", arg(0)?),
            "md5" => format!("unhex(md5({}))", arg(0)?),
            "to_hex" => format!("lower(hex({}))", arg(0)?),
            "regexp_replace" => {
                format!("regexp_replace({}, {}, {}, 'g')", arg(0)?, arg(1)?, arg(2)?)
            }
            "regexp_extract" => {
                let group = match args.as_ref().and_then(|a| a.get(1)) {
                    Some(Expr::Value(v)) if has_capture_group(&v.value) => 1,
                    _ => 0,
                };
                format!("regexp_extract({}, {}, {group})", arg(0)?, arg(1)?)
            }
            "format_date" | "format_datetime" | "format_timestamp" => {
                format!("strftime(CAST({} AS TIMESTAMP), {})", arg(1)?, arg(0)?)
            }
            "parse_date" => format!("CAST(strptime({}, {}) AS DATE)", arg(1)?, arg(0)?),
            "parse_datetime" => format!("CAST(strptime({}, {}) AS TIMESTAMP)", arg(1)?, arg(0)?),
            "parse_timestamp" => format!("CAST(strptime({}, {}) AS TIMESTAMPTZ)", arg(1)?, arg(0)?),
            "date_trunc" => {
                let part = date_part(args.as_ref().and_then(|a| a.get(1)), &name)?;
                format!("CAST(date_trunc('{part}', {}) AS DATE)", arg(0)?)
            }
            "datetime_trunc" => {
                let part = date_part(args.as_ref().and_then(|a| a.get(1)), &name)?;
                format!("date_trunc('{part}', CAST({} AS TIMESTAMP))", arg(0)?)
            }
            "timestamp_trunc" => {
                let part = date_part(args.as_ref().and_then(|a| a.get(1)), &name)?;
                format!(
                    "CAST(date_trunc('{part}', CAST({} AS TIMESTAMP)) AS TIMESTAMPTZ)",
                    arg(0)?
                )
            }
            "date_diff" => {
                let part = date_part(args.as_ref().and_then(|a| a.get(2)), &name)?;
                format!("date_diff('{part}', {}, {})", arg(1)?, arg(0)?)
            }
            "datetime_diff" | "timestamp_diff" => {
                let part = date_part(args.as_ref().and_then(|a| a.get(2)), &name)?;
                format!(
                    "date_diff('{part}', CAST({} AS TIMESTAMP), CAST({} AS TIMESTAMP))",
                    arg(1)?,
                    arg(0)?
                )
            }
            // Without DuckDB's ICU extension, TIMESTAMPTZ arithmetic goes through TIMESTAMP
            // (both hold UTC here); DATE ± INTERVAL is a TIMESTAMP in DuckDB, a DATE in BigQuery.
            "date_add" => format!("CAST(({} + {}) AS DATE)", arg(0)?, arg(1)?),
            "date_sub" => format!("CAST(({} - {}) AS DATE)", arg(0)?, arg(1)?),
            "datetime_add" => format!("(CAST({} AS TIMESTAMP) + {})", arg(0)?, arg(1)?),
            "datetime_sub" => format!("(CAST({} AS TIMESTAMP) - {})", arg(0)?, arg(1)?),
            "timestamp_add" => format!(
                "CAST((CAST({} AS TIMESTAMP) + {}) AS TIMESTAMPTZ)",
                arg(0)?,
                arg(1)?
            ),
            "timestamp_sub" => format!(
                "CAST((CAST({} AS TIMESTAMP) - {}) AS TIMESTAMPTZ)",
                arg(0)?,
                arg(1)?
            ),
            "date" if argc == 3 => format!("make_date({}, {}, {})", arg(0)?, arg(1)?, arg(2)?),
            "date" if argc == 1 => format!("CAST({} AS DATE)", arg(0)?),
            "datetime" if argc == 1 => format!("CAST({} AS TIMESTAMP)", arg(0)?),
            "timestamp" if argc == 1 => format!("CAST({} AS TIMESTAMPTZ)", arg(0)?),
            "unix_seconds" => format!("CAST(epoch(CAST({} AS TIMESTAMP)) AS BIGINT)", arg(0)?),
            "unix_millis" => format!("epoch_ms(CAST({} AS TIMESTAMP))", arg(0)?),
            "unix_date" => format!("date_diff('day', DATE '1970-01-01', {})", arg(0)?),
            "timestamp_seconds" => format!("to_timestamp({})", arg(0)?),
            "timestamp_millis" => format!("make_timestamp(({}) * 1000)", arg(0)?),
            "safe_divide" => format!(
                "(CASE WHEN ({1}) = 0 THEN NULL ELSE ({0}) / ({1}) END)",
                arg(0)?,
                arg(1)?
            ),
            "div" => format!("(({}) // ({}))", arg(0)?, arg(1)?),
            "split" if argc == 1 => format!("string_split({}, ',')", arg(0)?),
            "split" => format!("string_split({}, {})", arg(0)?, arg(1)?),
            "array_length" => format!("len({})", arg(0)?),
            "array_to_string" if argc == 2 => format!("array_to_string({}, {})", arg(0)?, arg(1)?),
            "to_json_string" => format!("CAST(to_json({}) AS VARCHAR)", arg(0)?),
            "json_value" | "json_extract_scalar" => {
                let path = if argc > 1 { arg(1)? } else { "'$'".into() };
                format!("json_extract_string({}, {path})", arg(0)?)
            }
            "json_query" | "json_extract" => {
                let path = if argc > 1 { arg(1)? } else { "'$'".into() };
                format!("json_extract({}, {path})", arg(0)?)
            }
            "byte_length" => format!("octet_length(CAST({} AS BLOB))", arg(0)?),
            "char_length" | "character_length" => format!("length({})", arg(0)?),
            "instr" | "strpos" => format!("strpos({}, {})", arg(0)?, arg(1)?),
            _ => {
                return Err(EngineError::invalid(format!(
                    "querygate's local engine does not support the function {}",
                    name.to_ascii_uppercase()
                )));
            }
        };
        parse_expr(&template).map(Some)
    }

    /// A query parameter (`@name`, or the `?` at `at`) as a typed literal.
    fn parameter(
        &mut self,
        placeholder: &str,
        at: Option<(u64, u64)>,
    ) -> Result<Expr, EngineError> {
        let params = self
            .ctx
            .parameters
            .and_then(Json::as_array)
            .ok_or_else(|| {
                EngineError::invalid(format!(
                    "Query parameter '{placeholder}' not found (the request has no queryParameters)"
                ))
            })?;
        let param = if let Some(name) = placeholder.strip_prefix('@') {
            self.named = true;
            params
                .iter()
                .find(|p| {
                    p.get("name")
                        .and_then(Json::as_str)
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                })
                .ok_or_else(|| {
                    EngineError::invalid(format!("Query parameter '{placeholder}' not found"))
                })?
        } else if placeholder == "?" {
            // Positional (parameterMode POSITIONAL): the n-th `?` of the text takes the n-th.
            let n = at
                .and_then(|at| self.positions.get(&at).copied())
                .ok_or_else(|| EngineError::internal("a positional parameter was not located"))?;
            params.get(n).ok_or_else(|| {
                EngineError::invalid(format!(
                    "No value given for positional query parameter {} (the query has {} `?`, \
                     the request {} queryParameters)",
                    n + 1,
                    self.positions.len(),
                    params.len()
                ))
            })?
        } else {
            return Err(unsupported(&format!(
                "query parameters written {placeholder}"
            )));
        };
        parse_expr(&parameter_literal(
            param.get("parameterType").unwrap_or(&Json::Null),
            param.get("parameterValue").unwrap_or(&Json::Null),
        )?)
    }
}

/// Functions DuckDB runs as BigQuery does, under the same name.
const KEEP: &[&str] = &[
    "count",
    "sum",
    "avg",
    "min",
    "max",
    "any_value",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "variance",
    "var_pop",
    "var_samp",
    "corr",
    "covar_pop",
    "covar_samp",
    "approx_count_distinct",
    "array_agg",
    "string_agg",
    "bit_and",
    "bit_or",
    "bit_xor",
    "row_number",
    "rank",
    "dense_rank",
    "percent_rank",
    "cume_dist",
    "ntile",
    "lag",
    "lead",
    "first_value",
    "last_value",
    "nth_value",
    "abs",
    "sign",
    "round",
    "trunc",
    "ceil",
    "ceiling",
    "floor",
    "sqrt",
    "pow",
    "power",
    "exp",
    "ln",
    "log",
    "log10",
    "mod",
    "greatest",
    "least",
    "coalesce",
    "nullif",
    "ifnull",
    "if",
    "lower",
    "upper",
    "trim",
    "ltrim",
    "rtrim",
    "length",
    "substr",
    "substring",
    "replace",
    "reverse",
    "lpad",
    "rpad",
    "left",
    "right",
    "repeat",
    "starts_with",
    "ends_with",
    "ascii",
    "chr",
    "initcap",
    "current_date",
    "current_timestamp",
    "current_datetime",
    "extract",
    "array_concat",
    "array_reverse",
    "regexp_extract_all",
    "format",
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "atan2",
    "is_nan",
    "is_inf",
    "range_bucket",
    "array_to_string",
];

/// The arguments of a call, when all are plain expressions.
fn plain_args(f: &sqlparser::ast::Function) -> Option<Vec<Expr>> {
    let FunctionArguments::List(list) = &f.args else {
        return None;
    };
    list.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e.clone()),
            _ => None,
        })
        .collect()
}

/// `NAME(arg)` with one plain argument.
fn single_arg_call(e: &Expr) -> Option<(String, Expr)> {
    let Expr::Function(f) = e else { return None };
    let [ObjectNamePart::Identifier(id)] = f.name.0.as_slice() else {
        return None;
    };
    let mut args = plain_args(f)?;
    (args.len() == 1).then(|| (id.value.to_ascii_lowercase(), args.remove(0)))
}

/// The date part argument of DATE_TRUNC and friends (`MONTH`, `DAY`, …).
fn date_part(e: Option<&Expr>, function: &str) -> Result<&'static str, EngineError> {
    let word = match e {
        Some(Expr::Identifier(id)) => id.value.to_ascii_uppercase(),
        Some(Expr::Value(v)) => match &v.value {
            Value::SingleQuotedString(s) => s.to_ascii_uppercase(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    Ok(match word.as_str() {
        "MICROSECOND" => "microseconds",
        "MILLISECOND" => "milliseconds",
        "SECOND" => "second",
        "MINUTE" => "minute",
        "HOUR" => "hour",
        "DAY" => "day",
        "WEEK" => "week",
        "ISOWEEK" => "week",
        "MONTH" => "month",
        "QUARTER" => "quarter",
        "YEAR" | "ISOYEAR" => "year",
        _ => {
            return Err(EngineError::invalid(format!(
                "querygate's local engine does not support this date part in {}",
                function.to_ascii_uppercase()
            )));
        }
    })
}

/// Whether a regex literal has a capturing group (BigQuery's REGEXP_EXTRACT returns it).
fn has_capture_group(v: &Value) -> bool {
    let s = match v {
        Value::SingleQuotedString(s)
        | Value::DoubleQuotedString(s)
        | Value::SingleQuotedRawStringLiteral(s)
        | Value::DoubleQuotedRawStringLiteral(s) => s,
        _ => return false,
    };
    let b = s.as_bytes();
    (0..b.len())
        .any(|i| b[i] == b'(' && (i == 0 || b[i - 1] != b'\\') && b.get(i + 1) != Some(&b'?'))
}

fn unsupported(what: &str) -> EngineError {
    EngineError::invalid(format!("querygate's local engine does not support {what}"))
}

fn number(n: &str) -> Expr {
    Expr::Value(Value::Number(n.to_string(), false).into())
}

/// A SQL string literal.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Parses a DuckDB expression built by the rewrite (from already translated pieces).
fn parse_expr(sql: &str) -> Result<Expr, EngineError> {
    Parser::new(&DuckDbDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| {
            EngineError::invalid(format!(
                "querygate's local engine could not translate this expression: {}",
                strip_parser_prefix(&e)
            ))
        })
}

/// A BigQuery type as DuckDB spells it.
pub(crate) fn duckdb_type(t: &sqlparser::ast::DataType) -> Result<String, EngineError> {
    use sqlparser::ast::{ArrayElemTypeDef, DataType as T};
    Ok(match t {
        T::Int64 | T::Integer(_) | T::Int(_) | T::BigInt(_) | T::SmallInt(_) | T::TinyInt(_) => {
            "BIGINT".into()
        }
        T::Float64 | T::Double(_) | T::DoublePrecision | T::Float(_) | T::Real => "DOUBLE".into(),
        T::Bool | T::Boolean => "BOOLEAN".into(),
        T::String(_) | T::Varchar(_) | T::Text => "VARCHAR".into(),
        T::Bytes(_) | T::Blob(_) => "BLOB".into(),
        T::Numeric(_) | T::Decimal(_) => "DECIMAL(38,9)".into(),
        T::BigNumeric(_) | T::BigDecimal(_) => "DECIMAL(38,18)".into(),
        T::Date => "DATE".into(),
        T::Datetime(_) => "TIMESTAMP".into(),
        T::Timestamp(_, _) => "TIMESTAMPTZ".into(),
        T::Time(_, _) => "TIME".into(),
        T::JSON => "JSON".into(),
        T::Interval { .. } => "INTERVAL".into(),
        T::Array(ArrayElemTypeDef::AngleBracket(inner))
        | T::Array(ArrayElemTypeDef::SquareBracket(inner, _))
        | T::Array(ArrayElemTypeDef::Parenthesis(inner)) => format!("{}[]", duckdb_type(inner)?),
        T::Struct(fields, _) => {
            let mut parts = Vec::new();
            for (i, f) in fields.iter().enumerate() {
                let name = f
                    .field_name
                    .as_ref()
                    .map_or_else(|| format!("_field_{}", i + 1), |n| n.value.clone());
                parts.push(format!(
                    "\"{}\" {}",
                    name.replace('"', "\"\""),
                    duckdb_type(&f.field_type)?
                ));
            }
            format!("STRUCT({})", parts.join(", "))
        }
        other => {
            return Err(EngineError::invalid(format!(
                "querygate's local engine does not support the type {other}"
            )));
        }
    })
}

/// A BigQuery type name (`INT64`, `STRING`, …) as DuckDB spells it.
fn duckdb_type_named(name: &str) -> Result<&'static str, EngineError> {
    Ok(match name.to_ascii_uppercase().as_str() {
        "INT64" | "INTEGER" => "BIGINT",
        "FLOAT64" | "FLOAT" => "DOUBLE",
        "BOOL" | "BOOLEAN" => "BOOLEAN",
        "STRING" => "VARCHAR",
        "BYTES" => "BLOB",
        "NUMERIC" => "DECIMAL(38,9)",
        "BIGNUMERIC" => "DECIMAL(38,18)",
        "DATE" => "DATE",
        "DATETIME" => "TIMESTAMP",
        "TIMESTAMP" => "TIMESTAMPTZ",
        "TIME" => "TIME",
        "JSON" => "JSON",
        other => {
            return Err(EngineError::invalid(format!(
                "querygate's local engine does not support query parameters of type {other}"
            )));
        }
    })
}

/// A query parameter's value as a DuckDB literal of its declared type.
fn parameter_literal(ty: &Json, value: &Json) -> Result<String, EngineError> {
    let kind = ty.get("type").and_then(Json::as_str).unwrap_or("STRING");
    if kind.eq_ignore_ascii_case("ARRAY") {
        let elem = ty.get("arrayType").unwrap_or(&Json::Null);
        let items = value
            .get("arrayValues")
            .and_then(Json::as_array)
            .map(|a| {
                a.iter()
                    .map(|v| parameter_literal(elem, v))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?
            .unwrap_or_default();
        let elem_type =
            duckdb_type_named(elem.get("type").and_then(Json::as_str).unwrap_or("STRING"))?;
        return Ok(format!("CAST([{}] AS {elem_type}[])", items.join(", ")));
    }
    if kind.eq_ignore_ascii_case("STRUCT") {
        return Err(unsupported("STRUCT query parameters"));
    }
    let target = duckdb_type_named(kind)?;
    let text = match value.get("value") {
        None | Some(Json::Null) => return Ok(format!("CAST(NULL AS {target})")),
        Some(Json::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    if target == "BLOB" {
        // BYTES parameters arrive base64-encoded.
        return Ok(format!("from_base64({})", quote(&text)));
    }
    Ok(format!("CAST({} AS {target})", quote(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tables() -> BTreeSet<(String, String)> {
        [("shop", "customers"), ("shop", "orders")]
            .iter()
            .map(|(d, t)| (d.to_string(), t.to_string()))
            .collect()
    }

    fn check(sql: &str) -> Result<String, EngineError> {
        let t = tables();
        translate(
            sql,
            &Context {
                project: "demo",
                tables: &t,
                default_dataset: None,
                parameters: None,
            },
        )
        .map(|t| t.sql)
    }

    #[test]
    fn table_paths_become_views_and_unknown_ones_are_not_found() {
        assert_eq!(
            check("SELECT id FROM `demo.shop.customers`").expect("ok"),
            "SELECT id FROM \"shop\".\"customers\""
        );
        assert_eq!(
            check("SELECT id FROM shop.customers c").expect("ok"),
            "SELECT id FROM \"shop\".\"customers\" c"
        );
        let e = check("SELECT 1 FROM `other.shop.customers`").expect_err("other project");
        assert_eq!(e.reason(), "notFound");
        let e = check("SELECT * FROM read_text('/etc/passwd')").expect_err("table function");
        assert_eq!(e.reason(), "invalidQuery");
        let e = check("SELECT read_text('/etc/passwd')").expect_err("file function");
        assert!(e.to_string().contains("READ_TEXT"), "{e}");
        let e = check("DELETE FROM shop.customers WHERE true").expect_err("write");
        assert_eq!(e.reason(), "accessDenied");
    }
}
