//! The BigQuery REST v2 surface of the local engine: jobs.insert/get/list/cancel (jobs.list
//! paged by `maxResults`/`pageToken`, narrowed by `stateFilter` and creation times), jobs.query,
//! jobs.getQueryResults (paged, `pageToken`/`startIndex`/`maxResults`), tabledata.list (also
//! `selectedFields`: the named top-level columns in the order named), datasets.list/get,
//! tables.list/get (`creationTime`/`lastModifiedTime` from the files' modification times),
//! dry runs; anything else is refused in BigQuery's error envelope (writes as `accessDenied`:
//! the engine is read-only).
//!
//! Served in-process only: [`router`] is an axum `Router` the gateway's `bigquery` source calls
//! directly (no socket), so nothing reaches the engine without going through the pipeline.
//! Must not decide anything: who may run what is the gateway's business.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value as Json, json};

use crate::engine::{Engine, Job, LOCATION, Page, QueryRequest, ResultSet, select_columns};
use crate::error::EngineError;
use crate::values::{Field, Format};

/// Request bodies above this are refused (the gateway caps them lower).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// The engine as an axum router, for in-process calls.
pub fn router(engine: Arc<Engine>) -> axum::Router {
    axum::Router::new().fallback(move |req: Request| {
        let engine = engine.clone();
        async move {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().map(str::to_string);
            let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
                Ok(b) => b,
                Err(_) => {
                    return respond(Err(EngineError::bad_request(
                        "the request body is too large or unreadable",
                    )));
                }
            };
            let result = tokio::task::spawn_blocking(move || {
                handle(&engine, &method, &path, query.as_deref(), &body)
            })
            .await
            .unwrap_or_else(|_| Err(EngineError::internal("the local engine failed")));
            respond(result)
        }
    })
}

/// An answer: a JSON body, plus result rows already serialized (spliced in as `"rows"`).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Json,
    pub rows: Option<Vec<u8>>,
}

impl Answer {
    /// The body's bytes, rows included.
    pub fn into_bytes(self) -> Vec<u8> {
        let mut out = serde_json::to_vec(&self.body).unwrap_or_default();
        if let Some(rows) = self.rows
            && out.last() == Some(&b'}')
        {
            out.pop();
            if out.len() > 1 {
                out.push(b',');
            }
            out.extend_from_slice(b"\"rows\":");
            out.extend_from_slice(&rows);
            out.push(b'}');
        }
        out
    }
}

fn respond(result: Result<Answer, EngineError>) -> Response {
    let (status, body) = match result {
        Ok(a) => (a.status, a.into_bytes()),
        Err(e) => (
            StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST),
            serde_json::to_vec(&e.envelope()).unwrap_or_default(),
        ),
    };
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    r
}

/// One REST call, blocking: the answer's status and JSON body.
pub fn handle(
    engine: &Engine,
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
) -> Result<Answer, EngineError> {
    let params = Params::parse(query);
    let rest = path
        .strip_prefix("/bigquery/v2")
        .unwrap_or(path)
        .trim_end_matches('/');
    let segments: Vec<String> = rest
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
    if seg.first() != Some(&"projects") {
        return Err(EngineError::not_found(format!("Not found: {path}")));
    }
    if seg.len() == 1 {
        return ok(json!({
            "kind": "bigquery#projectList",
            "projects": [{"kind": "bigquery#project", "id": engine.project(),
                "projectReference": {"projectId": engine.project()}}],
            "totalItems": 1,
        }));
    }
    let project = seg[1];
    if project != engine.project() {
        return Err(EngineError::not_found(format!(
            "Not found: Project {project}"
        )));
    }
    let read = *method == Method::GET;
    match (&seg[2..], method.as_str()) {
        (["queries"], "POST") => jobs_query(engine, body),
        (["queries", job], "GET") => get_query_results(engine, job, &params),
        (["jobs"], "POST") => jobs_insert(engine, body),
        (["jobs"], "GET") => jobs_list(engine, &params),
        (["jobs", job], "GET") => ok(job_resource(engine, &find_job(engine, job)?)),
        (["jobs", job, "cancel"], "POST") => ok(json!({
            "kind": "bigquery#jobCancelResponse",
            "job": job_resource(engine, &find_job(engine, job)?),
        })),
        (["datasets"], "GET") => ok(json!({
            "kind": "bigquery#datasetList",
            "datasets": engine.datasets().into_iter().map(|d| dataset_resource(engine, d)).collect::<Vec<_>>(),
        })),
        (["datasets", dataset], "GET") => {
            find_dataset(engine, dataset)?;
            ok(dataset_resource(engine, dataset))
        }
        (["datasets", dataset, "tables"], "GET") => tables_list(engine, dataset, &params),
        (["datasets", dataset, "tables", table], "GET") => {
            table_resource(engine, dataset, table, &params)
        }
        (["datasets", dataset, "tables", table, "data"], "GET") => {
            tabledata_list(engine, dataset, table, &params)
        }
        (["datasets", ..], _) | (["jobs", ..], _) if !read => Err(EngineError::read_only(
            "querygate's local engine is read-only: datasets, tables and jobs other than queries cannot be created, changed or deleted",
        )),
        _ => Err(EngineError::not_found(format!(
            "Not found: {method} {path}"
        ))),
    }
}

