//! Decode tests: each served method, each refused one, and bad input.

use super::*;

fn check(method: Method, path_and_query: &str, body: &str) -> (Request, Call) {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path_and_query, None),
    };
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer k1".parse().expect("header"));
    decode(WireRequest {
        method: &method,
        path,
        query,
        headers: &headers,
        body: Ok(Bytes::from(body.to_string())),
        peer: None,
        request_id: RequestId("r".into()),
    })
}

#[test]
fn jobs_query_decodes_statement_and_keeps_body() {
    let body = r#"{"query":"SELECT 1","useLegacySql":false,"requestId":"x"}"#;
    let (req, call) = check(
        Method::POST,
        "/bigquery/v2/projects/p/queries?prettyPrint=false",
        body,
    );
    assert_eq!(req.method, "jobs.query");
    assert_eq!(req.target, "p");
    assert_eq!(req.statement(), Some("SELECT 1"));
    assert_eq!(req.credential.as_ref().map(|s| s.expose()), Some("k1"));
    assert_eq!(call.body.as_deref(), Some(body.as_bytes()));
    assert_eq!(call.path, "/bigquery/v2/projects/p/queries");
    assert_eq!(call.query.as_deref(), Some("prettyPrint=false"));
}

#[test]
fn legacy_sql_is_flagged() {
    let (req, _) = check(
        Method::POST,
        "/bigquery/v2/projects/p/queries",
        r#"{"query":"SELECT 1"}"#,
    );
    assert!(matches!(
        req.action,
        Action::Query {
            dialect_problem: Some(_),
            ..
        }
    ));
    let (req, _) = check(
        Method::POST,
        "/bigquery/v2/projects/p/queries",
        r##"{"query":"#standardSQL\nSELECT 1"}"##,
    );
    assert!(matches!(
        req.action,
        Action::Query {
            dialect_problem: None,
            ..
        }
    ));
}

#[test]
fn jobs_insert_keeps_client_job_id_and_finds_destination() {
    let body = r#"{"jobReference":{"jobId":"my-job","projectId":"p"},"configuration":{"query":{"query":"SELECT 1","useLegacySql":false,"destinationTable":{"projectId":"p","datasetId":"d","tableId":"t"}}}}"#;
    let (req, call) = check(Method::POST, "/bigquery/v2/projects/p/jobs", body);
    assert_eq!(req.job_id.as_deref(), Some("my-job"));
    assert_eq!(
        call.body.as_deref(),
        Some(body.as_bytes()),
        "body forwarded unchanged"
    );
    assert!(matches!(req.action, Action::Query { destination: Some(ref d), .. } if d == "p.d.t"));
}

#[test]
fn jobs_insert_without_job_id_gets_one() {
    let body =
        r#"{"configuration":{"dryRun":true,"query":{"query":"SELECT 1","useLegacySql":false}}}"#;
    let (req, call) = check(Method::POST, "/bigquery/v2/projects/p/jobs", body);
    let id = req.job_id.expect("job id chosen");
    let sent: Value = serde_json::from_slice(&call.body.expect("body")).expect("json");
    assert_eq!(sent["jobReference"]["jobId"], id.as_str());
    assert!(matches!(req.action, Action::Query { dry_run: true, .. }));
}

#[test]
fn non_query_jobs_and_writes_are_other() {
    for (m, p, b, name) in [
        (
            Method::POST,
            "/bigquery/v2/projects/p/jobs",
            r#"{"configuration":{"load":{}}}"#,
            "jobs.insert",
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/jobs",
            r#"{"configuration":{"extract":{}}}"#,
            "jobs.insert",
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/datasets/d/tables/t/insertAll",
            "{}",
            "tabledata.insertAll",
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/datasets",
            "{}",
            "datasets.insert",
        ),
        (
            Method::DELETE,
            "/bigquery/v2/projects/p/datasets/d/tables/t",
            "",
            "tables.delete",
        ),
        (
            Method::PATCH,
            "/bigquery/v2/projects/p/datasets/d",
            "{}",
            "datasets.patch",
        ),
        (
            Method::POST,
            "/upload/bigquery/v2/projects/p/jobs?uploadType=multipart",
            "x",
            "jobs.insert",
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/datasets/d/tables/t:getIamPolicy",
            "{}",
            "iam.insert",
        ),
    ] {
        let (req, _) = check(m, p, b);
        assert!(
            matches!(req.action, Action::Other { .. }),
            "{p}: {:?}",
            req.action
        );
        assert_eq!(req.method, name, "{p}");
    }
}

