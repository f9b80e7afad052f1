//! Session recording end to end through the binary: requests of one session (named by the
//! `x-querygate-session` header) are recorded in order — statements, decisions, what went
//! upstream, status, rows and the bodies the client got — and read back with `querygate
//! sessions list|show|replay` and the admin API; large bodies are cut with the whole
//! body's digest; `record_results = false` keeps bodies out; the API key never reaches a
//! recording; and a gateway killed mid-stream (SIGKILL) leaves a readable store holding
//! everything recorded before its last quarter second, with an intact audit chain.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

/// A reader of every session (group security) and another agent.
const SAM: &str = "qg_test_security_sam_0123456789";
const OTHER: &str = "qg_test_other_agent_0123456789";

/// Answers jobs.query with as many rows as the SQL's `/*rows=N*/` asks (2 by default).
async fn upstream() -> Recorder {
    Recorder::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let sql = body["query"].as_str().unwrap_or("");
        let n = sql
            .split("/*rows=")
            .nth(1)
            .and_then(|s| s.split("*/").next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(2);
        (200, query_response(&format!("job-{n}"), n))
    })
    .await
}

fn extra_keys() -> String {
    [
        api_key("human:sam", &["security"], SAM),
        api_key("agent:other", &["agents"], OTHER),
    ]
    .concat()
}

