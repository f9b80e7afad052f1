//! Policy: rules the user writes, evaluated over an identity and facts about a request.
//!
//! Pure: the policy never sees SQL text and does no IO. The pipeline hands it facts
//! (statement kinds, tables, predicates, opacity), a dry-run byte estimate when one is
//! known, partitioning facts about the tables, and the time; it answers with a
//! [`Verdict`]: the decision, the rule that made it, every rule that matched, and the
//! limits to apply (bytes billed, result rows).
//!
//! Semantics, in one place:
//! - Rules are checked in order; the first that matches decides; no match means deny.
//!   Source rules come before global rules.
//! - `who` matches the identity making the request; `on_behalf_of` matches the identity
//!   it acts for (an agent acting for a person), and a rule that names `on_behalf_of`
//!   never matches a request that acts for nobody.
//! - `statements` / `tables` lists: an `allow` rule matches when *every* statement kind
//!   and *every* table is in its lists; a `deny` or `approve` rule matches when *any* is.
//!   Transaction control (`BEGIN`, `COMMIT`, `ROLLBACK`, savepoints) reads and writes
//!   nothing: an `allow` rule's list need not name it (a deny rule may).
//! - Opaque SQL (not fully understood) never matches an `allow` rule unless the rule says
//!   `when = { opaque = true }`; for `deny`/`approve` rules it counts as touching every
//!   statement kind and table (it could be anything).
//! - `bytes_over` needs a dry-run estimate: without one, evaluation stops at that rule
//!   and asks for it ([`Verdict::needs_estimate`]).
//! - `rows_over` can only be known after execution: the first such rule ahead of the
//!   deciding rule becomes a [`RowLimit`] the pipeline applies to the result.

mod classify;
mod rule;
mod size;

use std::collections::HashMap;

pub use classify::{Classification, Classifier, MaskRule};
use querygate_core::Identity;
pub use querygate_sql::StatementKind;
pub use rule::{
    Amount, Budget, BudgetError, Hours, HoursError, OnApproval, Principal, PrincipalError, Rule,
    RuleAction, RuleError, RuleProblem, RuleSpec, TableGlob, When, WhenSpec,
};
pub use size::{RowsError, SizeError, format_bytes, format_rows, parse_bytes, parse_rows};

/// A table a request touches, with the columns its predicates filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableUse {
    /// `project.dataset.table` (decorators stripped).
    pub name: String,
    pub write: bool,
    /// Base columns of this table referenced in WHERE / JOIN ON / HAVING / QUALIFY.
    pub filtered: Vec<String>,
}

/// How a table is partitioned, as the source reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Partitioning {
    /// Partitioned on this column (`_PARTITIONTIME` for ingestion-time partitioning).
    Column(String),
    NotPartitioned,
}

/// Everything a decision is made from.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub identity: &'a Identity,
    pub source: &'a str,
    pub statements: &'a [StatementKind],
    pub tables: &'a [TableUse],
    /// Why the request could not be fully understood, if it could not.
    pub opaque: Option<&'a str>,
    /// Dry-run bytes, when known.
    pub bytes: Option<u64>,
    /// Partitioning of the tables read; a table missing here is unknown (treated as unfiltered).
    pub partitions: &'a HashMap<String, Partitioning>,
    /// Classification tags of the columns the request reads.
    pub tags: &'a [String],
    pub now: jiff::Timestamp,
}

/// What the policy decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny {
        message: String,
    },
    /// Needs a person's approval: the request waits in a ticket until one decides.
    Approve {
        message: String,
        approvers: Vec<String>,
        /// Whether the request waits or is answered at once.
        on_approval: OnApproval,
    },
}

/// A limit on result rows that applies after execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowLimit {
    pub rows: u64,
    pub rule: String,
    pub message: String,
}

/// The policy's answer, with its explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The rule that decided, or `None` when no rule matched (default deny).
    pub rule: Option<String>,
    /// Every rule that matched, in order (the first decided).
    pub matched: Vec<String>,
    /// Evaluation stopped at this rule because it needs a dry-run byte estimate.
    pub needs_estimate: Option<String>,
    /// `maximumBytesBilled` the deciding rule sets, if any.
    pub max_bytes_billed: Option<u64>,
    pub row_limit: Option<RowLimit>,
}

/// A set of rules, checked in order.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    /// Short hash of the rules, recorded with every decision.
    pub version: String,
}

