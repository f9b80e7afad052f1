//! The journal: an append-only file beside the SQLite file where audit records and job
//! claims become durable before SQLite indexes them.
//!
//! Making a record durable costs one `write` and one `fdatasync` of a few hundred bytes
//! per group of records, instead of a SQLite commit that rewrites every B-tree page it
//! touched. The indexer thread writes journalled entries into SQLite in large batches a
//! few milliseconds later. The journal is a series of files, `<store>.journal.<n>`: once
//! one passes [`crate::writer`]'s size limit the writer starts the next, and the indexer
//! deletes the full one after a synced SQLite commit holds all of it. At open, entries
//! SQLite does not hold yet (the gateway stopped before indexing them) are indexed first,
//! so nothing acknowledged is ever lost.
//!
//! A frame is `len: u32 LE`, `crc32(payload): u32 LE`, then `len` bytes of JSON. A torn
//! frame at the end (a crash in the middle of a write, which was never acknowledged)
//! ends the readable journal; everything before it is intact.
//!
//! A file is made at its full size, written with zeros and synced, before the first frame
//! goes in (PostgreSQL prepares its WAL segments the same way). Frames then overwrite
//! zeros in place: an append changes neither the file's size nor its block map, so its
//! `fdatasync` flushes the frames alone and the file system commits no metadata (measured
//! on the 2-core VM's idle disk: p50 0.20 ms and p99 0.37 ms, against 0.29 ms and 0.7 ms
//! when appending). The zeros after the last frame read
//! as a frame of length zero, which ends the file's entries like a torn one. A file is
//! written only by the process that made it, from its start: recovery deletes every file
//! it finds and the writer starts a new one.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use querygate_core::Usage;

use crate::JobRow;

/// Largest frame accepted when reading (a record holds a whole statement, never truncated).
const MAX_FRAME: u32 = 64 << 20;

/// One journalled entry.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Entry {
    /// An audit record in its chain position, with the usage committed along with it.
    Record {
        seq: u64,
        record: String,
        prev_hash: String,
        hash: String,
        /// (identity, day, usage) to add to usage.
        usage: Option<(String, String, Usage)>,
        /// What SQLite indexes the record by; `None` for an entry read back from a journal
        /// file (they are read from the record's text only if it is indexed then).
        keys: Option<Keys>,
    },
    /// A job claim (idempotent: an existing owner is never replaced).
    Claim(JobRow),
}

/// The fields of a record SQLite indexes it by, as columns of `audit_log` (kept beside the
/// record's text so that indexing never parses it again).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Keys {
    pub time: String,
    pub identity: String,
    pub ticket: Option<String>,
}

impl Keys {
    pub(crate) fn of(record: &querygate_core::AuditRecord) -> Keys {
        Keys {
            time: record.time.clone(),
            identity: record.identity.clone(),
            ticket: record.ticket.clone(),
        }
    }

    /// Read back from a record's text (a journal read again: the journal does not repeat
    /// them).
    pub(crate) fn of_text(record: &str) -> Keys {
        let v: Value = serde_json::from_str(record).unwrap_or(Value::Null);
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        Keys {
            time: s("time").unwrap_or_default(),
            identity: s("identity").unwrap_or_default(),
            ticket: s("ticket"),
        }
    }
}

