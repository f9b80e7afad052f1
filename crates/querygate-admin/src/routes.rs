//! The axum router of the admin API. Glue only: read the request, `decode` it, call the
//! pipeline, `render` the answer; refusals of a credential are audited through the pipeline
//! and logged without the credential. No status code is chosen here, nothing is decided here.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{Extensions, HeaderMap, Method, Uri, header};
use axum::response::Response;
use axum::routing::{get, post};
use querygate_core::{DenialKind, Identity};
use querygate_pipeline::{Pipeline, TicketDecision};

use crate::decode::BadRequest;
use crate::{decode, render};

/// The admin API over `pipeline`. The caller serves it on its own listener and adds the
/// peer address as a `ConnectInfo<SocketAddr>` extension (refusals are audited with it).
pub fn router(pipeline: Arc<Pipeline>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { render::healthy() }))
        .route("/api/v1/tickets", get(list_tickets))
        .route("/api/v1/tickets/{id}", get(show_ticket))
        .route("/api/v1/tickets/{id}/approve", post(approve))
        .route("/api/v1/tickets/{id}/deny", post(deny))
        .route("/api/v1/sessions", get(list_sessions))
        .route("/api/v1/sessions/{id}", get(show_session))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(pipeline)
}

fn peer(extensions: &Extensions) -> String {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "?".to_string(), |ConnectInfo(a)| a.to_string())
}

/// The identity behind `Authorization: Bearer …`, or the answer to a refused credential
/// (audited either way).
async fn authenticate(
    pipeline: &Pipeline,
    headers: &HeaderMap,
    extensions: &Extensions,
) -> Result<Identity, Response> {
    let credential = match decode::bearer(headers.get(header::AUTHORIZATION)) {
        Ok(credential) => credential,
        Err(bad) => {
            pipeline
                .audit_admin_refusal(
                    "admin.authenticate",
                    Some(peer(extensions)),
                    bad.presented(),
                    &bad.to_string(),
                    render::status(DenialKind::Unauthenticated).as_u16(),
                )
                .await;
            return Err(render::bad_credential(bad));
        }
    };
    match pipeline.authenticate(Some(&credential), None).await {
        Ok(identity) => Ok(identity),
        Err(denial) => {
            tracing::warn!(peer = %peer(extensions), reason = %denial.message, "admin API: authentication failed");
            pipeline
                .audit_admin_refusal(
                    "admin.authenticate",
                    Some(peer(extensions)),
                    true,
                    &denial.message,
                    render::status(DenialKind::Unauthenticated).as_u16(),
                )
                .await;
            Err(render::denial(&denial))
        }
    }
}

/// `GET /api/v1/tickets`.
async fn list_tickets(
    State(pipeline): State<Arc<Pipeline>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let identity = match authenticate(&pipeline, &headers, &extensions).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let filter = match decode::ticket_filter(query.as_deref().unwrap_or("")) {
        Ok(f) => f,
        Err(bad) => return render::bad_request(&bad),
    };
    match pipeline.approvals().list(&identity, &filter) {
        Ok(tickets) => render::tickets(&tickets),
        Err(fault) => {
            tracing::error!(error = %fault.message, "admin API: cannot list tickets");
            render::tickets_unavailable(&fault)
        }
    }
}

/// `GET /api/v1/tickets/{id}`.
async fn show_ticket(
    State(pipeline): State<Arc<Pipeline>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
) -> Response {
    let identity = match authenticate(&pipeline, &headers, &extensions).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let id = match decode::ticket_id(path) {
        Ok(id) => id,
        Err(bad) => return render::bad_request(&bad),
    };
    match pipeline.approvals().show(&identity, &id) {
        Ok(t) => render::ticket(&t),
        Err(denial) => render::denial(&denial),
    }
}

/// `POST /api/v1/tickets/{id}/approve`.
async fn approve(
    State(pipeline): State<Arc<Pipeline>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    decide(
        &pipeline,
        path,
        &headers,
        &extensions,
        bytes,
        decode::approval,
    )
    .await
}

/// `POST /api/v1/tickets/{id}/deny`.
async fn deny(
    State(pipeline): State<Arc<Pipeline>>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    extensions: Extensions,
    bytes: Result<Bytes, BytesRejection>,
) -> Response {
    decide(
        &pipeline,
        path,
        &headers,
        &extensions,
        bytes,
        decode::denial,
    )
    .await
}

/// What approve and deny share: the approver, the ticket id, the body read as a decision,
/// then the pipeline's answer.
async fn decide(
    pipeline: &Pipeline,
    path: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    extensions: &Extensions,
    bytes: Result<Bytes, BytesRejection>,
    read: fn(&[u8]) -> Result<TicketDecision, BadRequest>,
) -> Response {
    let approver = match authenticate(pipeline, headers, extensions).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    let id = match decode::ticket_id(path) {
        Ok(id) => id,
        Err(bad) => return render::bad_request(&bad),
    };
    let bytes = match bytes {
        Ok(bytes) => bytes,
        Err(rejection) => return render::unreadable_body(&rejection),
    };
    let decision = match read(&bytes) {
        Ok(decision) => decision,
        Err(bad) => return render::bad_request(&bad),
    };
    let verb = if decision.approve { "approve" } else { "deny" };
    match pipeline.approvals().decide(&approver, &id, decision).await {
        Ok(t) => {
            tracing::info!(ticket = %t.id, approver = %approver.subject, state = %t.state, "ticket decided");
            render::ticket(&t)
        }
        Err(denial) => {
            tracing::info!(ticket = %id, approver = %approver.subject, reason = %denial.message, "refused to {verb} a ticket");
            render::denial(&denial)
        }
    }
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
    let now = time::OffsetDateTime::now_utc();
    let filter = match decode::session_filter(query.as_deref().unwrap_or(""), now) {
        Ok(f) => f,
        Err(bad) => return render::bad_request(&bad),
    };
    match pipeline.recordings().list(&identity, filter).await {
        Ok(sessions) => render::sessions(&sessions),
        Err(denial) => render::denial(&denial),
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
    let id = match decode::session_id(path) {
        Ok(id) => id,
        Err(bad) => return render::bad_request(&bad),
    };
    match pipeline.recordings().show(&identity, &id).await {
        Ok((summary, events)) => render::session(&summary, &events),
        Err(denial) => render::denial(&denial),
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    render::no_such_endpoint(&method, uri.path())
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    render::method_not_allowed(&method, uri.path())
}
