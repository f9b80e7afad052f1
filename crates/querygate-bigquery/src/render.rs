//! Rendering: a pipeline [`Outcome`] → an HTTP response in BigQuery's own format.
//!
//! Pure. Denials become the Google JSON error envelope with a 4xx status and a
//! non-retryable reason, so the official clients raise at once instead of retrying
//! for minutes (the Python client retries 5xx and rate-limit reasons for up to 600 s).
//! Upstream replies pass through.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode};
use querygate_core::{DenialKind, Fault, StatusCodes};
use querygate_pipeline::{Outcome, Waiting};
use serde_json::{Value, json};

use crate::decode::Api;

use crate::model::{ErrorEnvelope, json_response};
use crate::source::BigQueryReply;

/// Renders an outcome. `sql` says whether the request carried SQL, which picks
/// `invalidQuery` over `invalid` for bad-request denials; `api` and `project` shape the
/// answer for a job waiting for approval.
pub fn render(
    outcome: Outcome<BigQueryReply>,
    sql: bool,
    api: &Api,
    project: &str,
) -> Response<Body> {
    match outcome {
        Outcome::Waiting(w) => waiting(&w, api, project),
        Outcome::Done(reply) => reply.into_response(),
        Outcome::Denied(denial) => {
            let (code, reason) = Codes::denial(denial.kind, sql);
            error(code, reason, &denial.message)
        }
        Outcome::Failed(fault) => render_fault(&fault),
    }
}

/// A job held for approval, as BigQuery would show a job that has not started: queries
/// answer `jobComplete: false` (the clients keep polling), job resources say `PENDING`.
/// Once the ticket is denied, expires or is cancelled, the job is `DONE` with an
/// `accessDenied` error (and result reads fail with it), so the clients raise Forbidden
/// with the reason. A `querygate` field (ignored by clients) and the
/// `x-querygate-ticket` header name the ticket.
fn waiting(w: &Waiting, api: &Api, project: &str) -> Response<Body> {
    let t = &w.ticket;
    let mut reference = json!({ "projectId": project, "jobId": t.job_id });
    if let Some(location) = &t.location {
        reference["location"] = json!(location);
    }
    let note = json!({
        "ticket": t.id,
        "state": t.state.as_str(),
        "message": w.ended.clone().unwrap_or_else(|| format!(
            "waiting for approval (ticket {}): {}", t.id, t.message
        )),
    });
    let job = |ended: Option<&str>| {
        let status = match ended {
            // A job that has not started can carry errors without failing (BigQuery lists
            // warnings there while a job runs; only `errorResult` ends it): the clients
            // show `job.errors`, so a waiting client can say why it waits.
            None => json!({ "state": "PENDING", "errors": [{
                "reason": "pendingApproval",
                "message": format!(
                    "waiting for approval (ticket {}) by {}: {}",
                    t.id, t.approvers.join(" or "), t.message
                ),
            }] }),
            Some(message) => {
                let error = json!({ "reason": "accessDenied", "message": message });
                json!({ "state": "DONE", "errorResult": error, "errors": [error] })
            }
        };
        json!({
            "kind": "bigquery#job",
            "id": format!("{project}:{}.{}", t.location.as_deref().unwrap_or("US"), t.job_id),
            "jobReference": reference,
            "configuration": { "jobType": "QUERY", "query": { "query": t.statement } },
            "status": status,
            "statistics": { "creationTime": (t.created * 1000).to_string() },
            "user_email": t.requester,
            "querygate": note,
        })
    };
    let body: Value = match (api, w.ended.as_deref()) {
        (Api::JobsQuery | Api::JobsGetQueryResults, Some(message)) => {
            return with_ticket(error(403, "accessDenied", message), &t.id);
        }
        (Api::JobsQuery, None) => json!({
            "kind": "bigquery#queryResponse",
            "jobReference": reference,
            "jobComplete": false,
            "querygate": note,
        }),
        (Api::JobsGetQueryResults, None) => json!({
            "kind": "bigquery#getQueryResultsResponse",
            "jobReference": reference,
            "jobComplete": false,
            "querygate": note,
        }),
        (Api::JobsCancel, ended) => json!({
            "kind": "bigquery#jobCancelResponse",
            "job": job(ended),
        }),
        (_, ended) => job(ended),
    };
    let response = json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    with_ticket(response, &t.id)
}

fn with_ticket(mut response: Response<Body>, id: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(id) {
        response.headers_mut().insert("x-querygate-ticket", v);
    }
    response
}

fn render_fault(fault: &Fault) -> Response<Body> {
    let (code, reason) = Codes::fault(fault);
    error(code, reason, &fault.message)
}

/// How the BigQuery front numbers its answers: the HTTP status and Google error reason of
/// every refusal and failure, the one place this front maps outcomes to its wire. The
/// pipeline records the same numbers through [`StatusCodes`].
#[derive(Debug)]
pub struct Codes;

/// The BigQuery front's [`StatusCodes`], carried by every request it decodes.
pub static CODES: Codes = Codes;

impl Codes {
    /// A denial's status and reason. `sql` (the request carried SQL) picks `invalidQuery`
    /// over `invalid`.
    pub fn denial(kind: DenialKind, sql: bool) -> (u16, &'static str) {
        match kind {
            // 403, not 401: on a 401 the Google auth libraries try to refresh the token
            // and raise their own RefreshError, which hides this message from the agent.
            DenialKind::Unauthenticated => (403, "authError"),
            DenialKind::Forbidden => (403, "accessDenied"),
            DenialKind::NotFound => (404, "notFound"),
            DenialKind::Invalid if sql => (400, "invalidQuery"),
            DenialKind::Invalid => (400, "invalid"),
            DenialKind::TooLarge => (413, "invalid"),
            DenialKind::Conflict => (409, "duplicate"),
            DenialKind::Unavailable => (503, "backendError"),
        }
    }

    /// Faults: an upstream that is down or speaks garbage is a 502 (retrying may help);
    /// a gateway that cannot audit refuses with 403, because retrying will not help soon.
    pub fn fault(fault: &Fault) -> (u16, &'static str) {
        if fault.retryable {
            (502, "backendError")
        } else {
            (403, "accessDenied")
        }
    }
}

impl StatusCodes for Codes {
    fn denied(&self, kind: DenialKind) -> u16 {
        Codes::denial(kind, false).0
    }

    fn failed(&self, fault: &Fault) -> u16 {
        Codes::fault(fault).0
    }

    fn done(&self) -> u16 {
        200
    }

    /// A held job is a job that has not started: 200.
    fn waiting(&self) -> u16 {
        200
    }
}

pub fn error(code: u16, reason: &str, message: &str) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorEnvelope::new(code, reason, message)).unwrap_or_default();
    json_response(
        StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        body,
    )
}
