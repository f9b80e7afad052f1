//! Pipeline tests with an in-memory source: stage order, fail-closed audit, ownership.

use std::sync::atomic::{AtomicUsize, Ordering};

use querygate_core::{ClientInfo, RequestId, Secret};
use querygate_store::Reader;

use super::*;

#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
    estimates: AtomicUsize,
    limited: AtomicUsize,
    bytes: u64,
}

#[derive(Debug)]
struct EchoReply(Summary);

impl Reply for EchoReply {
    fn summary(&self) -> Summary {
        self.0.clone()
    }
    fn restrict(&mut self, _scope: &Scope) {}
}

impl Source for Echo {
    type Call = &'static str;
    type Reply = EchoReply;
    fn name(&self) -> &str {
        "echo"
    }
    fn default_project(&self) -> &str {
        "p"
    }
    async fn estimate(&self, _call: &&'static str) -> Result<u64, Refusal> {
        self.estimates.fetch_add(1, Ordering::SeqCst);
        Ok(self.bytes)
    }
    async fn partitioning(&self, _table: &str) -> Result<Partitioning, Fault> {
        Ok(Partitioning::NotPartitioned)
    }
    fn limit_bytes(&self, _call: &mut &'static str, bytes: u64) {
        self.limited.store(bytes as usize, Ordering::SeqCst);
    }
    fn hold(&self, call: &&'static str, _request_id: &str) -> Option<Held> {
        Some(Held {
            job_id: call.to_string(),
            location: None,
            call: call.to_string(),
            parameters: None,
        })
    }
    fn resume(&self, saved: &str) -> Result<&'static str, Fault> {
        Ok(Box::leak(saved.to_string().into_boxed_str()))
    }
    async fn execute(&self, call: Admitted<&'static str>) -> Result<EchoReply, Fault> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(EchoReply(Summary {
            status: 200,
            rows: Some(3),
            job_id: Some(call.into_call().to_string()),
            schema: Some(r#"{"fields":[{"name":"id","type":"INTEGER"}]}"#.into()),
            bytes_billed: Some(self.bytes),
            ..Summary::default()
        }))
    }
}

fn pipeline(dir: &std::path::Path) -> Pipeline {
    let store = Store::open(&dir.join("qg.db")).expect("store");
    let key = ApiKey {
        identity: Identity {
            subject: "agent:a".into(),
            groups: vec!["agents".into()],
            kind: querygate_core::IdentityKind::Agent,
            ..Identity::default()
        },
        key_sha256: Secret::new("key-a").sha256_hex(),
        expires: None,
    };
    Pipeline::new(
        Authenticator::new([key]),
        policies(querygate_policy::Policy::builtin_read_only()),
        Arc::new(store),
    )
}

fn policies(policy: querygate_policy::Policy) -> PolicySet {
    let mut set = PolicySet::default();
    set.sources.insert("echo".into(), Arc::new(policy));
    set
}

fn request(key: Option<&str>, action: Action) -> Request {
    Request {
        id: RequestId("r1".into()),
        credential: key.map(Secret::new),
        delegation: None,
        client: ClientInfo::default(),
        target: "p".into(),
        method: "jobs.query".into(),
        action,
        job_id: None,
        reason: None,
    }
}

fn query(sql: &str) -> Action {
    Action::Query {
        statement: sql.into(),
        dry_run: false,
        destination: None,
        dialect_problem: None,
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("qg-pipe-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).expect("mkdir");
    p
}

fn records(dir: &std::path::Path) -> Vec<AuditRecord> {
    let mut out = Vec::new();
    Reader::open(&dir.join("qg.db"))
        .expect("reader")
        .records(&Default::default(), None, |r| out.push(r.record.clone()))
        .expect("records");
    out
}

#[tokio::test]
async fn allowed_query_reaches_source_and_is_audited_twice() {
    let dir = tmp("allow");
    let p = pipeline(&dir);
    let src = Echo::default();
    let out = p
        .handle(
            request(Some("key-a"), query("SELECT 1")),
            Some(&src),
            "job-1",
        )
        .await;
    assert!(matches!(out, Outcome::Done(_)));
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    p.store().flush().await.expect("flush");
    let recs = records(&dir);
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].phase, Phase::Decided);
    assert_eq!(recs[1].rows, Some(3));
    assert_eq!(recs[1].job_id.as_deref(), Some("job-1"));
    assert_eq!(recs[0].statement.as_deref(), Some("SELECT 1"));
    // The job is now owned by agent:a.
    let job = p
        .store()
        .job("echo", "job-1")
        .expect("read")
        .expect("claimed");
    assert_eq!(job.identity, "agent:a");
    // The schema is remembered for pages that arrive without one (`fields=`).
    assert!(job.schema.is_some_and(|s| s.contains("INTEGER")));
}

