//! Snapshot tests of the masking rewrite: every read of a masked table becomes a read of
//! its masking derived table, wherever the read is; what cannot be rewritten safely is an
//! error.

use std::collections::HashMap;

use querygate_sql::{MaskedColumn, Masking, SqlDialect, mask_reads};

const EMAIL_MASK: &str = "'' AS `email`";

fn tables() -> HashMap<String, Vec<MaskedColumn>> {
    let mut t = HashMap::new();
    t.insert(
        "p.crm.customers".to_string(),
        vec![
            MaskedColumn {
                name: "id".into(),
                mask: None,
            },
            MaskedColumn {
                name: "email".into(),
                mask: Some("''".into()),
            },
        ],
    );
    t
}

fn rewrite_in(sql: &str, dataset: Option<&str>) -> Result<String, String> {
    let tables = tables();
    mask_reads(
        sql,
        &Masking {
            dialect: SqlDialect::BigQuery,
            project: "p",
            dataset,
            tables: &tables,
        },
    )
    .map_err(|e| e.to_string())
}

fn rewrite(sql: &str) -> String {
    rewrite_in(sql, None).unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn wrapped(name: &str, alias: &str) -> String {
    format!("(SELECT `id`, {EMAIL_MASK} FROM {name} AS __qg_src) AS {alias}")
}

#[test]
fn a_plain_read_becomes_a_read_of_the_masking_derived_table() {
    assert_eq!(
        rewrite("SELECT email FROM crm.customers"),
        format!(
            "SELECT email FROM {}",
            wrapped("crm.customers", "`customers`")
        )
    );
    assert_eq!(
        rewrite("SELECT c.email FROM `p.crm.customers` AS c"),
        format!("SELECT c.email FROM {}", wrapped("`p.crm.customers`", "c"))
    );
}

#[test]
fn every_read_is_wrapped_wherever_it_is() {
    let cases = [
        // expressions, aggregates, functions over the column
        "SELECT LOWER(email), MAX(email), ARRAY_AGG(email) FROM crm.customers",
        // whole rows and stars
        "SELECT TO_JSON_STRING(t), t FROM crm.customers t",
        "SELECT * EXCEPT (id) FROM crm.customers",
        "SELECT AS STRUCT * FROM crm.customers",
        // CTEs, subqueries, UNION branches, joins
        "WITH x AS (SELECT email AS e FROM crm.customers) SELECT e FROM x",
        "SELECT (SELECT MAX(email) FROM crm.customers) AS m",
        "SELECT id FROM crm.orders WHERE cid IN (SELECT id FROM crm.customers WHERE email LIKE 'a%')",
        "SELECT email FROM crm.customers UNION ALL SELECT name FROM crm.leads",
        "SELECT o.id FROM crm.orders o JOIN crm.customers c ON o.email = c.email",
        // writes of a read (policy refuses copies; the rewrite still masks the read)
        "CREATE TABLE x.y AS SELECT * FROM crm.customers",
        "INSERT INTO x.y SELECT email FROM crm.customers",
    ];
    for sql in cases {
        let out = rewrite(sql);
        assert!(out.contains("AS __qg_src"), "{sql}: not wrapped: {out}");
        let bare = out.replace("crm.customers AS __qg_src", "");
        assert!(
            !bare.contains("crm.customers"),
            "{sql}: a read of crm.customers is left: {out}"
        );
    }
}

#[test]
fn snapshots() {
    let cases = [
        (
            "SELECT TO_JSON_STRING(t) FROM crm.customers t",
            format!(
                "SELECT TO_JSON_STRING(t) FROM (SELECT `id`, {EMAIL_MASK} FROM crm.customers AS __qg_src) AS t"
            ),
        ),
        (
            "WITH x AS (SELECT email FROM crm.customers) SELECT * FROM x UNION ALL SELECT email FROM crm.customers AS c2",
            format!(
                "WITH x AS (SELECT email FROM {}) SELECT * FROM x UNION ALL SELECT email FROM {}",
                wrapped("crm.customers", "`customers`"),
                wrapped("crm.customers", "c2")
            ),
        ),
        (
            "SELECT e FROM crm.customers, UNNEST([email]) AS e",
            format!(
                "SELECT e FROM {}, UNNEST([email]) AS e",
                wrapped("crm.customers", "`customers`")
            ),
        ),
    ];
    for (sql, want) in cases {
        assert_eq!(rewrite(sql), want, "{sql}");
    }
}

#[test]
fn only_the_masked_reads_change_comments_lines_and_unicode_stay() {
    let sql = "-- reason: the weekly report\nSELECT 'ünïcödé ✓', /* keep */ email\n  FROM\n    crm.customers c -- trailing\nWHERE c.id = 1";
    assert_eq!(
        rewrite(sql),
        format!(
            "-- reason: the weekly report\nSELECT 'ünïcödé ✓', /* keep */ email\n  FROM\n    {} -- trailing\nWHERE c.id = 1",
            wrapped("crm.customers", "c")
        )
    );
    // Carriage returns end lines (and comments) as in BigQuery.
    let out = rewrite("SELECT email -- x\r\nFROM crm.customers");
    assert_eq!(
        out,
        format!(
            "SELECT email -- x\nFROM {}",
            wrapped("crm.customers", "`customers`")
        )
    );
}

#[test]
fn unmasked_tables_and_statements_without_masked_reads_are_left_as_written() {
    for sql in [
        "SELECT  name FROM crm.leads -- comment",
        "select 1",
        "SELECT * FROM other.customers",
    ] {
        assert_eq!(rewrite(sql), sql);
    }
}

#[test]
fn one_part_names_follow_the_default_dataset() {
    let out = rewrite_in("SELECT email FROM customers", Some("crm")).expect("rewrite");
    assert!(out.contains("__qg_src"), "{out}");
    assert_eq!(
        rewrite_in("SELECT email FROM customers", Some("other")).expect("rewrite"),
        "SELECT email FROM customers"
    );
    // A CTE is not a table.
    assert!(
        rewrite_in(
            "WITH c AS (SELECT 1 AS email) SELECT email FROM c",
            Some("crm")
        )
        .expect("rewrite")
        .starts_with("WITH c AS")
    );
}

#[test]
fn what_cannot_be_wrapped_safely_is_refused() {
    let refused = [
        ("SELECT * FROM `p.crm.cust*`", "wildcard"),
        ("SELECT 1 AS __qg_src", "reserves"),
        ("SELECT @__querygate_mask_key", "reserves"),
        ("SELECT 'x' FROM crm.customers AS __QG_SRC", "reserves"),
        ("UPDATE crm.customers SET id = 1 WHERE true", "UPDATE"),
        ("DELETE FROM crm.customers WHERE id = 1", "UPDATE"),
        (
            "WITH customers AS (SELECT 1) SELECT * FROM customers",
            "CTE",
        ),
        (
            "SELECT email FROM crm.customers FOR SYSTEM_TIME AS OF TIMESTAMP '2024-01-01'",
            "SYSTEM_TIME",
        ),
    ];
    for (sql, why) in refused {
        let err = rewrite_in(sql, Some("crm")).expect_err(sql);
        assert!(err.contains(why), "{sql}: {err}");
    }
}

#[test]
fn the_output_always_parses_again_and_keeps_scripts_whole() {
    let out = rewrite("SELECT email FROM crm.customers; SELECT 2");
    assert_eq!(out.matches(';').count(), 1, "{out}");
    let again = querygate_sql::analyze(&out, SqlDialect::BigQuery);
    assert!(again.opaque.is_none(), "{out}: {:?}", again.opaque);
    assert_eq!(again.statements.len(), 2);
}

/// Every statement of the analyzer's corpus, with every table it reads masked: the rewrite
/// never panics, and what it returns parses again, is understood, and reads no masked
/// table but through its masks.
#[test]
fn the_corpus_with_every_table_masked_rewrites_to_sql_that_is_understood() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/bigquery");
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .expect("corpus")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .collect();
    files.sort();
    let (mut rewritten, mut refused) = (0, 0);
    for path in files {
        let sql = std::fs::read_to_string(&path).expect("read");
        let facts = querygate_sql::analyze(&sql, SqlDialect::BigQuery);
        // Every table read is masked, with the columns the statement names (each masked)
        // and two more.
        let mut tables: HashMap<String, Vec<MaskedColumn>> = HashMap::new();
        for st in &facts.statements {
            for t in st
                .reads
                .iter()
                .filter(|t| !t.wildcard && !t.information_schema)
            {
                let mut names: Vec<String> = vec!["a".into(), "b".into()];
                let refs = st
                    .output
                    .iter()
                    .chain(&st.written)
                    .flat_map(|c| c.sources.iter())
                    .chain(&st.predicates)
                    .chain(&st.ordering);
                for c in refs.filter(|c| &c.table == t && !c.is_all()) {
                    if !names.iter().any(|n| n.eq_ignore_ascii_case(&c.column)) {
                        names.push(c.column.clone());
                    }
                }
                tables.insert(
                    t.qualified("p"),
                    names
                        .into_iter()
                        .map(|name| MaskedColumn {
                            mask: (name != "b").then(|| "''".into()),
                            name,
                        })
                        .collect(),
                );
            }
        }
        let m = Masking {
            dialect: SqlDialect::BigQuery,
            project: "p",
            dataset: None,
            tables: &tables,
        };
        match mask_reads(&sql, &m) {
            Ok(out) if out == sql => {}
            Ok(out) => {
                rewritten += 1;
                let again = querygate_sql::analyze(&out, SqlDialect::BigQuery);
                assert!(
                    again.opaque.is_none(),
                    "{}: {out}: {:?}",
                    path.display(),
                    again.opaque
                );
                assert!(out.contains("__qg_src"), "{}: {out}", path.display());
            }
            Err(why) => {
                refused += 1;
                assert!(
                    !why.to_string().contains("internal error"),
                    "{}: {why}",
                    path.display()
                );
            }
        }
    }
    eprintln!("corpus: {rewritten} rewritten, {refused} refused");
    assert!(rewritten > 40, "{rewritten} rewritten, {refused} refused");
}

