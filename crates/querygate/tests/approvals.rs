//! Approvals end to end through the binary: a query an approve rule catches waits, an
//! approver lists and decides it with `querygate approvals …` (over the admin API), and
//! the requester's next poll runs it, or ends with the reason. Also: who may decide,
//! refusals as clear messages, expiry, window grants, the webhook (up and down), the
//! audit trail, TLS, and a restart while a ticket waits.
//!
//! The upstream is a recording server that answers dry runs with the bytes named in the
//! SQL (`/*bytes=N*/`), so the `bytes_over` rule fires, and answers jobs.insert,
//! jobs.get and getQueryResults for the job the gateway runs once approved.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const GIB: u64 = 1 << 30;

/// An approver (data-owners), an identity outside the approvers, and one who is both a
/// requester (agents) and an approver.
const OLIVIA: &str = "qg_test_approver_olivia_0123456789";
const MALLORY: &str = "qg_test_outsider_mallory_0123456789";
const ALICE: &str = "qg_test_agent_and_owner_alice_0123456789";

const RULES: &str = r#"
[[rule]]
name = "large scans need an owner"
who = ["group:agents"]
when = { bytes_over = "10 GiB" }
action = "approve"
approvers = ["group:data-owners"]
message = "scans over 10 GiB need a data owner's approval"

[[rule]]
name = "read"
who = ["group:agents"]
statements = ["select"]
action = "allow"
"#;

fn keys() -> String {
    [
        api_key("user:olivia", &["data-owners"], OLIVIA),
        api_key("user:mallory", &["analysts"], MALLORY),
        api_key("user:alice", &["agents", "data-owners"], ALICE),
    ]
    .concat()
}

/// The upstream: dry runs report the SQL's `/*bytes=N*/`; jobs.insert, jobs.get and
/// getQueryResults answer for the job they name; a jobs.query that runs answers rows.
async fn upstream() -> Recorder {
    Recorder::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let path = r.uri.split('?').next().unwrap_or("").to_string();
        let last = path.rsplit('/').next().unwrap_or("").to_string();
        // `/*bytes=N*/`, or `'bytes=N'` (a literal survives the masking rewrite, which
        // drops comments).
        let bytes_in = |sql: &str| {
            sql.split("bytes=")
                .nth(1)
                .map(|s| s.chars().take_while(char::is_ascii_digit).collect::<String>())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if body["configuration"]["dryRun"] == true {
            let sql = body["configuration"]["query"]["query"].as_str().unwrap_or("");
            return (
                200,
                json!({"kind": "bigquery#job", "status": {"state": "DONE"},
                       "statistics": {"query": {"totalBytesProcessed": bytes_in(sql).to_string()}}})
                .to_string(),
            );
        }
        if r.method == "POST" && path.ends_with("/queries") {
            return (200, query_response("job-direct", 1));
        }
        if r.method == "POST" && path.ends_with("/jobs") {
            let job = body["jobReference"]["jobId"].as_str().unwrap_or("?");
            return (
                200,
                json!({"kind": "bigquery#job", "id": format!("test-project:US.{job}"),
                       "jobReference": {"projectId": "test-project", "jobId": job, "location": "US"},
                       "configuration": body["configuration"],
                       "status": {"state": "RUNNING"}})
                .to_string(),
            );
        }
        if r.method == "GET" && path.contains("/queries/") {
            return (200, query_response(&last, 2));
        }
        if r.method == "GET" && path.contains("/jobs/") {
            return (
                200,
                json!({"kind": "bigquery#job",
                       "jobReference": {"projectId": "test-project", "jobId": last, "location": "US"},
                       "status": {"state": "DONE"}})
                .to_string(),
            );
        }
        if r.method == "GET" && path.contains("/tables/") {
            return (
                200,
                json!({"kind": "bigquery#table", "schema": {"fields": [
                    {"name": "id", "type": "INTEGER"}, {"name": "email", "type": "STRING"}]}})
                .to_string(),
            );
        }
        (404, json!({"error": {"code": 404, "message": "not here"}}).to_string())
    })
    .await
}

/// A gateway with the rules, the approvers' keys, an admin API and `extra` (TOML tables).
async fn gateway(name: &str, up: &Recorder, extra: &str) -> (Gateway, u16) {
    gateway_with(name, up, "", extra).await
}

