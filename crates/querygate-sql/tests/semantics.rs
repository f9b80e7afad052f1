//! Explicit assertions on the facts that policy and masking rely on, one test per property, so a
//! regression fails with a named reason even if someone re-accepts the corpus snapshots blindly.
//! Covers the row-13 evasions and masking-bypass shapes of attacks.md, the public API contract,
//! and hostile input (deep nesting, long chains) on a thread with a small stack.

use querygate_sql::{
    ColumnRef, Facts, OutputColumn, SqlDialect, StatementKind as K, TableRef, analyze,
};

fn bq(sql: &str) -> Facts {
    analyze(sql, SqlDialect::BigQuery)
}

fn pg(sql: &str) -> Facts {
    analyze(sql, SqlDialect::Postgres)
}

fn kinds(f: &Facts) -> Vec<K> {
    f.kinds().collect()
}

fn names(refs: &[ColumnRef]) -> Vec<String> {
    refs.iter().map(ToString::to_string).collect()
}

fn tables(refs: &[TableRef]) -> Vec<String> {
    refs.iter().map(TableRef::name).collect()
}

/// The single output column of the single statement.
fn only_output(f: &Facts) -> OutputColumn {
    assert!(f.opaque.is_none(), "{f}");
    assert_eq!(f.statements.len(), 1, "{f}");
    assert_eq!(f.statements[0].output.len(), 1, "{f}");
    f.statements[0].output[0].clone()
}

#[test]
fn api_contract() {
    assert!(!Facts::default().read_only());
    assert_eq!(Facts::default().kinds().count(), 0);
    let f = bq("SELECT a FROM ds.t");
    assert!(f.read_only(), "{f}");
    assert_eq!(f.kinds().map(|k| k.name()).collect::<Vec<_>>(), ["select"]);
    let t = &f.statements[0].reads[0];
    assert_eq!(t.qualified("proj"), "proj.ds.t");
    assert_eq!(f.reads().len(), 1);
    assert!(f.writes().is_empty());
    assert!(f.not_read_only_reasons().is_empty());
    // The old call site `facts.statements.iter().map(|k| k.name())` still reads kinds.
    assert_eq!(
        f.statements.iter().map(|k| k.name()).collect::<Vec<_>>(),
        ["select"]
    );
    let f = pg("SELECT nextval('s') FROM t FOR UPDATE; DELETE FROM t");
    assert_eq!(
        f.not_read_only_reasons(),
        [
            "row locks (FOR UPDATE/SHARE)",
            "the function NEXTVAL",
            "DELETE"
        ]
    );
    assert_eq!(
        pg("SELECT * INTO x FROM t").not_read_only_reasons(),
        ["CREATE"]
    );
}

#[test]
fn row13_multi_statement_and_transaction_control() {
    let f = bq("SELECT 1; DROP TABLE x");
    assert_eq!(kinds(&f), [K::Select, K::Drop]);
    assert!(!f.read_only());
    let f = pg("COMMIT; DELETE FROM t");
    assert_eq!(kinds(&f), [K::Transaction, K::Delete]);
    assert_eq!(tables(&f.statements[1].writes), ["t"]);
    assert!(!f.read_only());
}

#[test]
fn row13_comments_do_not_hide_statements() {
    let f = bq("/* x */ DELETE FROM ds.t WHERE true");
    assert_eq!(kinds(&f), [K::Delete]);
    let f = bq("-- c\nSELECT 1 -- d\n/* e */");
    assert_eq!(kinds(&f), [K::Select]);
    assert!(f.read_only());
}

#[test]
fn row13_data_modifying_ctes() {
    let f = bq("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x");
    assert_eq!(kinds(&f), [K::Insert]);
    assert_eq!(tables(&f.statements[0].writes), ["t"]);
    let f = pg("WITH d AS (DELETE FROM users RETURNING *) SELECT * FROM d");
    assert_eq!(kinds(&f), [K::Delete]);
    assert_eq!(tables(&f.statements[0].writes), ["users"]);
    assert!(!f.read_only());
    let f = pg("WITH x AS (SELECT 1) UPDATE t SET a = 1");
    assert_eq!(kinds(&f), [K::Update]);
}