/// The rewrite re-renders the statement from sqlparser's AST: literals and BigQuery syntax
/// must come out meaning what they meant.
#[test]
fn literals_and_bigquery_syntax_survive_the_rewrite() {
    let cases = [
        r"'it\'s'",
        r#""dq\n""#,
        r"r'\d+'",
        r"b'\x00\xff'",
        r"'''triple ' quoted'''",
        "DATE '2024-01-01'",
        "TIMESTAMP '2024-01-01 00:00:00+00'",
        "INTERVAL 1 DAY",
        "JSON '{\"a\": 1}'",
        "NUMERIC '1.25'",
        "1.5e3",
        "0x1F",
        "@param",
        "STRUCT<a INT64, b STRING>(1, 'x')",
        "[1, 2][SAFE_OFFSET(0)]",
        "SAFE_CAST('1' AS INT64)",
        "IF(TRUE, 'a', 'b')",
        "CASE WHEN id = 1 THEN 'a' ELSE 'b' END",
    ];
    let mut lost = Vec::new();
    for lit in cases {
        let sql = format!("SELECT {lit} AS x, email FROM crm.customers");
        let out = rewrite(&sql);
        let again = querygate_sql::analyze(&out, SqlDialect::BigQuery);
        assert!(again.opaque.is_none(), "{sql} -> {out}");
        if !out.starts_with(&format!("SELECT {lit} AS x, email FROM (")) {
            lost.push(out);
        }
    }
    assert!(lost.is_empty(), "{lost:#?}");
}

