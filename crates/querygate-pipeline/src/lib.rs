//! The enforcement pipeline: the only place the stages are put in order, and the
//! only code that can hand a request to an upstream.
//!
//! ```text
//! authenticate → analyze → decide → approve → (audit decided) → execute → restrict → (audit completed)
//!        (record: request ─────── decision ───────────── upstream ──────────── response)
//! ```
//!
//! Fronts decode their wire traffic into a [`Request`] plus a source-specific call,
//! call [`Pipeline::handle`], and render the [`Outcome`]. A [`Source`] executes only an
//! [`Admitted`] call, and only this crate can construct one, so no front can run an
//! unchecked request. This crate holds no wire knowledge.

mod analyses;
mod approve;
mod decide;
pub mod masking;
mod policies;
pub mod reach;
mod recording;
mod sessions;
mod source;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use querygate_core::{Action, AuditRecord, Denial, DenialKind, Fault, Identity, Phase, Request};
use querygate_policy::{
    Input, Outcome as PolicyOutcome, StatementKind, TableUse, Verdict, format_bytes,
};
use querygate_sql::{Facts, SqlDialect};
use querygate_store::{Alongside, JobRow, Store};
pub use querygate_store::{SessionFilter, SessionSummary, audit_time, point_in_time};

pub use approve::{ApprovalSettings, TicketDecision, Waiting, describe};
pub use decide::{Gate, Ownership, gate};
pub use policies::PolicySet;
pub use querygate_identity::{ApiKey, Authenticator, parse_duration};
pub use querygate_policy::Partitioning;
pub use querygate_store::TicketFilter;
pub use recording::RecordingSettings;
pub use sessions::IDLE_GAP;
pub use source::{
    Admitted, Column, ColumnMask, Held, Refusal, Reply, Scope, Source, Summary, View,
};

/// What a front renders.
#[derive(Debug)]
pub enum Outcome<R> {
    /// The upstream answered (possibly with its own error, which the reply carries).
    Done(R),
    /// The gateway refused the request.
    Denied(Denial),
    /// The request was allowed but could not be completed.
    Failed(Fault),
    /// The request waits for an approval decision (or was ended by one).
    Waiting(Box<Waiting>),
}

/// The parts of the configuration a reload may replace.
#[derive(Debug)]
struct Settings {
    authenticator: Authenticator,
    policies: PolicySet,
}

/// The pipeline shared by every front.
#[derive(Debug)]
pub struct Pipeline {
    settings: RwLock<Arc<Settings>>,
    store: Arc<Store>,
    approvals: ApprovalSettings,
    tickets_opened: tokio::sync::Notify,
    /// Woken when a ticket is decided or ends, for polls held waiting for it.
    tickets_changed: tokio::sync::Notify,
    /// Which session each client is in.
    sessions: sessions::Sessions,
    /// Where sessions are recorded, when they are.
    recording: Option<recording::Recording>,
    /// Facts of recently analyzed statements.
    analyses: analyses::Analyses,
}

/// One request's context, recorded in its audit records.
struct Context<'a> {
    request: &'a Request,
    identity: Option<&'a Identity>,
    source: &'a str,
    started: Instant,
    /// When the request arrived (audit time format), for its recording.
    received: String,
    /// The session the request was put in (set once it is authenticated, or refused).
    tag: &'a OnceLock<recording::Tag>,
    /// What analysis and policy said, for the records.
    explained: Explained,
}

#[derive(Default, Clone)]
struct Explained {
    kinds: Vec<String>,
    tables: Vec<String>,
    rule: Option<String>,
    rules: Vec<String>,
    policy_version: Option<String>,
    bytes_estimate: Option<u64>,
    /// The statement as the masking rewrite sent it upstream.
    rewritten: Option<String>,
}

/// Limits the decision puts on the execution.
#[derive(Default)]
struct Limits {
    /// An approve rule caught the request.
    approval: Option<approve::Needed>,
    max_bytes_billed: Option<u64>,
    row_limit: Option<querygate_policy::RowLimit>,
    /// Bytes to charge to the identity's daily usage once the query completes.
    billable: bool,
    /// The query reaches columns masked for the identity: its error messages are
    /// withheld, as they could echo values. Says why.
    sensitive: Option<String>,
    /// A direct read of a table with masked columns: how to mask its rows.
    row_masks: Option<Vec<ColumnMask>>,
}

