//! Policy end to end through the binary: rules from the config, dry-run estimates,
//! maximumBytesBilled, budgets, partition filters, row limits, reload, and the
//! `policy check` / `policy test` commands.
//!
//! The upstream is a recording server so the tests can feed dry-run byte counts and
//! partitioning (the BigQuery emulator always reports 0 bytes) and see exactly what
//! the gateway forwards. The Python client's view of denials is in tests/e2e.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const RULES: &str = r#"
[[rule]]
name = "agents never write"
who = ["group:agents"]
statements = ["insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "grant", "export", "copy"]
action = "deny"
message = "agents have read-only access; ask a person to run this change"

[[rule]]
name = "large scans need an owner"
who = ["group:agents"]
when = { bytes_over = "10 GiB" }
action = "approve"
approvers = ["group:data-owners"]

[[rule]]
name = "no huge results"
who = ["group:agents"]
when = { rows_over = 20 }
action = "deny"
message = "ask for fewer rows"

[[rule]]
name = "read"
who = ["group:agents"]
statements = ["select"]
action = "allow"
max_bytes_billed = "50 GiB"

[budgets]
"group:agents" = "25 GiB"
"#;

/// An upstream that answers dry runs with the bytes named in the SQL (`/*bytes=N*/`),
/// and real queries with `rows` rows named in the SQL (`/*rows=N*/`).
async fn upstream() -> Recorder {
    Recorder::start(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        let dry = body["configuration"]["dryRun"] == true;
        let sql = if dry {
            body["configuration"]["query"]["query"].as_str().unwrap_or("")
        } else {
            body["query"].as_str().unwrap_or("")
        };
        let num = |tag: &str| {
            sql.split(tag)
                .nth(1)
                .and_then(|s| s.split("*/").next())
                .and_then(|n| n.parse::<u64>().ok())
        };
        if dry {
            let bytes = num("/*bytes=").unwrap_or(0);
            return (200, json!({"kind": "bigquery#job", "status": {"state": "DONE"}, "statistics": {"query": {"totalBytesProcessed": bytes.to_string()}}}).to_string());
        }
        let rows = num("/*rows=").unwrap_or(1) as usize;
        let mut resp: Value = serde_json::from_str(&query_response("job-p", rows.min(5))).expect("json");
        resp["totalRows"] = json!(rows.to_string());
        resp["totalBytesBilled"] = json!(num("/*bytes=").unwrap_or(0).to_string());
        (200, resp.to_string())
    })
    .await
}

async fn run(g: &Gateway, sql: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!(
            "{}/bigquery/v2/projects/test-project/queries",
            g.url()
        ))
        .bearer_auth(KEY)
        .json(&json!({"query": sql, "useLegacySql": false}))
        .send()
        .await
        .expect("send");
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

fn message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or("").to_string()
}

const GIB: u64 = 1 << 30;

