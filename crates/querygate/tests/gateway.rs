//! End-to-end tests of the gateway binary over raw HTTP: credential isolation with a
//! service-account key, bad input, a broken upstream, job privacy, gzip and TLS.
//!
//! The upstream here is a recording server started by each test, because these tests
//! must see exactly what the gateway sends upstream, or need an upstream that misbehaves.
//! The token endpoint stands in for Google's OAuth server, which cannot run here.
//! Flows through the real BigQuery emulator and official clients are in tests/e2e.

mod support;

use std::io::Write;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};
use support::*;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

async fn post_query(g: &Gateway, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut r = client()
        .post(format!(
            "{}/bigquery/v2/projects/test-project/queries?prettyPrint=false",
            g.url()
        ))
        .json(&body);
    if let Some(k) = key {
        r = r.bearer_auth(k);
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn query(sql: &str) -> Value {
    json!({"query": sql, "useLegacySql": false})
}

/// The error envelope's (code, reason), checking its shape on the way.
fn envelope(body: &Value) -> (u64, String) {
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["status"].is_string(), "{body}");
    assert_eq!(e["errors"][0]["message"], e["message"], "{body}");
    (
        e["code"].as_u64().unwrap_or(0),
        e["errors"][0]["reason"].as_str().unwrap_or("").to_string(),
    )
}

fn rsa_pem() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
    key.serialize_pem()
}

#[tokio::test]
async fn upstream_credential_is_minted_by_the_gateway_and_the_agent_key_never_leaves() {
    let token = Recorder::start(|_| {
        (
            200,
            r#"{"access_token":"ya29.minted-upstream-token","expires_in":3600,"token_type":"Bearer"}"#.into(),
        )
    })
    .await;
    let upstream = Recorder::start(|_| (200, query_response("job-1", 3))).await;
    let private_key = rsa_pem();
    let dir = TempDir::new("sa");
    let sa_path = dir.0.join("sa.json");
    std::fs::write(
        &sa_path,
        json!({
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": "kid-1",
            "private_key": private_key,
            "client_email": "querygate@test-project.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": format!("{}/token", token.url()),
        })
        .to_string(),
    )
    .expect("write key");
    let g = Gateway::start(
        "sa",
        "",
        &bigquery_source(
            &upstream.url(),
            &format!(
                "{{ service_account_key = {:?} }}",
                sa_path.display().to_string()
            ),
        ),
    )
    .await;

    for _ in 0..3 {
        let (status, body) = post_query(&g, Some(KEY), query("SELECT id, email FROM d.t")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["rows"].as_array().map(Vec::len), Some(3));
    }
    // A key smuggled in the query string is not forwarded either.
    let resp = client()
        .get(format!(
            "{}/bigquery/v2/projects/test-project/datasets?access_token={KEY}",
            g.url()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);

    let sent = upstream.requests();
    assert_eq!(sent.len(), 4);
    for r in &sent {
        assert_eq!(
            r.headers.get("authorization").and_then(|v| v.to_str().ok()),
            Some("Bearer ya29.minted-upstream-token"),
            "upstream must see only the gateway's own token"
        );
        let all = format!(
            "{} {:?} {}",
            r.uri,
            r.headers,
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            !all.contains(KEY),
            "the agent's key reached the upstream: {all}"
        );
    }
    // One token exchange, cached for the next calls: a JWT bearer grant signed by the key.
    let exchanges = token.requests();
    assert_eq!(exchanges.len(), 1, "the access token is cached");
    let form = String::from_utf8_lossy(&exchanges[0].body).into_owned();
    assert!(
        form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"),
        "{form}"
    );
    let assertion = form
        .split('&')
        .find_map(|p| p.strip_prefix("assertion="))
        .expect("assertion");
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(assertion.split('.').nth(1).expect("jwt payload"))
            .expect("base64"),
    )
    .expect("claims");
    assert_eq!(
        claims["iss"],
        "querygate@test-project.iam.gserviceaccount.com"
    );
    assert!(
        claims["scope"]
            .as_str()
            .is_some_and(|s| s.contains("auth/bigquery"))
    );

    // No secret in the gateway's log, the audit log, or the store file.
    let log = g.log();
    let db = std::fs::read(g.db()).expect("db");
    let wal = std::fs::read(g.db().with_extension("db-wal")).unwrap_or_default();
    let store = String::from_utf8_lossy(&[db, wal].concat()).into_owned();
    for secret in [KEY, "ya29.minted-upstream-token", "BEGIN PRIVATE KEY"] {
        assert!(!log.contains(secret), "log holds {secret}");
        assert!(!store.contains(secret), "store holds {secret}");
    }
    let audit = g.audit();
    assert!(audit.iter().all(|r| r["identity"] == "agent:test"));
    assert_eq!(
        audit.iter().filter(|r| r["phase"] == "completed").count(),
        4
    );
}

