//! Byte sizes as users write them (`10 GiB`, `500 MB`, `1TiB`, `1048576`), row counts
//! (`1M rows`), and back.

/// Why a written size is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("{text:?} is not a size like \"10 GiB\"")]
    NotASize { text: String },
    #[error("{text:?}: unknown unit {unit:?} (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")]
    UnknownUnit { text: String, unit: String },
    #[error("{text:?} is out of range")]
    OutOfRange { text: String },
}

/// Parses a size; binary (`KiB`…`PiB`) and decimal (`KB`…`PB`) units, case-insensitive.
pub fn parse_bytes(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| SizeError::NotASize {
        text: text.to_string(),
    })?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "pb" => 1e15,
        "kib" => 1024.0,
        "mib" => 1024.0f64.powi(2),
        "gib" => 1024.0f64.powi(3),
        "tib" => 1024.0f64.powi(4),
        "pib" => 1024.0f64.powi(5),
        other => {
            return Err(SizeError::UnknownUnit {
                text: text.to_string(),
                unit: other.to_string(),
            });
        }
    };
    let bytes = n * mult;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(SizeError::OutOfRange {
            text: text.to_string(),
        });
    }
    Ok(bytes as u64)
}

/// Why a written row count is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a row count like \"1M rows\", \"250k rows\" or \"5000 rows\"")]
pub struct RowsError {
    text: String,
}

/// Parses a row count as budgets write it: a number (digits, `_` between them), an
/// optional `k`, `M` or `G` (thousands, millions, billions), then `rows` (or `row`).
pub fn parse_rows(text: &str) -> Result<u64, RowsError> {
    let err = || RowsError {
        text: text.to_string(),
    };
    let t = text.trim();
    let t = t
        .strip_suffix("rows")
        .or_else(|| t.strip_suffix("row"))
        .ok_or_else(err)?
        .trim_end();
    let (num, mult) = match t.char_indices().last() {
        Some((at, 'k' | 'K')) => (&t[..at], 1_000),
        Some((at, 'm' | 'M')) => (&t[..at], 1_000_000),
        Some((at, 'g' | 'G' | 'b' | 'B')) => (&t[..at], 1_000_000_000),
        _ => (t, 1),
    };
    let num = num.trim_end();
    if num.is_empty() || num.starts_with('_') || num.ends_with('_') {
        return Err(err());
    }
    let digits: String = num.chars().filter(|c| *c != '_').collect();
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(err)
}

/// A row count for people: `1,000,000 rows`, `1 row`.
pub fn format_rows(rows: u64) -> String {
    let digits = rows.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 5);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out.push_str(if rows == 1 { " row" } else { " rows" });
    out
}

/// A size for people: `10.0 GiB`, `512 B`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        assert_eq!(parse_bytes("10 GiB"), Ok(10 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("1TiB"), Ok(1 << 40));
        assert_eq!(parse_bytes("500 MB"), Ok(500_000_000));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("ten GB").is_err());
        assert!(parse_bytes("10 parsecs").is_err());
        assert_eq!(format_bytes(10 * 1024 * 1024 * 1024), "10.0 GiB");
        assert_eq!(format_bytes(512), "512 B");
    }

    #[test]
    fn row_counts_parse_and_print() {
        assert_eq!(parse_rows("1M rows"), Ok(1_000_000));
        assert_eq!(parse_rows(" 250k rows "), Ok(250_000));
        assert_eq!(parse_rows("2G rows"), Ok(2_000_000_000));
        assert_eq!(parse_rows("1_000_000 rows"), Ok(1_000_000));
        assert_eq!(parse_rows("1 row"), Ok(1));
        assert_eq!(parse_rows("5000rows"), Ok(5000));
        for bad in [
            "1M",
            "rows",
            "1.5M rows",
            "-1 rows",
            "_1 rows",
            "1 GiB",
            "ten rows",
        ] {
            assert!(parse_rows(bad).is_err(), "{bad}");
        }
        assert!(parse_rows("99999999999999999999 rows").is_err());
        assert!(parse_rows("99999999999999G rows").is_err());
        assert_eq!(format_rows(1_000_000), "1,000,000 rows");
        assert_eq!(format_rows(1), "1 row");
        assert_eq!(format_rows(999), "999 rows");
    }
}