#[tokio::test]
async fn rules_decide_with_estimates_caps_budgets_and_row_limits() {
    let up = upstream().await;
    let sources = format!("{RULES}\n{}", bigquery_source(&up.url(), "\"none\""));
    let g = Gateway::start("rules", "", &sources).await;

    // A write: denied by the first rule, never dry-run, never forwarded.
    let (status, body) = run(&g, "DELETE FROM shop.t WHERE true").await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["errors"][0]["reason"], "accessDenied");
    assert!(
        message(&body).contains("rule \"agents never write\": agents have read-only access"),
        "{body}"
    );
    assert!(
        up.requests().is_empty(),
        "a denied write reached the upstream"
    );

    // 12 GiB: the estimate triggers the approve rule: the query waits for approval
    // (jobComplete false, so the client keeps polling) and nothing runs upstream.
    let (status, body) = run(&g, &format!("SELECT 1 /*bytes={}*/", 12 * GIB)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["jobComplete"], false, "{body}");
    assert!(body["jobReference"]["jobId"].as_str().is_some(), "{body}");
    let m = body["querygate"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        m.contains("large scans need an owner")
            && m.contains("group:data-owners")
            && m.contains("12.0 GiB"),
        "{m}"
    );
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "only the dry run went upstream");
    assert_eq!(
        serde_json::from_slice::<Value>(&seen[0].body).expect("json")["configuration"]["dryRun"],
        true
    );

    // 10 GiB: allowed; the forwarded query carries the rule's maximumBytesBilled.
    let (status, _) = run(&g, &format!("SELECT 2 /*bytes={}*/", 10 * GIB)).await;
    assert_eq!(status, 200);
    let forwarded: Value =
        serde_json::from_slice(&up.requests().last().expect("req").body).expect("json");
    assert_eq!(forwarded["maximumBytesBilled"], (50 * GIB).to_string());
    assert!(forwarded.get("dryRun").is_none());

    // The same statement again: the estimate is cached (no second dry run).
    let before = up.requests().len();
    let (status, _) = run(&g, &format!("SELECT 2 /*bytes={}*/", 10 * GIB)).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.requests().len(),
        before + 1,
        "cached estimate, one forwarded query"
    );

    // 20 GiB used of the 25 GiB budget: 6 GiB more would cross it.
    let (status, body) = run(&g, &format!("SELECT 3 /*bytes={}*/", 6 * GIB)).await;
    assert_eq!(status, 403);
    let m = message(&body);
    assert!(
        m.contains("daily budget of 25.0 GiB for group:agents") && m.contains("5.0 GiB remaining"),
        "{m}"
    );

    // A result over the row limit is withheld, and so are its later pages.
    let (status, body) = run(&g, "SELECT 4 /*rows=25*/").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        message(&body).contains("no huge results") && message(&body).contains("ask for fewer rows"),
        "{body}"
    );
    let (status, _) = run(&g, "SELECT 5 /*rows=20*/").await;
    assert_eq!(status, 200);

    // The audit log holds the facts, the deciding rule and the estimate.
    let audit = g.audit();
    let approve = audit
        .iter()
        .find(|r| r["rule"] == "large scans need an owner")
        .expect("approve record");
    assert_eq!(approve["decision"], "approve");
    assert!(
        approve["ticket"]
            .as_str()
            .is_some_and(|t| t.starts_with("tk_")),
        "{approve}"
    );
    assert_eq!(approve["bytes_estimate"], 12 * GIB);
    assert_eq!(approve["statement_kinds"], json!(["select"]));
    assert!(
        approve["policy_version"]
            .as_str()
            .is_some_and(|v| v.len() == 16)
    );
    let withheld = audit
        .iter()
        .find(|r| r["statement"] == "SELECT 4 /*rows=25*/" && r["phase"] == "completed")
        .expect("withheld");
    assert_eq!(withheld["decision"], "deny");
    assert_eq!(withheld["rows"], 0);
    assert_eq!(g.cli(&["audit", "verify"]).0, 0);
}

#[tokio::test]
async fn partition_filters_are_required_where_a_rule_says_so() {
    // An upstream that resolves names case-insensitively (as BigQuery's case-insensitive
    // datasets and the emulator's queries do).
    let up = Recorder::start(|r| {
        if r.method == "GET" && r.uri.to_lowercase().contains("/tables/ledger") {
            return (200, json!({"tableReference": {"tableId": "ledger"}, "timePartitioning": {"type": "DAY", "field": "event_date"}}).to_string());
        }
        (200, query_response("job-f", 1))
    })
    .await;
    let rules = r#"
[[rule]]
name = "finance needs a partition filter"
tables = ["*.finance.*"]
when = { full_scan = true }
action = "deny"
message = "filter on the partition column to read finance tables"

[[rule]]
name = "read"
statements = ["select"]
action = "allow"
"#;
    let g = Gateway::start(
        "partition",
        "",
        &format!("{rules}\n{}", bigquery_source(&up.url(), "\"none\"")),
    )
    .await;
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/bigquery/v2/projects/test-project/datasets/finance/tables/ledger/data",
            g.url()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("json");
    assert!(
        message(&body)
            .contains("filter test-project.finance.ledger on its partition column event_date"),
        "{body}"
    );
    let resp = reqwest::Client::new()
        .get(format!(
            "{}/bigquery/v2/projects/test-project/datasets/shop/tables/orders/data",
            g.url()
        ))
        .bearer_auth(KEY)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200, "non-finance tables are not affected");

    // Queries: the analyzer finds the predicate on the partition column, through aliases,
    // and a read without one (here inside a CTE) is refused with the column to filter on.
    let filtered =
        "SELECT l.amount FROM `test-project.finance.ledger` AS l WHERE l.event_date = '2026-11-01'";
    assert_eq!(run(&g, filtered).await.0, 200);
    let (status, body) = run(
        &g,
        "WITH x AS (SELECT amount FROM finance.ledger WHERE amount > 10) SELECT * FROM x",
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        message(&body).contains("partition column event_date"),
        "{body}"
    );
    // A predicate that bounds no partition, or a filter on one read that leaves another
    // read of the same table unfiltered, is still a full scan; so is every spelling.
    for sql in [
        "SELECT amount FROM finance.ledger WHERE event_date IS NOT NULL",
        "SELECT amount FROM finance.ledger WHERE event_date != '2026-11-01'",
        "SELECT amount FROM finance.ledger WHERE NOT event_date = '2026-11-01'",
        "SELECT amount FROM finance.ledger WHERE event_date = '2026-11-01' OR amount > 1",
        "SELECT a.amount FROM finance.ledger AS a JOIN finance.ledger AS b ON a.id = b.id \
         WHERE a.event_date = '2026-11-01'",
        "SELECT amount FROM finance.ledger WHERE event_date = '2026-11-01' \
         UNION ALL SELECT amount FROM finance.ledger",
        "SELECT amount FROM `test-project.FINANCE.Ledger` WHERE amount > 10",
    ] {
        let (status, body) = run(&g, sql).await;
        assert_eq!(status, 403, "{sql}: {body}");
        assert!(
            message(&body).contains("partition column event_date"),
            "{sql}: {body}"
        );
    }
    for sql in [
        "SELECT amount FROM finance.ledger WHERE event_date BETWEEN '2026-11-01' AND '2026-11-07'",
        "SELECT amount FROM finance.ledger WHERE DATE(event_date) >= DATE_SUB(CURRENT_DATE(), INTERVAL 7 DAY)",
        "SELECT amount FROM finance.ledger WHERE EVENT_DATE IN ('2026-11-01', '2026-11-02') AND amount > 1",
    ] {
        let (status, body) = run(&g, sql).await;
        assert_eq!(status, 200, "{sql}: {body}");
    }
    let audit = g.audit();
    let denied = audit
        .iter()
        .rev()
        .find(|r| r["decision"] == "deny")
        .expect("denial");
    assert_eq!(denied["tables"], json!(["test-project.FINANCE.Ledger"]));
}

