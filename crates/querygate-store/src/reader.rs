//! Reading the audit log back: search, tail, export and chain verification.
//!
//! Used by the `querygate audit` commands, which may run while a gateway is writing
//! (WAL lets readers proceed). Records still in the journal (not yet indexed, or left by
//! a gateway that stopped abruptly) are read after SQLite's, so nothing durable is
//! missed. Reads never change either file.

use std::path::Path;

use querygate_core::AuditRecord;
use querygate_core::audit::{ChainBreak, ChainRow, ChainVerifier};
use rusqlite::{Connection, OptionalExtension, params};

use crate::journal::{self, Entry};
use crate::{StoreError, schema, signing, sqlite_err};

/// Which records to return. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub identity: Option<String>,
    pub source: Option<String>,
    pub method: Option<String>,
    pub decision: Option<String>,
    pub job_id: Option<String>,
    /// Only records at or after this RFC 3339 time (string comparison of UTC times).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Only records of requests made acting for this subject.
    pub acting_for: Option<String>,
    /// Only records whose statement read or wrote this table (`project.dataset.table`).
    pub table: Option<String>,
    /// Only records decided by this rule.
    pub rule: Option<String>,
    /// Only records of this approval ticket.
    pub ticket: Option<String>,
    /// Only records whose statement contains this text (case-insensitive).
    pub text: Option<String>,
}

impl AuditFilter {
    fn matches(&self, r: &AuditRecord) -> bool {
        let eq = |want: &Option<String>, have: &str| want.as_deref().is_none_or(|w| w == have);
        eq(&self.identity, &r.identity)
            && eq(&self.source, &r.source)
            && eq(&self.method, &r.method)
            && eq(&self.decision, &r.decision)
            && self
                .job_id
                .as_deref()
                .is_none_or(|j| r.job_id.as_deref() == Some(j))
            && self.since.as_deref().is_none_or(|s| r.time.as_str() >= s)
            && self.until.as_deref().is_none_or(|u| r.time.as_str() <= u)
            && self
                .acting_for
                .as_deref()
                .is_none_or(|a| r.acting_for.as_deref() == Some(a))
            && self
                .table
                .as_deref()
                .is_none_or(|t| r.tables.iter().any(|have| have == t))
            && self
                .rule
                .as_deref()
                .is_none_or(|w| r.rule.as_deref() == Some(w))
            && self
                .ticket
                .as_deref()
                .is_none_or(|w| r.ticket.as_deref() == Some(w))
            && self.text.as_deref().is_none_or(|w| {
                r.statement
                    .as_deref()
                    .is_some_and(|s| s.to_lowercase().contains(&w.to_lowercase()))
            })
    }