async fn gateway_with(
    name: &str,
    up: &Recorder,
    server_extra: &str,
    extra: &str,
) -> (Gateway, u16) {
    let admin = free_port();
    let g = Gateway::start(
        name,
        &format!("admin_listen = \"127.0.0.1:{admin}\"\n{server_extra}"),
        &format!(
            "{}{RULES}\n{}\n{extra}",
            keys(),
            bigquery_source(&up.url(), "\"none\"")
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
        assert!(Instant::now() < deadline, "no admin API:\n{}", g.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (g, admin)
}

fn admin_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

/// Sends a query as the test agent (with a reason header); returns status and body.
async fn query(g: &Gateway, sql: &str, key: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/bigquery/v2/projects/test-project/queries",
            g.url()
        ))
        .bearer_auth(key)
        .header("x-querygate-reason", "monthly revenue report for finance")
        .json(&json!({"query": sql, "useLegacySql": false}))
        .send()
        .await
        .expect("send");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// Polls a job's results as the client library would, willing to wait 300 ms.
async fn poll(g: &Gateway, job: &str, key: &str) -> (u16, Value) {
    poll_waiting(g, job, key, 300).await
}

/// Polls a job's results with `timeoutMs`: a job waiting for approval is held that long.
async fn poll_waiting(g: &Gateway, job: &str, key: &str, timeout_ms: u64) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/bigquery/v2/projects/test-project/queries/{job}?location=US&timeoutMs={timeout_ms}",
            g.url()
        ))
        .bearer_auth(key)
        .send()
        .await
        .expect("send");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

