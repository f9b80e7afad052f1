//! The enforcement pipeline: the only place the stages are put in order, and the
//! only code that can hand a request to an upstream.
//!
//! ```text
//! authenticate → analyze → decide → approve → (audit decided) → execute → restrict → (audit completed)
//! ```
//!
//! Fronts decode their wire traffic into a [`Request`] plus a source-specific call,
//! call [`Pipeline::handle`], and render the [`Outcome`]. A [`Source`] executes only an
//! [`Admitted`] call, and only this crate can construct one, so no front can run an
//! unchecked request. This crate holds no wire knowledge.

mod authenticate;
mod decide;
mod source;

use std::sync::Arc;
use std::time::Instant;

use querygate_core::{
    Action, AuditRecord, Decision, Denial, DenialKind, Fault, Identity, Phase, Request,
};
use querygate_sql::{Facts, SqlDialect, analyze};
use querygate_store::{JobRow, Store};

pub use authenticate::{ApiKey, Authenticator};
pub use decide::{Ownership, decide};
pub use source::{Admitted, Reply, Scope, Source, Summary};

/// What a front renders.
#[derive(Debug)]
pub enum Outcome<R> {
    /// The upstream answered (possibly with its own error, which the reply carries).
    Done(R),
    /// The gateway refused the request.
    Denied(Denial),
    /// The request was allowed but could not be completed.
    Failed(Fault),
}

/// The pipeline shared by every front.
#[derive(Debug)]
pub struct Pipeline {
    authenticator: Authenticator,
    store: Arc<Store>,
}

/// The decide stage's context for one request, recorded in the decided audit record.
struct Context<'a> {
    request: &'a Request,
    identity: Option<&'a Identity>,
    source: &'a str,
    started: Instant,
}

