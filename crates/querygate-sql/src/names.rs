//! Dialect rules for names: how identifiers are normalized and compared, and how a table name in
//! the AST becomes a [`TableRef`] (BigQuery path splitting, decorators, wildcards).
//!
//! Pure functions over AST names; must not resolve anything against scopes (that is `scope.rs`).

use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

use crate::SqlDialect;
use crate::facts::TableRef;

/// A table name in the AST that is not a table's name (its text as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableNameError {
    #[error("the table name `{0}` has a function part")]
    FunctionPart(String),
    #[error("cannot read the table name `{0}`")]
    Unreadable(String),
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Names {
    pub dialect: SqlDialect,
}

impl Names {
    /// An identifier as the engine sees it: PostgreSQL folds unquoted names to lower case;
    /// BigQuery keeps what was written.
    pub fn ident(&self, id: &Ident) -> String {
        match self.dialect {
            SqlDialect::Postgres if id.quote_style.is_none() => id.value.to_ascii_lowercase(),
            _ => id.value.clone(),
        }
    }

    /// Whether two normalized column/alias names denote the same thing. BigQuery column names
    /// and aliases are case-insensitive; PostgreSQL names were folded by [`Names::ident`].
    pub fn same(&self, a: &str, b: &str) -> bool {
        match self.dialect {
            SqlDialect::BigQuery => {
                a == b
                    || if a.is_ascii() && b.is_ascii() {
                        a.eq_ignore_ascii_case(b)
                    } else {
                        same_name(a, b)
                    }
            }
            SqlDialect::Postgres => a == b,
        }
    }

    /// A table name as a [`TableRef`], or why it cannot be one.
    pub fn table_ref(&self, name: &ObjectName) -> Result<TableRef, TableNameError> {
        let mut parts = Vec::with_capacity(name.0.len());
        for part in &name.0 {
            let ObjectNamePart::Identifier(id) = part else {
                return Err(TableNameError::FunctionPart(name.to_string()));
            };
            match self.dialect {
                SqlDialect::BigQuery => {
                    for p in id.value.split('.') {
                        parts.push(p.to_string());
                    }
                }
                SqlDialect::Postgres => parts.push(self.ident(id)),
            }
        }
        self.table_ref_from_parts(parts)
            .ok_or_else(|| TableNameError::Unreadable(name.to_string()))
    }

    /// A [`TableRef`] from already separated parts (BigQuery decorators still attached).
    pub fn table_ref_from_parts(&self, mut parts: Vec<String>) -> Option<TableRef> {
        if parts.is_empty() || parts.iter().any(String::is_empty) {
            return None;
        }
        let mut decorator = None;
        let mut wildcard = false;
        if self.dialect == SqlDialect::BigQuery {
            let last = parts.last_mut()?;
            if let Some(pos) = last.find(['$', '@']) {
                decorator = Some(last[pos..].to_string());
                last.truncate(pos);
                if last.is_empty() {
                    return None;
                }
            }
            wildcard = last.ends_with('*');
            // A `*` anywhere but at the end of the last part is not a name BigQuery accepts.
            let stars = parts.iter().map(|p| p.matches('*').count()).sum::<usize>();
            if stars > usize::from(wildcard) {
                return None;
            }
        }
        let information_schema = parts
            .iter()
            .any(|p| p.eq_ignore_ascii_case("INFORMATION_SCHEMA"));
        Some(TableRef {
            parts,
            wildcard,
            decorator,
            time_travel: false,
            information_schema,
        })
    }
}

/// The form in which two table, dataset, project or column names are compared: every
/// character case-folded (upper case, then lower case, so `ß`/`SS`, `ſ`/`s`, `ς`/`σ` and
/// `K` (Kelvin)/`k` fold alike). Upstreams such as the BigQuery emulator, the local DuckDB
/// engine and case-insensitive datasets resolve `shop.CUSTOMERS` and `Shop.Customers` to
/// `shop.customers`, so querygate treats names that fold alike as the same table: it may
/// mask a table that only looks like a masked one, but it never reads a masked one in
/// clear. Dotted names fold part by part (dots are kept), so maps keyed by
/// `name_key(qualified name)` match however a statement spelled the name.
pub fn name_key(name: &str) -> String {
    if name.is_ascii() {
        return name.to_ascii_lowercase();
    }
    name.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// Whether two names fold alike (see [`name_key`]).
pub fn same_name(a: &str, b: &str) -> bool {
    a == b || name_key(a) == name_key(b)
}

/// A function's name as reported in facts: parts joined with `.`, upper case.
pub(crate) fn function_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part {
            ObjectNamePart::Identifier(id) => out.push_str(&id.value.to_uppercase()),
            ObjectNamePart::Function(f) => out.push_str(&f.name.value.to_uppercase()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bq(parts: &[&str]) -> Option<TableRef> {
        Names {
            dialect: SqlDialect::BigQuery,
        }
        .table_ref_from_parts(parts.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn bigquery_decorators_and_wildcards() {
        let t = bq(&["ds", "t$20240101"]).expect("name");
        assert_eq!(t.parts, ["ds", "t"]);
        assert_eq!(t.decorator.as_deref(), Some("$20240101"));
        let t = bq(&["ds", "t@-3600000"]).expect("name");
        assert_eq!(t.decorator.as_deref(), Some("@-3600000"));
        let t = bq(&["p", "ds", "events_*"]).expect("name");
        assert!(t.wildcard);
        assert!(bq(&["p", "d*s", "t"]).is_none());
        assert!(bq(&["ds", "$1"]).is_none());
        assert!(bq(&["ds", ""]).is_none());
        let t = bq(&["region-us", "INFORMATION_SCHEMA", "JOBS"]).expect("name");
        assert!(t.information_schema);
    }

    #[test]
    fn names_fold_alike_whatever_their_case() {
        assert_eq!(name_key("p.Shop.CUSTOMERS"), "p.shop.customers");
        assert_eq!(name_key("Straße"), name_key("STRASSE"));
        assert_eq!(name_key("\u{212A}ey"), "key");
        assert_eq!(name_key("ma\u{17F}k"), "mask");
        assert_eq!(name_key("ΟΔΟΣ"), name_key("οδος"));
        assert_eq!(name_key("οδoς"), name_key("ΟΔOΣ"));
        assert!(same_name("ÉTÉ.Tab", "été.tab"));
        assert!(!same_name("shop.customers", "shop.customer"));
    }

    #[test]
    fn qualified_names() {
        let t = bq(&["ds", "t"]).expect("name");
        assert_eq!(t.qualified("proj"), "proj.ds.t");
        let t = bq(&["p", "ds", "t"]).expect("name");
        assert_eq!(t.qualified("proj"), "p.ds.t");
        let t = bq(&["t"]).expect("name");
        assert_eq!(t.qualified("proj"), "t");
    }
}
