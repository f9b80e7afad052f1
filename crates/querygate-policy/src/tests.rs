//! Decision tables for the rule language, using the example policy from the docs.

use std::collections::HashMap;

use querygate_core::{Identity, IdentityKind};

use super::*;

const POLICY: &str = r#"
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
name = "finance needs a partition filter"
tables = ["*.finance.*"]
when = { full_scan = true }
action = "deny"
message = "add a filter on the partition column (event_date) to read finance tables"

[[rule]]
name = "no huge results for agents"
who = ["group:agents"]
when = { rows_over = 10000 }
action = "deny"
message = "page through fewer rows"

[[rule]]
name = "read"
who = ["group:agents", "group:analysts"]
statements = ["select"]
action = "allow"
max_bytes_billed = "100 GiB"
"#;

#[derive(serde::Deserialize)]
struct File {
    rule: Vec<RuleSpec>,
}

fn policy(text: &str) -> Policy {
    let f: File = toml::from_str(text).expect("policy toml");
    Policy::new(f.rule.iter().map(|r| r.check().expect("rule")).collect())
}

fn who(subject: &str, groups: &[&str]) -> Identity {
    Identity {
        subject: subject.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        kind: IdentityKind::Agent,
        ..Identity::default()
    }
}

/// `agent` acting for `person`.
fn acting(agent: Identity, person: Identity) -> Identity {
    Identity {
        acting_for: Some(Box::new(person)),
        ..agent
    }
}

struct Case<'a> {
    identity: Identity,
    kinds: &'a [StatementKind],
    tables: Vec<TableUse>,
    opaque: Option<&'a str>,
    bytes: Option<u64>,
}

fn read(name: &str, filtered: &[&str]) -> TableUse {
    TableUse {
        name: name.into(),
        write: false,
        filtered: filtered.iter().map(|s| s.to_string()).collect(),
    }
}

fn eval(p: &Policy, c: &Case<'_>) -> Verdict {
    let mut partitions = HashMap::new();
    partitions.insert(
        "p.finance.ledger".to_string(),
        Partitioning::Column("event_date".into()),
    );
    partitions.insert("p.shop.orders".to_string(), Partitioning::NotPartitioned);
    p.evaluate(&Input {
        identity: &c.identity,
        source: "analytics",
        statements: c.kinds,
        tables: &c.tables,
        opaque: c.opaque,
        bytes: c.bytes,
        partitions: &partitions,
        tags: &[],
        now: jiff::Timestamp::from_second(1_790_000_000).expect("ts"),
    })
}

use StatementKind as K;

