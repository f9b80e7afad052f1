//! The audit stage: every audit record the gateway writes is built and written here.
//!
//! A request gets one `decided` record — for an allowed one, durable before anything
//! reaches the upstream ([`Pipeline::admit`]: if it cannot be written, the request is
//! refused) — and, once it ran, one `completed` record (queued, not awaited: the decided
//! record already is durable). A denial is its one decided record. Tickets' events
//! (opened, decided, expired, run), refused approver decisions, refused admin calls and
//! reads of recordings are records of their own. Every record goes through the store's
//! writer, which chains and signs them.

use querygate_core::{AuditRecord, Denial, Fault, Identity, Phase, Ticket, TicketState};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use querygate_store::{Alongside, JobRow, Store};

use crate::source::Summary;

use crate::{Context, Outcome, Pipeline, audit_time};

/// What a completed record says beyond the request's context.
#[derive(Debug, Default)]
pub(crate) struct Completion {
    pub decision: &'static str,
    pub reason: Option<String>,
    pub status: u16,
    pub rows: Option<u64>,
    pub bytes_processed: Option<u64>,
    pub bytes_billed: Option<u64>,
    pub masked: Option<u64>,
    pub error: Option<String>,
    pub sqlstate: Option<String>,
    pub job_id: Option<String>,
    /// The approved ticket the request ran under.
    pub ticket: Option<(String, Option<String>)>,
}

impl Pipeline {
    /// Records a denial (one record) and returns it.
    pub(crate) async fn refuse<R>(&self, ctx: &Context<'_>, denial: Denial) -> Outcome<R> {
        let mut record = self.record(ctx, Phase::Decided, "deny", Some(denial.message.clone()));
        record.status = Some(ctx.request.codes.denied(denial.kind));
        tracing::info!(
            request_id = %ctx.request.id, identity = %record.identity, method = %ctx.request.method,
            reason = %denial.message, "request denied"
        );
        let traced = self.decision_of(ctx, &record);
        if let Err(e) = self.store.append(record).await {
            tracing::error!(request_id = %ctx.request.id, error = %e, "cannot write the denial record");
        }
        self.trace_decision(ctx, traced);
        Outcome::Denied(denial)
    }

    /// Records a fault (as the completed record of an allowed request) and returns it.
    pub(crate) async fn fail<R>(&self, ctx: &Context<'_>, fault: Fault) -> Outcome<R> {
        let mut record = self.record(ctx, Phase::Completed, "allow", None);
        record.error = Some(fault.message.clone());
        record.status = Some(ctx.request.codes.failed(&fault));
        tracing::warn!(
            request_id = %ctx.request.id, method = %ctx.request.method, cause = ?fault.cause,
            error = %fault.message, "request failed"
        );
        if let Err(e) = self.store.append(record).await {
            tracing::error!(request_id = %ctx.request.id, error = %e, "cannot write the failure record");
        }
        Outcome::Failed(fault)
    }

