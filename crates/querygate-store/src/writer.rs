//! The writer and indexer threads: group commit of audit records and job claims.
//!
//! The writer blocks for the first queued operation, takes whatever else is already
//! queued (up to [`MAX_BATCH`]), chains the records, appends the whole group to the
//! journal in one write and one `fdatasync`, and only then acknowledges each operation.
//! A failed write fails every operation in the group and leaves the chain head where it
//! was, so callers never believe an unwritten record is durable.
//!
//! The indexer writes journalled entries into SQLite in batches (once the oldest has
//! waited [`INDEX_AFTER`], when [`INDEX_BATCH`] entries wait, or on a flush) on its own
//! thread, so SQLite's page writes and checkpoints never hold up a durable append. Until
//! an entry is indexed, the claims and usage it carries stay in the pending overlay.
//! When a journal file's frames reach the zeros it was made with, the writer moves to the
//! next file, which a helper thread made ready meanwhile (making one writes and syncs
//! [`JOURNAL_SIZE`] bytes, too long to do between two groups); the indexer deletes the
//! full file after an index commit with `synchronous = FULL`.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use querygate_core::AuditRecord;
use querygate_core::audit::{Checkpoint, chain_hash};
use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::oneshot;

use crate::journal::{Entry, Journal, Lock};
use crate::{Lazy, Op, Pending, StoreError, Sync};

const MAX_BATCH: usize = 512;
/// How long a group may wait for more operations when requests are arriving concurrently.
const LINGER: Duration = Duration::from_micros(250);
/// Longest time a journalled entry waits to be indexed. Readers see journalled records
/// at once (they read the journal after SQLite), and lookups see claims and usage through
/// the pending overlay, so this only sets how large SQLite's batches get.
const INDEX_AFTER: Duration = Duration::from_millis(100);
/// Longest time a queued completion waits to be synced when nothing else syncs it.
const SYNC_AFTER: Duration = Duration::from_millis(10);
/// Entries that are indexed at once, whatever the time.
const INDEX_BATCH: usize = 2048;
/// The size journal files are made with; the writer moves on when one is full.
const JOURNAL_SIZE: u64 = 8 << 20;
/// The size of the first journal file of a run, made while the store opens (small, so
/// that opening a store writes little; the next files are made in the background).
pub(crate) const FIRST_JOURNAL_SIZE: u64 = 1 << 20;
/// How long after a failure to make the next journal file the writer tries again.
const RETRY_SPARE: Duration = Duration::from_secs(1);

pub(crate) struct Writer {
    pub(crate) store: PathBuf,
    pub(crate) journal: Journal,
    /// The number of the journal file being appended to.
    pub(crate) file: u64,
    pub(crate) sync: Sync,
    /// Chain head: the last journalled record's seq and hash.
    pub(crate) head: (u64, String),
    pub(crate) pending: Pending,
    /// Held for as long as the writer runs.
    pub(crate) lock: Lock,
    pub(crate) checkpoints: Option<crate::Checkpoints>,
    /// Records chained since the last checkpoint, and when that was.
    pub(crate) since_checkpoint: u64,
    pub(crate) last_checkpoint: Instant,
    /// The next journal file, being made on a helper thread.
    pub(crate) spare: Option<JoinHandle<std::io::Result<Journal>>>,
    /// When to try again to make the next file, after a failure.
    pub(crate) spare_retry: Option<Instant>,
}

/// What the writer hands the indexer, in journal order.
enum Index {
    Entries(Vec<Entry>),
    /// Index everything now and answer.
    Flush(oneshot::Sender<Result<u64, StoreError>>),
    /// This journal file is complete: delete it once SQLite durably holds it.
    Full(PathBuf),
}

