//! The SQLite schema and connection settings. Every connection goes through [`open`].

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

const SCHEMA: &str = "
-- `time`, `identity` and `ticket` repeat the record's fields for the indexes (written with
-- the record, from the record the writer chained: SQLite never parses the JSON to index it).
CREATE TABLE IF NOT EXISTS audit_log (
    seq       INTEGER PRIMARY KEY,
    record    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL,
    time      TEXT,
    identity  TEXT,
    ticket    TEXT
);
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

/// What follows the columns: indexes and triggers (after [`ADDED_COLUMNS`] and the
/// migration of older stores, whose tables may lack columns these name).
const INDEXES: &str = "
CREATE INDEX IF NOT EXISTS audit_time ON audit_log (time);
CREATE INDEX IF NOT EXISTS audit_identity_time ON audit_log (identity, time);
CREATE INDEX IF NOT EXISTS audit_ticket ON audit_log (ticket) WHERE ticket IS NOT NULL;
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
";

/// A store made before the index columns: they are filled from each record's text (under
/// the append-only trigger, dropped for the one statement and made again), and the indexes
/// over `json_extract` that parsed every record as it was written are dropped.
const KEYS_FROM_TEXT: &str = "
BEGIN IMMEDIATE;
DROP TRIGGER IF EXISTS audit_no_update;
UPDATE audit_log SET time = json_extract(record, '$.time'),
    identity = json_extract(record, '$.identity'), ticket = json_extract(record, '$.ticket');
DROP INDEX IF EXISTS audit_by_time;
DROP INDEX IF EXISTS audit_by_identity;
DROP INDEX IF EXISTS audit_by_ticket;
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
COMMIT;
";

/// Columns added after the first release: (table, column, type).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("jobs", "row_limit", "INTEGER"),
    ("jobs", "sensitive", "INTEGER"),
    ("usage", "rows", "INTEGER NOT NULL DEFAULT 0"),
    ("audit_log", "time", "TEXT"),
    ("audit_log", "identity", "TEXT"),
    ("audit_log", "ticket", "TEXT"),
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
    // Every record written since has its keys; records without are an older store's (or
    // of a migration that did not finish), filled in one transaction.
    let unkeyed = conn
        .prepare("SELECT 1 FROM audit_log WHERE time IS NULL LIMIT 1")?
        .exists([])?;
    if unkeyed && let Err(e) = conn.execute_batch(KEYS_FROM_TEXT) {
        let _ = conn.execute_batch("ROLLBACK");
        return Err(e);
    }
    conn.execute_batch(INDEXES)?;
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