    pub(crate) fn record(
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
            job_id: r.job().map(str::to_string),
            status: None,
            error: None,
            rows: None,
            bytes_processed: None,
            bytes_billed: None,
            duration_ms: (phase == Phase::Completed || decision == "deny")
                .then(|| ctx.started.elapsed().as_secs_f64() * 1000.0),
            user_agent: r.client.user_agent.clone(),
            peer: r.client.peer.clone(),
            statement_kinds: ctx.explained.kinds.clone(),
            tables: ctx.explained.tables.clone(),
            rule: ctx.explained.rule.clone(),
            rules: ctx.explained.rules.clone(),
            policy_version: ctx.explained.policy_version.clone(),
            bytes_estimate: ctx.explained.bytes_estimate,
            rewritten: ctx.explained.rewritten.clone(),
            acting_for: ctx
                .identity
                .and_then(|i| i.acting_for.as_ref())
                .map(|p| p.subject.clone()),
            acting_for_groups: ctx
                .identity
                .and_then(|i| i.acting_for.as_ref())
                .map(|p| p.groups.clone())
                .unwrap_or_default(),
            auth: ctx.identity.and_then(|i| i.auth.clone()),
            ticket: None,
            approver: None,
            checkpoint: None,
            masked: None,
            session: ctx.tag.get().map(|t| t.session.clone()),
            sqlstate: None,
        }
    }

    /// The decided record of an allowed request, durable before anything reaches the
    /// upstream: `Err` (and nothing runs) when it cannot be written. `grant` is the
    /// approved ticket it runs under, `reason` why it may.
    pub(crate) async fn admit(
        &self,
        ctx: &Context<'_>,
        grant: Option<&Ticket>,
        reason: Option<String>,
    ) -> Result<(), Fault> {
        let mut decided = self.record(ctx, Phase::Decided, "allow", reason);
        if let Some(t) = grant {
            decided.ticket = Some(t.id.clone());
            decided.approver = t.decided_by.clone();
        }
        let traced = self.decision_of(ctx, &decided);
        if let Err(e) = self.store.append_with(decided, Alongside::default()).await {
            tracing::error!(request_id = %ctx.request.id, error = %e, "cannot write the decided record; refusing");
            return Err(Fault::gateway(
                "querygate could not write its audit record, so the request was not run; \
                 contact the gateway's operator",
            ));
        }
        self.trace_decision(ctx, traced);
        Ok(())
    }

    /// The completed record of a request that ran, with the job it claims for the caller
    /// and the bytes it charges (in the same commit, so the next request sees them).
    pub(crate) fn complete(&self, ctx: &Context<'_>, c: Completion, alongside: Alongside) {
        let completed = self.completed(ctx, c);
        // Queued, not awaited: the completion need not be durable before the client hears
        // it (the decided record already is), and the claim is visible to lookups at once.
        if let Err(e) = self.store.enqueue(completed, alongside) {
            // The upstream already answered; withholding the answer would not undo it.
            tracing::error!(request_id = %ctx.request.id, error = %e, "cannot write the completed record");
        }
    }

    /// The completion of a reply that is still streaming (see [`Ending`]): the completed
    /// record as [`Pipeline::complete`] would write it now, finished by the reply.
    pub(crate) fn ending(
        &self,
        ctx: &Context<'_>,
        c: Completion,
        alongside: Alongside,
        scrubber: Option<querygate_mask::Scrubber>,
        withhold: Option<String>,
    ) -> Ending {
        let masked = c.masked.unwrap_or(0);
        Ending {
            store: Arc::clone(&self.store),
            record: Some(self.completed(ctx, c)),
            alongside,
            started: ctx.started,
            scrubber,
            withhold,
            masked,
        }
    }

    /// A completed record saying what `c` says.
    fn completed(&self, ctx: &Context<'_>, c: Completion) -> AuditRecord {
        let mut completed = self.record(ctx, Phase::Completed, c.decision, c.reason);
        completed.status = Some(c.status);
        completed.rows = c.rows;
        completed.bytes_processed = c.bytes_processed;
        completed.bytes_billed = c.bytes_billed;
        completed.masked = c.masked;
        completed.error = c.error;
        completed.sqlstate = c.sqlstate;
        completed.job_id = c.job_id.or(completed.job_id);
        if let Some((ticket, approver)) = c.ticket {
            completed.ticket = Some(ticket);
            completed.approver = approver;
        }
        completed
    }

    /// The decided record of a request an approve rule caught and that now waits in
    /// `ticket` (durable, with the held job claimed for the requester).
    pub(crate) async fn ticket_opened(
        &self,
        ctx: &Context<'_>,
        ticket: &Ticket,
        reason: String,
        status: u16,
        claim: JobRow,
    ) -> Result<(), Fault> {
        let mut record = self.record(ctx, Phase::Decided, "approve", Some(reason));
        record.ticket = Some(ticket.id.clone());
        record.job_id = Some(ticket.job_id.clone());
        record.status = Some(status);
        let alongside = Alongside {
            claim: Some(claim),
            usage: None,
        };
        let traced = self.decision_of(ctx, &record);
        self.store
            .append_with(record, alongside)
            .await
            .map_err(|e| Fault::gateway(e.to_string()))?;
        self.trace_decision(ctx, traced);
        Ok(())
    }

    /// The record of a poll of a held job, answered from its ticket.
    pub(crate) async fn held_poll(
        &self,
        ctx: &Context<'_>,
        ticket: &Ticket,
        decision: &str,
        reason: String,
        status: u16,
    ) -> Result<(), Fault> {
        let mut record = self.record(ctx, Phase::Decided, decision, Some(reason));
        record.ticket = Some(ticket.id.clone());
        record.approver = ticket.decided_by.clone();
        record.status = Some(status);
        let traced = self.decision_of(ctx, &record);
        if let Err(e) = self.store.append(record).await {
            tracing::error!(error = %e, "cannot write the audit record of a held job");
            return Err(Fault::gateway(
                "querygate could not write its audit record; contact the gateway's operator",
            ));
        }
        self.trace_decision(ctx, traced);
        Ok(())
    }

    /// Audits a refused admin API call (no credential, a malformed or invalid one), as the
    /// data path audits refused credentials: `identity` is `anonymous` or `unauthenticated`,
    /// `status` what the admin front answers.
    pub async fn audit_admin_refusal(
        &self,
        method: &str,
        peer: Option<String>,
        presented: bool,
        reason: &str,
        status: u16,
    ) {
        let identity = if presented {
            "unauthenticated"
        } else {
            "anonymous"
        };
        let mut record = AuditRecord::default_for(method, identity);
        record.time = audit_time(time::OffsetDateTime::now_utc());
        record.decision = "deny".into();
        record.reason = Some(reason.to_string());
        record.status = Some(status);
        record.peer = peer;
        if let Err(e) = self.store.append(record).await {
            tracing::error!(error = %e, "cannot write the audit record of a refused admin call");
        }
    }
}

