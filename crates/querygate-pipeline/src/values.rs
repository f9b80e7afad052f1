//! Masking and scrubbing of result values, on neutral rows, so every front gets them.
//!
//! A source's reply hands the pipeline the rows of the page it carries ([`Rows`]: one
//! value per column — scalars as strings or null, repeated columns as arrays, records as
//! arrays of their fields —, and which columns they are) and takes them back changed
//! ([`crate::Reply::put_rows`]). Here, the cells of a direct table read are masked column
//! by column as the plan's [`ColumnMask`]s say (the same values the masking rewrite's SQL
//! computes, through `querygate_mask::mask_cell`), and the value detectors of a source's
//! scrubber run over every string of every row. Pure.

use querygate_core::Fault;
use querygate_mask::{Scrubber, Strategy, mask_cell};
use serde_json::Value;

use crate::source::ColumnMask;

/// The rows of one result page, as a reply hands them over.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    /// The columns the cells are, in order, when the read named them (BigQuery's
    /// `selectedFields`; a dotted name is a field of its top-level column). `None`: every
    /// column of the table, in schema order.
    pub columns: Option<Vec<String>>,
    pub rows: Vec<Vec<Value>>,
}

/// Masks the cells of a direct table read; `masks` are every column of the table in schema
/// order. Returns how many values changed; `Err` when the rows do not line up with the
/// columns (then nothing may be returned).
pub fn mask_rows(rows: &mut Rows, masks: &[ColumnMask], key: &[u8]) -> Result<u64, Fault> {
    let unmaskable = || Fault::gateway("querygate could not mask the rows of this table read");
    let order: Vec<&ColumnMask> = match &rows.columns {
        None => masks.iter().collect(),
        Some(fields) => {
            let mut order: Vec<&ColumnMask> = Vec::new();
            for f in fields {
                let top = f.split('.').next().unwrap_or(f).trim();
                let m = masks
                    .iter()
                    .find(|m| m.column.name.eq_ignore_ascii_case(top))
                    .ok_or_else(unmaskable)?;
                if !order.iter().any(|o| std::ptr::eq(*o, m)) {
                    order.push(m);
                }
            }
            order
        }
    };
    let mut changed = 0;
    for row in &mut rows.rows {
        if row.len() != order.len() {
            return Err(unmaskable());
        }
        for (cell, mask) in row.iter_mut().zip(&order) {
            if let Some(strategy) = mask.strategy {
                changed += mask_value(cell, strategy, mask, key);
            }
        }
    }
    Ok(changed)
}

/// Masks one cell of a masked column; returns how many values changed. Records, and
/// anything masked to null, become null; arrays are masked element by element.
fn mask_value(v: &mut Value, strategy: Strategy, mask: &ColumnMask, key: &[u8]) -> u64 {
    let record = matches!(mask.column.data_type.as_str(), "RECORD" | "STRUCT");
    if v.is_null() {
        return 0;
    }
    if record || strategy == Strategy::Null {
        *v = Value::Null;
        return 1;
    }
    let one = |x: &mut Value| -> u64 {
        let text = match x {
            Value::String(s) => Some(s.as_str()),
            Value::Null => return 0,
            _ => None,
        };
        let masked = mask_cell(strategy, &mask.column.data_type, text, key);
        *x = masked.map_or(Value::Null, Value::String);
        1
    };
    if mask.column.repeated {
        let Value::Array(items) = v else {
            *v = Value::Null;
            return 1;
        };
        items.iter_mut().map(one).sum()
    } else {
        one(v)
    }
}

/// Masks what `scrubber` finds in every string of every row (nested ones too); returns how
/// many values changed.
pub fn scrub_rows(rows: &mut Rows, scrubber: &Scrubber) -> u64 {
    rows.rows
        .iter_mut()
        .flat_map(|row| row.iter_mut())
        .map(|v| scrub_value(v, scrubber))
        .sum()
}

fn scrub_value(v: &mut Value, scrubber: &Scrubber) -> u64 {
    match v {
        Value::String(s) => match scrubber.scrub(s) {
            std::borrow::Cow::Owned(masked) => {
                *s = masked;
                1
            }
            std::borrow::Cow::Borrowed(_) => 0,
        },
        Value::Array(items) => items.iter_mut().map(|i| scrub_value(i, scrubber)).sum(),
        Value::Object(map) => map.values_mut().map(|i| scrub_value(i, scrubber)).sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use querygate_mask::DetectorKind;
    use serde_json::json;

    use super::*;
    use crate::source::Column;

    fn mask(name: &str, data_type: &str, repeated: bool, strategy: Option<Strategy>) -> ColumnMask {
        ColumnMask {
            column: Column {
                name: name.into(),
                data_type: data_type.into(),
                repeated,
            },
            strategy,
        }
    }

    #[test]
    fn cells_are_masked_by_column_in_the_order_the_read_names_them() {
        let masks = [
            mask("id", "INTEGER", false, None),
            mask("email", "STRING", false, Some(Strategy::Redact)),
            mask("phones", "STRING", true, Some(Strategy::Redact)),
            mask("address", "RECORD", false, Some(Strategy::Null)),
        ];
        let mut rows = Rows {
            columns: None,
            rows: vec![vec![
                json!("1"),
                json!("ana@example.com"),
                json!(["555-1", "555-2"]),
                json!(["Main St", "1"]),
            ]],
        };
        assert_eq!(mask_rows(&mut rows, &masks, b"").expect("masked"), 4);
        assert_eq!(rows.rows[0][0], json!("1"));
        assert!(!rows.rows[0][1].to_string().contains("ana@"));
        assert_eq!(rows.rows[0][3], Value::Null);
        // selectedFields=email,id: the cells are in that order.
        let mut picked = Rows {
            columns: Some(vec!["email".into(), "ID".into()]),
            rows: vec![vec![json!("bo@example.com"), json!("2")]],
        };
        assert_eq!(mask_rows(&mut picked, &masks, b"").expect("masked"), 1);
        assert_eq!(picked.rows[0][1], json!("2"));
        // Rows that do not line up with the columns are not returned.
        let mut short = Rows {
            columns: None,
            rows: vec![vec![json!("1")]],
        };
        assert!(mask_rows(&mut short, &masks, b"").is_err());
        let mut unknown = Rows {
            columns: Some(vec!["nope".into()]),
            rows: vec![],
        };
        assert!(mask_rows(&mut unknown, &masks, b"").is_err());
    }

    #[test]
    fn every_string_is_scrubbed_nested_ones_too() {
        let scrubber = Scrubber::new(&[DetectorKind::Email], Strategy::EmailDomain, vec![]);
        let mut rows = Rows {
            columns: None,
            rows: vec![vec![
                json!("cy@example.org"),
                json!(["write to bo@corp.example", "none"]),
                json!([["deep ana@example.com"]]),
                Value::Null,
            ]],
        };
        assert_eq!(scrub_rows(&mut rows, &scrubber), 3);
        let text = serde_json::to_string(&rows.rows).expect("json");
        assert!(!text.contains("cy@") && !text.contains("bo@") && !text.contains("ana@"));
    }
}
