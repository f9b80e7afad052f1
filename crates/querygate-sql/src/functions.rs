//! Function name lists the analyzer needs: functions with side effects, functions that run SQL
//! text the analyzer cannot see, set-returning functions it understands in FROM, and BigQuery
//! date-part arguments that look like column names but are not.
//!
//! Names are compared upper case with any `PG_CATALOG.` prefix removed. This module is data only:
//! it must not decide policy (what to do about a side effect is the policy's business).

/// The name without a `PG_CATALOG.` / `SAFE.` qualifier, upper case.
fn base(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    for prefix in ["PG_CATALOG.", "SAFE."] {
        if let Some(rest) = upper.strip_prefix(prefix) {
            return rest.to_string();
        }
    }
    upper
}

/// Functions that change state, reach outside the database, or hold resources when called from
/// a plain `SELECT` (PostgreSQL unless noted).
const SIDE_EFFECTING: &[&str] = &[
    // sessions and the server
    "PG_TERMINATE_BACKEND",
    "PG_CANCEL_BACKEND",
    "PG_RELOAD_CONF",
    "PG_ROTATE_LOGFILE",
    "PG_LOG_BACKEND_MEMORY_CONTEXTS",
    "PG_PROMOTE",
    "PG_WAL_REPLAY_PAUSE",
    "PG_WAL_REPLAY_RESUME",
    "PG_SWITCH_WAL",
    "PG_CREATE_RESTORE_POINT",
    "PG_BACKUP_START",
    "PG_BACKUP_STOP",
    "PG_START_BACKUP",
    "PG_STOP_BACKUP",
    "PG_STAT_RESET",
    "PG_STAT_RESET_SHARED",
    "PG_STAT_RESET_SINGLE_TABLE_COUNTERS",
    "PG_STAT_RESET_SINGLE_FUNCTION_COUNTERS",
    "PG_STAT_RESET_SLRU",
    "PG_STAT_RESET_REPLICATION_SLOT",
    "PG_IMPORT_SYSTEM_COLLATIONS",
    "SET_CONFIG",
    "PG_NOTIFY",
    "TXID_CURRENT",
    "PG_CURRENT_XACT_ID",
    // sequences
    "NEXTVAL",
    "SETVAL",
    // locks and sleeping
    "PG_ADVISORY_LOCK",
    "PG_ADVISORY_LOCK_SHARED",
    "PG_ADVISORY_XACT_LOCK",
    "PG_ADVISORY_XACT_LOCK_SHARED",
    "PG_TRY_ADVISORY_LOCK",
    "PG_TRY_ADVISORY_LOCK_SHARED",
    "PG_TRY_ADVISORY_XACT_LOCK",
    "PG_TRY_ADVISORY_XACT_LOCK_SHARED",
    "PG_ADVISORY_UNLOCK",
    "PG_ADVISORY_UNLOCK_SHARED",
    "PG_ADVISORY_UNLOCK_ALL",
    "PG_SLEEP",
    "PG_SLEEP_FOR",
    "PG_SLEEP_UNTIL",
    // large objects and server files
    "LO_IMPORT",
    "LO_EXPORT",
    "LO_CREATE",
    "LO_CREAT",
    "LO_UNLINK",
    "LO_PUT",
    "LO_FROM_BYTEA",
    "LO_TRUNCATE",
    "LO_TRUNCATE64",
    "LO_OPEN",
    "LOWRITE",
    "PG_READ_FILE",
    "PG_READ_BINARY_FILE",
    "PG_STAT_FILE",
    "PG_LS_DIR",
    "PG_LS_LOGDIR",
    "PG_LS_WALDIR",
    "PG_LS_TMPDIR",
    "PG_LS_ARCHIVE_STATUSDIR",
    "PG_FILE_WRITE",
    "PG_FILE_UNLINK",
    "PG_FILE_RENAME",
    "PG_FILE_SYNC",
    // replication
    "PG_CREATE_LOGICAL_REPLICATION_SLOT",
    "PG_CREATE_PHYSICAL_REPLICATION_SLOT",
    "PG_DROP_REPLICATION_SLOT",
    "PG_COPY_LOGICAL_REPLICATION_SLOT",
    "PG_COPY_PHYSICAL_REPLICATION_SLOT",
    "PG_LOGICAL_SLOT_GET_CHANGES",
    "PG_LOGICAL_SLOT_GET_BINARY_CHANGES",
    "PG_REPLICATION_SLOT_ADVANCE",
    "PG_REPLICATION_ORIGIN_CREATE",
    "PG_REPLICATION_ORIGIN_DROP",
    "PG_REPLICATION_ORIGIN_ADVANCE",
    "PG_REPLICATION_ORIGIN_SESSION_SETUP",
    // other databases
    "DBLINK",
    "DBLINK_EXEC",
    "DBLINK_CONNECT",
    "DBLINK_CONNECT_U",
    "DBLINK_DISCONNECT",
    "DBLINK_OPEN",
    "DBLINK_FETCH",
    "DBLINK_CLOSE",
    "DBLINK_SEND_QUERY",
    "DBLINK_GET_RESULT",
    "DBLINK_CANCEL_QUERY",
    // BigQuery
    "EXTERNAL_QUERY",
];

