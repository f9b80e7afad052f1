//! Pipeline tests with an in-memory source: stage order, fail-closed audit, ownership.

use std::sync::atomic::{AtomicUsize, Ordering};

use querygate_core::{AuditRecord, ClientInfo, Phase, RequestId, Secret, TicketState};
use querygate_policy::StatementKind;
use querygate_store::Reader;

use super::*;

#[derive(Default)]
struct Echo {
    calls: AtomicUsize,
    estimates: AtomicUsize,
    limited: AtomicUsize,
    bytes: u64,
    /// An error every answer carries (as an upstream echoing a value would).
    error: Option<String>,
    /// Statements the masking rewrite gave the source, in order.
    rewritten: std::sync::Mutex<Vec<String>>,
    /// The HTTP-style status every answer has (200 when unset).
    status: Option<u16>,
    /// The source says nothing of bytes before a query runs (as PostgreSQL).
    no_bytes: bool,
}

#[derive(Debug)]
struct EchoReply(Summary, Streaming);

/// A reply whose call starts with `stream` holds only the start of its result.
#[derive(Debug, Default)]
struct Streaming {
    open: bool,
    end: Option<Ending>,
}

impl Reply for EchoReply {
    fn summary(&self) -> Summary {
        self.0.clone()
    }
    fn answer(&self) -> Answer {
        Answer::Rows(ResultSet {
            total_rows: self.0.total_rows,
            job_id: self.0.job_id.clone(),
            ..ResultSet::default()
        })
    }
    fn restrict(&mut self, _scope: &Scope) {}
    fn withhold_errors(&mut self, why: &str) -> bool {
        let had = self.0.error.is_some();
        if had {
            self.0.error = Some(format!("withheld: {why}"));
        }
        had
    }
    fn body(&self) -> bytes::Bytes {
        bytes::Bytes::from_static(br#"{"rows":[1,2,3]}"#)
    }
    fn is_open(&self) -> bool {
        self.1.open
    }
    fn stream(&mut self, end: Ending) {
        self.1.end = Some(end);
    }
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
    fn dialect(&self) -> SqlDialect {
        SqlDialect::BigQuery
    }
    fn call_for(&self, action: &Action, _paging: &Paging) -> Result<&'static str, Denial> {
        match action {
            Action::Query(_) => Ok("neutral-query"),
            _ => Err(Denial::new(
                DenialKind::Invalid,
                "echo answers queries only",
            )),
        }
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
    fn bills_bytes(&self) -> bool {
        !self.no_bytes
    }
    fn hold(&self, call: &&'static str, _request_id: &str) -> Option<Held> {
        Some(Held {
            job_id: call.to_string(),
            location: None,
            call: call.to_string(),
            parameters: None,
        })
    }
    fn resume(&self, saved: &str) -> Result<Resumed<&'static str>, Fault> {
        Ok(Resumed {
            call: Box::leak(saved.to_string().into_boxed_str()),
            method: "jobs.insert".into(),
        })
    }
    async fn columns(&self, table: &str) -> Result<Vec<Column>, Fault> {
        let column = |name: &str, data_type: &str, repeated: bool| Column {
            name: name.into(),
            data_type: data_type.into(),
            repeated,
        };
        match table {
            "p.crm.customers" => Ok(vec![
                column("id", "INTEGER", false),
                column("name", "STRING", false),
                column("email", "STRING", false),
                column("ssn", "STRING", false),
                column("phone", "STRING", false),
                column("contacts", "RECORD", true),
                column("payload", "JSON", false),
            ]),
            "p.sales.orders" => Ok(vec![
                column("id", "INTEGER", false),
                column("phone", "STRING", false),
            ]),
            other => Err(Fault::gateway(format!("no table {other}"))),
        }
    }
    async fn view(&self, table: &str) -> Result<Option<View>, Fault> {
        let view = |query: &str| {
            Some(View {
                query: query.into(),
                legacy_sql: false,
            })
        };
        Ok(match table.to_lowercase().as_str() {
            "p.crm.v_contacts" => view("SELECT id, email FROM crm.customers"),
            "p.crm.v_nested" => view("SELECT * FROM p.crm.v_contacts WHERE id > 1"),
            "p.crm.v_wild" => view("SELECT * FROM `p.sales.ord*`"),
            "p.crm.v_names" => view("SELECT id, name FROM crm.customers"),
            "p.crm.v_hidden" => view(""),
            "p.crm.v_loop" => view("SELECT * FROM crm.v_loop"),
            _ => None,
        })
    }
    fn rewrite(&self, _call: &mut &'static str, statement: &str) -> Result<(), Denial> {
        self.rewritten
            .lock()
            .expect("lock")
            .push(statement.to_string());
        Ok(())
    }
    async fn execute(&self, call: Admitted<&'static str>) -> Result<EchoReply, Fault> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let open = call.call().starts_with("stream");
        let streaming = Streaming { open, end: None };
        Ok(EchoReply(
            Summary {
                status: self.status.unwrap_or(200),
                accepted: self.status.is_none_or(|s| (200..300).contains(&s)),
                rows: Some(3),
                total_rows: Some(3),
                job_id: Some(call.into_call().to_string()),
                schema: Some(r#"{"fields":[{"name":"id","type":"INTEGER"}]}"#.into()),
                bytes_billed: Some(self.bytes),
                error: self.error.clone(),
                ..Summary::default()
            },
            streaming,
        ))
    }
}

/// A config API key for `subject` in `group`, its kind from the subject's prefix.
fn api_key(subject: &str, group: &str, key: &str) -> ApiKey {
    ApiKey {
        identity: Identity {
            subject: subject.into(),
            groups: vec![group.into()],
            kind: Identity::kind_from_subject(subject),
            ..Identity::default()
        },
        key_sha256: Secret::new(key).sha256_hex(),
        expires: None,
    }
}

fn pipeline(dir: &std::path::Path) -> Pipeline {
    let store = Store::open(&dir.join("qg.db")).expect("store");
    Pipeline::new(
        Authenticator::new([api_key("agent:a", "agents", "key-a")]),
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
        audience: None,
        client: ClientInfo::default(),
        target: "p".into(),
        method: "jobs.query".into(),
        action,
        job_id: None,
        reason: None,
        wait: None,
        session: None,
        codes: &TestCodes,
    }
}

fn query(sql: &str) -> Action {
    Action::Query(Query::new(sql))
}

/// The status codes the tests' requests are recorded with: the BigQuery front's numbers.
#[derive(Debug)]
struct TestCodes;

impl querygate_core::StatusCodes for TestCodes {
    fn denied(&self, kind: DenialKind) -> u16 {
        match kind {
            DenialKind::Unauthenticated | DenialKind::Forbidden => 403,
            DenialKind::NotFound => 404,
            DenialKind::Invalid => 400,
            DenialKind::TooLarge => 413,
            DenialKind::Conflict => 409,
            DenialKind::Unavailable => 503,
        }
    }

    fn failed(&self, fault: &Fault) -> u16 {
        if fault.retryable { 502 } else { 403 }
    }

    fn waiting(&self) -> u16 {
        200
    }

