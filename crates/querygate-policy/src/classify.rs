//! Classification and masking rules: which columns carry which tag (`[[classify]]`), and
//! for whom a tag's columns are masked (`[[mask]]`).
//!
//! Pure: the pipeline asks, for each base column a statement reaches, which tags it has and
//! whether they are masked for the identity asking. Column globs are
//! `project.dataset.table.column`, `*` matching any run of characters in a part; table,
//! dataset, project and column names compare without case ([`querygate_sql::name_key`]):
//! upstreams resolve `shop.CUSTOMERS` to `shop.customers`, so a miscased name is tagged
//! (and masked) like the name it resolves to.

use querygate_core::Identity;

use querygate_sql::name_key;

use crate::rule::{Principal, name_glob};

/// `[[classify]]`: these columns carry `tag`.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub tag: String,
    /// `project.dataset.table.column` globs.
    pub columns: Vec<String>,
}

/// `[[mask]]`: the columns tagged `tag` are masked for everyone but `unmasked_for`.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskRule {
    pub tag: String,
    /// The strategy's name (`redact`, `null`, `hash`, `last4`, `email_domain`).
    pub strategy: String,
    pub unmasked_for: Vec<Principal>,
    /// Whether a masked column may be used in WHERE, JOIN, GROUP BY, ORDER BY and windows.
    pub predicates_allowed: bool,
}

/// Every classification and mask rule of a deployment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Classifier {
    pub classes: Vec<Classification>,
    pub masks: Vec<MaskRule>,
}

fn split(glob_text: &str) -> Option<(&str, &str)> {
    glob_text.rsplit_once('.')
}

fn table_matches(pattern: &str, table: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let t: Vec<&str> = table.split('.').collect();
    p.len() == t.len() && p.iter().zip(&t).all(|(p, t)| name_glob(p, t))
}

impl Classifier {
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// Tags of column `column` of `table` (`project.dataset.table`).
    pub fn tags_of(&self, table: &str, column: &str) -> Vec<&str> {
        let mut tags: Vec<&str> = self
            .classes
            .iter()
            .filter(|c| {
                c.columns.iter().any(|g| match split(g) {
                    Some((t, col)) => table_matches(t, table) && name_glob(col, column),
                    None => false,
                })
            })
            .map(|c| c.tag.as_str())
            .collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }

    /// Every (column glob, tag) of `table`: what `SELECT *` or a whole-row reference of
    /// the table may reach.
    pub fn tagged_columns(&self, table: &str) -> Vec<(&str, &str)> {
        self.classes
            .iter()
            .flat_map(|c| {
                c.columns.iter().filter_map(move |g| match split(g) {
                    Some((t, col)) if table_matches(t, table) => Some((col, c.tag.as_str())),
                    _ => None,
                })
            })
            .collect()
    }

    /// A table masked for `identity` that a wildcard table name (`project.dataset.prefix`,
    /// the `*` removed) could match, with the tag: `(table pattern, tag)`. Over-approximates:
    /// a table pattern with a `*` in its last part could match any prefix.
    pub fn masked_under(&self, prefix: &str, identity: &Identity) -> Option<(String, &str)> {
        let prefix = name_key(prefix);
        let p: Vec<&str> = prefix.split('.').collect();
        self.classes
            .iter()
            .filter(|c| self.masked_for(&c.tag, identity).is_some())
            .flat_map(|c| c.columns.iter().map(move |g| (g, c.tag.as_str())))
            .find_map(|(g, tag)| {
                let (table, _) = split(g)?;
                let folded = name_key(table);
                let t: Vec<&str> = folded.split('.').collect();
                let last = t.len().checked_sub(1)?;
                let could = t.len() == p.len()
                    && t.iter().zip(&p).enumerate().all(|(i, (pat, part))| {
                        if i == last {
                            pat.contains('*') || pat.starts_with(part)
                        } else {
                            name_glob(pat, part)
                        }
                    });
                could.then(|| (table.to_string(), tag))
            })
    }

    /// The mask rule hiding `tag` from `identity`, if any (none when the identity, or the
    /// person it acts for, is in `unmasked_for`: an agent sees clear values only when both it
    /// and its principal may).
    pub fn masked_for(&self, tag: &str, identity: &Identity) -> Option<&MaskRule> {
        self.masks.iter().find(|m| {
            m.tag == tag
                && !(m.unmasked_for.iter().any(|p| p.matches(identity))
                    && identity
                        .acting_for
                        .as_deref()
                        .is_none_or(|person| m.unmasked_for.iter().any(|p| p.matches(person))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classifier() -> Classifier {
        Classifier {
            classes: vec![Classification {
                tag: "pii".into(),
                columns: vec!["*.crm.customers.email".into(), "*.*.*.phone".into()],
            }],
            masks: vec![MaskRule {
                tag: "pii".into(),
                strategy: "redact".into(),
                unmasked_for: vec![Principal::Group("privacy".into())],
                predicates_allowed: false,
            }],
        }
    }

    #[test]
    fn columns_are_tagged_by_glob_case_insensitively() {
        let c = classifier();
        assert_eq!(c.tags_of("p.crm.customers", "EMAIL"), vec!["pii"]);
        assert_eq!(c.tags_of("p.sales.orders", "phone"), vec!["pii"]);
        assert!(c.tags_of("p.crm.customers", "name").is_empty());
        assert_eq!(c.tagged_columns("p.crm.customers").len(), 2);
        assert!(c.tagged_columns("p.crm").is_empty());
    }

    /// Upstreams resolve `CRM.Customers` to `crm.customers`: a miscased table or column is
    /// tagged like the name it resolves to (Unicode case folding included).
    #[test]
    fn tables_and_columns_are_tagged_without_case() {
        let mut c = classifier();
        assert_eq!(c.tags_of("P.CRM.Customers", "Email"), vec!["pii"]);
        assert_eq!(c.tags_of("p.Sales.ORDERS", "PHONE"), vec!["pii"]);
        assert_eq!(c.tagged_columns("p.CRM.CUSTOMERS").len(), 2);
        c.classes.push(Classification {
            tag: "geo".into(),
            columns: vec!["p.Straße.Orte.Straße".into()],
        });
        assert_eq!(c.tags_of("p.STRASSE.orte", "STRASSE"), vec!["geo"]);
        let agent = Identity {
            subject: "agent:x".into(),
            ..Identity::default()
        };
        let (table, tag) = c.masked_under("p.CRM.cust", &agent).expect("reached");
        assert_eq!((table.as_str(), tag), ("*.crm.customers", "pii"));
    }

    #[test]
    fn masks_apply_to_all_but_unmasked_principals() {
        let c = classifier();
        let agent = Identity {
            subject: "agent:x".into(),
            groups: vec!["agents".into()],
            ..Identity::default()
        };
        let privacy = Identity {
            subject: "human:p".into(),
            groups: vec!["privacy".into()],
            ..Identity::default()
        };
        assert!(c.masked_for("pii", &agent).is_some());
        assert!(c.masked_for("pii", &privacy).is_none());
        assert!(c.masked_for("other", &agent).is_none());
        // An agent of the privacy group acting for someone outside it stays masked.
        let acting = Identity {
            acting_for: Some(Box::new(agent.clone())),
            ..privacy.clone()
        };
        assert!(c.masked_for("pii", &acting).is_some());
    }
}
