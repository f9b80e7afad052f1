//! Session recordings in the store: events buffered per session and appended as
//! zstd-compressed segments to the `recordings` table, on the recorder's own thread.
//!
//! The pipeline hands each event over with [`Recorder::record`], which never blocks and
//! never fails a request: the queue is bounded, and an event that does not fit (or a
//! segment that cannot be written) is logged and dropped. The recorder thread keeps one
//! buffer per (session, identity) and writes it as one segment (JSON Lines, zstd level 3)
//! once its first event has waited [`RecorderOptions::flush_after`] (250 ms), once it holds
//! [`RecorderOptions::segment_bytes`] (256 KiB), and at a clean stop. A crash therefore loses
//! at most the events of the last quarter second; the audit log, not the recording, is
//! the durable account of decisions. Response bodies are cut to the configured size, and
//! their SHA-256 over the whole body is taken, on this thread, not on the request's.
//!
//! Segments are committed with `synchronous = NORMAL` (they survive a crash of the
//! gateway, not of the machine). [`RecordingReader`] reads them back for `querygate
//! sessions` without changing the file. This module knows nothing of HTTP, SQL or policy.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use querygate_core::recording::{Event, EventKind};
use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::{StoreError, schema, sqlite_err};

const TABLE: &str = "
CREATE TABLE IF NOT EXISTS recordings (
    session_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    identity   TEXT NOT NULL,
    first_time TEXT NOT NULL,
    last_time  TEXT NOT NULL,
    events     INTEGER NOT NULL,
    requests   INTEGER NOT NULL,
    raw_bytes  INTEGER NOT NULL,
    data       BLOB NOT NULL,
    PRIMARY KEY (session_id, seq)
);
CREATE INDEX IF NOT EXISTS recordings_by_time ON recordings (last_time);
CREATE INDEX IF NOT EXISTS recordings_by_identity ON recordings (identity, last_time);
";

/// zstd level: fast, and JSON compresses well at it.
const LEVEL: i32 = 3;
/// The largest segment read back (decompressed): a guard against a corrupt size.
const MAX_SEGMENT: u64 = 1 << 30;
/// Buffers of sessions quiet this long are forgotten (the next segment asks the table
/// for its sequence number again).
const FORGET_AFTER: Duration = Duration::from_secs(35 * 60);

/// When the recorder writes a segment.
#[derive(Debug, Clone, Copy)]
pub struct RecorderOptions {
    /// A session's buffer is written once its oldest event has waited this long.
    pub flush_after: Duration,
    /// A session's buffer is written once it holds this many bytes of JSON.
    pub segment_bytes: usize,
    /// Events waiting for the recorder thread; more are dropped (and counted).
    pub queue: usize,
}

impl Default for RecorderOptions {
    fn default() -> Self {
        RecorderOptions {
            flush_after: Duration::from_millis(250),
            segment_bytes: 256 << 10,
            queue: 65_536,
        }
    }
}

/// A response body to attach to a response event: the whole body as returned to the
/// client (a cheap reference-counted handle), kept up to `limit` bytes.
#[derive(Debug, Clone)]
pub struct Attachment {
    pub body: Bytes,
    pub limit: usize,
}

/// One event to record, with where it belongs.
#[derive(Debug, Clone)]
pub struct Capture {
    pub session: String,
    /// Who made the request (segments are per session and identity).
    pub identity: String,
    pub event: Event,
    /// For response events: the body, digested and cut on the recorder thread.
    pub attachment: Option<Attachment>,
}

enum Msg {
    Event(Box<Capture>),
    /// Write every buffer now and answer.
    Flush(mpsc::Sender<()>),
}

/// The running recorder: a thread that writes segments, and a connection to read them.
pub struct Recorder {
    path: PathBuf,
    tx: Mutex<Option<mpsc::SyncSender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    reads: Mutex<Connection>,
    dropped: AtomicU64,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("path", &self.path)
            .finish()
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.close();
    }
}

