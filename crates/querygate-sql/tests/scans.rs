//! Partition-filter facts: one scan per read of a base table, with the columns that a
//! predicate of its own query block bounds. A table is filtered on a column only when every
//! scan of it bounds that column, so `IS NOT NULL`, a filter on one branch of a `UNION ALL`
//! or on one side of a self-join, and a predicate under NOT or OR do not count.

use querygate_sql::{Facts, SqlDialect, analyze};

fn bq(sql: &str) -> Facts {
    let f = analyze(sql, SqlDialect::BigQuery);
    assert!(f.opaque.is_none(), "{sql}: {f}");
    f
}

/// What every scan of `p.ds.t` bounds, over the whole text.
fn filtered(sql: &str) -> Vec<String> {
    bq(sql).filtered("p.ds.t", "p")
}

#[test]
fn comparisons_with_constants_bound() {
    for sql in [
        "SELECT * FROM ds.t WHERE d = '2024-01-01'",
        "SELECT * FROM ds.t WHERE d >= '2024-01-01' AND d < '2024-02-01'",
        "SELECT * FROM ds.t WHERE '2024-01-01' <= d",
        "SELECT * FROM ds.t WHERE d BETWEEN '2024-01-01' AND '2024-01-31'",
        "SELECT * FROM ds.t WHERE d IN ('2024-01-01', '2024-01-02')",
        "SELECT * FROM ds.t WHERE d > @start",
        "SELECT * FROM ds.t WHERE d > ?",
        "SELECT * FROM ds.t WHERE d >= DATE_SUB(CURRENT_DATE(), INTERVAL 7 DAY)",
        "SELECT * FROM ds.t WHERE d >= CURRENT_DATE",
        "SELECT * FROM ds.t WHERE d = DATE '2024-01-01'",
        "SELECT * FROM ds.t WHERE d = CAST('2024-01-01' AS DATE)",
        "SELECT * FROM ds.t WHERE (d = '2024-01-01') AND x IS NOT NULL",
        "SELECT * FROM ds.t WHERE d = '2024-01-01' OR d = '2024-01-03'",
        "SELECT * FROM ds.t WHERE (d = '1' AND x = 1) OR (d = '2' AND y = 2)",
        "SELECT * FROM ds.t AS x WHERE x.d = '2024-01-01'",
        "SELECT * FROM ds.t WHERE t.d = '2024-01-01'",
        "SELECT * FROM ds.t WHERE ds.t.d = '2024-01-01'",
        "SELECT * FROM ds.t WHERE SAFE_CAST(d AS DATE) = '2024-01-01'",
        "SELECT * FROM ds.t WHERE TIMESTAMP_TRUNC(d, DAY) = TIMESTAMP '2024-01-01'",
        "SELECT * FROM ds.t WHERE DATE(d, 'UTC') = '2024-01-01'",
        "SELECT * FROM ds.t WHERE d = '2024-01-01' GROUP BY 1 HAVING COUNT(*) > 1",
    ] {
        assert_eq!(filtered(sql), ["d"], "{sql}");
    }
    assert_eq!(
        filtered("SELECT * FROM ds.t WHERE DATE(ts) = '2024-01-01'"),
        ["ts"]
    );
    assert_eq!(
        filtered(
            "SELECT * FROM ds.t WHERE ts >= TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 DAY)"
        ),
        ["ts"]
    );
    assert_eq!(
        filtered("SELECT * FROM ds.t WHERE _PARTITIONTIME >= TIMESTAMP('2024-01-01')"),
        ["_PARTITIONTIME"]
    );
}

#[test]
fn what_does_not_bound() {
    for sql in [
        "SELECT * FROM ds.t",
        "SELECT * FROM ds.t WHERE d IS NOT NULL",
        "SELECT * FROM ds.t WHERE d IS NULL",
        "SELECT * FROM ds.t WHERE d != '2024-01-01'",
        "SELECT * FROM ds.t WHERE d <> '2024-01-01'",
        "SELECT * FROM ds.t WHERE d LIKE '2024%'",
        "SELECT * FROM ds.t WHERE NOT d < '2024-01-01'",
        "SELECT * FROM ds.t WHERE NOT (d = '2024-01-01')",
        "SELECT * FROM ds.t WHERE d NOT BETWEEN '2024-01-01' AND '2024-02-01'",
        "SELECT * FROM ds.t WHERE d NOT IN ('2024-01-01')",
        "SELECT * FROM ds.t WHERE d = e",
        "SELECT * FROM ds.t WHERE d = '2024-01-01' OR x = 1",
        "SELECT * FROM ds.t WHERE d = '2024-01-01' OR d IS NULL",
        "SELECT * FROM ds.t WHERE d >= e + 1",
        "SELECT * FROM ds.t WHERE d = (SELECT MAX(d) FROM ds.u)",
        "SELECT * FROM ds.t WHERE d IN (SELECT d FROM ds.u)",
        "SELECT * FROM ds.t WHERE d = LOWER(x)",
        "SELECT * FROM ds.t WHERE GREATEST(d, '2024-01-01') = '2024-01-01'",
        "SELECT * FROM ds.t WHERE d + 1 = 5",
        "SELECT * FROM ds.t WHERE IF(d > '2024-01-01', TRUE, FALSE)",
        "SELECT * FROM ds.t WHERE d = '2024-01-01' IS TRUE",
        "SELECT * FROM ds.t GROUP BY d HAVING d = '2024-01-01'",
        "SELECT * FROM ds.t QUALIFY d = '2024-01-01'",
    ] {
        assert!(filtered(sql).is_empty(), "{sql}: {}", bq(sql));
    }
}

