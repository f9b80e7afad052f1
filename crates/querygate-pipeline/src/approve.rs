//! The approve stage: requests an `approve` rule caught wait in a ticket for a person,
//! and run once, under the same job, when one approves.
//!
//! A request the rule catches either runs under a grant that covers it (a window grant
//! for the same identity, rule and policy version) or opens a ticket and answers
//! "pending". Polls of a waiting job ([`Pipeline::resume`]) answer "pending" until the
//! ticket is decided; the first poll after approval checks the grant again (identity,
//! policy version, expiry) and runs the saved call; denial, expiry or cancellation end
//! the job with the reason. Every step is audited. Approvers decide through the
//! approvals service (`approvals.rs`).

use querygate_core::{
    Action, Denial, DenialKind, Fault, Identity, JobOp, Query, Ticket, TicketState,
};
use querygate_policy::OnApproval;

use crate::audit::job_row;
use crate::decide::Needed;
use crate::decide::Plan;
use crate::gate::Ownership;
use crate::source::{Held, Source};
use crate::{Context, Outcome, Pipeline};

/// A job waiting for (or ended by) an approval decision, for the front to render.
#[derive(Debug, Clone)]
pub struct Waiting {
    pub ticket: Ticket,
    /// Set when the job will not run: the message the client gets.
    pub ended: Option<String>,
}

pub(crate) fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The ceiling a grant puts on bytes billed: the estimate the approver saw plus 10 %
/// (and at least BigQuery's 10 MiB minimum), so an approval of a cheap query cannot
/// be used to run an expensive one.
fn ceiling(estimate: Option<u64>) -> Option<u64> {
    estimate.map(|b| (b.saturating_add(b / 10)).max(10 << 20))
}

/// The reason a requester gave: a `/* reason: … */` comment in the statement.
pub(crate) fn comment_reason(statement: &str) -> Option<String> {
    let start = statement.find("/*")?;
    let body = &statement[start + 2..];
    let end = body.find("*/")?;
    let text = body[..end].trim();
    let rest = text
        .strip_prefix("reason:")
        .or_else(|| text.strip_prefix("Reason:"))?;
    let rest = rest.trim();
    (!rest.is_empty()).then(|| rest.chars().take(500).collect())
}

/// `plan` under `grant`: the grant's byte ceiling, and why it may run, for the records.
fn granted(mut plan: Plan, grant: Ticket) -> Plan {
    if let Some(ceiling) = grant.max_bytes_billed {
        plan.max_bytes_billed = Some(plan.max_bytes_billed.map_or(ceiling, |b| b.min(ceiling)));
    }
    let by = grant.decided_by.as_deref().unwrap_or("an approver");
    plan.reason = Some(match grant.grant_until {
        Some(_) => format!("within the window {by} granted (ticket {})", grant.id),
        None => format!(
            "approved by {by} (ticket {}), run once by running the statement again",
            grant.id
        ),
    });
    plan.grant = Some(grant);
    plan
}

impl Pipeline {
    /// The approve stage for a request an approve rule caught: `Ok` with the plan under the
    /// grant that covers it, or the answer to give (a ticket was opened, or it cannot wait).
    pub(crate) async fn approve<S: Source>(
        &self,
        ctx: &Context<'_>,
        identity: &Identity,
        source: &S,
        call: &mut S::Call,
        needed: Needed,
        plan: Plan,
    ) -> Result<Plan, Outcome<S::Reply>> {
        let grant = self.grant(ctx, identity, source, call, needed).await?;
        Ok(granted(plan, grant))
    }