#[test]
fn decision_table() {
    let p = policy(POLICY);
    let agent = || who("agent:claude", &["agents"]);
    let gib = 1u64 << 30;
    // (case, expected deciding rule, expected outcome kind)
    let cases: Vec<(&str, Case<'_>, Option<&str>, &str)> = vec![
        (
            "agent select",
            Case {
                identity: agent(),
                kinds: &[K::Select],
                tables: vec![read("p.shop.orders", &[])],
                opaque: None,
                bytes: Some(gib),
            },
            Some("read"),
            "allow",
        ),
        (
            "agent select in a transaction (BEGIN and COMMIT need no listing)",
            Case {
                identity: agent(),
                kinds: &[K::Transaction, K::Select, K::Transaction],
                tables: vec![read("p.shop.orders", &[])],
                opaque: None,
                bytes: Some(gib),
            },
            Some("read"),
            "allow",
        ),
        (
            "agent SET is not a select",
            Case {
                identity: agent(),
                kinds: &[K::Set, K::Select],
                tables: vec![read("p.shop.orders", &[])],
                opaque: None,
                bytes: Some(gib),
            },
            None,
            "deny",
        ),
        (
            "agent delete",
            Case {
                identity: agent(),
                kinds: &[K::Delete],
                tables: vec![],
                opaque: None,
                bytes: None,
            },
            Some("agents never write"),
            "deny",
        ),
        (
            "select then drop",
            Case {
                identity: agent(),
                kinds: &[K::Select, K::Drop],
                tables: vec![],
                opaque: None,
                bytes: None,
            },
            Some("agents never write"),
            "deny",
        ),
        (
            "big scan",
            Case {
                identity: agent(),
                kinds: &[K::Select],
                tables: vec![read("p.shop.orders", &[])],
                opaque: None,
                bytes: Some(11 * gib),
            },
            Some("large scans need an owner"),
            "approve",
        ),
        (
            "finance unfiltered",
            Case {
                identity: agent(),
                kinds: &[K::Select],
                tables: vec![read("p.finance.ledger", &["amount"])],
                opaque: None,
                bytes: Some(gib),
            },
            Some("finance needs a partition filter"),
            "deny",
        ),
        (
            "finance filtered",
            Case {
                identity: agent(),
                kinds: &[K::Select],
                tables: vec![read("p.finance.ledger", &["event_date"])],
                opaque: None,
                bytes: Some(gib),
            },
            Some("read"),
            "allow",
        ),
        (
            "finance unknown partitioning",
            Case {
                identity: agent(),
                kinds: &[K::Select],
                tables: vec![read("p.finance.other", &["event_date"])],
                opaque: None,
                bytes: Some(gib),
            },
            Some("finance needs a partition filter"),
            "deny",
        ),
        (
            "stranger",
            Case {
                identity: who("agent:x", &["other"]),
                kinds: &[K::Select],
                tables: vec![],
                opaque: None,
                bytes: Some(0),
            },
            None,
            "deny",
        ),
        (
            "opaque select",
            Case {
                identity: agent(),
                kinds: &[],
                tables: vec![],
                opaque: Some("cannot parse"),
                bytes: None,
            },
            Some("agents never write"),
            "deny",
        ),
        (
            "analyst select needs no estimate",
            Case {
                identity: who("human:ana", &["analysts"]),
                kinds: &[K::Select],
                tables: vec![read("p.shop.orders", &[])],
                opaque: None,
                bytes: None,
            },
            Some("read"),
            "allow",
        ),
    ];
    for (name, case, rule, kind) in cases {
        let v = eval(&p, &case);
        assert_eq!(v.needs_estimate, None, "{name}");
        assert_eq!(v.rule.as_deref(), rule, "{name}: {v:?}");
        let got = match v.outcome {
            Outcome::Allow => "allow",
            Outcome::Deny { .. } => "deny",
            Outcome::Approve { .. } => "approve",
        };
        assert_eq!(got, kind, "{name}: {v:?}");
    }
}

#[test]
fn bytes_rules_ask_for_an_estimate_only_when_they_could_decide() {
    let p = policy(POLICY);
    let c = Case {
        identity: who("agent:claude", &["agents"]),
        kinds: &[K::Select],
        tables: vec![],
        opaque: None,
        bytes: None,
    };
    let v = eval(&p, &c);
    assert_eq!(
        v.needs_estimate.as_deref(),
        Some("large scans need an owner")
    );
    // Writes are denied before the bytes rule: no dry run needed.
    let c = Case {
        kinds: &[K::Insert],
        ..c
    };
    assert_eq!(eval(&p, &c).needs_estimate, None);
}

#[test]
fn denials_explain_themselves() {
    let p = policy(POLICY);
    let agent = who("agent:claude", &["agents"]);
    let v = eval(
        &p,
        &Case {
            identity: agent.clone(),
            kinds: &[K::Select],
            tables: vec![read("p.finance.ledger", &[])],
            opaque: None,
            bytes: Some(1),
        },
    );
    let Outcome::Deny { message } = v.outcome else {
        panic!("{v:?}")
    };
    assert!(
        message.contains("rule \"finance needs a partition filter\""),
        "{message}"
    );
    assert!(
        message.contains("filter p.finance.ledger on its partition column event_date"),
        "{message}"
    );
    let v = eval(
        &p,
        &Case {
            identity: agent.clone(),
            kinds: &[K::Select],
            tables: vec![],
            opaque: None,
            bytes: Some(20 << 30),
        },
    );
    let Outcome::Approve {
        message, approvers, ..
    } = v.outcome
    else {
        panic!("{v:?}")
    };
    assert_eq!(approvers, vec!["group:data-owners"]);
    assert!(
        message.contains("20.0 GiB") && message.contains("needs approval by group:data-owners"),
        "{message}"
    );
    let v = eval(
        &p,
        &Case {
            identity: who("agent:z", &[]),
            kinds: &[K::Select],
            tables: vec![],
            opaque: None,
            bytes: Some(0),
        },
    );
    let Outcome::Deny { message } = v.outcome else {
        panic!("{v:?}")
    };
    assert!(
        message.contains("no policy rule allows SELECT"),
        "{message}"
    );
}

