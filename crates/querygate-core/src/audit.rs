//! The audit record and the hash chain over it. Pure: storing records is the store's job.
//!
//! Each record is encoded canonically (compact JSON, fields in the fixed order of
//! [`AuditRecord`], no maps), and its hash is `SHA-256(prev_hash || "\n" || encoding)`.
//! The first record's `prev_hash` is [`GENESIS`]. The record carries its own `seq`,
//! so moving a record to another position breaks the chain even if its bytes are intact.
//! Schema version: [`AuditRecord::SCHEMA`]; add fields only at the end, as `Option`s
//! (or `Vec`s) with `#[serde(default)]`, so older records still parse.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// `prev_hash` of the first record in a chain.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Which moment of a request a record describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Written durably before anything reaches the upstream (or as the only record of a denial).
    Decided,
    /// Written when the upstream's answer has been handled.
    Completed,
}

/// One entry of the audit log. Secrets never appear here: only their owners' names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    /// Version of this schema.
    pub v: u32,
    /// Position in the chain, from 1. Assigned by the store.
    pub seq: u64,
    /// RFC 3339 UTC time the record was made.
    pub time: String,
    pub request_id: String,
    pub phase: Phase,
    /// Authenticated subject, or `anonymous` / `unauthenticated` when authentication failed.
    pub identity: String,
    pub groups: Vec<String>,
    /// human / agent / service, when authenticated.
    pub kind: Option<String>,
    /// The source the request was routed to, or the target the client named if none matched.
    pub source: String,
    /// API method as the wire names it (`jobs.query`, `tabledata.list`, …).
    pub method: String,
    /// The full statement, never truncated.
    pub statement: Option<String>,
    /// The table a direct read or metadata call addressed.
    pub table: Option<String>,
    /// `allow` or `deny`.
    pub decision: String,
    /// Why: the denial message, or the rule that allowed it.
    pub reason: Option<String>,
    pub job_id: Option<String>,
    /// Status returned to the client (HTTP status for REST fronts). Unset in `decided` records of allowed requests.
    pub status: Option<u16>,
    /// Error text returned to the client, if any (upstream or gateway).
    pub error: Option<String>,
    pub rows: Option<u64>,
    pub bytes_processed: Option<u64>,
    pub bytes_billed: Option<u64>,
    pub duration_ms: Option<f64>,
    pub user_agent: Option<String>,
    pub peer: Option<String>,
    /// Statement kinds of the analyzed SQL (`select`, `insert`, …).
    #[serde(default)]
    pub statement_kinds: Vec<String>,
    /// Tables the request reads or writes, qualified (`project.dataset.table`).
    #[serde(default)]
    pub tables: Vec<String>,
    /// The policy rule that decided, if one did.
    #[serde(default)]
    pub rule: Option<String>,
    /// Every rule that matched, in order.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Hash of the policy that decided.
    #[serde(default)]
    pub policy_version: Option<String>,
    /// Dry-run estimate of the bytes the query would process, when one was made.
    #[serde(default)]
    pub bytes_estimate: Option<u64>,
    /// The subject the identity acted for (an agent acting for a person), if any.
    #[serde(default)]
    pub acting_for: Option<String>,
    /// Groups of the subject acted for.
    #[serde(default)]
    pub acting_for_groups: Vec<String>,
    /// How the identity authenticated: `api_key` or `oidc:<issuer>`.
    #[serde(default)]
    pub auth: Option<String>,
    /// The approval ticket the request opened or ran under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
    /// Who approved (or denied) it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approver: Option<String>,
    /// The statement as the masking rewrite sent it upstream, when it differs from
    /// `statement` (every read of a table with masked columns wrapped in its masks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewritten: Option<String>,
    /// Result values the source's value detectors masked (absent when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked: Option<u64>,
    /// On `audit.checkpoint` and `audit.prune` records: the signed statement about the chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// The recorded session the request belongs to (see `querygate sessions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// On a completed record of a PostgreSQL statement: its SQLSTATE (`00000` when it
    /// succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlstate: Option<String>,
}

