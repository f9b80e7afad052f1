//! The store: the audit chain, job ownership, usage and stored API keys, in one SQLite
//! file (WAL) and its journal.
//!
//! Writes go through one writer thread that appends whatever is queued to the journal in
//! one write and one `fdatasync` (group commit), so a returned `append` means the record
//! is on disk; SQLite indexes journalled entries a few milliseconds later (see
//! [`writer`]). One gateway process writes a store: the journal's file lock refuses a
//! second. Reads use their own connection and never wait for the writer; what is
//! journalled but not yet indexed is visible to lookups through the pending overlay.
//! Session recordings have their own thread and table (`recordings.rs`).
//! This crate knows nothing of HTTP, policy or SQL.

mod journal;
mod keys;
mod reader;
mod recordings;
mod schema;
pub mod signing;
mod tickets;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use querygate_core::{AuditRecord, Usage};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::oneshot;

pub use keys::{KeyAdmin, MIN_PREFIX, RevokeOutcome, StoredKey};
pub use reader::{AuditFilter, Reader, StoredRecord, VerifyOptions, VerifyReport};
pub use recordings::{
    Attachment, Capture, Recorder, RecorderOptions, RecordingReader, SessionFilter, SessionSummary,
};
pub use schema::Sync;
pub use tickets::{TicketFilter, Undecidable, Verdict};

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

/// A time that `--since`/`--until` or the admin API's `since` cannot read (as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("{0:?} is not a time: use 30s, 15m, 1h, 7d or RFC 3339")]
    NotATime(String),
    #[error("{0:?} is too far back: use 30s, 15m, 1h, 7d or RFC 3339")]
    TooFarBack(String),
}

/// Why the journal left by the last run could not be indexed at start.
#[derive(Debug, thiserror::Error)]
enum RecoveryError {
    /// Reading the chain head, the journal, or indexing it failed (the cause's message).
    #[error("{0}")]
    Index(String),
    #[error(
        "record {record} does not continue the chain at {head}; run `querygate audit verify` \
         and keep this file for inspection"
    )]
    ChainBreak { record: u64, head: u64 },
    /// Syncing SQLite before the journal files are deleted (the writer's message).
    #[error("{0}")]
    Settle(String),
    #[error("{}: {error}", path.display())]
    Remove {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// A job created through the gateway, and who owns it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
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
    /// The job's query reads columns masked for its owner (in filters its policy allows):
    /// error messages of the job are withheld, as they could echo masked values.
    pub sensitive: bool,
}

/// Signed checkpoints of the chain (see [`signing`]): one every `every` records or
/// `interval`, whichever comes first (and at a clean stop), also appended to `file`, which
/// should live apart from the store.
#[derive(Debug)]
pub struct Checkpoints {
    pub signer: signing::Signer,
    pub every: u64,
    pub interval: Duration,
    pub file: Option<PathBuf>,
}

/// How to open a store.
#[derive(Debug, Default)]
pub struct Options {
    pub sync: Sync,
    pub checkpoints: Option<Checkpoints>,
}

/// What else to commit together with an audit record.
#[derive(Debug, Clone, Default)]
pub struct Alongside {
    /// A job to claim for its owner (see [`Store::claim_job`]).
    pub claim: Option<JobRow>,
    /// What to add to the record's identity's usage for the record's day.
    pub usage: Option<Usage>,
}

/// What is queued or journalled but not yet indexed in SQLite, so lookups see it at once.
#[derive(Debug, Default)]
struct Queued {
    /// Job claims by (source, job id), merged as SQLite merges them, with how many
    /// claims of the job are still to be indexed.
    claims: HashMap<(String, String), (JobRow, u32)>,
    /// Usage by (identity, day).
    usage: HashMap<(String, String), Usage>,
}

impl Queued {
    fn hold_claim(&mut self, job: &JobRow) {
        let key = (job.source.clone(), job.job_id.clone());
        match self.claims.get_mut(&key) {
            // The first owner stays; later claims add what they know.
            Some((held, n)) => {
                held.destination = job.destination.clone().or(held.destination.take());
                held.schema = job.schema.clone().or(held.schema.take());
                held.row_limit = held.row_limit.or(job.row_limit);
                held.sensitive |= job.sensitive;
                *n += 1;
            }
            None => {
                self.claims.insert(key, (job.clone(), 1));
            }
        }
    }

