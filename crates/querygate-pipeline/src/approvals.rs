//! Approvals, the service: tickets an `approve` rule opened, decided by people, swept
//! when they expire, and waited for.
//!
//! The data path opens tickets and runs what they grant (`approve.rs`); everything else
//! about a ticket is here, shared by every front: approvers decide through
//! [`Approvals::decide`] — members of the rule's approvers only, never the requester
//! (nor the person an agent acted for), never an agent —; [`Approvals::list`] and
//! [`Approvals::show`] show a ticket to its approvers and its requester; [`Approvals::sweep`]
//! expires pending tickets; [`Approvals::wait`] blocks until a ticket is decided or a
//! time passes, which is how a wire protocol with no job to poll (PostgreSQL) or a poll
//! that may be held (getQueryResults' `timeoutMs`) waits. Every step is audited.

use std::sync::Arc;
use std::time::Duration;

use querygate_core::{Denial, DenialKind, Fault, Identity, Ticket, TicketState};
use querygate_policy::format_bytes;
use querygate_store::{Store, TicketFilter, Undecidable, Verdict};

use crate::approve::now;

/// The approvals service.
#[derive(Debug)]
pub struct Approvals {
    store: Arc<Store>,
    settings: ApprovalSettings,
    /// Woken whenever a ticket is opened (the notifier waits on it).
    opened: tokio::sync::Notify,
    /// Woken when a ticket is decided or ends, for those waiting on it.
    changed: tokio::sync::Notify,
}

impl Approvals {
    pub fn new(store: Arc<Store>, settings: ApprovalSettings) -> Approvals {
        Approvals {
            store,
            settings,
            opened: tokio::sync::Notify::new(),
            changed: tokio::sync::Notify::new(),
        }
    }

    /// How long tickets wait and how long a window grant may last.
    pub fn settings(&self) -> ApprovalSettings {
        self.settings
    }

    /// Wakes the notifier: a ticket was opened.
    pub(crate) fn notify_opened(&self) {
        self.opened.notify_one();
    }

