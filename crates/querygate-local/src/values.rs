//! DuckDB result types and values → BigQuery's schema fields and JSON cells.
//!
//! BigQuery's REST API sends every scalar as a string (`{"v": "42"}`), records as `{"f": [...]}`
//! and arrays as `[{"v": ...}]`; timestamps as seconds (or microseconds when the client asks for
//! `formatOptions.useInt64Timestamp`), datetimes as `YYYY-MM-DDTHH:MM:SS[.ffffff]`, bytes as
//! base64. Pure: no IO.

use duckdb::arrow::datatypes::{DataType, Field as ArrowField};
use duckdb::types::{TimeUnit, Value};
use serde_json::{Value as Json, json};

/// A column of a BigQuery schema.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub name: String,
    /// BigQuery's legacy type name as tables.get and query results report it.
    pub ty: &'static str,
    pub repeated: bool,
    pub fields: Vec<Field>,
}

impl Field {
    /// The schema field as BigQuery's JSON.
    pub fn to_json(&self) -> Json {
        let mut f = json!({
            "name": self.name,
            "type": self.ty,
            "mode": if self.repeated { "REPEATED" } else { "NULLABLE" },
        });
        if !self.fields.is_empty() {
            f["fields"] = Json::Array(self.fields.iter().map(Field::to_json).collect());
        }
        f
    }

    /// The column's GoogleSQL type as INFORMATION_SCHEMA.COLUMNS and DDL write it: `INT64`,
    /// `STRUCT<a INT64, b STRING>`, `ARRAY<STRING>` for what tables.get calls `INTEGER`,
    /// `RECORD` and a `REPEATED` field.
    pub fn standard_type(&self) -> String {
        let scalar = match self.ty {
            "INTEGER" => "INT64".to_string(),
            "FLOAT" => "FLOAT64".to_string(),
            "BOOLEAN" => "BOOL".to_string(),
            "RECORD" => format!(
                "STRUCT<{}>",
                self.fields
                    .iter()
                    .map(|f| format!("{} {}", ddl_name(&f.name), f.standard_type()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            other => other.to_string(),
        };
        if self.repeated {
            format!("ARRAY<{scalar}>")
        } else {
            scalar
        }
    }

    /// The BigQuery field for an Arrow field of a DuckDB result.
    pub fn from_arrow(f: &ArrowField) -> Field {
        let name = f.name().clone();
        match f.data_type() {
            DataType::List(inner)
            | DataType::LargeList(inner)
            | DataType::FixedSizeList(inner, _)
            | DataType::ListView(inner)
            | DataType::LargeListView(inner) => {
                let mut element = Field::from_arrow(inner);
                element.name = name;
                element.repeated = true;
                element
            }
            DataType::Struct(children) => Field {
                name,
                ty: "RECORD",
                repeated: false,
                fields: children.iter().map(|c| Field::from_arrow(c)).collect(),
            },
            other => Field {
                name,
                ty: scalar_type(other),
                repeated: false,
                fields: Vec::new(),
            },
        }
    }
}

/// A column name as GoogleSQL DDL writes it: plain when it is a plain identifier, else in
/// back-ticks.
pub fn ddl_name(name: &str) -> String {
    let plain = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        name.to_string()
    } else {
        format!("`{}`", name.replace('\\', "\\\\").replace('`', "\\`"))
    }
}

fn scalar_type(t: &DataType) -> &'static str {
    match t {
        DataType::Boolean => "BOOLEAN",
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => "INTEGER",
        DataType::Float16 | DataType::Float32 | DataType::Float64 => "FLOAT",
        DataType::Decimal128(p, s) | DataType::Decimal256(p, s) => {
            if *s <= 9 && (*p as i16 - *s as i16) <= 29 {
                "NUMERIC"
            } else {
                "BIGNUMERIC"
            }
        }
        DataType::Binary
        | DataType::LargeBinary
        | DataType::FixedSizeBinary(_)
        | DataType::BinaryView => "BYTES",
        DataType::Date32 | DataType::Date64 => "DATE",
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP",
        DataType::Timestamp(_, None) => "DATETIME",
        DataType::Time32(_) | DataType::Time64(_) => "TIME",
        DataType::Interval(_) => "INTERVAL",
        _ => "STRING",
    }
}

/// How timestamps are written.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Format {
    /// `formatOptions.useInt64Timestamp`: microseconds since the epoch as an integer string.
    pub int64_timestamp: bool,
}

/// A row as BigQuery's `{"f": [{"v": ...}, ...]}`.
pub fn row(values: Vec<Value>, fields: &[Field], format: Format) -> Json {
    let cells = values
        .into_iter()
        .zip(fields)
        .map(|(v, f)| json!({ "v": cell(v, f, format) }))
        .collect();
    json!({ "f": Json::Array(cells) })
}

