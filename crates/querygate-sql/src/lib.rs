//! SQL analysis: SQL text in, [`Facts`] out. Pure and total.
//!
//! [`analyze`] reads a script (BigQuery or PostgreSQL dialect) and reports, per statement, its
//! kind, the base tables it reads and writes, the functions it calls, the lineage of each output
//! column down to base columns, the columns it filters, groups and orders by, and every read of
//! a base table with the columns its own query block bounds ([`Scan`]: what partition filters
//! are judged on). Policy decides what to do with these facts; this crate knows nothing of
//! identities or policy.
//!
//! Parsing never fails from the caller's point of view: text the grammar cannot read, and SQL the
//! analyzer cannot fully understand, becomes `Facts { opaque: Some(why), .. }` (the default policy
//! for opaque SQL is deny); text the tokenizer or parser rejects also sets
//! [`Facts::syntax_error`] (message and position), so a caller can answer it as invalid SQL.
//! BigQuery's back-ticked query parameters (`` @`name` ``) are read as `@name`.
//!
//! Table, dataset, project and column names compare without case wherever this crate compares
//! them ([`name_key`]): upstreams resolve `shop.CUSTOMERS` to `shop.customers`. The analyzer has no schema, so where a name could mean several things
//! it reports every candidate: facts over-approximate, they never silently drop a source. (A
//! consumer with the schema can drop candidate columns a table does not have.)
//!
//! # What is opaque
//!
//! - text sqlparser cannot parse (the parser's message is the reason): BigQuery
//!   `ML.PREDICT(MODEL …)`, `CREATE TABLE … COPY`, BigQuery `CREATE PROCEDURE … BEGIN … END`,
//!   BigQuery `LOOP`, `WHILE … DO`, `REPEAT`, `FOR … IN`, PostgreSQL `DO $$ … $$` and `$$`-quoted
//!   function bodies;
//! - dynamic SQL: `EXECUTE IMMEDIATE`, PostgreSQL `EXECUTE` of a prepared statement, and
//!   functions that run SQL text (`query_to_xml`, `dblink*`, `EXTERNAL_QUERY`, …);
//! - table functions other than PostgreSQL's pure set-returning ones (what they read is unknown),
//!   `CREATE FUNCTION` whose body contains a query or is SQL text, `COPY … PROGRAM`;
//! - names that resolve to nothing, `@@error` (it can echo data from a failed statement), a
//!   variable passed to `CALL` and read afterwards, `SET @@dataset_id`/`@@project_id`, a table
//!   name that differs from a CTE name only in case (BigQuery);
//! - BigQuery pipe syntax, lambdas, and clauses of other dialects sqlparser accepts (Snowflake
//!   `EXCLUDE`, ClickHouse `SETTINGS`, MSSQL `OUTPUT`, …);
//! - anything the walker did not account for: an independent pass over the AST lists every
//!   identifier expression and table name, and any the walker skipped makes the statement opaque;
//! - input beyond the resource bounds: more than [`MAX_OPERATORS`] operators, nesting deeper than
//!   the walker's depth limit (200), or more than a million walk steps per call.
//!
//! This crate must not do IO, must not panic on any input, and must not recurse without bound:
//! long operator chains are refused before parsing, and every walk is depth-limited.
//!
//! Layout: `facts` (public types), `names` (dialect naming rules, [`name_key`]), `scope` (name
//! resolution values), `walk` + `expr` + `dml` (the lineage walker), `bounds` (which columns of
//! which reads a WHERE/ON bounds), `statements` (statement kinds, script flattening, safety
//! nets), `guard` (independent AST passes), `functions` (name lists), `rewrite` (the masking
//! rewrite).

mod bounds;
mod dml;
mod expr;
mod facts;
mod functions;
mod guard;
mod names;
mod rewrite;
mod scope;
mod shape;
mod statements;
mod walk;

use std::panic::{AssertUnwindSafe, catch_unwind};

use sqlparser::ast::Statement;
use sqlparser::dialect::{BigQueryDialect, Dialect, PostgreSqlDialect};
use sqlparser::keywords::Keyword;
use sqlparser::parser::{Parser, ParserError};
use sqlparser::tokenizer::{Span, Token, TokenWithSpan, Tokenizer, TokenizerError, Word};

pub use facts::{
    ColumnRef, Facts, OutputColumn, Scan, StatementFacts, StatementKind, SyntaxError, TableRef,
};
pub use functions::is_side_effecting;
pub use names::{TableNameError, name_key, same_name};
pub use rewrite::{
    MASK_KEY_PARAM, MaskedColumn, Masking, RewriteError, SOURCE_ALIAS, mask_reads, quote_column,
    reserved_marker,
};
pub use shape::shape;