    /// The grant that covers the request, or the answer to give.
    async fn grant<S: Source>(
        &self,
        ctx: &Context<'_>,
        identity: &Identity,
        source: &S,
        call: &mut S::Call,
        needed: Needed,
    ) -> Result<Ticket, Outcome<S::Reply>> {
        let policy_version = ctx.explained.policy_version.clone().unwrap_or_default();
        let now = now();
        // A window grant for this identity, rule and policy version covers it.
        match self.store.window_grant(
            &identity.subject,
            source.name(),
            &needed.rule,
            &policy_version,
            now,
        ) {
            Ok(Some(grant)) => return Ok(grant),
            Ok(None) => {}
            Err(e) => return Err(self.fail(ctx, Fault::gateway(e.to_string())).await),
        }
        // An approval of exactly this statement and these parameters, for this identity
        // under this policy, that has not run yet: re-running the statement runs it, once
        // (how a client that was answered at once, or gave up waiting, uses its approval).
        if let Action::Query(Query { statement, .. }) = &ctx.request.action {
            let fingerprint = querygate_core::ticket::fingerprint(&querygate_sql::normalize(
                statement,
                source.dialect(),
            ));
            let parameters = source.parameters(call);
            let acting_for = identity.acting_for.as_ref().map(|p| p.subject.clone());
            let approved = match self.store.approved_once(
                &identity.subject,
                source.name(),
                &fingerprint,
                &policy_version,
                now,
            ) {
                Ok(list) => list,
                Err(e) => return Err(self.fail(ctx, Fault::gateway(e.to_string())).await),
            };
            for t in approved
                .into_iter()
                .filter(|t| t.parameters == parameters && t.acting_for == acting_for)
            {
                match self.store.start_ticket(&t.id) {
                    Ok(Some(started)) => {
                        self.approvals.changed();
                        return Ok(started);
                    }
                    Ok(None) => {}
                    Err(e) => return Err(self.fail(ctx, Fault::gateway(e.to_string())).await),
                }
            }
        }
        let Action::Query(Query { statement, .. }) = &ctx.request.action else {
            let denial = Denial::new(
                DenialKind::Forbidden,
                format!(
                    "{} (this kind of request cannot wait for approval)",
                    needed.message
                ),
            );
            return Err(self.refuse(ctx, denial).await);
        };
        let Some(held) = source.hold(call, &ctx.request.id.0) else {
            let denial = Denial::new(
                DenialKind::Forbidden,
                format!(
                    "{} (this request cannot wait for approval; submit it as a query job)",
                    needed.message
                ),
            );
            return Err(self.refuse(ctx, denial).await);
        };
        // Best effort: the approver should see the cost, but a failed estimate does not stop
        // the ticket (the upstream will report the error when it runs). The ticket's records
        // carry it.
        let mut with_estimate = ctx.clone();
        if with_estimate.explained.bytes_estimate.is_none() {
            with_estimate.explained.bytes_estimate = source.estimate(call).await.ok();
        }
        let ctx = &with_estimate;
        let reason = ctx
            .request
            .reason
            .clone()
            .or_else(|| comment_reason(statement).map(|r| (r, "comment".to_string())));
        let Held {
            job_id,
            location,
            call: saved,
            parameters,
        } = held;
        let ttl = self.approvals.settings().ticket_ttl.as_secs() as i64;
        let ticket = Ticket {
            id: Ticket::new_id(&uuid::Uuid::new_v4().simple().to_string()),
            state: TicketState::Pending,
            created: now,
            expires: now + ttl,
            requester: identity.subject.clone(),
            requester_groups: identity.groups.clone(),
            acting_for: identity.acting_for.as_ref().map(|p| p.subject.clone()),
            source: source.name().to_string(),
            method: ctx.request.method.clone(),
            statement: statement.clone(),
            fingerprint: querygate_core::ticket::fingerprint(&querygate_sql::normalize(
                statement,
                source.dialect(),
            )),
            parameters,
            kinds: ctx.explained.kinds.clone(),
            tables: ctx.explained.tables.clone(),
            bytes_estimate: ctx.explained.bytes_estimate,
            cost_estimate_usd: ctx.explained.bytes_estimate.and_then(|b| source.price(b)),
            max_bytes_billed: ceiling(ctx.explained.bytes_estimate),
            rule: needed.rule.clone(),
            approvers: needed.approvers.clone(),
            message: needed.message.clone(),
            reason: reason.as_ref().map(|r| r.0.clone()),
            reason_via: reason.map(|r| r.1),
            policy_version,
            job_id: job_id.clone(),
            location,
            call: saved,
            decided_by: None,
            decided_at: None,
            decision_reason: None,
            grant_until: None,
            notified: false,
        };
        if let Err(e) = self.store.open_ticket(&ticket) {
            return Err(self.fail(ctx, Fault::gateway(e.to_string())).await);
        }
        // The job is the requester's from now on: its polls pass the ownership check.
        let claim = job_row(source.name(), &job_id, identity, None, None, None);
        let fail = needed.on_approval == OnApproval::Fail;
        let answer = format!(
            "{} (ticket {}, for {}). Nothing ran: run the same statement again once it is \
             approved, and it will run once",
            needed.message,
            ticket.id,
            needed.approvers.join(" or ")
        );
        let reason = if fail {
            answer.clone()
        } else {
            format!(
                "waiting for approval (ticket {}): {}",
                ticket.id, needed.message
            )
        };
        let status = if fail {
            ctx.request.codes.denied(DenialKind::Forbidden)
        } else {
            ctx.request.codes.waiting()
        };
        if let Err(fault) = self
            .ticket_opened(ctx, &ticket, reason, status, claim)
            .await
        {
            return Err(self.fail(ctx, fault).await);
        }
        self.approvals.notify_opened();
        tracing::info!(
            request_id = %ctx.request.id, identity = %identity.subject, ticket = %ticket.id,
            rule = %needed.rule, "request waits for approval"
        );
        if fail {
            return Err(Outcome::Denied(Denial::new(DenialKind::Forbidden, answer)));
        }
        Err(Outcome::Waiting(Box::new(Waiting {
            ticket,
            ended: None,
        })))
    }