    /// The same filter as SQL over `audit_log`, in terms the indexes in `schema` serve
    /// (identity and time; tickets): a `WHERE` clause and its parameters. `keyed`: the
    /// table has the index columns (a store no gateway of this version opened yet has not).
    fn sql(&self, keyed: bool) -> (String, Vec<String>) {
        let column = |field: &str| match field {
            "identity" | "ticket" | "time" if keyed => field.to_string(),
            _ => format!("json_extract(record, '$.{field}')"),
        };
        let mut clauses = vec!["1".to_string()];
        let mut values = Vec::new();
        let mut eq = |field: &str, v: &Option<String>| {
            if let Some(v) = v {
                values.push(v.clone());
                clauses.push(format!("{} = ?{}", column(field), values.len()));
            }
        };
        eq("identity", &self.identity);
        eq("source", &self.source);
        eq("method", &self.method);
        eq("decision", &self.decision);
        eq("job_id", &self.job_id);
        eq("acting_for", &self.acting_for);
        eq("rule", &self.rule);
        eq("ticket", &self.ticket);
        if let Some(since) = &self.since {
            values.push(since.clone());
            clauses.push(format!("{} >= ?{}", column("time"), values.len()));
        }
        if let Some(until) = &self.until {
            values.push(until.clone());
            clauses.push(format!("{} <= ?{}", column("time"), values.len()));
        }
        if let Some(table) = &self.table {
            values.push(table.clone());
            clauses.push(format!(
                "EXISTS (SELECT 1 FROM json_each(record, '$.tables') WHERE value = ?{})",
                values.len()
            ));
        }
        if let Some(text) = &self.text {
            values.push(text.to_lowercase());
            clauses.push(format!(
                "instr(lower(json_extract(record, '$.statement')), ?{}) > 0",
                values.len()
            ));
        }
        (clauses.join(" AND "), values)
    }
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    pub records: u64,
    pub head: String,
    /// Checkpoint records whose signature verified.
    pub checkpoints: u64,
    /// Checkpoint records not checked because no public key was given or found.
    pub unchecked_checkpoints: u64,
    /// The last signed checkpoint's seq, and how many records follow it unsigned.
    pub last_checkpoint: Option<u64>,
    pub unsigned_tail: u64,
    /// Checkpoints from a checkpoint file that the log was compared against.
    pub external_checkpoints: u64,
    /// Retention deleted the records before this seq (a signed marker vouches for it).
    pub pruned_before: Option<u64>,
}

/// What to check besides the chain.
#[derive(Debug, Clone, Default)]
pub struct VerifyOptions {
    /// The signing key's public key (hex). Default: `<store>.key.pub` when it exists.
    pub public_key: Option<String>,
    /// A checkpoint file kept apart from the store: every checkpoint in it must be in the
    /// log with the same head, so a log cut short or rewritten after it is caught.
    pub checkpoint_file: Option<std::path::PathBuf>,
}

/// A record as stored, with its place in the chain.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

impl StoredRecord {
    /// The record's JSON with `prev_hash` and `hash` added (what `--json` prints).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.record).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("prev_hash".into(), self.prev_hash.clone().into());
            o.insert("hash".into(), self.hash.clone().into());
        }
        v
    }
}

/// Read-only access to a store file.
pub struct Reader {
    conn: Connection,
    path: String,
}

impl Reader {
    pub fn open(path: &Path) -> Result<Reader, StoreError> {
        if !path.exists() {
            return Err(StoreError::Failed {
                path: path.display().to_string(),
                message: "no such file (has the gateway run with this config?)".into(),
            });
        }
        let conn = schema::open_existing(path).map_err(sqlite_err(path))?;
        Ok(Reader {
            conn,
            path: path.display().to_string(),
        })
    }