pub(crate) fn run(mut w: Writer, ops: mpsc::Receiver<Op>, lazy: Arc<Lazy>, conn: Connection) {
    let (to_index, index_rx) = mpsc::channel();
    let store = w.store.clone();
    let pending = w.pending.clone();
    let indexer = std::thread::Builder::new()
        .name("querygate-index".into())
        .spawn(move || index_loop(conn, store, index_rx, pending));
    let indexer = match indexer {
        Ok(handle) => handle,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the audit indexer thread");
            return;
        }
    };
    w.make_spare();
    let mut last_batch = 0;
    let mut unsynced = false;
    let mut open = true;
    while open {
        // Wait for work, or until a queued completion must be synced or a checkpoint is due.
        let mut wake = [
            unsynced.then(|| Instant::now() + SYNC_AFTER),
            w.checkpoint_at(),
        ]
        .into_iter()
        .flatten()
        .min();
        // After a group that held callers waiting, their completions follow within a
        // millisecond or so: the writer then waits on a timer without announcing it, and
        // they queue without waking it (a wake per completion cost a context switch and a
        // write each, and could preempt the very task sending the response); the next
        // awaited operation or the timer takes them. Otherwise the wait is announced
        // (`park`) so that the next completion nudges the writer awake.
        let expecting = last_batch > 0;
        if expecting {
            let soon = Instant::now() + SYNC_AFTER;
            wake = Some(wake.map_or(soon, |at| at.min(soon)));
        }
        let mut timed_out = false;
        let mut batch = lazy.take();
        if batch.is_empty() && (expecting || lazy.park()) {
            let first = match wake {
                None => ops.recv().ok(),
                Some(at) => match ops.recv_timeout(at.saturating_duration_since(Instant::now())) {
                    Ok(op) => Some(op),
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        timed_out = true;
                        None
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        open = false;
                        None
                    }
                },
            };
            if !expecting {
                lazy.unpark();
            }
            if first.is_none() && wake.is_none() {
                open = false;
            }
            batch.extend(first.filter(|op| !matches!(op, Op::Nudge)));
            batch.extend(lazy.take());
            if timed_out {
                // Quiet now: the next wait is announced.
                last_batch = 0;
            }
        }
        if batch.is_empty() && !w.checkpoint_due(0) {
            if unsynced {
                unsynced = !w.sync_now();
            }
            continue;
        }
        // Under concurrency (the last group held several callers waiting), wait a moment
        // for more, so that one sync carries more requests. A lone client never waits
        // (its queued completion and claim are not callers waiting).
        let linger = (last_batch > 1).then(|| Instant::now() + LINGER);
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(Op::Nudge) => {}
                Ok(op) => batch.push(op),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => match linger {
                    Some(until) if Instant::now() < until => {
                        match ops.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(Op::Nudge) => {}
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    _ => break,
                },
            }
        }
        batch.extend(lazy.take());
        last_batch = batch.iter().filter(|op| awaited(op)).count();
        let records = batch
            .iter()
            .filter(|op| matches!(op, Op::Append { .. }))
            .count() as u64;
        if w.checkpoint_due(records) {
            batch.push(w.checkpoint_op());
        }

        let (entries, seqs, head) = w.chain(&mut batch);
        // Sync only when someone waits for durability (a decided record, a flush). Queued
        // completions ride on the next sync, or the one made when the queue goes quiet.
        // Completions the timer found have waited long enough: they are synced now.
        let sync = w.sync == Sync::Full && (timed_out || batch.iter().any(awaited));
        match w.journal.append(&entries, sync) {
            Ok(()) => {
                w.head = head;
                unsynced = w.sync == Sync::Full && !sync;
                if !entries.is_empty() {
                    let _ = to_index.send(Index::Entries(entries));
                }
                w.since_checkpoint += records;
                for (op, seq) in batch.into_iter().zip(seqs) {
                    match op {
                        Op::Flush { ack } => {
                            let _ = to_index.send(Index::Flush(ack));
                        }
                        Op::Append { record, ack, .. } if record.checkpoint.is_some() => {
                            w.checkpointed(&record);
                            let _ = ack.send(Ok(seq));
                        }
                        op => ack(op, Ok(seq)),
                    }
                }
                if w.journal.is_full() {
                    w.next_file(&to_index);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, path = %w.store.display(), "audit journal write failed");
                let failed = || StoreError::Failed {
                    path: w.store.display().to_string(),
                    message: format!("write failed: {e}"),
                };
                // Nothing of the group is journalled: release what callers held for it.
                forget_ops(&batch, &w.pending);
                for op in batch {
                    ack(op, Err(failed()));
                }
            }
        }
    }
    // Shutting down: a last checkpoint over everything written, then the indexer indexes
    // what is left, syncs SQLite and deletes the journal files; then the lock is let go.
    if w.checkpoints.is_some() && w.since_checkpoint > 0 {
        let mut batch = vec![w.checkpoint_op()];
        let (entries, _, head) = w.chain(&mut batch);
        if w.journal.append(&entries, false).is_ok() {
            w.head = head;
            let _ = to_index.send(Index::Entries(entries));
            if let Some(Op::Append { record, .. }) = batch.pop() {
                w.checkpointed(&record);
            }
        }
    }
    w.sync_now();
    let _ = to_index.send(Index::Full(w.journal.path().to_path_buf()));
    drop(to_index);
    let _ = indexer.join();
    // The spare holds nothing; recovery would delete it at the next open anyway.
    if let Some(Ok(Ok(spare))) = w.spare.take().map(JoinHandle::join) {
        let _ = std::fs::remove_file(spare.path());
    }
    drop(w.lock);
}