fn ok(v: Json) -> Result<Answer, EngineError> {
    Ok(Answer {
        status: StatusCode::OK,
        body: v,
        rows: None,
    })
}

/// Query-string parameters of a call.
#[derive(Debug, Default)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(query: Option<&str>) -> Params {
        Params(
            query
                .unwrap_or("")
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (k, v) = p.split_once('=').unwrap_or((p, ""));
                    (percent_decode(k), percent_decode(&v.replace('+', " ")))
                })
                .collect(),
        )
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// Every value of a repeated parameter (`stateFilter=pending&stateFilter=running`).
    fn all(&self, key: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    /// `selectedFields` as indexes into `fields`; `None` when it names nothing (every column).
    fn selected(&self, fields: &[Field]) -> Result<Option<Vec<usize>>, EngineError> {
        match self.get("selectedFields") {
            None => Ok(None),
            Some(names) => {
                let columns = select_columns(fields, names)?;
                Ok((!columns.is_empty()).then_some(columns))
            }
        }
    }
    fn number(&self, key: &str) -> Result<Option<u64>, EngineError> {
        self.get(key)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    EngineError::bad_request(format!("{key} = {v:?} is not a non-negative integer"))
                })
            })
            .transpose()
    }
    fn format(&self) -> Format {
        Format {
            // Python's client sends `True`, others `true`.
            int64_timestamp: self
                .get("formatOptions.useInt64Timestamp")
                .is_some_and(|v| v.eq_ignore_ascii_case("true")),
        }
    }
    /// Where a page starts: `pageToken` (our tokens are row offsets), else `startIndex`.
    fn start(&self) -> Result<u64, EngineError> {
        if let Some(token) = self.get("pageToken") {
            return token
                .parse::<u64>()
                .map_err(|_| EngineError::bad_request(format!("invalid pageToken {token:?}")));
        }
        Ok(self.number("startIndex")?.unwrap_or(0))
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn body_json(body: &[u8]) -> Result<Json, EngineError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| EngineError::bad_request(format!("the request body is not JSON: {e}")))
}

/// The query fields of jobs.query's body or a job's `configuration.query`.
fn query_request(
    q: &Json,
    job_id: Option<String>,
    dry_run: bool,
) -> Result<QueryRequest, EngineError> {
    if q.get("useLegacySql").and_then(Json::as_bool) == Some(true) {
        return Err(EngineError::invalid(
            "querygate's local engine runs GoogleSQL only (useLegacySql = false)",
        ));
    }
    let sql = q
        .get("query")
        .and_then(Json::as_str)
        .ok_or_else(|| EngineError::bad_request("Required parameter is missing: query"))?
        .to_string();
    let default_dataset = q
        .pointer("/defaultDataset/datasetId")
        .and_then(Json::as_str)
        .map(str::to_string);
    let maximum_bytes_billed = q.get("maximumBytesBilled").and_then(|v| match v {
        Json::String(s) => s.parse().ok(),
        Json::Number(n) => n.as_u64(),
        _ => None,
    });
    Ok(QueryRequest {
        sql,
        default_dataset,
        parameters: q.get("queryParameters").cloned(),
        job_id,
        dry_run,
        maximum_bytes_billed,
    })
}

fn find_job(engine: &Engine, id: &str) -> Result<Job, EngineError> {
    engine.job(id).ok_or_else(|| {
        EngineError::not_found(format!(
            "Not found: Job {}:{LOCATION}.{id}",
            engine.project()
        ))
    })
}

fn find_dataset(engine: &Engine, dataset: &str) -> Result<(), EngineError> {
    if engine.datasets().contains(dataset) || dataset == "_results" {
        Ok(())
    } else {
        Err(EngineError::not_found(format!(
            "Not found: Dataset {}:{dataset}",
            engine.project()
        )))
    }
}