#[test]
fn every_matching_rule_is_listed_and_limits_come_along() {
    let p = policy(POLICY);
    let v = eval(
        &p,
        &Case {
            identity: who("agent:claude", &["agents"]),
            kinds: &[K::Select],
            tables: vec![read("p.shop.orders", &[])],
            opaque: None,
            bytes: Some(5),
        },
    );
    assert_eq!(v.matched, vec!["read"]);
    assert_eq!(v.max_bytes_billed, Some(100 << 30));
    assert_eq!(v.row_limit.as_ref().map(|r| r.rows), Some(10000));
    assert!(
        v.row_limit
            .is_some_and(|r| r.message.contains("page through fewer rows"))
    );
}

#[test]
fn opaque_needs_an_explicit_allow() {
    let p = policy(
        r#"
[[rule]]
name = "read"
statements = ["select"]
action = "allow"

[[rule]]
name = "trusted opaque"
who = ["identity:human:*"]
when = { opaque = true }
action = "allow"
"#,
    );
    let opaque = |id: Identity| Case {
        identity: id,
        kinds: &[],
        tables: vec![],
        opaque: Some("x"),
        bytes: None,
    };
    assert_eq!(eval(&p, &opaque(who("agent:a", &[]))).rule, None);
    assert_eq!(
        eval(&p, &opaque(who("human:b", &[]))).rule.as_deref(),
        Some("trusted opaque")
    );
}

#[test]
fn hours_and_globs() {
    let h = Hours::parse("08:00-18:00 Europe/Berlin").expect("hours");
    // 2026-11-27 10:00 UTC = 11:00 Berlin; 20:00 UTC = 21:00 Berlin.
    let at = |s: &str| s.parse::<jiff::Timestamp>().expect("ts");
    assert!(h.contains(at("2026-11-27T10:00:00Z")));
    assert!(!h.contains(at("2026-11-27T20:00:00Z")));
    let night = Hours::parse("22:00-06:00").expect("hours");
    assert!(
        night.contains(at("2026-11-27T23:30:00Z")) && !night.contains(at("2026-11-27T12:00:00Z"))
    );
    assert!(Hours::parse("8-18 Mars/Olympus").is_err());
    assert!(TableGlob("*.finance.*".into()).matches("p.finance.ledger"));
    assert!(!TableGlob("*.finance.*".into()).matches("p.financed.ledger"));
    assert!(TableGlob("p.shop.events_*".into()).matches("p.shop.events_2024"));
}

#[test]
fn bad_rules_are_explained() {
    let bad = |extra: &str| {
        let text = format!("[[rule]]\nname = \"r\"\n{extra}\n");
        let f: File = toml::from_str(&text).expect("toml");
        f.rule[0].check().expect_err("must fail").to_string()
    };
    assert!(bad("action = \"permit\"").contains("must be \"allow\""));
    assert!(bad("action = \"deny\"\nwho = [\"agents\"]").contains("group:NAME"));
    assert!(bad("action = \"deny\"\nstatements = [\"upsert\"]").contains("unknown kind"));
    assert!(bad("action = \"approve\"").contains("approvers"));
    assert!(bad("action = \"allow\"\nwhen = { rows_over = 5 }").contains("rows_over"));
    assert!(bad("action = \"deny\"\ntables = [\"finance\"]").contains("project.dataset.table"));
    assert!(bad("action = \"deny\"\nwhen = { bytes_over = \"lots\" }").contains("bytes_over"));
    assert!(bad("action = \"deny\"\non_behalf_of = [\"engineers\"]").contains("on_behalf_of"));
    assert!(bad("action = \"deny\"\non_approval = \"fail\"").contains("approve rules only"));
    let approve = "action = \"approve\"\napprovers = [\"group:o\"]";
    assert!(bad(&format!("{approve}\non_approval = \"later\"")).contains("\"wait\" or \"fail\""));
    let p = policy(&format!(
        "[[rule]]\nname = \"r\"\n{approve}\non_approval = \"fail\"\n"
    ));
    assert_eq!(p.rules[0].on_approval, crate::OnApproval::Fail);
    let p = policy(&format!("[[rule]]\nname = \"r\"\n{approve}\n"));
    assert_eq!(p.rules[0].on_approval, crate::OnApproval::Wait);
}

