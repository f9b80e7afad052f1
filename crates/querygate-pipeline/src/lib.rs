//! The enforcement pipeline: the only place the stages are put in order, and the
//! only code that can hand a request to an upstream.
//!
//! ```text
//! authenticate → analyze → gate → decide (mask) → approve → execute → restrict
//!       audit: decided (durable before execute) ─────────────────── completed
//!       record: request ─── decision ───────────────── upstream ─── response
//! ```
//!
//! Fronts decode their wire traffic into a [`Request`] plus a source-specific call,
//! call [`Pipeline::handle`], and render the [`Outcome`]. Each stage is its own file:
//! `analyze`, `gate`, `catalog` (what the rules let a caller see of the catalog), `decide`
//! (a pure [`decide`] over a [`Question`], giving an [`Admission`]), `mask`, `approve`, `execute`, `audit` (every audit record is written
//! there) and `recording`. A [`Source`] executes only an [`Admitted`] call, and only this
//! crate can construct one, so no front can run an unchecked request. This crate holds no
//! wire knowledge: fronts number their answers through [`querygate_core::StatusCodes`].

mod analyze;
mod approvals;
mod approve;
mod audit;
mod catalog;
mod decide;
mod execute;
mod gate;
mod mask;
pub mod masking;
mod policies;
pub mod reach;
mod recording;
mod sessions;
mod source;
mod values;

use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Instant;

use querygate_core::{Action, Denial, DenialKind, Fault, Identity, JobOp, Query, Request};
use querygate_sql::Facts;
use querygate_store::Store;
pub use querygate_store::{SessionFilter, SessionSummary, audit_time, point_in_time};

pub use analyze::Subject;
use analyze::syntax_error;
pub use approvals::{ApprovalSettings, Approvals, TicketDecision, describe, ended_message};
pub use approve::Waiting;
pub use decide::{Admission, Decided, Needed, Plan, Question, decide};
pub use gate::{Gate, Ownership, gate};
pub use policies::PolicySet;
pub use querygate_identity::{ApiKey, Authenticator, parse_duration};
pub use querygate_policy::Partitioning;
pub use querygate_sql::SqlDialect;
pub use querygate_store::TicketFilter;
pub use recording::{RecordingSettings, Recordings};
pub use sessions::IDLE_GAP;
pub use source::{
    Admitted, Answer, Column, ColumnMask, Ending, Held, JobInfo, Paging, Refusal, Reply, ResultSet,
    Resumed, SchemaInfo, Scope, Source, Sources, Summary, TableInfo, View,
};
pub use values::{Rows, mask_rows, scrub_rows};

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
    /// The approvals service: tickets this data path opens and runs once granted.
    approvals: Arc<Approvals>,
    /// Which session each client is in.
    sessions: sessions::Sessions,
    /// The recordings service: where sessions are recorded, when they are.
    recordings: Arc<Recordings>,
    /// Facts of recently analyzed statements.
    analyses: analyze::Analyses,
}

/// One request's context, recorded in its audit records. Stages read it; only
/// [`Pipeline::handle`] changes it, with what a stage returned.
#[derive(Clone)]
struct Context<'a> {
    request: &'a Request,
    identity: Option<&'a Identity>,
    source: &'a str,
    started: Instant,
    /// When the request arrived (audit time format), for its recording.
    received: String,
    /// The session the request was put in (set once it is authenticated, or refused).
    tag: &'a OnceLock<recording::Tag>,
    /// What analysis and policy said, for the records (the decide stage's findings).
    explained: Explained,
    /// What the front is told of the decision (set by the decide and execute stages).
    noted: &'a Mutex<Explanation>,
}

/// What the pipeline decided about a request, for fronts that show it (the MCP front's
/// dry runs and table descriptions).
#[derive(Debug, Clone, Default)]
pub struct Explanation {
    /// What the rules said: `allow`, `deny` or `approve`. A dry run an approve rule catches
    /// runs without waiting, and says `approve`: the real run would wait.
    pub verdict: Option<&'static str>,
    /// The rule that decided (`masking` when masking refused it).
    pub rule: Option<String>,
    /// Who may approve, when an approve rule decided.
    pub approvers: Vec<String>,
    /// For a table's description: how each of its columns is masked for the caller.
    pub masks: Vec<ColumnMask>,
}

