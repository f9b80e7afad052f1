//! The admin API: approvers list, read, approve and deny tickets over HTTP (JSON).
//!
//! ```text
//! GET  /healthz                          no authentication
//! GET  /api/v1/tickets?state=&source=&requester=&limit=   {"tickets": [ticket…]}
//! GET  /api/v1/tickets/{id}              ticket
//! POST /api/v1/tickets/{id}/approve      {"for": "1h", "reason": "…"} (both optional) → ticket
//! POST /api/v1/tickets/{id}/deny         {"reason": "…"} → ticket
//! GET  /api/v1/sessions?identity=&since=&limit=   {"sessions": [summary…]}
//! GET  /api/v1/sessions/{id}             {"session": summary, "events": [event…]}
//! ```
//!
//! Recorded sessions are read by the members of `[recording] readers` (every session) and
//! by each identity for its own requests; the pipeline decides and audits every read.
//!
//! Glue only: authenticate the `Authorization: Bearer` API key (or OIDC token) as the data
//! path does, read the request, call the pipeline, render JSON. The pipeline decides who
//! may see and decide a ticket and audits every decision attempt; this module must not
//! decide anything itself. Every refusal is `{"error": {"code": N, "message": "…"}}` with a
//! message a person can act on; bad input is a 400, never a panic or a 5xx. A credential
//! is never logged or echoed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{Extensions, HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use querygate_core::{Denial, DenialKind, Identity, Secret, Ticket, TicketState};
use querygate_pipeline::{Pipeline, TicketDecision, TicketFilter};
use serde::Deserialize;
use serde_json::{Value, json};

/// The most tickets one list returns.
const MAX_LIMIT: usize = 1000;
/// The longest reason accepted (it is shown to people and kept in the audit log).
const MAX_REASON_CHARS: usize = 2000;

pub fn router(pipeline: Arc<Pipeline>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/tickets", get(list))
        .route("/api/v1/tickets/{id}", get(show))
        .route("/api/v1/tickets/{id}/approve", post(approve))
        .route("/api/v1/tickets/{id}/deny", post(deny))
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{id}", get(show_session))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(pipeline)
}

/// `{"error": {"code": N, "message": "…"}}`.
fn error(code: u16, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = json!({ "error": { "code": status.as_u16(), "message": message.into() } });
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"querygate-admin\""),
        );
    }
    response
}

/// A pipeline refusal as an admin API error. Unlike the BigQuery front (which answers 403
/// so Google's clients show the message), a missing or bad credential is a 401 here.
fn refusal(denial: &Denial) -> Response {
    let code = match denial.kind {
        DenialKind::Unauthenticated => 401,
        DenialKind::Forbidden => 403,
        DenialKind::NotFound => 404,
        DenialKind::Invalid => 400,
        DenialKind::TooLarge => 413,
        DenialKind::Conflict => 409,
        DenialKind::Unavailable => 503,
    };
    error(code, denial.message.clone())
}

fn ticket_json(t: &Ticket) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn peer(extensions: &Extensions) -> String {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "?".to_string(), |ConnectInfo(a)| a.to_string())
}

/// The identity behind `Authorization: Bearer …`, or the 401 to answer.
async fn authenticate(
    pipeline: &Pipeline,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<Identity, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        let message = "missing credential: send your querygate API key as `Authorization: Bearer <key>` \
             (the CLI reads it from QUERYGATE_TOKEN)";
        pipeline
            .audit_admin_refusal(
                "admin.authenticate",
                Some(peer(extensions)),
                false,
                message,
                401,
            )
            .await;
        return Err(error(401, message));
    };
    let credential = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, token)| scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .map(|(_, token)| Secret::new(token.trim()));
    let Some(credential) = credential else {
        let message = "the Authorization header is not `Bearer <key>`: send your querygate API key as a bearer token";
        pipeline
            .audit_admin_refusal(
                "admin.authenticate",
                Some(peer(extensions)),
                true,
                message,
                401,
            )
            .await;
        return Err(error(401, message));
    };
    match pipeline.authenticate(Some(&credential)).await {
        Ok(identity) => Ok(identity),
        Err(denial) => {
            tracing::warn!(peer = %peer(extensions), reason = %denial.message, "admin API: authentication failed");
            pipeline
                .audit_admin_refusal(
                    "admin.authenticate",
                    Some(peer(extensions)),
                    true,
                    &denial.message,
                    401,
                )
                .await;
            Err(refusal(&denial))
        }
    }
}

/// `GET /api/v1/tickets`.
async fn list(
    State(pipeline): State<Arc<Pipeline>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let identity = match authenticate(&pipeline, &headers, &extensions).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let filter = match filter(query.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(message) => return error(400, message),
    };
    match pipeline.list_tickets(&identity, &filter) {
        Ok(tickets) => {
            let tickets: Vec<Value> = tickets.iter().map(ticket_json).collect();
            axum::Json(json!({ "tickets": tickets })).into_response()
        }
        Err(fault) => {
            tracing::error!(error = %fault.message, "admin API: cannot list tickets");
            error(
                503,
                format!("querygate cannot read its tickets now: {}", fault.message),
            )
        }
    }
}