fn schema_json(fields: &[crate::values::Field]) -> Json {
    json!({ "fields": fields.iter().map(crate::values::Field::to_json).collect::<Vec<_>>() })
}

fn job_reference(engine: &Engine, id: &str) -> Json {
    json!({"projectId": engine.project(), "jobId": id, "location": LOCATION})
}

/// A job as jobs.get returns it.
fn job_resource(engine: &Engine, job: &Job) -> Json {
    let mut query = json!({ "query": job.query, "useLegacySql": false });
    let mut stats_query = json!({
        "totalBytesProcessed": job.bytes_processed.to_string(),
        "totalBytesBilled": job.bytes_processed.to_string(),
        "cacheHit": false,
        "statementType": "SELECT",
    });
    let mut status = json!({"state": "DONE"});
    match &job.outcome {
        Ok(result) => {
            if !job.dry_run {
                query["destinationTable"] = json!({
                    "projectId": engine.project(), "datasetId": "_results", "tableId": result.table,
                });
            }
            stats_query["schema"] = schema_json(&result.fields);
        }
        Err(e) => {
            status["errorResult"] = e.error_proto();
            status["errors"] = json!([e.error_proto()]);
        }
    }
    let mut reference = job_reference(engine, &job.id);
    if job.dry_run
        && let Some(r) = reference.as_object_mut()
    {
        r.remove("jobId");
    }
    json!({
        "kind": "bigquery#job",
        "id": format!("{}:{LOCATION}.{}", engine.project(), job.id),
        "jobReference": reference,
        "configuration": { "jobType": "QUERY", "query": query, "dryRun": job.dry_run },
        "status": status,
        "statistics": {
            "creationTime": job.created_ms.to_string(),
            "startTime": job.created_ms.to_string(),
            "endTime": job.ended_ms.to_string(),
            "totalBytesProcessed": job.bytes_processed.to_string(),
            "query": stats_query,
        },
        "user_email": "querygate-local",
    })
}

fn jobs_insert(engine: &Engine, body: &[u8]) -> Result<Answer, EngineError> {
    let job = body_json(body)?;
    let config = job.get("configuration").cloned().unwrap_or(json!({}));
    let Some(q) = config.get("query") else {
        return Err(EngineError::read_only(
            "querygate's local engine is read-only: only query jobs are supported (no load, extract or copy jobs)",
        ));
    };
    if q.get("destinationTable").is_some() {
        return Err(EngineError::read_only(
            "querygate's local engine is read-only: a query job cannot write a destinationTable",
        ));
    }
    let dry_run = config.get("dryRun").and_then(Json::as_bool) == Some(true);
    let job_id = job
        .pointer("/jobReference/jobId")
        .and_then(Json::as_str)
        .map(str::to_string);
    if let Some(id) = &job_id
        && !dry_run
        && engine.job(id).is_some()
    {
        return Err(EngineError {
            kind: crate::error::ErrorKind::BadRequest,
            message: format!("Already Exists: Job {}:{LOCATION}.{id}", engine.project()),
        });
    }
    let req = query_request(q, job_id, dry_run)?;
    let done = engine.run(&req);
    // A dry run that fails answers with the error itself, as BigQuery's does.
    if dry_run && let Err(e) = &done.outcome {
        return Err(e.clone());
    }
    ok(job_resource(engine, &done))
}

fn jobs_query(engine: &Engine, body: &[u8]) -> Result<Answer, EngineError> {
    let q = body_json(body)?;
    let dry_run = q.get("dryRun").and_then(Json::as_bool) == Some(true);
    let req = query_request(&q, None, dry_run)?;
    let max = q.get("maxResults").and_then(Json::as_u64);
    let format = Format {
        int64_timestamp: q
            .pointer("/formatOptions/useInt64Timestamp")
            .and_then(Json::as_bool)
            == Some(true),
    };
    let job = engine.run(&req);
    let result = job.outcome.clone()?;
    if dry_run {
        return ok(json!({
            "kind": "bigquery#queryResponse",
            "jobReference": {"projectId": engine.project(), "location": LOCATION},
            "schema": schema_json(&result.fields),
            "totalBytesProcessed": job.bytes_processed.to_string(),
            "jobComplete": true,
            "cacheHit": false,
        }));
    }
    let page = engine.result_page(&result, 0, max, format, None)?;
    Ok(results_body(
        engine,
        "bigquery#queryResponse",
        &job,
        &result,
        page,
    ))
}

