//! Decoding: an HTTP request of the BigQuery REST v2 API → a [`Request`] and a [`Call`].
//!
//! Pure: no IO, no policy. Every input decodes to something — requests the gateway
//! cannot read become `Action::Malformed`, and API methods it does not serve become
//! `Action::Other` — so that the pipeline audits and answers every request the same way.

use bytes::Bytes;
use http::{HeaderMap, Method};
use percent_encoding::percent_decode_str;
use querygate_core::{Action, ClientInfo, Request, RequestId, Secret};
use serde::Deserialize;
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
    /// Path under the upstream's root, e.g. `/bigquery/v2/projects/p/queries`.
    pub path: String,
    /// Query string to forward (credentials and `allUsers` removed), without `?`.
    pub query: Option<String>,
    /// JSON body to forward.
    pub body: Option<Bytes>,
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

/// Query parameters never forwarded upstream: credentials, and `allUsers` (the
/// gateway lists only the caller's jobs).
const DROPPED_PARAMS: &[&str] = &["access_token", "key", "oauth_token", "allUsers"];

pub fn decode(wire: WireRequest<'_>) -> (Request, Call) {
    let segments: Vec<String> = api_path(wire.path)
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    let upload = wire.path.starts_with("/upload/");
    let target = match seg.as_slice() {
        ["projects", p, ..] => p.to_string(),
        _ => String::new(),
    };
    let mut call = Call {
        api: Api::Refused,
        method: wire.method.clone(),
        path: format!("/bigquery/v2/{}", seg_join(&segments)),
        query: forwarded_query(wire.query),
        body: None,
    };
    let mut job_id = None;
    let (method, action) = if upload {
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
    } else {
        route(&wire, &seg, &mut call, &mut job_id)
    };
    let reason = reason(&wire, &call);
    let session = session(&wire, &call);
    let wait = (call.api == Api::JobsGetQueryResults).then(|| poll_wait(wire.query));
    let request = Request {
        id: wire.request_id,
        credential: bearer(wire.headers),
        delegation: delegation(wire.headers),
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
    };
    (request, call)
}

/// How long a getQueryResults call may be held: its `timeoutMs`, 10 s when absent (as in
/// BigQuery), and never more than 10 s (the official clients' HTTP timeouts allow that).
fn poll_wait(query: Option<&str>) -> std::time::Duration {
    const MAX_MS: u64 = 10_000;
    let ms = query
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeoutMs="))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(MAX_MS);
    std::time::Duration::from_millis(ms.min(MAX_MS))
}