/// One value as BigQuery writes it (without the `{"v": …}` wrapper).
pub fn cell(value: Value, field: &Field, format: Format) -> Json {
    if field.repeated {
        let items = match value {
            Value::List(items) | Value::Array(items) => items,
            Value::Null => return Json::Array(Vec::new()),
            other => vec![other],
        };
        let element = Field {
            repeated: false,
            ..field.clone()
        };
        return Json::Array(
            items
                .into_iter()
                .map(|v| json!({ "v": cell(v, &element, format) }))
                .collect(),
        );
    }
    match value {
        Value::Null => Json::Null,
        Value::Struct(map) => {
            let cells = map
                .iter()
                .zip(&field.fields)
                .map(|((_, v), f)| json!({ "v": cell(v.clone(), f, format) }))
                .collect();
            json!({ "f": Json::Array(cells) })
        }
        other => Json::String(scalar(other, field.ty, format)),
    }
}

fn scalar(value: Value, ty: &str, format: Format) -> String {
    match value {
        Value::Null => String::new(),
        Value::Boolean(b) => b.to_string(),
        Value::TinyInt(n) => n.to_string(),
        Value::SmallInt(n) => n.to_string(),
        Value::Int(n) => n.to_string(),
        Value::BigInt(n) => n.to_string(),
        Value::HugeInt(n) => n.to_string(),
        Value::UHugeInt(n) => n.to_string(),
        Value::UTinyInt(n) => n.to_string(),
        Value::USmallInt(n) => n.to_string(),
        Value::UInt(n) => n.to_string(),
        Value::UBigInt(n) => n.to_string(),
        Value::Float(x) => float(f64::from(x)),
        Value::Double(x) => float(x),
        Value::Decimal(d) => d.to_string(),
        Value::Timestamp(unit, n) => {
            let micros = to_micros(unit, n);
            if ty == "TIMESTAMP" {
                if format.int64_timestamp {
                    micros.to_string()
                } else {
                    let secs = micros.div_euclid(1_000_000);
                    let frac = micros.rem_euclid(1_000_000);
                    format!("{secs}.{frac:06}")
                }
            } else {
                datetime(micros)
            }
        }
        Value::Text(s) | Value::Enum(s) => s,
        Value::Blob(b) | Value::Geometry(b) => base64(&b),
        Value::Date32(days) => date(i64::from(days)),
        Value::Time64(unit, n) => time_of_day(to_micros(unit, n)),
        Value::Interval {
            months,
            days,
            nanos,
        } => {
            let micros = nanos / 1000;
            let (h, rest) = (micros / 3_600_000_000, micros % 3_600_000_000);
            let (m, rest) = (rest / 60_000_000, rest % 60_000_000);
            let (s, us) = (rest / 1_000_000, rest % 1_000_000);
            let frac = if us != 0 {
                format!(".{:06}", us.abs())
            } else {
                String::new()
            };
            format!(
                "{}-{} {} {}:{}:{}{frac}",
                months / 12,
                months % 12,
                days,
                h,
                m.abs(),
                s.abs()
            )
        }
        Value::Union(inner) => scalar(*inner, ty, format),
        other => format!("{other:?}"),
    }
}

fn float(x: f64) -> String {
    if x.is_nan() {
        "NaN".into()
    } else if x.is_infinite() {
        if x > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        x.to_string()
    }
}

fn to_micros(unit: TimeUnit, n: i64) -> i64 {
    match unit {
        TimeUnit::Second => n.saturating_mul(1_000_000),
        TimeUnit::Millisecond => n.saturating_mul(1000),
        TimeUnit::Microsecond => n,
        TimeUnit::Nanosecond => n / 1000,
    }
}

/// `YYYY-MM-DD` of days since 1970-01-01 (proleptic Gregorian; H. Hinnant's algorithm).
pub fn date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

fn time_of_day(micros: i64) -> String {
    let micros = micros.rem_euclid(86_400_000_000);
    let (h, rest) = (micros / 3_600_000_000, micros % 3_600_000_000);
    let (m, rest) = (rest / 60_000_000, rest % 60_000_000);
    let (s, us) = (rest / 1_000_000, rest % 1_000_000);
    if us == 0 {
        format!("{h:02}:{m:02}:{s:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}.{us:06}")
    }
}

fn datetime(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    format!(
        "{}T{}",
        date(days),
        time_of_day(micros.rem_euclid(86_400_000_000))
    )
}

/// Standard base64 with padding (BigQuery's encoding of BYTES).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_times_and_bytes_are_written_as_bigquery_does() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(19_723), "2024-01-01");
        assert_eq!(date(-1), "1969-12-31");
        assert_eq!(
            datetime(1_704_067_200_000_000 + 1_500_000),
            "2024-01-01T00:00:01.500000"
        );
        assert_eq!(base64(b"hello"), "aGVsbG8=");
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"ab"), "YWI=");
        let ts = Field {
            name: "t".into(),
            ty: "TIMESTAMP",
            repeated: false,
            fields: vec![],
        };
        let v = Value::Timestamp(TimeUnit::Microsecond, 1_704_067_200_000_000);
        assert_eq!(
            cell(v.clone(), &ts, Format::default()),
            json!("1704067200.000000")
        );
        assert_eq!(
            cell(
                v,
                &ts,
                Format {
                    int64_timestamp: true
                }
            ),
            json!("1704067200000000")
        );
    }
}