/// A caught query: its job id and ticket id.
async fn caught(g: &Gateway, sql: &str) -> (String, String) {
    let (status, body) = query(g, sql, KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobComplete"], false, "{body}");
    let job = body["jobReference"]["jobId"]
        .as_str()
        .expect("job id")
        .to_string();
    let ticket = body["querygate"]["ticket"]
        .as_str()
        .expect("ticket")
        .to_string();
    (job, ticket)
}

/// Runs `querygate approvals <args> --config <config>` with `token` as QUERYGATE_TOKEN
/// (none when empty) and `server` as QUERYGATE_SERVER (none when empty): (exit code,
/// stdout, stderr).
fn approvals(g: &Gateway, token: &str, server: &str, args: &[&str]) -> (i32, String, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_querygate"));
    cmd.arg("approvals")
        .args(args)
        .arg("--config")
        .arg(&g.config)
        .env_remove("QUERYGATE_TOKEN")
        .env_remove("QUERYGATE_SERVER")
        .env_remove("QUERYGATE_CA_CERT");
    if !token.is_empty() {
        cmd.env("QUERYGATE_TOKEN", token);
    }
    if !server.is_empty() {
        cmd.env("QUERYGATE_SERVER", server);
    }
    let out = cmd.output().expect("run querygate approvals");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The admin API directly: (status, body).
async fn admin(
    port: u16,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{}{path}", admin_url(port)));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let resp = req.send().await.expect("admin request");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

fn error_message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or("").to_string()
}

async fn wait_for<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "waited 20 s for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn dry_run(seen: &Seen) -> bool {
    serde_json::from_slice::<Value>(&seen.body)
        .is_ok_and(|b| b["dryRun"] == true || b["configuration"]["dryRun"] == true)
}

/// The body of the first jobs.insert that reached the upstream (not a dry run).
fn upstream_insert(seen: &[Seen]) -> Value {
    let insert = seen
        .iter()
        .find(|r| r.method == "POST" && r.uri.contains("/jobs") && !dry_run(r))
        .expect("jobs.insert upstream");
    serde_json::from_slice(&insert.body).expect("json")
}

#[tokio::test]
async fn a_caught_query_waits_until_an_approver_approves_it_through_the_cli() {
    let up = upstream().await;
    let (g, _) = gateway("approve", &up, "").await;
    let sql = format!("SELECT amount FROM finance.ledger /*bytes={}*/", 12 * GIB);
    let (job, ticket) = caught(&g, &sql).await;
    assert!(ticket.starts_with("tk_"), "{ticket}");

    // Nothing but the dry run reached the upstream, and polls keep waiting.
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "only the dry run went upstream: {seen:?}");
    assert!(dry_run(&seen[0]));
    let started = std::time::Instant::now();
    let (status, body) = poll_waiting(&g, &job, KEY, 700).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobComplete"], false, "{body}");
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(600),
        "a poll of a waiting job is held for its timeoutMs, as BigQuery holds it"
    );
    assert_eq!(
        up.requests().len(),
        1,
        "a poll of a waiting job goes nowhere"
    );

    // The approver lists it (server from the config's admin_listen, token from the env).
    let (code, out, err) = approvals(&g, OLIVIA, "", &["list"]);
    assert_eq!(code, 0, "{out}{err}");
    let row = out
        .lines()
        .find(|l| l.contains(&ticket))
        .unwrap_or_else(|| panic!("ticket {ticket} not listed:\n{out}"));
    for want in [
        "pending",
        "agent:test",
        "large scans need an owner",
        "12.0 GiB",
        "monthly revenue report for finance",
    ] {
        assert!(row.contains(want), "{want:?} missing from {row:?}\n{out}");
    }
    let (code, out, _) = approvals(&g, OLIVIA, "", &["list", "--state", "pending", "--json"]);
    assert_eq!(code, 0, "{out}");
    let listed: Value = serde_json::from_str(&out).expect("json list");
    let t = &listed["tickets"][0];
    assert_eq!(t["id"], ticket.as_str());
    assert_eq!(t["requester"], "agent:test");
    assert_eq!(t["bytes_estimate"], 12 * GIB);
    assert_eq!(t["reason"], "monthly revenue report for finance");
    assert_eq!(t["statement"], sql.as_str());
    assert!(t.get("call").is_none(), "the saved call is not shown: {t}");
    let (code, out, _) = approvals(&g, OLIVIA, "", &["show", &ticket]);
    assert_eq!(code, 0, "{out}");
    for want in [
        "state:",
        "requester:",
        "estimate:",
        "12.0 GiB",
        "statement:",
        "expires:",
        &sql,
    ] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }

    // Approve; the next poll submits the saved job upstream under the same job id with
    // a byte ceiling, and the poll goes through.
    let (code, out, err) = approvals(
        &g,
        OLIVIA,
        "",
        &["approve", &ticket, "--reason", "ok for the report"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("ticket {ticket} approved")) && out.contains("user:olivia"),
        "{out}"
    );
    assert_eq!(up.requests().len(), 1, "approval alone runs nothing");
    let (status, body) = poll(&g, &job, KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobComplete"], true, "{body}");
    assert_eq!(body["rows"].as_array().map(Vec::len), Some(2), "{body}");
    let seen = up.requests();
    let inserted = upstream_insert(&seen);
    assert_eq!(inserted["jobReference"]["jobId"], job.as_str());
    assert_eq!(inserted["configuration"]["query"]["query"], sql.as_str());
    let cap: u64 = inserted["configuration"]["query"]["maximumBytesBilled"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("maximumBytesBilled");
    assert!(
        (12 * GIB..=14 * GIB).contains(&cap),
        "the ceiling follows the estimate: {cap}"
    );
    assert!(
        seen.iter()
            .any(|r| r.method == "GET" && r.uri.contains(&format!("/queries/{job}"))),
        "the poll went upstream"
    );
    let inserts = seen.iter().filter(|r| r.uri.contains("/jobs")).count();
    let (status, _) = poll(&g, &job, KEY).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.requests()
            .iter()
            .filter(|r| r.uri.contains("/jobs"))
            .count(),
        inserts,
        "an approval runs its job once"
    );

    // Approving again is a conflict, with the server's message on stderr.
    let (code, out, err) = approvals(&g, OLIVIA, "", &["approve", &ticket]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("already") && err.contains(&ticket) && err.contains("HTTP 409"),
        "{err}"
    );

    // The audit trail: the wait, the decision (with ticket and approver), the run.
    let audit = g.audit();
    let decided = audit
        .iter()
        .find(|r| r["method"] == "approvals.approve" && r["decision"] == "allow")
        .expect("approval record");
    assert_eq!(decided["ticket"], ticket.as_str());
    assert_eq!(decided["approver"], "user:olivia");
    assert_eq!(decided["identity"], "user:olivia");
    assert_eq!(decided["reason"], "ok for the report");
    let refused = audit
        .iter()
        .find(|r| r["method"] == "approvals.approve" && r["decision"] == "deny")
        .expect("refused second approval");
    assert_eq!(refused["ticket"], ticket.as_str());
    assert!(
        audit
            .iter()
            .any(|r| r["job_id"] == job.as_str() && r["approver"] == "user:olivia"),
        "the run names its approver"
    );
    let (code, out) = g.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    let everything = g.cli(&["audit", "search", "--json"]).1 + &g.log();
    for secret in [KEY, OLIVIA] {
        assert!(
            !everything.contains(secret),
            "a key reached the audit log or logs"
        );
    }
}