    fn release_claim(&mut self, job: &JobRow) {
        let key = (job.source.clone(), job.job_id.clone());
        if let Some((_, n)) = self.claims.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.claims.remove(&key);
            }
        }
    }

    fn hold_usage(&mut self, identity: &str, day: String, usage: Usage) {
        let held = self.usage.entry((identity.to_string(), day)).or_default();
        *held = held.plus(usage);
    }

    fn release_usage(&mut self, identity: &str, day: &str, usage: Usage) {
        let key = (identity.to_string(), day.to_string());
        if let Some(v) = self.usage.get_mut(&key) {
            *v = v.minus(usage);
            if v.is_zero() {
                self.usage.remove(&key);
            }
        }
    }
}

type Pending = Arc<Mutex<Queued>>;

enum Op {
    /// Acknowledged once everything queued before it is committed.
    Flush {
        ack: oneshot::Sender<Result<u64, StoreError>>,
    },
    Append {
        record: Box<AuditRecord>,
        usage: Option<Usage>,
        ack: oneshot::Sender<Result<u64, StoreError>>,
    },
    ClaimJob {
        job: JobRow,
        ack: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// Wakes a parked writer to take the lazy queue; nothing else.
    Nudge,
}

/// Operations nobody waits for (a request's completion and its job claim). They do not
/// wake the writer one by one: it takes them whenever it wakes for an awaited operation or
/// its sync timer, and is nudged only when it was parked with nothing to do.
#[derive(Default)]
pub(crate) struct Lazy {
    ops: Mutex<Vec<Op>>,
    /// Set by the writer just before it blocks with nothing to do.
    parked: std::sync::atomic::AtomicBool,
}

impl Lazy {
    /// What is queued (in order), leaving the queue empty.
    pub(crate) fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.ops.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The writer is about to block: `false` when work is already queued (then it must not).
    pub(crate) fn park(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        self.parked.store(true, SeqCst);
        if self
            .ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
        {
            true
        } else {
            self.parked.store(false, SeqCst);
            false
        }
    }