#[tokio::test]
async fn bad_input_gets_a_bigquery_error_a_log_line_and_an_audit_record() {
    let upstream = Recorder::start(|_| (200, query_response("job-1", 1))).await;
    let mut g = Gateway::start(
        "bad",
        "max_body_bytes = 4096",
        &bigquery_source(&upstream.url(), "\"none\""),
    )
    .await;
    let base = format!("{}/bigquery/v2/projects/test-project", g.url());
    let big_sql = format!("SELECT '{}'", "x".repeat(8192));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&vec![b' '; 1 << 20]).expect("gzip");
    let bomb = gz.finish().expect("gzip");

    type Case = (&'static str, reqwest::RequestBuilder, u64, &'static str);
    let c = client();
    let cases: Vec<Case> = vec![
        ("malformed json", c.post(format!("{base}/queries")).bearer_auth(KEY).header("content-type", "application/json").body("{\"query\": "), 400, "invalid"),
        ("json that is not an object", c.post(format!("{base}/queries")).bearer_auth(KEY).body("[1]"), 400, "invalid"),
        ("no query field", c.post(format!("{base}/queries")).bearer_auth(KEY).json(&json!({"useLegacySql": false})), 400, "invalid"),
        ("unknown path", c.get(format!("{}/no/such/api", g.url())).bearer_auth(KEY), 404, "notFound"),
        ("unknown project", c.get(format!("{}/bigquery/v2/projects/other/datasets", g.url())).bearer_auth(KEY), 404, "notFound"),
        ("oversized body", c.post(format!("{base}/queries")).bearer_auth(KEY).json(&query(&big_sql)), 413, "invalid"),
        ("gzip bomb", c.post(format!("{base}/queries")).bearer_auth(KEY).header("content-encoding", "gzip").body(bomb), 413, "invalid"),
        ("no credential", c.post(format!("{base}/queries")).json(&query("SELECT 1")), 403, "authError"),
        ("wrong key", c.post(format!("{base}/queries")).bearer_auth("qg_wrong").json(&query("SELECT 1")), 403, "authError"),
        ("insertAll", c.post(format!("{base}/datasets/d/tables/t/insertAll")).bearer_auth(KEY).json(&json!({"rows": []})), 403, "accessDenied"),
        ("load job", c.post(format!("{base}/jobs")).bearer_auth(KEY).json(&json!({"configuration": {"load": {}}})), 403, "accessDenied"),
        ("delete statement", c.post(format!("{base}/queries")).bearer_auth(KEY).json(&query("DELETE FROM d.t WHERE true")), 403, "accessDenied"),
        ("destination table", c.post(format!("{base}/jobs")).bearer_auth(KEY).json(&json!({"configuration": {"query": {"query": "SELECT 1", "useLegacySql": false, "destinationTable": {"projectId": "test-project", "datasetId": "d", "tableId": "copy"}}}})), 403, "accessDenied"),
        ("unparsable sql", c.post(format!("{base}/queries")).bearer_auth(KEY).json(&query("SELEC oops")), 400, "invalidQuery"),
        ("legacy sql", c.post(format!("{base}/queries")).bearer_auth(KEY).json(&json!({"query": "SELECT 1"})), 400, "invalidQuery"),
        ("someone else's job", c.get(format!("{base}/queries/not-mine")).bearer_auth(KEY), 404, "notFound"),
    ];
    let n = cases.len();
    for (name, req, code, reason) in cases {
        let started = Instant::now();
        let resp = req.send().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(resp.status().as_u16() as u64, code, "{name}");
        let body: Value = resp
            .json()
            .await
            .unwrap_or_else(|e| panic!("{name}: not JSON: {e}"));
        assert_eq!(
            envelope(&body),
            (code, reason.to_string()),
            "{name}: {body}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name} was slow"
        );
    }
    assert!(g.alive(), "gateway died:\n{}", g.log());
    assert!(
        upstream.requests().is_empty(),
        "a refused request reached the upstream"
    );
    let audit = g.audit();
    assert_eq!(audit.len(), n, "one record per refused request");
    assert!(
        audit
            .iter()
            .all(|r| r["decision"] == "deny" && r["status"].as_u64().is_some())
    );
    assert_eq!(audit[7]["identity"], "anonymous");
    assert_eq!(audit[8]["identity"], "unauthenticated");
    assert!(audit[11]["statement"] == "DELETE FROM d.t WHERE true");
    assert!(g.log().contains("request denied"), "denials are logged");
    assert_eq!(g.cli(&["audit", "verify"]).0, 0);
}

