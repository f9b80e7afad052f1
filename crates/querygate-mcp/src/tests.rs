//! MCP front tests, by tables: each tool call decoded into its neutral action (and bad
//! calls into `Malformed`), and each kind of outcome rendered as the tool result an agent
//! reads.

use querygate_core::{
    Action, Catalog, Denial, DenialKind, Fault, JobOp, Malformed, Query, Ticket, TicketState,
};
use querygate_pipeline::{
    Answer, Column, ColumnMask, Explanation, JobInfo, Outcome, Reply, ResultSet, Scope, Summary,
    TableInfo, Waiting,
};
use rmcp::model::{CallToolResult, JsonObject};
use serde_json::{Value, json};

use crate::{decode, render, tools};

fn object(v: Value) -> JsonObject {
    match v {
        Value::Object(o) => o,
        _ => panic!("an object"),
    }
}

#[test]
fn every_tool_is_listed_with_a_strict_schema() {
    let tools = tools();
    assert_eq!(tools.len(), crate::model::TOOL_NAMES.len());
    for (tool, name) in tools.iter().zip(crate::model::TOOL_NAMES) {
        assert_eq!(tool.name, *name);
        assert_eq!(
            tool.input_schema.get("additionalProperties"),
            Some(&json!(false))
        );
    }
}

#[test]
fn tool_calls_decode_into_neutral_actions() {
    let cases: Vec<(&str, Value, &str, Action)> = vec![
        (
            "list_dataset_ids",
            json!({}),
            "demo",
            Action::Catalog {
                object: Catalog::Schemas,
                hidden: false,
            },
        ),
        (
            "list_dataset_ids",
            json!({"project": "p2"}),
            "p2",
            Action::Catalog {
                object: Catalog::Schemas,
                hidden: false,
            },
        ),
        (
            "list_table_ids",
            json!({"dataset_id": "shop"}),
            "demo",
            Action::Catalog {
                object: Catalog::Tables {
                    schema: "demo.shop".into(),
                },
                hidden: false,
            },
        ),
        (
            "get_dataset_info",
            json!({"dataset_id": "shop"}),
            "demo",
            Action::Catalog {
                object: Catalog::Schema {
                    schema: "demo.shop".into(),
                },
                hidden: false,
            },
        ),
        (
            "get_table_info",
            json!({"dataset_id": "shop", "table_id": "orders"}),
            "demo",
            Action::Catalog {
                object: Catalog::Table {
                    table: "demo.shop.orders".into(),
                },
                hidden: false,
            },
        ),
        (
            "execute_sql",
            json!({"sql": "SELECT 1"}),
            "demo",
            Action::Query(Query::new("SELECT 1")),
        ),
        (
            "get_query_results",
            json!({"job_id": "j1"}),
            "demo",
            Action::Job(JobOp::Results {
                job_id: "j1".into(),
            }),
        ),
        (
            "get_job",
            json!({"job_id": "j1"}),
            "demo",
            Action::Job(JobOp::Get {
                job_id: "j1".into(),
            }),
        ),
        (
            "cancel_job",
            json!({"job_id": "j1", "project": "p2"}),
            "p2",
            Action::Job(JobOp::Cancel {
                job_id: "j1".into(),
            }),
        ),
    ];
    for (tool, args, project, action) in cases {
        let d = decode(tool, Some(&object(args.clone())), "demo", 200);
        assert_eq!(d.method, tool);
        assert_eq!(d.project, project, "{tool} {args}");
        assert_eq!(d.action, action, "{tool} {args}");
    }
    // A dry run, and rows capped by the server's limit.
    let d = decode(
        "execute_sql",
        Some(&object(
            json!({"sql": "SELECT 1", "dry_run": true, "max_rows": 100000}),
        )),
        "demo",
        200,
    );
    assert!(matches!(
        d.action,
        Action::Query(Query { dry_run: true, .. })
    ));
    assert_eq!(d.paging.max_rows, Some(200));
    // get_query_results waits at most 30 s.
    let d = decode(
        "get_query_results",
        Some(&object(
            json!({"job_id": "j", "timeout_ms": 600000, "page_token": "t"}),
        )),
        "demo",
        200,
    );
    assert_eq!(d.wait, Some(std::time::Duration::from_secs(30)));
    assert_eq!(d.paging.page_token.as_deref(), Some("t"));
}

