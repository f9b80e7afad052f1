//! Decode tests: each served method, each refused one, and bad input.

use super::*;
use querygate_core::Query;

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
        Action::Query(Query {
            dialect_problem: Some(_),
            ..
        })
    ));
    let (req, _) = check(
        Method::POST,
        "/bigquery/v2/projects/p/queries",
        r##"{"query":"#standardSQL\nSELECT 1"}"##,
    );
    assert!(matches!(
        req.action,
        Action::Query(Query {
            dialect_problem: None,
            ..
        })
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
    assert!(
        matches!(req.action, Action::Query(Query { destination: Some(ref d), .. }) if d == "p.d.t")
    );
}

#[test]
fn jobs_insert_without_job_id_gets_one() {
    let body =
        r#"{"configuration":{"dryRun":true,"query":{"query":"SELECT 1","useLegacySql":false}}}"#;
    let (req, call) = check(Method::POST, "/bigquery/v2/projects/p/jobs", body);
    let id = req.job_id.expect("job id chosen");
    let sent: Value = serde_json::from_slice(&call.body.expect("body")).expect("json");
    assert_eq!(sent["jobReference"]["jobId"], id.as_str());
    assert!(matches!(
        req.action,
        Action::Query(Query { dry_run: true, .. })
    ));
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
        Action::ReadTable {
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
        Action::ReadTable {
            result_table: true,
            ..
        }
    ));
    let (req, call) = check(
        Method::GET,
        "/bigquery/v2/projects/p/queries/j1?pageToken=abc&fields=rows",
        "",
    );
    assert_eq!(
        req.action,
        Action::Job(JobOp::Results {
            job_id: "j1".into()
        })
    );
    // A partial response could leave out `totalRows`, which a row limit is checked
    // against: the upstream answers in full.
    assert_eq!(call.query.as_deref(), Some("pageToken=abc"));
    let (req, call) = check(
        Method::GET,
        "/bigquery/v2/projects/p/jobs?allUsers=true&maxResults=5",
        "",
    );
    assert_eq!(req.action, Action::Job(JobOp::List));
    assert_eq!(call.query.as_deref(), Some("maxResults=5"));
    // Node's BIGQUERY_EMULATOR_HOST form has no /bigquery/v2 prefix.
    let (req, call) = check(Method::GET, "/projects/p/datasets", "");
    assert_eq!(req.method, "datasets.list");
    assert_eq!(call.path, "/bigquery/v2/projects/p/datasets");
}