    /// Waits until ticket `id` is no longer pending, or `wait` is over, or it expires,
    /// whichever comes first, and returns it as it is then (`None`: no such ticket).
    /// Another gateway process may decide it: the store is read again every second.
    pub async fn wait(&self, id: &str, wait: Duration) -> Result<Option<Ticket>, Fault> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let ticket = match self.store.ticket(id) {
                Ok(Some(t)) => t,
                Ok(None) => return Ok(None),
                Err(e) => return Err(Fault::gateway(e.to_string())),
            };
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let expires_in = Duration::from_secs((ticket.expires - now()).max(0) as u64);
            if ticket.state != TicketState::Pending || left.is_zero() || expires_in.is_zero() {
                return Ok(Some(ticket));
            }
            let nap = left.min(expires_in).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(nap, changed).await;
        }
    }

    /// Ends a ticket and audits it (an event of the ticket, not of a request).
    pub(crate) async fn end(
        &self,
        ticket: &Ticket,
        state: TicketState,
        why: &str,
        now: i64,
    ) -> Result<Option<Ticket>, Fault> {
        let ended = self
            .store
            .end_ticket(&ticket.id, state, why, now)
            .map_err(|e| Fault::gateway(e.to_string()))?;
        if let Some(t) = &ended {
            self.changed();
            crate::audit::ticket_event(
                &self.store,
                t,
                &format!("approvals.{}", state.as_str()),
                None,
            )
            .await;
        }
        Ok(ended)
    }

    pub(crate) fn reread(&self, ticket: Ticket) -> Ticket {
        self.store
            .ticket(&ticket.id)
            .ok()
            .flatten()
            .unwrap_or(ticket)
    }

    /// An approver's decision, from the admin API. Refusals are values with a message
    /// the approver can act on; every attempt is audited.
    pub async fn decide(
        &self,
        approver: &Identity,
        id: &str,
        decision: TicketDecision,
    ) -> Result<Ticket, Denial> {
        let method = if decision.approve {
            "approvals.approve"
        } else {
            "approvals.deny"
        };
        let refuse = |kind: DenialKind, message: String| Denial::new(kind, message);
        let result = async {
            let ticket = self
                .store
                .ticket(id)
                .map_err(|e| refuse(DenialKind::Unavailable, e.to_string()))?
                .ok_or_else(|| refuse(DenialKind::NotFound, format!("no ticket {id}")))?;
            if !visible(&ticket, approver) {
                // Those who may neither decide nor see it learn nothing of it.
                return Err(refuse(DenialKind::NotFound, format!("no ticket {id}")));
            }
            if ticket.requested_by(&approver.subject) {
                return Err(refuse(
                    DenialKind::Forbidden,
                    format!(
                        "{} asked for ticket {id} and cannot decide it; ask another approver",
                        approver.subject
                    ),
                ));
            }
            if approver.kind == querygate_core::IdentityKind::Agent {
                return Err(refuse(
                    DenialKind::Forbidden,
                    format!(
                        "{} is an agent; approvals must come from a person",
                        approver.subject
                    ),
                ));
            }
            if !ticket.may_approve(&approver.subject, &approver.groups) {
                return Err(refuse(
                    DenialKind::Forbidden,
                    format!(
                        "{} may not decide ticket {id}: its approvers are {}",
                        approver.subject,
                        ticket.approvers.join(", ")
                    ),
                ));
            }
            if !decision.approve
                && decision
                    .reason
                    .as_deref()
                    .is_none_or(|r| r.trim().is_empty())
            {
                return Err(refuse(
                    DenialKind::Invalid,
                    "a denial needs a reason (the requester sees it)".into(),
                ));
            }
            let settings = self.settings;
            if let Some(w) = decision.window
                && w > settings.max_window
            {
                return Err(refuse(
                    DenialKind::Invalid,
                    format!(
                        "a window grant may last at most {}s here (asked for {}s)",
                        settings.max_window.as_secs(),
                        w.as_secs()
                    ),
                ));
            }
            let now = now();
            let verdict = Verdict {
                approve: decision.approve,
                by: approver.subject.clone(),
                reason: decision.reason.clone(),
                grant_until: decision.window.map(|w| now + w.as_secs() as i64),
                run_by: now + settings.ticket_ttl.as_secs() as i64,
            };
            match self
                .store
                .decide_ticket(id, &verdict, now)
                .map_err(|e| refuse(DenialKind::Unavailable, e.to_string()))?
            {
                Ok(t) => Ok(t),
                Err(Undecidable::NotFound) => {
                    Err(refuse(DenialKind::NotFound, format!("no ticket {id}")))
                }
                Err(Undecidable::Final(state)) => Err(refuse(
                    DenialKind::Conflict,
                    format!("ticket {id} is already {state}; nothing was changed"),
                )),
                Err(Undecidable::Expired) => {
                    if let Some(t) = self.store.ticket(id).ok().flatten() {
                        crate::audit::ticket_event(&self.store, &t, "approvals.expired", None)
                            .await;
                    }
                    Err(refuse(
                        DenialKind::Conflict,
                        format!(
                            "ticket {id} expired before this decision; the requester must ask again"
                        ),
                    ))
                }
            }
        }
        .await;
        self.changed();
        match &result {
            Ok(t) => crate::audit::ticket_event(&self.store, t, method, Some(approver)).await,
            Err(denial) => {
                crate::audit::refused_decision(&self.store, approver, method, id, denial).await
            }
        }
        result
    }

    /// Tickets `identity` may see: those it may decide and those it asked for.
    pub fn list(&self, identity: &Identity, filter: &TicketFilter) -> Result<Vec<Ticket>, Fault> {
        // Visibility is decided here, so the limit applies after it, not in the store.
        let unlimited = TicketFilter {
            limit: Some(usize::MAX >> 1),
            ..filter.clone()
        };
        let all = self
            .store
            .tickets(&unlimited)
            .map_err(|e| Fault::gateway(e.to_string()))?;
        Ok(all
            .into_iter()
            .filter(|t| visible(t, identity))
            .take(filter.limit.unwrap_or(1000))
            .map(|t| self.fresh(t))
            .collect())
    }

    /// One ticket, if `identity` may see it.
    pub fn show(&self, identity: &Identity, id: &str) -> Result<Ticket, Denial> {
        match self.store.ticket(id) {
            Ok(Some(t)) if visible(&t, identity) => Ok(self.fresh(t)),
            Ok(_) => Err(Denial::new(DenialKind::NotFound, format!("no ticket {id}"))),
            Err(e) => Err(Denial::new(DenialKind::Unavailable, e.to_string())),
        }
    }

    /// A pending ticket past its expiry reads as expired even before the sweep marks it.
    fn fresh(&self, mut t: Ticket) -> Ticket {
        if t.state == TicketState::Pending && now() >= t.expires {
            t.state = TicketState::Expired;
        }
        t
    }

    /// Marks pending tickets past their expiry as expired and audits each. Call it now
    /// and then (the gateway does, every few seconds); polls also expire tickets.
    pub async fn sweep(&self) -> Result<usize, Fault> {
        let expired = self
            .store
            .expire_tickets(now())
            .map_err(|e| Fault::gateway(e.to_string()))?;
        if !expired.is_empty() {
            self.changed();
        }
        for t in &expired {
            crate::audit::ticket_event(&self.store, t, "approvals.expired", None).await;
        }
        Ok(expired.len())
    }

    /// Wakes polls held for a decision (see [`Pipeline::resume`]).
    pub(crate) fn changed(&self) {
        self.changed.notify_waiters();
    }

    /// Woken whenever a ticket is opened (the notifier waits on it).
    pub fn opened(&self) -> &tokio::sync::Notify {
        &self.opened
    }
}

