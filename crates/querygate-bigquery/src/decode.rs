//! Decoding: an HTTP request of the BigQuery REST v2 API → a [`Request`] and a [`Call`].
//!
//! Pure: no IO, no policy. Every input decodes to something — requests the gateway
//! cannot read become `Action::Malformed`, and API methods it does not serve become
//! `Action::Other` — so that the pipeline audits and answers every request the same way.
//! No input panics (`fuzz/fuzz_targets/decode.rs` runs arbitrary requests through it).
//!
//! What the gateway decides on is what it forwards, read the way BigQuery reads it: the
//! path's segments and the query string are decoded once, refused when another server
//! could read them as a different call, and forwarded in one canonical encoding
//! ([`wire`]); bodies are read field by field against BigQuery's own definitions
//! ([`body`]).

use bytes::Bytes;
use http::{HeaderMap, Method};
use querygate_core::{Action, Catalog, ClientInfo, JobOp, Malformed, Request, RequestId, Secret};
use serde_json::Value;

use crate::model::TableReference;

/// Which API method a call is, for reading its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    JobsQuery,
    JobsInsert,
    JobsGet,
    JobsGetQueryResults,
    JobsCancel,
    JobsList,
    TabledataList,
    Metadata,
    /// Never forwarded (always refused); kept so decode stays total.
    Refused,
}

/// The HTTP call to forward upstream once admitted.
#[derive(Debug, Clone)]
pub struct Call {
    pub api: Api,
    pub method: Method,
    /// Path under the upstream's root, e.g. `/bigquery/v2/projects/p/queries`, each
    /// segment as decoded and re-encoded canonically.
    pub path: String,
    /// Query string to forward, without `?`: the parameters as the gateway read them (one
    /// value each, credentials and `allUsers` removed), canonically encoded.
    pub query: Option<String>,
    /// JSON body to forward.
    pub body: Option<Bytes>,
    /// Job resources keep the query's anonymous result table for this client. Hidden from
    /// the rest: with it, the Python client reads DataFrames over the Storage Read API,
    /// which bypasses the gateway's endpoint. Kept for dbt-bigquery and ibis (by their user
    /// agents), which need the table by name ([`reads_result_tables`]).
    pub shows_result_table: bool,
}

/// The HTTP request as the front received it. `body` is `Err` when it could not be read.
pub struct WireRequest<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    pub body: Result<Bytes, BodyProblem>,
    pub peer: Option<String>,
    pub request_id: RequestId,
}

/// Why a body could not be read.
#[derive(Debug, Clone)]
pub enum BodyProblem {
    TooLarge { limit: usize },
    Unreadable(String),
}

/// Decodes one request. Total: never panics, and every input gets an [`Action`].
pub fn decode(wire: WireRequest<'_>) -> (Request, Call) {
    let segments = wire::segments(wire.path);
    let seg: Vec<&str> = segments
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(String::as_str)
        .collect();
    let target = match seg.as_slice() {
        ["projects", p, ..] => (*p).to_string(),
        _ => String::new(),
    };
    let mut call = Call {
        api: Api::Refused,
        method: wire.method.clone(),
        path: format!("/bigquery/v2/{}", wire::join(&seg)),
        query: None,
        body: None,
        shows_result_table: reads_result_tables(wire.headers),
    };
    let mut job_id = None;
    let mut body = None;
    let (method, mut action) = match &segments {
        Err(problem) => (format!("{} {}", wire.method, wire.path), malformed(problem)),
        Ok(_) if wire::is_upload(wire.path) => {
            let metadata = upload_metadata(wire.headers, wire.body.as_ref().ok());
            job_id = metadata
                .as_ref()
                .and_then(|m| m.pointer("/jobReference/jobId"))
                .and_then(Value::as_str)
                .map(str::to_string);
            let what = metadata
                .as_ref()
                .and_then(|m| m.get("configuration"))
                .map_or_else(|| "load jobs (uploading data)".to_string(), describe_job);
            ("jobs.insert".to_string(), Action::Other { what })
        }
        Ok(_) => route(&wire, &seg, &mut call, &mut job_id, &mut body),
    };
    // The query string, read once: what the gateway decides on is what it forwards.
    let mut params = wire::Params::default();
    let served = call.api != Api::Refused;
    if served && !matches!(action, Action::Malformed { .. } | Action::Other { .. }) {
        match wire::Params::read(wire.query, &method) {
            Ok(p) => {
                call.query = p.forwarded();
                params = p;
            }
            Err(problem) => action = malformed(&problem),
        }
    }
    let reason = reason(&wire, &call, body.as_ref());
    let session = session(&wire, &call, body.as_ref());
    let wait = (call.api == Api::JobsGetQueryResults).then(|| poll_wait(&params));
    let request = Request {
        id: wire.request_id,
        credential: bearer(wire.headers),
        delegation: delegation(wire.headers),
        audience: None,
        client: ClientInfo {
            user_agent: wire
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            peer: wire.peer,
        },
        target,
        method,
        action,
        job_id,
        reason,
        wait,
        session,
        codes: &crate::render::CODES,
    };
    (request, call)
}

