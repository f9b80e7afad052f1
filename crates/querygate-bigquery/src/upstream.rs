//! The `bigquery` upstream: executes admitted calls against BigQuery (or an
//! emulator) with the gateway's own credential, and reads the reply's facts.
//!
//! The client's `Authorization` header is never forwarded: the call carries no
//! headers from the client at all. The credential is either none (emulators) or a
//! service-account key from which access tokens are minted and cached (gcp_auth,
//! JWT bearer grant to the key's own `token_uri`). Tokens never reach logs or errors.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use gcp_auth::TokenProvider;
use http::{HeaderValue, Response, StatusCode, header};
use querygate_core::Fault;
use querygate_pipeline::{Admitted, Reply, Scope, Source, Summary};
use serde_json::Value;

use crate::decode::{Api, Call};
use crate::model::{ErrorEnvelope, ResponseFacts};
use crate::render::json_response;

const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// How the gateway authenticates to the upstream.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// No credential (emulators).
    None,
    /// OAuth access tokens minted from a service-account key.
    ServiceAccount(Arc<gcp_auth::CustomServiceAccount>),
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAuth::None => f.write_str("None"),
            UpstreamAuth::ServiceAccount(_) => f.write_str("ServiceAccount(<redacted>)"),
        }
    }
}

impl UpstreamAuth {
    /// Loads a service-account key file. Errors name the file, never its content.
    pub fn service_account(path: &std::path::Path) -> Result<UpstreamAuth, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read service account key {}: {e}", path.display()))?;
        let sa = gcp_auth::CustomServiceAccount::from_json(&text).map_err(|_| {
            format!(
                "{} is not a service account key file (expected the JSON key Google issues)",
                path.display()
            )
        })?;
        Ok(UpstreamAuth::ServiceAccount(Arc::new(sa)))
    }
}

/// One configured `bigquery` source.
#[derive(Debug)]
pub struct BigQuerySource {
    name: String,
    project: String,
    endpoint: String,
    auth: UpstreamAuth,
    http: reqwest::Client,
}

impl BigQuerySource {
    pub fn new(
        name: String,
        project: String,
        endpoint: &str,
        auth: UpstreamAuth,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("querygate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(BigQuerySource {
            name,
            project,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            auth,
            http,
        })
    }

    /// The project id clients use for this source.
    pub fn project(&self) -> &str {
        &self.project
    }

    async fn token(&self) -> Result<Option<String>, Fault> {
        match &self.auth {
            UpstreamAuth::None => Ok(None),
            UpstreamAuth::ServiceAccount(sa) => {
                let token = sa.token(&[SCOPE]).await.map_err(|e| {
                    // gcp_auth's errors describe the exchange, not the key; keep them short anyway.
                    let kind = e.to_string();
                    let kind = kind.lines().next().unwrap_or("token exchange failed");
                    Fault::upstream(format!(
                        "querygate could not obtain an access token for source {}: {kind}",
                        self.name
                    ))
                })?;
                Ok(Some(token.as_str().to_string()))
            }
        }
    }
}

impl Source for BigQuerySource {
    type Call = Call;
    type Reply = BigQueryReply;

    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(&self, admitted: Admitted<Call>) -> Result<BigQueryReply, Fault> {
        let call = admitted.into_call();
        let mut url = format!("{}{}", self.endpoint, call.path);
        if let Some(q) = &call.query {
            url.push('?');
            url.push_str(q);
        }
        let mut req = self.http.request(call.method.clone(), &url);
        if let Some(token) = self.token().await? {
            req = req.bearer_auth(token);
        }
        if let Some(body) = call.body {
            req = req
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = req.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection refused or unreachable"
            } else {
                "request failed"
            };
            Fault::upstream(format!(
                "querygate could not reach the BigQuery upstream of source {}: {why}",
                self.name
            ))
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|_| {
            Fault::upstream(format!(
                "the BigQuery upstream of source {} closed the connection mid-answer",
                self.name
            ))
        })?;
        BigQueryReply::read(call.api, status, body).map_err(|why| {
            Fault::upstream(format!(
                "the BigQuery upstream of source {} answered HTTP {} with {why}",
                self.name,
                status.as_u16()
            ))
        })
    }
}

