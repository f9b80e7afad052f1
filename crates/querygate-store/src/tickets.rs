//! Approval tickets in the store: opened by the pipeline, decided by approvers, run once.
//!
//! Every state change is one `UPDATE … WHERE state = …` in its own transaction with
//! `synchronous = FULL`, so two approvers, two gateway tasks or two polls racing for the
//! same ticket cannot both win, and a decision survives a restart. The whole ticket is
//! kept as JSON beside the columns that lookups filter on.

use querygate_core::{Ticket, TicketState};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{Store, StoreError, sqlite_err};

/// Which tickets to list. Empty fields match everything.
#[derive(Debug, Clone, Default)]
pub struct TicketFilter {
    pub state: Option<TicketState>,
    pub source: Option<String>,
    pub requester: Option<String>,
    pub limit: Option<usize>,
}

/// An approver's decision on a ticket.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub approve: bool,
    pub by: String,
    pub reason: Option<String>,
    /// For a window grant: until when (Unix seconds).
    pub grant_until: Option<i64>,
    /// An approved ticket must run by then (Unix seconds), or it expires unused.
    pub run_by: i64,
}

/// Why a decision could not be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undecidable {
    NotFound,
    /// The ticket was already decided (or ran, expired, was cancelled).
    Final(TicketState),
    /// It expired before the decision arrived (and is now marked so).
    Expired,
}