#[test]
fn row13_dynamic_sql_and_procedures() {
    let f = bq("EXECUTE IMMEDIATE 'SELECT 1'");
    assert!(f.opaque.is_some());
    assert!(!f.read_only());
    let f = pg("PREPARE s AS SELECT 1; EXECUTE s");
    assert!(f.opaque.is_some());
    let f = bq("CALL ds.p()");
    assert_eq!(kinds(&f), [K::Call]);
    assert!(!f.read_only());
    let f = pg("CREATE PROCEDURE p() AS BEGIN DELETE FROM t; END");
    assert_eq!(kinds(&f), [K::Create, K::Delete]);
    assert!(f.opaque.is_none(), "{f}");
    assert_eq!(tables(&f.statements[1].writes), ["t"]);
}

#[test]
fn row13_blocks_surface_inner_statements() {
    let f = bq("DECLARE x INT64 DEFAULT 0; BEGIN SET x = 1; DELETE FROM ds.t WHERE true; END");
    assert_eq!(kinds(&f), [K::Declare, K::Set, K::Delete]);
    let f = bq("IF (SELECT COUNT(*) FROM ds.a) > 0 THEN SELECT 1; ELSE DROP TABLE ds.b; END IF");
    assert_eq!(kinds(&f), [K::Other, K::Select, K::Drop]);
    assert_eq!(tables(&f.statements[0].reads), ["ds.a"]);
}

#[test]
fn row13_side_effecting_functions_are_visible() {
    for (sql, func) in [
        ("SELECT pg_terminate_backend(1)", "PG_TERMINATE_BACKEND"),
        ("SELECT nextval('s')", "NEXTVAL"),
        ("SELECT lo_export(1, '/tmp/x')", "LO_EXPORT"),
        (
            "SELECT pg_catalog.set_config('a', 'b', false)",
            "PG_CATALOG.SET_CONFIG",
        ),
    ] {
        let f = pg(sql);
        assert!(f.statements[0].functions.contains(&func.to_string()), "{f}");
        assert_eq!(
            f.statements[0]
                .side_effecting_functions()
                .collect::<Vec<_>>(),
            [func]
        );
        assert!(!f.read_only(), "{sql} must not be read-only");
    }
    // Functions that run SQL text hide what they read: opaque.
    for sql in [
        "SELECT dblink_exec('x', 'DROP TABLE t')",
        "SELECT query_to_xml('SELECT ssn FROM users', true, false, '')",
    ] {
        assert!(pg(sql).opaque.is_some(), "{sql}");
    }
}

#[test]
fn row13_copy_and_export() {
    let f = bq("CREATE TABLE ds.x CLONE ds.y");
    assert_eq!(kinds(&f), [K::Copy]);
    assert_eq!(tables(&f.statements[0].reads), ["ds.y"]);
    assert_eq!(tables(&f.statements[0].writes), ["ds.x"]);
    assert_eq!(
        kinds(&bq("CREATE SNAPSHOT TABLE ds.x CLONE ds.y")),
        [K::Copy]
    );
    // sqlparser cannot read CREATE TABLE … COPY: opaque, never allowed.
    assert!(bq("CREATE TABLE ds.x COPY ds.y").opaque.is_some());
    let f = bq("EXPORT DATA OPTIONS(uri='gs://b/*.csv', format='CSV') AS SELECT ssn FROM ds.u");
    assert_eq!(kinds(&f), [K::Export]);
    assert_eq!(tables(&f.statements[0].reads), ["ds.u"]);
    assert_eq!(names(&f.statements[0].output[0].sources), ["ds.u.ssn"]);
    let f = pg("COPY users TO STDOUT");
    assert_eq!(kinds(&f), [K::Copy]);
    assert_eq!(tables(&f.statements[0].reads), ["users"]);
    assert_eq!(names(&f.statements[0].output[0].sources), ["users.*"]);
    let f = pg("COPY (SELECT ssn FROM users) TO STDOUT");
    assert_eq!(names(&f.statements[0].output[0].sources), ["users.ssn"]);
    let f = pg("SELECT * INTO newtable FROM users");
    assert_eq!(kinds(&f), [K::Create]);
    assert_eq!(tables(&f.statements[0].writes), ["newtable"]);
    assert!(f.statements[0].output.is_empty());
    assert!(!f.read_only());
}