#[test]
fn bad_input_is_malformed_with_a_message() {
    for (m, p, b, problem) in [
        (
            Method::POST,
            "/bigquery/v2/projects/p/queries",
            "{not json",
            Malformed::Invalid,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/queries",
            "[1,2]",
            Malformed::Invalid,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/queries",
            r#"{"useLegacySql":false}"#,
            Malformed::Invalid,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/queries",
            r#"{"query":5}"#,
            Malformed::Invalid,
        ),
        (
            Method::POST,
            "/bigquery/v2/projects/p/jobs",
            r#"{"jobReference":{}}"#,
            Malformed::Invalid,
        ),
        (Method::GET, "/nothing/here", "", Malformed::Unknown),
        (Method::GET, "/", "", Malformed::Unknown),
    ] {
        let (req, _) = check(m, p, b);
        match req.action {
            Action::Malformed {
                problem: got,
                message,
            } => {
                assert_eq!(got, problem, "{p} {b}");
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
        Action::Malformed { message, problem } => {
            assert_eq!(problem, Malformed::Invalid);
            assert!(
                message.contains("ARROW") && message.contains("leave the option out"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
}

fn malformed_message(req: &Request) -> &str {
    match &req.action {
        Action::Malformed {
            message,
            problem: Malformed::Invalid,
        } => message,
        other => panic!("expected an invalid Malformed, got {other:?}"),
    }
}

fn other_what(req: &Request) -> &str {
    match &req.action {
        Action::Other { what } => what,
        other => panic!("expected Other, got {other:?}"),
    }
}

#[test]
fn a_path_segment_that_decodes_to_structure_is_refused() {
    // `people%2Fdata` is a harmless tables.get to a reader that decodes once, and
    // tabledata.list of `people` to one that routes on the decoded path.
    for (path, shows) in [
        ("tables/people%2Fdata", "/"),
        ("tables/people%2fdata", "/"),
        ("tables/people%5Cdata", "\\\\"),
        ("tables/people%3Fx=1", "?"),
        ("tables/people%23x", "#"),
        ("tables/people%252Fdata", "%"),
        ("tables/people%25", "%"),
        ("tables/people%3Bv=1", ";"),
        ("tables/people;v=1", ";"),
        ("tables/people%00", "\\0"),
        ("tables/people%0A", "\\n"),
        ("tables/people%7F", "\\u{7f}"),
        ("tables/people%C2%85", "\\u{85}"),
        ("tables/%2E%2E", "dot segment"),
        ("tables/%2e", "dot segment"),
        ("tables/..", "dot segment"),
        ("tables/people%FF", "UTF-8"),
        ("tables/people%C3", "UTF-8"),
        ("tables/people%zz", "two hex digits"),
        ("tables/people%2", "two hex digits"),
        ("tables//people", "is empty"),
        ("tables/people/", "is empty"),
    ] {
        let full = format!("/bigquery/v2/projects/p/datasets/vault/{path}");
        let (req, call) = check(Method::GET, &full, "");
        let message = malformed_message(&req);
        assert!(message.contains(shows), "{path}: {message}");
        assert!(message.starts_with("Invalid path"), "{message}");
        assert_eq!(req.method, format!("GET {full}"), "{path}");
        assert_eq!(call.query, None);
    }
    // The same rules hold in every position and under every prefix.
    for path in [
        "/bigquery/v2/projects/p%2Fq/queries",
        "/projects/p/jobs/j%2F..",
        "/bigquery%2Fv2/projects/p/queries",
        "/upload/bigquery/v2/projects/p/jobs%3F",
    ] {
        let (req, _) = check(Method::POST, path, r#"{"query":"SELECT 1"}"#);
        assert!(
            malformed_message(&req).starts_with("Invalid path"),
            "{path}"
        );
    }
}

#[test]
fn dataset_table_and_job_ids_hold_no_dot_or_colon() {
    for path in [
        "/bigquery/v2/projects/p/datasets/vault.people/tables/x/data",
        "/bigquery/v2/projects/p/datasets/vault/tables/people.x",
        "/bigquery/v2/projects/p/jobs/a.b",
        "/bigquery/v2/projects/p/datasets/a:b/tables/t",
    ] {
        let (req, _) = check(Method::GET, path, "");
        assert!(
            malformed_message(&req).contains("is not a dataset, table or job id"),
            "{path}"
        );
    }
    // A custom method (`name:verb`) is refused and named; a project id may hold both.
    let (req, _) = check(
        Method::GET,
        "/bigquery/v2/projects/p/datasets/d/tables/t:getIamPolicy",
        "",
    );
    assert_eq!(req.method, "iam.get");
    assert!(other_what(&req).contains("IAM"));
    let (req, _) = check(
        Method::POST,
        "/bigquery/v2/projects/p/datasets/d:undelete",
        "{}",
    );
    assert_eq!(req.method, "custom");
    let (req, call) = check(
        Method::GET,
        "/bigquery/v2/projects/example.com:proj/datasets/d/tables/t",
        "",
    );
    assert_eq!(req.target, "example.com:proj");
    assert_eq!(req.method, "tables.get");
    assert_eq!(
        call.path,
        "/bigquery/v2/projects/example.com:proj/datasets/d/tables/t"
    );
}

#[test]
fn paths_are_forwarded_in_one_canonical_encoding() {
    for (sent, forwarded, table) in [
        ("t%2420240101", "t%2420240101", "p.d.t$20240101"),
        ("t$20240101", "t%2420240101", "p.d.t$20240101"),
        ("t%24%32%30240101", "t%2420240101", "p.d.t$20240101"),
        ("my%20table", "my%20table", "p.d.my table"),
        ("t%C3%A9", "t%C3%A9", "p.d.té"),
        ("té", "t%C3%A9", "p.d.té"),
        ("t%2D1", "t-1", "p.d.t-1"),
        ("t+1", "t%2B1", "p.d.t+1"),
        ("t@123", "t@123", "p.d.t@123"),
        ("%70eople", "people", "p.d.people"),
    ] {
        let (req, call) = check(
            Method::GET,
            &format!("/bigquery/v2/projects/p/datasets/d/tables/{sent}/data"),
            "",
        );
        assert_eq!(
            call.path,
            format!("/bigquery/v2/projects/p/datasets/d/tables/{forwarded}/data"),
            "{sent}"
        );
        assert_eq!(
            req.action,
            Action::ReadTable {
                table: table.into(),
                result_table: false
            },
            "{sent}"
        );
    }
    // Only a whole `/bigquery/v2` directory is the API root.
    let (req, _) = check(Method::POST, "/bigquery/v2projects/p/queries", "{}");
    assert!(matches!(
        req.action,
        Action::Malformed {
            problem: Malformed::Unknown,
            ..
        }
    ));
}

#[test]
fn the_query_string_is_read_once_and_forwarded_as_read() {
    let data = "/bigquery/v2/projects/p/datasets/d/tables/t/data";
    for (query, forwarded, selected) in [
        // A percent-encoded name is the name (the upstream decodes it too).
        ("selected%46ields=ssn", "selectedFields=ssn", Some("ssn")),
        // Google's front ends read a field's snake_case name as its JSON name.
        ("selected_fields=ssn", "selectedFields=ssn", Some("ssn")),
        ("selectedFields=a,b", "selectedFields=a%2Cb", Some("a,b")),
        ("selectedFields=a+b", "selectedFields=a%20b", Some("a b")),
        ("selectedFields=a%2Bb", "selectedFields=a%2Bb", Some("a+b")),
        (
            "maxResults=2&access%5Ftoken=leak&%6Bey=leak&oauth_token=leak",
            "maxResults=2",
            None,
        ),
        (
            "formatOptions.useInt64Timestamp=true&prettyPrint=false&&",
            "formatOptions.useInt64Timestamp=true&prettyPrint=false",
            None,
        ),
        (
            "format_options.use_int64_timestamp=true",
            "formatOptions.useInt64Timestamp=true",
            None,
        ),
        ("wrapIntegers=false&skipParsing=true", "", None),
        ("alt=json&$.xgafv=2", "alt=json&%24.xgafv=2", None),
    ] {
        let (req, call) = check(Method::GET, &format!("{data}?{query}"), "");
        assert!(
            matches!(req.action, Action::ReadTable { .. }),
            "{query}: {:?}",
            req.action
        );
        assert_eq!(call.query.as_deref().unwrap_or(""), forwarded, "{query}");
        assert_eq!(call.param("selectedFields").as_deref(), selected, "{query}");
    }
    let (req, call) = check(
        Method::GET,
        "/bigquery/v2/projects/p/jobs?all%55sers=true&maxResults=5",
        "",
    );
    assert_eq!(req.action, Action::Job(JobOp::List));
    assert_eq!(
        call.query.as_deref(),
        Some("maxResults=5"),
        "allUsers by its decoded name"
    );
    // stateFilter is repeated by definition: every value is forwarded.
    let (req, call) = check(
        Method::GET,
        "/bigquery/v2/projects/p/jobs?stateFilter=done&stateFilter=running",
        "",
    );
    assert_eq!(req.action, Action::Job(JobOp::List));
    assert_eq!(
        call.query.as_deref(),
        Some("stateFilter=done&stateFilter=running")
    );
}

#[test]
fn a_query_string_read_two_ways_is_refused() {
    let data = "/bigquery/v2/projects/p/datasets/d/tables/t/data";
    let results = "/bigquery/v2/projects/p/queries/j1";
    for (path, query, shows) in [
        (
            data,
            "selectedFields=id&selectedFields=ssn",
            "more than once",
        ),
        (
            data,
            "selectedFields=id&selected%46ields=ssn",
            "more than once",
        ),
        (
            data,
            "selectedFields=id&selected_fields=ssn",
            "more than once",
        ),
        (data, "maxResults=1&maxResults=100000", "more than once"),
        (data, "startIndex=0&start_index=5", "more than once"),
        (data, "access_token=a&accessToken=b", "more than once"),
        (results, "timeoutMs=1&timeoutMs=60000", "more than once"),
        (results, "pageToken=a&pageToken=b", "more than once"),
        (results, "location=US&location=EU", "more than once"),
        (
            "/bigquery/v2/projects/p/jobs",
            "allUsers=false&allUsers=true",
            "more than once",
        ),
        (data, "selectedFields=ssn;id", "`;`"),
        (data, "selectedFields=%zz", "two hex digits"),
        (data, "selectedFields=%FF", "UTF-8"),
        (data, "=ssn", "no parameter name"),
        (
            data,
            "selectedfields=ssn",
            "does not recognise the parameter `selectedfields`",
        ),
        (
            data,
            "view=FULL",
            "does not recognise the parameter `view` of tabledata.list",
        ),
        (
            data,
            "callback=f",
            "does not recognise the parameter `callback`",
        ),
        (data, "alt=proto", "alt=proto"),
        (results, "selectedFields=ssn", "does not recognise"),
        (
            "/bigquery/v2/projects/p/queries",
            "timeoutMs=1",
            "does not recognise",
        ),
    ] {
        let post = path.ends_with("/queries");
        let (req, _) = check(
            if post { Method::POST } else { Method::GET },
            &format!("{path}?{query}"),
            r#"{"query":"SELECT 1","useLegacySql":false}"#,
        );
        let message = malformed_message(&req);
        assert!(
            message.starts_with("Invalid query string"),
            "{query}: {message}"
        );
        assert!(message.contains(shows), "{query}: {message}");
    }
}

#[test]
fn the_poll_wait_reads_the_same_timeout_ms_as_the_upstream() {
    let wait = |q: &str| {
        check(
            Method::GET,
            &format!("/bigquery/v2/projects/p/queries/j1{q}"),
            "",
        )
        .0
        .wait
    };
    let secs = std::time::Duration::from_secs;
    assert_eq!(wait(""), Some(secs(10)));
    assert_eq!(wait("?timeoutMs=2000"), Some(secs(2)));
    assert_eq!(wait("?timeout%4Ds=2000"), Some(secs(2)));
    assert_eq!(wait("?timeout_ms=3000"), Some(secs(3)));
    assert_eq!(wait("?timeoutMs=600000"), Some(secs(10)));
}

#[test]
fn dry_run_is_read_only_where_bigquery_reads_it() {
    let jobs = "/bigquery/v2/projects/p/jobs";
    let queries = "/bigquery/v2/projects/p/queries";
    let dry = |req: &Request| match req.action {
        Action::Query(Query { dry_run, .. }) => dry_run,
        ref other => panic!("{other:?}"),
    };
    // BigQuery reads `configuration.dryRun`; inside `configuration.query` it means nothing
    // to BigQuery, which would run the job for real.
    let (req, _) = check(
        Method::POST,
        jobs,
        r#"{"configuration":{"query":{"query":"SELECT 1","useLegacySql":false,"dryRun":true}}}"#,
    );
    let message = malformed_message(&req);
    assert!(
        message.contains("querygate does not recognise `configuration.query.dryRun`; remove it")
            && message.contains("`configuration.dryRun`"),
        "{message}"
    );
    let (req, _) = check(
        Method::POST,
        jobs,
        r#"{"configuration":{"dryRun":true,"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
    );
    assert!(dry(&req));
    let (req, _) = check(
        Method::POST,
        jobs,
        r#"{"configuration":{"dryRun":false,"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
    );
    assert!(!dry(&req));
    // A top-level `dryRun` is jobs.query's; a job has none.
    let (req, _) = check(
        Method::POST,
        queries,
        r#"{"query":"SELECT 1","useLegacySql":false,"dryRun":true}"#,
    );
    assert!(dry(&req));
    let (req, _) = check(
        Method::POST,
        jobs,
        r#"{"dryRun":true,"configuration":{"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
    );
    assert!(malformed_message(&req).contains("`dryRun`"));
    // Only true or false: what else a server makes of "true" the gateway cannot know.
    for body in [
        r#"{"query":"SELECT 1","useLegacySql":false,"dryRun":"true"}"#,
        r#"{"query":"SELECT 1","useLegacySql":false,"dryRun":1}"#,
    ] {
        let (req, _) = check(Method::POST, queries, body);
        assert!(
            malformed_message(&req).contains("must be true or false"),
            "{body}"
        );
    }
    let (req, _) = check(
        Method::POST,
        jobs,
        r#"{"configuration":{"dryRun":"yes","query":{"query":"SELECT 1","useLegacySql":false}}}"#,
    );
    assert!(malformed_message(&req).contains("`configuration.dryRun` must be true or false"));
}

#[test]
fn fields_bigquery_does_not_define_are_refused_by_name() {
    let jobs = "/bigquery/v2/projects/p/jobs";
    let queries = "/bigquery/v2/projects/p/queries";
    for (path, body, shows) in [
        (
            jobs,
            r#"{"configuration":{"query":{"query":"SELECT 1","useLegacySql":false,"foo":1}}}"#,
            "querygate does not recognise `configuration.query.foo`; remove it",
        ),
        (
            jobs,
            r#"{"configuration":{"foo":1,"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
            "`configuration.foo`",
        ),
        (
            jobs,
            r#"{"foo":1,"configuration":{"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
            "`foo`",
        ),
        (
            queries,
            r#"{"query":"SELECT 1","useLegacySql":false,"foo":1}"#,
            "querygate does not recognise `foo`; remove it",
        ),
        // snake_case names: Google's front ends read them, so the gateway must too, or not at all.
        (
            queries,
            r#"{"query":"SELECT 1","useLegacySql":false,"dry_run":true}"#,
            "`dry_run`",
        ),
        (
            queries,
            r#"{"query":"SELECT 1","use_legacy_sql":false}"#,
            "BigQuery's JSON names this field `useLegacySql`",
        ),
        (
            queries,
            r#"{"query":"SELECT 1","useLegacySql":false,"default_dataset":{"datasetId":"vault"}}"#,
            "`default_dataset`",
        ),
        (
            queries,
            r#"{"query":"SELECT 1","useLegacySql":false,"defaultDataset":{"dataset_id":"vault"}}"#,
            "`defaultDataset.dataset_id`",
        ),
        (
            jobs,
            r#"{"configuration":{"query":{"query":"SELECT 1","useLegacySql":false,"destinationTable":{"projectId":"p","datasetId":"d","tableId":"t","table_id":"u"}}}}"#,
            "`configuration.query.destinationTable.table_id`",
        ),
        (
            jobs,
            r#"{"jobReference":{"jobId":"j","job_id":"k"},"configuration":{"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
            "`jobReference.job_id`",
        ),
        (
            jobs,
            r#"{"configuration":{"query":{"query":"SELECT 1","useLegacySql":false,"scriptOptions":{"foo":1}}}}"#,
            "`configuration.query.scriptOptions.foo`",
        ),
        // Output-only fields.
        (
            jobs,
            r#"{"statistics":{},"configuration":{"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
            "`statistics` is output only",
        ),
        (
            jobs,
            r#"{"configuration":{"query":{"query":"SELECT 1","useLegacySql":false,"systemVariables":{}}}}"#,
            "`configuration.query.systemVariables` is output only",
        ),
        // One job kind, as BigQuery takes one.
        (
            jobs,
            r#"{"configuration":{"query":{"query":"SELECT 1","useLegacySql":false},"extract":{"sourceTable":{"projectId":"p","datasetId":"vault","tableId":"people"},"destinationUris":["gs://b/x"]}}}"#,
            "`configuration.query` and `configuration.extract`",
        ),
        // The job runs in the path's project.
        (
            jobs,
            r#"{"jobReference":{"projectId":"q","jobId":"j"},"configuration":{"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
            "jobReference.projectId `q` is not the project of the path (`p`)",
        ),
        // Types of the fields the decision reads.
        (
            queries,
            r#"{"query":"SELECT 1","useLegacySql":"false"}"#,
            "`useLegacySql` must be true or false",
        ),
        (
            jobs,
            r#"{"jobReference":{"jobId":7},"configuration":{"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
            "`jobReference.jobId` must be a string",
        ),
        (
            jobs,
            r#"{"jobReference":"j","configuration":{"query":{"query":"SELECT 1","useLegacySql":false}}}"#,
            "`jobReference` must be an object",
        ),
        (
            jobs,
            r#"{"configuration":{"query":"SELECT 1"}}"#,
            "`configuration.query` must be an object",
        ),
    ] {
        let (req, _) = check(Method::POST, path, body);
        let message = malformed_message(&req);
        assert!(message.contains(shows), "{body}: {message}");
    }
}

#[test]
fn a_key_given_twice_is_refused_wherever_it_is() {
    for body in [
        r#"{"query":"SELECT 1","query":"SELECT ssn FROM vault.people","useLegacySql":false}"#,
        r#"{"query":"SELECT 1","qu\u0065ry":"SELECT 2","useLegacySql":false}"#,
        r#"{"query":"SELECT 1","useLegacySql":false,"defaultDataset":{"datasetId":"a","datasetId":"vault"}}"#,
        r#"{"query":"SELECT 1","useLegacySql":false,"labels":{"a":"1","a":"2"}}"#,
        r#"{"query":"SELECT 1","useLegacySql":false,"queryParameters":[{"name":"x","name":"y"}]}"#,
    ] {
        let (req, call) = check(Method::POST, "/bigquery/v2/projects/p/queries", body);
        let message = malformed_message(&req);
        assert!(message.contains("is given twice"), "{body}: {message}");
        assert!(call.body.is_none(), "nothing to forward");
    }
    let (req, _) = check(
        Method::POST,
        "/bigquery/v2/projects/p/jobs",
        r#"{"configuration":{"dryRun":false,"query":{"query":"SELECT 1","useLegacySql":false},"dryRun":true}}"#,
    );
    assert!(malformed_message(&req).contains("`dryRun` is given twice"));
}

#[test]
fn fields_the_gateway_does_not_analyse_are_refused_as_not_allowed() {
    for (field, value) in [
        (
            "tableDefinitions",
            r#"{"people":{"sourceUris":["gs://b/people.csv"],"sourceFormat":"CSV"}}"#,
        ),
        (
            "userDefinedFunctionResources",
            r#"[{"inlineCode":"function f() {}"}]"#,
        ),
        (
            "connectionProperties",
            r#"[{"key":"session_id","value":"s1"}]"#,
        ),
        ("createSession", "true"),
        ("continuous", "true"),
    ] {
        let insert = format!(
            r#"{{"configuration":{{"query":{{"query":"SELECT * FROM people","useLegacySql":false,"{field}":{value}}}}}}}"#
        );
        let query =
            format!(r#"{{"query":"SELECT * FROM people","useLegacySql":false,"{field}":{value}}}"#);
        let (req, _) = check(Method::POST, "/bigquery/v2/projects/p/jobs", &insert);
        assert!(other_what(&req).contains(&format!("`{field}`")), "{insert}");
        assert_eq!(req.method, "jobs.insert");
        if field != "tableDefinitions" && field != "userDefinedFunctionResources" {
            let (req, _) = check(Method::POST, "/bigquery/v2/projects/p/queries", &query);
            assert!(other_what(&req).contains(&format!("`{field}`")), "{query}");
        }
    }
    // Unset, they change nothing.
    let (req, _) = check(
        Method::POST,
        "/bigquery/v2/projects/p/queries",
        r#"{"query":"SELECT 1","useLegacySql":false,"createSession":false,"continuous":null,"connectionProperties":[]}"#,
    );
    assert!(matches!(req.action, Action::Query(_)), "{:?}", req.action);
}

#[test]
fn what_the_official_clients_send_decodes() {
    // google-cloud-bigquery 3.x jobs.query (query_and_wait, DB-API, pandas-gbq).
    let python_query = r#"{"useLegacySql":false,"formatOptions":{"useInt64Timestamp":true},
        "timeoutMs":9900,"location":"US","query":"SELECT @x","requestId":"r-1","maxResults":100,
        "dryRun":false,"useQueryCache":true,"labels":{"team":"x"},"maximumBytesBilled":"1000",
        "jobTimeoutMs":"60000","queryParameters":[{"name":"x","parameterType":{"type":"INT64"},
        "parameterValue":{"value":"1"}}],"parameterMode":"NAMED","jobCreationMode":"JOB_CREATION_OPTIONAL",
        "kind":"bigquery#queryRequest","defaultDataset":{"projectId":"p","datasetId":"d"},
        "preserveNulls":null,"reservation":null,"maxSlots":null,"writeIncrementalResults":null}"#;
    let (req, call) = check(
        Method::POST,
        "/bigquery/v2/projects/p/queries",
        python_query,
    );
    assert_eq!(
        req.action,
        Action::Query(Query {
            statement: "SELECT @x".into(),
            dry_run: false,
            destination: None,
            default_schema: Some("p.d".into()),
            dialect_problem: None,
        })
    );
    assert_eq!(call.body.as_deref(), Some(python_query.as_bytes()));
    // google-cloud-bigquery 3.x jobs.insert (client.query, QueryJobConfig).
    let python_insert = r#"{"jobReference":{"projectId":"p","jobId":"job_1","location":"US"},
        "configuration":{"query":{"query":"SELECT 1","useLegacySql":false,"priority":"INTERACTIVE",
        "useQueryCache":false,"maximumBytesBilled":"5","createDisposition":"CREATE_IF_NEEDED",
        "writeDisposition":"WRITE_EMPTY","destinationTable":null,"scriptOptions":
        {"statementTimeoutMs":"1000","keyResultStatement":"LAST"}},"dryRun":true,
        "labels":{"querygate-session":"s"},"jobTimeoutMs":"1000"}}"#;
    let (req, call) = check(Method::POST, "/bigquery/v2/projects/p/jobs", python_insert);
    assert!(matches!(
        req.action,
        Action::Query(Query {
            dry_run: true,
            destination: None,
            ..
        })
    ));
    assert_eq!(req.job_id.as_deref(), Some("job_1"));
    assert_eq!(req.session.as_deref(), Some("s"));
    assert_eq!(call.body.as_deref(), Some(python_insert.as_bytes()));
    // @google-cloud/bigquery 8.x jobs.query (query()).
    let node_query = r#"{"formatOptions":{"useInt64Timestamp":true},"query":"SELECT 1",
        "useLegacySql":false,"requestId":"5f0c","jobCreationMode":"JOB_CREATION_REQUIRED",
        "queryParameters":[],"parameterMode":"named"}"#;
    let (req, _) = check(Method::POST, "/projects/p/queries", node_query);
    assert!(matches!(req.action, Action::Query(_)), "{:?}", req.action);
}

#[test]
fn options_the_node_client_leaves_in_a_query_job_are_not_forwarded() {
    // createQueryJob copies every option it does not move into configuration.query.
    let body = r#"{"configuration":{"query":{"query":"SELECT @n","useLegacySql":false,
        "types":{"n":"INT64"},"wrapIntegers":true,"parseJSON":false,"maxResults":5,
        "jobTimeoutMs":"5000","location":"","labels":null,"queryParameters":[]},"dryRun":true},
        "jobReference":{"projectId":"p","jobId":"n1"}}"#;
    let (req, call) = check(Method::POST, "/bigquery/v2/projects/p/jobs", body);
    assert!(matches!(
        req.action,
        Action::Query(Query { dry_run: true, .. })
    ));
    let sent: Value = serde_json::from_slice(&call.body.expect("body")).expect("json");
    let q = sent["configuration"]["query"].as_object().expect("query");
    let mut keys: Vec<&str> = q.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["query", "queryParameters", "useLegacySql"]);
    assert_eq!(sent["jobReference"]["jobId"], "n1");
    // `dryRun: false` is left behind (the client moves only a true one): it means nothing
    // there either way, and is removed; a true one is refused (BigQuery would run the job).
    let body = r#"{"configuration":{"query":{"query":"SELECT 1","useLegacySql":false,
        "dryRun":false}}}"#;
    let (req, call) = check(Method::POST, "/bigquery/v2/projects/p/jobs", body);
    assert!(matches!(
        req.action,
        Action::Query(Query { dry_run: false, .. })
    ));
    let sent: Value = serde_json::from_slice(&call.body.expect("body")).expect("json");
    assert!(sent["configuration"]["query"].get("dryRun").is_none());
}