/// The list filter from a query string; unknown names and values are refused, so a typo
/// does not silently list everything.
fn filter(query: &str) -> Result<TicketFilter, String> {
    let mut filter = TicketFilter::default();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = value.trim().to_string();
        if value.is_empty() {
            continue;
        }
        match name.as_ref() {
            "state" => {
                filter.state = Some(TicketState::parse(&value).ok_or_else(|| {
                    format!(
                        "unknown state {value:?}: use pending, approved, running, denied, expired or cancelled"
                    )
                })?);
            }
            "source" => filter.source = Some(value),
            "requester" => filter.requester = Some(value),
            "limit" => filter.limit = Some(limit(&value)?),
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: filter with state, source, requester or limit"
                ));
            }
        }
    }
    Ok(filter)
}

/// A list's `limit` parameter.
fn limit(value: &str) -> Result<usize, String> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_LIMIT).contains(n))
        .ok_or_else(|| format!("limit {value:?} must be a whole number from 1 to {MAX_LIMIT}"))
}

/// The ticket id from the path, or why it cannot be read.
fn ticket_id(path: Result<Path<String>, PathRejection>) -> Result<String, String> {
    match path {
        Ok(Path(id)) if !id.trim().is_empty() => Ok(id),
        Ok(_) => Err("the ticket id is empty".into()),
        Err(e) => Err(format!("the ticket id cannot be read: {e}")),
    }
}

/// `GET /api/v1/tickets/{id}`.
async fn show(
    State(pipeline): State<Arc<Pipeline>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let identity = match authenticate(&pipeline, &headers, &extensions).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let id = match ticket_id(path) {
        Ok(id) => id,
        Err(m) => return error(400, m),
    };
    match pipeline.show_ticket(&identity, &id) {
        Ok(t) => axum::Json(ticket_json(&t)).into_response(),
        Err(denial) => refusal(&denial),
    }
}

/// `POST …/approve` body: both fields optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// A window grant: `"1h"` approves the same rule's requests by the same identity for
    /// that long.
    #[serde(rename = "for")]
    window: Option<String>,
    reason: Option<String>,
}

/// `POST …/deny` body: a reason is required (the pipeline says so if it is missing).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: Option<String>,
}

/// A JSON body; an empty body is the type's default.
fn body<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8], example: &str) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes)
        .map_err(|e| format!("the request body must be a JSON object like {example}: {e}"))
}

fn check_reason(reason: Option<String>) -> Result<Option<String>, String> {
    let reason = reason
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    if let Some(r) = &reason
        && r.chars().count() > MAX_REASON_CHARS
    {
        return Err(format!(
            "the reason is {} characters long; keep it under {MAX_REASON_CHARS}",
            r.chars().count()
        ));
    }
    Ok(reason)
}

fn window(text: Option<&str>) -> Result<Option<Duration>, String> {
    let Some(text) = text else {
        return Ok(None);
    };
    let d = querygate_identity::parse_duration(text).map_err(|e| format!("\"for\": {e}"))?;
    if d.is_zero() {
        return Err(
            "\"for\": a window of 0s grants nothing; leave \"for\" out to approve only this request"
                .into(),
        );
    }
    Ok(Some(d))
}

/// What approve and deny share: the approver, the ticket id and the body, or the answer.
async fn decision_request(
    pipeline: &Pipeline,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    extensions: &Extensions,
    bytes: Result<Bytes, BytesRejection>,
) -> Result<(Identity, String, Bytes), Response> {
    let approver = authenticate(pipeline, headers, extensions).await?;
    let id = ticket_id(path).map_err(|m| error(400, m))?;
    let bytes = bytes.map_err(|e| {
        error(
            e.status().as_u16(),
            format!("the request body cannot be read: {e}"),
        )
    })?;
    Ok((approver, id, bytes))
}

/// `POST /api/v1/tickets/{id}/approve`.
async fn approve(
    State(pipeline): State<Arc<Pipeline>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let (approver, id, bytes) =
        match decision_request(&pipeline, path, &headers, &extensions, bytes).await {
            Ok(parts) => parts,
            Err(r) => return r,
        };
    let parsed = body::<ApproveBody>(&bytes, r#"{"for": "1h", "reason": "…"}"#).and_then(|b| {
        Ok(TicketDecision {
            approve: true,
            window: window(b.window.as_deref())?,
            reason: check_reason(b.reason)?,
        })
    });
    match parsed {
        Ok(decision) => decide(&pipeline, &approver, &id, decision).await,
        Err(message) => error(400, message),
    }
}

/// `POST /api/v1/tickets/{id}/deny`.
async fn deny(
    State(pipeline): State<Arc<Pipeline>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    let (approver, id, bytes) =
        match decision_request(&pipeline, path, &headers, &extensions, bytes).await {
            Ok(parts) => parts,
            Err(r) => return r,
        };
    let parsed = body::<DenyBody>(&bytes, r#"{"reason": "…"}"#).and_then(|b| {
        Ok(TicketDecision {
            approve: false,
            window: None,
            reason: check_reason(b.reason)?,
        })
    });
    match parsed {
        Ok(decision) => decide(&pipeline, &approver, &id, decision).await,
        Err(message) => error(400, message),
    }
}