    fn done(&self) -> u16 {
        200
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
async fn a_neutral_query_runs_through_every_stage_and_answers_in_neutral_terms() {
    let dir = tmp("neutral");
    let p = pipeline(&dir);
    let src = Echo::default();
    let sources = Sources::new([Arc::new(Echo::default())]);
    assert!(sources.get("p").is_some() && sources.named("echo").is_some());
    assert!(
        sources.get("echo").is_none(),
        "clients address a source by its project"
    );
    let action = query("SELECT 1");
    let call = src
        .call_for(&action, &Paging::default())
        .expect("echo serves queries");
    let out = p
        .handle(request(Some("key-a"), action), Some(&src), call)
        .await;
    let Outcome::Done(reply) = out else {
        panic!("allowed: {out:?}");
    };
    assert!(matches!(reply.answer(), Answer::Rows(_)));
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    // A neutral write is decided like any other: refused before it reaches the source.
    let write = query("DELETE FROM d.t WHERE TRUE");
    let call = src.call_for(&write, &Paging::default()).expect("a call");
    let out = p
        .handle(request(Some("key-a"), write), Some(&src), call)
        .await;
    assert!(matches!(out, Outcome::Denied(_)), "{out:?}");
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    p.store().flush().await.expect("flush");
    let recs = records(&dir);
    assert_eq!(recs.len(), 3, "decided + completed, then one denial");
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
async fn a_streaming_reply_completes_when_read_to_its_end_or_left() {
    let dir = tmp("stream");
    let p = pipeline(&dir);
    let src = Echo::default();
    let out = p
        .handle(
            request(Some("key-a"), query("SELECT 1")),
            Some(&src),
            "stream-1",
        )
        .await;
    let Outcome::Done(mut reply) = out else {
        panic!("allowed: {out:?}");
    };
    p.store().flush().await.expect("flush");
    assert_eq!(
        records(&dir).len(),
        1,
        "decided only: the result is still streaming"
    );
    let end = reply
        .1
        .end
        .take()
        .expect("the open reply was given its ending");
    assert!(!end.scrubs() && end.withholds().is_none());
    end.finish(Summary {
        status: 200,
        rows: Some(1_000_000),
        ..Summary::default()
    });
    // A reply left before its end (the client went away) completes with that error.
    let out = p
        .handle(
            request(Some("key-a"), query("SELECT 2")),
            Some(&src),
            "stream-2",
        )
        .await;
    assert!(matches!(out, Outcome::Done(_)));
    drop(out);
    p.store().flush().await.expect("flush");
    let recs = records(&dir);
    assert_eq!(recs.len(), 4, "{recs:?}");
    assert_eq!(
        (recs[1].phase, recs[1].rows),
        (Phase::Completed, Some(1_000_000))
    );
    assert!(recs[1].error.is_none() && recs[1].duration_ms.is_some());
    assert_eq!(recs[3].phase, Phase::Completed);
    let error = recs[3].error.as_deref().unwrap_or_default();
    assert!(error.contains("not read to its end"), "{error}");
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
        // A syntax error is answered as one (400), not as a policy denial.
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
            Action::Job(JobOp::Get {
                job_id: "someone-elses".into(),
            }),
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
        on_approval: querygate_policy::OnApproval::Wait,
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
        per_day: querygate_policy::Amount::Bytes(1500),
    });
    let keys = Authenticator::new([api_key("agent:a", "agents", "key-a")]);
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

/// A rule that allows everything.
fn allow_all() -> querygate_policy::Rule {
    querygate_policy::Rule {
        name: "all".into(),
        who: vec![],
        on_behalf_of: vec![],
        tables: vec![],
        statements: vec![],
        when: querygate_policy::When::default(),
        action: querygate_policy::RuleAction::Allow,
        message: None,
        approvers: vec![],
        max_bytes_billed: None,
        on_approval: querygate_policy::OnApproval::Wait,
    }
}

#[tokio::test]
async fn row_budgets_hold_sources_that_say_nothing_of_bytes() {
    use querygate_policy::{Amount, Budget, Principal};
    let dir = tmp("row-budget");
    let p = pipeline(&dir);
    let mut set = policies(querygate_policy::Policy::new(vec![allow_all()]));
    let budget = |per_day| Budget {
        who: Principal::Group("agents".into()),
        per_day,
    };
    // A byte budget holds where bytes are billed; this source bills none.
    set.budgets.push(budget(Amount::Bytes(10)));
    set.budgets.push(budget(Amount::Rows(8)));
    set.budgets.push(budget(Amount::Rows(100)));
    let keys = Authenticator::new([api_key("agent:a", "agents", "key-a")]);
    p.reload(keys, set);
    let src = Echo {
        bytes: 600,
        no_bytes: true,
        ..Echo::default()
    };
    // Each answer has 3 rows: a query's first page, then a page of its job's results read
    // later (BigQuery's getQueryResults): 6 of the smaller budget (8) used.
    let out = p
        .handle(request(Some("key-a"), query("SELECT 1")), Some(&src), "j")
        .await;
    assert!(matches!(out, Outcome::Done(_)), "{out:?}");
    let page = Action::Job(JobOp::Results { job_id: "j".into() });
    let out = p
        .handle(request(Some("key-a"), page), Some(&src), "j")
        .await;
    assert!(matches!(out, Outcome::Done(_)), "{out:?}");
    assert_eq!(src.estimates.load(Ordering::SeqCst), 0, "no estimate asked");
    // 2 rows left: a 3-row result is withheld, and charges nothing.
    match p
        .handle(request(Some("key-a"), query("SELECT 1")), Some(&src), "j")
        .await
    {
        Outcome::Denied(d) => assert!(
            d.message.contains("more than 2 rows")
                && d.message
                    .contains("daily budget of 8 rows for group:agents")
                && d.message.contains("6 rows used today"),
            "{}",
            d.message
        ),
        other => panic!("{other:?}"),
    }
    // A write is charged what it changed (it cannot be held to a limit): 3 more, 9 of 8.
    let out = p
        .handle(
            request(Some("key-a"), query("INSERT INTO d.t VALUES (1)")),
            Some(&src),
            "j",
        )
        .await;
    assert!(matches!(out, Outcome::Done(_)), "{out:?}");
    // Spent: nothing runs, and the message says why and until when.
    match p
        .handle(request(Some("key-a"), query("SELECT 1")), Some(&src), "j")
        .await
    {
        Outcome::Denied(d) => assert!(
            d.message
                .contains("daily budget of 8 rows for group:agents is spent")
                && d.message.contains("9 rows returned or changed today")
                && d.message.contains("tomorrow (UTC)"),
            "{}",
            d.message
        ),
        other => panic!("{other:?}"),
    }
    // Ending a transaction still works.
    let out = p
        .handle(request(Some("key-a"), query("COMMIT")), Some(&src), "j")
        .await;
    assert!(matches!(out, Outcome::Done(_)), "{out:?}");
    assert_eq!(src.calls.load(Ordering::SeqCst), 5);
    let day = &querygate_store::audit_time(time::OffsetDateTime::now_utc())[..10];
    // The COMMIT's 3 rows (this source answers every statement with 3) are charged too.
    assert_eq!(p.store().usage("agent:a", day).expect("usage").rows, 12);
    // Someone else's budget is their own.
    let keys = Authenticator::new([
        api_key("agent:a", "agents", "key-a"),
        api_key("agent:b", "agents", "key-b"),
    ]);
    let mut set = policies(querygate_policy::Policy::new(vec![allow_all()]));
    set.budgets.push(budget(Amount::Rows(8)));
    p.reload(keys, set);
    let out = p
        .handle(request(Some("key-b"), query("SELECT 1")), Some(&src), "j")
        .await;
    assert!(matches!(out, Outcome::Done(_)), "{out:?}");
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

fn approval_keys() -> Authenticator {
    Authenticator::new([
        api_key("agent:a", "agents", "key-a"),
        api_key("agent:b", "agents", "key-b"),
        api_key("human:owner", "owners", "key-o"),
    ])
}

fn approval_policy(extra: bool) -> PolicySet {
    use querygate_policy::{Principal, Rule, RuleAction, When};
    let mut rules = vec![Rule {
        name: "needs an owner".into(),
        who: vec![Principal::Group("agents".into())],
        on_behalf_of: vec![],
        tables: vec![],
        statements: vec![],
        when: When::default(),
        action: RuleAction::Approve,
        message: Some("reads need an owner's approval".into()),
        approvers: vec![Principal::Group("owners".into())],
        max_bytes_billed: None,
        on_approval: querygate_policy::OnApproval::Wait,
    }];
    if extra {
        rules.push(Rule {
            name: "owners read".into(),
            who: vec![Principal::Group("owners".into())],
            on_behalf_of: vec![],
            tables: vec![],
            statements: vec![],
            when: When::default(),
            action: RuleAction::Allow,
            message: None,
            approvers: vec![],
            max_bytes_billed: None,
            on_approval: querygate_policy::OnApproval::Wait,
        });
    }
    policies(querygate_policy::Policy::new(rules))
}

fn poll(key: &str, job: &str) -> Request {
    let mut r = request(Some(key), Action::Job(JobOp::Get { job_id: job.into() }));
    r.method = "jobs.get".into();
    r
}

fn decision(approve: bool, reason: Option<&str>) -> TicketDecision {
    TicketDecision {
        approve,
        window: None,
        reason: reason.map(Into::into),
    }
}

#[tokio::test]
async fn approvals_bind_to_the_request_the_identity_and_the_policy() {
    let dir = tmp("approve");
    let p = pipeline(&dir);
    p.reload(approval_keys(), approval_policy(false));
    let src = Echo {
        bytes: 100,
        ..Echo::default()
    };
    let who = |key: &'static str| {
        let p = &p;
        async move {
            p.authenticate(Some(&Secret::new(key)), None)
                .await
                .expect("identity")
        }
    };
    let (agent_a, agent_b, owner) = (who("key-a").await, who("key-b").await, who("key-o").await);
    let waiting = |out: Outcome<EchoReply>| match out {
        Outcome::Waiting(w) => *w,
        other => panic!("expected a held job, got {other:?}"),
    };

    // Caught: the job waits; nothing runs upstream.
    let sql = "SELECT * FROM t /* reason: incident 42 */ WHERE id = 1";
    let w1 = waiting(
        p.handle(request(Some("key-a"), query(sql)), Some(&src), "job1")
            .await,
    );
    assert_eq!(w1.ticket.state, TicketState::Pending);
    assert_eq!(w1.ticket.reason.as_deref(), Some("incident 42"));
    assert_eq!(w1.ticket.reason_via.as_deref(), Some("comment"));
    assert_eq!(w1.ticket.bytes_estimate, Some(100));
    assert_eq!(src.calls.load(Ordering::SeqCst), 0);
    // The same statement from another identity waits for its own approval.
    let wb = waiting(
        p.handle(request(Some("key-b"), query(sql)), Some(&src), "job2")
            .await,
    );
    assert_ne!(wb.ticket.id, w1.ticket.id);
    assert_eq!(wb.ticket.fingerprint, w1.ticket.fingerprint);
    // Polls wait; another identity cannot poll the job at all.
    assert!(
        waiting(p.handle(poll("key-a", "job1"), Some(&src), "job1").await)
            .ended
            .is_none()
    );
    assert!(matches!(
        p.handle(poll("key-b", "job1"), Some(&src), "job1").await,
        Outcome::Denied(_)
    ));

    // Who may decide: not the requester (an agent, too); another agent does not even learn
    // that the ticket exists; an owner may.
    let id = w1.ticket.id.clone();
    for (identity, kind) in [
        (&agent_a, DenialKind::Forbidden),
        (&agent_b, DenialKind::NotFound),
    ] {
        let refused = p
            .approvals()
            .decide(identity, &id, decision(true, None))
            .await;
        assert_eq!(refused.expect_err("refused").kind, kind);
    }
    let missing = p
        .approvals()
        .decide(&owner, "tk_nope", decision(true, None))
        .await;
    assert_eq!(missing.expect_err("unknown").kind, DenialKind::NotFound);
    let approved = p
        .approvals()
        .decide(&owner, &id, decision(true, Some("ok for the incident")));
    assert_eq!(
        approved.await.expect("approved").state,
        TicketState::Approved
    );
    let again = p
        .approvals()
        .decide(&owner, &id, decision(false, Some("changed my mind")));
    assert_eq!(again.await.expect_err("decided").kind, DenialKind::Conflict);

    // Approving `id = 1` does not run `id = 2`.
    let sql2 = "SELECT * FROM t WHERE id = 2";
    let w3 = waiting(
        p.handle(request(Some("key-a"), query(sql2)), Some(&src), "job3")
            .await,
    );
    assert_ne!(w3.ticket.fingerprint, w1.ticket.fingerprint);
    assert_eq!(src.calls.load(Ordering::SeqCst), 0);

    // The first poll after approval runs the held job (once), with the byte ceiling.
    assert!(matches!(
        p.handle(poll("key-a", "job1"), Some(&src), "job1").await,
        Outcome::Done(_)
    ));
    assert!(matches!(
        p.handle(poll("key-a", "job1"), Some(&src), "job1").await,
        Outcome::Done(_)
    ));
    assert_eq!(src.limited.load(Ordering::SeqCst), 10 << 20, "10 MiB floor");

    // A denial needs a reason, and ends the job with it.
    let bare = p
        .approvals()
        .decide(&owner, &w3.ticket.id, decision(false, None));
    assert_eq!(bare.await.expect_err("no reason").kind, DenialKind::Invalid);
    p.approvals()
        .decide(&owner, &w3.ticket.id, decision(false, Some("too broad")))
        .await
        .expect("denied");
    let ended = waiting(p.handle(poll("key-a", "job3"), Some(&src), "job3").await);
    let message = ended.ended.expect("ended");
    assert!(
        message.contains(&w3.ticket.id)
            && message.contains("human:owner")
            && message.contains("too broad"),
        "{message}"
    );

    // A window grant covers other statements the same rule catches, for that identity.
    let window = TicketDecision {
        approve: true,
        window: Some(std::time::Duration::from_secs(3600)),
        reason: None,
    };
    let too_long = TicketDecision {
        window: Some(std::time::Duration::from_secs(100 * 3600)),
        ..window.clone()
    };
    let refused = p.approvals().decide(&owner, &wb.ticket.id, too_long).await;
    assert_eq!(refused.expect_err("too long").kind, DenialKind::Invalid);
    p.approvals()
        .decide(&owner, &wb.ticket.id, window)
        .await
        .expect("window");
    let before = src.calls.load(Ordering::SeqCst);
    assert!(matches!(
        p.handle(
            request(Some("key-b"), query("SELECT 99")),
            Some(&src),
            "job5"
        )
        .await,
        Outcome::Done(_)
    ));
    assert_eq!(src.calls.load(Ordering::SeqCst), before + 1);
    // …but not for agent a.
    waiting(
        p.handle(
            request(Some("key-a"), query("SELECT 99")),
            Some(&src),
            "job6",
        )
        .await,
    );

    // A changed policy voids an approval that has not run yet.
    let w7 = waiting(
        p.handle(
            request(Some("key-a"), query("SELECT 7")),
            Some(&src),
            "job7",
        )
        .await,
    );
    p.approvals()
        .decide(&owner, &w7.ticket.id, decision(true, None))
        .await
        .expect("approved");
    p.reload(approval_keys(), approval_policy(true));
    let ended = waiting(p.handle(poll("key-a", "job7"), Some(&src), "job7").await);
    assert!(ended.ended.expect("ended").contains("policy changed"));

    p.store().flush().await.expect("flush");
    let recs = records(&dir);
    let runs: Vec<_> = recs
        .iter()
        .filter(|r| {
            r.ticket.as_deref() == Some(id.as_str())
                && r.method == "jobs.insert"
                && r.phase == Phase::Decided
        })
        .collect();
    assert_eq!(runs.len(), 1, "the approved job ran once");
    assert_eq!(runs[0].approver.as_deref(), Some("human:owner"));
    assert!(
        recs.iter()
            .any(|r| r.method == "approvals.approve" && r.identity == "human:owner")
    );
    assert!(recs.iter().any(|r| r.method == "approvals.approve"
        && r.decision == "deny"
        && r.identity == "agent:a"));
    let verified = Reader::open(&dir.join("qg.db"))
        .expect("reader")
        .verify()
        .expect("read");
    assert!(verified.is_ok(), "{verified:?}");
}

#[tokio::test]
async fn tickets_expire_and_end_their_jobs() {
    let dir = tmp("expire");
    let store = Store::open(&dir.join("qg.db")).expect("store");
    let p = Pipeline::new(approval_keys(), approval_policy(false), Arc::new(store)).with_approvals(
        ApprovalSettings {
            ticket_ttl: std::time::Duration::ZERO,
            max_window: std::time::Duration::from_secs(60),
        },
    );
    let src = Echo::default();
    let Outcome::Waiting(w) = p
        .handle(
            request(Some("key-a"), query("SELECT 1")),
            Some(&src),
            "job1",
        )
        .await
    else {
        panic!("expected a held job")
    };
    let owner = p
        .authenticate(Some(&Secret::new("key-o")), None)
        .await
        .expect("owner");
    let late = p
        .approvals()
        .decide(&owner, &w.ticket.id, decision(true, None))
        .await;
    assert_eq!(late.expect_err("expired").kind, DenialKind::Conflict);
    let Outcome::Waiting(ended) = p.handle(poll("key-a", "job1"), Some(&src), "job1").await else {
        panic!("expected the ended job")
    };
    assert!(ended.ended.expect("ended").contains("expired"));
    assert_eq!(src.calls.load(Ordering::SeqCst), 0);
    // A second ticket expires through the sweep.
    p.handle(
        request(Some("key-a"), query("SELECT 2")),
        Some(&src),
        "job2",
    )
    .await;
    assert_eq!(p.approvals().sweep().await.expect("sweep"), 1);
}

#[tokio::test]
async fn a_window_grant_ends_when_its_window_does() {
    let dir = tmp("window");
    let p = pipeline(&dir);
    p.reload(approval_keys(), approval_policy(false));
    let src = Echo::default();
    let Outcome::Waiting(w) = p
        .handle(
            request(Some("key-a"), query("SELECT 1")),
            Some(&src),
            "job1",
        )
        .await
    else {
        panic!("expected a held job")
    };
    let owner = p
        .authenticate(Some(&Secret::new("key-o")), None)
        .await
        .expect("owner");
    let window = TicketDecision {
        approve: true,
        window: Some(std::time::Duration::from_secs(3)),
        reason: None,
    };
    p.approvals()
        .decide(&owner, &w.ticket.id, window)
        .await
        .expect("window");
    assert!(matches!(
        p.handle(
            request(Some("key-a"), query("SELECT 2")),
            Some(&src),
            "job2"
        )
        .await,
        Outcome::Done(_)
    ));
    tokio::time::sleep(std::time::Duration::from_millis(4100)).await;
    assert!(
        matches!(
            p.handle(
                request(Some("key-a"), query("SELECT 3")),
                Some(&src),
                "job3"
            )
            .await,
            Outcome::Waiting(_)
        ),
        "after its window, the grant covers nothing"
    );
}

#[tokio::test]
async fn sessions_are_recorded_in_order_and_named_in_the_audit_log() {
    use querygate_core::recording::EventKind;
    let dir = tmp("record");
    let recorder = Arc::new(
        querygate_store::Recorder::start(&dir.join("qg.db"), Default::default()).expect("recorder"),
    );
    let settings = RecordingSettings {
        max_response_bytes: 6,
        ..RecordingSettings::default()
    };
    let p = pipeline(&dir).with_recording(settings, recorder.clone());
    let src = Echo::default();
    let from = |mut r: Request, port: u16| {
        r.client = ClientInfo {
            user_agent: Some("test-client/1".into()),
            peer: Some(format!("127.0.0.1:{port}")),
        };
        r
    };
    let first = from(request(Some("key-a"), query("SELECT 1")), 4001);
    assert!(matches!(
        p.handle(first, Some(&src), "job-1").await,
        Outcome::Done(_)
    ));
    // Another connection of the same client: the same session.
    let write = from(
        request(Some("key-a"), query("DELETE FROM d.t WHERE true")),
        4002,
    );
    assert!(matches!(
        p.handle(write, Some(&src), "job-2").await,
        Outcome::Denied(_)
    ));
    // A request that names its session goes there; a bad key is recorded as unauthenticated.
    let mut named = from(request(Some("key-a"), query("SELECT 2")), 4003);
    named.session = Some("run-7".into());
    assert!(matches!(
        p.handle(named, Some(&src), "job-3").await,
        Outcome::Done(_)
    ));
    let bad = from(request(Some("not-a-key"), query("SELECT 3")), 4004);
    assert!(matches!(
        p.handle(bad, Some(&src), "job-4").await,
        Outcome::Denied(_)
    ));
    recorder.flush();
    p.store().flush().await.expect("flush");

    let listed = recorder.sessions(&Default::default()).expect("sessions");
    assert_eq!(listed.len(), 3, "{listed:?}");
    let auto = listed
        .iter()
        .find(|s| s.identities == ["agent:a"] && s.id.starts_with("ss_"))
        .expect("assigned session");
    assert_eq!(auto.requests, 2);
    let events = recorder.events(&auto.id, None).expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        [
            "request", "decision", "upstream", "response", "request", "decision", "response"
        ]
    );
    match (
        &events[0].what,
        &events[3].what,
        &events[5].what,
        &events[6].what,
    ) {
        (
            EventKind::Request(r),
            EventKind::Response(ok),
            EventKind::Decision(d),
            EventKind::Response(denied),
        ) => {
            assert_eq!(r.statement.as_deref(), Some("SELECT 1"));
            assert_eq!(r.user_agent.as_deref(), Some("test-client/1"));
            assert_eq!((ok.status, ok.rows), (200, Some(3)));
            assert_eq!(ok.body.as_deref(), Some(r#"{"rows"#));
            assert!(ok.truncated);
            assert_eq!(ok.total_bytes, Some(16));
            assert_eq!(d.decision, "deny");
            assert_eq!(denied.status, 403);
            assert!(denied.body.is_none() && denied.error.is_some());
        }
        other => panic!("unexpected events {other:?}"),
    }
    let named = recorder.events("run-7", None).expect("events");
    assert_eq!(named.len(), 4);
    let unauthenticated = listed
        .iter()
        .find(|s| s.identities == ["unauthenticated"])
        .expect("refused credential");
    assert_eq!(unauthenticated.events, 3);
    // Every audit record names its session.
    let recs = records(&dir);
    assert!(recs.iter().all(|r| r.session.is_some()), "{recs:?}");
    assert_eq!(
        recs.iter()
            .filter(|r| r.session.as_deref() == Some(auto.id.as_str()))
            .count(),
        3
    );
    // The secret never reaches the recording.
    let all: String = listed
        .iter()
        .flat_map(|s| recorder.events(&s.id, None).expect("events"))
        .map(|e| serde_json::to_string(&e).expect("json"))
        .collect();
    assert!(
        !all.contains("key-a") && !all.contains("not-a-key"),
        "{all}"
    );
}

#[tokio::test]
async fn recordings_are_read_by_readers_and_by_their_own_identity() {
    let dir = tmp("record-read");
    let recorder = Arc::new(
        querygate_store::Recorder::start(&dir.join("qg.db"), Default::default()).expect("recorder"),
    );
    let settings = RecordingSettings {
        readers: vec![querygate_policy::Principal::parse("group:security").expect("principal")],
        without_results: ["echo".to_string()].into(),
        ..RecordingSettings::default()
    };
    let p = pipeline(&dir).with_recording(settings, recorder.clone());
    let src = Echo::default();
    let mut r = request(Some("key-a"), query("SELECT 1"));
    r.session = Some("s-a".into());
    p.handle(r, Some(&src), "job-1").await;
    recorder.flush();
    let agent = Identity {
        subject: "agent:a".into(),
        ..Identity::default()
    };
    let other = Identity {
        subject: "agent:b".into(),
        ..Identity::default()
    };
    let security = Identity {
        subject: "human:sam".into(),
        groups: vec!["security".into()],
        ..Identity::default()
    };
    let (_, events) = p
        .recordings()
        .show(&agent, "s-a")
        .await
        .expect("own session");
    assert_eq!(events.len(), 4);
    // record_results = false: no body, no digest, only the size.
    let response = events
        .iter()
        .find(|e| e.kind() == "response")
        .expect("response");
    let text = serde_json::to_string(response).expect("json");
    assert!(
        text.contains(r#""body_omitted":true"#)
            && !text.contains(r#""body""#)
            && !text.contains("sha256"),
        "{text}"
    );
    assert!(p.recordings().show(&security, "s-a").await.is_ok());
    let denied = p
        .recordings()
        .show(&other, "s-a")
        .await
        .expect_err("not theirs");
    assert_eq!(denied.kind, DenialKind::NotFound);
    assert_eq!(
        p.recordings()
            .list(&other, Default::default())
            .await
            .expect("list")
            .len(),
        0
    );
    assert_eq!(
        p.recordings()
            .list(&agent, Default::default())
            .await
            .expect("list")
            .len(),
        1
    );
    assert_eq!(
        p.recordings()
            .list(&security, Default::default())
            .await
            .expect("list")
            .len(),
        1
    );
    p.store().flush().await.expect("flush");
    let reads: Vec<_> = records(&dir)
        .into_iter()
        .filter(|r| r.method.starts_with("sessions."))
        .collect();
    assert_eq!(reads.len(), 6);
    assert!(
        reads
            .iter()
            .any(|r| r.identity == "agent:b" && r.decision == "deny")
    );
}

/// Columns classified `pii`, masked (redact) for everyone but the privacy group;
/// `predicates` says whether they may be filtered on.
fn pii(columns: &[&str], predicates: bool) -> querygate_policy::Classifier {
    use querygate_policy::{Classification, Classifier, MaskRule, Principal};
    Classifier {
        classes: vec![Classification {
            tag: "pii".into(),
            columns: columns.iter().map(|c| (*c).to_string()).collect(),
        }],
        masks: vec![MaskRule {
            tag: "pii".into(),
            strategy: "redact".into(),
            unmasked_for: vec![Principal::Group("privacy".into())],
            predicates_allowed: predicates,
        }],
    }
}

/// Whether every read of `table` in `sql` is a masking derived table's own read.
fn every_read_masked(sql: &str, table: &str) -> bool {
    let reads = sql.matches(table).count();
    reads > 0 && reads == sql.matches(&format!("{table} AS __qg_src")).count()
}

#[tokio::test]
async fn reads_of_masked_columns_are_rewritten_and_what_cannot_be_masked_is_refused() {
    let dir = tmp("mask");
    let p = pipeline(&dir);
    let mut set = policies(querygate_policy::Policy::builtin_read_only());
    set.classifier = Arc::new(pii(&["*.crm.customers.email", "*.*.*.phone"], false));
    p.reload(
        Authenticator::new([
            api_key("agent:a", "agents", "key-a"),
            api_key("human:p", "privacy", "key-p"),
        ]),
        set,
    );
    let src = Echo::default();
    let outcome = |key: &'static str, sql: &'static str| {
        let p = &p;
        let src = &src;
        async move {
            p.handle(request(Some(key), query(sql)), Some(src), "j")
                .await
        }
    };
    for (sql, table) in [
        ("SELECT email FROM crm.customers", "crm.customers"),
        (
            "SELECT LOWER(email) AS e FROM crm.customers",
            "crm.customers",
        ),
        ("SELECT * FROM crm.customers", "crm.customers"),
        (
            "SELECT * EXCEPT (email) FROM crm.customers",
            "crm.customers",
        ),
        (
            "WITH c AS (SELECT email AS x FROM crm.customers) SELECT x FROM c",
            "crm.customers",
        ),
        (
            "SELECT name FROM crm.customers UNION ALL SELECT email FROM crm.customers",
            "crm.customers",
        ),
        (
            "SELECT TO_JSON_STRING(t) FROM crm.customers AS t",
            "crm.customers",
        ),
        ("SELECT MAX(phone) FROM sales.orders", "sales.orders"),
    ] {
        assert!(
            matches!(outcome("key-a", sql).await, Outcome::Done(_)),
            "{sql} runs, masked"
        );
        let sent = src
            .rewritten
            .lock()
            .expect("lock")
            .pop()
            .expect("rewritten");
        assert!(every_read_masked(&sent, table), "{sql} -> {sent}");
    }
    for sql in [
        "SELECT name FROM crm.customers WHERE email = 'ana@example.com'",
        "SELECT name FROM crm.customers ORDER BY email",
    ] {
        match outcome("key-a", sql).await {
            Outcome::Denied(d) => assert!(
                d.message.contains("classified pii and masked for agent:a")
                    && d.message.contains("predicates = \"deny\""),
                "{sql}: {}",
                d.message
            ),
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(
        src.calls.load(Ordering::SeqCst),
        8,
        "only the masked reads ran"
    );
    // What cannot be analyzed cannot be proved safe (even where a rule allows opaque SQL);
    // what does not parse is answered with the parser's error, not a masking message.
    match outcome("key-a", "SELEKT email FRUM crm.customers").await {
        Outcome::Denied(d) => {
            assert_eq!(d.kind, DenialKind::Invalid);
            assert!(d.message.starts_with("Syntax error: "), "{}", d.message);
            assert!(d.message.contains(" at [1:"), "{}", d.message);
            assert!(!d.message.contains("mask"), "{}", d.message);
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
    for sql in [
        "SELECT name FROM crm.customers",
        "SELECT * EXCEPT (email, phone) FROM crm.customers",
        "SELECT COUNT(*) FROM crm.customers",
    ] {
        assert!(
            matches!(outcome("key-a", sql).await, Outcome::Done(_)),
            "{sql} reaches no masked column"
        );
    }
    // The privacy group sees clear values: its statement is not rewritten.
    let before = src.rewritten.lock().expect("lock").len();
    assert!(matches!(
        outcome(
            "key-p",
            "SELECT email FROM crm.customers WHERE email LIKE '%@x'"
        )
        .await,
        Outcome::Done(_)
    ));
    assert_eq!(src.rewritten.lock().expect("lock").len(), before);
    p.store().flush().await.expect("flush");
    let all = records(&dir);
    let refused = all
        .iter()
        .filter(|r| r.rule.as_deref() == Some("masking"))
        .count();
    assert!(
        refused >= 3,
        "each refusal is audited with the masking rule"
    );
    // The audit log records the rewritten statement beside the original.
    let masked = all
        .iter()
        .find(|r| r.statement.as_deref() == Some("SELECT MAX(phone) FROM sales.orders"))
        .expect("record");
    assert!(
        masked
            .rewritten
            .as_deref()
            .is_some_and(|s| every_read_masked(s, "sales.orders")),
        "{masked:?}"
    );
}

#[tokio::test]
async fn errors_of_queries_that_filter_on_masked_columns_are_withheld() {
    let dir = tmp("withhold");
    let p = pipeline(&dir);
    let mut set = policies(querygate_policy::Policy::builtin_read_only());
    set.classifier = Arc::new(pii(&["*.crm.customers.email"], true));
    p.reload(
        Authenticator::new([api_key("agent:a", "agents", "key-a")]),
        set,
    );
    let src = Echo {
        error: Some("Bad int64 value: ana@example.com".into()),
        ..Echo::default()
    };
    // Filtering on the masked column is allowed here; the error it causes is withheld.
    let mut run = request(
        Some("key-a"),
        query("SELECT name FROM crm.customers WHERE CAST(email AS INT64) = 1"),
    );
    run.job_id = Some("job_s".into());
    match p.handle(run, Some(&src), "job_s").await {
        Outcome::Done(reply) => {
            let error = reply.summary().error.expect("an error");
            assert!(
                error.starts_with("withheld:") && !error.contains("ana@"),
                "{error}"
            );
        }
        other => panic!("{other:?}"),
    }
    // Later polls of the job too.
    match p.handle(poll("key-a", "job_s"), Some(&src), "job_s").await {
        Outcome::Done(reply) => {
            let error = reply.summary().error.expect("an error");
            assert!(!error.contains("ana@"), "{error}");
        }
        other => panic!("{other:?}"),
    }
    // A query reaching no masked column keeps its error text.
    match p
        .handle(
            request(Some("key-a"), query("SELECT name FROM crm.customers")),
            Some(&src),
            "j2",
        )
        .await
    {
        Outcome::Done(reply) => assert!(reply.summary().error.is_some_and(|e| e.contains("ana@"))),
        other => panic!("{other:?}"),
    }
    p.store().flush().await.expect("flush");
    let leaked = records(&dir)
        .iter()
        .filter(|r| r.job_id.as_deref() == Some("job_s"))
        .any(|r| r.canonical().contains("ana@"));
    assert!(
        !leaked,
        "the audit log of the sensitive job holds the value"
    );
}

/// The known ways around SQL-level masking (vectors 1–10, 12 and 13 of the bypass catalogue):
/// each is refused before anything runs, or runs with every read of the masked table
/// replaced by its masked read (so what it computes, it computes from masked values).
#[tokio::test]
async fn the_known_masking_bypasses_are_refused_or_masked_at_the_read() {
    let dir = tmp("bypass");
    let p = pipeline(&dir);
    let mut set = policies(querygate_policy::Policy::builtin_read_only());
    set.classifier = Arc::new(pii(
        &[
            "*.crm.customers.email",
            "*.crm.customers.ssn",
            "*.crm.customers.contacts",
            "*.crm.customers.payload",
        ],
        false,
    ));
    p.reload(
        Authenticator::new([api_key("agent:a", "agents", "key-a")]),
        set,
    );
    let src = Echo::default();
    let bypasses: &[(&str, &str)] = &[
        ("1 expression", "SELECT LOWER(ssn) FROM crm.customers"),
        (
            "1 concatenation",
            "SELECT ssn || '' AS s FROM crm.customers",
        ),
        ("1 substring", "SELECT SUBSTR(ssn, 1, 3) FROM crm.customers"),
        ("1 cast", "SELECT CAST(ssn AS STRING) FROM crm.customers"),
        (
            "2 CTE alias",
            "WITH c AS (SELECT ssn AS x FROM crm.customers) SELECT x FROM c",
        ),
        (
            "2 subquery",
            "SELECT x FROM (SELECT email AS x FROM crm.customers)",
        ),
        (
            "2 UNION",
            "SELECT name FROM crm.customers UNION ALL SELECT ssn FROM crm.customers",
        ),
        ("3 whole row", "SELECT t FROM crm.customers AS t"),
        (
            "3 TO_JSON_STRING",
            "SELECT TO_JSON_STRING(t) FROM crm.customers AS t",
        ),
        ("3 FORMAT", "SELECT FORMAT('%t', t) FROM crm.customers AS t"),
        (
            "3 ARRAY_AGG(t)",
            "SELECT ARRAY_AGG(t) FROM crm.customers AS t",
        ),
        ("3 AS STRUCT *", "SELECT AS STRUCT * FROM crm.customers"),
        (
            "4 JSON path",
            "SELECT JSON_VALUE(payload, '$.email') FROM crm.customers",
        ),
        ("4 struct field", "SELECT contacts.email FROM crm.customers"),
        (
            "4 UNNEST",
            "SELECT c FROM crm.customers, UNNEST(contacts) AS c",
        ),
        ("5 MAX", "SELECT MAX(ssn) FROM crm.customers"),
        (
            "5 STRING_AGG",
            "SELECT STRING_AGG(email) FROM crm.customers",
        ),
        (
            "5 APPROX_TOP_COUNT",
            "SELECT APPROX_TOP_COUNT(email, 10) FROM crm.customers",
        ),
        (
            "6 predicate inference",
            "SELECT COUNT(*) FROM crm.customers WHERE ssn LIKE '1%'",
        ),
        (
            "7 dictionary join",
            "SELECT c FROM crm.customers JOIN UNNEST(GENERATE_ARRAY(1, 999)) AS c ON CAST(ssn AS INT64) = c",
        ),
        ("8 ORDER BY", "SELECT name FROM crm.customers ORDER BY ssn"),
        (
            "8 GROUP BY",
            "SELECT COUNT(*) FROM crm.customers GROUP BY email",
        ),
        (
            "8 window",
            "SELECT name, ROW_NUMBER() OVER (PARTITION BY email) FROM crm.customers",
        ),
        ("8 DISTINCT", "SELECT DISTINCT email FROM crm.customers"),
        (
            "9 CTAS",
            "CREATE TABLE crm.copy AS SELECT ssn FROM crm.customers",
        ),
        (
            "9 INSERT SELECT",
            "INSERT INTO crm.copy (x) SELECT ssn FROM crm.customers",
        ),
        (
            "9 EXPORT DATA",
            "EXPORT DATA OPTIONS (uri = 'gs://b/*', format = 'CSV') AS SELECT email FROM crm.customers",
        ),
        (
            "10 ERROR in SELECT",
            "SELECT ERROR(CONCAT('x', email)) FROM crm.customers",
        ),
        (
            "10 ERROR in WHERE",
            "SELECT name FROM crm.customers WHERE ERROR(ssn) IS NULL",
        ),
        (
            "13 second statement",
            "SELECT 1; SELECT email FROM crm.customers",
        ),
        (
            "13 leading comment",
            "/* harmless */ -- really\nSELECT email FROM crm.customers",
        ),
        (
            "13 EXECUTE IMMEDIATE",
            "EXECUTE IMMEDIATE 'SELECT email FROM crm.customers'",
        ),
    ];
    let mut let_through = Vec::new();
    let mut masked = 0;
    for (name, sql) in bypasses {
        let before = src.calls.load(Ordering::SeqCst);
        let out = p
            .handle(request(Some("key-a"), query(sql)), Some(&src), "j")
            .await;
        if matches!(out, Outcome::Denied(_)) {
            continue;
        }
        let sent = src.rewritten.lock().expect("lock").pop();
        match sent {
            Some(s) if every_read_masked(&s, "crm.customers") => masked += 1,
            other => let_through.push(format!("{name}: {sql} ran as {other:?}")),
        }
        assert_eq!(src.calls.load(Ordering::SeqCst), before + 1);
    }
    assert!(let_through.is_empty(), "not masked: {let_through:#?}");
    assert!(
        masked >= 15,
        "the expression, whole-row and aggregate vectors run masked"
    );
    // 12: reading the table's rows directly: masked as they return, and a source that
    // cannot mask them fails the read (closed) rather than return them.
    let mut read = request(
        Some("key-a"),
        Action::ReadTable {
            table: "p.crm.customers".into(),
            result_table: false,
        },
    );
    read.method = "tabledata.list".into();
    assert!(matches!(
        p.handle(read, Some(&src), "j").await,
        Outcome::Failed(_)
    ));
    assert_eq!(
        src.calls.load(Ordering::SeqCst),
        masked + 1,
        "nothing else ran (the table read did, and its reply was dropped)"
    );
}

#[tokio::test]
async fn views_that_reach_masked_columns_are_refused_for_whom_they_are_masked() {
    let dir = tmp("views");
    let p = pipeline(&dir);
    let mut set = policies(querygate_policy::Policy::builtin_read_only());
    set.classifier = Arc::new(pii(
        &["*.crm.customers.email", "*.sales.orders.phone"],
        false,
    ));
    p.reload(
        Authenticator::new([
            api_key("agent:a", "agents", "key-a"),
            api_key("human:p", "privacy", "key-p"),
        ]),
        set,
    );
    let src = Echo::default();
    let run = |key: &'static str, sql: &'static str| {
        let (p, src) = (&p, &src);
        async move {
            p.handle(request(Some(key), query(sql)), Some(src), "j")
                .await
        }
    };
    for (sql, says) in [
        (
            "SELECT * FROM crm.v_contacts",
            "view p.crm.v_contacts reads p.crm.customers",
        ),
        (
            "SELECT email FROM `p.CRM.V_Contacts`",
            "reads p.crm.customers",
        ),
        (
            "SELECT id FROM crm.v_nested",
            "view p.crm.v_nested → p.crm.v_contacts reads p.crm.customers",
        ),
        ("SELECT * FROM crm.v_wild", "p.sales.ord*"),
        (
            "SELECT * FROM crm.v_hidden",
            "whose definition the source does not show",
        ),
    ] {
        match run("key-a", sql).await {
            Outcome::Denied(d) => {
                assert!(d.message.contains(says), "{sql}: {}", d.message);
                assert!(d.message.contains("agent:a"), "{sql}: {}", d.message);
            }
            other => panic!("{sql}: expected a refusal, got {other:?}"),
        }
    }
    assert_eq!(src.calls.load(Ordering::SeqCst), 0, "nothing went upstream");
    // A view that names itself ends the walk (the upstream refuses it).
    let _ = run("key-a", "SELECT * FROM crm.v_loop").await;
    // A view that reaches no masked column reads as before; so does everything for the
    // privacy group, whose columns are not masked.
    assert!(matches!(
        run("key-a", "SELECT name FROM crm.v_names").await,
        Outcome::Done(_)
    ));
    assert!(matches!(
        run("key-p", "SELECT email FROM crm.v_nested").await,
        Outcome::Done(_)
    ));
}

#[tokio::test]
async fn a_job_id_is_claimed_only_for_the_job_the_upstream_accepted() {
    let dir = tmp("job-ids");
    let p = pipeline(&dir);
    p.reload(
        Authenticator::new([
            api_key("agent:a", "agents", "key-a"),
            api_key("agent:b", "agents", "key-b"),
        ]),
        policies(querygate_policy::Policy::builtin_read_only()),
    );
    let insert = |key: &str, job: &str| Request {
        method: "jobs.insert".into(),
        job_id: Some(job.to_string()),
        ..request(Some(key), query("SELECT 1"))
    };
    let read = |key: &str, job: &str| {
        request(
            Some(key),
            Action::Job(JobOp::Get {
                job_id: job.to_string(),
            }),
        )
    };
    let src = Echo::default();
    assert!(matches!(
        p.handle(insert("key-a", "job-1"), Some(&src), "job-1")
            .await,
        Outcome::Done(_)
    ));
    // Another identity asking for the same id is refused before anything goes upstream.
    let calls = src.calls.load(Ordering::SeqCst);
    match p
        .handle(insert("key-b", "job-1"), Some(&src), "job-1")
        .await
    {
        Outcome::Denied(d) => {
            assert_eq!(d.kind, DenialKind::Conflict);
            assert!(d.message.contains("another identity"), "{}", d.message);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(src.calls.load(Ordering::SeqCst), calls);
    assert!(matches!(
        p.handle(read("key-b", "job-1"), Some(&src), "job-1").await,
        Outcome::Denied(_)
    ));
    assert!(matches!(
        p.handle(read("key-a", "job-1"), Some(&src), "job-1").await,
        Outcome::Done(_)
    ));
    // A job id the upstream refuses (already taken upstream, around the gateway) never
    // becomes the caller's.
    let refusing = Echo {
        status: Some(409),
        ..Echo::default()
    };
    assert!(matches!(
        p.handle(insert("key-b", "job-2"), Some(&refusing), "job-2")
            .await,
        Outcome::Done(_)
    ));
    assert!(matches!(
        p.handle(read("key-b", "job-2"), Some(&src), "job-2").await,
        Outcome::Denied(_)
    ));
}

#[tokio::test]
async fn an_approve_rule_that_fails_at_once_runs_the_statement_once_when_run_again() {
    let dir = tmp("approve-fail");
    let p = pipeline(&dir);
    let mut set = approval_policy(false);
    let mut policy = (*set.sources["echo"]).clone();
    policy.rules[0].on_approval = querygate_policy::OnApproval::Fail;
    set.sources.insert(
        "echo".into(),
        Arc::new(querygate_policy::Policy::new(policy.rules)),
    );
    p.reload(approval_keys(), set);
    let src = Echo::default();
    let owner = p
        .authenticate(Some(&Secret::new("key-o")), None)
        .await
        .expect("owner");
    let sql = "SELECT * FROM t WHERE id = 7";
    let run = |key: &'static str, sql: &'static str| {
        let (p, src) = (&p, &src);
        async move {
            p.handle(request(Some(key), query(sql)), Some(src), "j")
                .await
        }
    };
    // Answered at once, naming the ticket, the approvers and what to do.
    let message = match run("key-a", sql).await {
        Outcome::Denied(d) => d.message,
        other => panic!("expected an answer at once, got {other:?}"),
    };
    assert!(message.contains("group:owners"), "{message}");
    assert!(
        message.contains("run the same statement again"),
        "{message}"
    );
    let id = message
        .split("(ticket ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .expect("ticket id")
        .to_string();
    assert_eq!(src.calls.load(Ordering::SeqCst), 0);
    p.approvals()
        .decide(&owner, &id, decision(true, None))
        .await
        .expect("approved");
    // Another statement, or another identity, is not covered.
    assert!(matches!(
        run("key-a", "SELECT * FROM t WHERE id = 8").await,
        Outcome::Denied(_)
    ));
    assert!(matches!(run("key-b", sql).await, Outcome::Denied(_)));
    assert_eq!(src.calls.load(Ordering::SeqCst), 0);
    // The same statement by the requester runs, once.
    assert!(matches!(run("key-a", sql).await, Outcome::Done(_)));
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    assert!(matches!(run("key-a", sql).await, Outcome::Denied(_)));
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
    p.store().flush().await.expect("flush");
    let ran = records(&dir)
        .into_iter()
        .find(|r| {
            r.ticket.as_deref() == Some(id.as_str())
                && r.decision == "allow"
                && r.method == "jobs.query"
        })
        .expect("the run is audited with its ticket");
    assert!(
        ran.reason
            .as_deref()
            .is_some_and(|r| r.contains("run once")),
        "{ran:?}"
    );
}

#[tokio::test]
async fn a_held_job_the_upstream_does_not_accept_ends_and_its_id_stays_unreachable() {
    let dir = tmp("held-refused");
    let p = pipeline(&dir);
    p.reload(approval_keys(), approval_policy(false));
    let refusing = Echo {
        status: Some(409),
        ..Echo::default()
    };
    let owner = p
        .authenticate(Some(&Secret::new("key-o")), None)
        .await
        .expect("owner");
    let w = match p
        .handle(
            request(Some("key-a"), query("SELECT 1")),
            Some(&refusing),
            "held-1",
        )
        .await
    {
        Outcome::Waiting(w) => *w,
        other => panic!("expected a held job, got {other:?}"),
    };
    p.approvals()
        .decide(&owner, &w.ticket.id, decision(true, None))
        .await
        .expect("approved");
    for _ in 0..2 {
        match p
            .handle(poll("key-a", "held-1"), Some(&refusing), "held-1")
            .await
        {
            Outcome::Waiting(w) => {
                let ended = w.ended.unwrap_or_default();
                assert!(ended.contains("did not accept"), "{ended}");
            }
            other => panic!("expected the ended job, got {other:?}"),
        }
    }
    assert_eq!(
        refusing.calls.load(Ordering::SeqCst),
        1,
        "only the approved run went upstream; its polls never did"
    );
}

#[tokio::test]
async fn rules_that_name_tables_hold_for_the_tables_a_view_reads() {
    use querygate_policy::{Principal, Rule, RuleAction, TableGlob, When};
    let dir = tmp("view-rules");
    let p = pipeline(&dir);
    let rule = |name: &str, tables: Vec<TableGlob>, action| Rule {
        name: name.into(),
        who: vec![Principal::Group("agents".into())],
        on_behalf_of: vec![],
        tables,
        statements: vec![],
        when: When::default(),
        action,
        message: Some("no customer data for agents".into()),
        approvers: vec![],
        max_bytes_billed: None,
        on_approval: querygate_policy::OnApproval::Wait,
    };
    p.reload(
        Authenticator::new([api_key("agent:a", "agents", "key-a")]),
        policies(querygate_policy::Policy::new(vec![
            rule(
                "no customers",
                vec![TableGlob("*.crm.customers".into())],
                RuleAction::Deny,
            ),
            rule("read", vec![], RuleAction::Allow),
        ])),
    );
    let src = Echo::default();
    let run = |sql: &'static str| {
        let (p, src) = (&p, &src);
        async move {
            p.handle(request(Some("key-a"), query(sql)), Some(src), "j")
                .await
        }
    };
    for sql in [
        "SELECT * FROM crm.customers",
        "SELECT id FROM crm.v_names",
        "SELECT 1 FROM crm.v_nested",
    ] {
        match run(sql).await {
            Outcome::Denied(d) => {
                assert!(d.message.contains("no customers"), "{sql}: {}", d.message)
            }
            other => panic!("{sql}: expected the rule's denial, got {other:?}"),
        }
    }
    // A view whose definition is not shown is opaque: no allow rule takes it.
    assert!(matches!(
        run("SELECT * FROM crm.v_hidden").await,
        Outcome::Denied(_)
    ));
    assert!(matches!(
        run("SELECT * FROM sales.orders").await,
        Outcome::Done(_)
    ));
    assert_eq!(src.calls.load(Ordering::SeqCst), 1);
}

/// A prepared statement's recording ends with its answer, as every request's does.
#[tokio::test]
async fn a_prepared_statement_is_recorded_with_its_answer() {
    let dir = tmp("prepare-recorded");
    let recorder = Arc::new(
        querygate_store::Recorder::start(&dir.join("qg.db"), Default::default()).expect("recorder"),
    );
    let p = pipeline(&dir).with_recording(RecordingSettings::default(), recorder.clone());
    let src = Echo::default();
    let mut parse = request(Some("key-a"), query("SELECT 1"));
    parse.session = Some("prep".into());
    p.prepare(parse, &src, "parse-1").await.expect("allowed");
    recorder.flush();
    let events = recorder.events("prep", None).expect("events");
    let kinds: Vec<&str> = events.iter().map(|e| e.kind()).collect();
    assert_eq!(kinds, ["request", "response"]);
    match &events[1].what {
        querygate_core::recording::EventKind::Response(r) => {
            assert_eq!((r.status, r.rows), (200, Some(0)));
        }
        other => panic!("{other:?}"),
    }
}

/// A statement only being prepared (PostgreSQL's Parse) is decided and masked, and runs
/// nothing: allowed, it comes back as the call to send, with no record written; refused,
/// the refusal is the outcome, audited once.
#[tokio::test]
async fn a_prepared_statement_is_decided_but_runs_nothing() {
    let dir = tmp("prepare");
    let p = pipeline(&dir);
    let src = Echo::default();
    let call = p
        .prepare(request(Some("key-a"), query("SELECT 1")), &src, "parse-1")
        .await
        .expect("allowed");
    assert_eq!(call, "parse-1");
    match p
        .prepare(
            request(Some("key-a"), query("DELETE FROM d.t WHERE true")),
            &src,
            "parse-2",
        )
        .await
    {
        Err(Outcome::Denied(d)) => assert_eq!(d.kind, DenialKind::Forbidden),
        other => panic!("a write was prepared: {other:?}"),
    }
    assert!(matches!(
        p.prepare(request(Some("wrong"), query("SELECT 1")), &src, "parse-3")
            .await,
        Err(Outcome::Denied(_))
    ));
    assert_eq!(src.calls.load(Ordering::SeqCst), 0);
    p.store().flush().await.expect("flush");
    let recs = records(&dir);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(
        recs.iter()
            .all(|r| r.decision == "deny" && r.phase == Phase::Decided)
    );
}