    pub(crate) fn unpark(&self) {
        self.parked
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Handle to the store used by a running gateway. Cheap to share behind an `Arc`.
pub struct Store {
    path: PathBuf,
    ops: Mutex<Option<mpsc::Sender<Op>>>,
    lazy: Arc<Lazy>,
    reads: Mutex<Connection>,
    /// Approval tickets: few writes, each synced (see `tickets`).
    tickets: Mutex<Connection>,
    pending: Pending,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Whether checkpoints are signed (pruning needs it).
    signing: bool,
}

impl Drop for Store {
    /// Lets the writer index what is left and empty the journal before the file is let go.
    fn drop(&mut self) {
        self.close();
    }
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
        Store::open_with_options(
            path,
            Options {
                sync,
                checkpoints: None,
            },
        )
    }

    /// Opens the store with durability and signed checkpoints as configured.
    pub fn open_with_options(path: &Path, options: Options) -> Result<Store, StoreError> {
        Store::start(path, options, |store, n| {
            journal::Journal::create(store, n, writer::FIRST_JOURNAL_SIZE)
        })
    }

    /// Opens the store, appending to the journal file `journal` opens (tests put a
    /// device that is always full there).
    fn start(
        path: &Path,
        options: Options,
        journal: impl FnOnce(&Path, u64) -> std::io::Result<journal::Journal>,
    ) -> Result<Store, StoreError> {
        let err = sqlite_err(path);
        let failed = |message: String| StoreError::Failed {
            path: path.display().to_string(),
            message,
        };
        let lock =
            journal::Lock::take(path, Duration::from_secs(2)).map_err(|e| failed(e.to_string()))?;
        // SQLite is an index of the journal: its commits need not sync (see writer).
        let mut conn = schema::open(path, Sync::Normal).map_err(&err)?;
        let reads = schema::open(path, Sync::Normal).map_err(&err)?;
        let tickets = schema::open(path, Sync::Full).map_err(&err)?;
        let (head, file) = recover(&mut conn, path).map_err(|e| failed(format!("journal: {e}")))?;
        let journal =
            journal(path, file).map_err(|e| failed(format!("cannot create the journal: {e}")))?;
        let (tx, rx) = mpsc::channel();
        let lazy: Arc<Lazy> = Arc::default();
        let pending: Pending = Arc::default();
        let signing = options.checkpoints.is_some();
        let w = writer::Writer {
            store: path.to_path_buf(),
            journal,
            file,
            sync: options.sync,
            head,
            pending: pending.clone(),
            lock,
            checkpoints: options.checkpoints,
            since_checkpoint: 0,
            last_checkpoint: std::time::Instant::now(),
            spare: None,
            spare_retry: None,
        };
        let writer = std::thread::Builder::new()
            .name("querygate-store".into())
            .spawn({
                let lazy = lazy.clone();
                move || writer::run(w, rx, lazy, conn)
            })
            .map_err(|e| failed(format!("cannot start writer thread: {e}")))?;
        Ok(Store {
            path: path.to_path_buf(),
            ops: Mutex::new(Some(tx)),
            lazy,
            reads: Mutex::new(reads),
            tickets: Mutex::new(tickets),
            pending,
            writer: Mutex::new(Some(writer)),
            signing,
        })
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.ops
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .ok_or(StoreError::WriterGone)?
            .send(op)
            .map_err(|_| StoreError::WriterGone)
    }

    /// Stops writing: what is queued is journalled and indexed, the journal is emptied
    /// and the store's lock let go. Every later write fails (and so its request is
    /// refused). Blocks until the writer has finished.
    pub fn close(&self) {
        self.ops.lock().unwrap_or_else(|e| e.into_inner()).take();
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = writer {
            let _ = w.join();
        }
    }

    fn queued(&self) -> std::sync::MutexGuard<'_, Queued> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds a record's claim and usage in the overlay until the writer indexes them.
    fn hold(&self, record: &AuditRecord, alongside: &Alongside) {
        let mut queued = self.queued();
        if let Some(job) = &alongside.claim {
            queued.hold_claim(job);
        }
        if let Some(usage) = alongside.usage.filter(|u| !u.is_zero()) {
            queued.hold_usage(&record.identity, day_of(record), usage);
        }
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
        self.hold(&record, &alongside);
        // What was queued before this record (a connection's previous completion) goes to
        // the writer first: records of one caller are chained in the order it made them.
        for earlier in self.lazy.take() {
            self.send(earlier)?;
        }
        let mut claimed = None;
        if let Some(job) = alongside.claim {
            let (ack, done) = oneshot::channel();
            self.send(Op::ClaimJob { job, ack })?;
            claimed = Some(done);
        }
        let (ack, done) = oneshot::channel();
        self.send(Op::Append {
            record: Box::new(record),
            usage: alongside.usage,
            ack,
        })?;
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
        // Refused once the store is closed, as a send would be.
        let ops = self.ops.lock().unwrap_or_else(|e| e.into_inner());
        let Some(tx) = ops.as_ref() else {
            return Err(StoreError::WriterGone);
        };
        self.hold(&record, &alongside);
        {
            let mut lazy = self.lazy.ops.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(job) = alongside.claim {
                let (ack, _) = oneshot::channel();
                lazy.push(Op::ClaimJob { job, ack });
            }
            let (ack, _) = oneshot::channel();
            lazy.push(Op::Append {
                record: Box::new(record),
                usage: alongside.usage,
                ack,
            });
        }
        if self
            .lazy
            .parked
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            tx.send(Op::Nudge).map_err(|_| StoreError::WriterGone)?;
        }
        Ok(())
    }

    /// Retention: deletes the records older than `cutoff` (an audit time, RFC 3339 UTC),
    /// after appending a signed `audit.prune` record that vouches for the hash of the last
    /// one deleted, so the rest of the chain still verifies. Returns how many records were
    /// deleted and up to which seq, or `None` when nothing is that old.
    pub async fn prune_before(&self, cutoff: &str) -> Result<Option<(u64, u64)>, StoreError> {
        if !self.signing {
            return Err(StoreError::Failed {
                path: self.path.display().to_string(),
                message: "pruning needs signed checkpoints ([audit] signing)".into(),
            });
        }
        self.flush().await?;
        let err = sqlite_err(&self.path);
        // Records are appended in time order (to within the group-commit window), so a
        // binary search over seq finds the boundary without parsing every record.
        let (first, boundary, head) = {
            let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
            let bounds: (Option<i64>, Option<i64>) = conn
                .query_row("SELECT min(seq), max(seq) FROM audit_log", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(&err)?;
            let (Some(lo), Some(hi)) = bounds else {
                return Ok(None);
            };
            let time_of = |seq: i64| -> Result<String, StoreError> {
                conn.query_row("SELECT time FROM audit_log WHERE seq = ?1", [seq], |r| {
                    r.get::<_, String>(0)
                })
                .map_err(&err)
            };
            // The last seq whose time is before the cutoff.
            let (mut a, mut b) = (lo - 1, hi);
            while a < b {
                let mid = a + (b - a + 1) / 2;
                if time_of(mid)?.as_str() < cutoff {
                    a = mid;
                } else {
                    b = mid - 1;
                }
            }
            if a < lo {
                return Ok(None);
            }
            let head: String = conn
                .query_row("SELECT hash FROM audit_log WHERE seq = ?1", [a], |r| {
                    r.get(0)
                })
                .map_err(&err)?;
            (lo as u64, a as u64, head)
        };
        let mut record = AuditRecord::default_for("audit.prune", "querygate");
        record.kind = Some("gateway".into());
        record.decision = "allow".into();
        record.request_id = format!("prune-{boundary}");
        record.reason = Some(format!(
            "retention: records {first}..={boundary}, older than {cutoff}, deleted"
        ));
        record.checkpoint = Some(querygate_core::audit::Checkpoint {
            kind: "pruned".into(),
            seq: boundary,
            head,
            time: String::new(),
            key_id: String::new(),
            signature: String::new(),
        });
        self.append(record).await?;
        self.flush().await?;
        let conn = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE;
             DROP TRIGGER IF EXISTS audit_no_delete;
             DELETE FROM audit_log WHERE seq <= {boundary};
             CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit_log
                 BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END;
             COMMIT;"
        ))
        .map_err(&err)?;
        Ok(Some((boundary - first + 1, boundary)))
    }

