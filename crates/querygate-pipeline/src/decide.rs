//! The decide stage: pure, over the identity, the action, SQL facts and job ownership.
//!
//! Until rule-based policy lands, the built-in policy is: every authenticated
//! identity may read (SELECT queries, dry runs, metadata, its own jobs and their
//! result tables) and nothing else. Every denial says why and what to do instead.

use querygate_core::{Action, Decision, Denial, DenialKind, Identity};
use querygate_sql::Facts;

/// Facts about jobs and result tables, looked up in the store before deciding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The caller created the job the request refers to.
    pub owns_job: bool,
    /// The caller created the job whose hidden result table the request reads.
    pub owns_result_table: bool,
}

pub fn decide(
    _identity: &Identity,
    source_known: bool,
    target: &str,
    action: &Action,
    facts: &Facts,
    ownership: &Ownership,
) -> Decision {
    let deny = |kind, message: String| Decision::Deny(Denial::new(kind, message));
    match action {
        Action::Malformed { message, status } => {
            let kind = match status {
                413 => DenialKind::TooLarge,
                404 => DenialKind::NotFound,
                _ => DenialKind::Invalid,
            };
            deny(kind, message.clone())
        }
        _ if !source_known => deny(
            DenialKind::NotFound,
            format!(
                "Not found: project {target} is not served by this querygate; \
                 use the project id of a configured source"
            ),
        ),
        Action::Query {
            dialect_problem: Some(problem),
            ..
        } => deny(DenialKind::Invalid, problem.clone()),
        Action::Query {
            destination: Some(table),
            ..
        } => deny(
            DenialKind::Forbidden,
            format!(
                "Access Denied: writing query results to table {table} is a write, and this \
                 identity has read-only access through querygate; remove the destination table"
            ),
        ),
        Action::Query { .. } => {
            if let Some(why) = &facts.opaque {
                deny(
                    DenialKind::Invalid,
                    format!(
                        "{why}. querygate refuses SQL it cannot analyze; rewrite the statement"
                    ),
                )
            } else if facts.read_only() {
                Decision::Allow
            } else {
                let kinds: Vec<&str> = facts
                    .statements
                    .iter()
                    .map(|k| k.name())
                    .filter(|k| *k != "select")
                    .collect();
                deny(
                    DenialKind::Forbidden,
                    format!(
                        "Access Denied: this identity has read-only access through querygate, and \
                         the statement contains {}; only SELECT queries may run — ask a person to \
                         run this change",
                        kinds.join(", ").to_uppercase()
                    ),
                )
            }
        }
        Action::ReadJob { job_id } | Action::CancelJob { job_id } => {
            if ownership.owns_job {
                Decision::Allow
            } else {
                deny(
                    DenialKind::NotFound,
                    format!(
                        "Not found: Job {job_id} (querygate shows each identity only the jobs it \
                         created through querygate)"
                    ),
                )
            }
        }
        Action::ReadRows {
            table,
            result_table: true,
        }
        | Action::ReadMetadata {
            table: Some(table),
            result_table: true,
        } if !ownership.owns_result_table => deny(
            DenialKind::NotFound,
            format!(
                "Not found: Table {table} (a query's result table is readable only by the \
                 identity that ran the query)"
            ),
        ),
        Action::ReadRows { .. } | Action::ReadMetadata { .. } | Action::ListJobs => Decision::Allow,
        Action::Other { what } => deny(
            DenialKind::Forbidden,
            format!(
                "Access Denied: {what} is not allowed through querygate: identities have \
                 read-only access until a policy allows more"
            ),
        ),
    }
}