impl Pipeline {
    pub fn new(authenticator: Authenticator, store: Arc<Store>) -> Pipeline {
        Pipeline {
            authenticator,
            store,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs one request through every stage. `source` is `None` when the request
    /// names a target no configured source serves.
    pub async fn handle<S: Source>(
        &self,
        request: Request,
        source: Option<&S>,
        call: S::Call,
    ) -> Outcome<S::Reply> {
        let started = Instant::now();
        let source_name = source.map_or(request.target.as_str(), |s| s.name());
        let mut ctx = Context {
            request: &request,
            identity: None,
            source: source_name,
            started,
        };

        // authenticate: who is asking.
        let identity = match self.authenticator.authenticate(request.credential.as_ref()) {
            Ok(identity) => identity,
            Err(denial) => return self.refuse(&ctx, denial).await,
        };
        ctx.identity = Some(&identity);

        // analyze: facts from the SQL text (pure).
        let facts = match &request.action {
            Action::Query { statement, .. } => analyze(statement, SqlDialect::BigQuery),
            _ => Facts::default(),
        };

        // decide: allow or deny (pure, over facts the store supplies about jobs).
        let ownership = match self.ownership(&request, &identity, source_name) {
            Ok(o) => o,
            Err(fault) => return self.fail(&ctx, fault).await,
        };
        let decision = decide(
            &identity,
            source.is_some(),
            &request.target,
            &request.action,
            &facts,
            &ownership,
        );
        let Some(source) = source.filter(|_| decision == Decision::Allow) else {
            let denial = match decision {
                Decision::Deny(d) => d,
                Decision::Allow => Denial::new(DenialKind::NotFound, "no such source"),
            };
            return self.refuse(&ctx, denial).await;
        };

        // approve: approvals land with the approvals work; every allowed request passes.

        // audit decided: durable before anything reaches the upstream (fail closed).
        // A job id the client chose is claimed for it in the same commit.
        let decided = self.record(&ctx, Phase::Decided, "allow", None);
        let claim = match (&request.job_id, &request.action) {
            (Some(job_id), Action::Query { dry_run: false, .. }) => {
                Some(job_row(source_name, job_id, &identity, None, None))
            }
            _ => None,
        };
        if let Err(e) = self.store.append_with(decided, claim).await {
            tracing::error!(request_id = %request.id, error = %e, "cannot write the decided record; refusing");
            return Outcome::Failed(Fault::gateway(
                "querygate could not write its audit record, so the request was not run; \
                 contact the gateway's operator",
            ));
        }

        // execute: only an Admitted call reaches the source.
        let admitted = Admitted::new(call, identity.clone());
        let mut reply = match source.execute(admitted).await {
            Ok(reply) => reply,
            Err(fault) => return self.fail(&ctx, fault).await,
        };

        // restrict (mask): keep only what this identity may see.
        if matches!(request.action, Action::ListJobs) {
            match self.store.jobs_of(source_name, &identity.subject) {
                Ok(owned) => reply.restrict(&Scope {
                    owned_jobs: owned.into_iter().collect(),
                }),
                Err(e) => return self.fail(&ctx, Fault::gateway(e.to_string())).await,
            }
        }

        // audit completed: what went back, and the job the upstream ran (claimed for the
        // caller in the same commit, so its next request finds it).
        let summary = reply.summary();
        let claim = summary
            .job_id
            .as_deref()
            .filter(|_| {
                matches!(
                    request.action,
                    Action::Query { dry_run: false, .. } | Action::ReadJob { .. }
                )
            })
            .map(|job_id| {
                job_row(
                    source_name,
                    job_id,
                    &identity,
                    summary.destination.clone(),
                    summary.schema.clone(),
                )
            });
        let mut completed = self.record(&ctx, Phase::Completed, "allow", None);
        completed.status = Some(summary.status);
        completed.rows = summary.rows;
        completed.bytes_processed = summary.bytes_processed;
        completed.bytes_billed = summary.bytes_billed;
        completed.error = summary.error;
        completed.job_id = summary.job_id.or(completed.job_id);
        if let Err(e) = self.store.append_with(completed, claim).await {
            // The upstream already answered; withholding the answer would not undo it.
            tracing::error!(request_id = %request.id, error = %e, "cannot write the completed record");
        }
        tracing::info!(
            request_id = %request.id, identity = %identity.subject, method = %request.method,
            status = summary.status, "request completed"
        );
        Outcome::Done(reply)
    }

    /// Job facts the decide stage needs, read from the store.
    fn ownership(
        &self,
        request: &Request,
        identity: &Identity,
        source: &str,
    ) -> Result<Ownership, Fault> {
        let store_fault = |e: querygate_store::StoreError| Fault::gateway(e.to_string());
        Ok(match &request.action {
            Action::ReadJob { job_id } | Action::CancelJob { job_id } => {
                let owner = self.store.job(source, job_id).map_err(store_fault)?;
                Ownership {
                    owns_job: owner.is_some_and(|j| j.identity == identity.subject),
                    owns_result_table: false,
                }
            }
            Action::ReadRows {
                table,
                result_table: true,
            }
            | Action::ReadMetadata {
                table: Some(table),
                result_table: true,
            } => Ownership {
                owns_job: false,
                owns_result_table: self
                    .store
                    .owns_destination(source, &identity.subject, table)
                    .map_err(store_fault)?,
            },
            _ => Ownership::default(),
        })
    }

    /// Records a denial (one record) and returns it.
    async fn refuse<R>(&self, ctx: &Context<'_>, denial: Denial) -> Outcome<R> {
        let mut record = self.record(ctx, Phase::Decided, "deny", Some(denial.message.clone()));
        record.status = Some(status_of(denial.kind));
        tracing::info!(
            request_id = %ctx.request.id, identity = %record.identity, method = %ctx.request.method,
            reason = %denial.message, "request denied"
        );
        if let Err(e) = self.store.append(record).await {
            tracing::error!(request_id = %ctx.request.id, error = %e, "cannot write the denial record");
        }
        Outcome::Denied(denial)
    }

    /// Records a fault (as the completed record of an allowed request) and returns it.
    async fn fail<R>(&self, ctx: &Context<'_>, fault: Fault) -> Outcome<R> {
        let mut record = self.record(ctx, Phase::Completed, "allow", None);
        record.error = Some(fault.message.clone());
        record.status = Some(if fault.retryable { 502 } else { 403 });
        tracing::warn!(
            request_id = %ctx.request.id, method = %ctx.request.method, cause = ?fault.cause,
            error = %fault.message, "request failed"
        );
        if let Err(e) = self.store.append(record).await {
            tracing::error!(request_id = %ctx.request.id, error = %e, "cannot write the failure record");
        }
        Outcome::Failed(fault)
    }

    fn record(
        &self,
        ctx: &Context<'_>,
        phase: Phase,
        decision: &str,
        reason: Option<String>,
    ) -> AuditRecord {
        let r = ctx.request;
        let now = audit_time(time::OffsetDateTime::now_utc());
        AuditRecord {
            v: AuditRecord::SCHEMA,
            seq: 0,
            time: now,
            request_id: r.id.0.clone(),
            phase,
            identity: ctx.identity.map_or_else(
                || {
                    if r.credential.is_some() {
                        "unauthenticated".to_string()
                    } else {
                        "anonymous".to_string()
                    }
                },
                |i| i.subject.clone(),
            ),
            groups: ctx.identity.map(|i| i.groups.clone()).unwrap_or_default(),
            kind: ctx.identity.map(|i| {
                match i.kind {
                    querygate_core::IdentityKind::Human => "human",
                    querygate_core::IdentityKind::Agent => "agent",
                    querygate_core::IdentityKind::Service => "service",
                }
                .to_string()
            }),
            source: ctx.source.to_string(),
            method: r.method.clone(),
            statement: r.statement().map(str::to_string),
            table: r.table().map(str::to_string),
            decision: decision.to_string(),
            reason,
            job_id: r.job_id.clone().or_else(|| match &r.action {
                Action::ReadJob { job_id } | Action::CancelJob { job_id } => Some(job_id.clone()),
                _ => None,
            }),
            status: None,
            error: None,
            rows: None,
            bytes_processed: None,
            bytes_billed: None,
            duration_ms: (phase == Phase::Completed || decision == "deny")
                .then(|| ctx.started.elapsed().as_secs_f64() * 1000.0),
            user_agent: r.client.user_agent.clone(),
            peer: r.client.peer.clone(),
        }
    }
}

fn job_row(
    source: &str,
    job_id: &str,
    identity: &Identity,
    destination: Option<String>,
    schema: Option<String>,
) -> JobRow {
    JobRow {
        source: source.to_string(),
        job_id: job_id.to_string(),
        identity: identity.subject.clone(),
        destination,
        schema,
    }
}

/// RFC 3339 UTC with exactly six fractional digits, so that times sort as strings.
pub fn audit_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The HTTP-style status a denial is rendered with, recorded in the audit log.
pub fn status_of(kind: DenialKind) -> u16 {
    match kind {
        // See querygate-bigquery's render: a 401 makes Google's clients hide the message.
        DenialKind::Unauthenticated => 403,
        DenialKind::Forbidden => 403,
        DenialKind::NotFound => 404,
        DenialKind::Invalid => 400,
        DenialKind::TooLarge => 413,
    }
}

#[cfg(test)]
mod tests;
