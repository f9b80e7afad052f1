//! The store: the audit chain, job ownership, usage and stored API keys, in one SQLite
//! file (WAL).
//!
//! Writes go through one writer thread that commits whatever is queued in one
//! transaction (group commit) with `synchronous = FULL`, so a returned `append`
//! means the record is on disk. The writer reads the chain head inside each
//! `BEGIN IMMEDIATE` transaction, so several gateway processes sharing the file
//! still build one chain. Reads use their own connection and never wait for the writer.
//! This crate knows nothing of HTTP, policy or SQL.

mod keys;
mod reader;
mod schema;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use querygate_core::AuditRecord;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

pub use keys::{KeyAdmin, MIN_PREFIX, RevokeOutcome, StoredKey};
pub use reader::{AuditFilter, Reader, StoredRecord, VerifyReport};
pub use schema::Sync;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("audit store {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("audit store writer has stopped")]
    WriterGone,
    #[error("audit store {path}: {message}")]
    Failed { path: String, message: String },
}

/// A job created through the gateway, and who owns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    pub source: String,
    pub job_id: String,
    pub identity: String,
    /// `project.dataset.table` of the job's destination (BigQuery anonymous result table).
    pub destination: Option<String>,
    /// Result schema as the upstream sent it (JSON), kept for pages that arrive without one.
    pub schema: Option<String>,
    /// Policy's limit on result rows for this job, applied to every page.
    pub row_limit: Option<u64>,
}

/// What else to commit together with an audit record.
#[derive(Debug, Clone, Default)]
pub struct Alongside {
    /// A job to claim for its owner (see [`Store::claim_job`]).
    pub claim: Option<JobRow>,
    /// Bytes to add to the record's identity's usage for the record's day.
    pub usage: Option<u64>,
}

/// What is queued but not yet committed, so lookups see it at once.
#[derive(Debug, Default)]
struct Queued {
    /// Job claims by (source, job id).
    claims: HashMap<(String, String), JobRow>,
    /// Usage by (identity, day).
    usage: HashMap<(String, String), u64>,
}

type Pending = Arc<Mutex<Queued>>;

enum Op {
    /// Acknowledged once everything queued before it is committed.
    Flush {
        ack: oneshot::Sender<Result<u64, StoreError>>,
    },
    Append {
        record: Box<AuditRecord>,
        usage: Option<u64>,
        ack: oneshot::Sender<Result<u64, StoreError>>,
    },
    ClaimJob {
        job: JobRow,
        ack: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// Handle to the store used by a running gateway. Cheap to share behind an `Arc`.
pub struct Store {
    path: PathBuf,
    ops: mpsc::Sender<Op>,
    reads: Mutex<Connection>,
    pending: Pending,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store and starts its writer thread.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, Sync::Full)
    }