/// How long a getQueryResults call may be held: its `timeoutMs`, 10 s when absent (as in
/// BigQuery), and never more than 10 s (the official clients' HTTP timeouts allow that).
fn poll_wait(params: &wire::Params) -> std::time::Duration {
    const MAX_MS: u64 = 10_000;
    let ms = params
        .get("timeoutMs")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(MAX_MS);
    std::time::Duration::from_millis(ms.min(MAX_MS))
}

/// A label of the job a query call creates: jobs.query `labels`, jobs.insert
/// `configuration.labels`, read from the body as decoded.
fn label<'a>(call: &Call, body: Option<&'a Value>, name: &str) -> Option<&'a str> {
    let labels = match call.api {
        Api::JobsQuery => body?.get("labels"),
        Api::JobsInsert => body?.get("configuration")?.get("labels"),
        _ => None,
    };
    labels?.get(name)?.as_str()
}

/// Why the client says it needs the query, for approvers: the job label
/// `querygate-reason` or the `x-querygate-reason` header (the pipeline reads a
/// `/* reason: … */` comment itself).
fn reason(wire: &WireRequest<'_>, call: &Call, body: Option<&Value>) -> Option<(String, String)> {
    let clip = |s: &str| s.trim().chars().take(500).collect::<String>();
    label(call, body, "querygate-reason")
        .filter(|l| !l.trim().is_empty())
        .map(|l| (clip(l), "label".to_string()))
        .or_else(|| {
            wire.headers
                .get("x-querygate-reason")
                .and_then(|v| v.to_str().ok())
                .filter(|v| !v.trim().is_empty())
                .map(|v| (clip(v), "header".to_string()))
        })
}