#[tokio::test]
async fn policy_reloads_on_sighup_and_a_bad_file_keeps_the_running_policy() {
    let up = upstream().await;
    let deny_all =
        "[[rule]]\nname = \"closed\"\naction = \"deny\"\nmessage = \"closed for maintenance\"\n";
    let allow = "[[rule]]\nname = \"open\"\nstatements = [\"select\"]\naction = \"allow\"\n";
    let dir = TempDir::new("policy-file");
    let policy = dir.0.join("policy.toml");
    std::fs::write(&policy, deny_all).expect("write");
    let g = Gateway::start_with(
        "reload",
        &format!("policy = {:?}", policy.display().to_string()),
        "",
        &bigquery_source(&up.url(), "\"none\""),
    )
    .await;
    let (status, body) = run(&g, "SELECT 1").await;
    assert_eq!(status, 403);
    assert!(message(&body).contains("closed for maintenance"), "{body}");

    std::fs::write(&policy, allow).expect("write");
    g.hup();
    wait_for(|| async { run(&g, "SELECT 1").await.0 == 200 }).await;

    std::fs::write(&policy, "[[rule]]\nname = \"broken\"\naction = \"maybe\"\n").expect("write");
    g.hup();
    wait_for(|| async {
        g.log()
            .contains("reload failed, keeping the running policy")
    })
    .await;
    assert!(g.log().contains("action \"maybe\""), "{}", g.log());
    assert_eq!(
        run(&g, "SELECT 1").await.0,
        200,
        "the old policy still runs"
    );
}

async fn wait_for<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..100 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("condition not met within 10 s");
}