/// Upstreams resolve table names without regard to case, so a miscased name is a read of
/// the masked table and is wrapped (and a map keyed in another case still matches).
#[test]
fn names_that_differ_only_in_case_are_the_masked_table() {
    for (sql, name) in [
        ("SELECT email FROM crm.CUSTOMERS", "crm.CUSTOMERS"),
        ("SELECT email FROM Crm.Customers", "Crm.Customers"),
        ("SELECT email FROM `P.CRM.customers`", "`P.CRM.customers`"),
    ] {
        let out = rewrite(sql);
        assert!(
            out.contains(&format!("FROM {name} AS __qg_src")),
            "{sql}: not wrapped: {out}"
        );
    }
    let out = rewrite_in("SELECT email FROM CUSTOMERS", Some("crm")).expect("rewrite");
    assert!(out.contains("FROM CUSTOMERS AS __qg_src"), "{out}");
    // The map's key in another case than the statement's name.
    let mut tables = HashMap::new();
    tables.insert("P.Shop.Straße".to_string(), tables_list());
    let out = mask_reads(
        "SELECT email FROM shop.STRASSE",
        &Masking {
            dialect: SqlDialect::BigQuery,
            project: "p",
            dataset: None,
            tables: &tables,
        },
    )
    .expect("rewrite");
    assert!(out.contains("FROM shop.STRASSE AS __qg_src"), "{out}");
    // Wildcards and CTEs compare without case too.
    for (sql, why) in [
        ("SELECT * FROM `p.CRM.CUST*`", "wildcard"),
        (
            "WITH CUSTOMERS AS (SELECT 1 AS x) SELECT * FROM CUSTOMERS",
            "CTE",
        ),
    ] {
        let err = rewrite_in(sql, Some("crm")).expect_err(sql);
        assert!(err.contains(why), "{sql}: {err}");
    }
}