impl Context<'_> {
    /// Tells the front what was decided.
    fn note(&self, admission: &Admission) {
        let mut noted = self.noted.lock().unwrap_or_else(|e| e.into_inner());
        noted.verdict = match admission {
            Admission::Deny(_) => Some("deny"),
            Admission::Approve { .. } => Some("approve"),
            Admission::Run(_) => self.explained.verdict.or(Some("allow")),
        };
        noted.rule = self.explained.rule.clone();
        noted.approvers = self.explained.approvers.clone();
    }
}

/// What the decide stage found, for the audit records: statement kinds and tables, the
/// rules that matched and the one that decided, the policy version, the estimate, and the
/// statement as the masking rewrite left it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Explained {
    kinds: Vec<String>,
    tables: Vec<String>,
    rule: Option<String>,
    rules: Vec<String>,
    policy_version: Option<String>,
    bytes_estimate: Option<u64>,
    /// The statement as the masking rewrite sent it upstream.
    rewritten: Option<String>,
    /// What the rules said (`allow`, `deny`, `approve`) and who may approve.
    verdict: Option<&'static str>,
    approvers: Vec<String>,
}

impl Pipeline {
    pub fn new(authenticator: Authenticator, policies: PolicySet, store: Arc<Store>) -> Pipeline {
        Pipeline {
            settings: RwLock::new(Arc::new(Settings {
                authenticator,
                policies,
            })),
            approvals: Arc::new(Approvals::new(store.clone(), ApprovalSettings::default())),
            recordings: Arc::new(Recordings::off(store.clone())),
            store,
            sessions: sessions::Sessions::new(sessions::IDLE_GAP),
            analyses: analyze::Analyses::default(),
        }
    }

    /// The data path with the approvals and recordings services the binary built (the
    /// defaults: approvals with default settings, no recording).
    pub fn with_services(mut self, approvals: Arc<Approvals>, recordings: Arc<Recordings>) -> Self {
        self.approvals = approvals;
        self.recordings = recordings;
        self
    }

    /// Sets how long tickets wait and how long a window grant may last (not reloadable).
    pub fn with_approvals(mut self, approvals: ApprovalSettings) -> Pipeline {
        self.approvals = Arc::new(Approvals::new(self.store.clone(), approvals));
        self
    }

    /// The approvals service this data path opens tickets in (for the admin front, the
    /// notifier and the sweeper).
    pub fn approvals(&self) -> &Arc<Approvals> {
        &self.approvals
    }

    /// The version of the policy a source is decided by now.
    pub(crate) fn policy_version(&self, source: &str) -> Option<String> {
        self.settings()
            .policies
            .policy(source)
            .map(|p| p.version.clone())
    }

    /// Who presents `credential`, as the data path would decide it (for the admin API, the
    /// token endpoint, and fronts that check a credential before decoding a call).
    pub async fn authenticate(
        &self,
        credential: Option<&querygate_core::Secret>,
        audience: Option<&querygate_core::Audience>,
    ) -> Result<Identity, Denial> {
        self.settings()
            .authenticator
            .authenticate(credential, None, audience)
            .await
    }

    /// Whether the rules of `source` could let `identity` do anything (the MCP front sends
    /// a call that names no project to the first source the caller may use).
    pub fn may_use(&self, identity: &Identity, source: &str) -> bool {
        self.settings()
            .policies
            .policy(source)
            .is_some_and(|p| p.may_use(identity))
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
        self.handle_explained(request, source, call).await.0
    }