#[test]
fn the_standard_sql_marker_is_read_at_the_start_only() {
    let dialect = |q: &str| {
        let body = serde_json::json!({ "query": q }).to_string();
        match check(Method::POST, "/bigquery/v2/projects/p/queries", &body)
            .0
            .action
        {
            Action::Query(Query {
                dialect_problem, ..
            }) => dialect_problem.is_none(),
            other => panic!("{other:?}"),
        }
    };
    assert!(dialect("#standardSQL\nSELECT 1"));
    assert!(dialect("#STANDARDSQL\nSELECT 1"));
    assert!(!dialect("  #standardSQL\nSELECT 1"));
    assert!(!dialect("#legacySQL\nSELECT 1"));
    assert!(!dialect("#standardSQ"));
    assert!(!dialect("#standardSQ€"));
    assert!(!dialect("SELECT '€€€'"));
}

/// Strings with a multi-byte character at every byte offset from 0 to 16.
fn multibyte_spread() -> Vec<String> {
    let mut out = Vec::new();
    for c in ['é', '€', '😀', '\u{85}', '\u{2028}', 'ǅ'] {
        for offset in 0..=16 {
            for filler in ["a", "#standardSQL", " ", "%", "é"] {
                let mut s: String = filler.repeat(offset + 1).chars().take(offset).collect();
                while s.len() < offset {
                    s.push('x');
                }
                s.push(c);
                s.push_str("SELECT 1 €");
                out.push(s);
            }
        }
    }
    out
}