/// The session the client names: the `x-querygate-session` header, else the job label
/// `querygate-session` (jobs.query `labels`, jobs.insert `configuration.labels`). The
/// pipeline checks the name (and ignores one it cannot use).
fn session(wire: &WireRequest<'_>, call: &Call, body: Option<&Value>) -> Option<String> {
    let header = wire
        .headers
        .get(SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    header.or_else(|| {
        label(call, body, "querygate-session")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    })
}

/// The header that names a client's session.
pub const SESSION: &str = "x-querygate-session";

fn route(
    wire: &WireRequest<'_>,
    seg: &[&str],
    call: &mut Call,
    job_id: &mut Option<String>,
    body: &mut Option<Value>,
) -> (String, Action) {
    let m = wire.method;
    let get = m == Method::GET;
    let post = m == Method::POST;
    let named = |s: &str, a: Action| (s.to_string(), a);
    if let ["projects", _, rest @ ..] = seg {
        // `name:verb` is a custom method (getIamPolicy, undelete, …): refused, named.
        if rest.last().is_some_and(|last| last.contains(':')) {
            return refused(m, rest);
        }
        // Dataset, table and job ids never hold `.` or `:` (a project id may).
        if let Some(id) = rest.iter().find(|s| s.contains(['.', ':'])) {
            return (
                format!("{} {}", m, wire.path),
                malformed(&format!(
                    "Invalid path: `{}` is not a dataset, table or job id (they never hold \
                     `.` or `:`); use the id itself",
                    id.escape_debug()
                )),
            );
        }
    }
    match seg {
        ["projects", _, "queries"] if post => {
            call.api = Api::JobsQuery;
            named("jobs.query", with_json(wire, call, body, body::jobs_query))
        }
        ["projects", _, "queries", job] if get => {
            call.api = Api::JobsGetQueryResults;
            named(
                "jobs.getQueryResults",
                job_op(JobOp::Results {
                    job_id: job.to_string(),
                }),
            )
        }
        ["projects", p, "jobs"] if post => {
            call.api = Api::JobsInsert;
            let action = with_json(wire, call, body, |b| {
                body::jobs_insert(b, p, job_id, describe_job)
            });
            named("jobs.insert", action)
        }
        ["projects", _, "jobs"] if get => {
            call.api = Api::JobsList;
            named("jobs.list", job_op(JobOp::List))
        }
        ["projects", _, "jobs", job] if get => {
            call.api = Api::JobsGet;
            named(
                "jobs.get",
                job_op(JobOp::Get {
                    job_id: job.to_string(),
                }),
            )
        }
        ["projects", _, "jobs", job, "cancel"] if post => {
            call.api = Api::JobsCancel;
            named(
                "jobs.cancel",
                job_op(JobOp::Cancel {
                    job_id: job.to_string(),
                }),
            )
        }
        ["projects", _, "datasets"] if get => {
            call.api = Api::Metadata;
            named("datasets.list", catalog(Catalog::Schemas, false))
        }
        ["projects", p, "datasets", d] if get => {
            call.api = Api::Metadata;
            let schema = format!("{p}.{d}");
            named(
                "datasets.get",
                catalog(Catalog::Schema { schema }, hidden(d)),
            )
        }
        ["projects", p, "datasets", d, "tables"] if get => {
            call.api = Api::Metadata;
            let schema = format!("{p}.{d}");
            named(
                "tables.list",
                catalog(Catalog::Tables { schema }, hidden(d)),
            )
        }
        ["projects", p, "datasets", d, "tables", t] if get => {
            call.api = Api::Metadata;
            let table = format!("{p}.{d}.{t}");
            named("tables.get", catalog(Catalog::Table { table }, hidden(d)))
        }
        ["projects", p, "datasets", d, "tables", t, "data"] if get => {
            call.api = Api::TabledataList;
            named(
                "tabledata.list",
                Action::ReadTable {
                    table: format!("{p}.{d}.{t}"),
                    result_table: hidden(d),
                },
            )
        }
        ["projects", _, rest @ ..] => refused(m, rest),
        ["projects"] if get => named("projects.list", other("listing projects")),
        _ => (
            format!("{} {}", m, wire.path),
            Action::Malformed {
                problem: Malformed::Unknown,
                message: format!(
                    "Not found: {} {} is not a BigQuery API method served by querygate",
                    m, wire.path
                ),
            },
        ),
    }
}

/// Says what a non-query job does, naming its tables, for the denial message and the audit log.
fn describe_job(config: &Value) -> String {
    let table = |v: Option<&Value>| {
        v.and_then(|t| serde_json::from_value::<TableReference>(t.clone()).ok())
            .map_or_else(|| "?".to_string(), |t| t.dotted())
    };
    if let Some(load) = config.get("load") {
        format!(
            "load jobs (loading into {})",
            table(load.get("destinationTable"))
        )
    } else if let Some(extract) = config.get("extract") {
        format!(
            "extract jobs (exporting {})",
            table(extract.get("sourceTable"))
        )
    } else if let Some(copy) = config.get("copy") {
        let from = copy
            .get("sourceTables")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .or(copy.get("sourceTable"));
        format!(
            "copy jobs (copying {} into {})",
            table(from),
            table(copy.get("destinationTable"))
        )
    } else {
        "this job type".to_string()
    }
}

/// The job resource of an upload: the JSON body (resumable) or the first part of a
/// `multipart/related` body.
fn upload_metadata(headers: &HeaderMap, body: Option<&Bytes>) -> Option<Value> {
    let body = body?;
    if let Ok(v @ Value::Object(_)) = serde_json::from_slice::<Value>(body) {
        return Some(v);
    }
    let content_type = headers.get(http::header::CONTENT_TYPE)?.to_str().ok()?;
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let text = String::from_utf8_lossy(body);
    let part = text
        .split(delimiter.as_str())
        .find(|p| !p.trim().is_empty())?;
    let (_, json) = part
        .split_once("\r\n\r\n")
        .or_else(|| part.split_once("\n\n"))?;
    serde_json::from_str(json.trim()).ok()
}

/// Names the BigQuery method of a request the gateway refuses, for the audit log and the message.
fn refused(m: &Method, rest: &[&str]) -> (String, Action) {
    let verb = match *m {
        Method::DELETE => "delete",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::POST => "insert",
        _ => "get",
    };
    let (name, what) = match rest {
        [.., last] if IAM_VERBS.iter().any(|v| last.ends_with(v)) => {
            (format!("iam.{verb}"), "IAM and permission calls")
        }
        [.., last] if last.contains(':') => ("custom".into(), "this BigQuery API method"),
        ["jobs", _, "delete"] | ["jobs", _] => ("jobs.delete".into(), "deleting jobs"),
        ["datasets"] => ("datasets.insert".into(), "creating datasets"),
        ["datasets", _] => (format!("datasets.{verb}"), "changing or deleting datasets"),
        ["datasets", _, "tables"] => ("tables.insert".into(), "creating tables"),
        ["datasets", _, "tables", _] => (format!("tables.{verb}"), "changing or deleting tables"),
        ["datasets", _, "tables", _, "insertAll"] => (
            "tabledata.insertAll".into(),
            "streaming inserts (tabledata.insertAll)",
        ),
        ["datasets", _, "routines", ..] => (format!("routines.{verb}"), "routines"),
        ["datasets", _, "models", ..] => (format!("models.{verb}"), "models"),
        ["datasets", _, "tables", _, "rowAccessPolicies", ..] => {
            (format!("rowAccessPolicies.{verb}"), "row access policies")
        }
        _ => ("unknown".into(), "this BigQuery API method"),
    };
    (name, other(what))
}

/// The custom methods of BigQuery's IAM calls.
const IAM_VERBS: &[&str] = &[":getIamPolicy", ":setIamPolicy", ":testIamPermissions"];

fn other(what: &str) -> Action {
    Action::Other {
        what: what.to_string(),
    }
}

fn catalog(object: Catalog, hidden: bool) -> Action {
    Action::Catalog { object, hidden }
}

/// Hidden datasets (`_…`) hold other jobs' results: they are the result owner's alone.
fn hidden(dataset: &str) -> bool {
    dataset.starts_with('_')
}

fn job_op(op: JobOp) -> Action {
    Action::Job(op)
}

/// Parses the JSON body (strictly: each key once) and hands it to `f`; reports unreadable
/// bodies as `Malformed`. The body forwarded is the one read: the client's bytes when `f`
/// changed nothing, else the changed value; `parsed` keeps it for the labels.
fn with_json(
    wire: &WireRequest<'_>,
    call: &mut Call,
    parsed: &mut Option<Value>,
    f: impl FnOnce(&mut Value) -> Result<(Action, bool), String>,
) -> Action {
    let bytes = match &wire.body {
        Ok(b) => b,
        Err(BodyProblem::TooLarge { limit }) => {
            return Action::Malformed {
                problem: Malformed::TooLarge,
                message: format!(
                    "Request body is larger than querygate accepts ({limit} bytes); \
                     send a smaller request"
                ),
            };
        }
        Err(BodyProblem::Unreadable(why)) => {
            return Action::Malformed {
                problem: Malformed::Invalid,
                message: format!("Request body could not be read: {why}"),
            };
        }
    };
    let mut value = match body::parse(bytes) {
        Ok(v) => v,
        Err(message) => return malformed(&message),
    };
    match f(&mut value) {
        Ok((action, changed)) => {
            call.body = Some(if changed {
                Bytes::from(serde_json::to_vec(&value).unwrap_or_default())
            } else {
                bytes.clone()
            });
            *parsed = Some(value);
            action
        }
        Err(message) => malformed(&message),
    }
}

fn malformed(message: &str) -> Action {
    Action::Malformed {
        problem: Malformed::Invalid,
        message: message.to_string(),
    }
}

fn bearer(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty())
        .then(|| Secret::new(token.trim()))
}

