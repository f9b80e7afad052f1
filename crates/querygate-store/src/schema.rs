//! The SQLite schema and connection settings. Every connection goes through [`open`].

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_log (
    seq       INTEGER PRIMARY KEY,
    record    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit_log (json_extract(record, '$.time'));
CREATE INDEX IF NOT EXISTS audit_by_identity
    ON audit_log (json_extract(record, '$.identity'), json_extract(record, '$.time'));
CREATE INDEX IF NOT EXISTS audit_by_ticket ON audit_log (json_extract(record, '$.ticket'))
    WHERE json_extract(record, '$.ticket') IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TABLE IF NOT EXISTS jobs (
    source      TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    identity    TEXT NOT NULL,
    created     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    destination TEXT,
    schema      TEXT,
    PRIMARY KEY (source, job_id)
);
CREATE INDEX IF NOT EXISTS jobs_by_identity ON jobs (source, identity);
CREATE TABLE IF NOT EXISTS api_keys (
    key_sha256 TEXT PRIMARY KEY,
    identity   TEXT NOT NULL,
    groups     TEXT NOT NULL DEFAULT '[]',
    kind       TEXT,
    created    INTEGER NOT NULL,
    expires    INTEGER,
    revoked    INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_by_identity ON api_keys (identity);
CREATE TABLE IF NOT EXISTS export_cursor (
    sink TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tickets (
    id          TEXT PRIMARY KEY,
    state       TEXT NOT NULL,
    created     INTEGER NOT NULL,
    expires     INTEGER NOT NULL,
    requester   TEXT NOT NULL,
    source      TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    rule        TEXT NOT NULL,
    policy_version TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    grant_until INTEGER,
    notified    INTEGER NOT NULL DEFAULT 0,
    ticket      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS tickets_by_job ON tickets (source, job_id);
CREATE INDEX IF NOT EXISTS tickets_by_state ON tickets (state, expires);
CREATE TABLE IF NOT EXISTS usage (
    identity TEXT NOT NULL,
    day      TEXT NOT NULL,
    bytes    INTEGER NOT NULL,
    PRIMARY KEY (identity, day)
);
";

/// Columns added after the first release: (table, column, type).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("jobs", "row_limit", "INTEGER"),
    ("jobs", "sensitive", "INTEGER"),
    ("usage", "rows", "INTEGER NOT NULL DEFAULT 0"),
];

pub(crate) fn open(path: &Path, sync: Sync) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", sync.pragma())?;
    conn.execute_batch(SCHEMA)?;
    for (table, column, kind) in ADDED_COLUMNS {
        let exists: bool = conn
            .prepare(&format!(
                "SELECT 1 FROM pragma_table_info('{table}') WHERE name = ?1"
            ))?
            .exists([column])?;
        if !exists {
            conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(conn)
}

/// Opens an existing store without creating or changing anything (for `audit` commands).
/// How hard a commit pushes records to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Sync {
    /// fsync at every commit: a record acknowledged as written survives power loss.
    #[default]
    Full,
    /// fsync at checkpoints only: survives a crash of querygate, not of the machine.
    Normal,
}

impl Sync {
    fn pragma(self) -> &'static str {
        match self {
            Sync::Full => "FULL",
            Sync::Normal => "NORMAL",
        }
    }
}

pub(crate) fn open_existing(path: &Path) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(10))?;
    Ok(conn)
}
