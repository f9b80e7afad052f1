//! The writer thread: group commit of audit records and job claims.
//!
//! It blocks for the first queued operation, takes whatever else is already queued
//! (up to [`MAX_BATCH`]), applies them all in one `BEGIN IMMEDIATE` transaction and
//! acknowledges each only after the commit. A failed batch fails every operation in
//! it, so callers never believe an unwritten record is durable.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use querygate_core::audit::{GENESIS, chain_hash};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use crate::{Op, Pending, StoreError};

const MAX_BATCH: usize = 512;
/// How long a batch may wait for more operations when requests are arriving concurrently.
const LINGER: Duration = Duration::from_micros(250);

pub(crate) fn run(mut conn: Connection, path: PathBuf, ops: mpsc::Receiver<Op>, pending: Pending) {
    let mut last_batch = 0;
    while let Ok(first) = ops.recv() {
        let mut batch = vec![first];
        // Under concurrency (the last batch held several operations), wait a moment for
        // more: every commit rewrites whole pages and syncs, so fewer, larger commits
        // carry more requests per core. A lone client never waits.
        let linger = (last_batch > 2).then(|| Instant::now() + LINGER);
        while batch.len() < MAX_BATCH {
            match ops.try_recv() {
                Ok(op) => batch.push(op),
                Err(mpsc::TryRecvError::Disconnected) => break,
                Err(mpsc::TryRecvError::Empty) => match linger {
                    Some(until) if Instant::now() < until => {
                        match ops.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(op) => batch.push(op),
                            Err(_) => break,
                        }
                    }
                    _ => break,
                },
            }
        }
        last_batch = batch.len();
        match commit(&mut conn, &mut batch) {
            Ok(results) => {
                let mut queued = pending.lock().unwrap_or_else(|e| e.into_inner());
                for op in &batch {
                    match op {
                        Op::ClaimJob { job, .. } => {
                            queued
                                .claims
                                .remove(&(job.source.clone(), job.job_id.clone()));
                        }
                        Op::Append {
                            record,
                            usage: Some(bytes),
                            ..
                        } => {
                            let key = (record.identity.clone(), crate::day_of(record));
                            if let Some(v) = queued.usage.get_mut(&key) {
                                *v = v.saturating_sub(*bytes);
                                if *v == 0 {
                                    queued.usage.remove(&key);
                                }
                            }
                        }
                        _ => {}
                    }
                }
                drop(queued);
                for (op, seq) in batch.into_iter().zip(results) {
                    ack(op, Ok(seq));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, path = %path.display(), "audit store write failed");
                for op in batch {
                    ack(
                        op,
                        Err(StoreError::Failed {
                            path: path.display().to_string(),
                            message: format!("write failed: {e}"),
                        }),
                    );
                }
            }
        }
    }
}

fn ack(op: Op, result: Result<u64, StoreError>) {
    // A caller that stopped waiting is fine to ignore.
    let _ = match op {
        Op::Append { ack, .. } | Op::ClaimJob { ack, .. } | Op::Flush { ack } => ack.send(result),
    };
}

fn commit(conn: &mut Connection, batch: &mut [Op]) -> rusqlite::Result<Vec<u64>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(batch.len());
    {
        let head: Option<(i64, String)> = tx
            .prepare_cached("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")?
            .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let (last, mut prev) = head.unwrap_or((0, GENESIS.to_string()));
        let mut seq = last as u64;
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit_log (seq, record, prev_hash, hash) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut claim = tx.prepare_cached(
            "INSERT INTO jobs (source, job_id, identity, destination, schema, row_limit)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (source, job_id) DO UPDATE SET
                destination = COALESCE(excluded.destination, jobs.destination),
                schema = COALESCE(excluded.schema, jobs.schema),
                row_limit = COALESCE(jobs.row_limit, excluded.row_limit)",
        )?;
        let mut spend = tx.prepare_cached(
            "INSERT INTO usage (identity, day, bytes) VALUES (?1, ?2, ?3)
             ON CONFLICT (identity, day) DO UPDATE SET bytes = usage.bytes + excluded.bytes",
        )?;
        for op in batch.iter_mut() {
            match op {
                Op::Append { record, usage, .. } => {
                    if let Some(bytes) = usage.filter(|b| *b > 0) {
                        let day = crate::day_of(record);
                        spend.execute(params![record.identity, day, bytes as i64])?;
                    }
                    seq += 1;
                    record.seq = seq;
                    let encoded = record.canonical();
                    let hash = chain_hash(&prev, &encoded);
                    insert.execute(params![seq as i64, encoded, prev, hash])?;
                    prev = hash;
                    results.push(seq);
                }
                Op::Flush { .. } => results.push(0),
                Op::ClaimJob { job, .. } => {
                    claim.execute(params![
                        job.source,
                        job.job_id,
                        job.identity,
                        job.destination,
                        job.schema,
                        job.row_limit.map(|v| v as i64)
                    ])?;
                    results.push(0);
                }
            }
        }
    }
    tx.commit()?;
    Ok(results)
}
