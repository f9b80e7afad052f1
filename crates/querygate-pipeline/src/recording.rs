//! The record stage: every request's events, handed to the store's session recorder.
//!
//! [`Pipeline::handle`] puts each request in a session (see `sessions`) right after
//! authentication and records it as received; the decision is recorded once its audit
//! record is written, what goes upstream just before it goes, and the response as the
//! client gets it: after `restrict` and the masking of rows and values, so a recording
//! never holds what the client was not given. A result the row limit withholds is
//! recorded as the denial the client got, without the rows. Recording never delays or
//! fails a request: events are queued to the recorder's thread, which drops what it
//! cannot keep. Reading recordings back is a service of its own, [`Recordings`] (the
//! admin front's): members of `readers` read every session, anyone else only the
//! requests they made themselves; every read is audited.

use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use querygate_core::recording::{
    DecisionEvent, Event, EventKind, RequestEvent, ResponseEvent, UpstreamEvent,
};
use querygate_core::{Action, AuditRecord, Denial, DenialKind, Identity, Request};
use querygate_policy::Principal;
use querygate_store::{Attachment, Capture, Recorder, SessionFilter, SessionSummary, Store};

use crate::sessions::{ClientKey, ip_of};
use crate::source::{Reply, Source};
use crate::{Context, Outcome, Pipeline, audit_time};

/// How sessions are recorded (read at start; a reload does not change them).
#[derive(Debug, Clone)]
pub struct RecordingSettings {
    /// Response bodies are recorded up to this many bytes (with the whole body's digest).
    pub max_response_bytes: usize,
    /// Sources whose response bodies are not recorded (`record_results = false`).
    pub without_results: HashSet<String>,
    /// Who may read every recorded session; anyone else reads only their own requests.
    pub readers: Vec<Principal>,
}