#[test]
fn on_behalf_of_matches_the_person_an_agent_acts_for() {
    let p = policy(
        r#"
[[rule]]
name = "never for contractors"
who = ["group:agents"]
on_behalf_of = ["group:contractors"]
action = "deny"
message = "agents may not act for contractors"

[[rule]]
name = "agents for engineers"
who = ["group:agents"]
on_behalf_of = ["group:engineers", "identity:human:cto"]
statements = ["select"]
action = "allow"
"#,
    );
    let case = |identity: Identity| Case {
        identity,
        kinds: &[K::Select],
        tables: vec![read("p.shop.orders", &[])],
        opaque: None,
        bytes: None,
    };
    let agent = || who("agent:claude", &["agents"]);
    let alice = || who("human:alice", &["engineers"]);
    let bob = || who("human:bob", &["contractors", "engineers"]);

    // Alone, the agent matches no rule: a rule with on_behalf_of needs someone acted for.
    let v = eval(&p, &case(agent()));
    assert_eq!(v.rule, None);
    assert!(
        matches!(&v.outcome, Outcome::Deny { message } if !message.contains("acting for")),
        "{v:?}"
    );
    // Acting for an engineer: allowed by the second rule.
    let v = eval(&p, &case(acting(agent(), alice())));
    assert_eq!(v.rule.as_deref(), Some("agents for engineers"));
    assert_eq!(v.outcome, Outcome::Allow);
    // By subject, too.
    let v = eval(&p, &case(acting(agent(), who("human:cto", &[]))));
    assert_eq!(v.outcome, Outcome::Allow);
    // Acting for a contractor: the deny rule comes first and says why.
    let v = eval(&p, &case(acting(agent(), bob())));
    assert_eq!(v.rule.as_deref(), Some("never for contractors"));
    assert!(
        matches!(&v.outcome, Outcome::Deny { message } if message.contains("may not act for contractors")),
        "{v:?}"
    );
    // A person acting for nobody is matched by neither; the denial names who asked.
    let v = eval(&p, &case(acting(who("agent:other", &["bots"]), alice())));
    assert!(
        matches!(&v.outcome, Outcome::Deny { message } if message.contains("agent:other acting for human:alice")),
        "{v:?}"
    );
    // `who` never matches the person acted for: alice's groups do not make the agent an engineer.
    let p2 = policy(
        r#"
[[rule]]
name = "engineers read"
who = ["group:engineers"]
statements = ["select"]
action = "allow"
"#,
    );
    assert_eq!(eval(&p2, &case(acting(agent(), alice()))).rule, None);
}