#[test]
fn bad_calls_decode_as_malformed_with_what_was_wrong() {
    let cases: Vec<(&str, Option<Value>, Malformed, &str)> = vec![
        (
            "drop_everything",
            None,
            Malformed::Unknown,
            "Unknown tool `drop_everything`",
        ),
        (
            "execute_sql",
            None,
            Malformed::Invalid,
            "missing field `sql`",
        ),
        (
            "execute_sql",
            Some(json!({"sql": 5})),
            Malformed::Invalid,
            "invalid type",
        ),
        (
            "execute_sql",
            Some(json!({"sql": "SELECT 1", "write": true})),
            Malformed::Invalid,
            "unknown field `write`",
        ),
        (
            "get_table_info",
            Some(json!({"dataset_id": "d"})),
            Malformed::Invalid,
            "missing field `table_id`",
        ),
        (
            "get_job",
            Some(json!({"job_id": ["j"]})),
            Malformed::Invalid,
            "invalid type",
        ),
    ];
    for (tool, args, problem, says) in cases {
        let args = args.map(object);
        let d = decode(tool, args.as_ref(), "demo", 200);
        match d.action {
            Action::Malformed {
                problem: p,
                message,
            } => {
                assert_eq!(p, problem, "{tool}");
                assert!(message.contains(says), "{tool}: {message}");
            }
            other => panic!("{tool}: {other:?}"),
        }
    }
}

/// A reply that answers with a given neutral answer.
struct Answered(Answer);

impl Reply for Answered {
    fn summary(&self) -> Summary {
        Summary::default()
    }
    fn restrict(&mut self, _scope: &Scope) {}
    fn body(&self) -> bytes::Bytes {
        bytes::Bytes::new()
    }
    fn answer(&self) -> Answer {
        self.0.clone()
    }
}

fn done(answer: Answer) -> Outcome<Answered> {
    Outcome::Done(Answered(answer))
}

fn none() -> Explanation {
    Explanation::default()
}

fn text(result: &CallToolResult) -> String {
    serde_json::to_value(&result.content)
        .expect("json")
        .to_string()
}

#[test]
fn outcomes_render_as_tool_results_an_agent_reads() {
    let column = |name: &str, t: &str| Column {
        name: name.into(),
        data_type: t.into(),
        repeated: false,
    };
    // Rows: objects keyed by column, a page token when there is more, and a text table.
    let set = ResultSet {
        columns: vec![column("id", "INTEGER"), column("email", "STRING")],
        rows: vec![
            vec![json!(1), json!("***@example.com")],
            vec![json!(2), Value::Null],
        ],
        total_rows: Some(40),
        page_token: Some("next".into()),
        job_id: Some("job_1".into()),
        bytes_processed: Some(1024),
    };
    let r = render(
        "execute_sql",
        done(Answer::Rows(set.clone())),
        &none(),
        false,
    );
    assert_eq!(r.is_error, Some(false));
    let s = r.structured_content.clone().expect("structured");
    assert_eq!(s["rows"][0], json!({"id": 1, "email": "***@example.com"}));
    assert_eq!(s["schema"][1], json!({"name": "email", "type": "STRING"}));
    assert_eq!(
        (s["total_rows"].clone(), s["page_token"].clone()),
        (json!(40), json!("next"))
    );
    assert_eq!(s["job_id"], "job_1");
    assert!(
        text(&r).contains("id | email") && text(&r).contains("NULL"),
        "{}",
        text(&r)
    );

    let r = render(
        "list_dataset_ids",
        done(Answer::Names(vec!["shop".into()])),
        &none(),
        false,
    );
    assert_eq!(r.structured_content, Some(json!({"dataset_ids": ["shop"]})));
    let r = render(
        "list_table_ids",
        done(Answer::Names(vec!["orders".into()])),
        &none(),
        false,
    );
    assert_eq!(r.structured_content, Some(json!({"table_ids": ["orders"]})));
    let table = TableInfo {
        name: "demo.shop.orders".into(),
        kind: Some("TABLE".into()),
        columns: vec![column("id", "INTEGER")],
        rows: Some(3),
        description: None,
    };
    let r = render(
        "get_table_info",
        done(Answer::Table(table.clone())),
        &none(),
        false,
    );
    let s = r.structured_content.clone().expect("structured");
    assert_eq!(s["schema"][0]["name"], "id");
    assert_eq!(s["schema"][0]["masked"], false);
    assert_eq!(s["num_rows"], 3);
    // Masked for this caller: said per column, in the data and the text.
    let masked = Explanation {
        masks: vec![ColumnMask {
            column: column("id", "INTEGER"),
            strategy: Some(querygate_mask::Strategy::Hash),
        }],
        ..none()
    };
    let r = render("get_table_info", done(Answer::Table(table)), &masked, false);
    let s = r.structured_content.clone().expect("structured");
    assert_eq!(
        (
            s["schema"][0]["masked"].clone(),
            s["schema"][0]["mask"].clone()
        ),
        (json!(true), json!("hash"))
    );
    assert!(text(&r).contains("masked for you: hash"), "{}", text(&r));
    // A dry run: the estimate and the decision a real run would get.
    let approve = Explanation {
        verdict: Some("approve"),
        rule: Some("big-scans".into()),
        approvers: vec!["group:leads".into()],
        ..none()
    };
    let r = render("execute_sql", done(Answer::Rows(set)), &approve, true);
    let s = r.structured_content.clone().expect("structured");
    assert_eq!(
        s["decision"],
        json!({"verdict": "approve", "rule": "big-scans", "approvers": ["group:leads"]})
    );
    assert_eq!(s["bytes_processed"], 1024);
    assert!(
        text(&r).contains("waits for approval by group:leads"),
        "{}",
        text(&r)
    );
    let deny = Explanation {
        verdict: Some("deny"),
        rule: Some("no-writes".into()),
        ..none()
    };
    let refused = Outcome::<Answered>::Denied(Denial::new(
        DenialKind::Forbidden,
        "Access Denied: no writes",
    ));
    let r = render("execute_sql", refused, &deny, true);
    assert_eq!(r.is_error, Some(true));
    assert_eq!(
        r.structured_content.expect("structured")["decision"]["rule"],
        "no-writes"
    );
    let job = JobInfo {
        job_id: "j1".into(),
        state: "DONE".into(),
        error: None,
        statement: None,
    };
    let r = render("get_job", done(Answer::Jobs(vec![job])), &none(), false);
    assert_eq!(r.structured_content.expect("structured")["state"], "DONE");
    let r = render(
        "get_query_results",
        done(Answer::Running {
            job_id: Some("j2".into()),
        }),
        &none(),
        false,
    );
    assert!(text(&r).contains("get_query_results with job_id j2"));

    // Refusals, failures and the source's own errors are tool errors with their message.
    for (outcome, says) in [
        (
            Outcome::Denied(Denial::new(
                DenialKind::Forbidden,
                "Access Denied: writes are not allowed",
            )),
            "writes are not allowed",
        ),
        (
            Outcome::Failed(Fault::upstream("the source is down")),
            "the source is down",
        ),
        (
            done(Answer::Error {
                message: "Unrecognized name: x".into(),
            }),
            "Unrecognized name",
        ),
    ] {
        let r = render("execute_sql", outcome, &none(), false);
        assert_eq!(r.is_error, Some(true));
        assert!(text(&r).contains(says), "{}", text(&r));
    }
}

