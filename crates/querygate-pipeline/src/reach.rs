//! Which classified columns a request reaches, and whether that is allowed for the
//! identity asking: the fail-closed half of masking.
//!
//! From the analyzer's facts (output and written columns with their base-column sources,
//! `*` and whole-row references, predicate and ordering columns) and the classifier, a
//! statement *returns* a tagged column when any output (or written) column is computed
//! from it, from `t.*` of its table, or from a whole row of its table; it *filters* on one
//! when a predicate, grouping or ordering uses it. The tags reached feed the policy's
//! `touches`.
//!
//! Reads of tables with columns masked for the identity are listed for the masking rewrite
//! (`masked_tables`), which wraps every such read so that nothing above it sees a clear
//! value. What the rewrite cannot make safe is refused here: statements the analyzer cannot
//! understand while a masked column is in reach, wildcard tables that could match a masked
//! table, copies of masked columns into tables that do not carry the same tag, filtering,
//! grouping or ordering by a masked column unless the tag's `predicates = "allow"`, and
//! `INFORMATION_SCHEMA.JOBS*` (other people's SQL). The analyzer over-approximates, so this
//! never lets a masked value through.

use querygate_core::Identity;
use querygate_policy::Classifier;
use querygate_sql::{ColumnRef, Facts, OutputColumn};

#[derive(Debug, Default)]
pub struct Reach {
    /// Every tag the statement reaches (returned or filtered on), sorted.
    pub tags: Vec<String>,
    /// Why the statement may not run for this identity, if it may not.
    pub refusal: Option<String>,
    /// Set when it reaches columns masked for the identity: its errors must be withheld.
    /// Says which.
    pub sensitive: Option<String>,
    /// Tables it reads that have columns masked for the identity (qualified, sorted): the
    /// reads the masking rewrite must wrap.
    pub masked_tables: Vec<String>,
}

/// A column reached: `table.column` and its tag.
fn reached<'a>(classifier: &'a Classifier, project: &str, c: &ColumnRef) -> Vec<(String, &'a str)> {
    let table = c.table.qualified(project);
    if c.column == "*" {
        return classifier
            .tagged_columns(&table)
            .into_iter()
            .map(|(col, tag)| (format!("{table}.{col}"), tag))
            .collect();
    }
    classifier
        .tags_of(&table, &c.column)
        .into_iter()
        .map(|tag| (format!("{table}.{}", c.column), tag))
        .collect()
}

fn returned<'a>(
    classifier: &'a Classifier,
    project: &str,
    col: &OutputColumn,
) -> Vec<(String, &'a str)> {
    let mut out = Vec::new();
    for s in &col.sources {
        let mut whole = s.clone();
        if col.whole_row || col.name == "*" {
            whole.column = "*".into();
        }
        for (name, tag) in reached(classifier, project, &whole) {
            // `* EXCEPT (email)` leaves email out.
            let column = name.rsplit('.').next().unwrap_or("");
            if col.name == "*"
                && !col.whole_row
                && col.except.iter().any(|e| e.eq_ignore_ascii_case(column))
            {
                continue;
            }
            out.push((name, tag));
        }
    }
    out
}