/// Which SQL dialect to parse with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlDialect {
    BigQuery,
    Postgres,
}

/// The most binary/postfix operators (and set operations) one text may hold. sqlparser builds
/// chains (`a + b + c …`, `x::t::t …`, `… UNION ALL …`) as left-deep trees without counting
/// recursion, and dropping a tree tens of thousands of levels deep overflows a thread's stack;
/// this bound keeps every tree far below that.
pub const MAX_OPERATORS: usize = 10_000;

/// Analyzes SQL text. Never panics, never errors: what cannot be understood is `opaque`.
pub fn analyze(sql: &str, dialect: SqlDialect) -> Facts {
    match catch_unwind(AssertUnwindSafe(|| analyze_inner(sql, dialect))) {
        Ok(facts) => facts,
        Err(_) => opaque("internal error in the SQL analyzer; the statement is refused".into()),
    }
}

/// The statement as tokens, comments dropped and whitespace made single spaces: two texts
/// normalize alike only when they say the same thing token for token (literals, case and
/// quoting kept). What an approval binds to (hashed), so reformatting a statement keeps
/// its approval and changing any value does not. Text that does not tokenize is only
/// trimmed.
pub fn normalize(sql: &str, dialect: SqlDialect) -> String {
    match Tokenizer::new(dialect_of(dialect), sql).tokenize() {
        Ok(tokens) => {
            let mut out = String::with_capacity(sql.len());
            for t in tokens {
                if matches!(t, Token::Whitespace(_)) {
                    if !out.ends_with(' ') && !out.is_empty() {
                        out.push(' ');
                    }
                    continue;
                }
                out.push_str(&t.to_string());
            }
            out.trim().trim_end_matches(';').trim().to_string()
        }
        Err(_) => sql.trim().to_string(),
    }
}

fn opaque(why: String) -> Facts {
    Facts {
        statements: vec![],
        opaque: Some(why),
        syntax_error: None,
    }
}

/// Text the tokenizer or the parser rejects: opaque (nothing that relies on `opaque` opens
/// up) and a syntax error the caller can answer as one.
fn syntax_error(why: String, error: SyntaxError) -> Facts {
    Facts {
        statements: vec![],
        opaque: Some(format!("querygate cannot parse this SQL: {why}")),
        syntax_error: Some(error),
    }
}

fn dialect_of(dialect: SqlDialect) -> &'static dyn Dialect {
    match dialect {
        SqlDialect::BigQuery => &BigQueryDialect {},
        SqlDialect::Postgres => &PostgreSqlDialect {},
    }
}

/// The tokens of `sql` as sqlparser reads them, before querygate's adjustments.
fn raw_tokens(sql: &str, dialect: SqlDialect) -> Result<Vec<TokenWithSpan>, TokenizerError> {
    Tokenizer::new(dialect_of(dialect), sql).tokenize_with_location()
}

/// The tokens querygate parses: sqlparser's, with BigQuery's back-ticked query parameters
/// (`` @`name` ``, as the Python DB-API layer writes them) made one word `@name`, the token
/// sqlparser makes of `@name`. sqlparser reads `@` before a back-tick as a lone sign and the
/// parser then fails; BigQuery reads a named parameter. The facts of `` @`name` `` are those
/// of `@name` (a parameter holds no table data). Back-slash escapes inside the back-ticks are
/// kept as written (`mask_reads` refuses them where a parameter's name matters).
pub(crate) fn tokens(sql: &str, dialect: SqlDialect) -> Result<Vec<TokenWithSpan>, TokenizerError> {
    raw_tokens(sql, dialect).map(|t| merge_parameters(t, dialect))
}

fn merge_parameters(tokens: Vec<TokenWithSpan>, dialect: SqlDialect) -> Vec<TokenWithSpan> {
    if dialect != SqlDialect::BigQuery || !tokens.iter().any(|t| t.token == Token::AtSign) {
        return tokens;
    }
    let mut out: Vec<TokenWithSpan> = Vec::with_capacity(tokens.len());
    let mut iter = tokens.into_iter().peekable();
    while let Some(t) = iter.next() {
        if t.token == Token::AtSign
            && let Some(TokenWithSpan {
                token: Token::Word(w),
                span,
            }) = iter.peek()
            && w.quote_style == Some('`')
        {
            let merged = TokenWithSpan {
                token: Token::Word(Word {
                    value: format!("@{}", w.value),
                    quote_style: None,
                    keyword: Keyword::NoKeyword,
                }),
                span: Span::new(t.span.start, span.end),
            };
            iter.next();
            out.push(merged);
            continue;
        }
        out.push(t);
    }
    out
}

