//! The `bigquery` source's neutral side: BigQuery REST calls for neutral actions, and
//! neutral answers read from BigQuery's replies.
//!
//! A front that speaks no source's protocol (MCP tools, console pages) asks a source for
//! a query, a catalog description or a job operation in the gateway's own terms
//! ([`querygate_pipeline::Source::call_for`]); this module builds the REST call BigQuery
//! would get from its own clients for it (jobs.query with standard SQL, datasets and
//! tables list/get, jobs get/getQueryResults/cancel/list, tabledata.list), so the call
//! runs through the same pipeline and the same source code as the REST front's. Replies
//! are read back as [`Answer`]s: cells typed by the schema (BigQuery sends every scalar
//! as a string), catalog names, table columns, job states.

use bytes::Bytes;
use http::Method;
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use querygate_core::{Action, Catalog, Denial, DenialKind, JobOp, Query};
use querygate_pipeline::{Answer, Column, JobInfo, Paging, ResultSet, SchemaInfo, TableInfo};
use serde_json::{Map, Value, json};

use crate::decode::{Api, Call};

/// The REST call for `action` on `project`.
pub fn call_for(project: &str, action: &Action, paging: &Paging) -> Result<Call, Denial> {
    let root = format!("/bigquery/v2/projects/{}", segment(project));
    let get = |api: Api, path: String, query: Option<String>| Call {
        api,
        method: Method::GET,
        path,
        query,
        body: None,
        shows_result_table: false,
    };
    let page = |extra: &[(&str, String)]| {
        let mut params: Vec<(&str, String)> = extra.to_vec();
        if let Some(n) = paging.max_rows {
            params.push(("maxResults", n.to_string()));
        }
        if let Some(t) = &paging.page_token {
            params.push(("pageToken", t.clone()));
        }
        (!params.is_empty()).then(|| {
            params
                .iter()
                .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, NON_ALPHANUMERIC)))
                .collect::<Vec<_>>()
                .join("&")
        })
    };
    let wait_ms = paging
        .wait
        .map(|w| w.as_millis().min(u128::from(u32::MAX)) as u64);
    Ok(match action {
        Action::Query(q) => query_call(&root, q, paging, wait_ms)?,
        Action::ReadTable { table, .. } => {
            let (p, d, t) = three_parts(table)?;
            get(
                Api::TabledataList,
                format!(
                    "/bigquery/v2/projects/{}/datasets/{}/tables/{}/data",
                    segment(p),
                    segment(d),
                    segment(t)
                ),
                page(&[]),
            )
        }
        Action::Catalog { object, .. } => match object {
            Catalog::Schemas => get(Api::Metadata, format!("{root}/datasets"), page(&[])),
            Catalog::Schema { schema } => {
                let (p, d) = two_parts(schema)?;
                get(
                    Api::Metadata,
                    format!(
                        "/bigquery/v2/projects/{}/datasets/{}",
                        segment(p),
                        segment(d)
                    ),
                    None,
                )
            }
            Catalog::Tables { schema } => {
                let (p, d) = two_parts(schema)?;
                get(
                    Api::Metadata,
                    format!(
                        "/bigquery/v2/projects/{}/datasets/{}/tables",
                        segment(p),
                        segment(d)
                    ),
                    page(&[]),
                )
            }
            Catalog::Table { table } => {
                let (p, d, t) = three_parts(table)?;
                get(
                    Api::Metadata,
                    format!(
                        "/bigquery/v2/projects/{}/datasets/{}/tables/{}",
                        segment(p),
                        segment(d),
                        segment(t)
                    ),
                    None,
                )
            }
        },
        Action::Job(op) => match op {
            JobOp::Get { job_id } => get(
                Api::JobsGet,
                format!("{root}/jobs/{}", segment(job_id)),
                None,
            ),
            JobOp::Results { job_id } => {
                let wait: Vec<(&str, String)> = wait_ms
                    .map(|ms| ("timeoutMs", ms.to_string()))
                    .into_iter()
                    .collect();
                get(
                    Api::JobsGetQueryResults,
                    format!("{root}/queries/{}", segment(job_id)),
                    page(&wait),
                )
            }
            JobOp::Cancel { job_id } => Call {
                api: Api::JobsCancel,
                method: Method::POST,
                path: format!("{root}/jobs/{}/cancel", segment(job_id)),
                query: None,
                body: None,
                shows_result_table: false,
            },
            JobOp::List => get(Api::JobsList, format!("{root}/jobs"), page(&[])),
        },
        // Requests the gate refuses still need a call to be audited with: one that is
        // never forwarded.
        Action::Other { .. } | Action::Malformed { .. } => Call {
            api: Api::Refused,
            method: Method::GET,
            path: root,
            query: None,
            body: None,
            shows_result_table: false,
        },
    })
}

