//! Tickets, sessions, denials, faults and bad input → HTTP responses (JSON).
//!
//! The only place this front chooses HTTP status codes. Every refusal is
//! `{"error": {"code": N, "message": "…"}}`; a 401 also carries `WWW-Authenticate`. Unlike the
//! BigQuery front (which answers 403 so Google's clients show the message), a missing or bad
//! credential is a 401 here. Pure: nothing is read, decided or logged.

use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use querygate_core::recording::Event;
use querygate_core::{Denial, DenialKind, Fault, Ticket};
use querygate_pipeline::SessionSummary;
use serde::Serialize;

use crate::decode::{BadCredential, BadRequest};
use crate::model::{ErrorBody, ErrorDetail, SessionEvents, SessionList, TicketList};

/// The status a pipeline denial is answered with.
pub fn status(kind: DenialKind) -> StatusCode {
    match kind {
        DenialKind::Unauthenticated => StatusCode::UNAUTHORIZED,
        DenialKind::Forbidden => StatusCode::FORBIDDEN,
        DenialKind::NotFound => StatusCode::NOT_FOUND,
        DenialKind::Invalid => StatusCode::BAD_REQUEST,
        DenialKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        DenialKind::Conflict => StatusCode::CONFLICT,
        DenialKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
    }
}

/// A pipeline refusal (authentication, a ticket or session not shown, a decision refused).
pub fn denial(denial: &Denial) -> Response {
    error(status(denial.kind), denial.message.clone())
}

/// A request without a usable bearer credential.
pub fn bad_credential(bad: BadCredential) -> Response {
    error(StatusCode::UNAUTHORIZED, bad.to_string())
}

/// Input `decode` refused.
pub fn bad_request(bad: &BadRequest) -> Response {
    error(StatusCode::BAD_REQUEST, bad.to_string())
}

/// A body that could not be read (too large, or the connection failed), with axum's status.
pub fn unreadable_body(rejection: &BytesRejection) -> Response {
    error(
        rejection.status(),
        format!("the request body cannot be read: {rejection}"),
    )
}

/// The ticket list could not be read from the store.
pub fn tickets_unavailable(fault: &Fault) -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("querygate cannot read its tickets now: {}", fault.message),
    )
}

/// A path the admin API does not serve.
pub fn no_such_endpoint(method: &Method, path: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {method} {path}; the admin API serves /api/v1/tickets, \
             /api/v1/tickets/{{id}}, /api/v1/tickets/{{id}}/approve, /api/v1/tickets/{{id}}/deny, \
             /api/v1/sessions and /api/v1/sessions/{{id}}"
        ),
    )
}

/// A served path asked with the wrong method.
pub fn method_not_allowed(method: &Method, path: &str) -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{method} is not served on {path}: list and show with GET, approve and deny with POST"
        ),
    )
}

/// `GET /healthz`.
pub fn healthy() -> Response {
    "ok".into_response()
}

/// One ticket (shown, approved or denied).
pub fn ticket(ticket: &Ticket) -> Response {
    json(ticket)
}

/// `{"tickets": [ticket…]}`.
pub fn tickets(tickets: &[Ticket]) -> Response {
    json(&TicketList { tickets })
}

/// `{"sessions": [summary…]}`.
pub fn sessions(sessions: &[SessionSummary]) -> Response {
    json(&SessionList { sessions })
}

/// `{"session": summary, "events": [event…]}`.
pub fn session(session: &SessionSummary, events: &[Event]) -> Response {
    json(&SessionEvents { session, events })
}

/// A 200 with `value` as JSON. Through `serde_json::Value`, so object keys come out as the
/// admin API has always written them.
fn json(value: &impl Serialize) -> Response {
    match serde_json::to_value(value) {
        Ok(value) => axum::Json(value).into_response(),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("querygate cannot write this answer as JSON: {e}"),
        ),
    }
}

/// `{"error": {"code": N, "message": "…"}}`.
fn error(status: StatusCode, message: String) -> Response {
    let body = ErrorBody {
        error: ErrorDetail {
            code: status.as_u16(),
            message,
        },
    };
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"querygate-admin\""),
        );
    }
    response
}