/// Upstreams resolve `Finance.LEDGER` to `finance.ledger`: rule globs and partition
/// lookups compare names without case, so a miscased name neither skips a table rule nor
/// loses its partitioning.
#[test]
fn table_names_compare_without_case() {
    assert!(TableGlob("*.finance.*".into()).matches("p.FINANCE.ledger"));
    assert!(TableGlob("*.Finance.LEDGER".into()).matches("P.finance.ledger"));
    assert!(TableGlob("p.shop.events_*".into()).matches("p.Shop.EVENTS_2024"));
    assert!(TableGlob("p.shop.straße".into()).matches("p.shop.STRASSE"));
    assert!(!TableGlob("*.finance.*".into()).matches("p.financed.ledger"));
    let p = policy(POLICY);
    let agent = || who("agent:claude", &["agents"]);
    let case = |name: &str, filtered: &[&str]| Case {
        identity: agent(),
        kinds: &[K::Select],
        tables: vec![read(name, filtered)],
        opaque: None,
        bytes: Some(1),
    };
    // Unfiltered, whatever the case: the finance rule applies.
    for name in ["p.Finance.Ledger", "P.FINANCE.LEDGER"] {
        assert_eq!(
            eval(&p, &case(name, &[])).rule.as_deref(),
            Some("finance needs a partition filter"),
            "{name}"
        );
        let v = eval(&p, &case(name, &[]));
        let Outcome::Deny { message } = v.outcome else {
            panic!("{v:?}")
        };
        assert!(message.contains("partition column event_date"), "{message}");
    }
    // Filtered on the partition column written in another case.
    assert_eq!(
        eval(&p, &case("p.Finance.Ledger", &["EVENT_DATE"]))
            .rule
            .as_deref(),
        Some("read")
    );
    // A miscased name of a table that is not partitioned is still known.
    assert_eq!(
        eval(&p, &case("p.SHOP.Orders", &[])).rule.as_deref(),
        Some("read")
    );
}

#[test]
fn the_catalog_shows_what_some_read_could_see() {
    let p = policy(
        r#"
[[rule]]
name = "no-hr"
tables = ["*.hr.*"]
action = "deny"
message = "HR data is off limits"

[[rule]]
name = "no-salaries"
who = ["group:agents"]
tables = ["p.finance.salaries"]
action = "deny"

[[rule]]
name = "no-pii-scans"
when = { touches = "pii", full_scan = true }
action = "deny"

[[rule]]
name = "big"
when = { bytes_over = "1 GiB" }
action = "approve"
approvers = ["group:leads"]

[[rule]]
name = "reads"
statements = ["select"]
action = "allow"
"#,
    );
    let at = jiff::Timestamp::from_second(1_790_000_000).expect("ts");
    let agent = who("agent:a", &["agents"]);
    let person = who("user:b", &["analysts"]);
    let seen = |id: &Identity, table: &str| p.readable(id, "analytics", table, at);
    // A rule on the table or its dataset hides it, with that rule's message.
    let v = seen(&agent, "p.hr.people");
    assert_eq!(v.rule.as_deref(), Some("no-hr"));
    assert!(matches!(&v.outcome, Outcome::Deny { message } if message.contains("HR data")));
    assert_eq!(seen(&agent, "p.hr.*").rule.as_deref(), Some("no-hr"));
    // A rule on one table hides that table from whom it names, not its dataset.
    assert!(matches!(
        seen(&agent, "p.finance.salaries").outcome,
        Outcome::Deny { .. }
    ));
    assert_eq!(seen(&person, "p.finance.salaries").outcome, Outcome::Allow);
    assert_eq!(seen(&agent, "p.finance.*").outcome, Outcome::Allow);
    // Rules about a query's shape (classified columns, scans, bytes) hide nothing.
    assert_eq!(seen(&agent, "p.shop.customers").outcome, Outcome::Allow);
    assert_eq!(
        seen(&agent, "p.shop.customers").rule.as_deref(),
        Some("reads")
    );
}

#[test]
fn a_source_is_usable_by_whom_some_rule_could_allow() {
    let p = policy(
        r#"
[[rule]]
name = "no-contractors"
who = ["group:contractors"]
action = "deny"

[[rule]]
name = "no-writes"
statements = ["insert", "update", "delete"]
action = "deny"

[[rule]]
name = "analysts"
who = ["group:analysts"]
statements = ["select"]
action = "allow"
"#,
    );
    assert!(p.may_use(&who("user:a", &["analysts"])));
    // Denied everything before any rule that could allow it.
    assert!(!p.may_use(&who("user:c", &["contractors", "analysts"])));
    // Named by no allow rule at all.
    assert!(!p.may_use(&who("agent:x", &["agents"])));
    assert!(Policy::builtin_read_only().may_use(&who("agent:x", &[])));
}