/// The delegation token of the person an agent acts for (`x-querygate-on-behalf-of`,
/// optionally with a `Bearer ` prefix). Never forwarded upstream.
fn delegation(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(ON_BEHALF_OF)?.to_str().ok()?.trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => value,
    };
    (!token.is_empty()).then(|| Secret::new(token))
}

/// Clients that need a query's anonymous result table by name, by their user agent:
/// dbt-bigquery (`client.get_table(query_job.destination)` for every SELECT's row count; it
/// iterates rows over REST) and ibis (its session dataset is the result table's dataset; it
/// reads results with `query_and_wait`, over REST when the query completes within the call).
/// Showing the table is a matter of compatibility, not of safety: a client that then asks
/// the Storage Read API for it goes to Google with a gateway credential, and is refused.
fn reads_result_tables(headers: &HeaderMap) -> bool {
    const CLIENTS: &[&str] = &["dbt-bigquery-", "ibis/"];
    headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ua| {
            ua.split_whitespace()
                .any(|product| CLIENTS.iter().any(|c| product.starts_with(c)))
        })
}

/// The header that carries a delegation token.
pub const ON_BEHALF_OF: &str = "x-querygate-on-behalf-of";

impl Call {
    /// The value of a query parameter this call forwards, read as the upstream reads it
    /// (the forwarded query string is the gateway's own canonical one).
    pub fn param(&self, name: &str) -> Option<String> {
        wire::parse(self.query.as_deref()?)
            .ok()?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

mod body;
mod wire;

#[cfg(test)]
mod tests;
