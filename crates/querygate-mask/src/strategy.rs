//! Masking strategies, as SQL over a column and as a function over a text value.
//!
//! Every strategy keeps the column's type, as BigQuery's own data masking does:
//! `redact` is BigQuery's "default masking value" for the type, `null` a typed NULL,
//! `last4` keeps the last four characters of a string, `email_domain` keeps what follows
//! the `@`. `hash` is a keyed SHA-256, `SHA-256(key ‖ value)` as lower-case hex (joinable,
//! not reversible without the key; the key is 256 random bits, so a dictionary of likely
//! values does not help): in SQL the key is the query parameter [`HASH_KEY_PARAM`], never
//! text in the statement. The source adds the parameter as the query leaves the gateway
//! and removes it from every answer; clients may not name it. [`mask_text`] computes the
//! same value in the gateway (for direct table reads), so both stay joinable.

use sha2::{Digest, Sha256};

/// A masking strategy, as written in `[[mask]] strategy = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    Redact,
    Null,
    Hash,
    Last4,
    EmailDomain,
}

/// A strategy name that is not one of the strategies.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("strategy {name:?} must be one of redact, null, hash, last4, email_domain")]
pub struct StrategyError {
    pub name: String,
}

impl Strategy {
    pub fn parse(text: &str) -> Result<Strategy, StrategyError> {
        Ok(match text {
            "redact" => Strategy::Redact,
            "null" => Strategy::Null,
            "hash" => Strategy::Hash,
            "last4" => Strategy::Last4,
            "email_domain" => Strategy::EmailDomain,
            other => {
                return Err(StrategyError {
                    name: other.to_string(),
                });
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Redact => "redact",
            Strategy::Null => "null",
            Strategy::Hash => "hash",
            Strategy::Last4 => "last4",
            Strategy::EmailDomain => "email_domain",
        }
    }
}

/// The name of the query parameter that carries the hash key upstream.
pub const HASH_KEY_PARAM: &str = "__querygate_mask_key";

/// BigQuery's default masking value of a type (the `redact` strategy).
fn default_value(bq_type: &str) -> String {
    match bq_type.to_ascii_uppercase().as_str() {
        "STRING" => "''".into(),
        "BYTES" => "b''".into(),
        "INTEGER" | "INT64" => "0".into(),
        "FLOAT" | "FLOAT64" => "0.0".into(),
        "NUMERIC" => "NUMERIC '0'".into(),
        "BIGNUMERIC" => "BIGNUMERIC '0'".into(),
        "BOOLEAN" | "BOOL" => "FALSE".into(),
        "DATE" => "DATE '1970-01-01'".into(),
        "DATETIME" => "DATETIME '1970-01-01 00:00:00'".into(),
        "TIME" => "TIME '00:00:00'".into(),
        "TIMESTAMP" => "TIMESTAMP '1970-01-01 00:00:00 UTC'".into(),
        "JSON" => "JSON 'null'".into(),
        "GEOGRAPHY" => "ST_GEOGPOINT(0, 0)".into(),
        other => format!("CAST(NULL AS {other})"),
    }
}

/// The SQL expression that replaces a read of `column` (already-quoted SQL) of `bq_type`.
/// Strategies that only make sense for strings fall back to `redact` on other types.
pub fn mask_expression(strategy: Strategy, column: &str, bq_type: &str) -> String {
    let is_string = bq_type.eq_ignore_ascii_case("STRING");
    match strategy {
        Strategy::Null => format!("CAST(NULL AS {})", sql_type(bq_type)),
        Strategy::Hash if is_string => {
            format!("TO_HEX(SHA256(CONCAT(@{HASH_KEY_PARAM}, CAST({column} AS STRING))))")
        }
        Strategy::Hash => format!("IF({column} IS NULL, NULL, {})", default_value(bq_type)),
        Strategy::Last4 if is_string => format!(
            "IF({column} IS NULL, NULL, CONCAT(REPEAT('*', GREATEST(LENGTH({column}) - 4, 0)), SUBSTR({column}, -4)))"
        ),
        Strategy::EmailDomain if is_string => format!(
            "IF({column} IS NULL, NULL, CONCAT('***@', IFNULL(SPLIT({column}, '@')[SAFE_OFFSET(1)], '')))"
        ),
        _ => format!("IF({column} IS NULL, NULL, {})", default_value(bq_type)),
    }
}

/// A value of a column of `bq_type` as BigQuery's REST rows encode it (`f`/`v` cells: text,
/// or `None` for NULL), masked in the gateway exactly as [`mask_expression`] masks it in
/// SQL — for direct row reads (tabledata.list), which run no SQL. `key` is the hash key.
pub fn mask_cell(
    strategy: Strategy,
    bq_type: &str,
    value: Option<&str>,
    key: &[u8],
) -> Option<String> {
    let value = value?;
    let is_string = bq_type.eq_ignore_ascii_case("STRING");
    Some(match strategy {
        Strategy::Null => return None,
        Strategy::Hash if is_string => mask_text(Strategy::Hash, value, key),
        Strategy::Last4 if is_string => mask_text(Strategy::Last4, value, key),
        Strategy::EmailDomain if is_string => {
            // CONCAT('***@', IFNULL(SPLIT(v, '@')[SAFE_OFFSET(1)], ''))
            format!("***@{}", value.split('@').nth(1).unwrap_or(""))
        }
        _ => default_cell(bq_type).to_string(),
    })
}

/// [`default_value`] as a REST cell.
fn default_cell(bq_type: &str) -> &'static str {
    match bq_type.to_ascii_uppercase().as_str() {
        "INTEGER" | "INT64" | "FLOAT" | "FLOAT64" | "NUMERIC" | "BIGNUMERIC" | "TIMESTAMP" => "0",
        "BOOLEAN" | "BOOL" => "false",
        "DATE" => "1970-01-01",
        "DATETIME" => "1970-01-01T00:00:00",
        "TIME" => "00:00:00",
        "JSON" => "null",
        "GEOGRAPHY" => "POINT(0 0)",
        // STRING, BYTES (base64 of nothing), and anything else.
        _ => "",
    }
}

fn sql_type(bq_type: &str) -> String {
    match bq_type.to_ascii_uppercase().as_str() {
        "INTEGER" => "INT64".into(),
        "FLOAT" => "FLOAT64".into(),
        "BOOLEAN" => "BOOL".into(),
        other => other.to_string(),
    }
}

/// Masks a text value found by a detector (or a string cell), with `key` for `hash`.
pub fn mask_text(strategy: Strategy, value: &str, key: &[u8]) -> String {
    match strategy {
        Strategy::Redact => "[REDACTED]".into(),
        Strategy::Null => String::new(),
        Strategy::Hash => {
            let mut h = Sha256::new();
            h.update(key);
            h.update(value.as_bytes());
            hex::encode(h.finalize())
        }
        Strategy::Last4 => {
            let chars: Vec<char> = value.chars().collect();
            let keep = chars.len().min(4);
            let mut out: String = "*".repeat(chars.len() - keep);
            out.extend(&chars[chars.len() - keep..]);
            out
        }
        Strategy::EmailDomain => match value.split_once('@') {
            Some((_, domain)) => format!("***@{domain}"),
            None => "[REDACTED]".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_keep_the_type() {
        assert_eq!(
            mask_expression(Strategy::Redact, "`t`.`ssn`", "STRING"),
            "IF(`t`.`ssn` IS NULL, NULL, '')"
        );
        assert_eq!(
            mask_expression(Strategy::Null, "x", "INTEGER"),
            "CAST(NULL AS INT64)"
        );
        assert!(
            mask_expression(Strategy::Hash, "email", "STRING").contains("@__querygate_mask_key")
        );
        assert!(!mask_expression(Strategy::Hash, "email", "STRING").contains("secret"));
        assert_eq!(
            mask_expression(Strategy::Last4, "n", "INT64"),
            "IF(n IS NULL, NULL, 0)",
            "last4 on a number falls back to redact"
        );
        assert!(mask_expression(Strategy::Redact, "d", "TIMESTAMP").contains("1970-01-01"));
    }

    #[test]
    fn cells_are_masked_as_the_sql_masks_them() {
        let key = b"k";
        assert_eq!(
            mask_cell(Strategy::Redact, "STRING", Some("x"), key).as_deref(),
            Some("")
        );
        assert_eq!(
            mask_cell(Strategy::Redact, "INTEGER", Some("42"), key).as_deref(),
            Some("0")
        );
        assert_eq!(
            mask_cell(Strategy::Redact, "STRING", None, key),
            None,
            "NULL stays NULL"
        );
        assert_eq!(mask_cell(Strategy::Null, "STRING", Some("x"), key), None);
        assert_eq!(
            mask_cell(Strategy::Hash, "STRING", Some("a@b.c"), key),
            Some(mask_text(Strategy::Hash, "a@b.c", key))
        );
        assert_eq!(
            mask_cell(Strategy::EmailDomain, "STRING", Some("a@b.c"), key).as_deref(),
            Some("***@b.c")
        );
        assert_eq!(
            mask_cell(Strategy::EmailDomain, "STRING", Some("nobody"), key).as_deref(),
            Some("***@")
        );
        assert_eq!(
            mask_cell(Strategy::Last4, "STRING", Some("123456"), key).as_deref(),
            Some("**3456")
        );
    }

    #[test]
    fn text_masks() {
        assert_eq!(
            mask_text(Strategy::Last4, "4111111111111111", b""),
            "************1111"
        );
        assert_eq!(mask_text(Strategy::Last4, "ab", b""), "ab");
        assert_eq!(
            mask_text(Strategy::EmailDomain, "ada@example.com", b""),
            "***@example.com"
        );
        let a = mask_text(Strategy::Hash, "ada@example.com", b"k1");
        assert_eq!(
            a,
            mask_text(Strategy::Hash, "ada@example.com", b"k1"),
            "joinable"
        );
        assert_ne!(
            a,
            mask_text(Strategy::Hash, "ada@example.com", b"k2"),
            "keyed"
        );
        assert!(Strategy::parse("shred").is_err());
    }
}