#[tokio::test]
async fn who_may_decide_and_bad_requests_get_clear_refusals() {
    let up = upstream().await;
    let (g, port) = gateway("refusals", &up, "").await;
    let server = admin_url(port);
    let (job, ticket) = caught(&g, &format!("SELECT 1 /*bytes={}*/", 11 * GIB)).await;
    let get = reqwest::Method::GET;
    let post = reqwest::Method::POST;

    // Health without a credential; everything else needs one.
    let resp = reqwest::get(format!("{server}/healthz"))
        .await
        .expect("healthz");
    assert_eq!(resp.status(), 200);
    let (status, body) = admin(port, get.clone(), "/api/v1/tickets", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], 401);
    assert!(
        error_message(&body).contains("Authorization: Bearer"),
        "{body}"
    );
    let (status, body) = admin(
        port,
        get.clone(),
        "/api/v1/tickets",
        Some("qg_not_a_key"),
        None,
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(!error_message(&body).is_empty(), "{body}");
    assert!(!body.to_string().contains("qg_not_a_key"), "{body}");
    // Both refusals are in the audit log, without the presented key.
    let audit = g.audit();
    let refused: Vec<_> = audit
        .iter()
        .filter(|r| r["method"] == "admin.authenticate" && r["decision"] == "deny")
        .collect();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().any(|r| r["identity"] == "anonymous"));
    assert!(refused.iter().any(|r| r["identity"] == "unauthenticated"));
    assert!(
        !serde_json::to_string(&audit)
            .expect("json")
            .contains("qg_not_a_key")
    );

    // The CLI: no token, no server.
    let (code, _, err) = approvals(&g, "", &server, &["list"]);
    assert_eq!(code, 2);
    assert!(err.contains("QUERYGATE_TOKEN is not set"), "{err}");
    let lone = TempDir::new("no-config");
    let out = Command::new(env!("CARGO_BIN_EXE_querygate"))
        .args(["approvals", "list", "--config"])
        .arg(lone.0.join("missing.toml"))
        .env_remove("QUERYGATE_SERVER")
        .env("QUERYGATE_TOKEN", OLIVIA)
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--server") && err.contains("QUERYGATE_SERVER"),
        "{err}"
    );

    // The requester, even one in the approvers group, cannot approve its own ticket.
    let (_, alice_ticket) = {
        let (status, body) = query(&g, &format!("SELECT 2 /*bytes={}*/", 11 * GIB), ALICE).await;
        assert_eq!(body["jobComplete"], false, "{status} {body}");
        (
            body["jobReference"]["jobId"]
                .as_str()
                .expect("job")
                .to_string(),
            body["querygate"]["ticket"]
                .as_str()
                .expect("ticket")
                .to_string(),
        )
    };
    let (code, _, err) = approvals(&g, ALICE, &server, &["approve", &alice_ticket]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("user:alice asked for ticket") && err.contains("HTTP 403"),
        "{err}"
    );
    // An identity outside the approvers group cannot decide, nor see, the ticket: it does
    // not even learn that it exists.
    let (code, _, err) = approvals(&g, MALLORY, &server, &["approve", &ticket]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains(&format!("no ticket {ticket}")) && err.contains("HTTP 404"),
        "{err}"
    );
    let (code, out, _) = approvals(&g, MALLORY, &server, &["list", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).expect("json")["tickets"],
        json!([])
    );
    let (code, out, err) = approvals(&g, MALLORY, &server, &["show", &ticket]);
    assert_eq!(code, 1, "{out}");
    assert!(err.contains("HTTP 404"), "{err}");

    // Unknown ticket, malformed input.
    let (code, _, err) = approvals(&g, OLIVIA, &server, &["approve", "tk_nosuchticket"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("no ticket tk_nosuchticket") && err.contains("HTTP 404"),
        "{err}"
    );
    let (status, body) = admin(
        port,
        get.clone(),
        "/api/v1/tickets/tk_nosuchticket",
        Some(OLIVIA),
        None,
    )
    .await;
    assert_eq!((status, body["error"]["code"].clone()), (404, json!(404)));
    let approve_path = format!("/api/v1/tickets/{ticket}/approve");
    let deny_path = format!("/api/v1/tickets/{ticket}/deny");
    for (path, body, want) in [
        (&approve_path, "{not json", "must be a JSON object"),
        (&approve_path, r#"{"for": "a while"}"#, "\"for\""),
        (&approve_path, r#"{"for": "0s"}"#, "0s"),
        (
            &approve_path,
            r#"{"window": "1h"}"#,
            "unknown field `window`",
        ),
        (&approve_path, r#"{"for": "30d"}"#, "at most"),
        (&approve_path, "[1, 2]", "must be a JSON object"),
        (&deny_path, "{}", "needs a reason"),
        (&deny_path, r#"{"reason": "   "}"#, "needs a reason"),
    ] {
        let (status, answer) = admin(port, post.clone(), path, Some(OLIVIA), Some(body)).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"]["code"], 400);
        assert!(error_message(&answer).contains(want), "{body} → {answer}");
    }
    for query in ["state=waiting", "limit=0", "limit=many", "colour=blue"] {
        let (status, answer) = admin(
            port,
            get.clone(),
            &format!("/api/v1/tickets?{query}"),
            Some(OLIVIA),
            None,
        )
        .await;
        assert_eq!(status, 400, "{query} → {answer}");
        assert!(!error_message(&answer).is_empty(), "{answer}");
    }
    let (code, _, err) = approvals(&g, OLIVIA, &server, &["list", "--state", "waiting"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("unknown state \"waiting\"") && err.contains("HTTP 400"),
        "{err}"
    );
    let (code, _, err) = approvals(&g, OLIVIA, &server, &["deny", &ticket, "--reason", ""]);
    assert_eq!(code, 1);
    assert!(err.contains("needs a reason"), "{err}");
    let (status, answer) = admin(port, get.clone(), "/api/v2/nothing", Some(OLIVIA), None).await;
    assert_eq!(status, 404, "{answer}");
    assert!(
        error_message(&answer).contains("/api/v1/tickets"),
        "{answer}"
    );
    let (status, answer) = admin(port, post.clone(), "/api/v1/tickets", Some(OLIVIA), None).await;
    assert_eq!(status, 405, "{answer}");
    assert_eq!(answer["error"]["code"], 405);

    // None of that touched the ticket; a denial with a reason ends the job with it.
    let (code, out, err) = approvals(
        &g,
        OLIVIA,
        &server,
        &[
            "deny",
            &ticket,
            "--reason",
            "use the monthly aggregate table",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("denied"), "{out}");
    let (status, body) = poll(&g, &job, KEY).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        body["error"]["errors"][0]["reason"], "accessDenied",
        "{body}"
    );
    let m = error_message(&body);
    assert!(
        m.contains(&ticket)
            && m.contains("user:olivia")
            && m.contains("use the monthly aggregate table"),
        "{m}"
    );
    assert!(
        !up.requests().iter().any(|r| !dry_run(r)),
        "a denied query never ran upstream"
    );
    let (code, _, err) = approvals(&g, OLIVIA, &server, &["approve", &ticket]);
    assert_eq!(code, 1);
    assert!(
        err.contains("already denied") && err.contains("HTTP 409"),
        "{err}"
    );

    let audit = g.audit();
    let denial = audit
        .iter()
        .find(|r| {
            r["method"] == "approvals.deny"
                && r["ticket"] == ticket.as_str()
                && r["approver"] == "user:olivia"
        })
        .expect("denial record");
    assert_eq!(denial["reason"], "use the monthly aggregate table");
    for (who, method) in [
        ("user:alice", "approvals.approve"),
        ("user:mallory", "approvals.approve"),
        ("user:olivia", "approvals.deny"),
    ] {
        assert!(
            audit
                .iter()
                .any(|r| r["identity"] == who && r["method"] == method && r["decision"] == "deny"),
            "the refused attempt of {who} ({method}) is audited"
        );
    }
    assert_eq!(g.cli(&["audit", "verify"]).0, 0);
}

#[tokio::test]
async fn an_expired_ticket_ends_its_job_and_cannot_be_approved() {
    let up = upstream().await;
    let (g, port) = gateway("expiry", &up, "[approvals]\nticket_ttl = \"1s\"\n").await;
    let server = admin_url(port);
    let (job, ticket) = caught(&g, &format!("SELECT 3 /*bytes={}*/", 11 * GIB)).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, body) = poll(&g, &job, KEY).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["errors"][0]["reason"], "accessDenied");
    assert!(
        error_message(&body).contains(&ticket) && error_message(&body).contains("expired"),
        "{body}"
    );
    let (code, _, err) = approvals(&g, OLIVIA, &server, &["approve", &ticket]);
    assert_eq!(code, 1);
    assert!(err.contains("expired") && err.contains("HTTP 409"), "{err}");
    let (code, out, _) = approvals(&g, OLIVIA, &server, &["list", "--state", "expired"]);
    assert_eq!(code, 0);
    assert!(out.contains(&ticket), "{out}");

    // The sweeper expires a ticket nobody polls (and audits it).
    let (_, other) = caught(&g, &format!("SELECT 4 /*bytes={}*/", 11 * GIB)).await;
    wait_for("the sweeper", || async {
        g.cli(&["audit", "search", "--method", "approvals.expired", "--json"])
            .1
            .contains(&other)
    })
    .await;
    assert!(!up.requests().iter().any(|r| !dry_run(r)));
    assert_eq!(g.cli(&["audit", "verify"]).0, 0);
}

#[tokio::test]
async fn a_window_grant_lets_the_same_rule_run_at_once_for_the_same_identity() {
    let up = upstream().await;
    let (g, port) = gateway("window", &up, "[approvals]\nmax_window = \"2h\"\n").await;
    let server = admin_url(port);
    let (job, ticket) = caught(&g, &format!("SELECT 5 /*bytes={}*/", 12 * GIB)).await;
    let (code, _, err) = approvals(&g, OLIVIA, &server, &["approve", &ticket, "--for", "3h"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("at most 7200s") && err.contains("HTTP 400"),
        "{err}"
    );
    let (code, out, err) = approvals(
        &g,
        OLIVIA,
        &server,
        &["approve", &ticket, "--for", "1h", "--json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let t: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(t["state"], "approved");
    assert!(t["grant_until"].as_i64().is_some(), "{t}");
    assert_eq!(poll(&g, &job, KEY).await.0, 200);

    // Another statement the same rule catches runs at once, for the same identity.
    let before = up.requests().len();
    let (status, body) = query(&g, &format!("SELECT 6 /*bytes={}*/", 12 * GIB), KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobComplete"], true, "{body}");
    assert!(
        up.requests()[before..].iter().any(|r| !dry_run(r)),
        "the covered query ran upstream"
    );
    // Not for another identity.
    let (_, body) = query(&g, &format!("SELECT 7 /*bytes={}*/", 12 * GIB), ALICE).await;
    assert_eq!(body["jobComplete"], false, "{body}");
}

#[tokio::test]
async fn the_webhook_hears_of_each_new_ticket_with_a_link() {
    let up = upstream().await;
    let hook = Recorder::start(|_| (200, "ok".into())).await;
    let (g, port) = gateway(
        "webhook",
        &up,
        &format!(
            "[notify]\nwebhook = \"{}/services/T0/B0/hooktoken\"\n",
            hook.url()
        ),
    )
    .await;
    let (_, ticket) = caught(&g, &format!("SELECT 8 /*bytes={}*/", 11 * GIB)).await;
    wait_for("the webhook", || async { !hook.requests().is_empty() }).await;
    let sent = &hook.requests()[0];
    assert_eq!(sent.method, "POST");
    assert_eq!(sent.uri, "/services/T0/B0/hooktoken");
    let message: Value = serde_json::from_slice(&sent.body).expect("json");
    let text = message["text"].as_str().expect("text");
    for want in [
        ticket.as_str(),
        "agent:test",
        "large scans need an owner",
        "monthly revenue report for finance",
        &format!("http://127.0.0.1:{port}/api/v1/tickets/{ticket}"),
        &format!("querygate approvals approve {ticket}"),
    ] {
        assert!(text.contains(want), "{want:?} missing from {text:?}");
    }
    assert_eq!(message["querygate"]["id"], ticket.as_str());
    assert_eq!(message["querygate"]["state"], "pending");
    assert!(
        message["querygate"].get("parameters").is_none(),
        "query parameters (data values) stay out of chat: {message}"
    );
    // Sent once: the ticket is marked notified.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(hook.requests().len(), 1, "each ticket is sent once");
    let (_, body) = admin(
        port,
        reqwest::Method::GET,
        &format!("/api/v1/tickets/{ticket}"),
        Some(OLIVIA),
        None,
    )
    .await;
    assert_eq!(body["notified"], true, "{body}");
    assert!(
        !g.log().contains("hooktoken"),
        "the webhook URL reached the log"
    );
}

#[tokio::test]
async fn with_the_webhook_down_tickets_wait_and_are_sent_once_it_is_back() {
    let up = upstream().await;
    let hook_port = free_port();
    let (g, port) = gateway(
        "webhook-down",
        &up,
        &format!(
            "[notify]\nwebhook = \"http://127.0.0.1:{hook_port}/services/T0/B0/SECRETHOOKTOKEN\"\n"
        ),
    )
    .await;
    let (code, out) = g.cli(&["config", "check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("admin API at http://127.0.0.1:{port}"))
            && out.contains("notifying approvers at 127.0.0.1")
            && !out.contains("SECRETHOOKTOKEN"),
        "{out}"
    );
    let (_, ticket) = caught(&g, &format!("SELECT 9 /*bytes={}*/", 11 * GIB)).await;
    // Retried with a growing delay: 1 s, then 2 s.
    wait_for("a second retry warning", || async {
        g.log().contains("retrying in 2s")
    })
    .await;
    assert!(g.log().contains("retrying in 1s"), "{}", g.log());
    let log = g.log();
    let warning = log
        .lines()
        .find(|l| l.contains("cannot notify approvers"))
        .expect("warning line");
    assert!(
        warning.contains(&ticket) && warning.contains("127.0.0.1") && warning.contains("WARN"),
        "{warning}"
    );
    assert!(
        !log.contains("SECRETHOOKTOKEN"),
        "the webhook URL reached the log"
    );
    assert!(
        !log.contains("/services/"),
        "the webhook path reached the log"
    );
    let (code, out, _) = approvals(&g, OLIVIA, &admin_url(port), &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains(&ticket) && out.contains("pending"), "{out}");

    // The webhook comes back: the ticket is delivered, late but not lost.
    let hook = Recorder::start_on(hook_port, |_| (200, "ok".into())).await;
    wait_for("the delivery after the outage", || async {
        !hook.requests().is_empty()
    })
    .await;
    let message: Value = serde_json::from_slice(&hook.requests()[0].body).expect("json");
    assert_eq!(message["querygate"]["id"], ticket.as_str());
    let everything = g.cli(&["audit", "search", "--json"]).1 + &g.log();
    assert!(!everything.contains("SECRETHOOKTOKEN"));
}

#[tokio::test]
async fn a_waiting_ticket_survives_a_gateway_restart() {
    let up = upstream().await;
    let (mut g, port) = gateway("restart", &up, "").await;
    let server = admin_url(port);
    let sql = format!("SELECT 10 /*bytes={}*/", 11 * GIB);
    let (job, ticket) = caught(&g, &sql).await;
    g.restart().await;
    let (code, out, err) = approvals(&g, OLIVIA, &server, &["list", "--state", "pending"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(&ticket), "{out}");
    let (status, body) = poll(&g, &job, KEY).await;
    assert_eq!(
        (status, body["jobComplete"].clone()),
        (200, json!(false)),
        "{body}"
    );
    // A poll held for up to 10 s is answered as soon as the approval lands, with the rows.
    let held = {
        let url = g.url();
        let job = job.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let resp = reqwest::Client::new()
                .get(format!(
                    "{url}/bigquery/v2/projects/test-project/queries/{job}?timeoutMs=10000"
                ))
                .bearer_auth(KEY)
                .send()
                .await
                .expect("send");
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            (started.elapsed(), body)
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (code, out, err) = approvals(&g, OLIVIA, &server, &["approve", &ticket]);
    assert_eq!(code, 0, "{out}{err}");
    let (took, body) = held.await.expect("join");
    assert_eq!(body["jobComplete"], true, "{body}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "the held poll waited {took:?} after the approval"
    );
    let inserted = upstream_insert(&up.requests());
    assert_eq!(inserted["jobReference"]["jobId"], job.as_str());
    assert_eq!(inserted["configuration"]["query"]["query"], sql.as_str());
    assert_eq!(g.cli(&["audit", "verify"]).0, 0);
}

#[tokio::test]
async fn the_admin_api_serves_tls_with_the_gateways_certificate() {
    let up = upstream().await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    let dir = TempDir::new("admin-tls");
    let (cert_path, key_path) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("key");
    let (g, port) = gateway_with(
        "admin-tls",
        &up,
        &format!(
            "tls_cert = {:?}\ntls_key = {:?}",
            cert_path.display().to_string(),
            key_path.display().to_string()
        ),
        "",
    )
    .await;
    // The CLI derives https://127.0.0.1:PORT from the config and trusts its certificate.
    let (code, out, err) = approvals(&g, OLIVIA, "", &["list"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out.trim(), "no tickets");
    // Plaintext is not served on the admin port.
    let plain = reqwest::get(format!("http://127.0.0.1:{port}/healthz")).await;
    assert!(
        plain.is_err() || !plain.expect("resp").status().is_success(),
        "plaintext must not be served on a TLS admin port"
    );
}

#[tokio::test]
async fn a_masked_query_waits_and_runs_masked_once_approved() {
    let up = upstream().await;
    let (g, _) = gateway(
        "approvals-masked",
        &up,
        "[[classify]]\ntag = \"pii\"\ncolumns = [\"*.crm.customers.email\"]\n\n\
         [[mask]]\ntag = \"pii\"\nstrategy = \"redact\"\n",
    )
    .await;
    let sql = format!(
        "SELECT LOWER(email) AS e, 'bytes={}' AS cost FROM crm.customers",
        12 * GIB
    );
    let (job, ticket) = caught(&g, &sql).await;
    let (code, out, err) = approvals(&g, OLIVIA, "", &["approve", &ticket]);
    assert_eq!(code, 0, "{out}{err}");
    let (status, body) = poll(&g, &job, KEY).await;
    assert_eq!(status, 200, "{body}");
    // What ran upstream is the masked statement, under the held job id.
    let inserted = upstream_insert(&up.requests());
    assert_eq!(inserted["jobReference"]["jobId"], job.as_str());
    let ran = inserted["configuration"]["query"]["query"]
        .as_str()
        .expect("query");
    assert!(
        ran.contains("FROM crm.customers AS __qg_src") && ran.contains("NULL, '') AS `email`"),
        "{ran}"
    );
    // No request upstream ever carried the statement as the client wrote it.
    assert!(
        up.requests().iter().all(|r| {
            !String::from_utf8_lossy(&r.body).contains("AS cost FROM crm.customers\"")
        })
    );
    // The audit log has the rewrite beside the original, for the run too.
    let records = g.audit();
    let run = records
        .iter()
        .filter(|r| r["job_id"] == job.as_str() && r["method"] == "jobs.insert")
        .find(|r| r["phase"] == "decided")
        .expect("the approved run's decided record");
    assert_eq!(run["statement"], sql.as_str());
    assert!(
        run["rewritten"]
            .as_str()
            .is_some_and(|s| s.contains("__qg_src")),
        "{run}"
    );
}