impl Recorder {
    /// Starts recording into the store at `path` (creating the table if needed).
    pub fn start(path: &Path, options: RecorderOptions) -> Result<Recorder, StoreError> {
        let err = sqlite_err(path);
        let conn = schema::open(path, crate::Sync::Normal).map_err(&err)?;
        conn.execute_batch(TABLE).map_err(&err)?;
        let reads = schema::open(path, crate::Sync::Normal).map_err(&err)?;
        let (tx, rx) = mpsc::sync_channel(options.queue.max(1));
        let store = path.to_path_buf();
        let thread = std::thread::Builder::new()
            .name("querygate-recorder".into())
            .spawn(move || Writer::new(conn, store, options).run(rx))
            .map_err(|e| StoreError::Failed {
                path: path.display().to_string(),
                message: format!("cannot start the recorder thread: {e}"),
            })?;
        Ok(Recorder {
            path: path.to_path_buf(),
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            reads: Mutex::new(reads),
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues an event. Never blocks: when the queue is full (or the recorder stopped)
    /// the event is dropped and counted.
    pub fn record(&self, capture: Capture) {
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|tx| tx.try_send(Msg::Event(Box::new(capture))));
        if !matches!(sent, Some(Ok(()))) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Say so now and then, not once per event.
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "session recorder is behind or stopped; events were dropped"
                );
            }
        }
    }

    /// Events dropped so far because the recorder could not keep up.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Writes every buffered event now; returns once written (or after 10 s).
    pub fn flush(&self) {
        let (ack, done) = mpsc::channel();
        let sent = self
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|tx| tx.send(Msg::Flush(ack)).is_ok());
        if sent == Some(true) {
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Writes what is buffered and stops the thread. Later events are dropped.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }

    /// Sessions matching `filter`, newest first (what is written so far).
    pub fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError> {
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        sessions(&conn, filter).map_err(sqlite_err(&self.path))
    }

    /// The summary of one session, if recorded.
    pub fn session(&self, id: &str) -> Result<Option<SessionSummary>, StoreError> {
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        session(&conn, id).map_err(sqlite_err(&self.path))
    }

    /// A session's events in order; with `identity`, only that identity's.
    pub fn events(&self, session: &str, identity: Option<&str>) -> Result<Vec<Event>, StoreError> {
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        events(&conn, session, identity, &self.path)
    }
    /// Deletes segments whose last event is older than `before` (RFC 3339 UTC, as the
    /// audit log writes times); returns how many. For retention: recordings are not part
    /// of the audit chain, so deleting them breaks nothing `audit verify` checks.
    pub fn prune(&self, before: &str) -> Result<usize, StoreError> {
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        conn.execute(
            "DELETE FROM recordings WHERE last_time < ?1",
            params![before],
        )
        .map_err(sqlite_err(&self.path))
    }
}

/// One session's buffer (of one identity).
struct Buffer {
    lines: Vec<u8>,
    events: u64,
    requests: u64,
    first_time: String,
    last_time: String,
    /// When the oldest buffered event arrived; `None` when empty.
    since: Option<Instant>,
    last_seen: Instant,
}

struct Writer {
    conn: Connection,
    store: PathBuf,
    options: RecorderOptions,
    buffers: HashMap<(String, String), Buffer>,
    /// The next segment number of each session this run has written to.
    next_seq: HashMap<String, i64>,
}