#[test]
fn policy_check_and_policy_test_explain_decisions() {
    let dir = TempDir::new("policy-cli");
    let config = dir.0.join("querygate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbigquery_listen = \"127.0.0.1:9050\"\n\n[store]\npath = \"q.db\"\n\n{RULES}\n{}",
            bigquery_source("http://127.0.0.1:1", "\"none\"")
        ),
    )
    .expect("write");
    let (code, out) = cli(
        &config,
        &[
            "policy",
            "check",
            "--as",
            "agent:x",
            "--groups",
            "agents",
            "--sql",
            "SELECT 1; DROP TABLE shop.t",
            "--json",
        ],
    );
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(out.lines().next().expect("line")).expect("json");
    assert_eq!(v["decision"], "deny");
    assert_eq!(v["rule"], "agents never write");
    assert_eq!(v["statements"], json!(["select", "drop"]));

    let (_, out) = cli(
        &config,
        &[
            "policy", "check", "--as", "agent:x", "--groups", "agents", "--sql", "SELECT 1",
        ],
    );
    assert!(
        out.contains("needs-estimate") && out.contains("--bytes"),
        "{out}"
    );
    let (_, out) = cli(
        &config,
        &[
            "policy", "check", "--as", "agent:x", "--groups", "agents", "--sql", "SELECT 1",
            "--bytes", "1 GiB",
        ],
    );
    assert!(
        out.contains("decision:   allow") && out.contains("rule:       read"),
        "{out}"
    );

    let cases = dir.0.join("policy_tests.toml");
    let mut text = String::from(
        "[[case]]\nname = \"agents cannot delete\"\nidentity = \"agent:x\"\ngroups = [\"agents\"]\nsql = \"DELETE FROM d.t WHERE true\"\nexpect = \"deny\"\nrule = \"agents never write\"\n\n\
         [[case]]\nname = \"agents read\"\nidentity = \"agent:x\"\ngroups = [\"agents\"]\nsql = \"SELECT 1\"\nbytes = \"1 GiB\"\nexpect = \"allow\"\n\n\
         [[case]]\nname = \"strangers get nothing\"\nidentity = \"agent:y\"\nsql = \"SELECT 1\"\nexpect = \"deny\"\n",
    );
    std::fs::write(&cases, &text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_querygate"))
        .args(["policy", "test", "--config"])
        .arg(&config)
        .arg(&cases)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    text.push_str("\n[[case]]\nname = \"wrong expectation\"\nidentity = \"agent:x\"\ngroups = [\"agents\"]\nsql = \"DROP TABLE d.t\"\nexpect = \"allow\"\n");
    std::fs::write(&cases, &text).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_querygate"))
        .args(["policy", "test", "--config"])
        .arg(&config)
        .arg(&cases)
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(
            "FAIL  wrong expectation: expected allow, got deny by \"agents never write\""
        ),
        "{stdout}"
    );
}