    /// Every row of the chain in order: SQLite's, then the journal's beyond them.
    fn rows(
        &self,
        mut each: impl FnMut(&ChainRow) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        // The journal first, then the scan: a record leaves the journal only once indexed,
        // so each is in one or the other.
        let entries = self.journal()?;
        let mut st = self
            .conn
            .prepare("SELECT seq, record, prev_hash, hash FROM audit_log ORDER BY seq")
            .map_err(self.err())?;
        let mut rows = st.query(params![]).map_err(self.err())?;
        let mut last = 0;
        // One row's buffers, reused: verify reads a million rows a second.
        let mut chain_row = ChainRow {
            seq: 0,
            record: String::new(),
            prev_hash: String::new(),
            hash: String::new(),
        };
        let text = |v: rusqlite::types::ValueRef<'_>| -> Result<String, StoreError> {
            v.as_str()
                .map(str::to_string)
                .map_err(|e| StoreError::Failed {
                    path: self.path.clone(),
                    message: format!("a stored record is not text: {e}"),
                })
        };
        while let Some(row) = rows.next().map_err(self.err())? {
            chain_row.seq = row.get::<_, i64>(0).map_err(self.err())? as u64;
            for (i, buf) in [
                (1, &mut chain_row.record),
                (2, &mut chain_row.prev_hash),
                (3, &mut chain_row.hash),
            ] {
                let value = row.get_ref(i).map_err(self.err())?;
                match value.as_str() {
                    Ok(s) => {
                        buf.clear();
                        buf.push_str(s);
                    }
                    Err(_) => *buf = text(value)?,
                }
            }
            last = chain_row.seq;
            if !each(&chain_row)? {
                return Ok(());
            }
        }
        for entry in entries {
            if let Entry::Record {
                seq,
                record,
                prev_hash,
                hash,
                ..
            } = entry
                && seq > last
                && !each(&ChainRow {
                    seq,
                    record,
                    prev_hash,
                    hash,
                })?
            {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Where the chain starts: `None` at record 1; after retention, the first kept record
    /// and the hash before it, once a signed `pruned` marker in the log vouches for that
    /// boundary. A missing prefix without a verified marker is a break: anyone can append an
    /// unsigned marker, only the key holder a signed one.
    fn pruned_start(
        &self,
        public_key: Option<&str>,
    ) -> Result<Result<Option<(u64, String)>, ChainBreak>, StoreError> {
        let first: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT seq, prev_hash FROM audit_log ORDER BY seq LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())?;
        let Some((first, prev)) = first.filter(|(s, _)| *s > 1) else {
            return Ok(Ok(None));
        };
        let first = first as u64;
        let missing = |problem: String| Ok(Err(ChainBreak { seq: 1, problem }));
        let Some(key) = public_key else {
            return missing(format!(
                "records 1..={} are not in the log; a prune marker may vouch for that, but without \
                 the public key (--public-key) its signature cannot be checked",
                first - 1
            ));
        };
        let mut st = self
            .conn
            .prepare("SELECT record FROM audit_log WHERE record LIKE '%\"method\":\"audit.prune\"%' ORDER BY seq DESC")
            .map_err(self.err())?;
        let markers = st
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(self.err())?;
        for text in markers {
            let Ok(record) = serde_json::from_str::<AuditRecord>(&text) else {
                continue;
            };
            let Some(cp) = record.checkpoint else {
                continue;
            };
            if cp.kind == "pruned"
                && cp.seq + 1 == first
                && cp.head == prev
                && signing::key_id(&hex::decode(key).unwrap_or_default()) == cp.key_id
                && signing::verify(key, &cp.signed_message(), &cp.signature)
            {
                return Ok(Ok(Some((first, prev))));
            }
        }
        missing(format!(
            "records 1..={} are not in the log and no signed prune marker vouches for their removal",
            first - 1
        ))
    }

    /// Every entry of the store's journal files.
    fn journal(&self) -> Result<Vec<Entry>, StoreError> {
        journal::read(Path::new(&self.path)).map_err(|e| StoreError::Failed {
            path: self.path.clone(),
            message: format!("cannot read the journal: {e}"),
        })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Calls `each` for every record matching `filter`, in chain order.
    /// With `last = Some(n)`, only the last `n` matching records.
    pub fn records(
        &self,
        filter: &AuditFilter,
        last: Option<usize>,
        mut each: impl FnMut(&StoredRecord),
    ) -> Result<(), StoreError> {
        let parse = |seq: u64, text: &str| -> Result<AuditRecord, StoreError> {
            serde_json::from_str(text).map_err(|e| StoreError::Failed {
                path: self.path.clone(),
                message: format!("record {seq} is not a valid audit record: {e}"),
            })
        };
        // SQLite answers the filter (with its indexes); the journal's tail, not indexed
        // yet, is filtered here.
        //
        // The journal is read first, then SQLite in one read transaction (one snapshot):
        // a record leaves the journal only once indexed, so each is in one or the other,
        // and the journal's are kept only beyond what the snapshot holds.
        let keyed = self
            .conn
            .prepare("SELECT 1 FROM pragma_table_info('audit_log') WHERE name = 'time'")
            .and_then(|mut st| st.exists([]))
            .map_err(self.err())?;
        let (clause, values) = filter.sql(keyed);
        let journalled = self.journal()?;
        let tx = self.conn.unchecked_transaction().map_err(self.err())?;
        let max_seq: i64 = tx
            .query_row("SELECT coalesce(max(seq), 0) FROM audit_log", [], |r| {
                r.get(0)
            })
            .map_err(self.err())?;
        let mut newest = Vec::new();
        for entry in journalled {
            if let Entry::Record {
                seq,
                record,
                prev_hash,
                hash,
                ..
            } = entry
                && seq > max_seq as u64
            {
                let record = parse(seq, &record)?;
                if filter.matches(&record) {
                    newest.push(StoredRecord {
                        record,
                        prev_hash,
                        hash,
                    });
                }
            }
        }
        let limit = match last {
            Some(n) => n.saturating_sub(newest.len()) as i64,
            None => -1,
        };
        let order = if last.is_some() { "DESC" } else { "ASC" };
        let sql = format!(
            "SELECT seq, record, prev_hash, hash FROM audit_log WHERE {clause} AND seq <= {max_seq} \
             ORDER BY seq {order} LIMIT {limit}"
        );
        let mut st = tx.prepare(&sql).map_err(self.err())?;
        let mut rows = st
            .query(rusqlite::params_from_iter(values.iter()))
            .map_err(self.err())?;
        let mut stored = Vec::new();
        while let Some(row) = rows.next().map_err(self.err())? {
            let seq = row.get::<_, i64>(0).map_err(self.err())? as u64;
            let text: String = row.get(1).map_err(self.err())?;
            let record = StoredRecord {
                record: parse(seq, &text)?,
                prev_hash: row.get(2).map_err(self.err())?,
                hash: row.get(3).map_err(self.err())?,
            };
            match last {
                Some(_) => stored.push(record),
                None => each(&record),
            }
        }
        stored.reverse();
        if let Some(n) = last {
            let skip = (stored.len() + newest.len()).saturating_sub(n);
            stored.iter().chain(newest.iter()).skip(skip).for_each(each);
        } else {
            newest.iter().for_each(each);
        }
        Ok(())
    }

    /// Walks the whole chain. `Ok(Err(break))` names the first bad record.
    pub fn verify(&self) -> Result<Result<VerifyReport, ChainBreak>, StoreError> {
        self.verify_with(&VerifyOptions::default())
    }

    /// Walks the whole chain, checks every checkpoint's signature, and compares the log
    /// with a checkpoint file. `Ok(Err(break))` names the first bad record.
    pub fn verify_with(
        &self,
        options: &VerifyOptions,
    ) -> Result<Result<VerifyReport, ChainBreak>, StoreError> {
        let failed = |message: String| StoreError::Failed {
            path: self.path.clone(),
            message,
        };
        let public_key = match &options.public_key {
            Some(k) => Some(k.trim().to_string()),
            None => {
                let default = signing::public_path(&crate::default_key_path(Path::new(&self.path)));
                std::fs::read_to_string(default)
                    .ok()
                    .map(|k| k.trim().to_string())
            }
        };
        let external = match &options.checkpoint_file {
            Some(path) => read_checkpoint_file(path).map_err(failed)?,
            None => Vec::new(),
        };
        // The heads the checkpoint file vouches for, by seq.
        let mut vouched: std::collections::BTreeMap<u64, String> =
            external.iter().map(|c| (c.seq, c.head.clone())).collect();
        let mut report = VerifyReport::default();
        let mut verifier = match self.pruned_start(public_key.as_deref())? {
            Ok(Some((seq, prev))) => {
                report.pruned_before = Some(seq);
                ChainVerifier::starting_at(seq, &prev)
            }
            Ok(None) => ChainVerifier::default(),
            Err(b) => return Ok(Err(b)),
        };
        let mut broken = None;
        let mut heads_seen = 0u64;
        self.rows(|row| {
            let at = row.seq;
            if let Err(b) = verifier.check(row) {
                broken = Some(b);
                return Ok(false);
            }
            let prev = &row.prev_hash;
            let record = row
                .record
                .contains("\"checkpoint\":")
                .then(|| row.record.clone());
            // The record at seq `at - 1` had hash `prev`: compare with the file.
            if let Some(head) = vouched.remove(&(at - 1)) {
                heads_seen += 1;
                if head != *prev {
                    broken = Some(ChainBreak {
                        seq: at - 1,
                        problem: "the checkpoint file vouches for a different hash here: the log was rewritten after that checkpoint".into(),
                    });
                    return Ok(false);
                }
            }
            if let Some(text) = record {
                match check_checkpoint(&text, at, prev, public_key.as_deref()) {
                    Ok(true) => {
                        report.checkpoints += 1;
                        report.last_checkpoint = Some(at);
                    }
                    Ok(false) => report.unchecked_checkpoints += 1,
                    Err(problem) => {
                        broken = Some(ChainBreak { seq: at, problem });
                        return Ok(false);
                    }
                }
            }
            Ok(true)
        })?;
        if let Some(b) = broken {
            return Ok(Err(b));
        }
        // The last record's own hash (a checkpoint may vouch for the very last record).
        if let Some(head) = vouched.remove(&verifier.count()) {
            heads_seen += 1;
            if head != verifier.head() {
                return Ok(Err(ChainBreak {
                    seq: verifier.count(),
                    problem: "the checkpoint file vouches for a different hash here: the log was rewritten after that checkpoint".into(),
                }));
            }
        }
        if let Some((seq, _)) = vouched.iter().find(|(seq, _)| **seq > verifier.count()) {
            return Ok(Err(ChainBreak {
                seq: verifier.count() + 1,
                problem: format!(
                    "the log ends at record {}, but the checkpoint file vouches for record {seq}: records were cut from the end",
                    verifier.count()
                ),
            }));
        }
        report.records = verifier.count() - report.pruned_before.map_or(0, |s| s - 1);
        report.head = verifier.head().to_string();
        report.unsigned_tail = verifier.count() - report.last_checkpoint.unwrap_or(0);
        report.external_checkpoints = heads_seen;
        Ok(Ok(report))
    }
}

/// Checks a checkpoint record at `seq` that follows a record with hash `prev`: `Ok(true)`
/// verified, `Ok(false)` not checkable (no public key), `Err` why it is bad.
fn check_checkpoint(
    text: &str,
    seq: u64,
    prev: &str,
    public_key: Option<&str>,
) -> Result<bool, String> {
    let record: AuditRecord = serde_json::from_str(text)
        .map_err(|e| format!("a checkpoint record that does not parse: {e}"))?;
    let Some(cp) = record.checkpoint else {
        return Ok(true);
    };
    if cp.kind == "chain" && (cp.seq + 1 != seq || cp.head != prev) {
        return Err(format!(
            "the checkpoint vouches for record {} with another hash than the chain holds",
            cp.seq
        ));
    }
    let Some(key) = public_key else {
        return Ok(false);
    };
    if signing::key_id(&hex::decode(key).unwrap_or_default()) != cp.key_id {
        return Err(format!(
            "the checkpoint was signed with key {}, not with the public key given",
            cp.key_id
        ));
    }
    if !signing::verify(key, &cp.signed_message(), &cp.signature) {
        return Err("the checkpoint's signature does not verify: it was forged or altered".into());
    }
    Ok(true)
}

/// A checkpoint file: one JSON object per line, as the writer appends them.
fn read_checkpoint_file(path: &Path) -> Result<Vec<querygate_core::audit::Checkpoint>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the checkpoint file {}: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            serde_json::from_str(l)
                .map_err(|e| format!("checkpoint file {} line {}: {e}", path.display(), n + 1))
        })
        .collect()
}