fn results_body(engine: &Engine, kind: &str, job: &Job, result: &ResultSet, page: Page) -> Answer {
    let mut body = json!({
        "kind": kind,
        "jobReference": job_reference(engine, &job.id),
        "schema": schema_json(&result.fields),
        "totalRows": result.total_rows.to_string(),
        "totalBytesProcessed": job.bytes_processed.to_string(),
        "jobComplete": true,
        "cacheHit": false,
    });
    if let Some(next) = page.next {
        body["pageToken"] = json!(next.to_string());
    }
    Answer {
        status: StatusCode::OK,
        body,
        rows: rows_of(page),
    }
}

/// A page's rows, or none: like BigQuery, an empty page has no `rows` field.
fn rows_of(page: Page) -> Option<Vec<u8>> {
    (page.count > 0).then_some(page.rows)
}

fn get_query_results(engine: &Engine, id: &str, params: &Params) -> Result<Answer, EngineError> {
    let job = find_job(engine, id)?;
    let result = job.outcome.clone()?;
    let page = engine.result_page(
        &result,
        params.start()?,
        params.number("maxResults")?,
        params.format(),
        None,
    )?;
    Ok(results_body(
        engine,
        "bigquery#getQueryResultsResponse",
        &job,
        &result,
        page,
    ))
}

fn table_resource(
    engine: &Engine,
    dataset: &str,
    table: &str,
    params: &Params,
) -> Result<Answer, EngineError> {
    let project = engine.project();
    let (fields, rows, bytes, partition, created, modified) = if dataset == "_results" {
        let job = engine
            .job_of_result(table)
            .ok_or_else(|| crate::engine::not_found_table(project, dataset, table))?;
        let r = job
            .outcome
            .clone()
            .map_err(|_| crate::engine::not_found_table(project, dataset, table))?;
        (
            r.fields,
            r.total_rows,
            0,
            None,
            Some(job.created_ms),
            Some(job.ended_ms),
        )
    } else {
        let info = engine
            .tables()
            .get(&(dataset.to_string(), table.to_string()))
            .ok_or_else(|| crate::engine::not_found_table(project, dataset, table))?;
        (
            info.fields.clone(),
            info.num_rows,
            info.num_bytes,
            info.partition_field.clone(),
            info.created_ms,
            info.modified_ms,
        )
    };
    // tables.get's `selectedFields`: the schema of the named columns only.
    let fields = match params.selected(&fields)? {
        Some(columns) => columns
            .iter()
            .filter_map(|&i| fields.get(i).cloned())
            .collect(),
        None => fields,
    };
    let mut t = json!({
        "kind": "bigquery#table",
        "id": format!("{project}:{dataset}.{table}"),
        "tableReference": {"projectId": project, "datasetId": dataset, "tableId": table},
        "schema": schema_json(&fields),
        "numRows": rows.to_string(),
        "numBytes": bytes.to_string(),
        "type": "TABLE",
        "location": LOCATION,
    });
    if let Some(ms) = created {
        t["creationTime"] = json!(ms.to_string());
    }
    if let Some(ms) = modified {
        t["lastModifiedTime"] = json!(ms.to_string());
    }
    if let Some(field) = partition {
        t["timePartitioning"] = json!({"type": "DAY", "field": field});
    }
    ok(t)
}

/// tables.list, paged by `maxResults`/`pageToken` (an offset: the tables do not change).
fn tables_list(engine: &Engine, dataset: &str, params: &Params) -> Result<Answer, EngineError> {
    find_dataset(engine, dataset)?;
    let project = engine.project();
    let all: Vec<(&(String, String), &crate::engine::TableInfo)> = engine
        .tables()
        .iter()
        .filter(|((d, _), _)| d == dataset)
        .collect();
    let start = offset_token(params)?;
    let max = params.number("maxResults")?.map_or(usize::MAX, clamp);
    let tables: Vec<Json> = all
        .iter()
        .skip(start)
        .take(max)
        .map(|((d, t), info)| {
            let mut item = json!({
                "kind": "bigquery#table",
                "id": format!("{project}:{d}.{t}"),
                "tableReference": {"projectId": project, "datasetId": d, "tableId": t},
                "type": "TABLE",
            });
            if let Some(ms) = info.created_ms {
                item["creationTime"] = json!(ms.to_string());
            }
            if let Some(ms) = info.modified_ms {
                item["lastModifiedTime"] = json!(ms.to_string());
            }
            if let Some(field) = &info.partition_field {
                item["timePartitioning"] = json!({"type": "DAY", "field": field});
            }
            item
        })
        .collect();
    let mut body = json!({"kind": "bigquery#tableList", "totalItems": all.len(), "tables": tables});
    let end = start.saturating_add(max);
    if end < all.len() {
        body["nextPageToken"] = json!(end.to_string());
    }
    ok(body)
}