#[test]
fn bigquery_table_forms() {
    let f = bq("SELECT * FROM `proj.ds.events_*` WHERE _TABLE_SUFFIX > '2024'");
    let s = &f.statements[0];
    assert!(s.reads[0].wildcard);
    assert_eq!(s.reads[0].parts, ["proj", "ds", "events_*"]);
    assert_eq!(names(&s.predicates), ["proj.ds.events_*._TABLE_SUFFIX"]);
    let f = bq("SELECT * FROM `ds.t$20240101`");
    let t = &f.statements[0].reads[0];
    assert_eq!(t.parts, ["ds", "t"]);
    assert_eq!(t.decorator.as_deref(), Some("$20240101"));
    let f = bq("SELECT * FROM `ds.t@1700000000000`");
    assert_eq!(
        f.statements[0].reads[0].decorator.as_deref(),
        Some("@1700000000000")
    );
    let f = bq("SELECT * FROM ds.t FOR SYSTEM_TIME AS OF CURRENT_TIMESTAMP()");
    assert!(f.statements[0].reads[0].time_travel);
    let f = bq("SELECT * FROM `region-us`.INFORMATION_SCHEMA.JOBS");
    assert!(f.statements[0].reads[0].information_schema);
    assert!(
        pg("SELECT * FROM information_schema.tables").statements[0].reads[0].information_schema
    );
}

#[test]
fn unparsable_is_opaque_with_the_parser_message() {
    for sql in [
        "SELECT * FROM ML.PREDICT(MODEL m, TABLE t)",
        "SELEC nonsense",
        "",
        "   ",
        "SELECT '\u{0}\u{ffff}' FROM",
    ] {
        let f = bq(sql);
        assert!(f.opaque.is_some(), "{sql:?}");
        assert!(!f.read_only());
    }
    let f = pg("DO $$ BEGIN END $$");
    assert!(
        f.opaque.as_deref().unwrap_or("").contains("cannot parse"),
        "{f}"
    );
}

/// Text the parser rejects is a syntax error (with the parser's message and position) as
/// well as opaque; text it reads, or cannot analyze for other reasons, is not one.
#[test]
fn syntax_errors_are_reported_as_such() {
    let f = bq("SELECT * FROM t WHERE id = (1");
    let e = f.syntax_error.clone().expect("syntax error");
    assert!(
        f.opaque
            .as_deref()
            .is_some_and(|o| o.contains("cannot parse")),
        "{f}"
    );
    assert!(!f.read_only());
    assert!(e.message.contains("Expected"), "{e:?}");
    assert!(!e.message.contains("Line:"), "{e:?}");
    assert_eq!((e.line, e.column), (Some(1), Some(30)), "{e:?}");
    assert!(e.to_string().ends_with("at line 1, column 30"), "{e}");
    // Lines count from 1.
    let e = bq("SELECT a\nFROM t\nWHERE a = = 1")
        .syntax_error
        .expect("syntax error");
    assert_eq!(e.line, Some(3), "{e:?}");
    // Tokenizer errors too (an unterminated quoted name).
    let e = bq("SELECT `a FROM t").syntax_error.expect("syntax error");
    assert_eq!((e.line, e.column), (Some(1), Some(8)), "{e:?}");
    assert!(e.message.contains("delimiter"), "{e:?}");
    for sql in [
        "SELEC nonsense",
        "SELECT FROM",
        "SELECT * FROM ML.PREDICT(MODEL m, TABLE t)",
    ] {
        let f = bq(sql);
        assert!(
            f.syntax_error.is_some() && f.opaque.is_some(),
            "{sql}: {f:?}"
        );
    }
    assert!(pg("SELECT * FROM t WHERE").syntax_error.is_some());
    // Understood, or opaque for other reasons: no syntax error.
    for sql in [
        "SELECT a FROM ds.t",
        "EXECUTE IMMEDIATE 'SELECT 1'",
        "SELECT @@error.message",
        "",
    ] {
        assert!(bq(sql).syntax_error.is_none(), "{sql}");
    }
    // Nesting beyond the parser's recursion limit is not a syntax error (only opaque).
    let deep = format!("SELECT {}1{}", "(".repeat(300), ")".repeat(300));
    let f = bq(&deep);
    assert!(
        f.opaque.is_some() && f.syntax_error.is_none(),
        "{:?}",
        f.opaque
    );
}