fn ticket() -> Ticket {
    Ticket {
        id: "tk_0123456789abcdef01234567".into(),
        state: TicketState::Pending,
        created: 1_700_000_000,
        expires: 1_700_003_600,
        requester: "agent:claude-code".into(),
        requester_groups: vec!["agents".into()],
        acting_for: None,
        source: "warehouse".into(),
        method: "execute_sql".into(),
        statement: "SELECT * FROM shop.events".into(),
        fingerprint: "f".repeat(64),
        parameters: None,
        kinds: vec!["select".into()],
        tables: vec!["demo.shop.events".into()],
        bytes_estimate: Some(1 << 30),
        cost_estimate_usd: None,
        max_bytes_billed: None,
        rule: "large scans need an approver".into(),
        approvers: vec!["group:approvers".into()],
        message: "large scans by agents need an approver".into(),
        reason: None,
        reason_via: None,
        policy_version: "v1".into(),
        job_id: "job-held-1".into(),
        location: None,
        call: String::new(),
        decided_by: None,
        decided_at: None,
        decision_reason: None,
        grant_until: None,
        notified: false,
    }
}

#[test]
fn a_held_call_answers_at_once_with_its_ticket_and_an_ended_one_with_why() {
    let pending: Outcome<Answered> = Outcome::Waiting(Box::new(Waiting {
        ticket: ticket(),
        ended: None,
    }));
    let r = render("execute_sql", pending, &none(), false);
    assert_eq!(r.is_error, Some(false));
    let s = r.structured_content.expect("structured");
    assert_eq!(s["state"], "PENDING");
    assert_eq!(s["job_id"], "job-held-1");
    assert_eq!(s["ticket"], "tk_0123456789abcdef01234567");
    assert_eq!(s["approvers"], json!(["group:approvers"]));
    assert!(
        s["message"]
            .as_str()
            .expect("text")
            .contains("get_query_results")
    );
    let ended: Outcome<Answered> = Outcome::Waiting(Box::new(Waiting {
        ticket: ticket(),
        ended: Some(
            "Access Denied: the approval request was denied by human:approver: too big".into(),
        ),
    }));
    let r = render("get_query_results", ended, &none(), false);
    assert_eq!(r.is_error, Some(true));
    assert!(text(&r).contains("too big"));
}

#[test]
fn the_records_use_the_rest_fronts_numbers() {
    use querygate_core::StatusCodes;
    assert_eq!(crate::CODES.denied(DenialKind::Forbidden), 403);
    assert_eq!(crate::CODES.denied(DenialKind::NotFound), 404);
    assert_eq!(crate::CODES.failed(&Fault::upstream("x")), 502);
    assert_eq!(crate::CODES.waiting(), 200);
}