/// jobs.query in standard SQL: what the official clients send for `client.query(sql)`.
fn query_call(
    root: &str,
    q: &Query,
    paging: &Paging,
    wait_ms: Option<u64>,
) -> Result<Call, Denial> {
    let mut body = Map::new();
    body.insert("query".into(), json!(q.statement));
    body.insert("useLegacySql".into(), json!(false));
    if q.dry_run {
        body.insert("dryRun".into(), json!(true));
    }
    if let Some(n) = paging.max_rows {
        body.insert("maxResults".into(), json!(n));
    }
    if let Some(ms) = wait_ms {
        body.insert("timeoutMs".into(), json!(ms));
    }
    if let Some(schema) = &q.default_schema {
        let (project, dataset) = match schema.split_once('.') {
            Some((p, d)) => (Some(p), d),
            None => (None, schema.as_str()),
        };
        let mut reference = json!({ "datasetId": dataset });
        if let Some(p) = project {
            reference["projectId"] = json!(p);
        }
        body.insert("defaultDataset".into(), reference);
    }
    if q.destination.is_some() {
        return Err(Denial::new(
            DenialKind::Forbidden,
            "Access Denied: writing query results to a table is a write; remove the destination",
        ));
    }
    Ok(Call {
        api: Api::JobsQuery,
        method: Method::POST,
        path: format!("{root}/queries"),
        query: None,
        body: Some(Bytes::from(Value::Object(body).to_string())),
        shows_result_table: false,
    })
}

/// A path segment, percent-encoded as the decoder's canonical form.
fn segment(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

fn two_parts(name: &str) -> Result<(&str, &str), Denial> {
    match name.split('.').collect::<Vec<_>>()[..] {
        [p, d] if !p.is_empty() && !d.is_empty() => Ok((p, d)),
        _ => Err(Denial::new(
            DenialKind::Invalid,
            format!("Invalid dataset name {name:?}: write project.dataset"),
        )),
    }
}

fn three_parts(name: &str) -> Result<(&str, &str, &str), Denial> {
    match name.split('.').collect::<Vec<_>>()[..] {
        [p, d, t] if !p.is_empty() && !d.is_empty() && !t.is_empty() => Ok((p, d, t)),
        _ => Err(Denial::new(
            DenialKind::Invalid,
            format!("Invalid table name {name:?}: write project.dataset.table"),
        )),
    }
}

/// The neutral answer of a reply to `api`, from its status and body.
pub fn answer(api: Api, status: u16, body: &[u8]) -> Answer {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return Answer::Error {
            message: "the source answered with a body that is not BigQuery JSON".into(),
        };
    };
    if !(200..300).contains(&status) {
        let message = v
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("the source refused the request")
            .to_string();
        return Answer::Error { message };
    }
    if let Some(message) = job_error(&v) {
        return Answer::Error { message };
    }
    let job_id = v
        .pointer("/jobReference/jobId")
        .and_then(Value::as_str)
        .map(str::to_string);
    match api {
        Api::JobsQuery | Api::JobsGetQueryResults | Api::TabledataList => {
            if v.get("jobComplete").and_then(Value::as_bool) == Some(false) {
                return Answer::Running { job_id };
            }
            let columns: Vec<Column> = v
                .pointer("/schema/fields")
                .and_then(Value::as_array)
                .map(|f| f.iter().map(column).collect())
                .unwrap_or_default();
            let rows = v
                .get("rows")
                .and_then(Value::as_array)
                .map(|rows| rows.iter().map(|r| row(r, &columns)).collect())
                .unwrap_or_default();
            Answer::Rows(ResultSet {
                columns,
                rows,
                total_rows: number(v.get("totalRows")),
                page_token: v
                    .get("pageToken")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                job_id,
                bytes_processed: number(v.get("totalBytesProcessed")),
            })
        }
        Api::JobsGet | Api::JobsInsert => Answer::Jobs(vec![job(&v)]),
        Api::JobsCancel => Answer::Jobs(vec![job(v.get("job").unwrap_or(&Value::Null))]),
        Api::JobsList => Answer::Jobs(
            v.get("jobs")
                .and_then(Value::as_array)
                .map(|jobs| jobs.iter().map(job).collect())
                .unwrap_or_default(),
        ),
        Api::Metadata => metadata(&v),
        Api::Refused => Answer::Error {
            message: "the request was refused".into(),
        },
    }
}