impl AuditRecord {
    /// A record with only the time-independent basics set (the caller sets `time`).
    pub fn default_for(method: &str, identity: &str) -> AuditRecord {
        AuditRecord {
            v: AuditRecord::SCHEMA,
            seq: 0,
            time: String::new(),
            request_id: String::new(),
            phase: Phase::Decided,
            identity: identity.to_string(),
            groups: vec![],
            kind: None,
            source: String::new(),
            method: method.to_string(),
            statement: None,
            table: None,
            decision: String::new(),
            reason: None,
            job_id: None,
            status: None,
            error: None,
            rows: None,
            bytes_processed: None,
            bytes_billed: None,
            duration_ms: None,
            user_agent: None,
            peer: None,
            statement_kinds: vec![],
            tables: vec![],
            rule: None,
            rules: vec![],
            policy_version: None,
            bytes_estimate: None,
            acting_for: None,
            acting_for_groups: vec![],
            auth: None,
            ticket: None,
            approver: None,
            checkpoint: None,
            rewritten: None,
            masked: None,
            session: None,
            sqlstate: None,
        }
    }

    pub const SCHEMA: u32 = 1;

    /// The canonical encoding the chain hashes.
    pub fn canonical(&self) -> String {
        // Serializing a struct of strings, numbers and options cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A signed statement that the chain held record `seq` with hash `head` at `time`: kind
/// `chain` (a periodic checkpoint) or `pruned` (records up to `seq` were deleted by
/// retention, and the first kept record must follow `head`). Signed with Ed25519 over
/// [`Checkpoint::message`]; `key_id` names the key (the first 16 hex digits of the SHA-256
/// of the public key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub kind: String,
    pub seq: u64,
    pub head: String,
    pub time: String,
    pub key_id: String,
    /// Hex.
    pub signature: String,
}

impl Checkpoint {
    /// The exact bytes signed.
    pub fn message(kind: &str, seq: u64, head: &str, time: &str) -> String {
        format!("querygate audit checkpoint v1\nkind {kind}\nseq {seq}\nhead {head}\ntime {time}\n")
    }

    pub fn signed_message(&self) -> String {
        Checkpoint::message(&self.kind, self.seq, &self.head, &self.time)
    }
}

/// The hash of a record given its predecessor's hash and its canonical encoding.
pub fn chain_hash(prev_hash: &str, canonical: &str) -> String {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    hex::encode(h.finalize())
}

/// One stored row of the chain, as read back for verification.
#[derive(Debug, Clone)]
pub struct ChainRow {
    pub seq: u64,
    pub record: String,
    pub prev_hash: String,
    pub hash: String,
}

/// What is wrong with the first bad record of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub seq: u64,
    pub problem: String,
}

/// Walks a chain in stored order and stops at the first record that does not fit.
///
/// Detects: an edited record (hash mismatch), a deleted record (gap in `seq` or
/// `prev_hash` mismatch), an inserted record (`seq` or link mismatch), and reordering
/// (the record's own `seq` differs from its position, or links mismatch).
#[derive(Debug)]
pub struct ChainVerifier {
    expected_seq: u64,
    prev_hash: String,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier {
            expected_seq: 1,
            prev_hash: GENESIS.to_string(),
        }
    }
}

impl ChainVerifier {
    /// A verifier for a chain whose records before `seq` were pruned, the last of them
    /// having had hash `prev_hash` (vouched for by a signed `pruned` checkpoint).
    pub fn starting_at(seq: u64, prev_hash: &str) -> ChainVerifier {
        ChainVerifier {
            expected_seq: seq,
            prev_hash: prev_hash.to_string(),
        }
    }

    /// Checks the next row; `Err` names the first problem.
    pub fn check(&mut self, row: &ChainRow) -> Result<(), ChainBreak> {
        let fail = |problem: String| ChainBreak {
            seq: row.seq,
            problem,
        };
        if row.seq != self.expected_seq {
            return Err(fail(format!(
                "expected record {} here, found {} (a record was deleted, inserted or moved)",
                self.expected_seq, row.seq
            )));
        }
        if row.prev_hash != self.prev_hash {
            return Err(fail(
                "prev_hash does not match the previous record's hash (a record before it was removed, inserted or changed)".into(),
            ));
        }
        if !hash_matches(&row.prev_hash, &row.record, &row.hash) {
            return Err(fail(
                "hash does not match the record's content (the record was edited)".into(),
            ));
        }
        let inner_seq = inner_seq(&row.record);
        if inner_seq != Some(row.seq) {
            return Err(fail(format!(
                "the record says it is number {inner_seq:?}, but it is stored as {} (records were reordered)",
                row.seq
            )));
        }
        self.expected_seq += 1;
        self.prev_hash.clone_from(&row.hash);
        Ok(())
    }