impl Writer {
    fn new(conn: Connection, store: PathBuf, options: RecorderOptions) -> Writer {
        Writer {
            conn,
            store,
            options,
            buffers: HashMap::new(),
            next_seq: HashMap::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Msg>) {
        // Idle, the recorder blocks on the queue. While buffers wait to be written it
        // sleeps (until the first is due, 50 ms at most) and then takes everything queued
        // meanwhile, so events do not wake it one by one (the queue holds far more than
        // arrives in 50 ms).
        let mut open = true;
        while open {
            let due = self
                .buffers
                .values()
                .filter_map(|b| b.since)
                .min()
                .map(|t| t + self.options.flush_after);
            match due {
                None => match rx.recv() {
                    Ok(msg) => self.take(msg),
                    Err(_) => break,
                },
                // At most a tick at a time, so that a flush or a stop is not kept waiting.
                Some(at) => std::thread::sleep(
                    at.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(50)),
                ),
            }
            loop {
                match rx.try_recv() {
                    Ok(msg) => self.take(msg),
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            }
            self.write_due();
        }
        self.write_all();
    }

    fn take(&mut self, msg: Msg) {
        match msg {
            Msg::Event(capture) => {
                if let Some(key) = self.add(*capture) {
                    self.write(&[key]);
                }
            }
            Msg::Flush(ack) => {
                self.write_all();
                let _ = ack.send(());
            }
        }
    }

    /// Buffers an event; returns its buffer's key when the buffer is full.
    fn add(&mut self, capture: Capture) -> Option<(String, String)> {
        let Capture {
            session,
            identity,
            mut event,
            attachment,
        } = capture;
        if let (EventKind::Response(r), Some(a)) = (&mut event.what, attachment) {
            attach(r, &a);
        }
        let now = Instant::now();
        let key = (session, identity);
        let buffer = self.buffers.entry(key.clone()).or_insert_with(|| Buffer {
            lines: Vec::new(),
            events: 0,
            requests: 0,
            first_time: String::new(),
            last_time: String::new(),
            since: None,
            last_seen: now,
        });
        if let Err(e) = serde_json::to_writer(&mut buffer.lines, &event) {
            tracing::error!(error = %e, "cannot encode a session event; dropped");
            return None;
        }
        buffer.lines.push(b'\n');
        if buffer.since.is_none() {
            buffer.since = Some(now);
            buffer.first_time = event.time.clone();
            buffer.last_time = event.time;
        } else if event.time < buffer.first_time {
            buffer.first_time = event.time;
        } else if event.time > buffer.last_time {
            buffer.last_time = event.time;
        }
        buffer.events += 1;
        if matches!(event.what, EventKind::Request(_)) {
            buffer.requests += 1;
        }
        buffer.last_seen = now;
        (buffer.lines.len() >= self.options.segment_bytes).then_some(key)
    }

    fn write_due(&mut self) {
        let now = Instant::now();
        let due: Vec<_> = self
            .buffers
            .iter()
            .filter(|(_, b)| b.since.is_some_and(|t| now >= t + self.options.flush_after))
            .map(|(k, _)| k.clone())
            .collect();
        if !due.is_empty() {
            self.write(&due);
        }
        // Forget sessions that went quiet (their buffers are empty by now).
        self.buffers
            .retain(|_, b| b.since.is_some() || b.last_seen.elapsed() < FORGET_AFTER);
        if self.next_seq.len() > self.buffers.len() * 2 + 1024 {
            let live: std::collections::HashSet<&String> =
                self.buffers.keys().map(|(s, _)| s).collect();
            self.next_seq.retain(|s, _| live.contains(s));
        }
    }

    fn write_all(&mut self) {
        let all: Vec<_> = self
            .buffers
            .iter()
            .filter(|(_, b)| b.since.is_some())
            .map(|(k, _)| k.clone())
            .collect();
        if !all.is_empty() {
            self.write(&all);
        }
    }

    /// Writes the buffers of `keys` as one segment each, in one transaction. On failure
    /// the segments are dropped (and logged): recording never holds anything up.
    fn write(&mut self, keys: &[(String, String)]) {
        let mut segments = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(b) = self.buffers.get_mut(key) else {
                continue;
            };
            if b.since.is_none() {
                continue;
            }
            let lines = std::mem::take(&mut b.lines);
            b.since = None;
            let segment = Segment {
                session: key.0.clone(),
                identity: key.1.clone(),
                first_time: std::mem::take(&mut b.first_time),
                last_time: std::mem::take(&mut b.last_time),
                events: std::mem::take(&mut b.events),
                requests: std::mem::take(&mut b.requests),
                raw_bytes: lines.len() as u64,
                data: match zstd::bulk::compress(&lines, LEVEL) {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::error!(error = %e, session = %key.0, "cannot compress a session segment; dropped");
                        continue;
                    }
                },
            };
            segments.push(segment);
        }
        if segments.is_empty() {
            return;
        }
        if let Err(e) = self.insert(&segments) {
            tracing::error!(
                error = %e, path = %self.store.display(), segments = segments.len(),
                "cannot write session recordings; these segments are lost"
            );
            // Ask the table again next time: the numbers may not have been used.
            for s in &segments {
                self.next_seq.remove(&s.session);
            }
        }
    }

    fn insert(&mut self, segments: &[Segment]) -> rusqlite::Result<()> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut max =
                tx.prepare_cached("SELECT MAX(seq) FROM recordings WHERE session_id = ?1")?;
            let mut insert = tx.prepare_cached(
                "INSERT INTO recordings (session_id, seq, identity, first_time, last_time,
                     events, requests, raw_bytes, data)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            for s in segments {
                let seq = match self.next_seq.get(&s.session) {
                    Some(n) => *n,
                    None => {
                        max.query_row(params![s.session], |r| r.get::<_, Option<i64>>(0))?
                            .unwrap_or(0)
                            + 1
                    }
                };
                insert.execute(params![
                    s.session,
                    seq,
                    s.identity,
                    s.first_time,
                    s.last_time,
                    s.events as i64,
                    s.requests as i64,
                    s.raw_bytes as i64,
                    s.data
                ])?;
                self.next_seq.insert(s.session.clone(), seq + 1);
            }
        }
        tx.commit()
    }
}