#[tokio::test]
async fn an_upstream_that_is_down_or_speaks_garbage_gets_a_clear_error() {
    let garbage = Recorder::start(|_| (200, "<html>proxy error</html>".into())).await;
    let closed = format!("http://127.0.0.1:{}", free_port());
    for (name, endpoint) in [("down", closed), ("garbage", garbage.url())] {
        let mut g = Gateway::start(name, "", &bigquery_source(&endpoint, "\"none\"")).await;
        let started = Instant::now();
        let (status, body) = post_query(&g, Some(KEY), query("SELECT 1")).await;
        assert_eq!(status, 502, "{name}: {body}");
        let (_, reason) = envelope(&body);
        assert_eq!(reason, "backendError");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("analytics")),
            "{body}"
        );
        assert!(started.elapsed() < Duration::from_secs(10), "{name}: slow");
        assert!(g.alive(), "{name}: gateway died");
        let audit = g.audit();
        let last = audit.last().expect("records");
        assert_eq!(last["status"], 502, "{name}: {last}");
        assert!(last["error"].is_string(), "{name}: {last}");
        assert!(g.log().contains("request failed"), "{name}: logged");
    }
}

#[tokio::test]
async fn jobs_are_visible_only_to_the_identity_that_created_them() {
    let upstream = Recorder::start(|r| {
        if r.uri.contains("/jobs?") || r.uri.ends_with("/jobs") && r.method == "GET" {
            (200, r#"{"kind":"bigquery#jobList","jobs":[{"jobReference":{"jobId":"mine"}},{"jobReference":{"jobId":"not-ours"}}]}"#.into())
        } else if r.uri.contains("/jobs") {
            (200, r#"{"jobReference":{"projectId":"test-project","jobId":"mine","location":"US"},"configuration":{"query":{"query":"SELECT 1","destinationTable":{"projectId":"test-project","datasetId":"_anon","tableId":"anonmine"}}},"status":{"state":"DONE"},"statistics":{"query":{"totalBytesProcessed":"10"}}}"#.into())
        } else {
            (200, query_response("mine", 1))
        }
    })
    .await;
    let other_key = "qg_other_key";
    let sources = format!(
        "{}{}",
        api_key("agent:other", &[], other_key),
        bigquery_source(&upstream.url(), "\"none\"")
    );
    let g = Gateway::start("jobs", "", &sources).await;
    let base = format!("{}/bigquery/v2/projects/test-project", g.url());
    let c = client();
    let insert = json!({"jobReference": {"projectId": "test-project", "jobId": "mine"},
                        "configuration": {"query": {"query": "SELECT 1", "useLegacySql": false}}});
    let r = c
        .post(format!("{base}/jobs"))
        .bearer_auth(KEY)
        .json(&insert)
        .send()
        .await
        .expect("insert");
    assert_eq!(r.status(), 200);
    for (key, want) in [(KEY, 200), (other_key, 404)] {
        for path in [
            "jobs/mine",
            "queries/mine?maxResults=0&location=US",
            "datasets/_anon/tables/anonmine/data",
        ] {
            let r = c
                .get(format!("{base}/{path}"))
                .bearer_auth(key)
                .send()
                .await
                .expect("get");
            assert_eq!(r.status().as_u16(), want, "{key} {path}");
        }
        let list: Value = c
            .get(format!("{base}/jobs?allUsers=true"))
            .bearer_auth(key)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        let ids: Vec<&str> = list["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .filter_map(|j| j["jobReference"]["jobId"].as_str())
            .collect();
        assert_eq!(
            ids,
            if want == 200 { vec!["mine"] } else { vec![] },
            "{key}"
        );
    }
    // Listing the hidden dataset of query results is refused to everyone.
    let r = c
        .get(format!("{base}/datasets/_anon/tables"))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 404);
    assert!(
        upstream
            .requests()
            .iter()
            .all(|r| !r.uri.contains("allUsers"))
    );
}

#[tokio::test]
async fn gzip_works_in_both_directions() {
    let upstream = Recorder::start(|_| (200, query_response("job-gz", 50))).await;
    let g = Gateway::start("gzip", "", &bigquery_source(&upstream.url(), "\"none\"")).await;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(query("SELECT 1").to_string().as_bytes())
        .expect("gzip");
    let resp = reqwest::Client::builder()
        .no_gzip()
        .build()
        .expect("client")
        .post(format!(
            "{}/bigquery/v2/projects/test-project/queries",
            g.url()
        ))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .header("accept-encoding", "gzip")
        .body(gz.finish().expect("gzip"))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-encoding")
            .and_then(|v| v.to_str().ok()),
        Some("gzip")
    );
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(&resp.bytes().await.expect("body")[..]),
        &mut text,
    )
    .expect("gunzip");
    let body: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(50));
    assert_eq!(
        upstream.requests()[0].body,
        query("SELECT 1").to_string().into_bytes()
    );
}

