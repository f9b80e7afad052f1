//! Masking strategies as PostgreSQL expressions, type-preserving like the BigQuery ones:
//! each result is cast back to the column's type, so row descriptions (type OIDs) and
//! binary formats stay what the client expects.
//!
//! Every function is called `pg_catalog.`-qualified and no operator is used, so no schema
//! on a search path can substitute its own. `hash` reads the key from a query parameter
//! (`$n`, one past the statement's own, bound as `bytea`: never text in the statement):
//! hex(SHA-256(key ‖ value)), the value [`crate::mask_text`] computes, so both stay
//! joinable.

use crate::Strategy;

/// What kind of value a PostgreSQL type (as `format_type` names it) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Number,
    Bool,
    Date,
    Timestamp,
    Time,
    Interval,
    Uuid,
    Json,
    Bytes,
    Inet,
    Cidr,
    Other,
}

fn kind(pg_type: &str) -> Kind {
    let t = pg_type.to_ascii_lowercase();
    let base = t.split('(').next().unwrap_or(&t).trim();
    match base {
        "text" | "character varying" | "varchar" | "character" | "char" | "bpchar" | "name"
        | "citext" => Kind::Text,
        "smallint" | "integer" | "bigint" | "numeric" | "decimal" | "real" | "double precision"
        | "money" => Kind::Number,
        "boolean" => Kind::Bool,
        "date" => Kind::Date,
        "timestamp without time zone" | "timestamp with time zone" | "timestamp" => Kind::Timestamp,
        "time without time zone" | "time with time zone" | "time" => Kind::Time,
        "interval" => Kind::Interval,
        "uuid" => Kind::Uuid,
        "json" | "jsonb" => Kind::Json,
        "bytea" => Kind::Bytes,
        "inet" => Kind::Inet,
        "cidr" => Kind::Cidr,
        _ => Kind::Other,
    }
}

/// The type to cast a computed string back to: without a length, so a hash or a masked
/// value is not cut to `varchar(10)`.
fn unbounded(pg_type: &str) -> &str {
    match kind(pg_type) {
        Kind::Text => {
            let base = pg_type.split('(').next().unwrap_or(pg_type).trim();
            match base.to_ascii_lowercase().as_str() {
                "character" | "char" => "bpchar",
                "character varying" => "varchar",
                _ => base,
            }
        }
        _ => pg_type,
    }
}

/// The `redact` value of a type: the type's zero, or NULL where it has none.
fn default_value(pg_type: &str) -> &'static str {
    match kind(pg_type) {
        Kind::Text => "''",
        Kind::Number => "'0'",
        Kind::Bool => "'false'",
        Kind::Date | Kind::Timestamp => "'epoch'",
        Kind::Time => "'00:00'",
        Kind::Interval => "'0'",
        Kind::Uuid => "'00000000-0000-0000-0000-000000000000'",
        Kind::Json => "'null'",
        Kind::Bytes => "'\\x'",
        Kind::Inet => "'0.0.0.0'",
        Kind::Cidr => "'0.0.0.0/0'",
        Kind::Other => "NULL",
    }
}

/// The expression that replaces a read of `column` (quoted SQL) of `pg_type` (as
/// `format_type` names it), the hash key being the parameter `key` (`$n`). Strategies for
/// strings fall back to `redact` on other types.
pub fn mask_expression_pg(strategy: Strategy, column: &str, pg_type: &str, key: &str) -> String {
    let text = kind(pg_type) == Kind::Text;
    let to = unbounded(pg_type);
    let when =
        |value: String| format!("(CASE WHEN {column} IS NULL THEN NULL ELSE ({value})::{to} END)");
    match strategy {
        Strategy::Null => format!("(NULL::{pg_type})"),
        Strategy::Hash if text => when(format!(
            "pg_catalog.encode(pg_catalog.sha256(pg_catalog.byteacat({key}::bytea, \
             pg_catalog.convert_to({column}::text, 'UTF8'))), 'hex')"
        )),
        Strategy::Last4 if text => when(format!(
            "pg_catalog.concat(pg_catalog.repeat('*', GREATEST(pg_catalog.length({column}::text) - 4, 0)), \
             pg_catalog.\"right\"({column}::text, 4))"
        )),
        Strategy::EmailDomain if text => when(format!(
            "pg_catalog.concat('***@', pg_catalog.split_part({column}::text, '@', 2))"
        )),
        _ => format!(
            "(CASE WHEN {column} IS NULL THEN NULL ELSE {}::{pg_type} END)",
            default_value(pg_type)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_keep_their_type_without_its_length() {
        let e = mask_expression_pg(Strategy::Hash, "\"ssn\"", "character varying(11)", "$1");
        assert!(
            e.contains("pg_catalog.sha256(pg_catalog.byteacat($1::bytea"),
            "{e}"
        );
        assert!(e.ends_with("::varchar END)"), "{e}");
        let e = mask_expression_pg(Strategy::Last4, "\"card\"", "text", "$1");
        assert!(e.contains("pg_catalog.\"right\"(\"card\"::text, 4)"), "{e}");
        let e = mask_expression_pg(Strategy::EmailDomain, "\"email\"", "character(20)", "$1");
        assert!(e.ends_with("::bpchar END)"), "{e}");
    }

    #[test]
    fn other_types_are_redacted_to_their_zero_or_null() {
        assert_eq!(
            mask_expression_pg(Strategy::Last4, "\"n\"", "integer", "$1"),
            "(CASE WHEN \"n\" IS NULL THEN NULL ELSE '0'::integer END)"
        );
        assert_eq!(
            mask_expression_pg(Strategy::Hash, "\"t\"", "timestamp with time zone", "$1"),
            "(CASE WHEN \"t\" IS NULL THEN NULL ELSE 'epoch'::timestamp with time zone END)"
        );
        assert_eq!(
            mask_expression_pg(Strategy::Redact, "\"p\"", "point", "$1"),
            "(CASE WHEN \"p\" IS NULL THEN NULL ELSE NULL::point END)"
        );
        assert_eq!(
            mask_expression_pg(Strategy::Null, "\"x\"", "numeric(10,2)", "$1"),
            "(NULL::numeric(10,2))"
        );
    }
}
