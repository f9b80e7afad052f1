//! The engine's SQL coverage: BigQuery constructs agents write, run on DuckDB over real files,
//! checked by the rows a client would get back (or the error a client would get).

use std::path::PathBuf;

use serde_json::Value as Json;

use crate::engine::{Engine, QueryRequest, engine_for_tests};
use crate::values::Format;

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let p = std::env::temp_dir().join(format!("qg-local-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cell as text: scalars as BigQuery sends them, NULL, `[a,b]` for arrays, `{a,b}` for records.
fn text(v: &Json) -> String {
    match v {
        Json::Null => "NULL".into(),
        Json::String(s) => s.clone(),
        Json::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(|i| text(&i["v"]))
                .collect::<Vec<_>>()
                .join(",")
        ),
        Json::Object(o) => match o.get("f") {
            Some(Json::Array(cells)) => format!(
                "{{{}}}",
                cells
                    .iter()
                    .map(|c| text(&c["v"]))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            _ => v.to_string(),
        },
        other => other.to_string(),
    }
}

/// Runs `sql` and returns its rows as `a|b;c|d`, or `error <reason>: <message>`.
fn run(engine: &Engine, sql: &str, params: Option<Json>) -> String {
    let job = engine.run(&QueryRequest {
        sql: sql.to_string(),
        parameters: params,
        ..Default::default()
    });
    let result = match job.outcome {
        Ok(r) => r,
        Err(e) => return format!("error {}: {}", e.reason(), e.message),
    };
    let page = engine
        .result_page(&result, 0, None, Format::default(), None)
        .expect("page");
    let rows: Vec<Json> = serde_json::from_slice(&page.rows).expect("rows");
    rows.iter()
        .map(|r| {
            r["f"]
                .as_array()
                .expect("cells")
                .iter()
                .map(|c| text(&c["v"]))
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect::<Vec<_>>()
        .join(";")
}

#[test]
fn bigquery_constructs_run_on_the_engine() {
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    // (construct, BigQuery SQL, rows or error prefix)
    let cases: &[(&str, &str, &str)] = &[
        (
            "backtick path",
            "SELECT id FROM `demo.shop.customers` ORDER BY id",
            "1;2;3",
        ),
        (
            "backtick parts",
            "SELECT c.id FROM `demo`.`shop`.`customers` c WHERE c.id = 2",
            "2",
        ),
        ("dataset.table", "SELECT count(*) FROM shop.customers", "3"),
        (
            "SELECT * EXCEPT",
            "SELECT * EXCEPT (email, signup_date, score) FROM shop.customers WHERE id = 1",
            "1|Ana Lima",
        ),
        (
            "SELECT * REPLACE",
            "SELECT * REPLACE (upper(name) AS name) EXCEPT (email, signup_date, score) FROM shop.customers WHERE id = 1",
            "error",
        ),
        (
            "QUALIFY",
            "SELECT id FROM shop.customers WHERE true QUALIFY ROW_NUMBER() OVER (ORDER BY id DESC) = 1",
            "3",
        ),
        (
            "STRUCT with names",
            "SELECT STRUCT(1 AS a, 'x' AS b) AS s",
            "{1,x}",
        ),
        (
            "STRUCT field access",
            "SELECT s.b FROM (SELECT STRUCT(1 AS a, 'x' AS b) AS s)",
            "x",
        ),
        (
            "typed STRUCT",
            "SELECT STRUCT<a INT64, b STRING>(1, 'y') AS s",
            "{1,y}",
        ),
        (
            "ARRAY literal + UNNEST",
            "SELECT x FROM UNNEST([3, 1, 2]) AS x ORDER BY x",
            "1;2;3",
        ),
        (
            "ARRAY_AGG + ARRAY_LENGTH",
            "SELECT ARRAY_LENGTH(ARRAY_AGG(id)) FROM shop.customers",
            "3",
        ),
        (
            "OFFSET / ORDINAL",
            "SELECT [10, 20, 30][OFFSET(0)], [10, 20, 30][ORDINAL(3)], [10][SAFE_OFFSET(5)]",
            "10|30|NULL",
        ),
        (
            "ARRAY(subquery)",
            "SELECT ARRAY(SELECT id FROM shop.customers ORDER BY id)",
            "[1,2,3]",
        ),
        (
            "repeated column",
            "SELECT tags FROM shop.events WHERE id = 1",
            "[a,b]",
        ),
        (
            "INT64 / STRING casts",
            "SELECT CAST('7' AS INT64) + 1, CAST(12 AS STRING)",
            "8|12",
        ),
        (
            "SAFE_CAST",
            "SELECT SAFE_CAST('x' AS INT64), SAFE_CAST('5' AS INT64)",
            "NULL|5",
        ),
        (
            "COUNTIF",
            "SELECT COUNTIF(score > 3.7) FROM shop.customers",
            "1",
        ),
        (
            "IF / IFNULL",
            "SELECT IF(id = 1, 'one', 'other'), IFNULL(email, '-') FROM shop.customers WHERE id = 3",
            "other|-",
        ),
        (
            "DATE_TRUNC (BigQuery order)",
            "SELECT CAST(DATE_TRUNC(signup_date, MONTH) AS DATE) FROM shop.customers WHERE id = 2",
            "2024-02-01",
        ),
        (
            "FORMAT_DATE",
            "SELECT FORMAT_DATE('%Y/%m', signup_date) FROM shop.customers WHERE id = 3",
            "2024/03",
        ),
        (
            "DATE literal + DATE_DIFF",
            "SELECT DATE_DIFF(DATE '2024-03-01', DATE '2024-02-01', DAY)",
            "29",
        ),
        (
            "DATE_ADD INTERVAL",
            "SELECT DATE_ADD(DATE '2024-01-31', INTERVAL 1 DAY)",
            "2024-02-01",
        ),
        (
            "TIMESTAMP_SUB",
            "SELECT TIMESTAMP_SUB(TIMESTAMP '2024-01-01 01:00:00+00', INTERVAL 1 HOUR)",
            "1704067200.000000",
        ),
        ("GENERATE_ARRAY", "SELECT GENERATE_ARRAY(1, 3)", "[1,2,3]"),
        (
            "REGEXP_CONTAINS raw string",
            "SELECT REGEXP_CONTAINS(email, r'@corp\\.') FROM shop.customers WHERE id = 2",
            "true",
        ),
        (
            "REGEXP_REPLACE replaces all",
            "SELECT REGEXP_REPLACE('a-b-c', '-', '+')",
            "a+b+c",
        ),
        (
            "REGEXP_EXTRACT group",
            "SELECT REGEXP_EXTRACT(email, r'@(.+)$') FROM shop.customers WHERE id = 1",
            "example.com",
        ),
        ("double-quoted string", "SELECT \"text\"", "text"),
        (
            "SPLIT + SAFE_OFFSET",
            "SELECT SPLIT(email, '@')[SAFE_OFFSET(1)] FROM shop.customers WHERE id = 1",
            "example.com",
        ),
        (
            "CONCAT is NULL on NULL",
            "SELECT CONCAT('a', NULL), CONCAT('a', 'b', 'c')",
            "NULL|abc",
        ),
        (
            "SHA256 + TO_HEX",
            "SELECT TO_HEX(SHA256('abc'))",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            "FROM_HEX + CAST AS BYTES",
            "SELECT TO_HEX(FROM_HEX('00ff')), TO_HEX(CAST('A' AS BYTES))",
            "00ff|41",
        ),
        (
            "SUBSTR negative + REPEAT + LENGTH",
            "SELECT CONCAT(REPEAT('*', GREATEST(LENGTH(name) - 4, 0)), SUBSTR(name, -4)) FROM shop.customers WHERE id = 1",
            "****Lima",
        ),
        (
            "masking: hash",
            "SELECT IF(email IS NULL, NULL, TO_HEX(SHA256(CONCAT(@__querygate_mask_key, CAST(email AS STRING))))) = TO_HEX(SHA256(CONCAT('k', 'ana@example.com'))) FROM shop.customers WHERE id = 1",
            "true",
        ),
        (
            "masking: email domain",
            "SELECT IF(email IS NULL, NULL, CONCAT('***@', IFNULL(SPLIT(email, '@')[SAFE_OFFSET(1)], ''))) FROM shop.customers ORDER BY id",
            "***@example.com;***@corp.example;NULL",
        ),
        (
            "named parameter",
            "SELECT name FROM shop.customers WHERE id = @id",
            "Bo Chen",
        ),
        (
            "back-ticked parameter",
            "SELECT name FROM shop.customers WHERE id = @`id`",
            "Bo Chen",
        ),
        (
            "IN UNNEST",
            "SELECT name FROM shop.customers WHERE id IN UNNEST([1, 3]) ORDER BY id",
            "Ana Lima;Cy Diaz",
        ),
        (
            "INFORMATION_SCHEMA.COLUMNS",
            "SELECT data_type FROM shop.INFORMATION_SCHEMA.COLUMNS WHERE table_name = 'events' AND column_name = 'tags'",
            "ARRAY<STRING>",
        ),
        (
            "WITH + window",
            "WITH s AS (SELECT id, score FROM shop.customers) SELECT id, RANK() OVER (ORDER BY score DESC) FROM s WHERE score IS NOT NULL ORDER BY id",
            "1|2;2|1",
        ),
        (
            "TO_JSON_STRING",
            "SELECT TO_JSON_STRING(STRUCT(1 AS a))",
            "{\"a\":1}",
        ),
        (
            "bytes literal",
            "SELECT TO_HEX(b'AB'), IF(name IS NULL, NULL, b'') = b'' FROM shop.customers WHERE id = 1",
            "4142|true",
        ),
        (
            "NUMERIC",
            "SELECT CAST('1.25' AS NUMERIC) * 2",
            "2.500000000",
        ),
        (
            "timestamp column from NDJSON",
            "SELECT UNIX_SECONDS(CAST(seen_at AS TIMESTAMP)) FROM shop.events WHERE id = 1",
            "1704448800",
        ),
        // Refused, by name.
        (
            "unknown table",
            "SELECT * FROM shop.nope",
            "error notFound: Not found: Table demo:shop.nope",
        ),
        (
            "other project",
            "SELECT * FROM `elsewhere.shop.customers`",
            "error notFound",
        ),
        (
            "file function",
            "SELECT read_text('/etc/passwd')",
            "error invalidQuery: querygate's local engine does not support the function READ_TEXT",
        ),
        (
            "table function",
            "SELECT * FROM read_csv('/etc/passwd')",
            "error invalidQuery",
        ),
        (
            "quoted file as table",
            "SELECT * FROM '/etc/passwd'",
            "error",
        ),
        (
            "settings function",
            "SELECT current_setting('threads')",
            "error invalidQuery",
        ),
        (
            "write",
            "INSERT INTO shop.customers (id) VALUES (9)",
            "error accessDenied: querygate's local engine is read-only: INSERT",
        ),
        (
            "DDL",
            "CREATE TABLE shop.x AS SELECT 1",
            "error accessDenied",
        ),
        ("script", "SELECT 1; SELECT 2", "error invalidQuery"),
        ("pragma", "PRAGMA version", "error"),
        (
            "SAFE. prefix",
            "SELECT SAFE.SUBSTR('a', 1)",
            "error invalidQuery",
        ),
        (
            "UNNEST WITH OFFSET",
            "SELECT x, o FROM UNNEST([1]) AS x WITH OFFSET o",
            "error invalidQuery: querygate's local engine does not support UNNEST ... WITH OFFSET",
        ),
        (
            "syntax error",
            "SELEC 1",
            "error invalidQuery: Syntax error",
        ),
        (
            "runtime error",
            "SELECT CAST('x' AS INT64)",
            "error invalidQuery",
        ),
    ];
    let params = serde_json::json!([
        {"name": "id", "parameterType": {"type": "INT64"}, "parameterValue": {"value": "2"}},
        {"name": "__querygate_mask_key", "parameterType": {"type": "STRING"}, "parameterValue": {"value": "k"}},
    ]);
    let mut failures = Vec::new();
    for (name, sql, want) in cases {
        let got = run(&engine, sql, Some(params.clone()));
        let matches = if want.starts_with("error") {
            got.starts_with(want)
        } else {
            got == *want
        };
        if !matches {
            failures.push(format!(
                "{name}:\n    sql:  {sql}\n    want: {want}\n    got:  {got}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn results_page_with_tokens_and_dry_runs_estimate_without_running() {
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    let job = engine.run(&QueryRequest {
        sql: "SELECT x FROM UNNEST(GENERATE_ARRAY(1, 25)) AS x ORDER BY x".into(),
        ..Default::default()
    });
    let result = job.outcome.expect("ran");
    assert_eq!(result.total_rows, 25);
    let mut start = 0;
    let mut seen = Vec::new();
    loop {
        let page = engine
            .result_page(&result, start, Some(10), Format::default(), None)
            .expect("page");
        let rows: Vec<Json> = serde_json::from_slice(&page.rows).expect("rows");
        seen.extend(rows.iter().map(|r| text(&r["f"][0]["v"])));
        match page.next {
            Some(n) => start = n,
            None => break,
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(seen.first().map(String::as_str), Some("1"));
    assert_eq!(seen.last().map(String::as_str), Some("25"));

    let dry = engine.run(&QueryRequest {
        sql: "SELECT name FROM shop.customers".into(),
        dry_run: true,
        ..Default::default()
    });
    let all = engine.run(&QueryRequest {
        sql: "SELECT * FROM shop.customers".into(),
        dry_run: true,
        ..Default::default()
    });
    assert!(dry.outcome.is_ok() && all.outcome.is_ok());
    assert!(dry.bytes_processed > 0 && dry.bytes_processed < all.bytes_processed);
    assert!(engine.job(&dry.id).is_none(), "a dry run leaves no job");
}

/// Dry-run bytes count each column a query reads once, after DuckDB's projection pushdown: the
/// masking rewrite's derived table (which names every column) costs what the plain query does.
#[test]
fn estimates_count_the_columns_read_not_the_columns_named() {
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    let bytes = |sql: &str| {
        let job = engine.run(&QueryRequest {
            sql: sql.into(),
            dry_run: true,
            ..Default::default()
        });
        assert!(job.outcome.is_ok(), "{sql}: {:?}", job.outcome);
        job.bytes_processed
    };
    let name = bytes("SELECT name FROM shop.customers");
    let id_name = bytes("SELECT id, name FROM shop.customers");
    let all = bytes("SELECT * FROM shop.customers");
    assert!(0 < name && name < id_name && id_name < all);
    assert_eq!(
        bytes(
            "SELECT c.name FROM (SELECT id, name, UPPER(email) AS email, signup_date, score \
             FROM shop.customers AS __qg_src) AS c"
        ),
        name
    );
    // A table scanned twice is billed once for the union of its columns.
    assert_eq!(
        bytes("SELECT a.name FROM shop.customers a JOIN shop.customers b ON a.id = b.id"),
        id_name
    );
    // A column only filtered on is read too.
    assert!(bytes("SELECT name FROM shop.customers WHERE score > 1") > name);
}

#[test]
fn the_rest_surface_answers_like_bigquery() {
    use axum::http::Method;
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    let call = |m: Method, path: &str, q: Option<&str>, body: &str| {
        crate::rest::handle(&engine, &m, path, q, body.as_bytes())
            .map(|a| {
                let status = a.status.as_u16();
                let body: Json = serde_json::from_slice(&a.into_bytes()).expect("json");
                (status, body)
            })
            .unwrap_or_else(|e| (e.status(), e.envelope()))
    };
    let (s, t) = call(
        Method::GET,
        "/bigquery/v2/projects/demo/datasets/shop/tables/customers",
        None,
        "",
    );
    assert_eq!(s, 200);
    assert_eq!(t["numRows"], "3");
    assert_eq!(t["schema"]["fields"][0]["type"], "INTEGER");
    assert_eq!(t["schema"]["fields"][3]["type"], "DATE");
    let (s, q) = call(
        Method::POST,
        "/bigquery/v2/projects/demo/queries",
        None,
        r#"{"query": "SELECT id FROM shop.customers ORDER BY id", "useLegacySql": false, "maxResults": 2}"#,
    );
    assert_eq!(s, 200);
    assert_eq!(q["totalRows"], "3");
    assert_eq!(q["rows"].as_array().map(Vec::len), Some(2));
    let job = q["jobReference"]["jobId"]
        .as_str()
        .expect("job id")
        .to_string();
    let token = q["pageToken"].as_str().expect("token").to_string();
    let (s, rest) = call(
        Method::GET,
        &format!("/bigquery/v2/projects/demo/queries/{job}"),
        Some(&format!("pageToken={token}")),
        "",
    );
    assert_eq!(s, 200);
    assert_eq!(rest["rows"][0]["f"][0]["v"], "3");
    assert!(rest.get("pageToken").is_none());
    let (s, e) = call(
        Method::POST,
        "/bigquery/v2/projects/demo/queries",
        None,
        r#"{"query": "DROP TABLE shop.customers"}"#,
    );
    assert_eq!(s, 403);
    assert_eq!(e["error"]["errors"][0]["reason"], "accessDenied");
    let (s, e) = call(
        Method::DELETE,
        "/bigquery/v2/projects/demo/datasets/shop",
        None,
        "",
    );
    assert_eq!(
        (s, e["error"]["errors"][0]["reason"].as_str()),
        (403, Some("accessDenied"))
    );
    let (s, _) = call(
        Method::GET,
        "/bigquery/v2/projects/other/datasets",
        None,
        "",
    );
    assert_eq!(s, 404);
    let (s, d) = call(
        Method::POST,
        "/bigquery/v2/projects/demo/queries",
        None,
        r#"{"query": "SELECT email FROM shop.customers", "dryRun": true}"#,
    );
    assert_eq!(s, 200);
    assert!(d["totalBytesProcessed"].as_str().is_some_and(|b| b != "0"));
    assert!(d.get("rows").is_none());
    // A failed query job is a DONE job with its error, as BigQuery reports it.
    let (s, j) = call(
        Method::POST,
        "/bigquery/v2/projects/demo/jobs",
        None,
        r#"{"jobReference": {"jobId": "j1"}, "configuration": {"query": {"query": "SELECT nope FROM shop.customers"}}}"#,
    );
    assert_eq!(s, 200);
    assert_eq!(j["status"]["state"], "DONE");
    assert_eq!(j["status"]["errorResult"]["reason"], "invalidQuery");
    // A dry-run job (how the gateway estimates bytes) answers with the estimate, or the error.
    let (s, j) = call(
        Method::POST,
        "/bigquery/v2/projects/demo/jobs",
        None,
        r#"{"configuration": {"dryRun": true, "query": {"query": "SELECT name FROM shop.customers"}}}"#,
    );
    assert_eq!(s, 200);
    assert!(
        j["statistics"]["query"]["totalBytesProcessed"]
            .as_str()
            .is_some_and(|b| b != "0")
    );
    let (s, e) = call(
        Method::POST,
        "/bigquery/v2/projects/demo/jobs",
        None,
        r#"{"configuration": {"dryRun": true, "query": {"query": "SELECT nope FROM shop.customers"}}}"#,
    );
    assert_eq!(
        (s, e["error"]["errors"][0]["reason"].as_str()),
        (400, Some("invalidQuery"))
    );
}

#[test]
fn bad_requests_get_bigquery_errors_not_panics() {
    use axum::http::Method;
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    let cases: &[(Method, &str, Option<&str>, &str, u16)] = &[
        (
            Method::POST,
            "/bigquery/v2/projects/demo/queries",
            None,
            "not json",
            400,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/demo/queries",
            None,
            "{}",
            400,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/demo/queries",
            None,
            r#"{"query": 5}"#,
            400,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/demo/queries",
            None,
            r#"{"query": "SELECT 1", "useLegacySql": true}"#,
            400,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/demo/jobs",
            None,
            r#"{"configuration": {"load": {}}}"#,
            403,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/demo/jobs",
            None,
            r#"{"configuration": {"query": {"query": "SELECT 1", "destinationTable": {"tableId": "x"}}}}"#,
            403,
        ),
        (
            Method::GET,
            "/bigquery/v2/projects/demo/queries/nope",
            None,
            "",
            404,
        ),
        (
            Method::GET,
            "/bigquery/v2/projects/demo/queries/nope",
            Some("pageToken=%ZZ"),
            "",
            404,
        ),
        (
            Method::GET,
            "/bigquery/v2/projects/demo/datasets/shop/tables/customers/data",
            Some("pageToken=abc"),
            "",
            400,
        ),
        (
            Method::GET,
            "/bigquery/v2/projects/demo/datasets/shop/tables/customers/data",
            Some("maxResults=-1"),
            "",
            400,
        ),
        (
            Method::GET,
            "/bigquery/v2/projects/demo/datasets/shop/tables/nope",
            None,
            "",
            404,
        ),
        (
            Method::GET,
            "/bigquery/v2/projects/demo/datasets/nope",
            None,
            "",
            404,
        ),
        (Method::GET, "/elsewhere", None, "", 404),
        (
            Method::PATCH,
            "/bigquery/v2/projects/demo/datasets/shop/tables/customers",
            None,
            "{}",
            403,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/demo/queries",
            None,
            r#"{"query": "SELECT @x", "queryParameters": [{"name": "x", "parameterType": {"type": "GEOGRAPHY"}, "parameterValue": {"value": "POINT(1 1)"}}]}"#,
            400,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/demo/queries",
            None,
            r#"{"query": "SELECT @missing"}"#,
            400,
        ),
    ];
    for (method, path, query, body, want) in cases {
        let got = match crate::rest::handle(&engine, method, path, *query, body.as_bytes()) {
            Ok(a) => a.status.as_u16(),
            Err(e) => {
                let env = e.envelope();
                assert_eq!(env["error"]["code"], *want, "{method} {path} {body}: {env}");
                assert!(env["error"]["errors"][0]["reason"].is_string());
                e.status()
            }
        };
        assert_eq!(got, *want, "{method} {path} {query:?} {body}");
    }
}

/// A REST call as the gateway makes it: the status and the JSON body (or error envelope).
fn rest(
    engine: &Engine,
    method: axum::http::Method,
    path: &str,
    query: Option<&str>,
    body: &str,
) -> (u16, Json) {
    crate::rest::handle(engine, &method, path, query, body.as_bytes())
        .map(|a| {
            let status = a.status.as_u16();
            let body: Json = serde_json::from_slice(&a.into_bytes()).expect("json");
            (status, body)
        })
        .unwrap_or_else(|e| (e.status(), e.envelope()))
}

/// jobs.query with `body` (JSON fields besides `useLegacySql`): rows as `a|b;c|d`, or
/// `error <reason>: <message>`.
fn query_rows(engine: &Engine, body: Json) -> String {
    let mut body = body;
    body["useLegacySql"] = Json::Bool(false);
    let (status, answer) = rest(
        engine,
        axum::http::Method::POST,
        "/bigquery/v2/projects/demo/queries",
        None,
        &body.to_string(),
    );
    if status != 200 {
        return format!(
            "error {}: {}",
            answer["error"]["errors"][0]["reason"]
                .as_str()
                .unwrap_or("?"),
            answer["error"]["message"].as_str().unwrap_or("?")
        );
    }
    rows_text(&answer)
}

fn rows_text(answer: &Json) -> String {
    answer["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    r["f"]
                        .as_array()
                        .expect("cells")
                        .iter()
                        .map(|c| text(&c["v"]))
                        .collect::<Vec<_>>()
                        .join("|")
                })
                .collect::<Vec<_>>()
                .join(";")
        })
        .unwrap_or_default()
}

fn error_reason(answer: &Json) -> &str {
    answer["error"]["errors"][0]["reason"]
        .as_str()
        .unwrap_or("")
}

/// tabledata.list's `selectedFields` returns exactly the named top-level columns, in the order
/// named (the Python client reads the cells under those names), on configured tables and on
/// query results; a name that is no column is `invalid`.
#[test]
fn selected_fields_are_the_named_columns_in_the_order_named() {
    use axum::http::Method;
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    let data = "/bigquery/v2/projects/demo/datasets/shop/tables/customers/data";
    let (s, page) = rest(
        &engine,
        Method::GET,
        data,
        Some("selectedFields=email,id"),
        "",
    );
    assert_eq!(s, 200, "{page}");
    assert_eq!(
        rows_text(&page),
        "ana@example.com|1;bo@corp.example|2;NULL|3"
    );
    assert_eq!(page["totalRows"], "3");
    // Any case, each column once (the gateway masks cells by this reading), spaces trimmed,
    // paged as without a selection.
    let (s, page) = rest(
        &engine,
        Method::GET,
        data,
        Some("selectedFields=SCORE%2C%20name,score&maxResults=2"),
        "",
    );
    assert_eq!(s, 200, "{page}");
    assert_eq!(rows_text(&page), "3.5|Ana Lima;4|Bo Chen");
    assert_eq!(page["pageToken"], "2");
    let (_, page) = rest(
        &engine,
        Method::GET,
        data,
        Some("selectedFields=score,name&pageToken=2"),
        "",
    );
    assert_eq!(rows_text(&page), "NULL|Cy Diaz");
    // Nested and repeated columns keep their shape.
    let (_, page) = rest(
        &engine,
        Method::GET,
        "/bigquery/v2/projects/demo/datasets/shop/tables/events/data",
        Some("selectedFields=tags,id"),
        "",
    );
    assert_eq!(rows_text(&page), "[a,b]|1;[]|2");
    for bad in ["selectedFields=id,nope", "selectedFields=tags.x"] {
        let (s, e) = rest(&engine, Method::GET, data, Some(bad), "");
        assert_eq!((s, error_reason(&e)), (400, "invalid"), "{bad}: {e}");
    }
    // An empty selection is every column.
    let (_, page) = rest(
        &engine,
        Method::GET,
        data,
        Some("selectedFields=&maxResults=1"),
        "",
    );
    assert_eq!(
        rows_text(&page),
        "1|Ana Lima|ana@example.com|2024-01-05|3.5"
    );

    // A query's result table, read with tabledata.list as clients do with a job's
    // destinationTable.
    let (_, q) = rest(
        &engine,
        Method::POST,
        "/bigquery/v2/projects/demo/queries",
        None,
        r#"{"query": "SELECT id, name, id * 10 AS tens FROM shop.customers ORDER BY id", "useLegacySql": false}"#,
    );
    let job = q["jobReference"]["jobId"].as_str().expect("job");
    let (_, j) = rest(
        &engine,
        Method::GET,
        &format!("/bigquery/v2/projects/demo/jobs/{job}"),
        None,
        "",
    );
    let table = j["configuration"]["query"]["destinationTable"]["tableId"]
        .as_str()
        .expect("destination");
    let (s, page) = rest(
        &engine,
        Method::GET,
        &format!("/bigquery/v2/projects/demo/datasets/_results/tables/{table}/data"),
        Some("selectedFields=tens,id&startIndex=1"),
        "",
    );
    assert_eq!(s, 200, "{page}");
    assert_eq!(rows_text(&page), "20|2;30|3");

    // tables.get's selectedFields narrows the schema the same way.
    let (s, t) = rest(
        &engine,
        Method::GET,
        "/bigquery/v2/projects/demo/datasets/shop/tables/customers",
        Some("selectedFields=score,id"),
        "",
    );
    assert_eq!(s, 200);
    let names: Vec<&str> = t["schema"]["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert_eq!(names, ["score", "id"]);
}

/// `dataset.INFORMATION_SCHEMA.TABLES/COLUMNS` (and `region-us.`, project-qualified, back-ticked,
/// any case) are views of the configured tables, with BigQuery's columns and GoogleSQL types.
#[test]
fn information_schema_describes_the_configured_tables() {
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    let q = |sql: &str| query_rows(&engine, serde_json::json!({ "query": sql }));
    let cases: &[(&str, &str)] = &[
        (
            "SELECT table_catalog, table_schema, table_name, table_type FROM shop.INFORMATION_SCHEMA.TABLES ORDER BY table_name",
            "demo|shop|customers|BASE TABLE;demo|shop|events|BASE TABLE",
        ),
        (
            "SELECT column_name, ordinal_position, is_nullable, data_type, is_partitioning_column \
             FROM `demo.shop.INFORMATION_SCHEMA.COLUMNS` WHERE table_name = 'customers' ORDER BY ordinal_position",
            "id|1|YES|INT64|NO;name|2|YES|STRING|NO;email|3|YES|STRING|NO;\
             signup_date|4|YES|DATE|YES;score|5|YES|FLOAT64|NO",
        ),
        (
            "SELECT column_name, is_nullable, data_type FROM shop.information_schema.columns \
             WHERE table_name = 'events' ORDER BY ordinal_position",
            "id|YES|INT64;tags|NO|ARRAY<STRING>;seen_at|YES|TIMESTAMP",
        ),
        (
            "SELECT count(*) FROM `region-us`.INFORMATION_SCHEMA.TABLES",
            "2",
        ),
        (
            "SELECT count(*) FROM region-us.INFORMATION_SCHEMA.COLUMNS",
            "8",
        ),
        (
            "SELECT count(*) FROM `demo`.`region-us`.INFORMATION_SCHEMA.TABLES",
            "2",
        ),
        (
            "SELECT schema_name, location FROM `region-us.INFORMATION_SCHEMA.SCHEMATA`",
            "shop|US",
        ),
        // The path's last part is its implicit alias; explicit aliases, joins, CTEs work.
        (
            "SELECT TABLES.table_name FROM shop.INFORMATION_SCHEMA.TABLES WHERE TABLES.table_name = 'events'",
            "events",
        ),
        (
            "SELECT `t`.table_name FROM shop.INFORMATION_SCHEMA.TABLES AS `t` WHERE t.table_name = 'events'",
            "events",
        ),
        (
            "WITH t AS (SELECT table_name FROM shop.INFORMATION_SCHEMA.TABLES) \
             SELECT c.table_name, count(*) FROM t JOIN shop.INFORMATION_SCHEMA.COLUMNS AS c \
             ON c.table_name = t.table_name GROUP BY 1 ORDER BY 1",
            "customers|5;events|3",
        ),
        (
            "SELECT STARTS_WITH(ddl, 'CREATE TABLE `demo.shop.customers`'), ddl LIKE '%signup_date DATE%', \
             creation_time IS NOT NULL FROM shop.INFORMATION_SCHEMA.TABLES WHERE table_name = 'customers'",
            "true|true|true",
        ),
        (
            "SELECT count(*) FROM shop.customers WHERE 'email' IN \
             (SELECT column_name FROM shop.INFORMATION_SCHEMA.COLUMNS)",
            "3",
        ),
        // Refused: what the source does not have, views not served, the engine's own tables.
        (
            "SELECT * FROM nope.INFORMATION_SCHEMA.TABLES",
            "error notFound: Not found: Dataset demo:nope",
        ),
        (
            "SELECT * FROM `region-eu`.INFORMATION_SCHEMA.TABLES",
            "error notFound",
        ),
        (
            "SELECT * FROM `other.shop.INFORMATION_SCHEMA.TABLES`",
            "error notFound",
        ),
        (
            "SELECT * FROM `region-us`.INFORMATION_SCHEMA.JOBS",
            "error invalidQuery: querygate's local engine serves INFORMATION_SCHEMA.TABLES",
        ),
        (
            "SELECT * FROM INFORMATION_SCHEMA.TABLES",
            "error invalidQuery: Table name \"INFORMATION_SCHEMA.TABLES\" missing dataset",
        ),
        (
            "SELECT * FROM _qg_information_schema.tables",
            "error notFound",
        ),
    ];
    let mut failures = Vec::new();
    for (sql, want) in cases {
        let got = q(sql);
        let ok = if want.starts_with("error") {
            got.starts_with(want)
        } else {
            got == *want
        };
        if !ok {
            failures.push(format!("{sql}\n    want: {want}\n    got:  {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // With a default dataset, the bare view is that dataset's.
    assert_eq!(
        query_rows(
            &engine,
            serde_json::json!({
                "query": "SELECT count(*) FROM INFORMATION_SCHEMA.TABLES",
                "defaultDataset": {"projectId": "demo", "datasetId": "shop"},
            })
        ),
        "2"
    );
    // Result schema: BigQuery's column types; a dry run answers too.
    let (s, a) = rest(
        &engine,
        axum::http::Method::POST,
        "/bigquery/v2/projects/demo/queries",
        None,
        r#"{"query": "SELECT table_name, creation_time, ddl FROM shop.INFORMATION_SCHEMA.TABLES", "useLegacySql": false}"#,
    );
    assert_eq!(s, 200, "{a}");
    assert_eq!(a["schema"]["fields"][1]["type"], "TIMESTAMP");
    assert_eq!(a["schema"]["fields"][2]["type"], "STRING");
    let (s, d) = rest(
        &engine,
        axum::http::Method::POST,
        "/bigquery/v2/projects/demo/queries",
        None,
        r#"{"query": "SELECT * FROM shop.INFORMATION_SCHEMA.COLUMNS", "dryRun": true}"#,
    );
    assert_eq!(s, 200, "{d}");
    assert!(
        d["schema"]["fields"]
            .as_array()
            .is_some_and(|f| f.len() > 10)
    );
}

/// Tables (and datasets) report `creationTime` and `lastModifiedTime`: the oldest and newest
/// modification times of their files, in ms since the epoch, as strings.
#[test]
fn tables_report_their_files_times() {
    use axum::http::Method;
    use std::time::{Duration, UNIX_EPOCH};
    let dir = TempDir::new();
    let orders = dir.0.join("orders");
    std::fs::create_dir_all(&orders).expect("dir");
    for (name, ms) in [
        ("a.csv", 1_700_000_000_123u64),
        ("b.csv", 1_710_000_000_456),
    ] {
        let path = orders.join(name);
        std::fs::write(&path, "id,amount\n1,2.5\n").expect("write");
        let f = std::fs::File::options()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_modified(UNIX_EPOCH + Duration::from_millis(ms))
            .expect("mtime");
    }
    let engine = Engine::open(
        "demo",
        &[crate::engine::TableSpec {
            dataset: "shop".into(),
            table: "orders".into(),
            pattern: orders.join("*.csv"),
        }],
    )
    .expect("engine");
    let (s, t) = rest(
        &engine,
        Method::GET,
        "/bigquery/v2/projects/demo/datasets/shop/tables/orders",
        None,
        "",
    );
    assert_eq!(s, 200);
    assert_eq!(t["creationTime"], "1700000000123");
    assert_eq!(t["lastModifiedTime"], "1710000000456");
    let (_, list) = rest(
        &engine,
        Method::GET,
        "/bigquery/v2/projects/demo/datasets/shop/tables",
        None,
        "",
    );
    assert_eq!(list["tables"][0]["creationTime"], "1700000000123");
    assert_eq!(list["tables"][0]["lastModifiedTime"], "1710000000456");
    let (_, d) = rest(
        &engine,
        Method::GET,
        "/bigquery/v2/projects/demo/datasets/shop",
        None,
        "",
    );
    assert_eq!(d["creationTime"], "1700000000123");
    assert_eq!(
        query_rows(
            &engine,
            serde_json::json!({"query": "SELECT UNIX_MILLIS(creation_time) FROM shop.INFORMATION_SCHEMA.TABLES"})
        ),
        "1700000000123"
    );
    // A query's result table: its job's times.
    let (_, q) = rest(
        &engine,
        Method::POST,
        "/bigquery/v2/projects/demo/queries",
        None,
        r#"{"query": "SELECT 1 AS x"}"#,
    );
    let job = q["jobReference"]["jobId"].as_str().expect("job");
    let (_, j) = rest(
        &engine,
        Method::GET,
        &format!("/bigquery/v2/projects/demo/jobs/{job}"),
        None,
        "",
    );
    let table = j["configuration"]["query"]["destinationTable"]["tableId"]
        .as_str()
        .expect("destination");
    let (s, r) = rest(
        &engine,
        Method::GET,
        &format!("/bigquery/v2/projects/demo/datasets/_results/tables/{table}"),
        None,
        "",
    );
    assert_eq!(s, 200);
    assert_eq!(r["creationTime"], j["statistics"]["creationTime"]);
}

/// ARRAY query parameters: `UNNEST(@arr)` in FROM, `x IN UNNEST(@arr)` and `NOT IN`, typed
/// elements, an empty array; `IN UNNEST(column)` too.
#[test]
fn array_parameters_unnest_and_in_unnest() {
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    let params = serde_json::json!([
        {"name": "ids", "parameterType": {"type": "ARRAY", "arrayType": {"type": "INT64"}},
         "parameterValue": {"arrayValues": [{"value": "1"}, {"value": "3"}]}},
        {"name": "names", "parameterType": {"type": "ARRAY", "arrayType": {"type": "STRING"}},
         "parameterValue": {"arrayValues": [{"value": "b"}, {"value": "a"}]}},
        {"name": "none", "parameterType": {"type": "ARRAY", "arrayType": {"type": "INT64"}},
         "parameterValue": {"arrayValues": []}},
        {"name": "days", "parameterType": {"type": "ARRAY", "arrayType": {"type": "DATE"}},
         "parameterValue": {"arrayValues": [{"value": "2024-02-11"}]}},
    ]);
    let cases: &[(&str, &str)] = &[
        ("SELECT x FROM UNNEST(@names) AS x ORDER BY x", "a;b"),
        ("SELECT n FROM UNNEST(@ids) n ORDER BY n DESC", "3;1"),
        (
            "SELECT name FROM shop.customers WHERE id IN UNNEST(@ids) ORDER BY id",
            "Ana Lima;Cy Diaz",
        ),
        (
            "SELECT name FROM shop.customers WHERE id NOT IN UNNEST(@ids)",
            "Bo Chen",
        ),
        (
            "SELECT count(*) FROM shop.customers WHERE id IN UNNEST(@none)",
            "0",
        ),
        (
            "SELECT name FROM shop.customers WHERE signup_date IN UNNEST(@days)",
            "Bo Chen",
        ),
        (
            "SELECT c.name FROM shop.customers c JOIN UNNEST(@ids) AS i ON c.id = i ORDER BY c.name",
            "Ana Lima;Cy Diaz",
        ),
        ("SELECT id FROM shop.events WHERE 'a' IN UNNEST(tags)", "1"),
        ("SELECT ARRAY_LENGTH(@names), @ids[OFFSET(1)]", "2|3"),
    ];
    let mut failures = Vec::new();
    for (sql, want) in cases {
        let got = query_rows(
            &engine,
            serde_json::json!({"query": sql, "parameterMode": "NAMED", "queryParameters": params}),
        );
        if got != *want {
            failures.push(format!("{sql}\n    want: {want}\n    got:  {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Positional parameters (`parameterMode: POSITIONAL`, `?` markers): the n-th marker of the
/// text takes the n-th value; `?` in a string is no marker; too few values, or markers mixed
/// with named parameters, are errors.
#[test]
fn positional_parameters_bind_in_text_order() {
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    let run = |sql: &str, values: &[(&str, &str)]| {
        let params: Vec<Json> = values
            .iter()
            .map(|(ty, v)| {
                serde_json::json!({"parameterType": {"type": ty}, "parameterValue": {"value": v}})
            })
            .collect();
        query_rows(
            &engine,
            serde_json::json!({"query": sql, "parameterMode": "POSITIONAL", "queryParameters": params}),
        )
    };
    assert_eq!(
        run(
            "SELECT name FROM shop.customers WHERE id = ? OR id = ? ORDER BY id",
            &[("INT64", "3"), ("INT64", "1")]
        ),
        "Ana Lima;Cy Diaz"
    );
    assert_eq!(
        run(
            "SELECT ?, '?', x FROM UNNEST([?, ?]) AS x WHERE x > ? ORDER BY x LIMIT ?",
            &[
                ("STRING", "first"),
                ("INT64", "10"),
                ("INT64", "20"),
                ("INT64", "15"),
                ("INT64", "5")
            ]
        ),
        "first|?|20"
    );
    assert_eq!(
        run(
            "WITH s AS (SELECT ? AS a) SELECT a, ? FROM s",
            &[("STRING", "x"), ("STRING", "y")]
        ),
        "x|y"
    );
    assert!(
        run("SELECT ?, ?", &[("INT64", "1")]).starts_with("error invalidQuery"),
        "too few values"
    );
    let mixed = query_rows(
        &engine,
        serde_json::json!({"query": "SELECT ?, @a", "queryParameters": [
            {"parameterType": {"type": "INT64"}, "parameterValue": {"value": "1"}},
            {"name": "a", "parameterType": {"type": "INT64"}, "parameterValue": {"value": "2"}},
        ]}),
    );
    assert!(mixed.starts_with("error invalidQuery"), "{mixed}");
}

/// jobs.list pages with `maxResults` and `pageToken`, newest first; a page token stays valid
/// when newer jobs arrive; `stateFilter` (all jobs here are DONE).
#[test]
fn jobs_list_pages() {
    use axum::http::Method;
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    for id in ["j1", "j2", "j3"] {
        let body = serde_json::json!({
            "jobReference": {"jobId": id},
            "configuration": {"query": {"query": "SELECT 1", "useLegacySql": false}},
        });
        let (s, _) = rest(
            &engine,
            Method::POST,
            "/bigquery/v2/projects/demo/jobs",
            None,
            &body.to_string(),
        );
        assert_eq!(s, 200);
    }
    let ids = |list: &Json| -> Vec<String> {
        list["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .filter_map(|j| j["jobReference"]["jobId"].as_str().map(str::to_string))
            .collect()
    };
    let jobs = "/bigquery/v2/projects/demo/jobs";
    let (s, first) = rest(&engine, Method::GET, jobs, Some("maxResults=2"), "");
    assert_eq!(s, 200);
    assert_eq!(ids(&first), ["j3", "j2"]);
    let token = first["nextPageToken"].as_str().expect("token").to_string();
    // A newer job does not shift the next page.
    let (s, _) = rest(
        &engine,
        Method::POST,
        jobs,
        None,
        r#"{"jobReference": {"jobId": "j4"}, "configuration": {"query": {"query": "SELECT 2"}}}"#,
    );
    assert_eq!(s, 200);
    let (_, second) = rest(
        &engine,
        Method::GET,
        jobs,
        Some(&format!("maxResults=2&pageToken={token}")),
        "",
    );
    assert_eq!(ids(&second), ["j1"]);
    assert!(second.get("nextPageToken").is_none());
    let (_, all) = rest(&engine, Method::GET, jobs, None, "");
    assert_eq!(ids(&all), ["j4", "j3", "j2", "j1"]);
    let (_, running) = rest(
        &engine,
        Method::GET,
        jobs,
        Some("stateFilter=pending&stateFilter=running"),
        "",
    );
    assert_eq!(ids(&running), Vec::<String>::new());
    let (_, done) = rest(
        &engine,
        Method::GET,
        jobs,
        Some("stateFilter=done&maxResults=3"),
        "",
    );
    assert_eq!(ids(&done), ["j4", "j3", "j2"]);
    let (s, e) = rest(&engine, Method::GET, jobs, Some("pageToken=zz"), "");
    assert_eq!((s, error_reason(&e)), (400, "invalid"));
}

/// The Python DB-API layer writes parameters back-ticked (``@`id` ``); the engine reads them as
/// `@id`. And a carriage return ends a `--` comment, as BigQuery (and the gateway's analysis)
/// read it: the engine runs the statement the pipeline decided on.
#[test]
fn backticked_parameters_and_comment_ends_are_read_as_bigquery_does() {
    let dir = TempDir::new();
    let engine = engine_for_tests(&dir.0);
    let params = serde_json::json!([
        {"name": "id", "parameterType": {"type": "INT64"}, "parameterValue": {"value": "2"}},
        {"name": "e mail", "parameterType": {"type": "STRING"}, "parameterValue": {"value": "ana@example.com"}},
        {"name": "ids", "parameterType": {"type": "ARRAY", "arrayType": {"type": "INT64"}},
         "parameterValue": {"arrayValues": [{"value": "1"}, {"value": "2"}]}},
    ]);
    let q = |sql: &str| {
        query_rows(
            &engine,
            serde_json::json!({"query": sql, "queryParameters": params}),
        )
    };
    assert_eq!(
        q("SELECT name FROM shop.customers WHERE id = @`id`"),
        "Bo Chen"
    );
    assert_eq!(
        q(
            "SELECT id FROM shop.customers WHERE email = @`e mail` OR id IN UNNEST(@`ids`) ORDER BY id"
        ),
        "1;2"
    );
    assert_eq!(q("SELECT 1 AS a -- note\r, 2 AS b"), "1|2");
    assert_eq!(q("SELECT 1 AS a # note\r, 3 AS b"), "1|3");
}