    /// Opens the store with a chosen durability (see [`Sync`]).
    pub fn open_with(path: &Path, sync: Sync) -> Result<Store, StoreError> {
        let err = sqlite_err(path);
        let write_conn = schema::open(path, sync).map_err(&err)?;
        let reads = schema::open(path, sync).map_err(&err)?;
        let (tx, rx) = mpsc::channel();
        let p = path.to_path_buf();
        let pending: Pending = Arc::default();
        let writer_pending = pending.clone();
        std::thread::Builder::new()
            .name("querygate-store".into())
            .spawn(move || writer::run(write_conn, p, rx, writer_pending))
            .map_err(|e| StoreError::Failed {
                path: path.display().to_string(),
                message: format!("cannot start writer thread: {e}"),
            })?;
        Ok(Store {
            path: path.to_path_buf(),
            ops: tx,
            reads: Mutex::new(reads),
            pending,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends a record to the chain; returns its `seq` once it is durable.
    pub async fn append(&self, record: AuditRecord) -> Result<u64, StoreError> {
        self.append_with(record, Alongside::default()).await
    }

    /// Records a job claim (see [`Store::claim_job`]) and appends a record, committed
    /// together: when this returns, both are durable. Costs one commit, not two.
    pub async fn append_with(
        &self,
        record: AuditRecord,
        alongside: Alongside,
    ) -> Result<u64, StoreError> {
        let mut claimed = None;
        if let Some(job) = alongside.claim {
            let (ack, done) = oneshot::channel();
            self.ops
                .send(Op::ClaimJob { job, ack })
                .map_err(|_| StoreError::WriterGone)?;
            claimed = Some(done);
        }
        let (ack, done) = oneshot::channel();
        self.ops
            .send(Op::Append {
                record: Box::new(record),
                usage: alongside.usage,
                ack,
            })
            .map_err(|_| StoreError::WriterGone)?;
        // The writer takes operations in order, so the claim commits in the same batch as
        // the record or an earlier one; awaiting both reports either failure.
        if let Some(claimed) = claimed {
            claimed.await.map_err(|_| StoreError::WriterGone)??;
        }
        done.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Queues a record (and what goes with it) without waiting for the commit: for records
    /// that need not be durable before the caller goes on (a request's completion). Job
    /// claims are visible to [`Store::job`] and friends at once.
    pub fn enqueue(&self, record: AuditRecord, alongside: Alongside) -> Result<(), StoreError> {
        if let Some(job) = alongside.claim {
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .claims
                .insert((job.source.clone(), job.job_id.clone()), job.clone());
            let (ack, _) = oneshot::channel();
            self.ops
                .send(Op::ClaimJob { job, ack })
                .map_err(|_| StoreError::WriterGone)?;
        }
        if let Some(bytes) = alongside.usage.filter(|b| *b > 0) {
            let key = (record.identity.clone(), day_of(&record));
            *self
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .usage
                .entry(key)
                .or_default() += bytes;
        }
        let (ack, _) = oneshot::channel();
        self.ops
            .send(Op::Append {
                record: Box::new(record),
                usage: alongside.usage,
                ack,
            })
            .map_err(|_| StoreError::WriterGone)
    }

    /// Waits until everything queued so far is committed (at shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.ops
            .send(Op::Flush { ack })
            .map_err(|_| StoreError::WriterGone)?;
        done.await.map_err(|_| StoreError::WriterGone)?.map(|_| ())
    }

    fn pending_job(&self, source: &str, job_id: &str) -> Option<JobRow> {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .claims
            .get(&(source.to_string(), job_id.to_string()))
            .cloned()
    }

    /// Records (or updates) a job's owner, destination and schema durably.
    /// An existing owner is never replaced.
    pub async fn claim_job(&self, job: JobRow) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.ops
            .send(Op::ClaimJob { job, ack })
            .map_err(|_| StoreError::WriterGone)?;
        done.await.map_err(|_| StoreError::WriterGone)?.map(|_| ())
    }

    /// The job with this id on this source, if the gateway created it.
    pub fn job(&self, source: &str, job_id: &str) -> Result<Option<JobRow>, StoreError> {
        let pending = self.pending_job(source, job_id);
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached(
            "SELECT source, job_id, identity, destination, schema, row_limit FROM jobs WHERE source = ?1 AND job_id = ?2",
        )
        .and_then(|mut st| st.query_row(params![source, job_id], job_row).optional())
        .map_err(sqlite_err(&self.path))
        .map(|stored| match (stored, pending) {
            // The stored owner wins; a pending claim adds what it knows.
            (Some(s), Some(p)) => Some(JobRow {
                destination: s.destination.or(p.destination),
                schema: s.schema.or(p.schema),
                row_limit: s.row_limit.or(p.row_limit),
                ..s
            }),
            (s, p) => s.or(p),
        })
    }

    /// Whether `identity` owns a job on `source` whose destination is `table`.
    pub fn owns_destination(
        &self,
        source: &str,
        identity: &str,
        table: &str,
    ) -> Result<bool, StoreError> {
        let queued = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .claims
            .values()
            .any(|j| {
                j.source == source
                    && j.identity == identity
                    && j.destination.as_deref() == Some(table)
            });
        if queued {
            return Ok(true);
        }
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached(
            "SELECT 1 FROM jobs WHERE source = ?1 AND identity = ?2 AND destination = ?3 LIMIT 1",
        )
        .and_then(|mut st| st.exists(params![source, identity, table]))
        .map_err(sqlite_err(&self.path))
    }

    /// Bytes `identity` used on `day` (`YYYY-MM-DD`, UTC), from completed requests.
    pub fn usage(&self, identity: &str, day: &str) -> Result<u64, StoreError> {
        let queued = self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .usage
            .get(&(identity.to_string(), day.to_string()))
            .copied()
            .unwrap_or(0);
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached("SELECT bytes FROM usage WHERE identity = ?1 AND day = ?2")
            .and_then(|mut st| {
                st.query_row(params![identity, day], |r| r.get::<_, i64>(0))
                    .optional()
            })
            .map(|v| v.unwrap_or(0).max(0) as u64 + queued)
            .map_err(sqlite_err(&self.path))
    }

    /// Ids of every job `identity` owns on `source`.
    pub fn jobs_of(&self, source: &str, identity: &str) -> Result<Vec<String>, StoreError> {
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = conn
            .prepare_cached("SELECT job_id FROM jobs WHERE source = ?1 AND identity = ?2")
            .map_err(sqlite_err(&self.path))?;
        let mut ids = st
            .query_map(params![source, identity], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sqlite_err(&self.path))?;
        for j in self
            .pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .claims
            .values()
        {
            if j.source == source && j.identity == identity && !ids.contains(&j.job_id) {
                ids.push(j.job_id.clone());
            }
        }
        Ok(ids)
    }
}

/// The UTC day (`YYYY-MM-DD`) a record's usage counts for.
pub(crate) fn day_of(record: &AuditRecord) -> String {
    record.time.get(..10).unwrap_or("").to_string()
}

fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok(JobRow {
        source: r.get(0)?,
        job_id: r.get(1)?,
        identity: r.get(2)?,
        destination: r.get(3)?,
        schema: r.get(4)?,
        row_limit: r.get::<_, Option<i64>>(5)?.map(|v| v as u64),
    })
}

fn sqlite_err(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.display().to_string(),
        source,
    }
}

#[cfg(test)]
mod tests;