#[test]
fn reads_decode_with_tables_and_jobs() {
    let (req, call) = check(
        Method::GET,
        "/bigquery/v2/projects/p/datasets/d/tables/t%2420240101/data?maxResults=2&access_token=leak",
        "",
    );
    assert_eq!(
        req.action,
        Action::ReadRows {
            table: "p.d.t$20240101".into(),
            result_table: false
        }
    );
    assert_eq!(
        call.query.as_deref(),
        Some("maxResults=2"),
        "credentials are never forwarded"
    );
    assert_eq!(
        call.path,
        "/bigquery/v2/projects/p/datasets/d/tables/t%2420240101/data"
    );
    let (req, _) = check(
        Method::GET,
        "/bigquery/v2/projects/p/datasets/_anon/tables/x/data",
        "",
    );
    assert!(matches!(
        req.action,
        Action::ReadRows {
            result_table: true,
            ..
        }
    ));
    let (req, _) = check(
        Method::GET,
        "/bigquery/v2/projects/p/queries/j1?pageToken=abc&fields=rows",
        "",
    );
    assert_eq!(
        req.action,
        Action::ReadJob {
            job_id: "j1".into()
        }
    );
    let (req, call) = check(
        Method::GET,
        "/bigquery/v2/projects/p/jobs?allUsers=true&maxResults=5",
        "",
    );
    assert_eq!(req.action, Action::ListJobs);
    assert_eq!(call.query.as_deref(), Some("maxResults=5"));
    // Node's BIGQUERY_EMULATOR_HOST form has no /bigquery/v2 prefix.
    let (req, call) = check(Method::GET, "/projects/p/datasets", "");
    assert_eq!(req.method, "datasets.list");
    assert_eq!(call.path, "/bigquery/v2/projects/p/datasets");
}

#[test]
fn bad_input_is_malformed_with_a_message() {
    for (m, p, b, status) in [
        (
            Method::POST,
            "/bigquery/v2/projects/p/queries",
            "{not json",
            400,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/queries",
            "[1,2]",
            400,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/queries",
            r#"{"useLegacySql":false}"#,
            400,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/queries",
            r#"{"query":5}"#,
            400,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/jobs",
            r#"{"jobReference":{}}"#,
            400,
        ),
        (Method::GET, "/nothing/here", "", 404),
        (Method::GET, "/", "", 404),
    ] {
        let (req, _) = check(m, p, b);
        match req.action {
            Action::Malformed { status: s, message } => {
                assert_eq!(s, status, "{p} {b}");
                assert!(!message.is_empty());
            }
            other => panic!("{p} {b}: {other:?}"),
        }
    }
}

#[test]
fn uploads_are_refused_but_named_with_their_job_and_table() {
    let body = "--b1\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n\
        {\"jobReference\":{\"jobId\":\"load-1\"},\"configuration\":{\"load\":{\"destinationTable\":\
        {\"projectId\":\"p\",\"datasetId\":\"d\",\"tableId\":\"t\"}}}}\r\n--b1\r\n\
        Content-Type: */*\r\n\r\n{\"a\":1}\r\n--b1--";
    let mut headers = HeaderMap::new();
    headers.insert(
        "content-type",
        "multipart/related; boundary=b1".parse().expect("ct"),
    );
    let (req, _) = decode(WireRequest {
        method: &Method::POST,
        path: "/upload/bigquery/v2/projects/p/jobs",
        query: Some("uploadType=multipart"),
        headers: &headers,
        body: Ok(Bytes::from(body)),
        peer: None,
        request_id: RequestId("r".into()),
    });
    assert_eq!(req.job_id.as_deref(), Some("load-1"));
    assert_eq!(
        req.action,
        Action::Other {
            what: "load jobs (loading into p.d.t)".into()
        }
    );
}

#[test]
fn the_session_comes_from_the_header_or_the_job_label() {
    let wire = |headers: &HeaderMap, path: &str, body: &str| {
        decode(WireRequest {
            method: &Method::POST,
            path,
            query: None,
            headers,
            body: Ok(Bytes::from(body.to_string())),
            peer: None,
            request_id: RequestId("r".into()),
        })
        .0
        .session
    };
    let none = HeaderMap::new();
    let mut named = HeaderMap::new();
    named.insert(SESSION, "run-1".parse().expect("header"));
    let query =
        r#"{"query":"SELECT 1","useLegacySql":false,"labels":{"querygate-session":"lbl-2"}}"#;
    let insert = r#"{"configuration":{"query":{"query":"SELECT 1","useLegacySql":false},"labels":{"querygate-session":"lbl-3"}}}"#;
    let queries = "/bigquery/v2/projects/p/queries";
    let jobs = "/bigquery/v2/projects/p/jobs";
    assert_eq!(wire(&named, queries, query).as_deref(), Some("run-1"));
    assert_eq!(wire(&none, queries, query).as_deref(), Some("lbl-2"));
    assert_eq!(wire(&none, jobs, insert).as_deref(), Some("lbl-3"));
    assert_eq!(wire(&none, queries, r#"{"query":"SELECT 1"}"#), None);
    assert_eq!(
        wire(&named, "/bigquery/v2/projects/p/datasets", "").as_deref(),
        Some("run-1")
    );
}

#[test]
fn inline_arrow_results_are_refused_with_what_to_do() {
    let (req, _) = check(
        Method::POST,
        "/bigquery/v2/projects/p/queries",
        r#"{"query":"SELECT email FROM d.t","useLegacySql":false,"queryResultsFormat":"ARROW"}"#,
    );
    match req.action {
        Action::Malformed { message, status } => {
            assert_eq!(status, 400);
            assert!(
                message.contains("ARROW") && message.contains("leave the option out"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}