    /// Number of records checked so far.
    pub fn count(&self) -> u64 {
        self.expected_seq - 1
    }

    pub fn head(&self) -> &str {
        &self.prev_hash
    }
}

/// Whether `hash` (hex) is [`chain_hash`] of `prev_hash` and `canonical`, without
/// allocating (verify checks a million records a second).
fn hash_matches(prev_hash: &str, canonical: &str, hash: &str) -> bool {
    let mut h = Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(canonical.as_bytes());
    let digest = h.finalize();
    let hex = hash.as_bytes();
    hex.len() == 64
        && digest.iter().enumerate().all(|(i, b)| {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            hex[2 * i] == DIGITS[(b >> 4) as usize] && hex[2 * i + 1] == DIGITS[(b & 15) as usize]
        })
}

/// The `seq` a record's own text carries. Canonical records start `{"v":1,"seq":N,` so the
/// number is read from there without parsing the whole record (verify reads a million
/// records a second); anything else is parsed in full.
fn inner_seq(record: &str) -> Option<u64> {
    if let Some(rest) = record.strip_prefix("{\"v\":1,\"seq\":") {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && rest.as_bytes().get(digits) == Some(&b',') {
            return rest[..digits].parse().ok();
        }
    }
    serde_json::from_str::<serde_json::Value>(record)
        .ok()
        .and_then(|v| v.get("seq").and_then(|s| s.as_u64()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inner_seq_is_read_from_the_prefix_or_the_whole_record() {
        assert_eq!(inner_seq(r#"{"v":1,"seq":42,"time":"t"}"#), Some(42));
        assert_eq!(inner_seq(r#"{"seq":7,"v":1}"#), Some(7));
        assert_eq!(inner_seq(r#"{"v":1,"seq":4x2}"#), None);
        assert_eq!(inner_seq("not json"), None);
    }

    fn record(seq: u64, statement: &str) -> AuditRecord {
        let mut r = AuditRecord::default_for("jobs.query", "agent:x");
        r.seq = seq;
        r.time = "2026-11-27T00:00:00Z".into();
        r.request_id = format!("r{seq}");
        r.groups = vec!["agents".into()];
        r.kind = Some("agent".into());
        r.source = "analytics".into();
        r.statement = Some(statement.into());
        r.decision = "allow".into();
        r
    }

    fn chain(n: u64) -> Vec<ChainRow> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let rec = record(seq, &format!("SELECT {seq}")).canonical();
                let hash = chain_hash(&prev, &rec);
                let row = ChainRow {
                    seq,
                    record: rec,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                row
            })
            .collect()
    }

    fn first_break(rows: &[ChainRow]) -> Option<ChainBreak> {
        let mut v = ChainVerifier::default();
        rows.iter().find_map(|r| v.check(r).err())
    }

    #[test]
    fn intact_chain_verifies() {
        assert_eq!(first_break(&chain(5)), None);
    }

    #[test]
    fn edit_is_named() {
        let mut rows = chain(5);
        rows[2].record = rows[2].record.replace("SELECT 3", "SELECT 4");
        assert_eq!(first_break(&rows).map(|b| b.seq), Some(3));
    }

    #[test]
    fn deletion_is_named() {
        let mut rows = chain(5);
        rows.remove(1);
        assert_eq!(first_break(&rows).map(|b| b.seq), Some(3));
    }

    #[test]
    fn reorder_is_named() {
        let mut rows = chain(5);
        // Swap contents of 2 and 4 but keep positions' seq numbers (what an UPDATE would do).
        let (a, b) = (rows[1].clone(), rows[3].clone());
        rows[1] = ChainRow { seq: 2, ..b };
        rows[3] = ChainRow { seq: 4, ..a };
        assert_eq!(first_break(&rows).map(|b| b.seq), Some(2));
    }

    #[test]
    fn canonical_encoding_is_stable() {
        let r = record(1, "SELECT 1");
        assert_eq!(r.canonical(), r.clone().canonical());
        assert!(r.canonical().starts_with("{\"v\":1,\"seq\":1,"));
    }
}