fn awaited(op: &Op) -> bool {
    match op {
        Op::Append { ack, .. } | Op::ClaimJob { ack, .. } | Op::Flush { ack } => !ack.is_closed(),
        Op::Nudge => false,
    }
}

fn ack(op: Op, result: Result<u64, StoreError>) {
    // A caller that stopped waiting is fine to ignore.
    let _ = match op {
        Op::Append { ack, .. } | Op::ClaimJob { ack, .. } | Op::Flush { ack } => ack.send(result),
        Op::Nudge => Ok(()),
    };
}

/// Releases the overlay entries callers held for operations that were never journalled.
fn forget_ops(batch: &[Op], pending: &Pending) {
    let mut queued = pending.lock().unwrap_or_else(|e| e.into_inner());
    for op in batch {
        match op {
            Op::ClaimJob { job, .. } => queued.release_claim(job),
            Op::Append {
                record,
                usage: Some(usage),
                ..
            } if !usage.is_zero() => {
                queued.release_usage(&record.identity, &crate::day_of(record), *usage)
            }
            _ => {}
        }
    }
}

impl Writer {
    /// Gives each record of the group its place in the chain. Returns the journal entries,
    /// each operation's result, and the head after the group (applied only once written).
    fn chain(&self, batch: &mut [Op]) -> (Vec<Entry>, Vec<u64>, (u64, String)) {
        let (mut seq, mut prev) = self.head.clone();
        let mut entries = Vec::with_capacity(batch.len());
        let mut seqs = Vec::with_capacity(batch.len());
        for op in batch.iter_mut() {
            match op {
                Op::Append { record, usage, .. } => {
                    if let (Some(cp), Some(settings)) = (&mut record.checkpoint, &self.checkpoints)
                    {
                        // A periodic checkpoint signs the head it follows; a `pruned` one
                        // signs the boundary it was given.
                        let time = crate::now_rfc3339();
                        if cp.kind == "chain" {
                            cp.seq = seq;
                            cp.head = prev.clone();
                        }
                        cp.key_id = settings.signer.key_id().to_string();
                        cp.signature = settings
                            .signer
                            .sign(&Checkpoint::message(&cp.kind, cp.seq, &cp.head, &time));
                        cp.time = time.clone();
                        record.time = time;
                    }
                    seq += 1;
                    record.seq = seq;
                    let encoded = record.canonical();
                    let hash = chain_hash(&prev, &encoded);
                    entries.push(Entry::Record {
                        seq,
                        keys: Some(crate::journal::Keys::of(record)),
                        record: encoded,
                        prev_hash: std::mem::replace(&mut prev, hash.clone()),
                        hash,
                        usage: usage
                            .filter(|u| !u.is_zero())
                            .map(|u| (record.identity.clone(), crate::day_of(record), u)),
                    });
                    seqs.push(seq);
                }
                Op::ClaimJob { job, .. } => {
                    entries.push(Entry::Claim(job.clone()));
                    seqs.push(0);
                }
                Op::Flush { .. } | Op::Nudge => seqs.push(0),
            }
        }
        (entries, seqs, (seq, prev))
    }