impl Entry {
    /// A frame's payload: a one-line JSON header, and for records a line feed and the
    /// record's canonical text as is (not escaped into the header: half the cost).
    fn encode(&self, out: &mut Vec<u8>) -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, &self.header()).map_err(std::io::Error::other)?;
        if let Entry::Record { record, .. } = self {
            out.push(b'\n');
            out.extend_from_slice(record.as_bytes());
        }
        Ok(())
    }

    fn decode(payload: &[u8]) -> Option<Entry> {
        let (header, record) = match payload.iter().position(|b| *b == b'\n') {
            Some(at) => (&payload[..at], Some(&payload[at + 1..])),
            None => (payload, None),
        };
        let mut v: Value = serde_json::from_slice(header).ok()?;
        if let (Some(o), Some(text)) = (v.as_object_mut(), record) {
            o.insert("record".into(), std::str::from_utf8(text).ok()?.into());
        }
        Entry::from_json(&v)
    }

    fn header(&self) -> Value {
        match self {
            Entry::Record {
                seq,
                prev_hash,
                hash,
                usage,
                ..
            } => json!({
                "t": "record", "seq": seq, "prev": prev_hash, "hash": hash,
                "usage": usage.as_ref().map(|(i, d, u)| json!([i, d, u.bytes, u.rows])),
            }),
            Entry::Claim(j) => json!({
                "t": "claim", "source": j.source, "job_id": j.job_id, "identity": j.identity,
                "destination": j.destination, "schema": j.schema, "row_limit": j.row_limit,
                "sensitive": j.sensitive,
            }),
        }
    }

    fn from_json(v: &Value) -> Option<Entry> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        match v.get("t")?.as_str()? {
            "record" => Some(Entry::Record {
                seq: v.get("seq")?.as_u64()?,
                keys: None,
                record: s("record")?,
                prev_hash: s("prev")?,
                hash: s("hash")?,
                usage: match v.get("usage") {
                    Some(Value::Array(a)) => Some((
                        a.first()?.as_str()?.to_string(),
                        a.get(1)?.as_str()?.to_string(),
                        Usage {
                            bytes: a.get(2)?.as_u64()?,
                            // Journals written before row budgets carry bytes only.
                            rows: a.get(3).and_then(Value::as_u64).unwrap_or(0),
                        },
                    )),
                    _ => None,
                },
            }),
            "claim" => Some(Entry::Claim(JobRow {
                source: s("source")?,
                job_id: s("job_id")?,
                identity: s("identity")?,
                destination: s("destination"),
                schema: s("schema"),
                row_limit: v.get("row_limit").and_then(Value::as_u64),
                sensitive: v.get("sensitive").and_then(Value::as_bool).unwrap_or(false),
            })),
            _ => None,
        }
    }
}

fn with_suffix(store: &Path, suffix: &str) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The path of journal file `n` of a store: `querygate.db` → `querygate.db.journal.<n>`.
pub(crate) fn file_of(store: &Path, n: u64) -> PathBuf {
    with_suffix(store, &format!(".journal.{n}"))
}