fn tables_list() -> Vec<MaskedColumn> {
    tables().remove("p.crm.customers").expect("list")
}

/// `TABLE t` reads a table without a FROM item: the first pass cannot wrap it, so it is
/// refused (it used to go upstream unchanged).
#[test]
fn table_statements_of_masked_tables_are_refused() {
    for sql in [
        "SELECT * FROM (TABLE crm.customers)",
        "SELECT * FROM (TABLE crm.CUSTOMERS) AS c",
        "SELECT id FROM crm.orders WHERE cid IN (TABLE crm.customers)",
        "SELECT 1 UNION ALL (TABLE crm.customers)",
        "SELECT * FROM (SELECT * FROM (TABLE crm.customers))",
    ] {
        let err = rewrite_in(sql, Some("crm")).expect_err(sql);
        assert!(err.contains("TABLE"), "{sql}: {err}");
    }
    let err = rewrite_in("SELECT * FROM (TABLE customers)", Some("crm")).expect_err("one part");
    assert!(err.contains("TABLE"), "{err}");
    // `TABLE` of another table is left alone.
    assert_eq!(
        rewrite("SELECT * FROM (TABLE crm.orders)"),
        "SELECT * FROM (TABLE crm.orders)"
    );
}

/// Reads in every position are wrapped (subqueries, IN, EXISTS, joins in subqueries), and
/// copies that are not reads (CLONE, LIKE) of a masked table are refused.
#[test]
fn reads_in_every_position_are_wrapped_and_copies_refused() {
    for sql in [
        "SELECT 1 FROM crm.orders o WHERE EXISTS (SELECT 1 FROM crm.CUSTOMERS c WHERE c.id = o.cid)",
        "SELECT id FROM crm.orders WHERE cid IN (SELECT id FROM Crm.Customers WHERE email = 'x')",
        "SELECT (SELECT COUNT(*) FROM (SELECT * FROM crm.customers JOIN crm.orders USING (id)))",
        "SELECT e FROM crm.customers c, UNNEST(SPLIT(c.email)) AS e",
    ] {
        let out = rewrite(sql);
        assert!(out.contains("AS __qg_src"), "{sql}: {out}");
    }
    for sql in [
        "CREATE TABLE x.y CLONE crm.customers",
        "CREATE TABLE x.y LIKE crm.customers",
        "CREATE TABLE x.y CLONE crm.CUSTOMERS",
    ] {
        let err = rewrite_in(sql, Some("crm")).expect_err(sql);
        assert!(err.contains("could not prove"), "{sql}: {err}");
    }
}

const HASH: &str = "TO_HEX(SHA256(CONCAT(@__querygate_mask_key, CAST(`email` AS STRING))))";

fn hashed(sql: &str, mask: &str) -> Result<String, String> {
    let mut t = HashMap::new();
    t.insert(
        "p.crm.customers".to_string(),
        vec![
            MaskedColumn {
                name: "id".into(),
                mask: None,
            },
            MaskedColumn {
                name: "email".into(),
                mask: Some(mask.into()),
            },
        ],
    );
    mask_reads(
        sql,
        &Masking {
            dialect: SqlDialect::BigQuery,
            project: "p",
            dataset: None,
            tables: &t,
        },
    )
    .map_err(|e| e.to_string())
}