    /// The last seq a sink has acknowledged (0: none).
    pub fn export_cursor(&self, sink: &str) -> Result<u64, StoreError> {
        let conn = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        conn.query_row(
            "SELECT seq FROM export_cursor WHERE sink = ?1",
            [sink],
            |r| r.get::<_, i64>(0),
        )
        .optional()
        .map(|v| v.unwrap_or(0).max(0) as u64)
        .map_err(sqlite_err(&self.path))
    }

    /// Records that a sink has everything up to `seq`, durably (synced).
    pub fn set_export_cursor(&self, sink: &str, seq: u64) -> Result<(), StoreError> {
        let conn = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "INSERT INTO export_cursor (sink, seq) VALUES (?1, ?2)
             ON CONFLICT (sink) DO UPDATE SET seq = excluded.seq",
            params![sink, seq as i64],
        )
        .map(|_| ())
        .map_err(sqlite_err(&self.path))
    }

    /// Up to `limit` indexed records after `seq`, in chain order, as stored.
    pub fn records_after(&self, seq: u64, limit: usize) -> Result<Vec<StoredRecord>, StoreError> {
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = conn
            .prepare_cached(
                "SELECT seq, record, prev_hash, hash FROM audit_log WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )
            .map_err(sqlite_err(&self.path))?;
        let rows = st
            .query_map(params![seq as i64, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                ))
            })
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sqlite_err(&self.path))?;
        rows.into_iter()
            .map(|(seq, text, prev_hash, hash)| {
                serde_json::from_str(&text)
                    .map(|record| StoredRecord {
                        record,
                        prev_hash,
                        hash,
                    })
                    .map_err(|e| StoreError::Failed {
                        path: self.path.display().to_string(),
                        message: format!("record {seq} is not a valid audit record: {e}"),
                    })
            })
            .collect()
    }

    /// Waits until everything queued so far is durable and indexed (readers see it).
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.send(Op::Flush { ack })?;
        done.await.map_err(|_| StoreError::WriterGone)?.map(|_| ())
    }

    fn pending_job(&self, source: &str, job_id: &str) -> Option<JobRow> {
        self.queued()
            .claims
            .get(&(source.to_string(), job_id.to_string()))
            .map(|(job, _)| job.clone())
    }

    /// Records (or updates) a job's owner, destination and schema durably.
    /// An existing owner is never replaced.
    pub async fn claim_job(&self, job: JobRow) -> Result<(), StoreError> {
        self.queued().hold_claim(&job);
        let (ack, done) = oneshot::channel();
        self.send(Op::ClaimJob { job, ack })?;
        done.await.map_err(|_| StoreError::WriterGone)?.map(|_| ())
    }

    /// The job with this id on this source, if the gateway created it.
    pub fn job(&self, source: &str, job_id: &str) -> Result<Option<JobRow>, StoreError> {
        let pending = self.pending_job(source, job_id);
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached(
            "SELECT source, job_id, identity, destination, schema, row_limit, sensitive FROM jobs WHERE source = ?1 AND job_id = ?2",
        )
        .and_then(|mut st| st.query_row(params![source, job_id], job_row).optional())
        .map_err(sqlite_err(&self.path))
        .map(|stored| match (stored, pending) {
            // The stored owner wins; a pending claim adds what it knows.
            (Some(s), Some(p)) => Some(JobRow {
                destination: s.destination.or(p.destination),
                schema: s.schema.or(p.schema),
                row_limit: s.row_limit.or(p.row_limit),
                sensitive: s.sensitive || p.sensitive,
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
        let queued = self.queued().claims.values().any(|(j, _)| {
            j.source == source && j.identity == identity && j.destination.as_deref() == Some(table)
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

    /// What `identity` used on `day` (`YYYY-MM-DD`, UTC), from completed requests.
    pub fn usage(&self, identity: &str, day: &str) -> Result<Usage, StoreError> {
        let queued = self
            .queued()
            .usage
            .get(&(identity.to_string(), day.to_string()))
            .copied()
            .unwrap_or_default();
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached("SELECT bytes, rows FROM usage WHERE identity = ?1 AND day = ?2")
            .and_then(|mut st| {
                st.query_row(params![identity, day], |r| {
                    Ok(Usage {
                        bytes: r.get::<_, i64>(0)?.max(0) as u64,
                        rows: r.get::<_, i64>(1)?.max(0) as u64,
                    })
                })
                .optional()
            })
            .map(|v| v.unwrap_or_default().plus(queued))
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
        for (j, _) in self.queued().claims.values() {
            if j.source == source && j.identity == identity && !ids.contains(&j.job_id) {
                ids.push(j.job_id.clone());
            }
        }
        Ok(ids)
    }
}

/// Indexes what the journal holds beyond SQLite (the gateway stopped before indexing it),
/// syncs SQLite and deletes the journal files. Returns the chain head and the number of
/// the next journal file.
fn recover(conn: &mut Connection, store: &Path) -> Result<((u64, String), u64), RecoveryError> {
    let index = |e: &dyn std::fmt::Display| RecoveryError::Index(e.to_string());
    let head: Option<(i64, String)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(|e| index(&e))?;
    let (mut seq, mut hash) = head
        .map_or((0, querygate_core::audit::GENESIS.to_string()), |(s, h)| {
            (s as u64, h)
        });
    let files = journal::files(store).map_err(|e| index(&e))?;
    let entries = journal::read(store).map_err(|e| index(&e))?;
    let mut replay = Vec::new();
    for entry in entries {
        match &entry {
            journal::Entry::Record { seq: s, .. } if *s <= seq => continue,
            journal::Entry::Record {
                seq: s,
                prev_hash,
                hash: h,
                ..
            } => {
                if *s != seq + 1 || *prev_hash != hash {
                    return Err(RecoveryError::ChainBreak {
                        record: *s,
                        head: seq,
                    });
                }
                seq = *s;
                hash = h.clone();
            }
            journal::Entry::Claim(_) => {}
        }
        replay.push(entry);
    }
    if !replay.is_empty() {
        tracing::info!(
            entries = replay.len(),
            "indexing audit journal entries left by the last run"
        );
        writer::insert(conn, &replay).map_err(|e| index(&e))?;
    }
    writer::settle(store).map_err(RecoveryError::Settle)?;
    for (_, path) in &files {
        std::fs::remove_file(path).map_err(|error| RecoveryError::Remove {
            path: path.clone(),
            error,
        })?;
    }
    let next = files.last().map_or(1, |(n, _)| n + 1);
    Ok(((seq, hash), next))
}

/// A time as the audit log writes it: RFC 3339 UTC with exactly six fractional digits
/// (`2026-11-27T10:00:00.000000Z`), so that times sort as strings.
pub fn audit_time(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// `90s`, `15m`, `1h`, `7d` before `now`, or an RFC 3339 time, as the audit log writes
/// times ([`audit_time`]): how `--since`/`--until` and the admin API's `since` read a time.
pub fn point_in_time(text: &str, now: time::OffsetDateTime) -> Result<String, TimeError> {
    use time::{Duration, OffsetDateTime, format_description::well_known::Rfc3339};
    if let Ok(t) = OffsetDateTime::parse(text, &Rfc3339) {
        return Ok(audit_time(t));
    }
    let not_a_time = || TimeError::NotATime(text.to_string());
    let (num, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: i64 = num.parse().map_err(|_| not_a_time())?;
    let seconds_per = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(not_a_time()),
    };
    // Checked: `since=99999999999d` arrives from the admin API, and time's arithmetic panics.
    n.checked_mul(seconds_per)
        .and_then(|s| now.checked_sub(Duration::seconds(s)))
        .map(audit_time)
        .ok_or_else(|| TimeError::TooFarBack(text.to_string()))
}

/// Where the signing key lives unless configured: beside the store, `<store>.key`.
pub fn default_key_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

pub(crate) fn now_rfc3339() -> String {
    audit_time(time::OffsetDateTime::now_utc())
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
        sensitive: r.get::<_, Option<i64>>(6)?.unwrap_or(0) != 0,
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