    /// When the next time-based checkpoint is due, if records wait for one.
    fn checkpoint_at(&self) -> Option<Instant> {
        let cp = self.checkpoints.as_ref()?;
        (self.since_checkpoint > 0).then(|| self.last_checkpoint + cp.interval)
    }

    /// Whether a checkpoint is due after `more` records are added.
    fn checkpoint_due(&self, more: u64) -> bool {
        let Some(cp) = &self.checkpoints else {
            return false;
        };
        let since = self.since_checkpoint + more;
        since > 0 && (since >= cp.every || self.last_checkpoint.elapsed() >= cp.interval)
    }

    /// A checkpoint record to chain; [`Writer::chain`] fills in and signs what it covers.
    fn checkpoint_op(&self) -> Op {
        let mut record = AuditRecord::default_for("audit.checkpoint", "querygate");
        record.kind = Some("gateway".into());
        record.decision = "allow".into();
        record.request_id = "checkpoint".into();
        record.checkpoint = Some(Checkpoint {
            kind: "chain".into(),
            seq: 0,
            head: String::new(),
            time: String::new(),
            key_id: String::new(),
            signature: String::new(),
        });
        let (ack, _) = oneshot::channel();
        Op::Append {
            record: Box::new(record),
            usage: None,
            ack,
        }
    }

    /// After a checkpoint record is journalled: count from zero, and copy it to the
    /// checkpoint file kept apart from the store, if one is configured.
    fn checkpointed(&mut self, record: &AuditRecord) {
        let (Some(cp), Some(settings)) = (&record.checkpoint, &self.checkpoints) else {
            return;
        };
        if cp.kind == "chain" {
            self.since_checkpoint = 0;
            self.last_checkpoint = Instant::now();
        }
        if let Some(path) = &settings.file {
            let line = serde_json::json!({
                "kind": cp.kind, "seq": cp.seq, "head": cp.head, "time": cp.time,
                "key_id": cp.key_id, "signature": cp.signature,
                "public_key": settings.signer.public_key_hex(),
            });
            let written = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|mut f| {
                    use std::io::Write;
                    f.write_all(format!("{line}\n").as_bytes())?;
                    f.sync_data()
                });
            if let Err(e) = written {
                tracing::error!(error = %e, path = %path.display(), "cannot write the checkpoint file");
            }
        }
    }

    /// Syncs queued completions; `true` when done.
    fn sync_now(&self) -> bool {
        match self.journal.sync() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, path = %self.store.display(), "cannot sync the audit journal");
                false
            }
        }
    }

    /// Starts making the next journal file on a helper thread.
    fn make_spare(&mut self) {
        let (store, n) = (self.store.clone(), self.file + 1);
        let made = std::thread::Builder::new()
            .name("querygate-journal".into())
            .spawn(move || Journal::create(&store, n, JOURNAL_SIZE));
        match made {
            Ok(handle) => self.spare = Some(handle),
            Err(e) => self.spare_failed(&e),
        }
    }

    fn spare_failed(&mut self, e: &dyn std::fmt::Display) {
        tracing::error!(error = %e, path = %self.store.display(), "cannot make the next audit journal file; the current one grows meanwhile");
        self.spare_retry = Some(Instant::now() + RETRY_SPARE);
    }

    /// Moves to the next journal file once it is made, and hands the full one to the
    /// indexer. Until then (or after a failure to make it) groups go on extending the
    /// current file: slower to sync, never refused.
    fn next_file(&mut self, to_index: &mpsc::Sender<Index>) {
        let Some(spare) = self.spare.take() else {
            if self.spare_retry.is_none_or(|at| Instant::now() >= at) {
                self.spare_retry = None;
                self.make_spare();
            }
            return;
        };
        if !spare.is_finished() {
            self.spare = Some(spare);
            return;
        }
        match spare.join() {
            Ok(Ok(next)) => {
                self.sync_now();
                let full = std::mem::replace(&mut self.journal, next);
                self.file += 1;
                let _ = to_index.send(Index::Full(full.path().to_path_buf()));
                self.make_spare();
            }
            Ok(Err(e)) => self.spare_failed(&e),
            Err(_) => self.spare_failed(&"the thread making it panicked"),
        }
    }
}