/// `@`name`` (the Python DB-API layer's parameters) is a named parameter with exactly the
/// facts of `@name`.
#[test]
fn backticked_parameters_are_named_parameters() {
    for (ticked, plain) in [
        (
            "SELECT * FROM ds.t WHERE id = @`id`",
            "SELECT * FROM ds.t WHERE id = @id",
        ),
        (
            "SELECT a, @`x` AS y FROM ds.t WHERE b IN UNNEST(@`ids`) LIMIT @`n`",
            "SELECT a, @x AS y FROM ds.t WHERE b IN UNNEST(@ids) LIMIT @n",
        ),
        (
            "SELECT COUNT(*) FROM ds.t WHERE d BETWEEN @`from` AND @`to`",
            "SELECT COUNT(*) FROM ds.t WHERE d BETWEEN @from AND @to",
        ),
    ] {
        let f = bq(ticked);
        assert!(f.opaque.is_none(), "{ticked}: {f}");
        assert_eq!(f, bq(plain), "{ticked}");
    }
    // A parameter is a constant: it bounds a partition column as `@name` does.
    let f = bq("SELECT * FROM ds.t WHERE d >= @`start`");
    assert_eq!(f.statements[0].scans[0].bounded, ["d"], "{f}");
    // `@` then a space is no parameter: still a syntax error.
    assert!(bq("SELECT @ `id`").syntax_error.is_some());
    // PostgreSQL is untouched (`@` is an operator there).
    assert!(pg("SELECT @ -5").opaque.is_none());
}

// ----- masking bypass shapes (attacks.md rows 1-5, 8) -------------------------------------

#[test]
fn row1_expressions_keep_their_source() {
    for sql in [
        "SELECT lower(ssn) FROM ds.users",
        "SELECT ssn || '' FROM ds.users",
        "SELECT SUBSTR(ssn, 1, 3) FROM ds.users",
        "SELECT CAST(ssn AS STRING) FROM ds.users",
        "SELECT CASE WHEN ssn LIKE '1%' THEN 'a' END FROM ds.users",
    ] {
        assert_eq!(
            names(&only_output(&bq(sql)).sources),
            ["ds.users.ssn"],
            "{sql}"
        );
    }
}

#[test]
fn row2_laundering_through_aliases_ctes_subqueries_and_unions() {
    for sql in [
        "WITH c AS (SELECT ssn AS x FROM ds.users) SELECT x FROM c",
        "WITH c AS (SELECT ssn AS x FROM ds.users) SELECT c.x AS y FROM c",
        "SELECT x FROM (SELECT ssn AS x FROM ds.users)",
        "WITH a AS (SELECT ssn FROM ds.users), b AS (SELECT * FROM a) SELECT ssn FROM b",
    ] {
        assert_eq!(
            names(&only_output(&bq(sql)).sources),
            ["ds.users.ssn"],
            "{sql}"
        );
    }
    let f = bq("SELECT name FROM ds.users UNION ALL SELECT ssn FROM ds.users");
    assert_eq!(
        names(&only_output(&f).sources),
        ["ds.users.name", "ds.users.ssn"]
    );
    // A CTE is never reported as a table.
    let f = bq("WITH users AS (SELECT ssn FROM ds.people) SELECT ssn FROM users");
    assert_eq!(tables(&f.statements[0].reads), ["ds.people"]);
}

#[test]
fn row3_whole_row_references() {
    for sql in [
        "SELECT t FROM ds.users t",
        "SELECT TO_JSON_STRING(t) FROM ds.users AS t",
        "SELECT ARRAY_AGG(t) FROM ds.users t",
        "SELECT FORMAT('%t', t) FROM ds.users t",
    ] {
        let c = only_output(&bq(sql));
        assert!(c.whole_row, "{sql}");
        assert_eq!(names(&c.sources), ["ds.users.*"], "{sql}");
    }
    let c = only_output(&pg("SELECT row_to_json(t) FROM users t"));
    assert!(c.whole_row);
    assert_eq!(names(&c.sources), ["users.*"]);
    let f = bq("SELECT * EXCEPT (ssn) FROM ds.users");
    let c = only_output(&f);
    assert_eq!(c.name, "*");
    assert_eq!(c.except, ["ssn"]);
}