pub(crate) fn job_row(
    source: &str,
    job_id: &str,
    identity: &Identity,
    destination: Option<String>,
    schema: Option<String>,
    row_limit: Option<u64>,
) -> JobRow {
    JobRow {
        source: source.to_string(),
        job_id: job_id.to_string(),
        identity: identity.owner(),
        destination,
        schema,
        row_limit,
        sensitive: false,
    }
}

/// One audit record for a ticket event (decided, expired, …), by `by` or the gateway.
pub(crate) async fn ticket_event(store: &Store, t: &Ticket, method: &str, by: Option<&Identity>) {
    let identity = by.map_or("querygate", |i| i.subject.as_str());
    let mut record = AuditRecord::default_for(method, identity);
    record.time = audit_time(time::OffsetDateTime::now_utc());
    record.request_id = format!("{}-{}", t.id, t.state.as_str());
    record.groups = by.map(|i| i.groups.clone()).unwrap_or_default();
    record.kind = by.is_none().then(|| "gateway".to_string());
    record.source = t.source.clone();
    record.statement = Some(t.statement.clone());
    record.decision = match t.state {
        TicketState::Approved | TicketState::Running => "allow",
        TicketState::Pending => "approve",
        _ => "deny",
    }
    .to_string();
    record.reason = t.decision_reason.clone();
    record.job_id = Some(t.job_id.clone());
    record.statement_kinds = t.kinds.clone();
    record.tables = t.tables.clone();
    record.rule = Some(t.rule.clone());
    record.policy_version = Some(t.policy_version.clone());
    record.bytes_estimate = t.bytes_estimate;
    record.acting_for = t.acting_for.clone();
    record.auth = by.and_then(|i| i.auth.clone());
    record.ticket = Some(t.id.clone());
    record.approver = t.decided_by.clone();
    if let Err(e) = store.append(record).await {
        tracing::error!(error = %e, ticket = %t.id, "cannot write a ticket's audit record");
    }
}