/// The indexer's state: entries journalled but not yet in SQLite, since when the oldest
/// waits, and full journal files to delete once SQLite holds them durably.
struct Indexer {
    conn: Connection,
    store: PathBuf,
    pending: Pending,
    waiting: Vec<Entry>,
    oldest: Option<Instant>,
    full: Vec<PathBuf>,
}

/// The indexer: journalled entries into SQLite, in batches.
fn index_loop(conn: Connection, store: PathBuf, rx: mpsc::Receiver<Index>, pending: Pending) {
    // Indexing is background work: at the lowest priority, it takes no CPU from requests
    // on a busy machine (a tail-latency measure; on failure it only runs at normal priority).
    if let Err(e) = rustix::process::setpriority_process(
        rustix::process::Pid::from_raw(rustix::thread::gettid().as_raw_nonzero().get()),
        19,
    ) {
        tracing::debug!(error = %e, "cannot lower the indexer's priority");
    }
    let mut ix = Indexer {
        conn,
        store,
        pending,
        waiting: Vec::new(),
        oldest: None,
        full: Vec::new(),
    };
    // Idle, the indexer blocks on the channel. Once entries wait, it sleeps until they are
    // due and then takes everything queued meanwhile: a sleeping thread is not woken by each
    // send (on a busy gateway that was a futex wake and a context switch per group commit).
    let mut open = true;
    while open {
        let mut flushes = Vec::new();
        match ix.oldest {
            None => match rx.recv() {
                Ok(msg) => ix.take(msg, &mut flushes),
                Err(_) => break,
            },
            Some(t) => {
                std::thread::sleep((t + INDEX_AFTER).saturating_duration_since(Instant::now()))
            }
        }
        loop {
            match rx.try_recv() {
                Ok(msg) => ix.take(msg, &mut flushes),
                Err(mpsc::TryRecvError::Empty) => break,
                Err(mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        let due = ix.oldest.is_some_and(|t| t.elapsed() >= INDEX_AFTER);
        if due || !flushes.is_empty() || !ix.full.is_empty() || ix.waiting.len() >= INDEX_BATCH {
            let result = ix.index();
            for ack in flushes {
                let _ =
                    ack.send(
                        result
                            .clone()
                            .map(|()| 0)
                            .map_err(|message| StoreError::Failed {
                                path: ix.store.display().to_string(),
                                message,
                            }),
                    );
            }
        }
    }
    let _ = ix.index();
}

impl Indexer {
    /// Takes one message in (indexing happens after the queue is drained).
    fn take(&mut self, msg: Index, flushes: &mut Vec<oneshot::Sender<Result<u64, StoreError>>>) {
        match msg {
            Index::Entries(entries) => {
                self.waiting.extend(entries);
                self.oldest.get_or_insert_with(Instant::now);
            }
            Index::Flush(ack) => flushes.push(ack),
            Index::Full(path) => self.full.push(path),
        }
    }

    /// Writes waiting entries into SQLite and takes them out of the pending overlay. With
    /// full journal files to delete, syncs SQLite's files first. On failure the entries
    /// stay waiting (they are durable in the journal) and are retried.
    fn index(&mut self) -> Result<(), String> {
        if self.waiting.is_empty() && self.full.is_empty() {
            self.oldest = None;
            return Ok(());
        }
        let result = insert(&mut self.conn, &self.waiting).map_err(|e| e.to_string());
        let result = match result {
            Ok(()) if !self.full.is_empty() => settle(&self.store),
            r => r,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, path = %self.store.display(), "indexing the audit journal failed; will retry");
            self.oldest = Some(Instant::now());
            return Err(format!("indexing failed: {e}"));
        }
        let mut queued = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        for e in &self.waiting {
            match e {
                Entry::Claim(job) => queued.release_claim(job),
                Entry::Record {
                    usage: Some((identity, day, usage)),
                    ..
                } => queued.release_usage(identity, day, *usage),
                Entry::Record { .. } => {}
            }
        }
        drop(queued);
        self.waiting.clear();
        self.oldest = None;
        for path in self.full.drain(..) {
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!(error = %e, path = %path.display(), "cannot delete an indexed audit journal file");
            }
        }
        Ok(())
    }
}

/// Syncs SQLite's database and WAL files: every commit so far is then on disk, whatever
/// `synchronous` each was made with.
pub(crate) fn settle(store: &Path) -> Result<(), String> {
    for suffix in ["", "-wal"] {
        let mut name = store.as_os_str().to_owned();
        name.push(suffix);
        match std::fs::File::open(&name).and_then(|f| f.sync_all()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(format!(
                    "cannot sync {}: {e}",
                    PathBuf::from(name).display()
                ));
            }
        }
    }
    Ok(())
}