impl Pipeline {
    pub fn new(authenticator: Authenticator, policies: PolicySet, store: Arc<Store>) -> Pipeline {
        Pipeline {
            settings: RwLock::new(Arc::new(Settings {
                authenticator,
                policies,
            })),
            store,
            approvals: ApprovalSettings::default(),
            tickets_opened: tokio::sync::Notify::new(),
            tickets_changed: tokio::sync::Notify::new(),
            sessions: sessions::Sessions::new(sessions::IDLE_GAP),
            recording: None,
            analyses: analyses::Analyses::default(),
        }
    }

    /// Sets how long tickets wait and how long a window grant may last (not reloadable).
    pub fn with_approvals(mut self, approvals: ApprovalSettings) -> Pipeline {
        self.approvals = approvals;
        self
    }

    pub(crate) fn approvals(&self) -> ApprovalSettings {
        self.approvals
    }

    /// The version of the policy a source is decided by now.
    pub(crate) fn policy_version(&self, source: &str) -> Option<String> {
        self.settings()
            .policies
            .policy(source)
            .map(|p| p.version.clone())
    }

    /// Who presents `credential` (for the admin API), as the data path would decide it.
    pub async fn authenticate(
        &self,
        credential: Option<&querygate_core::Secret>,
    ) -> Result<Identity, Denial> {
        self.settings()
            .authenticator
            .authenticate(credential, None)
            .await
    }

    /// Replaces keys and policy; requests in flight finish with what they started with.
    pub fn reload(&self, authenticator: Authenticator, policies: PolicySet) {
        let next = Arc::new(Settings {
            authenticator,
            policies,
        });
        *self.settings.write().unwrap_or_else(|e| e.into_inner()) = next;
    }

    fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
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
        let tag = OnceLock::new();
        let outcome = self.run(&request, source, call, &tag).await;
        // record: what the client gets back (the other events are recorded as they happen).
        self.trace_response(&request, &tag, source.map(|s| s.name()), &outcome);
        outcome
    }

    async fn run<S: Source>(
        &self,
        request: &Request,
        source: Option<&S>,
        mut call: S::Call,
        tag: &OnceLock<recording::Tag>,
    ) -> Outcome<S::Reply> {
        let settings = self.settings();
        let source_name = source.map_or(request.target.as_str(), |s| s.name());
        let mut ctx = Context {
            request,
            identity: None,
            source: source_name,
            started: Instant::now(),
            received: audit_time(time::OffsetDateTime::now_utc()),
            tag,
            explained: Explained::default(),
        };

        // authenticate: who is asking. Then record: the request, in its session.
        let identity = match settings
            .authenticator
            .authenticate(request.credential.as_ref(), request.delegation.as_ref())
            .await
        {
            Ok(identity) => identity,
            Err(denial) => {
                self.begin(&ctx, source, &call);
                return self.refuse(&ctx, denial).await;
            }
        };
        ctx.identity = Some(&identity);
        self.begin(&ctx, source, &call);

        // analyze: facts from the SQL text (pure; remembered for statements seen recently).
        let facts = match &request.action {
            Action::Query {
                statement,
                default_dataset,
                ..
            } => {
                let mut facts = self.analyses.bigquery(statement);
                if let Some(ds) = default_dataset {
                    Arc::make_mut(&mut facts).with_default_dataset(ds);
                }
                Some(facts)
            }
            _ => None,
        };

        // decide: the request's shape first (jobs, result tables, methods not served),
        // then the rules for queries and table reads.
        let ownership = match self.ownership(request, &identity, source_name) {
            Ok(o) => o,
            Err(fault) => return self.fail(&ctx, fault).await,
        };
        let mut limits = Limits::default();
        let source = match (
            gate(
                source.is_some(),
                &request.target,
                &request.action,
                &ownership,
            ),
            source,
        ) {
            (Gate::Deny(denial), _) => return self.refuse(&ctx, denial).await,
            (_, None) => {
                let denial = Denial::new(DenialKind::NotFound, "no such source");
                return self.refuse(&ctx, denial).await;
            }
            (Gate::Allow, Some(source)) => source,
            (Gate::Policy, Some(source)) => {
                let decided = self
                    .decide(
                        &settings.policies,
                        &mut ctx,
                        &identity,
                        source,
                        &mut call,
                        facts.as_deref(),
                    )
                    .await;
                // Text the parser rejects that would not run anyway is answered as the syntax
                // error it is (400 invalidQuery, the parser's position), not as a denial, a
                // masking message or a ticket. A rule that allows opaque SQL still lets it
                // through (valid GoogleSQL sqlparser does not read): the upstream judges it.
                let decided = match (decided, syntax_error(facts.as_deref())) {
                    (Ok(l), Some(e)) if l.approval.is_some() => Err(Refusal::Denied(e)),
                    (Err(Refusal::Denied(_)), Some(e)) => Err(Refusal::Denied(e)),
                    (decided, _) => decided,
                };
                match decided {
                    Ok(l) => {
                        limits = l;
                        source
                    }
                    Err(Refusal::Denied(denial)) => return self.refuse(&ctx, denial).await,
                    Err(Refusal::Failed(fault)) => return self.fail(&ctx, fault).await,
                }
            }
        };
        // approve: a request an approve rule caught runs only under a grant; otherwise it
        // waits in a ticket. A poll of a held job answers from its ticket, or runs it once
        // approved.
        let mut grant = None;
        if let Some(needed) = limits.approval.take() {
            match self
                .approve(&mut ctx, &identity, source, &mut call, needed)
                .await
            {
                Ok(ticket) => {
                    if let Some(ceiling) = ticket.max_bytes_billed {
                        limits.max_bytes_billed =
                            Some(limits.max_bytes_billed.map_or(ceiling, |b| b.min(ceiling)));
                    }
                    grant = Some(ticket);
                }
                Err(answer) => return answer,
            }
        }
        if let Action::ReadJob { job_id } | Action::CancelJob { job_id } = &request.action
            && let Some(answer) = self.resume(&mut ctx, &identity, source, job_id).await
        {
            return answer;
        }
        if let Some(bytes) = limits.max_bytes_billed {
            source.limit_bytes(&mut call, bytes);
        }

        // audit decided: durable before anything reaches the upstream (fail closed).
        let mut decided = self.record(&ctx, Phase::Decided, "allow", None);
        if let Some(t) = &grant {
            decided.ticket = Some(t.id.clone());
            decided.approver = t.decided_by.clone();
            decided.reason = Some(match t.grant_until {
                Some(_) => format!(
                    "within the window {} granted (ticket {})",
                    t.decided_by.as_deref().unwrap_or("an approver"),
                    t.id
                ),
                None => format!(
                    "approved by {} (ticket {}), run once by running the statement again",
                    t.decided_by.as_deref().unwrap_or("an approver"),
                    t.id
                ),
            });
        }
        // A job id is claimed for the caller only once the upstream accepted the job (at
        // completion): an id that names someone else's job, or that the upstream refuses,
        // never becomes the caller's.
        let alongside = Alongside {
            claim: None,
            usage: None,
        };
        let traced = decided.clone();
        if let Err(e) = self.store.append_with(decided, alongside).await {
            tracing::error!(request_id = %request.id, error = %e, "cannot write the decided record; refusing");
            return Outcome::Failed(Fault::gateway(
                "querygate could not write its audit record, so the request was not run; \
                 contact the gateway's operator",
            ));
        }
        self.trace_decision(&ctx, &traced);

        // execute: only an Admitted call reaches the source.
        self.trace_upstream(&ctx, limits.max_bytes_billed);
        let admitted = Admitted::new(call, identity.clone());
        let mut reply = match source.execute(admitted).await {
            Ok(reply) => reply,
            Err(fault) => return self.fail(&ctx, fault).await,
        };

        // restrict (mask): keep only what this identity may see.
        if matches!(request.action, Action::ListJobs) {
            match self.store.jobs_of(source_name, &identity.owner()) {
                Ok(owned) => reply.restrict(&Scope {
                    owned_jobs: owned.into_iter().collect(),
                }),
                Err(e) => return self.fail(&ctx, Fault::gateway(e.to_string())).await,
            }
        }
        // The second line: value detectors on every value the result returns (before the
        // reply is recorded or rendered, so neither holds what they find).
        let mut masked = source.scrubber().map(|s| reply.scrub(s)).filter(|n| *n > 0);
        if let Some(masks) = &limits.row_masks {
            match source.mask_rows(&mut reply, masks) {
                Ok(n) => masked = Some(masked.unwrap_or(0) + n).filter(|n| *n > 0),
                Err(fault) => return self.fail(&ctx, fault).await,
            }
        }
        // Errors of a query that reads masked values (and of its job's later pages) could
        // echo them (`ERROR(email)`, a failed cast): they keep their kind, not their text.
        let sensitive = limits.sensitive.clone().or_else(|| {
            ownership
                .job_sensitive
                .then(|| "the job's query reads columns masked for you".to_string())
        });
        if let Some(why) = &sensitive {
            reply.withhold_errors(why);
        }
        let summary = reply.summary();
        let row_limit = limits
            .row_limit
            .as_ref()
            .map(|l| (l.rows, l.message.clone()))
            .or_else(|| {
                // Pages of a job carry the limit its query was decided with (read once, when
                // ownership was checked).
                match (&request.action, ownership.job_row_limit) {
                    (Action::ReadJob { job_id }, Some(rows)) => Some((
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
        let accepted = (200..300).contains(&summary.status);
        let claim = summary
            .job_id
            .as_deref()
            .filter(|_| {
                accepted
                    && matches!(
                        request.action,
                        Action::Query { dry_run: false, .. } | Action::ReadJob { .. }
                    )
            })
            // A jobs.insert's job is the id it asked for; a reply naming another is not
            // claimed under the asked id.
            .filter(|id| request.job_id.as_deref().is_none_or(|asked| asked == *id))
            .map(|job_id| JobRow {
                sensitive: limits.sensitive.is_some(),
                ..job_row(
                    source_name,
                    job_id,
                    &identity,
                    summary.destination.clone(),
                    summary.schema.clone(),
                    limits.row_limit.as_ref().map(|l| l.rows),
                )
            });
        let usage = if limits.billable {
            summary.bytes_billed.or(summary.bytes_processed)
        } else {
            None
        };
        let (decision, status) = match &withheld {
            Some(_) => ("deny", 403),
            None => ("allow", summary.status),
        };
        let mut completed = self.record(&ctx, Phase::Completed, decision, withheld.clone());
        completed.status = Some(status);
        completed.rows = if withheld.is_some() {
            Some(0)
        } else {
            summary.rows
        };
        completed.bytes_processed = summary.bytes_processed;
        completed.bytes_billed = summary.bytes_billed;
        completed.masked = masked;
        completed.error = summary.error;
        completed.job_id = summary.job_id.or(completed.job_id);
        // Queued, not awaited: the completion need not be durable before the client hears
        // it (the decided record already is), and the claim is visible to lookups at once.
        if let Err(e) = self.store.enqueue(completed, Alongside { claim, usage }) {
            // The upstream already answered; withholding the answer would not undo it.
            tracing::error!(request_id = %request.id, error = %e, "cannot write the completed record");
        }
        if let Some(message) = withheld {
            tracing::info!(request_id = %request.id, identity = %identity.subject, "result withheld: {message}");
            return Outcome::Denied(Denial::new(DenialKind::Forbidden, message));
        }
        tracing::info!(
            request_id = %request.id, identity = %identity.subject, method = %request.method,
            status = summary.status, "request completed"
        );
        Outcome::Done(reply)
    }

    /// The policy half of decide: rules over the facts, with a dry-run estimate and
    /// partitioning looked up only when a rule or a budget needs them.
    async fn decide<S: Source>(
        &self,
        policies: &PolicySet,
        ctx: &mut Context<'_>,
        identity: &Identity,
        source: &S,
        call: &mut S::Call,
        facts: Option<&Facts>,
    ) -> Result<Limits, Refusal> {
        let Some(policy) = policies.policy(source.name()) else {
            return Err(Refusal::Denied(Denial::new(
                DenialKind::Forbidden,
                format!("Access Denied: source {} has no policy", source.name()),
            )));
        };
        let project = source.default_project();
        let Subject {
            kinds,
            mut tables,
            mut opaque,
        } = match (facts, &ctx.request.action) {
            (Some(f), _) => Subject::of(f, project),
            (None, Action::ReadRows { table, .. }) => Subject::table_read(table),
            _ => Subject::default(),
        };
        // Rules that name tables hold for the tables a view reads too (a rule on
        // `*.finance.*` is not skipped by a view over a finance table): views are followed
        // when such a rule exists, and a view that cannot be followed makes the statement
        // opaque.
        let table_rules = policy
            .rules
            .iter()
            .any(|r| !r.tables.is_empty() || r.when.full_scan.is_some());
        if let (true, Some(f)) = (table_rules, facts) {
            match views_read(source, f).await.map_err(Refusal::Failed)? {
                Ok(views) => {
                    for v in &views {
                        for t in v.facts.reads() {
                            let name = t.qualified(&v.project);
                            if !tables
                                .iter()
                                .any(|u| !u.write && querygate_sql::same_name(&u.name, &name))
                            {
                                tables.push(TableUse {
                                    filtered: v.facts.filtered(&name, &v.project),
                                    name,
                                    write: false,
                                });
                            }
                        }
                    }
                }
                Err(why) => {
                    opaque.get_or_insert(why);
                }
            }
        }
        ctx.explained.kinds = kinds.iter().map(|k| k.name().to_string()).collect();
        ctx.explained.tables = tables.iter().map(|t| t.name.clone()).collect();
        ctx.explained.policy_version = Some(policy.version.clone());
        // Classified columns the request reaches: the policy's `touches`, the reads to
        // mask, and what masking cannot make safe.
        let reach = match (facts, &ctx.request.action) {
            (Some(f), _) => reach::of_facts(&policies.classifier, f, project, identity),
            (
                None,
                Action::ReadRows {
                    table,
                    result_table: false,
                },
            ) => reach::of_table(&policies.classifier, &strip_decorator(table), identity),
            _ => reach::Reach::default(),
        };
        let dry_run = matches!(ctx.request.action, Action::Query { dry_run: true, .. });
        let is_query = matches!(ctx.request.action, Action::Query { .. });
        // mask: before the estimate (the dry run runs what will run, and can fail with an
        // error that echoes values), so the statement as written never goes upstream.
        if let Some(f) = facts {
            self.views(&policies.classifier, ctx, identity, source, f)
                .await?;
        }
        let row_masks = self
            .mask(policies, ctx, identity, source, call, &reach)
            .await?;

        let mut partitions = HashMap::new();
        if policy.rules.iter().any(|r| r.when.full_scan.is_some()) {
            for t in tables.iter().filter(|t| !t.write) {
                if partitions.contains_key(&t.name) {
                    continue;
                }
                if let Ok(p) = source.partitioning(&t.name).await {
                    partitions.insert(t.name.clone(), p);
                }
            }
        }
        let budget = policies.budget(identity).filter(|_| is_query && !dry_run);
        // Reading a table's rows directly (tabledata.list) processes and bills nothing.
        let mut bytes = (!is_query).then_some(0);
        let mut input = Input {
            identity,
            source: source.name(),
            statements: &kinds,
            tables: &tables,
            opaque: opaque.as_deref(),
            bytes,
            partitions: &partitions,
            tags: &reach.tags,
            now: jiff::Timestamp::now(),
        };
        let mut verdict: Verdict = policy.evaluate(&input);
        let needs_bytes = verdict.needs_estimate.is_some()
            || (budget.is_some() && matches!(verdict.outcome, PolicyOutcome::Allow));
        if needs_bytes && is_query && opaque.is_none() {
            let estimate = source.estimate(call).await.map_err(|refusal| match refusal {
                // The dry run's error could echo values the query reads.
                Refusal::Denied(d) if reach.sensitive.is_some() => Refusal::Denied(Denial::new(
                    d.kind,
                    format!(
                        "Invalid query: the query failed its dry run; the error is withheld \
                         because {}",
                        reach.sensitive.as_deref().unwrap_or("it reads masked columns")
                    ),
                )),
                other => other,
            })?;
            bytes = Some(estimate);
            ctx.explained.bytes_estimate = bytes;
            input.bytes = bytes;
            verdict = policy.evaluate(&input);
        }
        ctx.explained.rule = verdict.rule.clone();
        ctx.explained.rules = verdict.matched.clone();
        if let Some(rule) = &verdict.needs_estimate {
            // Only reachable for requests that cannot be estimated (opaque SQL, table reads).
            return Err(Refusal::Denied(Denial::new(
                DenialKind::Forbidden,
                format!(
                    "Access Denied: rule {rule:?} needs the bytes this request would process, and querygate cannot estimate them for it"
                ),
            )));
        }
        let sensitive = reach.sensitive.clone();
        let mut approval = None;
        match verdict.outcome {
            PolicyOutcome::Allow => {}
            // A dry run runs nothing: it answers without waiting (the real run will).
            PolicyOutcome::Approve { .. } if dry_run => {}
            PolicyOutcome::Approve {
                message,
                approvers,
                on_approval,
            } => {
                approval = Some(approve::Needed {
                    rule: verdict.rule.clone().unwrap_or_default(),
                    approvers,
                    message,
                    on_approval,
                });
            }
            PolicyOutcome::Deny { message } => {
                return Err(Refusal::Denied(Denial::new(DenialKind::Forbidden, message)));
            }
        }
        if let (Some((limit, whose)), Some(bytes)) = (&budget, bytes) {
            let day = audit_time(time::OffsetDateTime::now_utc());
            let used = self
                .store
                .usage(&identity.subject, &day[..10])
                .map_err(|e| Refusal::Failed(Fault::gateway(e.to_string())))?;
            if used.saturating_add(bytes) > *limit {
                return Err(Refusal::Denied(Denial::new(
                    DenialKind::Forbidden,
                    format!(
                        "Access Denied: daily budget of {} for {whose} would be exceeded: {} used today, {} remaining, and this query would process {}; try a narrower query or wait until tomorrow (UTC)",
                        format_bytes(*limit),
                        format_bytes(used),
                        format_bytes(limit.saturating_sub(used)),
                        format_bytes(bytes)
                    ),
                )));
            }
        }
        let cap = [
            verdict.max_bytes_billed,
            policies.max_bytes_billed.get(source.name()).copied(),
        ]
        .into_iter()
        .flatten()
        .min();
        Ok(Limits {
            sensitive,
            row_masks,
            approval,
            max_bytes_billed: cap.filter(|_| is_query && !dry_run),
            row_limit: verdict.row_limit,
            billable: is_query && !dry_run,
        })
    }

    /// The mask stage. A statement that names the rewrite's own markers, or that masking
    /// cannot make safe (`reach.refusal`), is refused, dry runs too. A query reading tables
    /// with columns masked for the identity is rewritten (their schemas from the source)
    /// so that every such read returns masked values only. A direct read of a table's rows
    /// runs no SQL: the masks for its cells are returned, to apply as the rows come back.
    async fn mask<S: Source>(
        &self,
        policies: &PolicySet,
        ctx: &mut Context<'_>,
        identity: &Identity,
        source: &S,
        call: &mut S::Call,
        reach: &reach::Reach,
    ) -> Result<Option<Vec<ColumnMask>>, Refusal> {
        let forbidden = |why: String| Refusal::Denied(Denial::new(DenialKind::Forbidden, why));
        if let Some(marker) = ctx
            .request
            .statement()
            .and_then(querygate_sql::reserved_marker)
        {
            return Err(Refusal::Denied(Denial::new(
                DenialKind::Invalid,
                format!(
                    "Invalid query: the statement contains `{marker}`, a name querygate \
                     reserves for masking; rename it"
                ),
            )));
        }
        if let Some(why) = &reach.refusal {
            ctx.explained.rule = Some("masking".into());
            return Err(forbidden(why.clone()));
        }
        let Some(first) = reach.masked_tables.first() else {
            return Ok(None);
        };
        let (sql, dataset) = match &ctx.request.action {
            Action::ReadRows { .. } => {
                let columns = source.columns(first).await.map_err(Refusal::Failed)?;
                let masks = masking::column_masks(&policies.classifier, first, &columns, identity)
                    .map_err(forbidden)?;
                return Ok(Some(masks));
            }
            Action::Query {
                statement,
                default_dataset,
                ..
            } => (statement, default_dataset.as_deref()),
            _ => return Ok(None),
        };
        let mut lists = HashMap::new();
        for table in &reach.masked_tables {
            let columns = source.columns(table).await.map_err(Refusal::Failed)?;
            if columns.is_empty() {
                return Err(forbidden(format!(
                    "Access Denied: {table} has columns masked for {}, and the source shows no \
                     schema for it, so its reads cannot be masked",
                    identity.subject
                )));
            }
            let list = masking::select_list(&policies.classifier, table, &columns, identity)
                .map_err(forbidden)?;
            lists.insert(table.clone(), list);
        }
        let rewritten = querygate_sql::mask_reads(
            sql,
            &querygate_sql::Masking {
                dialect: SqlDialect::BigQuery,
                project: source.default_project(),
                dataset,
                tables: &lists,
            },
        )
        .map_err(|why| forbidden(format!("Access Denied: {why}")))?;
        source.rewrite(call, &rewritten).map_err(Refusal::Denied)?;
        ctx.explained.rewritten = Some(rewritten);
        Ok(None)
    }

    /// Views are not rewritten: a view whose definition reaches a column masked for the
    /// identity (returns it or filters on it, through any depth of views) is refused, so a
    /// view over a classified table never returns its values in clear. Views are looked up
    /// (tables.get, cached by the source) only for identities something is masked for.
    async fn views<S: Source>(
        &self,
        classifier: &querygate_policy::Classifier,
        ctx: &mut Context<'_>,
        identity: &Identity,
        source: &S,
        facts: &Facts,
    ) -> Result<(), Refusal> {
        let masks_apply = classifier
            .classes
            .iter()
            .any(|c| classifier.masked_for(&c.tag, identity).is_some());
        if !masks_apply {
            return Ok(());
        }
        let mut refuse = |why: String| {
            ctx.explained.rule = Some("masking".into());
            Refusal::Denied(Denial::new(DenialKind::Forbidden, why))
        };
        let views = match views_read(source, facts).await.map_err(Refusal::Failed)? {
            Ok(views) => views,
            Err(why) => {
                return Err(refuse(format!(
                    "Access Denied: {why}, and columns are masked for {}; query the tables \
                     directly",
                    identity.subject
                )));
            }
        };
        for v in views {
            let inner_reach = reach::of_facts(classifier, &v.facts, &v.project, identity);
            // What the view returns or filters on of a masked column: its values leave in
            // clear, since the view's definition runs upstream as written.
            if let Some(why) = inner_reach
                .refusal
                .clone()
                .or(inner_reach.sensitive.clone())
            {
                let table = inner_reach
                    .masked_tables
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "the underlying table".to_string());
                return Err(refuse(format!(
                    "Access Denied: the view {} reads {table}, which has columns masked for {} \
                     ({why}); querygate masks reads of tables, not of views, so a view over \
                     masked columns is refused: query {table} directly (its masked columns \
                     come back masked)",
                    v.path, identity.subject
                )));
            }
        }
        Ok(())
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
            Action::Query { .. } if request.job_id.is_some() => {
                let asked = request.job_id.as_deref().unwrap_or_default();
                let job = self.store.job(source, asked).map_err(store_fault)?;
                Ownership {
                    job_id_taken: job.is_some_and(|j| j.identity != identity.owner()),
                    ..Ownership::default()
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

    /// Records a denial (one record) and returns it.
    async fn refuse<R>(&self, ctx: &Context<'_>, denial: Denial) -> Outcome<R> {
        let mut record = self.record(ctx, Phase::Decided, "deny", Some(denial.message.clone()));
        record.status = Some(status_of(denial.kind));
        tracing::info!(
            request_id = %ctx.request.id, identity = %record.identity, method = %ctx.request.method,
            reason = %denial.message, "request denied"
        );
        if let Err(e) = self.store.append(record.clone()).await {
            tracing::error!(request_id = %ctx.request.id, error = %e, "cannot write the denial record");
        }
        self.trace_decision(ctx, &record);
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
        }
    }
}

/// One view a statement reads, directly or through other views.
struct ViewRead {
    /// The views it was reached through and itself, `a → b`.
    path: String,
    /// The project its unqualified names belong to (the view's own).
    project: String,
    /// Its definition's facts.
    facts: Facts,
}

/// Every view `facts` read, following views in views (up to 8 deep, 64 lookups), with the
/// facts of each definition. `Ok(Err(why))` when one cannot be followed: too deep, or a
/// definition the source does not show or querygate cannot analyze.
async fn views_read<S: Source>(
    source: &S,
    facts: &Facts,
) -> Result<Result<Vec<ViewRead>, String>, Fault> {
    const DEPTH: usize = 8;
    const LOOKUPS: usize = 64;
    let project = source.default_project();
    // (table, the views it was reached through)
    let mut queue: Vec<(String, Vec<String>)> = facts
        .reads()
        .into_iter()
        .filter(|t| !t.wildcard && !t.information_schema)
        .map(|t| (t.qualified(project), Vec::new()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    while let Some((table, via)) = queue.pop() {
        if !seen.insert(querygate_sql::name_key(&table)) {
            continue;
        }
        if seen.len() > LOOKUPS || via.len() >= DEPTH {
            return Ok(Err(format!(
                "the query reads views nested too deeply for querygate to follow ({table})"
            )));
        }
        let Some(view) = source.view(&table).await? else {
            continue;
        };
        let mut chain = via;
        chain.push(table.clone());
        let path = chain.join(" → ");
        if view.query.trim().is_empty() {
            return Ok(Err(format!(
                "the query reads the view {path}, whose definition the source does not show, \
                 so querygate cannot tell which tables and columns it reads"
            )));
        }
        let inner = querygate_sql::analyze(&view.query, SqlDialect::BigQuery);
        if let Some(why) = &inner.opaque {
            let legacy = if view.legacy_sql {
                " (a legacy SQL view)"
            } else {
                ""
            };
            return Ok(Err(format!(
                "the query reads the view {path}{legacy}, whose definition querygate cannot \
                 analyze ({why})"
            )));
        }
        let view_project = table.split('.').next().unwrap_or(project).to_string();
        for t in inner.reads() {
            if !t.information_schema && !t.wildcard {
                queue.push((t.qualified(&view_project), chain.clone()));
            }
        }
        out.push(ViewRead {
            path,
            project: view_project,
            facts: inner,
        });
    }
    Ok(Ok(out))
}

fn job_row(
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

/// What policy sees of a request: statement kinds, tables, and whether it was understood.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    pub kinds: Vec<StatementKind>,
    pub tables: Vec<TableUse>,
    pub opaque: Option<String>,
}

impl Subject {
    /// From SQL facts; table names are qualified with the source's project. Each
    /// statement's reads are kept apart, each with the columns that bound *every* read of
    /// the table in that statement (a predicate that bounds one read, or that does not
    /// bound at all, such as `IS NOT NULL`, filters nothing), so a filtered read never
    /// hides an unfiltered one. Names that differ only in case are one table.
    pub fn of(facts: &Facts, project: &str) -> Subject {
        let mut tables: Vec<TableUse> = Vec::new();
        for st in &facts.statements {
            let mut reads: Vec<TableUse> = Vec::new();
            for t in &st.reads {
                let name = t.qualified(project);
                if reads
                    .iter()
                    .any(|r| querygate_sql::same_name(&r.name, &name))
                {
                    continue;
                }
                let filtered = st.filtered(&name, project);
                reads.push(TableUse {
                    name,
                    write: false,
                    filtered,
                });
            }
            tables.extend(reads);
            for t in &st.writes {
                let name = t.qualified(project);
                if !tables
                    .iter()
                    .any(|u| u.write && querygate_sql::same_name(&u.name, &name))
                {
                    tables.push(TableUse {
                        name,
                        write: true,
                        filtered: vec![],
                    });
                }
            }
        }
        // A SELECT that calls a side-effecting function (nextval, pg_terminate_backend, …) or
        // takes row locks is not a read: rules see it as `other`, which no read rule allows.
        let kinds = facts
            .statements
            .iter()
            .map(|st| {
                let read = st.read_only() || st.opaque.is_some();
                if st.kind == StatementKind::Select && !read {
                    StatementKind::Other
                } else {
                    st.kind
                }
            })
            .collect();
        Subject {
            kinds,
            tables,
            opaque: facts.opaque.clone(),
        }
    }

    /// A direct read of a table's rows (BigQuery tabledata.list): a SELECT with no filter.
    pub fn table_read(table: &str) -> Subject {
        Subject {
            kinds: vec![StatementKind::Select],
            tables: vec![TableUse {
                name: strip_decorator(table),
                write: false,
                filtered: vec![],
            }],
            opaque: None,
        }
    }
}

/// The denial for SQL the parser rejected: BigQuery's `Syntax error: … at [line:column]`.
fn syntax_error(facts: Option<&Facts>) -> Option<Denial> {
    let e = facts?.syntax_error.as_ref()?;
    let at = match (e.line, e.column) {
        (Some(l), Some(c)) => format!(" at [{l}:{c}]"),
        (Some(l), None) => format!(" at [{l}]"),
        _ => String::new(),
    };
    Some(Denial::new(
        DenialKind::Invalid,
        format!(
            "Syntax error: {}{at} (querygate's SQL parser rejects the statement; nothing was \
             run)",
            e.message
        ),
    ))
}

/// `p.d.t$20240101` / `p.d.t@1700000000` → `p.d.t`.
fn strip_decorator(table: &str) -> String {
    table.split(['$', '@']).next().unwrap_or(table).to_string()
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
        DenialKind::Conflict => 409,
        DenialKind::Unavailable => 503,
    }
}

#[cfg(test)]
mod tests;