#[test]
fn a_bad_rule_fails_at_start_with_file_and_line() {
    let dir = TempDir::new("bad-rule");
    let config = dir.0.join("querygate.toml");
    std::fs::write(
        &config,
        "[server]\nbigquery_listen = \"127.0.0.1:9050\"\n\n[store]\npath = \"q.db\"\n\n[[rule]]\nname = \"r\"\nstatements = [\"upsert\"]\naction = \"deny\"\n",
    )
    .expect("write");
    let (code, out) = cli(&config, &["config", "check"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("querygate.toml, line 7") && out.contains("unknown kind \"upsert\""),
        "{out}"
    );
}

#[test]
fn policy_check_explains_masking_and_touches() {
    let dir = TempDir::new("policy-mask");
    let config = dir.0.join("querygate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbigquery_listen = \"127.0.0.1:9050\"\n\n[store]\npath = \"q.db\"\n\n{RULES}\n\
             [[classify]]\ntag = \"pii\"\ncolumns = [\"*.crm.customers.email\"]\n\n\
             [[mask]]\ntag = \"pii\"\nunmasked_for = [\"group:privacy\"]\n\n{}",
            bigquery_source("http://127.0.0.1:1", "\"none\"")
        ),
    )
    .expect("write");
    let check = |groups: &str, sql: &str| {
        let (code, out) = cli(
            &config,
            &[
                "policy",
                "check",
                "--as",
                "agent:x",
                "--groups",
                groups,
                "--sql",
                sql,
                "--bytes",
                "1 GiB",
                "--columns",
                "test-project.crm.customers=id:INTEGER,name:STRING,email:STRING",
                "--json",
            ],
        );
        assert_eq!(code, 0, "{out}");
        serde_json::from_str::<Value>(out.lines().next().expect("line")).expect("json")
    };
    // A read of the masked column runs rewritten: the check shows the statement sent.
    let v = check("agents", "SELECT LOWER(email) FROM crm.customers");
    assert_eq!(v["decision"], "allow", "{v}");
    assert_eq!(v["tags"], json!(["pii"]));
    assert_eq!(v["masked_tables"], json!(["test-project.crm.customers"]));
    assert_eq!(
        v["rewritten"],
        "SELECT LOWER(email) FROM (SELECT `id`, `name`, IF(`email` IS NULL, NULL, '') AS \
         `email` FROM crm.customers AS __qg_src) AS `customers`"
    );
    // Filtering on it is refused (predicates = "deny", the default).
    let v = check("agents", "SELECT name FROM crm.customers WHERE email = 'a'");
    assert_eq!(v["decision"], "deny", "{v}");
    assert_eq!(v["rule"], "masking");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("crm.customers.email"))
    );
    let v = check("agents", "SELECT name FROM crm.customers");
    assert_eq!(v["decision"], "allow", "{v}");
    assert_eq!(v["tags"], json!([]));
    let v = check("agents,privacy", "SELECT email FROM crm.customers");
    assert_eq!(v["decision"], "allow", "{v}");
    assert_eq!(v["tags"], json!(["pii"]));

    // A bad [[mask]] names its line.
    std::fs::write(
        &config,
        "[server]\nbigquery_listen = \"127.0.0.1:9050\"\n\n[store]\npath = \"q.db\"\n\n\
         [[classify]]\ntag = \"pii\"\ncolumns = [\"crm.customers.email\"]\n",
    )
    .expect("write");
    let (code, out) = cli(&config, &["config", "check"]);
    assert_ne!(code, 0);
    assert!(out.contains("project.dataset.table.column"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn policy_check_says_what_it_assumed_and_live_asks_the_source() {
    let up = Recorder::start(|r| {
        if r.method == "GET" && r.uri.contains("/tables/ledger") {
            return (200, json!({"tableReference": {"tableId": "ledger"}, "timePartitioning": {"type": "DAY", "field": "event_date"}, "schema": {"fields": [{"name": "event_date", "type": "DATE"}, {"name": "amount", "type": "NUMERIC"}]}}).to_string());
        }
        let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        if body["configuration"]["dryRun"] == true {
            return (200, json!({"kind": "bigquery#job", "status": {"state": "DONE"}, "statistics": {"query": {"totalBytesProcessed": (12u64 << 30).to_string()}}}).to_string());
        }
        (404, json!({"error": {"code": 404, "message": "no"}}).to_string())
    })
    .await;
    let dir = TempDir::new("policy-live");
    let config = dir.0.join("querygate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nbigquery_listen = \"127.0.0.1:9050\"\n\n[store]\npath = \"q.db\"\n\n\
             [[rule]]\nname = \"finance needs a partition filter\"\ntables = [\"*.finance.*\"]\n\
             when = {{ full_scan = true }}\naction = \"deny\"\n\n{RULES}\n{}",
            bigquery_source(&up.url(), "\"none\"")
        ),
    )
    .expect("write");
    let sql = "SELECT amount FROM finance.ledger WHERE event_date IS NOT NULL";
    let check = move |extra: &'static [&'static str]| {
        let config = config.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut args = vec![
                    "policy", "check", "--as", "agent:x", "--groups", "agents", "--sql", sql,
                ];
                args.extend_from_slice(extra);
                cli(&config, &args)
            })
            .await
            .expect("cli")
        }
    };
    // Offline: the partitioning is unknown, so the read counts as a full scan, and the
    // output says so and how to say otherwise.
    let (code, out) = check(&[]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rule:       finance needs a partition filter"),
        "{out}"
    );
    assert!(
        out.contains("assumed:    the partitioning of test-project.finance.ledger is unknown")
            && out.contains("--live"),
        "{out}"
    );
    // Told it is not partitioned: no full scan; the bytes rule then needs an estimate.
    let (_, out) = check(&["--partition", "test-project.finance.ledger="]).await;
    assert!(out.contains("needs the bytes"), "{out}");
    // Live: the source says it is partitioned on event_date, and `IS NOT NULL` bounds no
    // partition: a full scan, with the column to filter on; nothing is assumed.
    let (code, out) = check(&["--live"]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("rule:       finance needs a partition filter"),
        "{out}"
    );
    assert!(out.contains("on its partition column event_date"), "{out}");
    assert!(!out.contains("assumed:    the partitioning"), "{out}");
    // With a real partition filter, the live dry run's 12 GiB goes to the approval rule.
    let bounded = "SELECT amount FROM finance.ledger WHERE event_date = '2026-01-01'";
    let (code, out) = {
        let config = dir.0.join("querygate.toml");
        tokio::task::spawn_blocking(move || {
            cli(
                &config,
                &[
                    "policy", "check", "--as", "agent:x", "--groups", "agents", "--sql", bounded,
                    "--live", "--json",
                ],
            )
        })
        .await
        .expect("cli")
    };
    assert_eq!(code, 0, "{out}");
    let v: Value = serde_json::from_str(out.lines().next().expect("line")).expect("json");
    assert_eq!(v["decision"], "approve", "{out}");
    assert_eq!(v["rule"], "large scans need an owner");
    assert_eq!(v["assumed"], json!([]));
}
