//! The request-shape half of the decide stage: pure, over the action and job ownership.
//!
//! It settles what does not need policy (malformed requests, unknown sources, legacy
//! SQL, jobs and result tables that belong to someone else, API methods not served)
//! and hands queries and table reads to the policy ([`Gate::Policy`]). Every denial
//! says why and what to do instead.

use querygate_core::{Action, Denial, DenialKind, JobOp, Malformed, Query};

/// What the request's shape settles before policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    Allow,
    Deny(Denial),
    /// A query or table read: the rules decide.
    Policy,
}

/// Facts about jobs and result tables, looked up in the store before deciding.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The caller created the job the request refers to.
    pub owns_job: bool,
    /// The caller created the job whose hidden result table the request reads.
    pub owns_result_table: bool,
    /// The row limit the job's query was decided with, applied to each of its pages.
    pub job_row_limit: Option<u64>,
    /// The job's query read masked columns: its errors are withheld.
    pub job_sensitive: bool,
    /// The job id a jobs.insert chose already belongs to another identity.
    pub job_id_taken: bool,
}

pub fn gate(source_known: bool, target: &str, action: &Action, ownership: &Ownership) -> Gate {
    let deny = |kind, message: String| Gate::Deny(Denial::new(kind, message));
    match action {
        Action::Malformed { problem, message } => {
            let kind = match problem {
                Malformed::TooLarge => DenialKind::TooLarge,
                Malformed::Unknown => DenialKind::NotFound,
                Malformed::Invalid => DenialKind::Invalid,
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
        Action::Query(Query {
            dialect_problem: Some(problem),
            ..
        }) => deny(DenialKind::Invalid, problem.clone()),
        Action::Query(_) if ownership.job_id_taken => deny(
            DenialKind::Conflict,
            "Already Exists: the job id is taken by another identity's job; submit the job \
             under a new job id (the client libraries choose a fresh one when none is given)"
                .to_string(),
        ),
        Action::Query(Query {
            destination: Some(table),
            ..
        }) => deny(
            DenialKind::Forbidden,
            format!(
                "Access Denied: writing query results to table {table} is a write, and this \
                 identity has read-only access through querygate; remove the destination table"
            ),
        ),
        Action::Query(_) => Gate::Policy,
        Action::Job(
            JobOp::Get { job_id } | JobOp::Results { job_id } | JobOp::Cancel { job_id },
        ) => {
            if ownership.owns_job {
                Gate::Allow
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
        Action::ReadTable {
            table,
            result_table: true,
        } if !ownership.owns_result_table => deny(
            DenialKind::NotFound,
            format!(
                "Not found: Table {table} (a query's result table is readable only by the \
                 identity that ran the query)"
            ),
        ),
        Action::Catalog {
            object,
            hidden: true,
        } if !ownership.owns_result_table => deny(
            DenialKind::NotFound,
            format!(
                "Not found: Table {} (a query's result table is readable only by the \
                 identity that ran the query)",
                object.name().unwrap_or_default()
            ),
        ),
        Action::ReadTable {
            result_table: true, ..
        } => Gate::Allow,
        Action::ReadTable { .. } => Gate::Policy,
        Action::Catalog { .. } | Action::Job(JobOp::List) => Gate::Allow,
        Action::Other { what } => deny(
            DenialKind::Forbidden,
            format!(
                "Access Denied: {what} is not allowed through querygate: identities have \
                 read-only access until a policy allows more"
            ),
        ),
    }
}