impl Store {
    fn tickets_conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.tickets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores a new ticket durably.
    pub fn open_ticket(&self, ticket: &Ticket) -> Result<(), StoreError> {
        let conn = self.tickets_conn();
        conn.execute(
            "INSERT INTO tickets (id, state, created, expires, requester, source, job_id, rule,
                 policy_version, fingerprint, grant_until, notified, ticket)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                ticket.id,
                ticket.state.as_str(),
                ticket.created,
                ticket.expires,
                ticket.requester,
                ticket.source,
                ticket.job_id,
                ticket.rule,
                ticket.policy_version,
                ticket.fingerprint,
                ticket.grant_until,
                ticket.notified,
                encode(ticket),
            ],
        )
        .map(|_| ())
        .map_err(sqlite_err(&self.path))
    }

    pub fn ticket(&self, id: &str) -> Result<Option<Ticket>, StoreError> {
        self.ticket_where("id = ?1", params![id])
    }

    /// The ticket that holds a job, if the job waited for approval.
    pub fn ticket_for_job(&self, source: &str, job_id: &str) -> Result<Option<Ticket>, StoreError> {
        self.ticket_where("source = ?1 AND job_id = ?2", params![source, job_id])
    }

    fn ticket_where(
        &self,
        condition: &str,
        params: impl rusqlite::Params,
    ) -> Result<Option<Ticket>, StoreError> {
        let conn = self.tickets_conn();
        conn.prepare_cached(&format!(
            "SELECT ticket FROM tickets WHERE {condition} ORDER BY created DESC LIMIT 1"
        ))
        .and_then(|mut st| st.query_row(params, |r| r.get::<_, String>(0)).optional())
        .map_err(sqlite_err(&self.path))?
        .map(|text| decode(&text, &self.path))
        .transpose()
    }

    /// Tickets matching `filter`, newest first.
    pub fn tickets(&self, filter: &TicketFilter) -> Result<Vec<Ticket>, StoreError> {
        let conn = self.tickets_conn();
        let mut st = conn
            .prepare_cached(
                "SELECT ticket FROM tickets
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR source = ?2)
                   AND (?3 IS NULL OR requester = ?3)
                 ORDER BY created DESC, id LIMIT ?4",
            )
            .map_err(sqlite_err(&self.path))?;
        let rows = st
            .query_map(
                params![
                    filter.state.map(TicketState::as_str),
                    filter.source,
                    filter.requester,
                    filter.limit.unwrap_or(1000) as i64
                ],
                |r| r.get::<_, String>(0),
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sqlite_err(&self.path))?;
        rows.iter().map(|t| decode(t, &self.path)).collect()
    }

    /// Applies an approver's decision to a pending ticket, atomically. A ticket past its
    /// expiry is marked expired instead.
    pub fn decide_ticket(
        &self,
        id: &str,
        verdict: &Verdict,
        now: i64,
    ) -> Result<Result<Ticket, Undecidable>, StoreError> {
        self.transition(id, |t| {
            if t.state != TicketState::Pending {
                return Err(Undecidable::Final(t.state));
            }
            if now >= t.expires {
                t.state = TicketState::Expired;
                t.decided_at = Some(now);
                t.decision_reason = Some("nobody decided before the ticket expired".into());
                return Ok(false);
            }
            t.state = if verdict.approve {
                TicketState::Approved
            } else {
                TicketState::Denied
            };
            t.decided_by = Some(verdict.by.clone());
            t.decided_at = Some(now);
            t.decision_reason = verdict.reason.clone();
            t.grant_until = verdict.grant_until.filter(|_| verdict.approve);
            if verdict.approve {
                t.expires = verdict.run_by.max(t.grant_until.unwrap_or(0));
            }
            Ok(true)
        })
        .map(|r| match r {
            Ok((t, true)) => Ok(t),
            Ok((_, false)) => Err(Undecidable::Expired),
            Err(e) => Err(e),
        })
    }

    /// Moves an approved ticket to running, atomically: `Some` only for the one caller
    /// that gets to run it.
    pub fn start_ticket(&self, id: &str) -> Result<Option<Ticket>, StoreError> {
        self.transition(id, |t| {
            if t.state != TicketState::Approved {
                return Err(Undecidable::Final(t.state));
            }
            t.state = TicketState::Running;
            Ok(true)
        })
        .map(|r| r.ok().map(|(t, _)| t))
    }

    /// Ends a ticket whose approved run the upstream did not accept (running → denied), with
    /// why: its job never became the requester's, so polls of it end with the reason instead
    /// of reaching whatever job the upstream has under that id. `None` if it was not running.
    pub fn fail_running_ticket(
        &self,
        id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<Ticket>, StoreError> {
        self.transition(id, |t| {
            if t.state != TicketState::Running {
                return Err(Undecidable::Final(t.state));
            }
            t.state = TicketState::Denied;
            t.decided_at = Some(now);
            t.decision_reason = Some(reason.to_string());
            Ok(true)
        })
        .map(|r| r.ok().map(|(t, _)| t))
    }

    /// Ends a ticket that is still pending or approved (expired, cancelled, or refused at
    /// run time because the policy changed), with a reason. `None` if it was already final.
    pub fn end_ticket(
        &self,
        id: &str,
        state: TicketState,
        reason: &str,
        now: i64,
    ) -> Result<Option<Ticket>, StoreError> {
        self.transition(id, |t| {
            if t.state.is_final() {
                return Err(Undecidable::Final(t.state));
            }
            t.state = state;
            t.decided_at = Some(now);
            t.decision_reason = Some(reason.to_string());
            Ok(true)
        })
        .map(|r| r.ok().map(|(t, _)| t))
    }

    /// Pending tickets past their expiry, marked expired (the caller audits them).
    pub fn expire_tickets(&self, now: i64) -> Result<Vec<Ticket>, StoreError> {
        let due: Vec<String> = {
            let conn = self.tickets_conn();
            let mut st = conn
                .prepare_cached("SELECT id FROM tickets WHERE state = 'pending' AND expires <= ?1")
                .map_err(sqlite_err(&self.path))?;
            st.query_map(params![now], |r| r.get::<_, String>(0))
                .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
                .map_err(sqlite_err(&self.path))?
        };
        let mut expired = Vec::new();
        for id in due {
            if let Some(t) = self.end_ticket(
                &id,
                TicketState::Expired,
                "nobody decided before the ticket expired",
                now,
            )? {
                expired.push(t);
            }
        }
        Ok(expired)
    }

    /// A window grant covering a request: approved for `identity` under `rule` of this
    /// policy version, its window still open.
    pub fn window_grant(
        &self,
        identity: &str,
        source: &str,
        rule: &str,
        policy_version: &str,
        now: i64,
    ) -> Result<Option<Ticket>, StoreError> {
        self.ticket_where(
            "requester = ?1 AND source = ?2 AND rule = ?3 AND policy_version = ?4
             AND state IN ('approved', 'running') AND grant_until > ?5",
            params![identity, source, rule, policy_version, now],
        )
    }

    /// Approved tickets of `identity` for a statement with `fingerprint` under
    /// `policy_version` that have not run and have not expired (not window grants): a
    /// re-run of the same statement may use one, once. Newest first.
    pub fn approved_once(
        &self,
        identity: &str,
        source: &str,
        fingerprint: &str,
        policy_version: &str,
        now: i64,
    ) -> Result<Vec<Ticket>, StoreError> {
        let conn = self.tickets_conn();
        let mut st = conn
            .prepare_cached(
                "SELECT ticket FROM tickets
                 WHERE requester = ?1 AND source = ?2 AND fingerprint = ?3
                   AND policy_version = ?4 AND state = 'approved' AND grant_until IS NULL
                   AND expires > ?5
                 ORDER BY created DESC LIMIT 16",
            )
            .map_err(sqlite_err(&self.path))?;
        let rows = st
            .query_map(
                params![identity, source, fingerprint, policy_version, now],
                |r| r.get::<_, String>(0),
            )
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sqlite_err(&self.path))?;
        rows.iter().map(|t| decode(t, &self.path)).collect()
    }

    /// Tickets whose approvers have not heard of them yet.
    pub fn unnotified_tickets(&self) -> Result<Vec<Ticket>, StoreError> {
        let conn = self.tickets_conn();
        let mut st = conn
            .prepare_cached(
                "SELECT ticket FROM tickets WHERE notified = 0 AND state = 'pending' ORDER BY created",
            )
            .map_err(sqlite_err(&self.path))?;
        let rows = st
            .query_map([], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(sqlite_err(&self.path))?;
        rows.iter().map(|t| decode(t, &self.path)).collect()
    }

    pub fn mark_notified(&self, id: &str) -> Result<(), StoreError> {
        self.transition(id, |t| {
            t.notified = true;
            Ok(true)
        })
        .map(|_| ())
    }

    /// Reads, changes and writes one ticket in one `BEGIN IMMEDIATE` transaction.
    fn transition(
        &self,
        id: &str,
        change: impl FnOnce(&mut Ticket) -> Result<bool, Undecidable>,
    ) -> Result<Result<(Ticket, bool), Undecidable>, StoreError> {
        let mut conn = self.tickets_conn();
        let err = sqlite_err(&self.path);
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        let text: Option<String> = tx
            .query_row(
                "SELECT ticket FROM tickets WHERE id = ?1",
                params![id],
                |r| r.get(0),
            )
            .optional()
            .map_err(&err)?;
        let Some(text) = text else {
            return Ok(Err(Undecidable::NotFound));
        };
        let mut ticket = decode(&text, &self.path)?;
        let applied = match change(&mut ticket) {
            Ok(applied) => applied,
            Err(u) => return Ok(Err(u)),
        };
        tx.execute(
            "UPDATE tickets SET state = ?2, grant_until = ?3, notified = ?4, expires = ?5,
                 ticket = ?6 WHERE id = ?1",
            params![
                id,
                ticket.state.as_str(),
                ticket.grant_until,
                ticket.notified,
                ticket.expires,
                encode(&ticket)
            ],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(Ok((ticket, applied)))
    }
}

/// The stored form keeps the saved call, which the API form leaves out.
fn encode(ticket: &Ticket) -> String {
    let mut v = serde_json::to_value(ticket).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert("call".into(), ticket.call.clone().into());
    }
    v.to_string()
}

fn decode(text: &str, path: &std::path::Path) -> Result<Ticket, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Failed {
        path: path.display().to_string(),
        message: format!("a stored ticket is not valid: {e}"),
    })
}