/// datasets.list/get and tables.list/get, told apart by their `kind`.
fn metadata(v: &Value) -> Answer {
    let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    match v.get("kind").and_then(Value::as_str) {
        Some("bigquery#datasetList") => {
            Answer::Names(names(v, "datasets", "/datasetReference/datasetId"))
        }
        Some("bigquery#tableList") => Answer::Names(names(v, "tables", "/tableReference/tableId")),
        Some("bigquery#dataset") => Answer::Schema(SchemaInfo {
            name: format!(
                "{}.{}",
                text("/datasetReference/projectId").unwrap_or_default(),
                text("/datasetReference/datasetId").unwrap_or_default()
            ),
            location: text("/location"),
            description: text("/description"),
        }),
        _ if v.get("tableReference").is_some() => Answer::Table(TableInfo {
            name: format!(
                "{}.{}.{}",
                text("/tableReference/projectId").unwrap_or_default(),
                text("/tableReference/datasetId").unwrap_or_default(),
                text("/tableReference/tableId").unwrap_or_default()
            ),
            kind: text("/type"),
            columns: v
                .pointer("/schema/fields")
                .and_then(Value::as_array)
                .map(|f| f.iter().map(column).collect())
                .unwrap_or_default(),
            rows: number(v.get("numRows")),
            description: text("/description"),
        }),
        // A listing with no entries has no array at all.
        _ if v.get("datasets").is_none() && v.get("tables").is_none() => Answer::Names(vec![]),
        _ => Answer::Error {
            message: "the source answered with a catalog entry querygate cannot read".into(),
        },
    }
}

fn names(v: &Value, list: &str, id: &str) -> Vec<String> {
    v.get(list)
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i.pointer(id).and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn job(v: &Value) -> JobInfo {
    let text = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_string);
    JobInfo {
        job_id: text("/jobReference/jobId").unwrap_or_default(),
        state: text("/status/state")
            .or_else(|| text("/state"))
            .unwrap_or_default(),
        error: text("/status/errorResult/message").or_else(|| text("/errorResult/message")),
        statement: text("/configuration/query/query"),
    }
}

/// The error of a job that ended with one (a query answered `DONE` with `errorResult`).
fn job_error(v: &Value) -> Option<String> {
    v.pointer("/status/errorResult/message")
        .or_else(|| v.pointer("/errors/0/message"))
        .and_then(Value::as_str)
        .filter(|_| v.get("rows").is_none())
        .map(str::to_string)
}

fn column(field: &Value) -> Column {
    let text = |k: &str| field.get(k).and_then(Value::as_str).unwrap_or_default();
    Column {
        name: text("name").to_string(),
        data_type: text("type").to_string(),
        repeated: text("mode") == "REPEATED",
    }
}