#[tokio::test]
async fn bad_key_and_writes_never_reach_the_source() {
    let dir = tmp("deny");
    let p = pipeline(&dir);
    let src = Echo::default();
    for (key, action, kind) in [
        (None, query("SELECT 1"), DenialKind::Unauthenticated),
        (
            Some("wrong"),
            query("SELECT 1"),
            DenialKind::Unauthenticated,
        ),
        (
            Some("key-a"),
            query("DELETE FROM d.t WHERE true"),
            DenialKind::Forbidden,
        ),
        (
            Some("key-a"),
            query("SELECT 1; DROP TABLE d.t"),
            DenialKind::Forbidden,
        ),
        (Some("key-a"), query("SELEC garbage"), DenialKind::Forbidden),
        (
            Some("key-a"),
            Action::Other {
                what: "tabledata.insertAll".into(),
            },
            DenialKind::Forbidden,
        ),
        (
            Some("key-a"),
            Action::ReadJob {
                job_id: "someone-elses".into(),
            },
            DenialKind::NotFound,
        ),
    ] {
        match p
            .handle(request(key, action.clone()), Some(&src), "x")
            .await
        {
            Outcome::Denied(d) => assert_eq!(d.kind, kind, "{action:?}"),
            other => panic!("{action:?} was not denied: {other:?}"),
        }
    }
    assert_eq!(src.calls.load(Ordering::SeqCst), 0);
    p.store().flush().await.expect("flush");
    let recs = records(&dir);
    assert_eq!(recs.len(), 7);
    assert!(recs.iter().all(|r| r.decision == "deny"));
    assert_eq!(recs[0].identity, "anonymous");
    assert_eq!(recs[1].identity, "unauthenticated");
    assert!(!recs.iter().any(|r| r.canonical().contains("wrong")));
}

#[tokio::test]
async fn unwritable_audit_log_fails_closed() {
    let dir = tmp("closed");
    let p = pipeline(&dir);
    // Make every append fail, as a store that stopped writing would (a failing disk is
    // the store's own test).
    p.store().close();
    let src = Echo::default();
    let out = p
        .handle(request(Some("key-a"), query("SELECT 1")), Some(&src), "j")
        .await;
    assert!(matches!(out, Outcome::Failed(_)), "{out:?}");
    assert_eq!(
        src.calls.load(Ordering::SeqCst),
        0,
        "nothing may run unaudited"
    );
}

#[tokio::test]
async fn rules_ask_for_an_estimate_cap_bytes_and_enforce_budgets() {
    use querygate_policy::{Budget, Principal, Rule, RuleAction, When};
    let dir = tmp("budget");
    let p = pipeline(&dir);
    let rule = |name: &str, action, when: When, max: Option<u64>| Rule {
        name: name.into(),
        who: vec![],
        on_behalf_of: vec![],
        tables: vec![],
        statements: vec![],
        when,
        action,
        message: Some(format!("{name} says no")),
        approvers: vec![],
        max_bytes_billed: max,
    };
    let mut set = policies(querygate_policy::Policy::new(vec![
        rule(
            "big",
            RuleAction::Deny,
            When {
                bytes_over: Some(1000),
                ..When::default()
            },
            None,
        ),
        rule("read", RuleAction::Allow, When::default(), Some(5000)),
    ]));
    set.budgets.push(Budget {
        who: Principal::Group("agents".into()),
        bytes_per_day: 1500,
    });
    let keys = Authenticator::new([ApiKey {
        identity: Identity {
            subject: "agent:a".into(),
            groups: vec!["agents".into()],
            kind: querygate_core::IdentityKind::Agent,
            ..Identity::default()
        },
        key_sha256: Secret::new("key-a").sha256_hex(),
        expires: None,
    }]);
    p.reload(keys, set);
    let small = Echo {
        bytes: 600,
        ..Echo::default()
    };
    // 600 bytes: allowed, capped at the rule's 5000, charged to the budget.
    for _ in 0..2 {
        let out = p
            .handle(request(Some("key-a"), query("SELECT 1")), Some(&small), "j")
            .await;
        assert!(matches!(out, Outcome::Done(_)), "{out:?}");
    }
    assert_eq!(small.limited.load(Ordering::SeqCst), 5000);
    assert_eq!(small.estimates.load(Ordering::SeqCst), 2);
    // Two queries billed 1200 of the 1500 daily budget: a third 600 would cross it.
    match p
        .handle(request(Some("key-a"), query("SELECT 1")), Some(&small), "j")
        .await
    {
        Outcome::Denied(d) => assert!(
            d.message.contains("daily budget") && d.message.contains("300 B remaining"),
            "{}",
            d.message
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(small.calls.load(Ordering::SeqCst), 2);
    // 2000 bytes: over the rule's 1000 → denied by rule "big", with its message.
    let big = Echo {
        bytes: 2000,
        ..Echo::default()
    };
    match p
        .handle(request(Some("key-a"), query("SELECT 2")), Some(&big), "j")
        .await
    {
        Outcome::Denied(d) => assert!(
            d.message.contains("rule \"big\"") && d.message.contains("big says no"),
            "{}",
            d.message
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(big.calls.load(Ordering::SeqCst), 0);
    p.store().flush().await.expect("flush");
    let recs = records(&dir);
    let last = recs.last().expect("records");
    assert_eq!(last.rule.as_deref(), Some("big"));
    assert_eq!(last.bytes_estimate, Some(2000));
    assert_eq!(last.statement_kinds, vec!["select"]);
}

#[test]
fn a_select_with_side_effects_is_not_a_read() {
    let facts = querygate_sql::analyze("SELECT nextval('s')", querygate_sql::SqlDialect::Postgres);
    assert_eq!(Subject::of(&facts, "p").kinds, vec![StatementKind::Other]);
    let facts = querygate_sql::analyze(
        "SELECT a FROM d.t WHERE b = 1",
        querygate_sql::SqlDialect::BigQuery,
    );
    let s = Subject::of(&facts, "p");
    assert_eq!(s.kinds, vec![StatementKind::Select]);
    assert_eq!(s.tables.len(), 1);
    assert_eq!(s.tables[0].name, "p.d.t");
    assert_eq!(s.tables[0].filtered, vec!["b"]);
}