/// With a mask that uses the hash key's query parameter, nothing in the statement may bind
/// or name that parameter: no positional markers, no escaped parameter names, no name equal
/// to the key in any case.
#[test]
fn the_hash_key_cannot_be_reached_through_parameters() {
    let refused = [
        ("SELECT ?, email FROM crm.customers", "positional"),
        (
            "SELECT email FROM crm.customers WHERE id = ?",
            "named parameters (@name)",
        ),
        (
            "SELECT email FROM crm.customers WHERE id = $1",
            "positional",
        ),
        (
            r"SELECT @`\x5f_querygate_mask_key`, email FROM crm.customers",
            "back-slash",
        ),
        (
            r"SELECT @`\u005f_querygate_mask_key`, email FROM crm.customers",
            "back-slash",
        ),
        (
            r"SELECT @`\_\_querygate_mask_key`, email FROM crm.customers",
            "back-slash",
        ),
        (
            "SELECT @`__QUERYGATE_MASK_KEY`, email FROM crm.customers",
            "reserves",
        ),
        (
            "SELECT @__Querygate_Mask_Key, email FROM crm.customers",
            "reserves",
        ),
    ];
    for (sql, why) in refused {
        let err = hashed(sql, HASH).expect_err(sql);
        assert!(err.contains(why), "{sql}: {err}");
    }
    // Named parameters, plain or back-ticked, are fine.
    for sql in [
        "SELECT email FROM crm.customers WHERE id = @id",
        "SELECT email FROM crm.customers WHERE id = @`id`",
        "SELECT email FROM crm.customers WHERE id IN UNNEST(@`ids`) AND '?' != '@'",
    ] {
        let out = hashed(sql, HASH).unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(out.contains("AS __qg_src"), "{out}");
    }
    // Masks without a parameter (an `@` in a string is not one) leave `?` alone.
    let domain = "IF(`email` IS NULL, NULL, CONCAT('***@', 'x'))";
    let out = hashed("SELECT email FROM crm.customers WHERE id = ?", domain).expect("rewrite");
    assert!(
        out.contains("AS __qg_src") && out.ends_with("WHERE id = ?"),
        "{out}"
    );
}

/// The Python DB-API layer writes parameters as @`name`: the rewrite keeps them as written.
#[test]
fn backticked_parameters_survive_the_rewrite() {
    let sql = "SELECT email FROM crm.customers AS c WHERE c.id = @`id` AND c.email != @`e mail`";
    assert_eq!(
        rewrite(sql),
        format!(
            "SELECT email FROM {} WHERE c.id = @`id` AND c.email != @`e mail`",
            wrapped("crm.customers", "c")
        )
    );
}

fn rewrite_pg(sql: &str) -> Result<String, String> {
    let tables = tables();
    mask_reads(
        sql,
        &Masking {
            dialect: SqlDialect::Postgres,
            project: "p",
            dataset: Some("crm"),
            tables: &tables,
        },
    )
    .map_err(|e| e.to_string())
}

/// PostgreSQL `COPY t TO` copies a table as stored: refused when it has masked columns;
/// `COPY (SELECT …) TO` is a query, whose reads are wrapped.
#[test]
fn copies_of_masked_tables_are_refused_and_copies_of_queries_wrapped() {
    for sql in [
        "COPY customers TO STDOUT",
        "COPY crm.customers (email) TO STDOUT WITH (FORMAT csv)",
        "COPY CRM.Customers TO STDOUT",
    ] {
        let err = rewrite_pg(sql).expect_err(sql);
        assert!(err.contains("COPY (SELECT"), "{sql}: {err}");
    }
    let out = rewrite_pg("COPY (SELECT email FROM customers) TO STDOUT").expect("query copy");
    assert!(out.contains("AS __qg_src"), "{out}");
    assert_eq!(
        rewrite_pg("COPY orders TO STDOUT").expect("other table"),
        "COPY orders TO STDOUT"
    );
}
