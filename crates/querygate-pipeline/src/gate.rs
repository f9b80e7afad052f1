//! The gate stage: the request-shape half of deciding, pure over the action and job
//! ownership (looked up in the store by [`Pipeline::ownership`]).
//!
//! It settles what does not need policy (malformed requests, unknown sources, legacy
//! SQL, jobs and result tables that belong to someone else, API methods not served)
//! and hands queries and table reads to the policy ([`Gate::Policy`]). Every denial
//! says why and what to do instead.

use querygate_core::{
    Action, Catalog, Denial, DenialKind, Fault, Identity, JobOp, Malformed, Query, Request,
};

use crate::Pipeline;

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

impl Pipeline {
    /// Job facts the decide stage needs, read from the store.
    pub(crate) fn ownership(
        &self,
        request: &Request,
        identity: &Identity,
        source: &str,
    ) -> Result<Ownership, Fault> {
        let store_fault = |e: querygate_store::StoreError| Fault::gateway(e.to_string());
        Ok(match &request.action {
            Action::Job(
                JobOp::Get { job_id } | JobOp::Results { job_id } | JobOp::Cancel { job_id },
            ) => {
                let job = self.store.job(source, job_id).map_err(store_fault)?;
                let owns_job = job.as_ref().is_some_and(|j| j.identity == identity.owner());
                Ownership {
                    owns_job,
                    owns_result_table: false,
                    job_id_taken: false,
                    job_sensitive: job.as_ref().is_some_and(|j| j.sensitive),
                    job_row_limit: job.and_then(|j| j.row_limit).filter(|_| owns_job),
                }
            }
            Action::Query(_) if request.job_id.is_some() => {
                let asked = request.job_id.as_deref().unwrap_or_default();
                let job = self.store.job(source, asked).map_err(store_fault)?;
                Ownership {
                    job_id_taken: job.is_some_and(|j| j.identity != identity.owner()),
                    ..Ownership::default()
                }
            }
            Action::ReadTable {
                table,
                result_table: true,
            }
            | Action::Catalog {
                object:
                    Catalog::Schema { schema: table }
                    | Catalog::Tables { schema: table }
                    | Catalog::Table { table },
                hidden: true,
            } => Ownership {
                owns_job: false,
                job_row_limit: None,
                job_sensitive: false,
                job_id_taken: false,
                owns_result_table: self
                    .store
                    .owns_destination(source, &identity.owner(), table)
                    .map_err(store_fault)?,
            },
            _ => Ownership::default(),
        })
    }
}
