//! Approval tickets: a request an `approve` rule caught, waiting for a person.
//!
//! A ticket holds everything an approver needs to judge the request (who asked and for
//! whom, the statement, its fingerprint and parameters, the facts, the estimate, the rule
//! and the requester's reason) and everything the gateway needs to run it later (the
//! saved call). A grant is the approved ticket itself: it binds identity, source,
//! fingerprint, parameters, policy version, the byte ceiling and the expiry.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// SHA-256 (hex) of a normalized statement and its parameters: what a grant binds.
pub fn fingerprint(normalized: &str) -> String {
    hex::encode(Sha256::digest(normalized.as_bytes()))
}

/// Where a ticket is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketState {
    /// Waiting for an approver.
    Pending,
    /// Approved; the request has not run yet.
    Approved,
    /// Approved and handed to the upstream (an approval runs its request once).
    Running,
    /// An approver said no.
    Denied,
    /// Nobody decided in time.
    Expired,
    /// The requester cancelled it while it waited.
    Cancelled,
}

impl TicketState {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Pending => "pending",
            TicketState::Approved => "approved",
            TicketState::Running => "running",
            TicketState::Denied => "denied",
            TicketState::Expired => "expired",
            TicketState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<TicketState> {
        Some(match s {
            "pending" => TicketState::Pending,
            "approved" => TicketState::Approved,
            "running" => TicketState::Running,
            "denied" => TicketState::Denied,
            "expired" => TicketState::Expired,
            "cancelled" => TicketState::Cancelled,
            _ => return None,
        })
    }

    /// No decision can change it any more.
    pub fn is_final(self) -> bool {
        !matches!(self, TicketState::Pending | TicketState::Approved)
    }
}

impl std::fmt::Display for TicketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One approval ticket. Times are Unix seconds (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ticket {
    pub id: String,
    pub state: TicketState,
    pub created: i64,
    /// When a pending ticket ends as expired.
    pub expires: i64,
    pub requester: String,
    pub requester_groups: Vec<String>,
    /// The person an agent asked for, when it acts for one.
    pub acting_for: Option<String>,
    pub source: String,
    pub method: String,
    pub statement: String,
    /// SHA-256 of the normalized statement: what a grant binds.
    pub fingerprint: String,
    /// Query parameters as the client sent them (JSON), bound by the grant too.
    pub parameters: Option<String>,
    /// Statement kinds and tables the analyzer found.
    pub kinds: Vec<String>,
    pub tables: Vec<String>,
    /// Bytes a dry run said the query would process.
    pub bytes_estimate: Option<u64>,
    /// What those bytes cost at the source's list price, in US dollars, when it has one.
    #[serde(default)]
    pub cost_estimate_usd: Option<f64>,
    /// The most the run may bill once approved (`maximumBytesBilled`).
    pub max_bytes_billed: Option<u64>,
    pub rule: String,
    /// Who may approve: `group:…` or identities.
    pub approvers: Vec<String>,
    /// The rule's message to the requester.
    pub message: String,
    /// Why the requester says they need it, and how they said it (label, comment, header).
    pub reason: Option<String>,
    pub reason_via: Option<String>,
    pub policy_version: String,
    /// The job the request created (BigQuery: the id the client polls).
    pub job_id: String,
    pub location: Option<String>,
    /// The saved call, in the source's own terms, run once approved. Not shown to clients.
    #[serde(skip_serializing, default)]
    pub call: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    /// The approver's or the gateway's reason for the decision.
    pub decision_reason: Option<String>,
    /// For a window grant: until when the same rule's requests by the same identity run
    /// without asking again.
    pub grant_until: Option<i64>,
    /// Whether approvers have been notified (the webhook answered 2xx).
    pub notified: bool,
}

impl Ticket {
    /// A new ticket id: `tk_` and 24 hex digits of `random`.
    pub fn new_id(random: &str) -> String {
        let hex: String = random
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(24)
            .collect();
        format!("tk_{hex}")
    }

    /// Whether `subject` with `groups` is one of the ticket's approvers.
    pub fn may_approve(&self, subject: &str, groups: &[String]) -> bool {
        self.approvers
            .iter()
            .any(|a| match a.strip_prefix("group:") {
                Some(g) => groups.iter().any(|have| have == g),
                None => a == subject,
            })
    }

    /// Whether `subject` asked for this ticket's request, itself or through an agent.
    pub fn requested_by(&self, subject: &str) -> bool {
        self.requester == subject || self.acting_for.as_deref() == Some(subject)
    }
}