struct Segment {
    session: String,
    identity: String,
    first_time: String,
    last_time: String,
    events: u64,
    requests: u64,
    raw_bytes: u64,
    data: Vec<u8>,
}

/// Fills a response event's body fields from the whole body: the first `limit` bytes
/// (cut at a character boundary), the whole size and the whole body's SHA-256.
fn attach(r: &mut querygate_core::recording::ResponseEvent, a: &Attachment) {
    let body = &a.body[..];
    r.total_bytes = Some(body.len() as u64);
    r.sha256 = Some(hex::encode(Sha256::digest(body)));
    let mut end = body.len().min(a.limit);
    // Step back to the start of a UTF-8 character, so the kept part stays text.
    while end > 0 && end < body.len() && (body[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    r.truncated = end < body.len();
    let kept = &body[..end];
    // Checked as a whole first (word at a time over ASCII); the lossy walk, byte by byte,
    // only for a body that is not UTF-8 (a BigQuery body always is). 1.4 % of the
    // gateway's CPU under load went to the walk.
    r.body = Some(match std::str::from_utf8(kept) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(kept).into_owned(),
    });
}

/// Which sessions to list. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    /// Only segments of this identity (and sessions that have one).
    pub identity: Option<String>,
    /// Only sessions with events at or after this time (RFC 3339 UTC, as the audit log).
    pub since: Option<String>,
    pub limit: Option<usize>,
}

/// A recorded session as listed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SessionSummary {
    pub id: String,
    /// Who made its requests (normally one identity).
    pub identities: Vec<String>,
    pub first_time: String,
    pub last_time: String,
    pub requests: u64,
    pub events: u64,
    pub segments: u64,
    /// Bytes of JSON recorded, and bytes stored (compressed).
    pub raw_bytes: u64,
    pub stored_bytes: u64,
}

fn has_table(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'recordings'")?
        .exists([])
}

fn sessions(conn: &Connection, filter: &SessionFilter) -> rusqlite::Result<Vec<SessionSummary>> {
    if !has_table(conn)? {
        return Ok(Vec::new());
    }
    let mut st = conn.prepare_cached(
        "SELECT session_id, json_group_array(DISTINCT identity), MIN(first_time), MAX(last_time),
                SUM(requests), SUM(events), COUNT(*), SUM(raw_bytes), SUM(length(data))
         FROM recordings
         WHERE (?1 IS NULL OR identity = ?1)
         GROUP BY session_id
         HAVING (?2 IS NULL OR MAX(last_time) >= ?2)
         ORDER BY MIN(first_time) DESC, session_id
         LIMIT ?3",
    )?;
    let rows = st.query_map(
        params![
            filter.identity,
            filter.since,
            filter.limit.unwrap_or(1000).min(i64::MAX as usize) as i64
        ],
        session_summary,
    )?;
    rows.collect()
}