/// The store's journal files in order, with their numbers.
pub(crate) fn files(store: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let dir = dir_of(store);
    let prefix = format!(
        "{}.journal.",
        store.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok())
        {
            found.push((n, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

/// Reads every journal file of a store, in order (for recovery and for `audit` commands,
/// which read without locking). A torn tail ends a file's entries.
pub(crate) fn read(store: &Path) -> std::io::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    for (_, path) in files(store)? {
        match std::fs::read(&path) {
            Ok(bytes) => entries.extend(parse(&bytes).0),
            // Deleted by the indexer between listing and reading: SQLite holds it now.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(entries)
}

/// The store's writer lock, `<store>.lock`: one gateway process writes a store (a second
/// would fork the chain). Released when dropped.
pub(crate) struct Lock(#[allow(dead_code)] File);

impl Lock {
    /// Takes the lock, waiting up to `wait` for a process that is shutting down.
    pub(crate) fn take(store: &Path, wait: Duration) -> std::io::Result<Lock> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(with_suffix(store, ".lock"))?;
        let until = Instant::now() + wait;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) if Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(std::io::Error::other(
                        "another querygate process is writing this store; \
                         give each gateway its own [store] path",
                    ));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(e),
            }
        }
        Ok(Lock(file))
    }
}

/// One journal file being appended to.
pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes of frames written (where the next frame goes).
    len: u64,
    /// Bytes made ready with zeros; once `len` reaches it, the writer starts the next file.
    capacity: u64,
    buf: Vec<u8>,
}

impl Journal {
    /// Makes journal file `n`, `capacity` bytes of zeros synced to disk along with its
    /// name (the caller holds the store's [`Lock`]). Replaces a file left half-made.
    pub(crate) fn create(store: &Path, n: u64, capacity: u64) -> std::io::Result<Journal> {
        let path = file_of(store, n);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        let zeros = vec![0u8; 256 << 10];
        let mut left = capacity;
        while left > 0 {
            let n = left.min(zeros.len() as u64) as usize;
            file.write_all(&zeros[..n])?;
            left -= n as u64;
        }
        file.sync_all()?;
        // The file's name must be durable before a synced frame in it counts as durable:
        // the frames' `fdatasync` does not carry the directory.
        File::open(dir_of(store))?.sync_all()?;
        Ok(Journal {
            file,
            path,
            len: 0,
            capacity,
            buf: Vec::new(),
        })
    }

    /// A journal whose every write fails, as on a full or failing disk (for tests; the
    /// machines the tests run on do not all have `/dev/full`).
    #[cfg(test)]
    pub(crate) fn failing(path: PathBuf) -> std::io::Result<Journal> {
        std::fs::write(&path, b"")?;
        let file = OpenOptions::new().read(true).open(&path)?;
        Ok(Journal {
            file,
            path,
            len: 0,
            capacity: u64::MAX,
            buf: Vec::new(),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends entries in one write; with `sync`, returns once they are on disk.
    pub(crate) fn append(&mut self, entries: &[Entry], sync: bool) -> std::io::Result<()> {
        self.buf.clear();
        for e in entries {
            let start = self.buf.len();
            self.buf.extend_from_slice(&[0; 8]);
            e.encode(&mut self.buf)?;
            let payload = &self.buf[start + 8..];
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|l| *l <= MAX_FRAME)
                .ok_or_else(|| std::io::Error::other("journal entry too large"))?;
            let crc = crc32fast::hash(payload);
            self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
            self.buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        }
        let written = self
            .file
            .write_all_at(&self.buf, self.len)
            .and_then(|()| if sync { self.file.sync_data() } else { Ok(()) });
        if let Err(e) = written {
            // Frames that were not acknowledged must not stay where the next ones go: a
            // shorter group written over them could leave one of them readable after it.
            self.buf.fill(0);
            let _ = self.file.write_all_at(&self.buf, self.len);
            return Err(e);
        }
        self.len += self.buf.len() as u64;
        Ok(())
    }

    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }

    /// Whether the frames have reached the zeros made ready (the next group extends the
    /// file, which costs a metadata commit, so the writer starts the next file first).
    pub(crate) fn is_full(&self) -> bool {
        self.len >= self.capacity
    }
}

/// The directory holding a store's files.
fn dir_of(store: &Path) -> &Path {
    match store.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn parse(bytes: &[u8]) -> (Vec<Entry>, u64) {
    let mut entries = Vec::new();
    let mut at = 0usize;
    while let Some(header) = bytes.get(at..at + 8) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
        let crc = u32::from_le_bytes(header[4..].try_into().unwrap_or_default());
        if len == 0 {
            // The zeros a file was made with: the end of its frames.
            break;
        }
        let Some(payload) = bytes.get(at + 8..at + 8 + len as usize) else {
            break;
        };
        if len > MAX_FRAME || crc32fast::hash(payload) != crc {
            break;
        }
        let Some(entry) = Entry::decode(payload) else {
            break;
        };
        entries.push(entry);
        at += 8 + len as usize;
    }
    (entries, at as u64)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(seq: u64) -> Entry {
        Entry::Record {
            seq,
            record: format!("{{\"seq\":{seq}}}"),
            keys: None,
            prev_hash: "p".into(),
            hash: "h".into(),
            usage: Some((
                "agent".into(),
                "2026-11-27".into(),
                Usage { bytes: 42, rows: 7 },
            )),
        }
    }

    #[test]
    fn entries_round_trip_in_file_order_and_a_torn_tail_ends_a_file() {
        let dir = std::env::temp_dir().join(format!("qg-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = dir.join("qg.db");
        let claim = Entry::Claim(JobRow {
            source: "bq".into(),
            job_id: "job_1".into(),
            identity: "agent".into(),
            destination: None,
            schema: Some("{}".into()),
            row_limit: Some(10),
            sensitive: false,
        });
        let lock = Lock::take(&store, Duration::ZERO).unwrap();
        let mut j = Journal::create(&store, 9, 4096).unwrap();
        j.append(&[record(1), claim.clone()], true).unwrap();
        j.append(&[record(2)], true).unwrap();
        // Frames overwrite the zeros the file was made with: its size stays put.
        assert_eq!(std::fs::metadata(j.path()).unwrap().len(), 4096);
        assert!(!j.is_full());
        // A crash mid-write leaves half a frame.
        let f = OpenOptions::new().write(true).open(j.path()).unwrap();
        f.write_all_at(&[200, 0, 0, 0, 1, 2, 3, 4, b'{'], j.len)
            .unwrap();
        let mut next = Journal::create(&store, 10, 64).unwrap();
        next.append(&[record(3)], true).unwrap();
        // Past the zeros made ready, the file grows and the writer moves on.
        assert!(next.is_full());
        assert_eq!(
            read(&store).unwrap(),
            vec![record(1), claim, record(2), record(3)]
        );
        assert_eq!(
            files(&store)
                .unwrap()
                .iter()
                .map(|f| f.0)
                .collect::<Vec<_>>(),
            vec![9, 10]
        );
        // A second writer is refused while the first holds the lock.
        let err = Lock::take(&store, Duration::ZERO).err().expect("locked");
        assert!(
            err.to_string().contains("another querygate process"),
            "{err}"
        );
        drop(lock);
        Lock::take(&store, Duration::ZERO).expect("released");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