/// Sends a query; returns status, the body bytes as received, and the request id.
async fn query(g: &Gateway, sql: &str, key: &str, session: Option<&str>) -> (u16, String, String) {
    let mut request = reqwest::Client::new()
        .post(format!(
            "{}/bigquery/v2/projects/test-project/queries",
            g.url()
        ))
        .bearer_auth(key)
        .json(&json!({"query": sql, "useLegacySql": false}));
    if let Some(s) = session {
        request = request.header("x-querygate-session", s);
    }
    let resp = request.send().await.expect("send");
    let status = resp.status().as_u16();
    let id = resp
        .headers()
        .get("x-querygate-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    (status, resp.text().await.expect("body"), id)
}

/// `sessions show ID --json`, once it holds `events` events (segments land every 250 ms).
fn show(g: &Gateway, id: &str, events: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out) = g.cli(&["sessions", "show", id, "--json"]);
        if code == 0 {
            let doc: Value = serde_json::from_str(&out).expect("show --json is one document");
            if doc["events"].as_array().map_or(0, Vec::len) >= events {
                return doc;
            }
        }
        assert!(
            Instant::now() < deadline,
            "session {id} never had {events} events: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kinds(doc: &Value) -> Vec<String> {
    doc["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("?").to_string())
        .collect()
}

fn of_type<'a>(doc: &'a Value, kind: &str) -> Vec<&'a Value> {
    doc["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

#[tokio::test]
async fn a_session_is_recorded_in_order_and_read_back() {
    let up = upstream().await;
    let admin = free_port();
    let g = Gateway::start(
        "sessions",
        &format!("admin_listen = \"127.0.0.1:{admin}\""),
        &format!(
            "{}{}\n[recording]\nmax_response_bytes = \"1 KiB\"\nreaders = [\"group:security\"]\n",
            extra_keys(),
            bigquery_source(&up.url(), "\"none\"")
        ),
    )
    .await;
    let s = Some("it-session-1");
    let (status, small, _) = query(&g, "SELECT id, email FROM d.t", KEY, s).await;
    assert_eq!(status, 200, "{small}");
    let (status, big, _) = query(&g, "SELECT id, email FROM d.t /*rows=200*/", KEY, s).await;
    assert_eq!(status, 200);
    assert!(
        big.len() > 1024,
        "the big answer must pass the recording limit"
    );
    let (status, denied, _) = query(&g, "DELETE FROM d.t WHERE true", KEY, s).await;
    assert_eq!(status, 403, "{denied}");
    // A request without a session header goes to the session the gateway assigns.
    let (status, _, _) = query(&g, "SELECT 1", KEY, None).await;
    assert_eq!(status, 200);

    let doc = show(&g, "it-session-1", 11);
    assert_eq!(
        kinds(&doc),
        [
            "request", "decision", "upstream", "response", //
            "request", "decision", "upstream", "response", //
            "request", "decision", "response"
        ]
    );
    assert_eq!(doc["session"]["identities"], json!(["agent:test"]));
    assert_eq!(doc["session"]["requests"], 3);
    let requests = of_type(&doc, "request");
    assert_eq!(requests[0]["statement"], "SELECT id, email FROM d.t");
    assert_eq!(requests[2]["statement"], "DELETE FROM d.t WHERE true");
    assert_eq!(requests[0]["identity"], "agent:test");
    let decisions: Vec<&Value> = of_type(&doc, "decision")
        .into_iter()
        .map(|d| &d["decision"])
        .collect();
    assert_eq!(
        decisions,
        [&json!("allow"), &json!("allow"), &json!("deny")]
    );
    let upstream = of_type(&doc, "upstream");
    assert_eq!(upstream[0]["statement"], "SELECT id, email FROM d.t");
    let responses = of_type(&doc, "response");
    // The small answer is recorded whole: the body is what the client got.
    assert_eq!(responses[0]["status"], 200);
    assert_eq!(responses[0]["rows"], 2);
    assert_eq!(responses[0]["body"], small.as_str());
    assert_eq!(responses[0]["sha256"], sha256_hex(&small).as_str());
    let rows: Value = serde_json::from_str(responses[0]["body"].as_str().expect("body"))
        .expect("a whole body parses");
    assert_eq!(rows["rows"][1]["f"][1]["v"], "user2@example.com");
    // The big one up to 1 KiB, with the size and digest of the whole.
    assert_eq!(responses[1]["rows"], 200);
    assert_eq!(responses[1]["truncated"], true);
    assert_eq!(
        responses[1]["body"].as_str().map(str::len),
        Some(1024),
        "cut at max_response_bytes"
    );
    assert!(big.starts_with(responses[1]["body"].as_str().expect("body")));
    assert_eq!(responses[1]["total_bytes"], big.len());
    assert_eq!(responses[1]["sha256"], sha256_hex(&big).as_str());
    // The denial: the message the client got, no body.
    assert_eq!(responses[2]["status"], 403);
    assert!(responses[2]["body"].is_null());
    assert!(
        denied.contains(responses[2]["error"].as_str().expect("error")),
        "{denied}"
    );

    // The key never reaches a recording (nor the transcript, nor the list).
    let (_, text) = g.cli(&["sessions", "show", "it-session-1"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let listed = loop {
        let (_, listed) = g.cli(&["sessions", "list", "--json"]);
        if listed.lines().count() >= 2 || Instant::now() > deadline {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for out in [&doc.to_string(), &text, &listed] {
        assert!(!out.contains(KEY), "the API key reached a recording");
    }
    // The transcript a person reads.
    for want in [
        "session it-session-1 — agent:test",
        "▶ jobs.query by agent:test on analytics",
        "      SELECT id, email FROM d.t",
        "decision: deny",
        "◀ 200, 2 rows",
        "| 2 | user2@example.com |",
        "(body recorded in part; sha256 of the whole:",
    ] {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
    // The list: the named session and the assigned one, newest first.
    let sessions: Vec<Value> = listed
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(sessions.len(), 2, "{listed}");
    assert!(
        sessions
            .iter()
            .any(|s| s["id"].as_str().is_some_and(|i| i.starts_with("ss_")))
    );
    let (code, none) = g.cli(&["sessions", "list", "--identity", "agent:nobody", "--json"]);
    assert_eq!((code, none.trim()), (0, ""));
    let (_, recent) = g.cli(&["sessions", "list", "--since", "1h", "--json"]);
    assert_eq!(recent.lines().count(), 2);

    // Replay prints the same transcript, paced (fast here), or the events as JSON Lines.
    let started = Instant::now();
    let (code, replayed) = g.cli(&["sessions", "replay", "it-session-1", "--speed", "1000"]);
    assert_eq!(code, 0, "{replayed}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(replayed, text);
    let (_, lines) = g.cli(&[
        "sessions",
        "replay",
        "it-session-1",
        "--json",
        "--speed",
        "1000",
    ]);
    assert_eq!(lines.lines().count(), 11);
    let (code, missing) = g.cli(&["sessions", "show", "no-such-session"]);
    assert!(
        code != 0 && missing.contains("no session no-such-session"),
        "{missing}"
    );

    // The audit records name the session.
    let audit = g.audit();
    let in_session = audit
        .iter()
        .filter(|r| r["session"] == "it-session-1")
        .count();
    assert_eq!(in_session, 5, "2 decided + 2 completed + 1 denial");

    // The admin API: the identity reads its own session, a reader reads any, others nothing.
    let get = |key: &'static str, path: String| async move {
        let r = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{admin}{path}"))
            .bearer_auth(key)
            .send()
            .await
            .expect("send");
        (
            r.status().as_u16(),
            r.json::<Value>().await.unwrap_or(Value::Null),
        )
    };
    let (status, own) = get(KEY, "/api/v1/sessions/it-session-1".into()).await;
    assert_eq!(status, 200, "{own}");
    assert_eq!(own["events"].as_array().map(Vec::len), Some(11));
    let (status, _) = get(SAM, "/api/v1/sessions/it-session-1".into()).await;
    assert_eq!(status, 200);
    let (status, body) = get(OTHER, "/api/v1/sessions/it-session-1".into()).await;
    assert_eq!(status, 404, "{body}");
    let (_, listed) = get(OTHER, "/api/v1/sessions".into()).await;
    assert_eq!(listed["sessions"], json!([]));
    let (_, listed) = get(
        SAM,
        "/api/v1/sessions?since=1h&identity=agent%3Atest".into(),
    )
    .await;
    assert_eq!(listed["sessions"].as_array().map(Vec::len), Some(2));
    let (status, body) = get(SAM, "/api/v1/sessions?sinse=1h".into()).await;
    assert_eq!(status, 400, "{body}");

    let (code, out) = g.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
}

#[tokio::test]
async fn record_results_false_keeps_bodies_out() {
    let up = upstream().await;
    let source = bigquery_source(&up.url(), "\"none\"") + "record_results = false\n";
    let g = Gateway::start("sessions-nobody", "", &source).await;
    let (status, body, _) = query(&g, "SELECT id, email FROM d.t", KEY, Some("quiet")).await;
    assert_eq!(status, 200);
    let doc = show(&g, "quiet", 4);
    assert_eq!(kinds(&doc), ["request", "decision", "upstream", "response"]);
    let response = of_type(&doc, "response")[0];
    assert_eq!(response["rows"], 2);
    assert_eq!(response["body_omitted"], true);
    assert_eq!(response["total_bytes"], body.len());
    assert!(response["body"].is_null() && response["sha256"].is_null());
    assert!(!doc.to_string().contains("user1@example.com"));
}

#[tokio::test]
async fn a_killed_gateway_leaves_a_readable_store_with_what_it_recorded() {
    let up = upstream().await;
    let mut g = Gateway::start("sessions-kill", "", &bigquery_source(&up.url(), "\"none\"")).await;
    // A stream of requests in one session; the gateway is killed while it runs.
    let url = g.url();
    let stream = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut answered = Vec::new();
        for i in 0..2000 {
            let sent = client
                .post(format!("{url}/bigquery/v2/projects/test-project/queries"))
                .bearer_auth(KEY)
                .header("x-querygate-session", "stream")
                .json(&json!({"query": format!("SELECT {i}"), "useLegacySql": false}))
                .send()
                .await;
            let Ok(resp) = sent else { break };
            let id = resp
                .headers()
                .get("x-querygate-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            if resp.text().await.is_err() {
                break;
            }
            answered.push((id, Instant::now()));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        answered
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    g.kill();
    let killed = Instant::now();
    let answered = stream.await.expect("stream");
    assert!(answered.len() > 10, "too few requests before the kill");

    // The store reads; every request answered before the last half second is recorded
    // whole (a segment is written at most 250 ms after its first event).
    let doc = show(&g, "stream", 1);
    let events = doc["events"].as_array().expect("events");
    let answered_early: Vec<&String> = answered
        .iter()
        .filter(|(_, at)| killed.duration_since(*at) > Duration::from_millis(500))
        .map(|(id, _)| id)
        .collect();
    assert!(!answered_early.is_empty());
    for id in &answered_early {
        let of_request: Vec<&str> = events
            .iter()
            .filter(|e| e["request_id"] == id.as_str())
            .map(|e| e["type"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(
            of_request,
            ["request", "decision", "upstream", "response"],
            "request {id} answered before the kill is not recorded whole"
        );
    }
    eprintln!(
        "killed after {} answered requests; {} events recorded, {} requests answered in the last 500 ms",
        answered.len(),
        events.len(),
        answered.len() - answered_early.len()
    );
    let (code, out) = g.cli(&["audit", "verify"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = g.cli(&["sessions", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("stream"), "{out}");
}

/// Latency with and without recording, and the stored size per request (run with
/// `cargo test -p querygate --test sessions -- --ignored --nocapture`; a debug build
/// measures the debug binary).
#[tokio::test]
#[ignore = "a measurement, not a check"]
async fn recording_overhead() {
    let up = upstream().await;
    for enabled in [false, true] {
        let g = Gateway::start(
            "sessions-bench",
            "",
            &format!(
                "{}\n[recording]\nenabled = {enabled}\n",
                bigquery_source(&up.url(), "\"none\"")
            ),
        )
        .await;
        let client = reqwest::Client::new();
        let mut took = Vec::new();
        for i in 0..1200 {
            let started = Instant::now();
            let resp = client
                .post(format!("{}/bigquery/v2/projects/test-project/queries", g.url()))
                .bearer_auth(KEY)
                .json(&json!({"query": format!("SELECT id, email FROM d.t /*rows=20*/ -- {i}"), "useLegacySql": false}))
                .send()
                .await
                .expect("send");
            assert_eq!(resp.status(), 200);
            resp.bytes().await.expect("body");
            if i >= 200 {
                took.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        took.sort_by(f64::total_cmp);
        let pct = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
        let stored = if enabled {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let (_, out) = g.cli(&["sessions", "list", "--json"]);
            let s: Value =
                serde_json::from_str(out.lines().next().expect("a session")).expect("json");
            format!(
                ", {} requests recorded: {} B of JSON → {} B stored ({:.0} B per request)",
                s["requests"],
                s["raw_bytes"],
                s["stored_bytes"],
                s["stored_bytes"].as_f64().unwrap_or(0.0) / s["requests"].as_f64().unwrap_or(1.0)
            )
        } else {
            String::new()
        };
        eprintln!(
            "recording {}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms over {} requests{stored}",
            if enabled { "on " } else { "off" },
            pct(0.5),
            pct(0.9),
            pct(0.99),
            took.len()
        );
    }
}
