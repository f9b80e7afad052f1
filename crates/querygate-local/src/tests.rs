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
        .result_page(&result, 0, None, Format::default())
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
            .result_page(&result, start, Some(10), Format::default())
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