    /// [`Pipeline::handle`], with what was decided, for fronts that show it.
    pub async fn handle_explained<S: Source>(
        &self,
        request: Request,
        source: Option<&S>,
        call: S::Call,
    ) -> (Outcome<S::Reply>, Explanation) {
        let tag = OnceLock::new();
        let noted = Mutex::new(Explanation::default());
        let outcome = self
            .run(&request, source, Some(call), &tag, &noted, None)
            .await;
        // record: what the client gets back (the other events are recorded as they happen).
        self.trace_response(&request, &tag, source.map(|s| s.name()), &outcome);
        (
            outcome,
            noted.into_inner().unwrap_or_else(|e| e.into_inner()),
        )
    }

    /// Runs a request that addresses a target no source serves, for fronts that build their
    /// calls through a source and so have none to pass: it is authenticated, refused as not
    /// found and audited like any other.
    pub async fn handle_unrouted<S: Source>(&self, request: Request) -> Outcome<S::Reply> {
        let tag = OnceLock::new();
        let noted = Mutex::new(Explanation::default());
        let outcome = self
            .run::<S>(&request, None, None, &tag, &noted, None)
            .await;
        self.trace_response(&request, &tag, None, &outcome);
        outcome
    }

    /// Decides a statement that is only being prepared (PostgreSQL's Parse), which runs
    /// nothing yet: authenticated, analyzed, decided and masked as a request is, and then
    /// given back as the call masking left it (the text that will run) — unaudited, since
    /// nothing ran; it is decided again, and audited, each time it is executed. A refusal
    /// is audited and returned as the outcome to render. An approve rule's statement is
    /// prepared too: its execution waits for the approval.
    pub async fn prepare<S: Source>(
        &self,
        request: Request,
        source: &S,
        call: S::Call,
    ) -> Result<S::Call, Outcome<S::Reply>> {
        let tag = OnceLock::new();
        let noted = Mutex::new(Explanation::default());
        let mut prepared = None;
        let outcome = self
            .run(
                &request,
                Some(source),
                Some(call),
                &tag,
                &noted,
                Some(&mut prepared),
            )
            .await;
        match prepared {
            Some(call) => {
                self.trace_prepared(&request, &tag);
                Ok(call)
            }
            None => {
                self.trace_response(&request, &tag, Some(source.name()), &outcome);
                Err(outcome)
            }
        }
    }

