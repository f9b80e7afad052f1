//! The execute stage and what follows it: the admitted call goes to the source, and the
//! reply is restricted to what the identity may see before it is recorded and rendered.
//!
//! In order: the decided record is made durable ([`Pipeline::admit`]), the call becomes
//! [`Admitted`] and runs, job listings keep the caller's jobs, catalog listings the names
//! the caller's rules let it read (a table's description notes how its columns are masked
//! for the caller), value detectors scrub every
//! value, a direct table read's rows are masked, errors that could echo masked values are
//! withheld, a result over the plan's row limit is withheld, and the completed record
//! claims the job for the caller and charges its bytes and rows to its budgets. A reply
//! that streams the rest of a large result gets that completion as an [`crate::Ending`] to
//! finish.

use querygate_core::{Action, Catalog, Denial, DenialKind, Fault, Identity, JobOp, Query, Usage};
use querygate_mask::Strategy;
use querygate_store::{Alongside, JobRow};

use crate::audit::{Completion, job_row};
use crate::decide::Plan;
use crate::gate::Ownership;
use crate::source::{Admitted, Answer, Reply, Scope, Source};
use crate::{Context, Outcome, Pipeline, catalog};

impl Pipeline {
    /// Runs an admitted request: `plan` from the decide and approve stages, `ownership`
    /// what the gate found of its job.
    pub(crate) async fn execute<S: Source>(
        &self,
        ctx: &Context<'_>,
        identity: &Identity,
        source: &S,
        mut call: S::Call,
        plan: Plan,
        ownership: &Ownership,
    ) -> Outcome<S::Reply> {
        let request = ctx.request;
        if let Some(bytes) = plan.max_bytes_billed {
            source.limit_bytes(&mut call, bytes);
        }
        if let Some(limit) = &plan.row_limit {
            source.limit_rows(&mut call, limit.rows);
        }
        // audit decided: durable before anything reaches the upstream (fail closed).
        let grant = plan.grant.as_ref();
        // A job id is claimed for the caller only once the upstream accepted the job (at
        // completion): an id that names someone else's job, or that the upstream refuses,
        // never becomes the caller's.
        if let Err(fault) = self.admit(ctx, grant, plan.reason.clone()).await {
            return Outcome::Failed(fault);
        }

        // execute: only an Admitted call reaches the source.
        self.trace_upstream(ctx, plan.max_bytes_billed);
        let mut reply = match source.execute(Admitted::new(call, identity.clone())).await {
            Ok(reply) => reply,
            Err(fault) => return self.fail(ctx, fault).await,
        };

        // restrict (mask): keep only what this identity may see.
        match &request.action {
            Action::Job(JobOp::List) => {
                match self.store.jobs_of(source.name(), &identity.owner()) {
                    Ok(owned) => reply.restrict(&Scope {
                        owned_jobs: owned.into_iter().collect(),
                        ..Scope::default()
                    }),
                    Err(e) => return self.fail(ctx, Fault::gateway(e.to_string())).await,
                }
            }
            Action::Catalog {
                object: object @ (Catalog::Schemas | Catalog::Tables { .. }),
                hidden: false,
            } => {
                if let Answer::Names(names) = reply.answer() {
                    let policies = &self.settings().policies;
                    let hidden = catalog::hidden(
                        policies,
                        identity,
                        source.name(),
                        &request.target,
                        object,
                        &names,
                    );
                    if !hidden.is_empty() {
                        reply.restrict(&Scope {
                            hidden,
                            ..Scope::default()
                        });
                    }
                }
            }
            Action::Catalog {
                object: Catalog::Table { table },
                ..
            } => {
                if let Answer::Table(info) = reply.answer() {
                    let policies = &self.settings().policies;
                    let masks = catalog::column_masks(policies, identity, table, &info.columns);
                    ctx.noted.lock().unwrap_or_else(|e| e.into_inner()).masks = masks;
                }
            }
            _ => {}
        }
        // The second line: value detectors on every value the result returns (before the
        // reply is recorded or rendered, so neither holds what they find).
        let mut masked = 0;
        if let Some(scrubber) = source.scrubber() {
            match reply.scrub(scrubber) {
                Ok(n) => masked += n,
                Err(fault) => return self.fail(ctx, fault).await,
            }
        }
        if let Some(masks) = &plan.row_masks {
            let hashes = masks.iter().any(|m| m.strategy == Some(Strategy::Hash));
            let key = match source.mask_key() {
                Some(k) => k.expose().as_bytes(),
                None if hashes => {
                    let fault = Fault::gateway(
                        "a masked column uses the hash strategy, and this gateway has no masking key",
                    );
                    return self.fail(ctx, fault).await;
                }
                None => b"",
            };
            match reply.mask_rows(masks, key) {
                Ok(n) => masked += n,
                Err(fault) => return self.fail(ctx, fault).await,
            }
        }
        let masked = Some(masked).filter(|n| *n > 0);
        // Errors of a query that reads masked values (and of its job's later pages) could
        // echo them (`ERROR(email)`, a failed cast): they keep their kind, not their text.
        let sensitive = plan.sensitive.clone().or_else(|| {
            ownership
                .job_sensitive
                .then(|| "the job's query reads columns masked for you".to_string())
        });
        if let Some(why) = &sensitive {
            reply.withhold_errors(why);
        }
        let summary = reply.summary();
        let row_limit = plan
            .row_limit
            .as_ref()
            .map(|l| (l.rows, l.message.clone()))
            .or_else(|| {
                // Pages of a job carry the limit its query was decided with (read once, when
                // ownership was checked).
                match (&request.action, ownership.job_row_limit) {
                    (
                        Action::Job(JobOp::Get { job_id } | JobOp::Results { job_id }),
                        Some(rows),
                    ) => Some((
                        rows,
                        format!(
                            "Access Denied: the result of job {job_id} has more than {rows} rows, \
                             over the limit a policy rule sets; narrow the query"
                        ),
                    )),
                    _ => None,
                }
            });
        let withheld = row_limit
            .filter(|(rows, _)| summary.total_rows.is_some_and(|t| t > *rows))
            .map(|(_, message)| message);

        // audit completed: what went back, and the job the upstream ran (claimed for the
        // caller in the same commit, so its next request finds it).
        let accepted = summary.accepted;
        let claim = summary
            .job_id
            .as_deref()
            .filter(|_| {
                accepted
                    && matches!(
                        request.action,
                        Action::Query(Query { dry_run: false, .. })
                            | Action::Job(JobOp::Get { .. } | JobOp::Results { .. })
                    )
            })
            // A jobs.insert's job is the id it asked for; a reply naming another is not
            // claimed under the asked id.
            .filter(|id| request.job_id.as_deref().is_none_or(|asked| asked == *id))
            .map(|job_id| JobRow {
                sensitive: plan.sensitive.is_some(),
                ..job_row(
                    source.name(),
                    job_id,
                    identity,
                    summary.destination.clone(),
                    summary.schema.clone(),
                    plan.row_limit.as_ref().map(|l| l.rows),
                )
            });
        // What it charges: the bytes a query billed, and the rows each answer carries or a
        // statement changed — a query's first page, then each page of its job's results
        // read later (whose bytes the query already paid); a withheld answer carries none.
        let page = matches!(request.action, Action::Job(JobOp::Results { .. }));
        let usage = (plan.billable || page).then(|| Usage {
            bytes: summary
                .bytes_billed
                .or(summary.bytes_processed)
                .filter(|_| plan.billable)
                .unwrap_or(0),
            rows: summary.rows.filter(|_| withheld.is_none()).unwrap_or(0),
        });
        let completion = match &withheld {
            Some(message) => Completion {
                decision: "deny",
                reason: Some(message.clone()),
                status: request.codes.denied(DenialKind::Forbidden),
                rows: Some(0),
                ..Completion::default()
            },
            None => Completion {
                decision: "allow",
                status: summary.status,
                rows: summary.rows,
                ..Completion::default()
            },
        };
        let completion = Completion {
            bytes_processed: summary.bytes_processed,
            bytes_billed: summary.bytes_billed,
            masked,
            error: summary.error,
            sqlstate: summary.sqlstate,
            job_id: summary.job_id,
            ticket: grant.map(|t| (t.id.clone(), t.decided_by.clone())),
            ..completion
        };
        // A reply that streams the rest of its result completes when the client has read
        // it (scrubbed and withheld alike on the way).
        if reply.is_open() && withheld.is_none() {
            let end = self.ending(
                ctx,
                completion,
                Alongside { claim, usage },
                source.scrubber().cloned(),
                sensitive,
            );
            reply.stream(end);
            tracing::debug!(
                request_id = %request.id, identity = %identity.subject, method = %request.method,
                "request streaming"
            );
            return Outcome::Done(reply);
        }
        self.complete(ctx, completion, Alongside { claim, usage });
        if let Some(message) = withheld {
            tracing::info!(request_id = %request.id, identity = %identity.subject, "result withheld: {message}");
            return Outcome::Denied(Denial::new(DenialKind::Forbidden, message));
        }
        tracing::debug!(
            request_id = %request.id, identity = %identity.subject, method = %request.method,
            status = summary.status, "request completed"
        );
        Outcome::Done(reply)
    }
}