/// An upstream answer, with the facts the pipeline records.
#[derive(Debug)]
pub struct BigQueryReply {
    api: Api,
    status: StatusCode,
    body: Bytes,
    summary: Summary,
}

impl BigQueryReply {
    /// Reads the facts of a reply; `Err` when the body is not BigQuery's JSON.
    pub fn read(api: Api, status: StatusCode, body: Bytes) -> Result<BigQueryReply, String> {
        let facts: ResponseFacts = serde_json::from_slice(&body)
            .map_err(|_| "a body that is not BigQuery JSON".to_string())?;
        let mut reply = BigQueryReply {
            api,
            status,
            body,
            summary: Summary::default(),
        };
        reply.summary = reply.summarize(facts);
        reply.normalize_query_errors();
        Ok(reply)
    }

    fn summarize(&self, f: ResponseFacts) -> Summary {
        let stats = f.statistics.unwrap_or_default();
        let qstats = stats.query.unwrap_or_default();
        let job_error = f.status.and_then(|s| s.error_result);
        let error = f
            .error
            .and_then(|e| e.message)
            .or_else(|| job_error.and_then(|e| e.message))
            .or_else(|| {
                f.errors
                    .as_ref()
                    .and_then(|v| v.first())
                    .and_then(|e| e.message.clone())
            });
        let schema = f.schema.or(qstats.schema).map(|s| s.get().to_string());
        Summary {
            status: self.status.as_u16(),
            rows: f.rows.or(
                // A successful page with no `rows` field returned zero rows.
                matches!(
                    self.api,
                    Api::JobsQuery | Api::JobsGetQueryResults | Api::TabledataList
                )
                .then_some(0)
                .filter(|_| self.status.is_success()),
            ),
            bytes_processed: f
                .total_bytes_processed
                .or(qstats.total_bytes_processed)
                .or(stats.total_bytes_processed),
            bytes_billed: f.total_bytes_billed.or(qstats.total_bytes_billed),
            job_id: f.job_reference.and_then(|r| r.job_id),
            destination: f
                .configuration
                .and_then(|c| c.query)
                .and_then(|q| q.destination_table)
                .map(|t| t.dotted()),
            schema,
            error,
        }
    }

    /// jobs.query errors that arrive inside an HTTP 200 (as some emulators send them)
    /// are turned into the HTTP error real BigQuery returns, so clients raise instead of
    /// silently returning no rows.
    fn normalize_query_errors(&mut self) {
        if self.api != Api::JobsQuery || !self.status.is_success() {
            return;
        }
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&self.body) else {
            return;
        };
        let Some(first) = obj
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        else {
            return;
        };
        if obj.get("rows").is_some() {
            return;
        }
        let reason = first
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("invalidQuery");
        let message = first
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("query failed");
        let code = match reason {
            "accessDenied" => 403,
            "notFound" => 404,
            _ => 400,
        };
        self.status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        self.body = Bytes::from(
            serde_json::to_vec(&ErrorEnvelope::new(code, reason, message)).unwrap_or_default(),
        );
        self.summary.status = code;
        self.summary.rows = None;
    }

    pub fn into_response(self) -> Response<Body> {
        let mut r = json_response(self.status, Vec::new());
        *r.body_mut() = Body::from(self.body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        r
    }
}

impl Reply for BigQueryReply {
    fn summary(&self) -> Summary {
        self.summary.clone()
    }

    /// Job listings keep only the caller's own jobs.
    fn restrict(&mut self, scope: &Scope) {
        if self.api != Api::JobsList || !self.status.is_success() {
            return;
        }
        // Fail closed: a listing that cannot be filtered is replaced by an empty one.
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&self.body) else {
            self.body = Bytes::from_static(br#"{"kind":"bigquery#jobList","jobs":[]}"#);
            return;
        };
        if let Some(Value::Array(jobs)) = obj.get_mut("jobs") {
            jobs.retain(|j| {
                j.pointer("/jobReference/jobId")
                    .and_then(Value::as_str)
                    .is_some_and(|id| scope.owned_jobs.contains(id))
            });
        }
        self.body = Bytes::from(serde_json::to_vec(&obj).unwrap_or_default());
    }
}