#[test]
fn no_input_panics() {
    // The input that panicked: a multi-byte character across byte 12 of the statement.
    for path in [
        "/bigquery/v2/projects/p/queries",
        "/bigquery/v2/projects/p/jobs",
    ] {
        for body in [
            r#"{"query":"SELECT '€€€'"}"#,
            r#"{"configuration":{"query":{"query":"SELECT '€€€'"}}}"#,
        ] {
            let _ = check(Method::POST, path, body);
        }
    }
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    for s in multibyte_spread() {
        let query = serde_json::json!({ "query": s, "labels": { "querygate-reason": s } });
        let job = serde_json::json!({
            "jobReference": { "jobId": s },
            "configuration": { "query": { "query": s, "defaultDataset": { "datasetId": s } } }
        });
        let cases = [
            (
                Method::POST,
                "/bigquery/v2/projects/p/queries".to_string(),
                query.to_string(),
            ),
            (
                Method::POST,
                "/bigquery/v2/projects/p/jobs".to_string(),
                job.to_string(),
            ),
            (
                Method::POST,
                "/bigquery/v2/projects/p/queries".to_string(),
                s.clone(),
            ),
            (
                Method::GET,
                format!("/bigquery/v2/projects/p/datasets/d/tables/{s}/data"),
                String::new(),
            ),
            (
                Method::GET,
                format!("/bigquery/v2/projects/{}/jobs/{}", enc(&s), enc(&s)),
                String::new(),
            ),
            (
                Method::GET,
                format!("/bigquery/v2/projects/p/queries/j?{s}={s}"),
                String::new(),
            ),
            (
                Method::GET,
                format!("/bigquery/v2/projects/p/queries/j?timeoutMs={}", enc(&s)),
                String::new(),
            ),
            (
                Method::POST,
                format!("/upload/bigquery/v2/projects/p/jobs?{s}"),
                s.clone(),
            ),
            (
                Method::DELETE,
                format!("/bigquery/v2/projects/p/datasets/{s}:x"),
                s.clone(),
            ),
        ];
        for (m, path_and_query, body) in cases {
            let (req, _) = check(m, &path_and_query, &body);
            assert!(!req.method.is_empty());
        }
        let mut headers = HeaderMap::new();
        if let Ok(v) = http::HeaderValue::from_bytes(s.as_bytes()) {
            headers.insert("x-querygate-reason", v.clone());
            headers.insert(SESSION, v.clone());
            headers.insert("content-type", v.clone());
            headers.insert("authorization", v);
        }
        let _ = decode(WireRequest {
            method: &Method::POST,
            path: "/upload/bigquery/v2/projects/p/jobs",
            query: None,
            headers: &headers,
            body: Ok(Bytes::from(format!("--{s}\r\n\r\n{{\"a\":1}}"))),
            peer: None,
            request_id: RequestId("r".into()),
        });
    }
}