fn events(
    conn: &Connection,
    session: &str,
    identity: Option<&str>,
    path: &Path,
) -> Result<Vec<Event>, StoreError> {
    let err = sqlite_err(path);
    if !has_table(conn).map_err(&err)? {
        return Ok(Vec::new());
    }
    let mut st = conn
        .prepare_cached(
            "SELECT seq, raw_bytes, data FROM recordings
             WHERE session_id = ?1 AND (?2 IS NULL OR identity = ?2) ORDER BY seq",
        )
        .map_err(&err)?;
    let segments = st
        .query_map(params![session, identity], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, Vec<u8>>(2)?,
            ))
        })
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(&err)?;
    let mut out = Vec::new();
    for (seq, raw, data) in segments {
        let limit = (raw.max(0) as u64).min(MAX_SEGMENT);
        let mut text = Vec::with_capacity(limit as usize);
        let read = zstd::stream::read::Decoder::new(&data[..])
            .and_then(|d| d.take(limit + 1).read_to_end(&mut text));
        if let Err(e) = read {
            tracing::warn!(session, seq, error = %e, "a recorded segment cannot be read; skipped");
            continue;
        }
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Event>(line) {
                Ok(e) => out.push(e),
                Err(e) => {
                    tracing::warn!(session, seq, error = %e, "a recorded event cannot be read; skipped")
                }
            }
        }
    }
    // Segments of several identities (or written out of order) interleave by time;
    // the sort is stable, so events of one moment keep the order they were recorded in.
    out.sort_by(|a, b| a.time.cmp(&b.time));
    Ok(out)
}

/// Read-only access to the recordings of a store file (for `querygate sessions`).
pub struct RecordingReader {
    conn: Connection,
    path: PathBuf,
}

impl RecordingReader {
    pub fn open(path: &Path) -> Result<RecordingReader, StoreError> {
        if !path.exists() {
            return Err(StoreError::Failed {
                path: path.display().to_string(),
                message: "no such file (has the gateway run with this config?)".into(),
            });
        }
        let conn = schema::open_existing(path).map_err(sqlite_err(path))?;
        Ok(RecordingReader {
            conn,
            path: path.to_path_buf(),
        })
    }

    /// Sessions matching `filter`, newest first.
    pub fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionSummary>, StoreError> {
        sessions(&self.conn, filter).map_err(sqlite_err(&self.path))
    }

    /// The summary of one session, if recorded.
    pub fn session(&self, id: &str) -> Result<Option<SessionSummary>, StoreError> {
        session(&self.conn, id).map_err(sqlite_err(&self.path))
    }

    /// A session's events in order; with `identity`, only that identity's.
    pub fn events(&self, session: &str, identity: Option<&str>) -> Result<Vec<Event>, StoreError> {
        events(&self.conn, session, identity, &self.path)
    }
}

fn session(conn: &Connection, id: &str) -> rusqlite::Result<Option<SessionSummary>> {
    if !has_table(conn)? {
        return Ok(None);
    }
    let mut st = conn.prepare_cached(
        "SELECT session_id, json_group_array(DISTINCT identity), MIN(first_time), MAX(last_time),
                SUM(requests), SUM(events), COUNT(*), SUM(raw_bytes), SUM(length(data))
         FROM recordings WHERE session_id = ?1 GROUP BY session_id",
    )?;
    st.query_row(params![id], session_summary).optional()
}

/// A row of the session summary queries (`session_id`, identities, first and last time,
/// requests, events, segments, raw and stored bytes).
fn session_summary(r: &rusqlite::Row<'_>) -> rusqlite::Result<SessionSummary> {
    let identities: String = r.get(1)?;
    let count = |i| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
    Ok(SessionSummary {
        id: r.get(0)?,
        identities: serde_json::from_str(&identities).unwrap_or_default(),
        first_time: r.get(2)?,
        last_time: r.get(3)?,
        requests: count(4)?,
        events: count(5)?,
        segments: count(6)?,
        raw_bytes: count(7)?,
        stored_bytes: count(8)?,
    })
}

#[cfg(test)]
mod tests;