/// jobs.list: kept jobs newest first, paged by `maxResults`/`pageToken`; `stateFilter`
/// (every job here is DONE) and `minCreationTime`/`maxCreationTime` (ms) narrow it.
fn jobs_list(engine: &Engine, params: &Params) -> Result<Answer, EngineError> {
    let from = params
        .get("pageToken")
        .map(|t| {
            t.parse::<u64>()
                .map_err(|_| EngineError::bad_request(format!("invalid pageToken {t:?}")))
        })
        .transpose()?;
    let max = params.number("maxResults")?.map(clamp);
    let states: Vec<String> = params
        .all("stateFilter")
        .map(str::to_ascii_lowercase)
        .collect();
    let min_created = params.number("minCreationTime")?;
    let max_created = params.number("maxCreationTime")?;
    let wanted = |j: &Job| {
        (states.is_empty() || states.iter().any(|s| s == "done"))
            && min_created.is_none_or(|m| j.created_ms >= m)
            && max_created.is_none_or(|m| j.created_ms <= m)
    };
    let mut listed = engine
        .jobs_from(from)
        .into_iter()
        .filter(|(_, j)| wanted(j));
    let jobs: Vec<Job> = listed
        .by_ref()
        .take(max.unwrap_or(usize::MAX))
        .map(|(_, j)| j)
        .collect();
    let next = listed.next().map(|(seq, _)| seq);
    let mut body = json!({
        "kind": "bigquery#jobList",
        "jobs": jobs.iter().map(|j| {
            let mut r = job_resource(engine, j);
            r["state"] = json!("DONE");
            r
        }).collect::<Vec<_>>(),
    });
    if let Some(next) = next {
        body["nextPageToken"] = json!(next.to_string());
    }
    ok(body)
}

/// A list's offset page token (tables.list).
fn offset_token(params: &Params) -> Result<usize, EngineError> {
    params.get("pageToken").map_or(Ok(0), |t| {
        t.parse::<usize>()
            .map_err(|_| EngineError::bad_request(format!("invalid pageToken {t:?}")))
    })
}

fn clamp(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

fn tabledata_list(
    engine: &Engine,
    dataset: &str,
    table: &str,
    params: &Params,
) -> Result<Answer, EngineError> {
    let start = params.start()?;
    let max = params.number("maxResults")?;
    let format = params.format();
    let (page, total) = if dataset == "_results" {
        let r = engine
            .result_by_table(table)
            .ok_or_else(|| crate::engine::not_found_table(engine.project(), dataset, table))?;
        let columns = params.selected(&r.fields)?;
        (
            engine.result_page(&r, start, max, format, columns.as_deref())?,
            r.total_rows,
        )
    } else {
        let info = engine
            .tables()
            .get(&(dataset.to_string(), table.to_string()))
            .ok_or_else(|| crate::engine::not_found_table(engine.project(), dataset, table))?;
        let columns = params.selected(&info.fields)?;
        (
            engine.table_page(dataset, table, start, max, format, columns.as_deref())?,
            info.num_rows,
        )
    };
    let mut body = json!({
        "kind": "bigquery#tableDataList",
        "totalRows": total.to_string(),
    });
    if let Some(next) = page.next {
        body["pageToken"] = json!(next.to_string());
    }
    Ok(Answer {
        status: StatusCode::OK,
        body,
        rows: rows_of(page),
    })
}

fn dataset_resource(engine: &Engine, dataset: &str) -> Json {
    let mut d = json!({
        "kind": "bigquery#dataset",
        "id": format!("{}:{dataset}", engine.project()),
        "datasetReference": {"projectId": engine.project(), "datasetId": dataset},
        "location": LOCATION,
    });
    // The oldest and newest of its tables' times.
    let infos = engine
        .tables()
        .iter()
        .filter(|((d, _), _)| d == dataset)
        .map(|(_, i)| i);
    if let Some(ms) = infos.clone().filter_map(|i| i.created_ms).min() {
        d["creationTime"] = json!(ms.to_string());
    }
    if let Some(ms) = infos.filter_map(|i| i.modified_ms).max() {
        d["lastModifiedTime"] = json!(ms.to_string());
    }
    d
}