    /// A poll (or cancel) of a job that waited for approval. `None`: the job is not held
    /// (never was, or it runs now) and the request goes on as usual.
    pub(crate) async fn resume<S: Source>(
        &self,
        ctx: &Context<'_>,
        identity: &Identity,
        source: &S,
        job_id: &str,
    ) -> Option<Outcome<S::Reply>> {
        let mut ticket = match self.store.ticket_for_job(source.name(), job_id) {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(e) => return Some(self.fail(ctx, Fault::gateway(e.to_string())).await),
        };
        // The poll's records name the ticket's rule.
        let mut polled = ctx.clone();
        polled.explained.rule = Some(ticket.rule.clone());
        let ctx = &polled;
        // A poll that may wait (getQueryResults' timeoutMs) is held until the ticket is
        // decided or the wait is over, as BigQuery holds it until the job completes: the
        // client hears of an approval at once, and a waiting client makes a request every
        // few seconds instead of a storm of them.
        if ticket.state == TicketState::Pending
            && let Some(wait) = ctx.request.wait
        {
            match self.approvals.wait(&ticket.id, wait).await {
                Ok(Some(t)) => ticket = t,
                Ok(None) => {}
                Err(fault) => return Some(self.fail(ctx, fault).await),
            }
        }
        let now = now();
        let cancel = matches!(ctx.request.action, Action::Job(JobOp::Cancel { .. }));
        // Expired while pending, or approved but not run in time.
        if !ticket.state.is_final() && now >= ticket.expires {
            let why = match ticket.state {
                TicketState::Approved => "the approval was not used before it expired",
                _ => "nobody decided before the ticket expired",
            };
            match self
                .approvals
                .end(&ticket, TicketState::Expired, why, now)
                .await
            {
                Ok(Some(t)) => ticket = t,
                Ok(None) => {}
                Err(fault) => return Some(self.fail(ctx, fault).await),
            }
            ticket = self.approvals.reread(ticket);
        }
        if cancel && !ticket.state.is_final() {
            let by = format!("cancelled by {}", identity.subject);
            if let Ok(Some(t)) = self
                .approvals
                .end(&ticket, TicketState::Cancelled, &by, now)
                .await
            {
                ticket = t;
            }
        }
        match ticket.state {
            TicketState::Running => None,
            TicketState::Pending => Some(self.waiting(ctx, ticket, None).await),
            TicketState::Denied | TicketState::Expired | TicketState::Cancelled => {
                let message = crate::approvals::ended_message(&ticket);
                Some(self.waiting(ctx, ticket, Some(message)).await)
            }
            TicketState::Approved => {
                // Checked again now, as it runs: same identity, same policy.
                let current = self.policy_version(source.name());
                if ticket.requester != identity.subject {
                    let denial = Denial::new(
                        DenialKind::Forbidden,
                        format!("Access Denied: job {job_id} was approved for another identity"),
                    );
                    return Some(self.refuse(ctx, denial).await);
                }
                if current.as_deref() != Some(ticket.policy_version.as_str()) {
                    let why = "the policy changed after the approval; submit the query again for a new approval";
                    let ended = self
                        .approvals
                        .end(&ticket, TicketState::Denied, why, now)
                        .await
                        .ok()
                        .flatten()
                        .unwrap_or(ticket);
                    let message = crate::approvals::ended_message(&ended);
                    return Some(self.waiting(ctx, ended, Some(message)).await);
                }
                match self.store.start_ticket(&ticket.id) {
                    Ok(Some(started)) => self.run_held(ctx, identity, source, started).await,
                    // Another poll started it a moment ago: go on as for a running job.
                    Ok(None) => None,
                    Err(e) => Some(self.fail(ctx, Fault::gateway(e.to_string())).await),
                }
            }
        }
    }

