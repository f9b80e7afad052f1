//! Reading the audit log back: search, tail, export and chain verification.
//!
//! Used by the `querygate audit` commands, which may run while a gateway is writing
//! (WAL lets readers proceed). Records still in the journal (not yet indexed, or left by
//! a gateway that stopped abruptly) are read after SQLite's, so nothing durable is
//! missed. Reads never change either file.

use std::path::Path;

use querygate_core::AuditRecord;
use querygate_core::audit::{ChainBreak, ChainRow, ChainVerifier};
use rusqlite::{Connection, params};

use crate::journal::{self, Entry};
use crate::{StoreError, schema, sqlite_err};

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
    }
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub records: u64,
    pub head: String,
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
        mut each: impl FnMut(ChainRow) -> Result<bool, StoreError>,
    ) -> Result<(), StoreError> {
        let mut st = self
            .conn
            .prepare("SELECT seq, record, prev_hash, hash FROM audit_log ORDER BY seq")
            .map_err(self.err())?;
        let mut rows = st.query(params![]).map_err(self.err())?;
        let mut last = 0;
        while let Some(row) = rows.next().map_err(self.err())? {
            let chain_row = ChainRow {
                seq: row.get::<_, i64>(0).map_err(self.err())? as u64,
                record: row.get(1).map_err(self.err())?,
                prev_hash: row.get(2).map_err(self.err())?,
                hash: row.get(3).map_err(self.err())?,
            };
            last = chain_row.seq;
            if !each(chain_row)? {
                return Ok(());
            }
        }
        let entries = journal::read(Path::new(&self.path)).map_err(|e| StoreError::Failed {
            path: self.path.clone(),
            message: format!("cannot read the journal: {e}"),
        })?;
        for entry in entries {
            if let Entry::Record {
                seq,
                record,
                prev_hash,
                hash,
                ..
            } = entry
                && seq > last
                && !each(ChainRow {
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
        let mut tail = std::collections::VecDeque::new();
        self.rows(|row| {
            let record: AuditRecord =
                serde_json::from_str(&row.record).map_err(|e| StoreError::Failed {
                    path: self.path.clone(),
                    message: format!("record {} is not a valid audit record: {e}", row.seq),
                })?;
            if !filter.matches(&record) {
                return Ok(true);
            }
            let record = StoredRecord {
                record,
                prev_hash: row.prev_hash,
                hash: row.hash,
            };
            match last {
                Some(n) => {
                    tail.push_back(record);
                    if tail.len() > n {
                        tail.pop_front();
                    }
                }
                None => each(&record),
            }
            Ok(true)
        })?;
        tail.iter().for_each(each);
        Ok(())
    }

    /// Walks the whole chain. `Ok(Err(break))` names the first bad record.
    pub fn verify(&self) -> Result<Result<VerifyReport, ChainBreak>, StoreError> {
        let mut verifier = ChainVerifier::default();
        let mut broken = None;
        self.rows(|row| match verifier.check(&row) {
            Ok(()) => Ok(true),
            Err(b) => {
                broken = Some(b);
                Ok(false)
            }
        })?;
        if let Some(b) = broken {
            return Ok(Err(b));
        }
        Ok(Ok(VerifyReport {
            records: verifier.count(),
            head: verifier.head().to_string(),
        }))
    }
}