/// Functions that take SQL text (or a table name as text) and run it: what they read is
/// invisible to the analyzer, so a statement calling one is opaque.
const RUNS_SQL_TEXT: &[&str] = &[
    "QUERY_TO_XML",
    "QUERY_TO_XMLSCHEMA",
    "QUERY_TO_XML_AND_XMLSCHEMA",
    "CURSOR_TO_XML",
    "CURSOR_TO_XMLSCHEMA",
    "TABLE_TO_XML",
    "TABLE_TO_XMLSCHEMA",
    "TABLE_TO_XML_AND_XMLSCHEMA",
    "SCHEMA_TO_XML",
    "SCHEMA_TO_XMLSCHEMA",
    "SCHEMA_TO_XML_AND_XMLSCHEMA",
    "DATABASE_TO_XML",
    "DATABASE_TO_XMLSCHEMA",
    "DATABASE_TO_XML_AND_XMLSCHEMA",
    "TS_STAT",
    "DBLINK",
    "DBLINK_EXEC",
    "DBLINK_OPEN",
    "DBLINK_SEND_QUERY",
    "EXTERNAL_QUERY",
];

/// PostgreSQL set-returning functions whose output is computed only from their arguments, so a
/// FROM item calling one is understood (its columns come from its arguments).
const PURE_SET_RETURNING: &[&str] = &[
    "GENERATE_SERIES",
    "GENERATE_SUBSCRIPTS",
    "UNNEST",
    "JSON_EACH",
    "JSON_EACH_TEXT",
    "JSONB_EACH",
    "JSONB_EACH_TEXT",
    "JSON_ARRAY_ELEMENTS",
    "JSON_ARRAY_ELEMENTS_TEXT",
    "JSONB_ARRAY_ELEMENTS",
    "JSONB_ARRAY_ELEMENTS_TEXT",
    "JSON_OBJECT_KEYS",
    "JSONB_OBJECT_KEYS",
    "JSON_TO_RECORD",
    "JSONB_TO_RECORD",
    "JSON_TO_RECORDSET",
    "JSONB_TO_RECORDSET",
    "JSON_POPULATE_RECORDSET",
    "JSONB_POPULATE_RECORDSET",
    "JSONB_PATH_QUERY",
    "REGEXP_MATCHES",
    "REGEXP_SPLIT_TO_TABLE",
    "STRING_TO_TABLE",
];

