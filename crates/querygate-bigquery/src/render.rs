//! Rendering: a pipeline [`Outcome`] → an HTTP response in BigQuery's own format.
//!
//! Pure. Denials become the Google JSON error envelope with a 4xx status and a
//! non-retryable reason, so the official clients raise at once instead of retrying
//! for minutes (reference/bigquery-wire.md §8). Upstream replies pass through.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use querygate_core::{DenialKind, Fault};
use querygate_pipeline::Outcome;

use crate::model::ErrorEnvelope;
use crate::upstream::BigQueryReply;

/// Renders an outcome. `sql` says whether the request carried SQL, which picks
/// `invalidQuery` over `invalid` for bad-request denials.
pub fn render(outcome: Outcome<BigQueryReply>, sql: bool) -> Response<Body> {
    match outcome {
        Outcome::Done(reply) => reply.into_response(),
        Outcome::Denied(denial) => {
            let (code, reason) = match denial.kind {
                // 403, not 401: on a 401 the Google auth libraries try to refresh the token
                // and raise their own RefreshError, which hides this message from the agent.
                DenialKind::Unauthenticated => (403, "authError"),
                DenialKind::Forbidden => (403, "accessDenied"),
                DenialKind::NotFound => (404, "notFound"),
                DenialKind::Invalid if sql => (400, "invalidQuery"),
                DenialKind::Invalid => (400, "invalid"),
                DenialKind::TooLarge => (413, "invalid"),
            };
            error(code, reason, &denial.message)
        }
        Outcome::Failed(fault) => render_fault(&fault),
    }
}

/// Faults: an upstream that is down or speaks garbage is a 502 (retrying may help);
/// a gateway that cannot audit refuses with 403, because retrying will not help soon.
fn render_fault(fault: &Fault) -> Response<Body> {
    if fault.retryable {
        error(502, "backendError", &fault.message)
    } else {
        error(403, "accessDenied", &fault.message)
    }
}

pub fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorEnvelope::new(code, reason, message)).unwrap_or_default();
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        body,
    )
}

pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}
