//! A statement's shape: its text with the numbers it compares against taken out, so that
//! `… WHERE aid = 12345` and `… WHERE aid = 678` are one statement to a memory of facts.
//!
//! Sound because [`crate::analyze`] reads no numeric literal's value except an ordinal
//! (`ORDER BY 2`, `GROUP BY 2`), which never follows a comparison operator: two statements
//! of one shape have the same facts. Conservative by construction: only a run of digits
//! right after `=`, `<`, `>`, `<=`, `>=`, `<>` or `!=` (spaces between) and ending at a
//! token boundary is taken out, and text the scanner cannot read with certainty (comments
//! of either dialect — `--`, `/* */`, BigQuery's `#` —, backslashes, dollar or triple
//! quotes, a NUL) has no shape: it is remembered by its text alone, as before. The scanner
//! reads quotes as both dialects do once those are ruled out, so it never takes a number
//! out of what the upstream reads as a string or a name.

/// The shape of `sql`, or `None` when it compares against no number or cannot be read with
/// certainty. The numbers taken out become NUL, which no statement text holds.
pub fn shape(sql: &str) -> Option<String> {
    if sql.contains(['\\', '\0', '#'])
        || sql.contains("--")
        || sql.contains("/*")
        || sql.contains("$$")
        || sql.contains("'''")
        || sql.contains("\"\"\"")
    {
        return None;
    }
    let bytes = sql.as_bytes();
    // A `$` starts a dollar quote (`$tag$`) unless a parameter number follows.
    if bytes
        .iter()
        .enumerate()
        .any(|(i, b)| *b == b'$' && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit))
    {
        return None;
    }
    // Indices below are of ASCII bytes only (quotes, operators, digits): char boundaries.
    let mut out = String::with_capacity(sql.len());
    let mut copied = 0;
    let mut quote: Option<u8> = None;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        i += 1;
        if let Some(q) = quote {
            if b == q {
                quote = None;
            }
            continue;
        }
        match b {
            b'\'' | b'"' | b'`' => quote = Some(b),
            b'=' | b'<' | b'>' | b'!' => {
                // The operator, then spaces, then digits ending at a token boundary.
                let mut j = i;
                if bytes.get(j).is_some_and(|c| matches!(c, b'=' | b'>')) {
                    j += 1;
                }
                if b == b'!' && j == i {
                    continue;
                }
                i = j;
                while bytes.get(j).is_some_and(|c| *c == b' ') {
                    j += 1;
                }
                let digits = j;
                while bytes.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                let boundary = !bytes.get(j).is_some_and(|c| {
                    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'$') || *c >= 0x80
                });
                if j > digits && boundary {
                    out.push_str(&sql[copied..digits]);
                    out.push('\0');
                    copied = j;
                    i = j;
                }
            }
            _ => {}
        }
    }
    if quote.is_some() || copied == 0 {
        return None;
    }
    out.push_str(&sql[copied..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::shape;

    #[test]
    fn compared_numbers_are_taken_out_and_nothing_else() {
        let a = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 12345;");
        let b = shape("SELECT abalance FROM pgbench_accounts WHERE aid = 7;");
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_eq!(
            shape("SELECT * FROM t WHERE a>=1 AND b <> 22 AND c != 3 AND d<4").as_deref(),
            Some("SELECT * FROM t WHERE a>=\0 AND b <> \0 AND c != \0 AND d<\0")
        );
        // Statements that differ in anything else differ in shape.
        assert_ne!(
            shape("SELECT a FROM t WHERE id = 1"),
            shape("SELECT b FROM t WHERE id = 1")
        );
        // An ordinal, a LIMIT, a number in a string or an identifier stays as it is.
        assert_eq!(
            shape("SELECT a, b FROM t WHERE x = 5 ORDER BY 2 LIMIT 10").as_deref(),
            Some("SELECT a, b FROM t WHERE x = \0 ORDER BY 2 LIMIT 10")
        );
        assert_eq!(shape("SELECT * FROM t ORDER BY 2"), None);
        assert_eq!(shape("SELECT 'a = 1' FROM t"), None);
        assert_eq!(shape("SELECT * FROM \"t = 1\""), None);
        assert_eq!(shape("SELECT * FROM `p.d.t` WHERE x = y1"), None);
        assert_eq!(shape("SELECT * FROM t WHERE x = 1e5"), None);
        assert_eq!(shape("SELECT * FROM t WHERE x = 1.5"), None);
        assert_eq!(shape("SELECT * FROM t WHERE x = 12abc"), None);
        assert_eq!(shape("SELECT * FROM t WHERE x = -1"), None);
        assert_eq!(
            shape("SELECT \"naïve\" FROM t WHERE é = 1").as_deref(),
            Some("SELECT \"naïve\" FROM t WHERE é = \0")
        );
        assert_eq!(
            shape("SELECT * FROM t WHERE x = $1 AND y = 2").as_deref(),
            Some("SELECT * FROM t WHERE x = $1 AND y = \0")
        );
    }

    #[test]
    fn text_the_scanner_cannot_read_with_certainty_has_no_shape() {
        for sql in [
            "SELECT * FROM t WHERE a = 1 -- b = 2",
            "SELECT * FROM t /* a = 1 */ WHERE b = 2",
            "SELECT $$ a = 1 $$ FROM t WHERE b = 2",
            "SELECT $tag$ x $tag$ FROM t WHERE b = 2",
            "SELECT 'it\\'s' FROM t WHERE b = 2",
            "SELECT ''' a = 1 ''' FROM t WHERE b = 2",
            "SELECT * FROM t WHERE b = 2 AND c = 'open",
            "SELECT * FROM t WHERE b = 2\0",
            // BigQuery's `#` comment would hide a quote from the scanner: the string after
            // it would be read as code.
            "SELECT 1 # '\nFROM t WHERE a = 'y = 5'",
        ] {
            assert_eq!(shape(sql), None, "{sql}");
        }
    }

    #[test]
    fn any_text_is_read_without_a_panic() {
        let parts = [
            "=", "<", ">", "!", "<>", ">=", " ", "1", "12", "é", "😀", "'", "\"", "`", "$1", "a",
            ".",
        ];
        // Every sequence of three parts, and each once more after a statement.
        for a in parts {
            for b in parts {
                for c in parts {
                    let text = format!("{a}{b}{c}");
                    let _ = shape(&text);
                    let _ = shape(&format!("SELECT x FROM t WHERE y {text}"));
                }
            }
        }
    }

    #[test]
    fn statements_of_one_shape_have_the_same_facts() {
        use crate::{SqlDialect, analyze};
        for (a, b, dialect) in [
            (
                "SELECT abalance FROM pgbench_accounts WHERE aid = 1",
                "SELECT abalance FROM pgbench_accounts WHERE aid = 99999",
                SqlDialect::Postgres,
            ),
            (
                "SELECT email FROM crm.customers WHERE id = 3 AND day >= 20240101 ORDER BY 1",
                "SELECT email FROM crm.customers WHERE id = 4 AND day >= 20250101 ORDER BY 1",
                SqlDialect::BigQuery,
            ),
            (
                "UPDATE accounts SET balance = 10 WHERE id = 5",
                "UPDATE accounts SET balance = 20 WHERE id = 6",
                SqlDialect::Postgres,
            ),
            (
                "SELECT * FROM `p.d.events` WHERE _PARTITIONDATE = '2024-01-01' AND n > 5",
                "SELECT * FROM `p.d.events` WHERE _PARTITIONDATE = '2024-01-01' AND n > 6",
                SqlDialect::BigQuery,
            ),
        ] {
            assert_eq!(shape(a), shape(b), "{a}");
            assert!(shape(a).is_some(), "{a}");
            assert_eq!(analyze(a, dialect), analyze(b, dialect), "{a}");
        }
    }
}
