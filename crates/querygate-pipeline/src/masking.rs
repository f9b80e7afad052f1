//! The masking plan: for each table a statement reads that has columns masked for the
//! identity, the select list the rewrite puts in place of the read — every column of the
//! table (from its schema), with the tag's strategy applied to the masked ones.
//!
//! Pure: the pipeline fetches the schemas (through the source, with the gateway's own
//! credential) and hands them in. A masked ARRAY of scalars is masked element by element;
//! a masked STRUCT (or ARRAY of STRUCTs) is left out of the masked read: a query that
//! names it fails upstream with BigQuery's own "Unrecognized name", and `*` returns the
//! other columns.

use querygate_core::Identity;
use querygate_mask::{Strategy, StrategyError, mask_expression, mask_expression_pg};
use querygate_policy::Classifier;
use querygate_sql::{MaskedColumn, SqlDialect, quote_column};

use crate::source::{Column, ColumnMask};

/// How each column of `table` is masked for `identity`, in the schema's order (`None`: not
/// masked). A masked STRUCT is NULL in rows read directly, and left out of a masked read.
pub fn column_masks(
    classifier: &Classifier,
    table: &str,
    columns: &[Column],
    identity: &Identity,
) -> Result<Vec<ColumnMask>, StrategyError> {
    columns
        .iter()
        .map(|c| {
            let rule = classifier
                .tags_of(table, &c.name)
                .into_iter()
                .find_map(|tag| classifier.masked_for(tag, identity));
            let strategy = match rule {
                None => None,
                Some(_) if is_struct(c) => Some(Strategy::Null),
                Some(rule) => Some(Strategy::parse(&rule.strategy)?),
            };
            Ok(ColumnMask {
                column: c.clone(),
                strategy,
            })
        })
        .collect()
}

/// The name of an array's element while it is masked.
const ELEMENT: &str = "__qg_e";

/// The select list replacing a read of `table` (`project.dataset.table`) for `identity`,
/// with masks written in `dialect`, naming the hash key as `key_param` (PostgreSQL; a
/// BigQuery statement's key is always `@__querygate_mask_key`).
pub fn select_list(
    classifier: &Classifier,
    table: &str,
    columns: &[Column],
    identity: &Identity,
    dialect: SqlDialect,
    key_param: &str,
) -> Result<Vec<MaskedColumn>, StrategyError> {
    Ok(column_masks(classifier, table, columns, identity)?
        .into_iter()
        .filter_map(
            |ColumnMask {
                 column: c,
                 strategy,
             }| {
                let Some(strategy) = strategy else {
                    return Some(MaskedColumn {
                        name: c.name,
                        mask: None,
                    });
                };
                if is_struct(&c) {
                    return None;
                }
                let quoted = quote_column(dialect, &c.name);
                let mask = match (dialect, c.repeated) {
                    (SqlDialect::BigQuery, true) => {
                        let element = mask_expression(strategy, ELEMENT, &c.data_type);
                        format!("ARRAY(SELECT {element} FROM UNNEST({quoted}) AS {ELEMENT})")
                    }
                    (SqlDialect::BigQuery, false) => {
                        mask_expression(strategy, &quoted, &c.data_type)
                    }
                    // Element by element, in the array's order; the result keeps the
                    // array's type.
                    (SqlDialect::Postgres, true) => {
                        let element =
                            mask_expression_pg(strategy, ELEMENT, &c.data_type, key_param);
                        format!(
                            "(CASE WHEN {quoted} IS NULL THEN NULL ELSE ARRAY(SELECT {element} \
                             FROM pg_catalog.unnest({quoted}) WITH ORDINALITY AS \
                             __qg_u({ELEMENT}, __qg_n) ORDER BY __qg_n) END)"
                        )
                    }
                    (SqlDialect::Postgres, false) => {
                        mask_expression_pg(strategy, &quoted, &c.data_type, key_param)
                    }
                };
                Some(MaskedColumn {
                    name: c.name,
                    mask: Some(mask),
                })
            },
        )
        .collect())
}

fn is_struct(c: &Column) -> bool {
    matches!(c.data_type.as_str(), "RECORD" | "STRUCT")
}

#[cfg(test)]
mod tests {
    use querygate_policy::{Classification, MaskRule};

    use super::*;

    fn column(name: &str, data_type: &str) -> Column {
        Column {
            name: name.into(),
            data_type: data_type.into(),
            repeated: false,
        }
    }

    #[test]
    fn masked_columns_get_their_strategy_and_the_rest_pass_as_they_are() {
        let classifier = Classifier {
            classes: vec![Classification {
                tag: "pii".into(),
                columns: vec!["*.crm.customers.ssn".into(), "*.crm.customers.tags".into()],
            }],
            masks: vec![MaskRule {
                tag: "pii".into(),
                strategy: "last4".into(),
                unmasked_for: vec![],
                predicates_allowed: false,
            }],
        };
        let agent = Identity {
            subject: "agent:x".into(),
            ..Identity::default()
        };
        let list = select_list(
            &classifier,
            "p.crm.customers",
            &[column("id", "INTEGER"), column("SSN", "STRING")],
            &agent,
            SqlDialect::BigQuery,
            "@__querygate_mask_key",
        )
        .expect("plan");
        assert_eq!(list[0].mask, None);
        assert!(
            list[1]
                .mask
                .as_deref()
                .is_some_and(|m| m.contains("SUBSTR(`SSN`, -4)"))
        );
        let list = select_list(
            &classifier,
            "p.crm.customers",
            &[
                Column {
                    repeated: true,
                    ..column("tags", "STRING")
                },
                column("ssn", "RECORD"),
            ],
            &agent,
            SqlDialect::BigQuery,
            "@__querygate_mask_key",
        )
        .expect("plan");
        assert_eq!(list.len(), 1, "a masked STRUCT is left out: {list:?}");
        assert!(
            list[0]
                .mask
                .as_deref()
                .is_some_and(|m| m.starts_with("ARRAY(SELECT") && m.contains("UNNEST(`tags`)")),
            "{list:?}"
        );
    }
}