/// The record of an approver's decision the gateway refused.
pub(crate) async fn refused_decision(
    store: &Store,
    approver: &Identity,
    method: &str,
    ticket: &str,
    denial: &Denial,
) {
    let mut record = AuditRecord::default_for(method, &approver.subject);
    record.groups = approver.groups.clone();
    record.decision = "deny".into();
    record.reason = Some(denial.message.clone());
    record.ticket = Some(ticket.to_string());
    record.time = audit_time(time::OffsetDateTime::now_utc());
    if let Err(e) = store.append(record).await {
        tracing::error!(error = %e, "cannot write the audit record of a refused decision");
    }
}

/// One audit record for a read of recordings through the admin API.
pub(crate) async fn recordings_read(
    store: &Store,
    identity: &Identity,
    method: &str,
    session: Option<&str>,
    result: &Result<(), &Denial>,
) {
    let mut record = AuditRecord::default_for(method, &identity.subject);
    record.time = audit_time(time::OffsetDateTime::now_utc());
    record.groups = identity.groups.clone();
    record.auth = identity.auth.clone();
    record.session = session.map(str::to_string);
    match result {
        Ok(()) => record.decision = "allow".into(),
        Err(denial) => {
            record.decision = "deny".into();
            record.reason = Some(denial.message.clone());
        }
    }
    if let Err(e) = store.append(record).await {
        tracing::error!(error = %e, "cannot write the audit record of a read of recordings");
    }
}

/// The rest of a request whose reply streams: a result larger than the source holds at
/// once goes to the client as the client reads it, and the request completes when the
/// last of it has been read. The reply that streams owns this: it scrubs each value the
/// rest of the result carries with [`Ending::scrub`], withholds its errors' text when
/// [`Ending::withholds`] says so, and ends with [`Ending::finish`]. Dropped unfinished (the
/// client went away, the upstream failed), it completes the request with that error.
#[derive(Debug)]
pub struct Ending {
    store: Arc<Store>,
    /// The completed record, as far as it is known before the rest is read.
    record: Option<AuditRecord>,
    alongside: Alongside,
    started: Instant,
    scrubber: Option<querygate_mask::Scrubber>,
    withhold: Option<String>,
    masked: u64,
}

impl Ending {
    /// `text` with what the source's value detectors find in it masked (counted for the
    /// completed record).
    pub fn scrub<'a>(&mut self, text: &'a str) -> Cow<'a, str> {
        let Some(scrubber) = &self.scrubber else {
            return Cow::Borrowed(text);
        };
        let out = scrubber.scrub(text);
        if matches!(out, Cow::Owned(_)) {
            self.masked += 1;
        }
        out
    }

    /// Whether values are scrubbed (else [`Ending::scrub`] returns its input).
    pub fn scrubs(&self) -> bool {
        self.scrubber.is_some()
    }

    /// Why the text of an error in the rest must be withheld (it could echo masked
    /// values), when it must.
    pub fn withholds(&self) -> Option<&str> {
        self.withhold.as_deref()
    }

    /// Completes the request with what the whole reply said.
    pub fn finish(mut self, summary: Summary) {
        self.write(summary);
    }

    fn write(&mut self, summary: Summary) {
        let Some(mut completed) = self.record.take() else {
            return;
        };
        completed.status = Some(summary.status);
        completed.rows = summary.rows;
        // The rows it charges are those it read out, now known.
        if let Some(usage) = &mut self.alongside.usage {
            usage.rows = summary.rows.unwrap_or(0);
        }
        completed.error = summary.error;
        completed.sqlstate = summary.sqlstate;
        completed.masked = Some(self.masked).filter(|n| *n > 0);
        completed.duration_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
        let request_id = completed.request_id.clone();
        if let Err(e) = self
            .store
            .enqueue(completed, std::mem::take(&mut self.alongside))
        {
            tracing::error!(request_id = %request_id, error = %e, "cannot write the completed record");
        }
    }
}

impl Drop for Ending {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.write(Summary {
                status: 0,
                error: Some(
                    "the result was not read to its end: the client went away or the upstream \
                     failed while it streamed"
                        .into(),
                ),
                ..Summary::default()
            });
        }
    }
}