impl Policy {
    pub fn new(rules: Vec<Rule>) -> Policy {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for r in &rules {
            h.update(format!("{r:?}").as_bytes());
        }
        Policy {
            version: hex::encode(&h.finalize()[..8]),
            rules,
        }
    }

    /// Whether `identity` may see `table` (`project.dataset.table`) in the catalog: the
    /// verdict for the narrowest read of it — a `SELECT` of unclassified columns, filtered on
    /// its partitions, processing no bytes — so that what hides a table is a rule about the
    /// table or the caller (`tables`, `who`, `hours`), never one about a query's shape
    /// (`touches`, `full_scan`, `bytes_over`, `rows_over`). A schema is probed as
    /// `project.dataset.*`, which only a rule on all of its tables matches.
    pub fn readable(
        &self,
        identity: &Identity,
        source: &str,
        table: &str,
        now: jiff::Timestamp,
    ) -> Verdict {
        let tables = [TableUse {
            name: table.to_string(),
            write: false,
            filtered: Vec::new(),
        }];
        let partitions = HashMap::from([(table.to_string(), Partitioning::NotPartitioned)]);
        self.evaluate(&Input {
            identity,
            source,
            statements: &[StatementKind::Select],
            tables: &tables,
            opaque: None,
            bytes: Some(0),
            partitions: &partitions,
            tags: &[],
            now,
        })
    }

    /// Whether the rules could let `identity` do anything at all: a rule that names it
    /// allows or asks approval for something before one denies it everything. The MCP
    /// front's calls without a project go to the first source the caller may use.
    pub fn may_use(&self, identity: &Identity) -> bool {
        for rule in self.rules.iter().filter(|r| r.names(identity)) {
            match rule.action {
                RuleAction::Allow | RuleAction::Approve => return true,
                RuleAction::Deny if rule.unconditional() => return false,
                RuleAction::Deny => {}
            }
        }
        false
    }

    /// The policy used when the config has no rules: every identity may read.
    pub fn builtin_read_only() -> Policy {
        Policy::new(vec![Rule {
            name: "built-in: read-only".into(),
            who: vec![],
            on_behalf_of: vec![],
            tables: vec![],
            statements: vec![StatementKind::Select],
            when: When::default(),
            action: RuleAction::Allow,
            message: None,
            approvers: vec![],
            max_bytes_billed: None,
            on_approval: OnApproval::Wait,
        }])
    }

    pub fn evaluate(&self, input: &Input<'_>) -> Verdict {
        let mut verdict = Verdict {
            outcome: Outcome::Deny {
                message: default_denial(input),
            },
            rule: None,
            matched: Vec::new(),
            needs_estimate: None,
            max_bytes_billed: None,
            row_limit: None,
        };
        let mut decided = false;
        for rule in &self.rules {
            match rule.check(input) {
                rule::Check::No => {}
                rule::Check::NeedsBytes if !decided => {
                    verdict.needs_estimate = Some(rule.name.clone());
                    return verdict;
                }
                rule::Check::NeedsBytes => {}
                rule::Check::AfterRows(rows) => {
                    if !decided && verdict.row_limit.is_none() {
                        verdict.row_limit = Some(RowLimit {
                            rows,
                            rule: rule.name.clone(),
                            message: rule.denial_message(
                                input,
                                &format!("the result has more than {rows} rows"),
                            ),
                        });
                    }
                }
                rule::Check::Yes => {
                    verdict.matched.push(rule.name.clone());
                    if !decided {
                        decided = true;
                        verdict.rule = Some(rule.name.clone());
                        verdict.max_bytes_billed = rule.max_bytes_billed;
                        verdict.outcome = rule.outcome(input);
                    }
                }
            }
        }
        verdict
    }
}

fn default_denial(input: &Input<'_>) -> String {
    let what = if input.opaque.is_some() {
        "SQL querygate could not fully analyze".to_string()
    } else if input.statements.is_empty() {
        "this request".to_string()
    } else {
        let kinds: Vec<&str> = input.statements.iter().map(|k| k.name()).collect();
        format!("{} statements", kinds.join(", ").to_uppercase())
    };
    let acting = input
        .identity
        .acting_for
        .as_deref()
        .map(|p| format!(" acting for {}", p.subject))
        .unwrap_or_default();
    let mut msg = format!(
        "Access Denied: no policy rule allows {} for {}{acting} on source {}",
        what, input.identity.subject, input.source
    );
    if let Some(why) = input.opaque {
        msg.push_str(&format!(" ({why})"));
    }
    msg.push_str("; ask the gateway's operator for a rule that allows it");
    msg
}

#[cfg(test)]
mod tests;
