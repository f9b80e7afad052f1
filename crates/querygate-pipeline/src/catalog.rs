//! The catalog stage: a caller sees only the schemas and tables its rules let it read.
//!
//! What the rules let an identity see is [`querygate_policy::Policy::readable`]: the
//! verdict for the narrowest read of a table, so a table is hidden by a rule about the
//! table or the caller, never by one about a query's shape. Describing a table the rules
//! hide (or a schema a rule hides whole, `*.hr.*`) is refused with that rule's message,
//! before anything reaches the source; a listing loses the names the rules hide once the
//! source has answered (the [`Scope`](crate::Scope) it is restricted to). A table's
//! description also says how each of its columns is masked for the caller.

use std::collections::HashSet;

use querygate_core::{Catalog, Denial, DenialKind, Identity};
use querygate_policy::{Outcome, Policy, Verdict};

use crate::PolicySet;
use crate::source::{Column, ColumnMask};

/// Whether the rules let `identity` describe `object` (or list what it holds). `Err` is
/// the refusal, with the rule's message, and the rule.
pub(crate) fn describable(
    policies: &PolicySet,
    identity: &Identity,
    source: &str,
    object: &Catalog,
) -> Result<(), (Denial, Option<String>)> {
    let Some(policy) = policies.policy(source) else {
        return Err((no_policy(source), None));
    };
    let now = jiff::Timestamp::now();
    let refused = |verdict: Verdict| match verdict.outcome {
        Outcome::Deny { message } => {
            Err((Denial::new(DenialKind::Forbidden, message), verdict.rule))
        }
        _ => Ok(()),
    };
    match object {
        Catalog::Schemas => Ok(()),
        Catalog::Schema { schema } | Catalog::Tables { schema } => {
            refused(schema_sight(policy, identity, source, schema, now))
        }
        Catalog::Table { table } => refused(policy.readable(identity, source, table, now)),
    }
}

/// `object` as the upstream describes it: a table without its decorators (`t$2024`,
/// `t@123` describe `t`), so a rule on the table holds for every spelling of it.
pub(crate) fn as_described<S: crate::Source>(source: &S, object: &Catalog) -> Catalog {
    match object {
        Catalog::Table { table } => Catalog::Table {
            table: source.table_of(table),
        },
        other => other.clone(),
    }
}

/// The names of a listing of `object` (schema ids of `project`, or table ids of a
/// schema) that the rules hide from `identity`. Every name, when the source has no policy.
pub(crate) fn hidden(
    policies: &PolicySet,
    identity: &Identity,
    source: &str,
    project: &str,
    object: &Catalog,
    names: &[String],
) -> HashSet<String> {
    let Some(policy) = policies.policy(source) else {
        return names.iter().cloned().collect();
    };
    let now = jiff::Timestamp::now();
    let hides = |verdict: Verdict| matches!(verdict.outcome, Outcome::Deny { .. });
    names
        .iter()
        .filter(|name| match object {
            Catalog::Schemas => hides(schema_sight(
                policy,
                identity,
                source,
                &format!("{project}.{name}"),
                now,
            )),
            Catalog::Tables { schema } => {
                hides(policy.readable(identity, source, &format!("{schema}.{name}"), now))
            }
            Catalog::Schema { .. } | Catalog::Table { .. } => false,
        })
        .cloned()
        .collect()
}

/// How each column of `table` is masked for `identity` (every column, in order).
pub(crate) fn column_masks(
    policies: &PolicySet,
    identity: &Identity,
    table: &str,
    columns: &[Column],
) -> Vec<ColumnMask> {
    crate::masking::column_masks(&policies.classifier, table, columns, identity).unwrap_or_else(
        // A strategy the config cannot name masks to NULL when it runs: say so.
        |_| {
            columns
                .iter()
                .map(|c| ColumnMask {
                    column: c.clone(),
                    strategy: policies
                        .classifier
                        .tags_of(table, &c.name)
                        .into_iter()
                        .find_map(|tag| policies.classifier.masked_for(tag, identity))
                        .map(|_| querygate_mask::Strategy::Null),
                })
                .collect()
        },
    )
}

/// A schema is hidden only by a rule that covers all of its tables (probed as
/// `schema.*`); the default denial hides none, since a rule may allow some of its tables.
fn schema_sight(
    policy: &Policy,
    identity: &Identity,
    source: &str,
    schema: &str,
    now: jiff::Timestamp,
) -> Verdict {
    let mut verdict = policy.readable(identity, source, &format!("{schema}.*"), now);
    if verdict.rule.is_none() {
        verdict.outcome = Outcome::Allow;
    }
    verdict
}

fn no_policy(source: &str) -> Denial {
    Denial::new(
        DenialKind::Forbidden,
        format!("Access Denied: source {source} has no policy"),
    )
}