/// Indexes entries in one transaction.
pub(crate) fn insert(conn: &mut Connection, entries: &[Entry]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut record = tx.prepare_cached(
            "INSERT INTO audit_log (seq, record, prev_hash, hash, time, identity, ticket)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        let mut claim = tx.prepare_cached(
            "INSERT INTO jobs (source, job_id, identity, destination, schema, row_limit, sensitive)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (source, job_id) DO UPDATE SET
                destination = COALESCE(excluded.destination, jobs.destination),
                schema = COALESCE(excluded.schema, jobs.schema),
                row_limit = COALESCE(jobs.row_limit, excluded.row_limit),
                sensitive = MAX(COALESCE(jobs.sensitive, 0), excluded.sensitive)",
        )?;
        let mut spend = tx.prepare_cached(
            "INSERT INTO usage (identity, day, bytes, rows) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (identity, day) DO UPDATE SET
                bytes = usage.bytes + excluded.bytes, rows = usage.rows + excluded.rows",
        )?;
        for e in entries {
            match e {
                Entry::Record {
                    seq,
                    record: encoded,
                    prev_hash,
                    hash,
                    usage,
                    keys,
                } => {
                    if let Some((identity, day, usage)) = usage {
                        spend.execute(params![
                            identity,
                            day,
                            usage.bytes as i64,
                            usage.rows as i64
                        ])?;
                    }
                    let keys = match keys {
                        Some(keys) => Cow::Borrowed(keys),
                        None => Cow::Owned(crate::journal::Keys::of_text(encoded)),
                    };
                    record.execute(params![
                        *seq as i64,
                        encoded,
                        prev_hash,
                        hash,
                        keys.time,
                        keys.identity,
                        keys.ticket
                    ])?;
                }
                Entry::Claim(job) => {
                    claim.execute(params![
                        job.source,
                        job.job_id,
                        job.identity,
                        job.destination,
                        job.schema,
                        job.row_limit.map(|v| v as i64),
                        i64::from(job.sensitive)
                    ])?;
                }
            }
        }
    }
    tx.commit()
}