/// BigQuery functions whose arguments after the first may be a bare date part (`MONTH`,
/// `WEEK(MONDAY)`) or normalization mode (`NFKC`) rather than a column.
const TAKES_DATE_PART: &[&str] = &[
    "DATE_TRUNC",
    "DATETIME_TRUNC",
    "TIMESTAMP_TRUNC",
    "TIME_TRUNC",
    "DATE_DIFF",
    "DATETIME_DIFF",
    "TIMESTAMP_DIFF",
    "TIME_DIFF",
    "LAST_DAY",
    "DATE_BUCKET",
    "DATETIME_BUCKET",
    "TIMESTAMP_BUCKET",
    "NORMALIZE",
    "NORMALIZE_AND_CASEFOLD",
];

const DATE_PARTS: &[&str] = &[
    "MICROSECOND",
    "MILLISECOND",
    "SECOND",
    "MINUTE",
    "HOUR",
    "DAY",
    "DAYOFWEEK",
    "DAYOFYEAR",
    "WEEK",
    "ISOWEEK",
    "MONTH",
    "QUARTER",
    "YEAR",
    "ISOYEAR",
    "DATE",
    "DATETIME",
    "TIME",
    // NORMALIZE modes
    "NFC",
    "NFKC",
    "NFD",
    "NFKD",
];

const WEEKDAYS: &[&str] = &[
    "SUNDAY",
    "MONDAY",
    "TUESDAY",
    "WEDNESDAY",
    "THURSDAY",
    "FRIDAY",
    "SATURDAY",
];

/// PostgreSQL keywords that are niladic functions (written without parentheses).
const PG_SQL_VALUE_KEYWORDS: &[&str] = &[
    "CURRENT_CATALOG",
    "CURRENT_DATE",
    "CURRENT_ROLE",
    "CURRENT_SCHEMA",
    "CURRENT_TIME",
    "CURRENT_TIMESTAMP",
    "CURRENT_USER",
    "LOCALTIME",
    "LOCALTIMESTAMP",
    "SESSION_USER",
    "SYSTEM_USER",
    "USER",
];

/// True for a function that changes state or reaches outside the query when called.
pub fn is_side_effecting(name: &str) -> bool {
    SIDE_EFFECTING.contains(&base(name).as_str())
}

/// True for a function that runs SQL text (or reads a table named in text).
pub(crate) fn runs_sql_text(name: &str) -> bool {
    RUNS_SQL_TEXT.contains(&base(name).as_str())
}

/// True for a PostgreSQL set-returning function understood in FROM.
pub(crate) fn is_pure_set_returning(name: &str) -> bool {
    PURE_SET_RETURNING.contains(&base(name).as_str())
}

/// True for a PostgreSQL keyword that reads as a niladic function (`current_schema`).
pub(crate) fn is_pg_sql_value_keyword(ident: &str) -> bool {
    PG_SQL_VALUE_KEYWORDS
        .iter()
        .any(|k| k.eq_ignore_ascii_case(ident))
}

/// True when `function`'s arguments after the first may be a bare BigQuery date part.
pub(crate) fn takes_date_part(function: &str) -> bool {
    TAKES_DATE_PART.contains(&base(function).as_str())
}

/// True for an unquoted identifier that is a BigQuery date part.
pub(crate) fn is_date_part(ident: &str) -> bool {
    DATE_PARTS.iter().any(|p| p.eq_ignore_ascii_case(ident))
}

/// True for a weekday name, as in `WEEK(MONDAY)`.
pub(crate) fn is_weekday(ident: &str) -> bool {
    WEEKDAYS.iter().any(|p| p.eq_ignore_ascii_case(ident))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_matched_without_case_or_catalog() {
        assert!(is_side_effecting("pg_catalog.pg_terminate_backend"));
        assert!(is_side_effecting("NEXTVAL"));
        assert!(!is_side_effecting("lower"));
        assert!(runs_sql_text("Query_To_Xml"));
        assert!(is_pure_set_returning("generate_series"));
        assert!(takes_date_part("date_trunc"));
        assert!(is_date_part("month") && is_weekday("Monday"));
    }
}
