//! Query strings, ids, the bearer credential and bodies → typed requests for the pipeline.
//!
//! Pure: no IO, no clock (the caller passes `now`), no HTTP statuses (those are `render`'s).
//! Unknown parameters and fields are refused, so a typo does not silently list everything or
//! drop a reason; every error says what to send instead and never echoes a credential.

use std::time::Duration;

use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::HeaderValue;
use querygate_core::{Secret, TicketState};
use querygate_pipeline::{SessionFilter, TicketDecision, TicketFilter};
use serde::Deserialize;

use crate::model::{ApproveBody, DenyBody};

/// The most tickets or sessions one list returns.
pub const MAX_LIMIT: usize = 1000;
/// The longest reason accepted (it is shown to people and kept in the audit log).
pub const MAX_REASON_CHARS: usize = 2000;

/// Input the admin API cannot read; answered as a 400 with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadRequest {
    #[error("unknown state {0:?}: use pending, approved, running, denied, expired or cancelled")]
    UnknownState(String),
    #[error("unknown parameter {0:?}: filter with state, source, requester or limit")]
    UnknownTicketParameter(String),
    #[error("unknown parameter {0:?}: filter sessions with identity, since or limit")]
    UnknownSessionParameter(String),
    #[error("limit {0:?} must be a whole number from 1 to {max}", max = MAX_LIMIT)]
    Limit(String),
    /// `since` is not a time ([`querygate_pipeline::point_in_time`] says why).
    #[error("since: {0}")]
    Since(String),
    /// The id in the path is empty; `.0` names the thing (`ticket`, `session`).
    #[error("the {0} id is empty")]
    EmptyId(&'static str),
    #[error("the {what} id cannot be read: {detail}")]
    UnreadableId { what: &'static str, detail: String },
    #[error("the request body must be a JSON object like {example}: {detail}")]
    Body {
        example: &'static str,
        detail: String,
    },
    #[error("the reason is {0} characters long; keep it under {max}", max = MAX_REASON_CHARS)]
    ReasonTooLong(usize),
    /// `"for"` is not a duration.
    #[error("\"for\": {0}")]
    Window(String),
    #[error(
        "\"for\": a window of 0s grants nothing; leave \"for\" out to approve only this request"
    )]
    EmptyWindow,
}

/// An `Authorization` header that carries no usable credential; answered as a 401.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadCredential {
    #[error(
        "missing credential: send your querygate API key as `Authorization: Bearer <key>` \
         (the CLI reads it from QUERYGATE_TOKEN)"
    )]
    Missing,
    #[error(
        "the Authorization header is not `Bearer <key>`: send your querygate API key as a bearer token"
    )]
    NotBearer,
}

impl BadCredential {
    /// Whether the client sent something as a credential (recorded in the audit log).
    pub fn presented(self) -> bool {
        self != BadCredential::Missing
    }
}

/// The credential of `Authorization: Bearer <key>` (the scheme in any case).
pub fn bearer(header: Option<&HeaderValue>) -> Result<Secret, BadCredential> {
    let value = header.ok_or(BadCredential::Missing)?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .map(|(_, token)| Secret::new(token.trim()))
        .ok_or(BadCredential::NotBearer)
}

/// The ticket list filter from a query string; unknown names and values are refused.
pub fn ticket_filter(query: &str) -> Result<TicketFilter, BadRequest> {
    let mut filter = TicketFilter::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.trim().to_string();
        if value.is_empty() {
            continue;
        }
        match name.as_ref() {
            "state" => {
                filter.state =
                    Some(TicketState::parse(&value).ok_or(BadRequest::UnknownState(value))?);
            }
            "source" => filter.source = Some(value),
            "requester" => filter.requester = Some(value),
            "limit" => filter.limit = Some(limit(&value)?),
            other => return Err(BadRequest::UnknownTicketParameter(other.to_string())),
        }
    }
    Ok(filter)
}

/// The session list filter from a query string (unknown names are refused); a relative
/// `since` (`15m`) counts back from `now`.
pub fn session_filter(query: &str, now: time::OffsetDateTime) -> Result<SessionFilter, BadRequest> {
    let mut filter = SessionFilter::default();
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        let value = value.trim().to_string();
        if value.is_empty() {
            continue;
        }
        match name.as_ref() {
            "identity" => filter.identity = Some(value),
            "since" => {
                filter.since = Some(
                    querygate_pipeline::point_in_time(&value, now)
                        .map_err(|e| BadRequest::Since(e.to_string()))?,
                );
            }
            "limit" => filter.limit = Some(limit(&value)?),
            other => return Err(BadRequest::UnknownSessionParameter(other.to_string())),
        }
    }
    Ok(filter)
}

/// A list's `limit` parameter.
fn limit(value: &str) -> Result<usize, BadRequest> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| BadRequest::Limit(value.to_string()))
}

/// The ticket id from the path.
pub fn ticket_id(path: Result<Path<String>, PathRejection>) -> Result<String, BadRequest> {
    id("ticket", path)
}

/// The session id from the path.
pub fn session_id(path: Result<Path<String>, PathRejection>) -> Result<String, BadRequest> {
    id("session", path)
}

fn id(what: &'static str, path: Result<Path<String>, PathRejection>) -> Result<String, BadRequest> {
    match path {
        Ok(Path(id)) if !id.trim().is_empty() => Ok(id),
        Ok(_) => Err(BadRequest::EmptyId(what)),
        Err(e) => Err(BadRequest::UnreadableId {
            what,
            detail: e.to_string(),
        }),
    }
}

/// An approval from a `POST …/approve` body (empty: approve this request only, no reason).
pub fn approval(bytes: &[u8]) -> Result<TicketDecision, BadRequest> {
    let b = body::<ApproveBody>(bytes, r#"{"for": "1h", "reason": "…"}"#)?;
    Ok(TicketDecision {
        approve: true,
        window: window(b.window.as_deref())?,
        reason: check_reason(b.reason)?,
    })
}

/// A denial from a `POST …/deny` body.
pub fn denial(bytes: &[u8]) -> Result<TicketDecision, BadRequest> {
    let b = body::<DenyBody>(bytes, r#"{"reason": "…"}"#)?;
    Ok(TicketDecision {
        approve: false,
        window: None,
        reason: check_reason(b.reason)?,
    })
}

/// A JSON body; an empty body is the type's default.
pub(crate) fn body<T: for<'de> Deserialize<'de> + Default>(
    bytes: &[u8],
    example: &'static str,
) -> Result<T, BadRequest> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| BadRequest::Body {
        example,
        detail: e.to_string(),
    })
}

/// A reason trimmed, blank as none, and not too long.
pub(crate) fn check_reason(reason: Option<String>) -> Result<Option<String>, BadRequest> {
    let reason = reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if let Some(r) = &reason
        && r.chars().count() > MAX_REASON_CHARS
    {
        return Err(BadRequest::ReasonTooLong(r.chars().count()));
    }
    Ok(reason)
}

/// An approval's `"for"`: a window grant's length, never zero.
pub(crate) fn window(text: Option<&str>) -> Result<Option<Duration>, BadRequest> {
    let Some(text) = text else {
        return Ok(None);
    };
    let d =
        querygate_pipeline::parse_duration(text).map_err(|e| BadRequest::Window(e.to_string()))?;
    if d.is_zero() {
        return Err(BadRequest::EmptyWindow);
    }
    Ok(Some(d))
}