#[test]
fn row4_semi_structured_paths() {
    let c = only_output(&bq("SELECT JSON_VALUE(payload, '$.email') FROM ds.events"));
    assert_eq!(names(&c.sources), ["ds.events.payload"]);
    let c = only_output(&bq("SELECT c.email FROM ds.users, UNNEST(contacts) AS c"));
    assert_eq!(names(&c.sources), ["ds.users.contacts"]);
    let c = only_output(&bq("SELECT e.payload.email FROM ds.events e"));
    assert_eq!(names(&c.sources), ["ds.events.payload"]);
}

#[test]
fn row5_value_returning_aggregates() {
    for sql in [
        "SELECT MAX(ssn) FROM ds.users",
        "SELECT STRING_AGG(ssn) FROM ds.users",
        "SELECT APPROX_TOP_COUNT(ssn, 10) FROM ds.users",
        "SELECT MIN(ssn) FROM ds.users GROUP BY country",
    ] {
        assert_eq!(
            names(&only_output(&bq(sql)).sources),
            ["ds.users.ssn"],
            "{sql}"
        );
    }
    // COUNT(*) reads no value.
    assert!(
        only_output(&bq("SELECT COUNT(*) FROM ds.users"))
            .sources
            .is_empty()
    );
}

#[test]
fn row8_ordering_and_grouping_columns() {
    let f = bq("SELECT name FROM ds.users GROUP BY name, ssn ORDER BY ssn");
    assert_eq!(
        names(&f.statements[0].ordering),
        ["ds.users.name", "ds.users.ssn"]
    );
    let f = bq("SELECT RANK() OVER (ORDER BY ssn) FROM ds.users");
    assert_eq!(names(&only_output(&f).sources), ["ds.users.ssn"]);
    assert_eq!(names(&f.statements[0].ordering), ["ds.users.ssn"]);
}

#[test]
fn predicates_and_unresolvable_names() {
    let f = bq("SELECT COUNT(*) FROM ds.users WHERE ssn LIKE '1%'");
    assert_eq!(names(&f.statements[0].predicates), ["ds.users.ssn"]);
    // With two tables and no qualifier, every candidate is listed.
    let f = bq("SELECT name FROM ds.a, ds.b");
    assert_eq!(names(&only_output(&f).sources), ["ds.a.name", "ds.b.name"]);
    assert!(bq("SELECT nope").opaque.is_some());
}

#[test]
fn script_variables_carry_lineage() {
    let f = bq("DECLARE v STRING; SET v = (SELECT ssn FROM ds.users LIMIT 1); SELECT v");
    assert_eq!(names(&f.statements[2].output[0].sources), ["ds.users.ssn"]);
}

// ----- hostile input ------------------------------------------------------------------------

/// Runs `analyze` in both dialects on a thread with a 2 MiB stack (the tokio default), twice,
/// and checks the facts are the same.
fn survives(sql: String) -> Facts {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(move || {
            let a = analyze(&sql, SqlDialect::BigQuery);
            let b = analyze(&sql, SqlDialect::Postgres);
            assert_eq!(a, analyze(&sql, SqlDialect::BigQuery));
            assert_eq!(b, analyze(&sql, SqlDialect::Postgres));
            a
        })
        .expect("spawn")
        .join()
        .expect("analyze must not panic")
}

#[test]
fn deep_nesting_is_opaque_not_a_crash() {
    let n = 10_000;
    for sql in [
        format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n)),
        format!("SELECT {}", "(".repeat(n)),
        format!("SELECT {}1", "NOT ".repeat(n)),
        format!("SELECT {}1", "- ".repeat(n)),
        format!("SELECT {}", "(SELECT ".repeat(n)),
        format!(
            "SELECT {} 1 {}",
            "CASE WHEN true THEN ".repeat(n),
            "END ".repeat(n)
        ),
        format!("SELECT ARRAY{}1{}", "[".repeat(n), "]".repeat(n)),
    ] {
        let f = survives(sql);
        assert!(f.opaque.is_some());
    }
}