/// Parses SQL exactly as [`analyze`] reads it, for an engine that must run the statement the
/// pipeline decided on (the embedded engine's translator): in BigQuery a carriage return ends
/// a `--`/`#` comment (sqlparser ends them at a line feed only), and a back-ticked query
/// parameter (`` @`name` ``) is the named parameter `@name`. Line breaks only separate
/// tokens, so the carriage returns become line feeds (also inside string literals).
pub fn parse_as_analyzed(sql: &str, dialect: SqlDialect) -> Result<Vec<Statement>, ParserError> {
    let normalized;
    let sql = if dialect == SqlDialect::BigQuery && sql.contains('\r') {
        normalized = sql.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        sql
    };
    let tokens = tokens(sql, dialect)?;
    Parser::new(dialect_of(dialect))
        .with_tokens_with_locations(tokens)
        .parse_statements()
}

/// The statements of `sql`, parsed from [`tokens`].
pub(crate) fn parse(sql: &str, dialect: SqlDialect) -> Result<Vec<Statement>, RewriteError> {
    let tokens = tokens(sql, dialect).map_err(|e| RewriteError::Parse(e.to_string()))?;
    Parser::new(dialect_of(dialect))
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| RewriteError::Parse(e.to_string()))
}

/// A parser error as a [`SyntaxError`]; `None` for what is not one (the parser's recursion
/// limit: the text may be valid, only too deeply nested for querygate).
fn parser_syntax_error(e: &ParserError) -> Option<SyntaxError> {
    let text = match e {
        ParserError::ParserError(s) | ParserError::TokenizerError(s) => s,
        ParserError::RecursionLimitExceeded => return None,
    };
    Some(located(text))
}

/// The position just past the last character of `sql` that is not white space (1-based
/// line and column, columns in characters, as sqlparser counts them).
fn end_of(sql: &str) -> (u64, u64) {
    let text = sql.trim_end();
    let line = text.matches('\n').count() + 1;
    let column = text.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (
        u64::try_from(line).unwrap_or(u64::MAX),
        u64::try_from(column).unwrap_or(u64::MAX),
    )
}

/// Splits sqlparser's ` at Line: L, Column: C` suffix off a message.
fn located(text: &str) -> SyntaxError {
    if let Some((message, at)) = text.rsplit_once(" at Line: ")
        && let Some((line, column)) = at.split_once(", Column: ")
        && let (Ok(line), Ok(column)) = (line.trim().parse::<u64>(), column.trim().parse::<u64>())
        && line > 0
    {
        return SyntaxError {
            message: message.trim().to_string(),
            line: Some(line),
            column: Some(column),
        };
    }
    SyntaxError {
        message: text.trim().to_string(),
        line: None,
        column: None,
    }
}

fn analyze_inner(sql: &str, dialect: SqlDialect) -> Facts {
    let d = dialect_of(dialect);
    // BigQuery ends `--` and `#` comments at a carriage return too; sqlparser only at a line
    // feed, so `-- c\rDELETE …` would hide the DELETE. Line breaks only separate tokens, so
    // turning every CR into LF changes no fact.
    let normalized;
    let sql = if dialect == SqlDialect::BigQuery && sql.contains('\r') {
        normalized = sql.replace("\r\n", "\n").replace('\r', "\n");
        normalized.as_str()
    } else {
        sql
    };
    let tokens = match raw_tokens(sql, dialect) {
        Ok(tokens) => tokens,
        Err(e) => {
            return syntax_error(
                e.to_string(),
                SyntaxError {
                    message: e.message.clone(),
                    line: (e.location.line > 0).then_some(e.location.line),
                    column: (e.location.line > 0).then_some(e.location.column),
                },
            );
        }
    };
    if dialect == SqlDialect::BigQuery
        && let Some(why) = lexical_mismatch(tokens.iter().map(|t| &t.token))
    {
        return opaque(why);
    }
    let tokens = merge_parameters(tokens, dialect);
    let operators = tokens.iter().filter(|t| is_operator(&t.token)).count();
    if operators > MAX_OPERATORS {
        return opaque(format!(
            "the SQL has {operators} operators, more than the {MAX_OPERATORS} querygate \
             analyzes; split it or use IN lists"
        ));
    }
    let statements = match Parser::new(d)
        .with_tokens_with_locations(tokens)
        .parse_statements()
    {
        Ok(s) => s,
        Err(e) => {
            return match parser_syntax_error(&e) {
                Some(mut error) => {
                    // sqlparser gives no position for the end of the text.
                    if error.line.is_none() && error.message.ends_with("found: EOF") {
                        let (line, column) = end_of(sql);
                        error.line = Some(line);
                        error.column = Some(column);
                    }
                    syntax_error(e.to_string(), error)
                }
                None => opaque(format!("querygate cannot parse this SQL: {e}")),
            };
        }
    };
    if statements.is_empty() {
        return opaque("the text holds no SQL statement".into());
    }
    let mut script = statements::Script::new(dialect);
    for s in &statements {
        script.statement(s);
    }
    let several = script.out.len() > 1;
    let opaque = script.out.iter().enumerate().find_map(|(i, s)| {
        s.opaque.as_ref().map(|why| {
            if several {
                format!("statement {} ({}): {why}", i + 1, s.kind.name())
            } else {
                why.clone()
            }
        })
    });
    Facts {
        statements: script.out,
        opaque,
        syntax_error: None,
    }
}

