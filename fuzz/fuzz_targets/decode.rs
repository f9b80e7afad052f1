//! Fuzz target: arbitrary HTTP requests (method, path, query string, headers, body)
//! through the BigQuery front's `decode`. A panic anywhere is a finding: decode is total,
//! every input must become some `Action` so that the pipeline audits it. The fuzzer's bytes
//! pick a path prefix and a body template (so that most inputs reach routing and the body
//! readers rather than stopping at the first byte) and fill them with arbitrary text. No IO.
#![no_main]

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use querygate_bigquery::decode::{BodyProblem, WireRequest, decode};
use querygate_core::RequestId;

const PATHS: &[&str] = &[
    "/bigquery/v2/projects/p/queries",
    "/bigquery/v2/projects/p/queries/",
    "/bigquery/v2/projects/p/jobs",
    "/bigquery/v2/projects/p/jobs/",
    "/bigquery/v2/projects/p/datasets/",
    "/bigquery/v2/projects/p/datasets/d/tables/",
    "/bigquery/v2/projects/",
    "/projects/p/",
    "/upload/bigquery/v2/projects/p/jobs",
    "/",
    "",
];

const HEADERS: &[&str] = &[
    "content-type",
    "authorization",
    "user-agent",
    "x-querygate-reason",
    "x-querygate-session",
    "x-querygate-on-behalf-of",
];

/// Bodies with a hole for a JSON string (`@`) and one for an extra field (`~`).
const BODIES: &[&str] = &[
    r#"{"query":@,"useLegacySql":false~}"#,
    r#"{"query":@~}"#,
    r#"{"query":"SELECT 1","labels":{"querygate-reason":@,"querygate-session":@}~}"#,
    r#"{"configuration":{"query":{"query":@,"useLegacySql":false~}}}"#,
    r#"{"configuration":{"query":{"query":"SELECT 1","defaultDataset":{"datasetId":@}}~}}"#,
    r#"{"jobReference":{"jobId":@,"projectId":"p"},"configuration":{"query":{"query":@}~}}"#,
    r#"{"configuration":{"load":{"destinationTable":{"tableId":@}}~}}"#,
];

/// Field names the readers know, and some they do not.
const FIELDS: &[&str] = &[
    "dryRun",
    "dry_run",
    "useLegacySql",
    "query",
    "tableDefinitions",
    "createSession",
    "connectionProperties",
    "continuous",
    "queryResultsFormat",
    "destinationTable",
    "defaultDataset",
    "scriptOptions",
    "types",
    "labels",
    "jobReference",
    "configuration",
    "extract",
    "foo",
];

const VALUES: &[&str] = &[
    "true", "false", "null", "\"x\"", "\"ARROW\"", "{}", "[]", "1", "[{}]", "{\"a\":1}",
];

fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});

fn run(data: &[u8]) -> Result<()> {
    let mut u = Unstructured::new(data);
    let method = match u.int_in_range(0..=5u8)? {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::DELETE,
        3 => Method::PATCH,
        4 => Method::PUT,
        _ => Method::from_bytes(u.arbitrary::<&[u8]>()?).unwrap_or(Method::HEAD),
    };
    let path = format!("{}{}", u.choose(PATHS)?, u.arbitrary::<&str>()?);
    let query: Option<&str> = u.arbitrary()?;
    let mut headers = HeaderMap::new();
    for _ in 0..u.int_in_range(0..=4u8)? {
        let name = *u.choose(HEADERS)?;
        if let Ok(v) = HeaderValue::from_bytes(u.arbitrary::<&[u8]>()?) {
            headers.append(name, v);
        }
    }
    let body = match u.int_in_range(0..=9u8)? {
        0 => Err(BodyProblem::TooLarge { limit: 10 }),
        1 => Err(BodyProblem::Unreadable(u.arbitrary::<&str>()?.to_string())),
        2..=6 => {
            let text = serde_json::to_string(u.arbitrary::<&str>()?).unwrap_or_default();
            let extra = if u.arbitrary()? {
                format!(",\"{}\":{}", u.choose(FIELDS)?, u.choose(VALUES)?)
            } else {
                String::new()
            };
            let body = u.choose(BODIES)?.replace('@', &text).replace('~', &extra);
            Ok(Bytes::from(body))
        }
        _ => Ok(Bytes::copy_from_slice(u.arbitrary::<&[u8]>()?)),
    };
    let (request, call) = decode(WireRequest {
        method: &method,
        path: &path,
        query,
        headers: &headers,
        body,
        peer: None,
        request_id: RequestId("fuzz".into()),
    });
    // What decode forwards must read back the same way (it is the gateway's own encoding).
    if let Some(q) = &call.query {
        for name in ["selectedFields", "timeoutMs", "maxResults", "pageToken"] {
            let _ = call.param(name);
        }
        assert!(!q.contains(['+', ';', '#', ' ']), "forwarded query {q:?}");
    }
    assert!(
        !call.path.contains("%2F") && !call.path.contains("%25") && !call.path.contains("//"),
        "forwarded path {:?}",
        call.path
    );
    assert!(!request.method.is_empty());
    Ok(())
}