#[test]
fn long_chains_are_refused_or_walked_without_recursion() {
    // Over the operator budget: refused before parsing.
    for sql in [
        format!("SELECT {}", vec!["1"; 200_000].join("+")),
        format!("SELECT x{}", "::int".repeat(100_000)),
        format!("SELECT {}", vec!["SELECT 1"; 50_000].join(" UNION ALL ")),
        format!("SELECT a {}", "IS NULL ".repeat(50_000)),
    ] {
        let f = survives(sql);
        assert!(
            f.opaque.as_deref().unwrap_or("").contains("operators"),
            "{:?}",
            f.opaque
        );
    }
    // Under the budget: long AND chains and UNION ALL lists are understood.
    let f = survives(format!(
        "SELECT a FROM ds.t WHERE {}",
        vec!["b = 1"; 4_000].join(" AND ")
    ));
    assert!(f.opaque.is_none(), "{:?}", f.opaque);
    let f = survives(vec!["SELECT ssn FROM ds.t"; 2_000].join(" UNION ALL "));
    assert!(f.opaque.is_none(), "{:?}", f.opaque);
    // Chains the walker must recurse on go opaque past its depth limit.
    let f = survives(format!("SELECT x{} FROM ds.t", "::INT64".repeat(1_000)));
    assert!(f.opaque.is_some());
    // Long flat lists are fine.
    let f = survives(format!(
        "SELECT a FROM ds.t WHERE a IN ({})",
        vec!["1"; 100_000].join(",")
    ));
    assert!(f.opaque.is_none(), "{:?}", f.opaque);
}

#[test]
fn nested_recursive_ctes_stay_cheap() {
    let mut sql = "SELECT ssn AS a FROM ds.users".to_string();
    for i in 0..20 {
        sql = format!(
            "WITH RECURSIVE r{i} AS ({sql} UNION ALL SELECT a FROM r{i}) SELECT a FROM r{i}"
        );
    }
    let start = std::time::Instant::now();
    let f = survives(sql);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
    if f.opaque.is_none() {
        assert_eq!(names(&only_output(&f).sources), ["ds.users.ssn"]);
    }
}

#[test]
fn postgres_cursors_are_reads_and_session_housekeeping_reads_nothing() {
    let f = pg("DECLARE c CURSOR WITH HOLD FOR SELECT email FROM app.users");
    assert_eq!(kinds(&f), [K::Select]);
    assert_eq!(f.statements[0].reads[0].name(), "app.users");
    assert!(f.opaque.is_none(), "{:?}", f.opaque);
    let f = pg("FETCH FORWARD 10 FROM c; CLOSE c; DEALLOCATE _pg3_1; DISCARD ALL; DEALLOCATE ALL");
    assert_eq!(kinds(&f), [K::Transaction; 5], "{f}");
    assert!(
        f.statements
            .iter()
            .all(|s| s.reads.is_empty() && s.writes.is_empty())
    );
}

#[test]
fn postgres_presentation_settings_are_housekeeping_and_other_sets_are_sets() {
    let f = pg("SHOW transaction isolation level; SHOW standard_conforming_strings");
    assert_eq!(kinds(&f), [K::Select; 2], "{f}");
    assert!(f.statements.iter().all(|s| s.reads.is_empty()) && f.opaque.is_none());
    let f = pg(
        "SET extra_float_digits = 3; SET application_name = 'PostgreSQL JDBC Driver'; SET TIME ZONE 'UTC'",
    );
    assert_eq!(kinds(&f), [K::Transaction; 3], "{f}");
    for sql in [
        "SET ROLE admin",
        "SET search_path = hr",
        "SET session_replication_role = replica",
        "SET client_encoding = 'LATIN1'",
        "SET SESSION AUTHORIZATION admin",
    ] {
        assert_eq!(kinds(&pg(sql)), [K::Set], "{sql}");
    }
}