impl Default for RecordingSettings {
    fn default() -> Self {
        RecordingSettings {
            max_response_bytes: 64 << 10,
            without_results: HashSet::new(),
            readers: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub(crate) struct Recording {
    settings: RecordingSettings,
    recorder: Arc<Recorder>,
}

/// The session a request was put in, and whom it is recorded as.
#[derive(Debug, Clone)]
pub(crate) struct Tag {
    pub session: String,
    pub identity: String,
}

/// Who a context's request is recorded as: its subject, or `anonymous` /
/// `unauthenticated` as in the audit log.
pub(crate) fn who(request: &Request, identity: Option<&Identity>) -> String {
    match identity {
        Some(i) => i.subject.clone(),
        None if request.credential.is_some() => "unauthenticated".to_string(),
        None => "anonymous".to_string(),
    }
}

fn now() -> String {
    audit_time(time::OffsetDateTime::now_utc())
}

impl Pipeline {
    /// Records sessions with `recorder` (which the caller closes at shutdown).
    pub fn with_recording(mut self, settings: RecordingSettings, recorder: Arc<Recorder>) -> Self {
        self.recordings = Arc::new(Recordings::on(self.store.clone(), settings, recorder));
        self
    }

    /// The recordings service (for the admin front), whether or not sessions are recorded.
    pub fn recordings(&self) -> &Arc<Recordings> {
        &self.recordings
    }

    /// Puts the request in a session (once its identity is known, or known to be
    /// missing) and records it as received.
    pub(crate) fn begin<S: Source>(
        &self,
        ctx: &Context<'_>,
        source: Option<&S>,
        call: Option<&S::Call>,
    ) {
        let r = ctx.request;
        let identity = who(r, ctx.identity);
        let job = match &r.action {
            Action::Job(op) => op.job_id(),
            _ => None,
        };
        let key = ClientKey {
            subject: identity.clone(),
            acting_for: ctx
                .identity
                .and_then(|i| i.acting_for.as_ref())
                .map(|p| p.subject.clone()),
            user_agent: r.client.user_agent.clone(),
            ip: r.client.peer.as_deref().map(ip_of),
        };
        let now = Instant::now();
        let session = self.sessions.assign(r.session.as_deref(), key, job, now);
        if r.session.as_deref() == Some(session.as_str())
            && let Some(job) = &r.job_id
        {
            self.sessions.remember_job(&identity, job, &session, now);
        }
        let tag = ctx.tag.get_or_init(|| Tag { session, identity });
        if self.recordings.recording.is_none() {
            return;
        }
        let parameters = source
            .zip(call)
            .and_then(|(s, call)| s.parameters(call))
            .and_then(|p| serde_json::from_str(&p).ok());
        let event = RequestEvent {
            identity: tag.identity.clone(),
            acting_for: ctx
                .identity
                .and_then(|i| i.acting_for.as_ref())
                .map(|p| p.subject.clone()),
            user_agent: r.client.user_agent.clone(),
            peer: r.client.peer.clone(),
            source: ctx.source.to_string(),
            method: r.method.clone(),
            statement: r.statement().map(str::to_string),
            parameters,
            table: r.table().map(str::to_string),
            job_id: r.job_id.clone().or_else(|| job.map(str::to_string)),
        };
        self.capture(
            tag,
            &r.id.0,
            ctx.received.clone(),
            EventKind::Request(event),
            None,
        );
    }

    /// What the session recording keeps of a decided audit record, taken before the record
    /// goes to the store (`None` when sessions are not recorded).
    pub(crate) fn decision_of(&self, ctx: &Context<'_>, record: &AuditRecord) -> Option<Traced> {
        ctx.tag
            .get()
            .filter(|_| self.recordings.recording.is_some())?;
        Some(Traced {
            time: record.time.clone(),
            event: DecisionEvent {
                decision: record.decision.clone(),
                reason: record.reason.clone(),
                rule: record.rule.clone(),
                ticket: record.ticket.clone(),
                approver: record.approver.clone(),
            },
        })
    }

    /// Records a decision (once its audit record is written).
    pub(crate) fn trace_decision(&self, ctx: &Context<'_>, traced: Option<Traced>) {
        let (Some(tag), Some(traced)) = (ctx.tag.get(), traced) else {
            return;
        };
        self.capture(
            tag,
            &ctx.request.id.0,
            traced.time,
            EventKind::Decision(traced.event),
            None,
        );
    }

    /// Records what is handed to the source, just before it is.
    pub(crate) fn trace_upstream(&self, ctx: &Context<'_>, max_bytes_billed: Option<u64>) {
        let Some(tag) = ctx
            .tag
            .get()
            .filter(|_| self.recordings.recording.is_some())
        else {
            return;
        };
        let r = ctx.request;
        let event = UpstreamEvent {
            method: r.method.clone(),
            statement: r.statement().map(str::to_string),
            table: r.table().map(str::to_string),
            job_id: r.job().map(str::to_string),
            max_bytes_billed,
        };
        self.capture(tag, &r.id.0, now(), EventKind::Upstream(event), None);
    }

    /// Records the answer to a statement only being prepared: allowed, nothing ran (its
    /// run is a request of its own).
    pub(crate) fn trace_prepared(&self, request: &Request, tag: &OnceLock<Tag>) {
        let (Some(tag), Some(_)) = (tag.get(), &self.recordings.recording) else {
            return;
        };
        let event = ResponseEvent {
            status: request.codes.done(),
            rows: Some(0),
            ..ResponseEvent::default()
        };
        self.capture(tag, &request.id.0, now(), EventKind::Response(event), None);
    }

    /// Records what the client gets back.
    pub(crate) fn trace_response<R: Reply>(
        &self,
        request: &Request,
        tag: &OnceLock<Tag>,
        source: Option<&str>,
        outcome: &Outcome<R>,
    ) {
        let Some(tag) = tag.get() else {
            return;
        };
        // Polls of a job created in a named session stay in it (they carry no name).
        if request.session.as_deref() == Some(tag.session.as_str()) {
            let job = match outcome {
                Outcome::Done(reply) => reply.summary().job_id,
                Outcome::Waiting(w) => Some(w.ticket.job_id.clone()),
                _ => None,
            };
            if let Some(job) = job {
                self.sessions
                    .remember_job(&tag.identity, &job, &tag.session, Instant::now());
            }
        }
        let Some(recording) = &self.recordings.recording else {
            return;
        };
        let mut attachment = None;
        let event = match outcome {
            Outcome::Done(reply) => {
                let summary = reply.summary();
                let body = reply.body();
                let omitted =
                    source.is_some_and(|s| recording.settings.without_results.contains(s));
                let mut event = ResponseEvent {
                    status: summary.status,
                    rows: summary.rows,
                    total_rows: summary.total_rows,
                    bytes_processed: summary.bytes_processed,
                    job_id: summary.job_id,
                    error: summary.error,
                    ..ResponseEvent::default()
                };
                if omitted {
                    event.body_omitted = true;
                    event.total_bytes = Some(body.len() as u64);
                } else {
                    attachment = Some(Attachment {
                        body,
                        limit: recording.settings.max_response_bytes,
                    });
                }
                event
            }
            Outcome::Denied(denial) => ResponseEvent {
                status: request.codes.denied(denial.kind),
                error: Some(denial.message.clone()),
                ..ResponseEvent::default()
            },
            Outcome::Failed(fault) => ResponseEvent {
                status: request.codes.failed(fault),
                error: Some(fault.message.clone()),
                ..ResponseEvent::default()
            },
            Outcome::Waiting(w) => ResponseEvent {
                status: if w.ended.is_some() {
                    request.codes.denied(querygate_core::DenialKind::Forbidden)
                } else {
                    request.codes.waiting()
                },
                error: w.ended.clone(),
                job_id: Some(w.ticket.job_id.clone()),
                ticket: Some(w.ticket.id.clone()),
                ..ResponseEvent::default()
            },
        };
        self.capture(
            tag,
            &request.id.0,
            now(),
            EventKind::Response(event),
            attachment,
        );
    }

    fn capture(
        &self,
        tag: &Tag,
        request_id: &str,
        time: String,
        what: EventKind,
        attachment: Option<Attachment>,
    ) {
        if let Some(recording) = &self.recordings.recording {
            recording.recorder.record(Capture {
                session: tag.session.clone(),
                identity: tag.identity.clone(),
                event: Event {
                    time,
                    request_id: request_id.to_string(),
                    what,
                },
                attachment,
            });
        }
    }
}

/// A decision as the session recording keeps it (see [`Pipeline::decision_of`]).
pub(crate) struct Traced {
    time: String,
    event: DecisionEvent,
}

/// Recordings, the service: who may read which recorded session, and the reading.
#[derive(Debug)]
pub struct Recordings {
    store: Arc<Store>,
    /// Where sessions are recorded, when they are.
    recording: Option<Recording>,
}

impl Recordings {
    /// Sessions recorded with `recorder` (which the caller closes at shutdown).
    pub fn on(
        store: Arc<Store>,
        settings: RecordingSettings,
        recorder: Arc<Recorder>,
    ) -> Recordings {
        Recordings {
            store,
            recording: Some(Recording { settings, recorder }),
        }
    }

    /// No sessions recorded: reads are answered "not recorded".
    pub fn off(store: Arc<Store>) -> Recordings {
        Recordings {
            store,
            recording: None,
        }
    }

    /// The session recorder, when sessions are recorded.
    pub fn recorder(&self) -> Option<&Recorder> {
        self.recording.as_ref().map(|r| r.recorder.as_ref())
    }

    /// Whether `identity` may read every recorded session.
    fn reads_all(&self, identity: &Identity) -> bool {
        self.recording
            .as_ref()
            .is_some_and(|r| r.settings.readers.iter().any(|p| p.matches(identity)))
    }

    fn recording_on(&self) -> Result<&Recording, Denial> {
        self.recording.as_ref().ok_or_else(|| {
            Denial::new(
                DenialKind::NotFound,
                "sessions are not recorded on this gateway ([recording] enabled = false)",
            )
        })
    }

    /// Recorded sessions `identity` may see: all of them for readers, else only its own
    /// (listing another identity's gives nothing). Audited.
    pub async fn list(
        &self,
        identity: &Identity,
        mut filter: SessionFilter,
    ) -> Result<Vec<SessionSummary>, Denial> {
        let recording = self.recording_on()?;
        if !self.reads_all(identity) {
            if filter
                .identity
                .as_deref()
                .is_some_and(|i| i != identity.subject)
            {
                return Ok(Vec::new());
            }
            filter.identity = Some(identity.subject.clone());
        }
        let result = recording
            .recorder
            .sessions(&filter)
            .map_err(|e| Denial::new(DenialKind::Unavailable, e.to_string()));
        crate::audit::recordings_read(
            &self.store,
            identity,
            "sessions.list",
            None,
            &result.as_ref().map(|_| ()),
        )
        .await;
        result
    }

    /// A recorded session's summary and events, as far as `identity` may see them:
    /// everything for readers, else only its own requests; a session it has no part
    /// in is not found. Audited.
    pub async fn show(
        &self,
        identity: &Identity,
        id: &str,
    ) -> Result<(SessionSummary, Vec<Event>), Denial> {
        let recording = self.recording_on()?;
        let all = self.reads_all(identity);
        let result = (|| {
            let unavailable = |e: querygate_store::StoreError| {
                Denial::new(DenialKind::Unavailable, e.to_string())
            };
            let not_found = || Denial::new(DenialKind::NotFound, format!("no session {id}"));
            let mut summary = recording
                .recorder
                .session(id)
                .map_err(unavailable)?
                .ok_or_else(not_found)?;
            let own = (!all).then_some(identity.subject.as_str());
            if let Some(me) = own
                && !summary.identities.iter().any(|i| i == me)
            {
                return Err(not_found());
            }
            let events = recording.recorder.events(id, own).map_err(unavailable)?;
            if let Some(me) = own {
                summary.identities = vec![me.to_string()];
                summary.events = events.len() as u64;
                summary.requests = events
                    .iter()
                    .filter(|e| matches!(e.what, EventKind::Request(_)))
                    .count() as u64;
            }
            Ok((summary, events))
        })();
        crate::audit::recordings_read(
            &self.store,
            identity,
            "sessions.show",
            Some(id),
            &result.as_ref().map(|_| ()),
        )
        .await;
        result
    }
}