/// An approver's decision as the admin API receives it.
#[derive(Debug, Clone, Default)]
pub struct TicketDecision {
    pub approve: bool,
    /// Approve every request the same rule catches for the same identity for this long.
    pub window: Option<Duration>,
    pub reason: Option<String>,
}

impl Default for ApprovalSettings {
    fn default() -> Self {
        ApprovalSettings {
            ticket_ttl: Duration::from_secs(3600),
            max_window: Duration::from_secs(8 * 3600),
        }
    }
}

/// How long tickets wait and how long a window grant may last.
#[derive(Debug, Clone, Copy)]
pub struct ApprovalSettings {
    /// A pending ticket ends as expired after this; an approved one must run within it.
    pub ticket_ttl: Duration,
    /// The longest window an approver may grant (`--for`).
    pub max_window: Duration,
}

pub(crate) fn visible(t: &Ticket, identity: &Identity) -> bool {
    t.may_approve(&identity.subject, &identity.groups) || t.requested_by(&identity.subject)
}

/// What the client hears when its held job will not run.
pub fn ended_message(t: &Ticket) -> String {
    let why = t.decision_reason.as_deref().unwrap_or("no reason given");
    match t.state {
        TicketState::Denied => format!(
            "Access Denied: the approval request for this query (ticket {}) was denied by {}: {why}",
            t.id,
            t.decided_by.as_deref().unwrap_or("querygate")
        ),
        TicketState::Expired => format!(
            "Access Denied: the approval request for this query (ticket {}) expired: {why}; run the query again to ask again",
            t.id
        ),
        TicketState::Cancelled => format!(
            "Access Denied: the approval request for this query (ticket {}) was cancelled: {why}",
            t.id
        ),
        _ => format!("Access Denied: ticket {} is {}", t.id, t.state),
    }
}

/// A one-line summary for notifications and the CLI.
pub fn describe(t: &Ticket) -> String {
    let bytes = t
        .bytes_estimate
        .map(|b| {
            let cost = t
                .cost_estimate_usd
                .map(|usd| format!(", ~${usd:.2} on demand"))
                .unwrap_or_default();
            format!(", ~{} to process{cost}", format_bytes(b))
        })
        .unwrap_or_default();
    let reason = t
        .reason
        .as_deref()
        .map(|r| format!(" — reason: {r}"))
        .unwrap_or_default();
    let acting = t
        .acting_for
        .as_deref()
        .map(|p| format!(" for {p}"))
        .unwrap_or_default();
    format!(
        "{}{} asks to run on {} (rule {}{}){}",
        t.requester, acting, t.source, t.rule, bytes, reason
    )
}
