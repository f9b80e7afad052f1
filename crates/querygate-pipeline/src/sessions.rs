//! Session assignment: which recorded session a request belongs to.
//!
//! A client may name its session (the front decodes it into `Request::session`); a name
//! that is not 1–128 characters of `A–Z a–z 0–9 . _ : -` is ignored. Otherwise requests of
//! one identity (and the person it acts for) through one client (user agent) from one
//! address (the peer's IP, not its port: a client opens many connections) share a session
//! the gateway names `ss_<24 hex>`, until the client has been quiet for the idle gap
//! (30 minutes); the next request then starts a new one. Polls of a job stay in the
//! session that created it, so a job created under a session label stays in that
//! session even though its polls carry no label. In memory only: a restart starts new
//! sessions. Entries idle past the gap are swept now and then.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a client may be quiet before its next request starts a new session.
pub const IDLE_GAP: Duration = Duration::from_secs(30 * 60);
/// How often idle entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Who is asking, through what, from where.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ClientKey {
    pub subject: String,
    pub acting_for: Option<String>,
    pub user_agent: Option<String>,
    /// The peer's IP address, without the port.
    pub ip: Option<String>,
}

#[derive(Debug)]
struct Inner {
    by_client: HashMap<ClientKey, (String, Instant)>,
    /// (subject, job id) → the session that created the job.
    by_job: HashMap<(String, String), (String, Instant)>,
    swept: Instant,
}

/// The sessions in progress.
#[derive(Debug)]
pub(crate) struct Sessions {
    idle: Duration,
    inner: Mutex<Inner>,
}

impl Sessions {
    pub(crate) fn new(idle: Duration) -> Sessions {
        Sessions {
            idle,
            inner: Mutex::new(Inner {
                by_client: HashMap::new(),
                by_job: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    /// The session of a request: the one the client named, else the one of the job it
    /// polls, else the client's current one (a new one after the idle gap).
    pub(crate) fn assign(
        &self,
        named: Option<&str>,
        key: ClientKey,
        job: Option<&str>,
        now: Instant,
    ) -> String {
        if let Some(name) = named.filter(|n| valid(n)) {
            return name.to_string();
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(inner.swept) >= SWEEP_EVERY {
            let idle = self.idle;
            inner
                .by_client
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < idle);
            inner
                .by_job
                .retain(|_, (_, last)| now.saturating_duration_since(*last) < idle);
            inner.swept = now;
        }
        if let Some(job) = job
            && let Some((session, last)) = inner
                .by_job
                .get_mut(&(key.subject.clone(), job.to_string()))
            && now.saturating_duration_since(*last) < self.idle
        {
            *last = now;
            return session.clone();
        }
        match inner.by_client.get_mut(&key) {
            Some((session, last)) if now.saturating_duration_since(*last) < self.idle => {
                *last = now;
                session.clone()
            }
            _ => {
                let session = new_id();
                inner.by_client.insert(key, (session.clone(), now));
                session
            }
        }
    }

    /// Remembers that `subject`'s job `job` belongs to `session`, for its polls.
    pub(crate) fn remember_job(&self, subject: &str, job: &str, session: &str, now: Instant) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.by_job.insert(
            (subject.to_string(), job.to_string()),
            (session.to_string(), now),
        );
    }
}

/// Whether a client's session name is usable: short, and safe in paths and logs.
pub(crate) fn valid(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

fn new_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("ss_{}", &hex[..24])
}

/// `1.2.3.4:5678` → `1.2.3.4`, `[::1]:5678` → `::1`; anything else as is.
pub(crate) fn ip_of(peer: &str) -> String {
    peer.parse::<std::net::SocketAddr>()
        .map(|a| a.ip().to_string())
        .unwrap_or_else(|_| peer.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(subject: &str, ua: &str, peer: &str) -> ClientKey {
        ClientKey {
            subject: subject.into(),
            acting_for: None,
            user_agent: Some(ua.into()),
            ip: Some(ip_of(peer)),
        }
    }

    #[test]
    fn one_client_keeps_its_session_until_it_goes_quiet() {
        let s = Sessions::new(IDLE_GAP);
        let t0 = Instant::now();
        let a = s.assign(None, key("agent:a", "py", "127.0.0.1:5000"), None, t0);
        assert!(a.starts_with("ss_") && a.len() == 27, "{a}");
        // Another connection (port) of the same client, within the gap: same session.
        let t1 = t0 + Duration::from_secs(29 * 60);
        assert_eq!(
            s.assign(None, key("agent:a", "py", "127.0.0.1:5001"), None, t1),
            a
        );
        // The gap counts from the last request, not the first.
        let t2 = t1 + Duration::from_secs(29 * 60);
        assert_eq!(
            s.assign(None, key("agent:a", "py", "127.0.0.1:5002"), None, t2),
            a
        );
        // Quiet for longer than the gap: a new session.
        let t3 = t2 + IDLE_GAP + Duration::from_secs(1);
        let b = s.assign(None, key("agent:a", "py", "127.0.0.1:5003"), None, t3);
        assert_ne!(b, a);
        assert_eq!(
            s.assign(None, key("agent:a", "py", "127.0.0.1:5003"), None, t3),
            b
        );
    }

    #[test]
    fn other_identities_clients_and_addresses_get_their_own() {
        let s = Sessions::new(IDLE_GAP);
        let t = Instant::now();
        let a = s.assign(None, key("agent:a", "py", "127.0.0.1:1"), None, t);
        for other in [
            key("agent:b", "py", "127.0.0.1:1"),
            key("agent:a", "node", "127.0.0.1:1"),
            key("agent:a", "py", "127.0.0.2:1"),
            ClientKey {
                acting_for: Some("user:alice".into()),
                ..key("agent:a", "py", "127.0.0.1:1")
            },
        ] {
            assert_ne!(s.assign(None, other, None, t), a);
        }
        assert_eq!(ip_of("[::1]:9050"), "::1");
        assert_eq!(ip_of("not an address"), "not an address");
    }

    #[test]
    fn a_named_session_wins_and_its_jobs_polls_follow_it() {
        let s = Sessions::new(IDLE_GAP);
        let t = Instant::now();
        let k = key("agent:a", "py", "127.0.0.1:1");
        assert_eq!(s.assign(Some("run-42"), k.clone(), None, t), "run-42");
        s.remember_job("agent:a", "job-1", "run-42", t);
        assert_eq!(s.assign(None, k.clone(), Some("job-1"), t), "run-42");
        // Another identity polling the same job id is not put in that session.
        let other = key("agent:b", "py", "127.0.0.1:1");
        assert_ne!(s.assign(None, other, Some("job-1"), t), "run-42");
        // Names that are not safe are ignored.
        for bad in ["", "a b", "x/../y", &"x".repeat(129), "é"] {
            assert!(!valid(bad), "{bad:?}");
            assert!(s.assign(Some(bad), k.clone(), None, t).starts_with("ss_"));
        }
    }

    #[test]
    fn idle_entries_are_swept() {
        let s = Sessions::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for i in 0..100 {
            s.assign(
                None,
                key(&format!("agent:{i}"), "py", "127.0.0.1:1"),
                None,
                t0,
            );
        }
        s.assign(
            None,
            key("agent:late", "py", "127.0.0.1:1"),
            None,
            t0 + SWEEP_EVERY + Duration::from_secs(1),
        );
        let inner = s.inner.lock().expect("lock");
        assert_eq!(inner.by_client.len(), 1);
    }
}
