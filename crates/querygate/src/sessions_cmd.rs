//! `querygate sessions …`: list, show and replay recorded sessions.
//!
//! Every command reads the store named by `--config` directly (read-only, like the
//! `audit` commands; a running gateway writes segments every quarter second, so the last
//! moments of a live session may not be there yet). `show` prints a transcript a person
//! can read: who, when, each statement, the decision, what went upstream, the status and
//! the rows the client got. `replay` prints the same, paced by the recorded gaps divided by
//! `--speed` (each gap capped at 5 s before dividing, so a long idle does not hang it).
//! `--json` is for machines: `list` and `replay` print JSON Lines, `show` one document
//! `{"session": …, "events": […]}`.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use clap::Subcommand;
use querygate_core::recording::{Event, EventKind};
use querygate_policy::format_bytes;
use querygate_store::{RecordingReader, SessionFilter, SessionSummary};
use serde_json::{Value, json};

use crate::ConfigArg;
use crate::config::Config;

/// The longest pause `replay` makes between two events, before `--speed` divides it.
const MAX_GAP: Duration = Duration::from_secs(5);
/// Rows of a result shown in a transcript.
const SHOWN_ROWS: usize = 20;

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// List recorded sessions, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only sessions of this identity, e.g. agent:claude-code.
        #[arg(long)]
        identity: Option<String>,
        /// Only sessions active in the last 30s, 15m, 1h, 7d, or since an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many sessions.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// One JSON object per session and line.
        #[arg(long)]
        json: bool,
    },
    /// Print a session's transcript: each request, decision, upstream call and response.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// The session id (`sessions list` shows them).
        id: String,
        /// One JSON document: {"session": …, "events": […]}.
        #[arg(long)]
        json: bool,
    },
    /// Print a session's transcript paced as it was recorded.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
        /// How much faster than real time (2 = twice as fast).
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// One JSON event per line.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: SessionsCommand) -> anyhow::Result<ExitCode> {
    match command {
        SessionsCommand::List {
            config,
            identity,
            since,
            limit,
            json,
        } => {
            let filter = SessionFilter {
                identity,
                since: since
                    .as_deref()
                    .map(crate::audit_cmd::point_in_time)
                    .transpose()?,
                limit: Some(limit),
            };
            list(&open(&config)?, &filter, json)
        }
        SessionsCommand::Show { config, id, json } => {
            let reader = open(&config)?;
            let (summary, events) = load(&reader, &id)?;
            if json {
                let doc = json!({ "session": summary, "events": events });
                println!("{doc}");
                return Ok(ExitCode::SUCCESS);
            }
            let mut out = std::io::stdout().lock();
            let mut t = Transcript::default();
            print_lines(&mut out, &[header(&summary)])?;
            for e in &events {
                print_lines(&mut out, &t.lines(e))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Replay {
            config,
            id,
            speed,
            json,
        } => {
            if !(speed.is_finite() && speed > 0.0) {
                bail!("--speed must be a number above 0, like 1, 10 or 0.5");
            }
            let reader = open(&config)?;
            let (summary, events) = load(&reader, &id)?;
            replay(&summary, &events, speed, json)
        }
    }
}

fn open(config: &ConfigArg) -> anyhow::Result<RecordingReader> {
    let c = Config::load(&config.config).map_err(anyhow::Error::msg)?;
    Ok(RecordingReader::open(&c.store_path())?)
}

fn load(reader: &RecordingReader, id: &str) -> anyhow::Result<(SessionSummary, Vec<Event>)> {
    let Some(summary) = reader.session(id)? else {
        bail!("no session {id} is recorded in this store (`querygate sessions list` shows them)");
    };
    let events = reader.events(id, None)?;
    Ok((summary, events))
}

/// Prints lines; a closed pipe (`| head`) ends quietly.
fn print_lines(out: &mut impl Write, lines: &[String]) -> anyhow::Result<()> {
    for line in lines {
        match writeln!(out, "{line}") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn list(reader: &RecordingReader, filter: &SessionFilter, json: bool) -> anyhow::Result<ExitCode> {
    let sessions = reader.sessions(filter)?;
    let lines: Vec<String> = if json {
        sessions
            .iter()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .collect()
    } else {
        sessions
            .iter()
            .map(|s| {
                format!(
                    "{}  {} … {}  {}  {} requests, {} events, {} stored",
                    s.id,
                    s.first_time,
                    s.last_time,
                    s.identities.join(", "),
                    s.requests,
                    s.events,
                    format_bytes(s.stored_bytes)
                )
            })
            .collect()
    };
    if lines.is_empty() && !json {
        eprintln!("no recorded sessions match");
    }
    print_lines(&mut std::io::stdout().lock(), &lines)?;
    Ok(ExitCode::SUCCESS)
}

fn header(s: &SessionSummary) -> String {
    format!(
        "session {} — {} — {} … {} — {} requests, {} events",
        s.id,
        s.identities.join(", "),
        s.first_time,
        s.last_time,
        s.requests,
        s.events
    )
}

fn replay(
    summary: &SessionSummary,
    events: &[Event],
    speed: f64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    if !json {
        print_lines(&mut out, &[header(summary)])?;
    }
    let mut t = Transcript::default();
    let mut previous: Option<time::OffsetDateTime> = None;
    for e in events {
        let at = parse_time(&e.time);
        if let (Some(p), Some(a)) = (previous, at) {
            let gap = Duration::try_from(a - p).unwrap_or_default().min(MAX_GAP);
            std::thread::sleep(gap.div_f64(speed));
        }
        previous = at.or(previous);
        let lines = if json {
            vec![serde_json::to_string(e).unwrap_or_default()]
        } else {
            t.lines(e)
        };
        print_lines(&mut out, &lines)?;
        let _ = out.flush();
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_time(text: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()
}

/// Turns events into transcript lines, remembering each request's statement so that an
/// upstream statement is shown only when it differs from what was received.
#[derive(Default)]
struct Transcript {
    statements: HashMap<String, Option<String>>,
    /// Each request's decision reason, so a response repeating it is not printed twice.
    reasons: HashMap<String, String>,
}

impl Transcript {
    fn lines(&mut self, e: &Event) -> Vec<String> {
        // `2026-11-27T10:00:00.123456Z` → `10:00:00.123`
        let clock = e.time.get(11..23).unwrap_or(&e.time);
        let mut lines = Vec::new();
        match &e.what {
            EventKind::Request(r) => {
                let acting = r
                    .acting_for
                    .as_deref()
                    .map(|p| format!(" for {p}"))
                    .unwrap_or_default();
                lines.push(format!(
                    "{clock}  ▶ {} by {}{acting} on {}  [{}]",
                    r.method, r.identity, r.source, e.request_id
                ));
                if let Some(s) = &r.statement {
                    lines.extend(indented(s));
                }
                if let Some(p) = &r.parameters {
                    lines.push(format!("      parameters: {p}"));
                }
                if let Some(table) = &r.table {
                    lines.push(format!("      table: {table}"));
                }
                if let Some(job) = &r.job_id {
                    lines.push(format!("      job: {job}"));
                }
                self.statements
                    .insert(e.request_id.clone(), r.statement.clone());
            }
            EventKind::Decision(d) => {
                let mut line = format!("{clock}    decision: {}", d.decision);
                if let Some(rule) = &d.rule {
                    line.push_str(&format!(" (rule {rule:?})"));
                }
                if let Some(ticket) = &d.ticket {
                    line.push_str(&format!(" ticket {ticket}"));
                }
                if let Some(a) = &d.approver {
                    line.push_str(&format!(" approver {a}"));
                }
                lines.push(line);
                if let Some(reason) = &d.reason {
                    lines.push(format!("      {reason}"));
                    self.reasons.insert(e.request_id.clone(), reason.clone());
                }
            }
            EventKind::Upstream(u) => {
                let mut line = format!("{clock}    upstream: {}", u.method);
                if let Some(b) = u.max_bytes_billed {
                    line.push_str(&format!(", at most {} billed", format_bytes(b)));
                }
                lines.push(line);
                let received = self.statements.get(&e.request_id).cloned().flatten();
                if let Some(s) = &u.statement
                    && received.as_deref() != Some(s.as_str())
                {
                    lines.extend(indented(s));
                }
            }
            EventKind::Response(r) => {
                let mut line = format!("{clock}  ◀ {}", r.status);
                if let Some(rows) = r.rows {
                    line.push_str(&format!(", {rows} rows"));
                }
                if let Some(total) = r.total_rows.filter(|t| Some(*t) != r.rows) {
                    line.push_str(&format!(" of {total}"));
                }
                if let Some(b) = r.bytes_processed {
                    line.push_str(&format!(", {} processed", format_bytes(b)));
                }
                if let Some(b) = r.total_bytes {
                    line.push_str(&format!(", {} body", format_bytes(b)));
                }
                lines.push(line);
                if let Some(error) = &r.error
                    && self.reasons.get(&e.request_id) != Some(error)
                {
                    lines.push(format!("      error: {error}"));
                }
                if let Some(body) = &r.body {
                    lines.extend(rows(body));
                }
                if r.truncated {
                    lines.push(format!(
                        "      (body recorded in part; sha256 of the whole: {})",
                        r.sha256.as_deref().unwrap_or("?")
                    ));
                }
                if r.body_omitted {
                    lines.push("      (body not recorded: record_results = false)".into());
                }
            }
        }
        lines
    }
}

fn indented(text: &str) -> impl Iterator<Item = String> + '_ {
    text.lines().map(|l| format!("      {l}"))
}

/// The rows of a BigQuery result body (`schema.fields`, `rows[].f[].v`) as a small
/// table; nothing for other bodies (and a body recorded in part may not parse).
fn rows(body: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    let Some(rows) = v.get("rows").and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if let Some(fields) = v.pointer("/schema/fields").and_then(Value::as_array) {
        let names: Vec<&str> = fields
            .iter()
            .map(|f| f.get("name").and_then(Value::as_str).unwrap_or("?"))
            .collect();
        out.push(format!("      | {} |", names.join(" | ")));
    }
    for row in rows.iter().take(SHOWN_ROWS) {
        let cells: Vec<String> = row
            .get("f")
            .and_then(Value::as_array)
            .map(|f| {
                f.iter()
                    .map(|c| match c.get("v") {
                        Some(Value::String(s)) => s.clone(),
                        Some(Value::Null) | None => "NULL".into(),
                        Some(other) => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(format!("      | {} |", cells.join(" | ")));
    }
    if rows.len() > SHOWN_ROWS {
        out.push(format!(
            "      … {} more rows recorded",
            rows.len() - SHOWN_ROWS
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use querygate_core::recording::{DecisionEvent, RequestEvent, ResponseEvent};

    #[test]
    fn a_transcript_names_who_what_the_decision_and_the_rows() {
        let mut t = Transcript::default();
        let at = |s: &str| format!("2026-11-27T10:00:0{s}.123456Z");
        let request = Event {
            time: at("1"),
            request_id: "qg-1".into(),
            what: EventKind::Request(RequestEvent {
                identity: "agent:a".into(),
                source: "analytics".into(),
                method: "jobs.query".into(),
                statement: Some("SELECT id\nFROM t".into()),
                ..RequestEvent::default()
            }),
        };
        let decision = Event {
            time: at("2"),
            request_id: "qg-1".into(),
            what: EventKind::Decision(DecisionEvent {
                decision: "allow".into(),
                rule: Some("read".into()),
                ..DecisionEvent::default()
            }),
        };
        let body = r#"{"schema":{"fields":[{"name":"id"},{"name":"email"}]},"rows":[{"f":[{"v":"1"},{"v":null}]}]}"#;
        let response = Event {
            time: at("3"),
            request_id: "qg-1".into(),
            what: EventKind::Response(ResponseEvent {
                status: 200,
                rows: Some(1),
                body: Some(body.into()),
                total_bytes: Some(body.len() as u64),
                ..ResponseEvent::default()
            }),
        };
        let text: Vec<String> = [request, decision, response]
            .iter()
            .flat_map(|e| t.lines(e))
            .collect();
        let text = text.join("\n");
        for want in [
            "10:00:01.123  ▶ jobs.query by agent:a on analytics  [qg-1]",
            "      SELECT id\n      FROM t",
            "decision: allow (rule \"read\")",
            "◀ 200, 1 rows",
            "      | id | email |\n      | 1 | NULL |",
        ] {
            assert!(text.contains(want), "{want:?} not in\n{text}");
        }
    }
}