#[tokio::test]
async fn tls_front_serves_https_and_refuses_plaintext() {
    let upstream = Recorder::start(|_| (200, query_response("job-tls", 1))).await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    let dir = TempDir::new("tls-files");
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    let g = Gateway::start(
        "tls",
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        &bigquery_source(&upstream.url(), "\"none\""),
    )
    .await;
    let https = reqwest::Client::builder()
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert.cert.pem().as_bytes()).expect("root"),
        )
        .build()
        .expect("client");
    let resp = https
        .post(format!(
            "https://localhost:{}/bigquery/v2/projects/test-project/queries",
            g.port
        ))
        .bearer_auth(KEY)
        .json(&query("SELECT 1"))
        .send()
        .await
        .expect("https request");
    assert_eq!(resp.status(), 200);
    let plain = client()
        .get(format!("http://127.0.0.1:{}/healthz", g.port))
        .send()
        .await;
    assert!(
        plain.is_err() || !plain.expect("resp").status().is_success(),
        "plaintext must not be served on a TLS port"
    );
    let audit = g.audit();
    assert!(
        audit
            .iter()
            .any(|r| r["method"] == "jobs.query" && r["status"] == 200)
    );
}

#[test]
fn a_bad_config_fails_at_start_with_file_line_and_problem() {
    let dir = TempDir::new("badcfg");
    let path = dir.0.join("querygate.toml");
    std::fs::write(
        &path,
        "[server]\nbigquery_listen = \"0.0.0.0:9050\"\n\n[store]\npath = \"q.db\"\n",
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_querygate"))
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("querygate.toml, line 2") && err.contains("insecure_plaintext"),
        "{err}"
    );
}

#[test]
fn keys_new_prints_a_key_whose_hash_is_in_the_block() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_querygate"))
        .args(["keys", "new", "--identity", "agent:x", "--group", "agents"])
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    let key = text
        .lines()
        .find_map(|l| l.strip_prefix("# qg_"))
        .map(|k| format!("qg_{k}"))
        .expect("key line");
    assert!(
        text.contains(&format!("key_sha256 = \"{}\"", sha256_hex(&key))),
        "{text}"
    );
    assert!(text.contains("identity = \"agent:x\"") && text.contains("groups = [\"agents\"]"));
}