/// A row `{"f": [{"v": …}, …]}` as values typed by `columns`.
fn row(r: &Value, columns: &[Column]) -> Vec<Value> {
    let cells = r.get("f").and_then(Value::as_array);
    cells
        .map(|cells| {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let v = c.get("v").unwrap_or(&Value::Null);
                    match columns.get(i) {
                        Some(col) if col.repeated => match v {
                            Value::Array(items) => Value::Array(
                                items
                                    .iter()
                                    .map(|item| {
                                        typed(item.get("v").unwrap_or(item), &col.data_type)
                                    })
                                    .collect(),
                            ),
                            other => other.clone(),
                        },
                        Some(col) => typed(v, &col.data_type),
                        None => v.clone(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A scalar cell (BigQuery sends every scalar as a string) as the JSON value of its type.
/// Integers beyond what a double holds exactly stay strings; records stay as sent.
fn typed(v: &Value, data_type: &str) -> Value {
    let Value::String(s) = v else {
        return v.clone();
    };
    match data_type {
        "INTEGER" | "INT64" => match s.parse::<i64>() {
            Ok(n) if n.unsigned_abs() <= 1 << 53 => json!(n),
            _ => v.clone(),
        },
        "FLOAT" | "FLOAT64" => s
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map_or_else(|| v.clone(), |f| json!(f)),
        "BOOLEAN" | "BOOL" => match s.as_str() {
            "true" => json!(true),
            "false" => json!(false),
            _ => v.clone(),
        },
        _ => v.clone(),
    }
}

fn number(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_becomes_the_jobs_query_the_official_clients_send() {
        let paging = Paging {
            max_rows: Some(50),
            ..Paging::default()
        };
        let mut q = Query::new("SELECT 1");
        q.default_schema = Some("p.shop".into());
        let call = call_for("p", &Action::Query(q), &paging).expect("a query has a call");
        assert_eq!(call.api, Api::JobsQuery);
        assert_eq!(call.path, "/bigquery/v2/projects/p/queries");
        let body: Value =
            serde_json::from_slice(call.body.as_deref().expect("a body")).expect("JSON");
        assert_eq!(
            body,
            json!({"query": "SELECT 1", "useLegacySql": false, "maxResults": 50,
                   "defaultDataset": {"projectId": "p", "datasetId": "shop"}})
        );
        // What the REST front would decode from it is the same query.
        let mut with_dest = Query::new("SELECT 1");
        with_dest.destination = Some("p.d.t".into());
        assert!(call_for("p", &Action::Query(with_dest), &paging).is_err());
    }

    #[test]
    fn catalog_and_job_actions_become_their_rest_calls() {
        let paging = Paging {
            page_token: Some("a b".into()),
            ..Paging::default()
        };
        let cases = [
            (
                Action::Catalog {
                    object: Catalog::Schemas,
                    hidden: false,
                },
                "/bigquery/v2/projects/p/datasets",
                Some("pageToken=a%20b"),
            ),
            (
                Action::Catalog {
                    object: Catalog::Tables {
                        schema: "p.shop".into(),
                    },
                    hidden: false,
                },
                "/bigquery/v2/projects/p/datasets/shop/tables",
                Some("pageToken=a%20b"),
            ),
            (
                Action::Catalog {
                    object: Catalog::Table {
                        table: "p.shop.orders".into(),
                    },
                    hidden: false,
                },
                "/bigquery/v2/projects/p/datasets/shop/tables/orders",
                None,
            ),
            (
                Action::Job(JobOp::Results {
                    job_id: "j1".into(),
                }),
                "/bigquery/v2/projects/p/queries/j1",
                Some("pageToken=a%20b"),
            ),
            (
                Action::Job(JobOp::Get {
                    job_id: "j1".into(),
                }),
                "/bigquery/v2/projects/p/jobs/j1",
                None,
            ),
        ];
        for (action, path, query) in cases {
            let call = call_for("p", &action, &paging).expect("a call");
            assert_eq!(call.path, path, "{action:?}");
            assert_eq!(call.query.as_deref(), query, "{action:?}");
        }
        let bad = Action::Catalog {
            object: Catalog::Table {
                table: "orders".into(),
            },
            hidden: false,
        };
        assert!(call_for("p", &bad, &paging).is_err());
    }

    #[test]
    fn rows_are_typed_by_their_schema() {
        let body = json!({
            "kind": "bigquery#queryResponse", "jobComplete": true,
            "jobReference": {"projectId": "p", "jobId": "j1"},
            "schema": {"fields": [
                {"name": "id", "type": "INTEGER"}, {"name": "big", "type": "INT64"},
                {"name": "x", "type": "FLOAT"}, {"name": "ok", "type": "BOOLEAN"},
                {"name": "email", "type": "STRING"}, {"name": "tags", "type": "STRING", "mode": "REPEATED"}]},
            "rows": [{"f": [{"v": "7"}, {"v": "9007199254740993"}, {"v": "1.5"}, {"v": "true"},
                            {"v": "a@b.c"}, {"v": [{"v": "x"}, {"v": "y"}]}]},
                     {"f": [{"v": null}, {"v": null}, {"v": null}, {"v": null}, {"v": null}, {"v": []}]}],
            "totalRows": "2", "totalBytesProcessed": "100", "pageToken": "next"
        });
        let Answer::Rows(set) = answer(Api::JobsQuery, 200, body.to_string().as_bytes()) else {
            panic!("rows expected");
        };
        assert_eq!(set.columns.len(), 6);
        assert!(set.columns[5].repeated);
        assert_eq!(
            set.rows[0],
            vec![
                json!(7),
                json!("9007199254740993"),
                json!(1.5),
                json!(true),
                json!("a@b.c"),
                json!(["x", "y"])
            ]
        );
        assert_eq!(set.rows[1][0], Value::Null);
        assert_eq!((set.total_rows, set.bytes_processed), (Some(2), Some(100)));
        assert_eq!(set.page_token.as_deref(), Some("next"));
        assert_eq!(set.job_id.as_deref(), Some("j1"));
    }

    #[test]
    fn waiting_errors_catalog_and_jobs_read_as_their_answers() {
        let running = json!({"jobComplete": false, "jobReference": {"jobId": "j2"}});
        assert_eq!(
            answer(
                Api::JobsGetQueryResults,
                200,
                running.to_string().as_bytes()
            ),
            Answer::Running {
                job_id: Some("j2".into())
            }
        );
        let error = json!({"error": {"code": 403, "message": "Access Denied: no"}});
        assert_eq!(
            answer(Api::JobsQuery, 403, error.to_string().as_bytes()),
            Answer::Error {
                message: "Access Denied: no".into()
            }
        );
        let failed = json!({"jobReference": {"jobId": "j3"}, "status": {"state": "DONE", "errorResult": {"message": "Division by zero"}}});
        assert_eq!(
            answer(Api::JobsGet, 200, failed.to_string().as_bytes()),
            Answer::Error {
                message: "Division by zero".into()
            }
        );
        let datasets = json!({"kind": "bigquery#datasetList", "datasets": [{"datasetReference": {"projectId": "p", "datasetId": "shop"}}]});
        assert_eq!(
            answer(Api::Metadata, 200, datasets.to_string().as_bytes()),
            Answer::Names(vec!["shop".into()])
        );
        let table = json!({"kind": "bigquery#table", "type": "TABLE", "numRows": "3",
            "tableReference": {"projectId": "p", "datasetId": "shop", "tableId": "orders"},
            "schema": {"fields": [{"name": "id", "type": "INTEGER", "mode": "REQUIRED"}]}});
        let Answer::Table(info) = answer(Api::Metadata, 200, table.to_string().as_bytes()) else {
            panic!("a table expected");
        };
        assert_eq!(
            (info.name.as_str(), info.rows, info.columns.len()),
            ("p.shop.orders", Some(3), 1)
        );
        let jobs = json!({"jobs": [{"jobReference": {"jobId": "j1"}, "state": "DONE"}]});
        let Answer::Jobs(list) = answer(Api::JobsList, 200, jobs.to_string().as_bytes()) else {
            panic!("jobs expected");
        };
        assert_eq!(
            (list[0].job_id.as_str(), list[0].state.as_str()),
            ("j1", "DONE")
        );
        assert!(matches!(
            answer(Api::JobsQuery, 200, b"<html>"),
            Answer::Error { .. }
        ));
    }
}