/// Every read counts: a filter on one read does not hide another read of the same table.
#[test]
fn every_read_of_a_table_must_be_bounded() {
    for sql in [
        // self-join, one side filtered
        "SELECT * FROM ds.t a JOIN ds.t b ON a.id = b.id WHERE a.d = '2024-01-01'",
        // UNION ALL, one branch filtered
        "SELECT x FROM ds.t WHERE d = '2024-01-01' UNION ALL SELECT x FROM ds.t",
        // a subquery read, unfiltered
        "SELECT * FROM ds.t WHERE d = '2024-01-01' AND x IN (SELECT x FROM ds.t)",
        // a CTE read filtered outside: the filter is not the scan's
        "WITH c AS (SELECT * FROM ds.t) SELECT * FROM c WHERE d = '2024-01-01'",
        // a derived table filtered outside
        "SELECT * FROM (SELECT * FROM ds.t) WHERE d = '2024-01-01'",
        // two statements, one unfiltered
        "SELECT * FROM ds.t WHERE d = '2024-01-01'; SELECT * FROM ds.t",
        // different columns in different reads: none is common
        "SELECT * FROM ds.t a JOIN ds.t b ON a.id = b.id WHERE a.d = '1' AND b.e = '2'",
        // a correlated reference to an outer read does not bound it
        "SELECT * FROM ds.t WHERE EXISTS (SELECT 1 FROM ds.u WHERE t.d = '2024-01-01')",
    ] {
        assert!(filtered(sql).is_empty(), "{sql}: {}", bq(sql));
    }
    let sql = "SELECT * FROM ds.t a JOIN ds.t b ON a.id = b.id \
               WHERE a.d = '2024-01-01' AND b.d BETWEEN '2024-01-01' AND '2024-01-02'";
    assert_eq!(filtered(sql), ["d"]);
    let sql = "SELECT x FROM ds.t WHERE d = '1' UNION ALL SELECT x FROM ds.t WHERE d = '2'";
    assert_eq!(filtered(sql), ["d"]);
    let f = bq("SELECT x FROM ds.t WHERE d = '1' UNION ALL SELECT x FROM ds.t");
    assert_eq!(f.statements[0].scans.len(), 2, "{f}");
    // Inside a subquery, the subquery's own WHERE bounds its read.
    let f = bq("SELECT * FROM ds.u WHERE x IN (SELECT x FROM ds.t WHERE d = '2024-01-01')");
    assert_eq!(f.filtered("p.ds.t", "p"), ["d"]);
    assert!(f.filtered("p.ds.u", "p").is_empty());
}

/// A JOIN's ON filters the sides whose rows it drops: both of an inner join, the right of
/// a LEFT JOIN, the left of a RIGHT JOIN, neither of a FULL JOIN.
#[test]
fn join_conditions_bound_the_sides_they_filter() {
    let on = |sql: &str, table: &str| bq(sql).filtered(table, "p");
    let inner = "SELECT * FROM ds.t JOIN ds.u ON t.id = u.id AND t.d = '1' AND u.e = '2'";
    assert_eq!(on(inner, "p.ds.t"), ["d"]);
    assert_eq!(on(inner, "p.ds.u"), ["e"]);
    let left = "SELECT * FROM ds.t LEFT JOIN ds.u ON t.id = u.id AND t.d = '1' AND u.e = '2'";
    assert!(on(left, "p.ds.t").is_empty());
    assert_eq!(on(left, "p.ds.u"), ["e"]);
    let right = "SELECT * FROM ds.t RIGHT JOIN ds.u ON t.id = u.id AND t.d = '1' AND u.e = '2'";
    assert_eq!(on(right, "p.ds.t"), ["d"]);
    assert!(on(right, "p.ds.u").is_empty());
    let full = "SELECT * FROM ds.t FULL JOIN ds.u ON t.id = u.id AND t.d = '1' AND u.e = '2'";
    assert!(on(full, "p.ds.t").is_empty() && on(full, "p.ds.u").is_empty());
    // WHERE filters every read of its block, outer joins included.
    let wh = "SELECT * FROM ds.t LEFT JOIN ds.u ON t.id = u.id WHERE t.d = '1' AND u.e = '2'";
    assert_eq!(on(wh, "p.ds.t"), ["d"]);
    assert_eq!(on(wh, "p.ds.u"), ["e"]);
    // An unqualified name two reads could have is both's (the engine refuses an ambiguous
    // name, so the table that has the column owns it) …
    let both = "SELECT * FROM ds.t JOIN ds.u ON t.id = u.id WHERE d = '1'";
    assert_eq!(on(both, "p.ds.t"), ["d"]);
    assert_eq!(on(both, "p.ds.u"), ["d"]);
    // … but not a pseudo-column, nor a JOIN USING column, nor a name that is an alias.
    let pseudo = "SELECT * FROM ds.t JOIN ds.u ON t.id = u.id WHERE _PARTITIONTIME > '1'";
    assert!(on(pseudo, "p.ds.t").is_empty());
    let pseudo = "SELECT * FROM ds.t JOIN ds.u ON t.id = u.id WHERE t._PARTITIONTIME > '1'";
    assert_eq!(on(pseudo, "p.ds.t"), ["_PARTITIONTIME"]);
    let using = "SELECT * FROM ds.t JOIN ds.u USING (d) WHERE d = '1'";
    assert!(on(using, "p.ds.t").is_empty());
    let alias = "SELECT * FROM ds.t AS d WHERE d = '1'";
    assert!(on(alias, "p.ds.t").is_empty());
    // A NATURAL join merges same-named columns (PostgreSQL): unqualified names are not pinned.
    let natural = analyze(
        "SELECT * FROM ds.t NATURAL LEFT JOIN ds.u WHERE d = '1'",
        SqlDialect::Postgres,
    );
    assert!(natural.filtered("p.ds.t", "p").is_empty(), "{natural}");
    let qualified = analyze(
        "SELECT * FROM ds.t NATURAL JOIN ds.u WHERE t.d = '1'",
        SqlDialect::Postgres,
    );
    assert_eq!(qualified.filtered("p.ds.t", "p"), ["d"], "{qualified}");
}

