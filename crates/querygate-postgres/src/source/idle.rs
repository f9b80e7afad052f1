//! Idle upstream sessions of the gateway's own (catalog lookups, the MCP tools' calls),
//! kept a little while for the next call: signing in (TCP, startup, SCRAM) costs the
//! upstream and the gateway more than most calls do.
//!
//! A session goes back only when its last answer was read whole and it is outside a
//! transaction; one that ran a client's statement is first reset with `DISCARD ALL`
//! (settings back to those it started with, prepared statements, cursors, temporary
//! tables, advisory locks and `LISTEN`s gone), so that nothing a call left reaches the
//! next. At most [`KEEP`] wait, each at most [`IDLE`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::BytesMut;

use crate::source::{Expect, exchange};
use crate::upstream::Upstream;

/// Sessions kept per kind.
const KEEP: usize = 4;
/// How long a session waits for its next call.
const IDLE: Duration = Duration::from_secs(30);

/// What a session was opened for (each kind starts with its own `search_path`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// The gateway's catalog lookups (`search_path` `pg_catalog`).
    Lookup,
    /// The MCP tools' calls (`search_path` `public`), which run clients' statements.
    Neutral,
}

#[derive(Debug, Default)]
pub(crate) struct Idle {
    kept: Mutex<Vec<(Purpose, Instant, Upstream)>>,
}

impl Idle {
    /// A kept session for `purpose`, if one waits (those waiting too long are closed).
    pub(crate) fn take(&self, purpose: Purpose) -> Option<Upstream> {
        let (found, stale) = {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let (fresh, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut *kept)
                .into_iter()
                .partition(|(_, since, _)| now.duration_since(*since) < IDLE);
            *kept = fresh;
            let at = kept.iter().rposition(|(p, _, _)| *p == purpose);
            (at.map(|i| kept.remove(i).2), stale)
        };
        for (_, _, upstream) in stale {
            tokio::spawn(upstream.terminate());
        }
        found
    }

    /// Keeps `upstream` for the next call when it can serve one; else closes it.
    pub(crate) async fn put(&self, purpose: Purpose, mut upstream: Upstream) {
        let reusable = upstream.status == b'I' && !upstream.interrupted;
        let reset = match (reusable, purpose) {
            (false, _) => false,
            (true, Purpose::Lookup) => true,
            (true, Purpose::Neutral) => {
                let query = b"DISCARD ALL\0";
                let mut frames = BytesMut::from(&b"Q"[..]);
                frames.extend_from_slice(&((4 + query.len()) as i32).to_be_bytes());
                frames.extend_from_slice(query);
                matches!(
                    exchange(&mut upstream, frames, &[Expect::Ready], false).await,
                    Ok(reply) if reply.error.is_none() && upstream.status == b'I'
                )
            }
        };
        if reset {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.iter().filter(|(p, _, _)| *p == purpose).count() < KEEP {
                kept.push((purpose, Instant::now(), upstream));
                return;
            }
        }
        upstream.terminate().await;
    }
}