async fn decide(
    pipeline: &Pipeline,
    approver: &Identity,
    id: &str,
    decision: TicketDecision,
) -> Response {
    let verb = if decision.approve { "approve" } else { "deny" };
    match pipeline.decide_ticket(approver, id, decision).await {
        Ok(t) => {
            tracing::info!(ticket = %t.id, approver = %approver.subject, state = %t.state, "ticket decided");
            axum::Json(ticket_json(&t)).into_response()
        }
        Err(denial) => {
            tracing::info!(ticket = %id, approver = %approver.subject, reason = %denial.message, "refused to {verb} a ticket");
            refusal(&denial)
        }
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    error(
        404,
        format!(
            "no such endpoint: {method} {}; the admin API serves /api/v1/tickets, \
             /api/v1/tickets/{{id}}, /api/v1/tickets/{{id}}/approve, /api/v1/tickets/{{id}}/deny, \
             /api/v1/sessions and /api/v1/sessions/{{id}}",
            uri.path()
        ),
    )
}

/// The session list filter from a query string (unknown names are refused).
fn session_filter(query: &str) -> Result<querygate_store::SessionFilter, String> {
    let mut filter = querygate_store::SessionFilter::default();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let value = value.trim().to_string();
        if value.is_empty() {
            continue;
        }
        match name.as_ref() {
            "identity" => filter.identity = Some(value),
            "since" => {
                filter.since = Some(
                    crate::audit_cmd::point_in_time(&value).map_err(|e| format!("since: {e}"))?,
                );
            }
            "limit" => filter.limit = Some(limit(&value)?),
            other => {
                return Err(format!(
                    "unknown parameter {other:?}: filter sessions with identity, since or limit"
                ));
            }
        }
    }
    Ok(filter)
}

/// `GET /api/v1/sessions`.
async fn list_sessions(
    State(pipeline): State<Arc<Pipeline>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let identity = match authenticate(&pipeline, &headers, &extensions).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let filter = match session_filter(query.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(message) => return error(400, message),
    };
    match pipeline.list_sessions(&identity, filter).await {
        Ok(sessions) => axum::Json(json!({ "sessions": sessions })).into_response(),
        Err(denial) => refusal(&denial),
    }
}

/// `GET /api/v1/sessions/{id}`.
async fn show_session(
    State(pipeline): State<Arc<Pipeline>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let identity = match authenticate(&pipeline, &headers, &extensions).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let id = match path {
        Ok(Path(id)) if !id.trim().is_empty() => id,
        Ok(_) => return error(400, "the session id is empty"),
        Err(e) => return error(400, format!("the session id cannot be read: {e}")),
    };
    match pipeline.show_session(&identity, &id).await {
        Ok((summary, events)) => {
            axum::Json(json!({ "session": summary, "events": events })).into_response()
        }
        Err(denial) => refusal(&denial),
    }
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    error(
        405,
        format!(
            "{method} is not served on {}: list and show with GET, approve and deny with POST",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_refuse_what_they_do_not_know() {
        let f = filter("state=pending&source=analytics&requester=agent%3Atest&limit=5")
            .expect("filter");
        assert_eq!(f.state, Some(TicketState::Pending));
        assert_eq!(f.source.as_deref(), Some("analytics"));
        assert_eq!(f.requester.as_deref(), Some("agent:test"));
        assert_eq!(f.limit, Some(5));
        let e = filter("state=waiting").expect_err("unknown state");
        assert!(e.contains("\"waiting\"") && e.contains("pending"), "{e}");
        assert!(filter("limit=0").is_err());
        assert!(filter("limit=ten").is_err());
        let e = filter("stat=pending").expect_err("typo");
        assert!(e.contains("\"stat\""), "{e}");
        assert!(filter("").is_ok());
        assert!(filter("state=").expect("empty").state.is_none());
    }

    #[test]
    fn bodies_and_windows_are_checked() {
        let b: ApproveBody = body(b"", "{}").expect("empty");
        assert!(b.window.is_none() && b.reason.is_none());
        let b: ApproveBody = body(br#"{"for": "1h", "reason": "ok"}"#, "{}").expect("body");
        assert_eq!(
            window(b.window.as_deref()),
            Ok(Some(Duration::from_secs(3600)))
        );
        let e = body::<ApproveBody>(br#"{"window": "1h"}"#, "{}").expect_err("unknown field");
        assert!(e.contains("window"), "{e}");
        assert!(body::<DenyBody>(b"{not json", "{}").is_err());
        assert!(window(Some("soon")).is_err());
        assert!(window(Some("0s")).is_err());
        assert_eq!(check_reason(Some("  ".into())), Ok(None));
        assert!(check_reason(Some("x".repeat(MAX_REASON_CHARS + 1))).is_err());
    }
}