#[test]
fn dml_targets_are_scans_bounded_by_their_where() {
    let f = bq("UPDATE ds.t SET x = 1 WHERE d = '2024-01-01'");
    assert_eq!(f.filtered("p.ds.t", "p"), ["d"]);
    let f = bq("DELETE FROM ds.t WHERE d < '2024-01-01'");
    assert_eq!(f.filtered("p.ds.t", "p"), ["d"]);
    let f = bq("DELETE FROM ds.t WHERE d IS NOT NULL");
    assert!(f.filtered("p.ds.t", "p").is_empty());
    let f = bq("MERGE ds.t USING ds.u ON t.id = u.id AND t.d = '1' WHEN MATCHED THEN DELETE");
    assert!(f.filtered("p.ds.t", "p").is_empty(), "{f}");
}

/// Scans name their tables as reads do (the default dataset applied), and tables compare
/// without case: a miscased read is another read of the same table.
#[test]
fn scans_follow_reads_and_names_compare_without_case() {
    let mut f = bq("SELECT * FROM t WHERE d = '1' UNION ALL SELECT * FROM ds.T");
    let reads: Vec<_> = f.statements[0].reads.clone();
    let scanned: std::collections::BTreeSet<_> = f.statements[0]
        .scans
        .iter()
        .map(|s| s.table.clone())
        .collect();
    assert_eq!(reads, scanned.into_iter().collect::<Vec<_>>());
    f.with_default_dataset("ds");
    assert!(
        f.statements[0]
            .scans
            .iter()
            .all(|s| s.table.parts.len() == 2)
    );
    assert!(f.filtered("p.ds.t", "p").is_empty(), "{f}");
    let g = bq("SELECT * FROM ds.T WHERE D = '1' UNION ALL SELECT * FROM DS.t WHERE d = '2'");
    let both = g.filtered("P.DS.T", "p");
    assert!(
        both.len() == 1 && both[0].eq_ignore_ascii_case("d"),
        "{both:?}"
    );
    assert!(g.statements[0].scans.iter().all(|s| s.bounds("d")));
    // `TABLE t`, a CLONE source and `COPY t TO` are scans, never bounded.
    let h = bq("SELECT * FROM (TABLE ds.t)");
    assert_eq!(h.statements[0].scans.len(), 1);
    assert!(h.filtered("p.ds.t", "p").is_empty());
}

/// Conditions are walked without recursion on AND/OR chains and depth-limited elsewhere.
#[test]
fn long_conditions_stay_cheap() {
    let ors = (0..3000)
        .map(|i| format!("d = '{i}'"))
        .collect::<Vec<_>>()
        .join(" OR ");
    assert_eq!(filtered(&format!("SELECT * FROM ds.t WHERE {ors}")), ["d"]);
    let ands = (0..3000)
        .map(|i| format!("x{i} = 1"))
        .collect::<Vec<_>>()
        .join(" AND ");
    let f = bq(&format!("SELECT * FROM ds.t WHERE {ands} AND d = '1'"));
    assert!(f.statements[0].scans[0].bounds("d"));
    let sum = (0..3000)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" + ");
    assert_eq!(
        filtered(&format!("SELECT * FROM ds.t WHERE d > {sum}")),
        Vec::<String>::new(),
        "a constant deeper than the depth limit is not trusted"
    );
}
