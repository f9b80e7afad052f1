//! Pipeline tests with an in-memory source: stage order, fail-closed audit, ownership.

use std::sync::atomic::{AtomicUsize, Ordering};

use querygate_core::{ClientInfo, RequestId, Secret};
use querygate_store::Reader;

use super::*;

struct Echo {
    calls: AtomicUsize,
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
    async fn execute(&self, call: Admitted<&'static str>) -> Result<EchoReply, Fault> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(EchoReply(Summary {
            status: 200,
            rows: Some(3),
            job_id: Some(call.into_call().to_string()),
            schema: Some(r#"{"fields":[{"name":"id","type":"INTEGER"}]}"#.into()),
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
        },
        key_sha256: Secret::new("key-a").sha256_hex(),
    };
    Pipeline::new(Authenticator::new([key]), Arc::new(store))
}

fn request(key: Option<&str>, action: Action) -> Request {
    Request {
        id: RequestId("r1".into()),
        credential: key.map(Secret::new),
        client: ClientInfo::default(),
        target: "p".into(),
        method: "jobs.query".into(),
        action,
        job_id: None,
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
    let src = Echo {
        calls: AtomicUsize::new(0),
    };
    let out = p
        .handle(
            request(Some("key-a"), query("SELECT 1")),
            Some(&src),
            "job-1",
        )
        .await;
    assert!(matches!(out, Outcome::Done(_)));
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
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
    let src = Echo {
        calls: AtomicUsize::new(0),
    };
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
        (Some("key-a"), query("SELEC garbage"), DenialKind::Invalid),
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
    // Make every append fail: a trigger that aborts inserts, as a full disk would.
    rusqlite_exec(
        &dir.join("qg.db"),
        "CREATE TRIGGER no_insert BEFORE INSERT ON audit_log BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
    );
    let src = Echo {
        calls: AtomicUsize::new(0),
    };
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

fn rusqlite_exec(path: &std::path::Path, sql: &str) {
    let conn = rusqlite::Connection::open(path).expect("open");
    conn.execute_batch(sql).expect("exec");
}
