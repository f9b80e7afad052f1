//! The JSON shapes the admin API reads (decision bodies) and writes (lists, a session, errors).
//!
//! Shapes only: reading them is `decode`'s work, choosing what to answer `render`'s. Tickets,
//! session summaries and events are the core's and the store's own serializations.

use querygate_core::Ticket;
use querygate_core::recording::Event;
use querygate_pipeline::SessionSummary;
use serde::{Deserialize, Serialize};

/// `POST …/approve` body: both fields optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// A window grant: `"1h"` approves the same rule's requests by the same identity for
    /// that long.
    #[serde(rename = "for")]
    pub window: Option<String>,
    pub reason: Option<String>,
}

/// `POST …/deny` body: a reason is required (the pipeline says so if it is missing).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyBody {
    pub reason: Option<String>,
}

/// `GET /api/v1/tickets`: `{"tickets": [ticket…]}`.
#[derive(Debug, Serialize)]
pub struct TicketList<'a> {
    pub tickets: &'a [Ticket],
}

/// `GET /api/v1/sessions`: `{"sessions": [summary…]}`.
#[derive(Debug, Serialize)]
pub struct SessionList<'a> {
    pub sessions: &'a [SessionSummary],
}

/// `GET /api/v1/sessions/{id}`: `{"session": summary, "events": [event…]}`.
#[derive(Debug, Serialize)]
pub struct SessionEvents<'a> {
    pub session: &'a SessionSummary,
    pub events: &'a [Event],
}

/// Every refusal: `{"error": {"code": N, "message": "…"}}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// The HTTP status again, and what a person can do about it.
#[derive(Debug, Serialize)]
pub struct ErrorDetail {
    pub code: u16,
    pub message: String,
}
