//! Session recordings: the events a session is recorded as, in the order they happen.
//!
//! Every request of a session leaves a `request` event (as received), a `decision` event
//! (when one was made), an `upstream` event (what the pipeline handed the source, only for
//! requests that reached it) and a `response` event (what the client got back, after
//! masking and restriction). Events are JSON; the store keeps them compressed, in segments.
//! Pure data: nothing here reads a clock or a file, and no credential is ever an event's
//! field (the request event names the identity, never the key or token it presented).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One event of a recorded session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// RFC 3339 UTC, as the audit log writes times (sorts as a string).
    pub time: String,
    /// The gateway's id of the request the event belongs to (as in the audit log).
    pub request_id: String,
    #[serde(flatten)]
    pub what: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Request(RequestEvent),
    Decision(DecisionEvent),
    Upstream(UpstreamEvent),
    Response(ResponseEvent),
}

/// A request as received.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RequestEvent {
    /// The authenticated subject, or `anonymous` / `unauthenticated`.
    pub identity: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acting_for: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// The source the request was routed to (or the target it named).
    pub source: String,
    /// The API method as the wire names it (`jobs.query`, …).
    pub method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    /// Query parameters (JSON), when the statement has any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
}

/// The gateway's decision: `allow`, `deny` or `approve` (waiting for a person).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DecisionEvent {
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
}

/// What the pipeline handed the source.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UpstreamEvent {
    pub method: String,
    /// The statement as sent upstream (the same as received until masking rewrites it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statement: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// The cap on bytes billed the gateway set, if it set one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_billed: Option<u64>,
}

/// What the client got back. `body` is the body as returned to the client (after
/// restriction and masking), cut at `max_response_bytes` (`truncated`); `total_bytes` and
/// `sha256` describe the whole body. A denial or failure carries its message in `error`
/// (the front renders it in the client's own error format).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ResponseEvent {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_processed: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub truncated: bool,
    /// Set when the source's `record_results = false` kept the body out of the recording.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub body_omitted: bool,
    /// Size of the whole body returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// SHA-256 (hex) of the whole body returned (not of the recorded part).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl Event {
    /// The event's kind as its JSON `type` names it.
    pub fn kind(&self) -> &'static str {
        match self.what {
            EventKind::Request(_) => "request",
            EventKind::Decision(_) => "decision",
            EventKind::Upstream(_) => "upstream",
            EventKind::Response(_) => "response",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_flat_json_with_a_type() {
        let e = Event {
            time: "2026-11-27T10:00:00.000000Z".into(),
            request_id: "qg-1".into(),
            what: EventKind::Response(ResponseEvent {
                status: 200,
                rows: Some(2),
                body: Some("{}".into()),
                total_bytes: Some(2),
                ..ResponseEvent::default()
            }),
        };
        let text = serde_json::to_string(&e).expect("json");
        assert_eq!(
            text,
            r#"{"time":"2026-11-27T10:00:00.000000Z","request_id":"qg-1","type":"response","status":200,"rows":2,"body":"{}","total_bytes":2}"#
        );
        let back: Event = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, e);
        assert_eq!(back.kind(), "response");
    }
}