    /// Submits an approved ticket's saved call upstream under its job id, through the
    /// execute stage (decided record durable first, the admitted call, the completed record
    /// claiming the job), as a request of its own (the source names it: BigQuery's
    /// `jobs.insert` of the ticket's statement). `None` when it was submitted (the poll then
    /// goes on as usual); if the upstream did not accept it, the ticket ends.
    async fn run_held<S: Source>(
        &self,
        ctx: &Context<'_>,
        identity: &Identity,
        source: &S,
        ticket: Ticket,
    ) -> Option<Outcome<S::Reply>> {
        let crate::Resumed { call, method } = match source.resume(&ticket.call) {
            Ok(resumed) => resumed,
            Err(fault) => return Some(self.fail(ctx, fault).await),
        };
        let run = querygate_core::Request {
            id: ctx.request.id.clone(),
            credential: None,
            delegation: None,
            audience: None,
            client: ctx.request.client.clone(),
            target: ctx.request.target.clone(),
            method,
            action: Action::Query(Query::new(ticket.statement.clone())),
            job_id: Some(ticket.job_id.clone()),
            reason: None,
            wait: None,
            session: ctx.request.session.clone(),
            codes: ctx.request.codes,
        };
        let run_ctx = Context {
            request: &run,
            identity: Some(identity),
            source: ctx.source,
            started: ctx.started,
            received: ctx.received.clone(),
            tag: ctx.tag,
            explained: crate::Explained {
                kinds: ticket.kinds.clone(),
                tables: ticket.tables.clone(),
                rule: Some(ticket.rule.clone()),
                rules: vec![ticket.rule.clone()],
                policy_version: Some(ticket.policy_version.clone()),
                bytes_estimate: ticket.bytes_estimate,
                // The ticket keeps the statement as the client wrote it; the held call
                // carries it as the masking rewrite left it.
                rewritten: source.statement(&call).filter(|s| *s != ticket.statement),
                verdict: Some("approve"),
                approvers: ticket.approvers.clone(),
            },
            noted: ctx.noted,
        };
        let plan = Plan {
            max_bytes_billed: ticket.max_bytes_billed,
            reason: Some(format!(
                "approved by {} (ticket {})",
                ticket.decided_by.as_deref().unwrap_or("?"),
                ticket.id
            )),
            grant: Some(ticket.clone()),
            ..Plan::default()
        };
        let reply = match self
            .execute(
                &run_ctx,
                identity,
                source,
                call,
                plan,
                &Ownership::default(),
            )
            .await
        {
            Outcome::Done(reply) => reply,
            other => return Some(other),
        };
        let summary = crate::Reply::summary(&reply);
        if summary.accepted {
            tracing::info!(ticket = %ticket.id, job_id = %ticket.job_id, status = summary.status, "approved job submitted");
            // A source without jobs answers with the result itself: it answers this poll.
            if !source.keeps_jobs() {
                return Some(Outcome::Done(reply));
            }
            return None;
        }
        // The upstream did not create the job (a duplicate id, a refusal): the id is not the
        // requester's job (execute claimed nothing), so its polls must never reach what the
        // upstream has under it.
        let why = format!(
            "the upstream did not accept the approved job: {}",
            summary
                .error
                .as_deref()
                .unwrap_or("it answered with an error")
        );
        let ended = match self.store.fail_running_ticket(&ticket.id, &why, now()) {
            Ok(Some(t)) => t,
            Ok(None) => ticket,
            Err(e) => return Some(self.fail(ctx, Fault::gateway(e.to_string())).await),
        };
        self.approvals.changed();
        let message = crate::approvals::ended_message(&ended);
        Some(self.waiting(ctx, ended, Some(message)).await)
    }

    /// Audits a poll of a held job and answers it.
    async fn waiting<R>(
        &self,
        ctx: &Context<'_>,
        ticket: Ticket,
        ended: Option<String>,
    ) -> Outcome<R> {
        let (decision, status) = match &ended {
            Some(_) => ("deny", ctx.request.codes.denied(DenialKind::Forbidden)),
            None => ("approve", ctx.request.codes.waiting()),
        };
        let reason = ended
            .clone()
            .unwrap_or_else(|| format!("waiting for approval (ticket {})", ticket.id));
        if let Err(fault) = self.held_poll(ctx, &ticket, decision, reason, status).await {
            return Outcome::Failed(fault);
        }
        Outcome::Waiting(Box::new(Waiting { ticket, ended }))
    }
}