/// Reach of a statement's facts for `identity`.
pub fn of_facts(
    classifier: &Classifier,
    facts: &Facts,
    project: &str,
    identity: &Identity,
) -> Reach {
    let mut reach = Reach::default();
    if classifier.is_empty() {
        return reach;
    }
    let mut refusal = None;
    // What the analyzer could not understand cannot be proved to stay clear of masked
    // columns: refused whenever some tag is masked for this identity (for a statement,
    // when it reads a table that has such a column).
    let masks_apply = classifier
        .classes
        .iter()
        .any(|c| classifier.masked_for(&c.tag, identity).is_some());
    if facts.opaque.is_some() && masks_apply {
        refusal = Some(format!(
            "Access Denied: querygate cannot analyze this statement, so it cannot prove that it \
             returns no column masked for {}; rewrite it in plain SQL",
            identity.subject
        ));
    }
    for st in &facts.statements {
        if refusal.is_none() && st.opaque.is_some() {
            let masked_table = st.reads.iter().find(|t| {
                classifier
                    .tagged_columns(&t.qualified(project))
                    .iter()
                    .any(|(_, tag)| classifier.masked_for(tag, identity).is_some())
            });
            if let Some(t) = masked_table {
                refusal = Some(format!(
                    "Access Denied: querygate cannot fully analyze this statement and it reads \
                     {}, which has columns masked for {}; rewrite it so that it can be analyzed",
                    t.qualified(project),
                    identity.subject
                ));
            }
        }
        for t in &st.reads {
            let name = t.qualified(project);
            if t.information_schema
                && masks_apply
                && t.parts
                    .last()
                    .is_some_and(|p| p.to_ascii_uppercase().starts_with("JOBS"))
            {
                refusal.get_or_insert_with(|| {
                    format!(
                        "Access Denied: {name} shows the SQL of other people's queries (and the \
                         values in it), which is not shown to identities with masked columns; \
                         use jobs.list for your own jobs"
                    )
                });
            } else if t.wildcard {
                let prefix = name.trim_end_matches('*');
                if let Some((table, tag)) = classifier.masked_under(prefix, identity) {
                    refusal.get_or_insert_with(|| {
                        format!(
                            "Access Denied: the wildcard table {name} could read {table}, whose \
                             columns classified {tag} are masked for {}; querygate masks reads \
                             of named tables only, so name the tables",
                            identity.subject
                        )
                    });
                }
            } else if classifier
                .tagged_columns(&name)
                .iter()
                .any(|(_, tag)| classifier.masked_for(tag, identity).is_some())
            {
                reach.masked_tables.push(name);
            }
        }
        for col in &st.output {
            for (name, tag) in returned(classifier, project, col) {
                reach.tags.push(tag.to_string());
                if reach.sensitive.is_none() && classifier.masked_for(tag, identity).is_some() {
                    reach.sensitive = Some(format!("the query reads {name}, masked for you"));
                }
            }
        }
        // A copy of a masked column (CTAS, INSERT … SELECT, EXPORT DATA, MERGE) may go only
        // to a column that carries the same tag, so that it stays masked where it lands.
        for col in &st.written {
            for (name, tag) in returned(classifier, project, col) {
                reach.tags.push(tag.to_string());
                let same_class = st.writes.iter().any(|w| {
                    classifier
                        .tags_of(&w.qualified(project), &col.name)
                        .contains(&tag)
                });
                if refusal.is_none()
                    && classifier.masked_for(tag, identity).is_some()
                    && !same_class
                {
                    refusal = Some(format!(
                        "Access Denied: column {name} is classified {tag} and masked for {}; \
                         copying it into a table whose column {} is not classified {tag} \
                         would take it out of masking: leave it out, or write it to a column \
                         classified {tag}",
                        identity.subject, col.name
                    ));
                }
            }
        }
        for c in st.predicates.iter().chain(&st.ordering) {
            for (name, tag) in reached(classifier, project, c) {
                reach.tags.push(tag.to_string());
                if classifier.masked_for(tag, identity).is_some() && reach.sensitive.is_none() {
                    reach.sensitive = Some(format!("the query filters on {name}, masked for you"));
                }
                if refusal.is_none()
                    && let Some(mask) = classifier.masked_for(tag, identity)
                    && !mask.predicates_allowed
                {
                    refusal = Some(format!(
                        "Access Denied: column {name} is classified {tag} and masked for {}; \
                         a masked column may not be used in WHERE, JOIN, GROUP BY, ORDER BY or \
                         window clauses (tag {tag} has predicates = \"deny\"); filter on another \
                         column",
                        identity.subject
                    ));
                }
            }
        }
    }
    reach.tags.sort();
    reach.tags.dedup();
    // One schema lookup and one select list per table, whatever the spellings.
    reach
        .masked_tables
        .sort_by_key(|t| querygate_sql::name_key(t));
    reach
        .masked_tables
        .dedup_by(|a, b| querygate_sql::same_name(a, b));
    reach.refusal = refusal;
    reach
}

/// Reach of a direct read of a base table's rows (tabledata.list): every tagged column.
/// Its masked columns are masked in the rows that come back (no SQL runs to rewrite).
pub fn of_table(classifier: &Classifier, table: &str, identity: &Identity) -> Reach {
    let mut reach = Reach::default();
    for (column, tag) in classifier.tagged_columns(table) {
        reach.tags.push(tag.to_string());
        if reach.sensitive.is_none() && classifier.masked_for(tag, identity).is_some() {
            reach.sensitive = Some(format!("the read returns {table}.{column}, masked for you"));
            reach.masked_tables.push(table.to_string());
        }
    }
    reach.tags.sort();
    reach.tags.dedup();
    reach
}