/// Why the client says it needs the query, for approvers: the job label
/// `querygate-reason` or the `x-querygate-reason` header (the pipeline reads a
/// `/* reason: … */` comment itself).
fn reason(wire: &WireRequest<'_>, call: &Call) -> Option<(String, String)> {
    const LABEL: &str = "querygate-reason";
    let label = match (&call.api, wire.body.as_ref()) {
        (Api::JobsQuery | Api::JobsInsert, Ok(body))
            if body.windows(LABEL.len()).any(|w| w == LABEL.as_bytes()) =>
        {
            serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                v.pointer("/labels/querygate-reason")
                    .or_else(|| v.pointer("/configuration/labels/querygate-reason"))
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
        }
        _ => None,
    };
    let clip = |s: &str| s.trim().chars().take(500).collect::<String>();
    label
        .filter(|l| !l.trim().is_empty())
        .map(|l| (clip(&l), "label".to_string()))
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
fn session(wire: &WireRequest<'_>, call: &Call) -> Option<String> {
    const LABEL: &str = "querygate-session";
    let header = wire
        .headers
        .get(SESSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string);
    header.or_else(|| match (&call.api, wire.body.as_ref()) {
        (Api::JobsQuery | Api::JobsInsert, Ok(body))
            if body.windows(LABEL.len()).any(|w| w == LABEL.as_bytes()) =>
        {
            serde_json::from_slice::<Value>(body).ok().and_then(|v| {
                v.pointer("/labels/querygate-session")
                    .or_else(|| v.pointer("/configuration/labels/querygate-session"))
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            })
        }
        _ => None,
    })
}

/// The header that names a client's session.
pub const SESSION: &str = "x-querygate-session";

fn route(
    wire: &WireRequest<'_>,
    seg: &[&str],
    call: &mut Call,
    job_id: &mut Option<String>,
) -> (String, Action) {
    let m = wire.method;
    let get = m == Method::GET;
    let post = m == Method::POST;
    let named = |s: &str, a: Action| (s.to_string(), a);
    match seg {
        ["projects", _, "queries"] if post => {
            call.api = Api::JobsQuery;
            named("jobs.query", with_json(wire, call, jobs_query))
        }
        ["projects", _, "queries", job] if get => {
            call.api = Api::JobsGetQueryResults;
            named("jobs.getQueryResults", read_job(job))
        }
        ["projects", p, "jobs"] if post => {
            call.api = Api::JobsInsert;
            let action = with_json(wire, call, |body| jobs_insert(body, p, job_id));
            named("jobs.insert", action)
        }
        ["projects", _, "jobs"] if get => {
            call.api = Api::JobsList;
            named("jobs.list", Action::ListJobs)
        }
        ["projects", _, "jobs", job] if get => {
            call.api = Api::JobsGet;
            named("jobs.get", read_job(job))
        }
        ["projects", _, "jobs", job, "cancel"] if post => {
            call.api = Api::JobsCancel;
            named(
                "jobs.cancel",
                Action::CancelJob {
                    job_id: job.to_string(),
                },
            )
        }
        ["projects", _, "datasets"] if get => {
            call.api = Api::Metadata;
            named("datasets.list", metadata(None, false))
        }
        ["projects", p, "datasets", d] if get => {
            call.api = Api::Metadata;
            named(
                "datasets.get",
                hidden_dataset(p, d).unwrap_or(metadata(None, false)),
            )
        }
        ["projects", p, "datasets", d, "tables"] if get => {
            call.api = Api::Metadata;
            named(
                "tables.list",
                hidden_dataset(p, d).unwrap_or(metadata(None, false)),
            )
        }
        ["projects", p, "datasets", d, "tables", t] if get => {
            call.api = Api::Metadata;
            let table = format!("{p}.{d}.{t}");
            named("tables.get", metadata(Some(table), d.starts_with('_')))
        }
        ["projects", p, "datasets", d, "tables", t, "data"] if get => {
            call.api = Api::TabledataList;
            named(
                "tabledata.list",
                Action::ReadRows {
                    table: format!("{p}.{d}.{t}"),
                    result_table: d.starts_with('_'),
                },
            )
        }
        ["projects", _, rest @ ..] => refused(m, rest),
        ["projects"] if get => named("projects.list", other("listing projects")),
        _ => (
            format!("{} {}", m, wire.path),
            Action::Malformed {
                message: format!(
                    "Not found: {} {} is not a BigQuery API method served by querygate",
                    m, wire.path
                ),
                status: 404,
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
        [.., last] if last.contains(':') => (format!("iam.{verb}"), "IAM and permission calls"),
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

fn other(what: &str) -> Action {
    Action::Other {
        what: what.to_string(),
    }
}

fn metadata(table: Option<String>, result_table: bool) -> Action {
    Action::ReadMetadata {
        table,
        result_table,
    }
}

/// Hidden datasets (`_…`) hold other jobs' results: listing them is refused.
fn hidden_dataset(p: &str, d: &str) -> Option<Action> {
    d.starts_with('_')
        .then(|| metadata(Some(format!("{p}.{d}")), true))
}

fn read_job(job: &str) -> Action {
    Action::ReadJob {
        job_id: job.to_string(),
    }
}

/// Parses the JSON body and hands it to `f`; reports unreadable bodies as `Malformed`.
fn with_json(
    wire: &WireRequest<'_>,
    call: &mut Call,
    f: impl FnOnce(&mut Value) -> Result<(Action, bool), String>,
) -> Action {
    let bytes = match &wire.body {
        Ok(b) => b,
        Err(BodyProblem::TooLarge { limit }) => {
            return Action::Malformed {
                message: format!(
                    "Request body is larger than querygate accepts ({limit} bytes); \
                     send a smaller request"
                ),
                status: 413,
            };
        }
        Err(BodyProblem::Unreadable(why)) => {
            return Action::Malformed {
                message: format!("Request body could not be read: {why}"),
                status: 400,
            };
        }
    };
    let mut body: Value = match serde_json::from_slice(bytes) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => return malformed("Invalid JSON payload received: expected a JSON object"),
        Err(e) => return malformed(&format!("Invalid JSON payload received: {e}")),
    };
    match f(&mut body) {
        Ok((action, changed)) => {
            call.body = Some(if changed {
                Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
            } else {
                bytes.clone()
            });
            action
        }
        Err(message) => malformed(&message),
    }
}

fn malformed(message: &str) -> Action {
    Action::Malformed {
        message: message.to_string(),
        status: 400,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryFields {
    query: Option<String>,
    use_legacy_sql: Option<bool>,
    #[serde(default)]
    dry_run: bool,
    destination_table: Option<TableReference>,
    default_dataset: Option<DatasetReference>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DatasetReference {
    #[serde(default)]
    project_id: String,
    #[serde(default)]
    dataset_id: String,
}

fn query_action(q: QueryFields, dry_run: bool) -> Result<Action, String> {
    let Some(statement) = q.query else {
        return Err("Invalid query request: the `query` field is required".into());
    };
    let trimmed = statement.trim_start();
    let standard_marker = trimmed.len() >= 12 && trimmed[..12].eq_ignore_ascii_case("#standardSQL");
    // The REST API defaults to legacy SQL when `useLegacySql` is absent.
    let legacy = q.use_legacy_sql.unwrap_or(!standard_marker);
    Ok(Action::Query {
        dialect_problem: legacy.then(|| {
            "Legacy SQL is not supported through querygate: set useLegacySql to false \
             (the client libraries do by default) and use GoogleSQL"
                .to_string()
        }),
        destination: q.destination_table.map(|t| t.dotted()),
        default_dataset: q
            .default_dataset
            .filter(|d| !d.dataset_id.is_empty())
            .map(|d| match d.project_id.as_str() {
                "" => d.dataset_id,
                p => format!("{p}.{}", d.dataset_id),
            }),
        dry_run: dry_run || q.dry_run,
        statement,
    })
}

fn jobs_query(body: &mut Value) -> Result<(Action, bool), String> {
    // Inline Arrow batches would carry rows querygate does not read: values its detectors
    // and masking must see, and the row counts the audit log records.
    let arrow = body
        .get("queryResultsFormat")
        .and_then(Value::as_str)
        .is_some_and(|f| f.eq_ignore_ascii_case("arrow"));
    if arrow {
        return Err(
            "queryResultsFormat ARROW is not served through querygate, which inspects results \
             as JSON rows; leave the option out (the client then reads JSON rows)"
                .into(),
        );
    }
    let q: QueryFields =
        serde_json::from_value(body.clone()).map_err(|e| format!("Invalid query request: {e}"))?;
    Ok((query_action(q, false)?, false))
}

fn jobs_insert(
    body: &mut Value,
    project: &str,
    job_id: &mut Option<String>,
) -> Result<(Action, bool), String> {
    let config = body
        .get("configuration")
        .and_then(Value::as_object)
        .ok_or("Invalid job: the `configuration` object is required")?;
    let dry_run = config
        .get("dryRun")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let action = if let Some(q) = config.get("query") {
        let q: QueryFields = serde_json::from_value(q.clone())
            .map_err(|e| format!("Invalid query job configuration: {e}"))?;
        query_action(q, dry_run)?
    } else {
        Action::Other {
            what: describe_job(&Value::Object(config.clone())),
        }
    };
    // Keep the client's job id; choose one when it sent none, so the job can be tracked.
    let mut changed = false;
    let existing = body
        .pointer("/jobReference/jobId")
        .and_then(Value::as_str)
        .map(str::to_string);
    let id = match existing {
        Some(id) => id,
        None => {
            let id = format!("querygate_{}", uuid::Uuid::new_v4().simple());
            let reference = body.as_object_mut().map(|o| {
                o.entry("jobReference")
                    .or_insert_with(|| Value::Object(Default::default()))
            });
            if let Some(Value::Object(r)) = reference {
                r.insert("jobId".into(), Value::String(id.clone()));
                r.entry("projectId")
                    .or_insert_with(|| Value::String(project.to_string()));
                changed = true;
            }
            id
        }
    };
    *job_id = Some(id);
    Ok((action, changed))
}

/// The path below the API root: `/bigquery/v2/x` and `/x` (Node's emulator form) both give `x`.
fn api_path(path: &str) -> &str {
    let path = path.strip_prefix("/upload").unwrap_or(path);
    path.strip_prefix("/bigquery/v2").unwrap_or(path)
}

fn seg_join(segments: &[String]) -> String {
    segments
        .iter()
        .map(|s| percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b':')
    .remove(b'@');

fn forwarded_query(query: Option<&str>) -> Option<String> {
    let kept: Vec<&str> = query?
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or("");
            !name.is_empty() && !DROPPED_PARAMS.contains(&name)
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
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

/// The header that carries a delegation token.
pub const ON_BEHALF_OF: &str = "x-querygate-on-behalf-of";

#[cfg(test)]
mod tests;