    async fn run<S: Source>(
        &self,
        request: &Request,
        source: Option<&S>,
        call: Option<S::Call>,
        tag: &OnceLock<recording::Tag>,
        noted: &Mutex<Explanation>,
        prepared: Option<&mut Option<S::Call>>,
    ) -> Outcome<S::Reply> {
        let settings = self.settings();
        let mut ctx = Context {
            request,
            identity: None,
            source: source.map_or(request.target.as_str(), |s| s.name()),
            started: Instant::now(),
            received: audit_time(time::OffsetDateTime::now_utc()),
            tag,
            explained: Explained::default(),
            noted,
        };

        // authenticate: who is asking. Then record: the request, in its session.
        let identity = settings
            .authenticator
            .authenticate(
                request.credential.as_ref(),
                request.delegation.as_ref(),
                request.audience.as_deref(),
            )
            .await;
        let identity = match identity {
            Ok(identity) => identity,
            Err(denial) => {
                self.begin(&ctx, source, call.as_ref());
                return self.refuse(&ctx, denial).await;
            }
        };
        ctx.identity = Some(&identity);
        self.begin(&ctx, source, call.as_ref());

        // analyze: facts from the SQL text, in the source's dialect.
        let facts = source.and_then(|s| self.analyze(request, s));

        // gate: the request's shape (jobs, result tables, methods not served).
        let ownership = match self.ownership(request, &identity, ctx.source) {
            Ok(o) => o,
            Err(fault) => return self.fail(&ctx, fault).await,
        };
        let shape = gate(
            source.is_some(),
            &request.target,
            &request.action,
            &ownership,
        );
        let (shape, source) = match (shape, source) {
            (Gate::Deny(denial), _) => return self.refuse(&ctx, denial).await,
            (_, None) => {
                let denial = Denial::new(DenialKind::NotFound, "no such source");
                return self.refuse(&ctx, denial).await;
            }
            (shape, Some(source)) => (shape, source),
        };
        let Some(mut call) = call else {
            let denial = Denial::new(DenialKind::NotFound, "no such source");
            return self.refuse(&ctx, denial).await;
        };

        // decide (and mask): the rules over the facts, as a value.
        let admission = match shape {
            Gate::Allow => match &request.action {
                // catalog: only what the rules let the identity read is described.
                Action::Catalog {
                    object,
                    hidden: false,
                } => {
                    match catalog::describable(
                        &settings.policies,
                        &identity,
                        source.name(),
                        &catalog::as_described(source, object),
                    ) {
                        Ok(()) => Admission::Run(Plan::default()),
                        Err((denial, rule)) => {
                            ctx.explained.rule = rule;
                            Admission::Deny(denial)
                        }
                    }
                }
                _ => Admission::Run(Plan::default()),
            },
            _ => {
                let (decided, explained) = self
                    .decide(
                        &settings.policies,
                        request,
                        &identity,
                        source,
                        &mut call,
                        facts.as_deref(),
                    )
                    .await;
                ctx.explained = explained;
                match decided {
                    Ok(admission) => admission,
                    Err(Refusal::Denied(denial)) => Admission::Deny(denial),
                    Err(Refusal::Failed(fault)) => return self.fail(&ctx, fault).await,
                }
            }
        };
        // Text the parser rejects that would not run anyway is answered as the syntax error
        // it is (400 invalidQuery, the parser's position), not as a denial, a masking
        // message or a ticket. A rule that allows opaque SQL still lets it through (valid
        // GoogleSQL sqlparser does not read): the upstream judges it.
        let admission = match (admission, syntax_error(facts.as_deref())) {
            (Admission::Deny(_) | Admission::Approve { .. }, Some(e)) => Admission::Deny(e),
            (admission, _) => admission,
        };
        ctx.note(&admission);

        // A statement only being prepared stops here: allowed (or approvable), it goes back
        // as masking left it, and nothing is written; the outcome returned is not used.
        if let Some(slot) = prepared {
            return match admission {
                Admission::Deny(denial) => self.refuse(&ctx, denial).await,
                Admission::Run(_) | Admission::Approve { .. } => {
                    *slot = Some(call);
                    Outcome::Failed(Fault::gateway("prepared; nothing ran"))
                }
            };
        }

        // approve: a request an approve rule caught runs only under a grant; otherwise it
        // waits in a ticket.
        let plan = match admission {
            Admission::Deny(denial) => return self.refuse(&ctx, denial).await,
            Admission::Run(plan) => plan,
            Admission::Approve { needed, plan } => {
                match self
                    .approve(&ctx, &identity, source, &mut call, needed, plan)
                    .await
                {
                    Ok(plan) => plan,
                    Err(answer) => return answer,
                }
            }
        };
        // A poll of a held job answers from its ticket, or submits it once approved.
        if let Action::Job(
            JobOp::Get { job_id } | JobOp::Results { job_id } | JobOp::Cancel { job_id },
        ) = &request.action
            && let Some(answer) = self.resume(&ctx, &identity, source, job_id).await
        {
            return answer;
        }

        // execute: audit decided (durable first), the source, restrict, audit completed.
        self.execute(&ctx, &identity, source, call, plan, &ownership)
            .await
    }

    /// The analyze stage: the facts of a query's statement in the source's dialect, with
    /// the request's default schema applied. `None` for requests that carry no SQL.
    fn analyze<S: Source>(&self, request: &Request, source: &S) -> Option<Arc<Facts>> {
        let Action::Query(Query {
            statement,
            default_schema,
            ..
        }) = &request.action
        else {
            return None;
        };
        let default = default_schema.as_deref().or(source.default_schema());
        Some(self.analyses.of(statement, source.dialect(), default))
    }
}

#[cfg(test)]
mod tests;
