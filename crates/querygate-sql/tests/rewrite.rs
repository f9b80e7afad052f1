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
        format!(
            "SELECT c.email FROM {}",
            wrapped("`p`.`crm`.`customers`", "c")
        )
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
                "SELECT TO_JSON_STRING(t) FROM (SELECT `id`, {EMAIL_MASK} FROM crm.customers AS __qg_src) t"
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