/// BigQuery tokens that BigQuery and sqlparser delimit differently. In BigQuery a backslash
/// escapes the next character inside back-ticked names, raw strings and bytes literals (so `\'`
/// does not close `r'…'`); sqlparser ends those tokens at the first closing quote. A token that sqlparser ends
/// right after an odd run of backslashes is therefore longer in BigQuery, and what sqlparser
/// reads as the next tokens (possibly a whole statement) is text inside it, or the other way
/// round.
fn lexical_mismatch<'a>(tokens: impl Iterator<Item = &'a Token>) -> Option<String> {
    fn odd_trailing_backslashes(s: &str) -> bool {
        s.chars().rev().take_while(|c| *c == '\\').count() % 2 == 1
    }
    for t in tokens {
        let suspicious = match t {
            Token::Word(w) => w.quote_style == Some('`') && odd_trailing_backslashes(&w.value),
            // sqlparser reads these without backslash escapes; BigQuery pairs `\x` in all of
            // them (bytes literals are escaped like strings).
            Token::SingleQuotedRawStringLiteral(s)
            | Token::DoubleQuotedRawStringLiteral(s)
            | Token::TripleSingleQuotedRawStringLiteral(s)
            | Token::TripleDoubleQuotedRawStringLiteral(s)
            | Token::SingleQuotedByteStringLiteral(s)
            | Token::DoubleQuotedByteStringLiteral(s)
            | Token::TripleSingleQuotedByteStringLiteral(s)
            | Token::TripleDoubleQuotedByteStringLiteral(s) => odd_trailing_backslashes(s),
            _ => false,
        };
        if suspicious {
            return Some(format!(
                "`{t}` ends in a backslash, which BigQuery reads as escaping the closing quote; \
                 querygate refuses text it would read differently from BigQuery"
            ));
        }
    }
    None
}

/// Tokens that can extend an operator chain.
fn is_operator(t: &Token) -> bool {
    match t {
        Token::Word(w) => matches!(
            w.keyword,
            Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::IN
                | Keyword::BETWEEN
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::SIMILAR
                | Keyword::REGEXP
                | Keyword::RLIKE
                | Keyword::COLLATE
                | Keyword::AT
                | Keyword::DIV
                | Keyword::OVERLAPS
                | Keyword::MEMBER
                | Keyword::OPERATOR
                | Keyword::ESCAPE
                | Keyword::UNION
                | Keyword::EXCEPT
                | Keyword::INTERSECT
                | Keyword::MINUS
        ),
        Token::EOF
        | Token::Whitespace(_)
        | Token::Comma
        | Token::LParen
        | Token::RParen
        | Token::SemiColon
        | Token::Period
        | Token::Number(..)
        | Token::Char(_)
        | Token::SingleQuotedString(_)
        | Token::DoubleQuotedString(_)
        | Token::TripleSingleQuotedString(_)
        | Token::TripleDoubleQuotedString(_)
        | Token::DollarQuotedString(_)
        | Token::SingleQuotedByteStringLiteral(_)
        | Token::DoubleQuotedByteStringLiteral(_)
        | Token::TripleSingleQuotedByteStringLiteral(_)
        | Token::TripleDoubleQuotedByteStringLiteral(_)
        | Token::SingleQuotedRawStringLiteral(_)
        | Token::DoubleQuotedRawStringLiteral(_)
        | Token::TripleSingleQuotedRawStringLiteral(_)
        | Token::TripleDoubleQuotedRawStringLiteral(_)
        | Token::NationalStringLiteral(_)
        | Token::QuoteDelimitedStringLiteral(_)
        | Token::NationalQuoteDelimitedStringLiteral(_)
        | Token::EscapedStringLiteral(_)
        | Token::UnicodeStringLiteral(_)
        | Token::HexStringLiteral(_)
        | Token::Placeholder(_) => false,
        _ => true,
    }
}
