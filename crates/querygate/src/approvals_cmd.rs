//! `querygate approvals …`: list, show, approve and deny tickets through the admin API.
//!
//! A client of a running gateway, not of the store: the gateway decides who may see and
//! decide a ticket, and audits every decision. The server is `--server`, else
//! `QUERYGATE_SERVER`, else the `server.admin_listen` of `--config`; the approver's API key
//! comes from `QUERYGATE_TOKEN` only (never a flag, so it stays out of shell history and
//! `ps`), and is never printed. Exit 0 on success, 1 when the gateway refuses (its
//! message on stderr), 2 when it cannot be asked at all.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use querygate_core::{Secret, Ticket, TicketState};
use querygate_policy::format_bytes;
use serde_json::{Value, json};

use crate::ConfigArg;
use crate::config::Config;

#[derive(Subcommand)]
pub enum ApprovalsCommand {
    /// List the tickets you may decide or asked for, newest first.
    List {
        /// Only tickets in this state: pending, approved, running, denied, expired, cancelled.
        #[arg(long)]
        state: Option<String>,
        /// Only tickets of this source.
        #[arg(long)]
        source: Option<String>,
        /// Only tickets this identity asked for, e.g. agent:claude-code.
        #[arg(long)]
        requester: Option<String>,
        /// At most this many tickets (1 to 1000).
        #[arg(long)]
        limit: Option<usize>,
        #[command(flatten)]
        server: ServerArgs,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Show one ticket: who asks, what, why, and what it would cost.
    Show {
        /// The ticket id (tk_…), as `approvals list` shows it.
        id: String,
        #[command(flatten)]
        server: ServerArgs,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Approve a ticket: the waiting query runs at the requester's next poll.
    Approve {
        /// The ticket id (tk_…), as `approvals list` shows it.
        id: String,
        /// Also approve the same rule's requests by the same identity for this long (30m, 1h, 1d).
        #[arg(long = "for", value_name = "DURATION")]
        window: Option<String>,
        /// Why (kept in the audit log).
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Deny a ticket; the requester sees your reason.
    Deny {
        /// The ticket id (tk_…), as `approvals list` shows it.
        id: String,
        /// Why (required: the requester sees it).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        server: ServerArgs,
        /// Print the admin API's JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone)]
pub struct ServerArgs {
    /// The gateway's admin API, e.g. http://127.0.0.1:8080 (default: the config's
    /// server.admin_listen).
    #[arg(long, env = "QUERYGATE_SERVER")]
    server: Option<String>,
    /// Trust this PEM certificate (a CA or the server's own) for the admin API's TLS.
    #[arg(long, env = "QUERYGATE_CA_CERT")]
    ca_cert: Option<PathBuf>,
    #[command(flatten)]
    config: ConfigArg,
}

/// The environment variable holding the approver's API key.
const TOKEN_ENV: &str = "QUERYGATE_TOKEN";

pub fn run(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(run_async(command))
}

async fn run_async(command: ApprovalsCommand) -> anyhow::Result<ExitCode> {
    let (server, json_out) = match &command {
        ApprovalsCommand::List { server, json, .. }
        | ApprovalsCommand::Show { server, json, .. }
        | ApprovalsCommand::Approve { server, json, .. }
        | ApprovalsCommand::Deny { server, json, .. } => (server.clone(), *json),
    };
    let admin = Admin::new(&server)?;
    let answer = match command {
        ApprovalsCommand::List {
            state,
            source,
            requester,
            limit,
            ..
        } => {
            let query: Vec<(&str, String)> = [
                ("state", state),
                ("source", source),
                ("requester", requester),
                ("limit", limit.map(|n| n.to_string())),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.map(|v| (k, v)))
            .collect();
            admin
                .call(reqwest::Method::GET, &[], &query, None)
                .await?
                .map(|v| (v, Shown::List))
        }
        ApprovalsCommand::Show { id, .. } => admin
            .call(reqwest::Method::GET, &[&id], &[], None)
            .await?
            .map(|v| (v, Shown::Ticket(None))),
        ApprovalsCommand::Approve {
            id, window, reason, ..
        } => {
            let mut body = json!({});
            if let Some(w) = window {
                body["for"] = json!(w);
            }
            if let Some(r) = reason {
                body["reason"] = json!(r);
            }
            admin
                .call(reqwest::Method::POST, &[&id, "approve"], &[], Some(body))
                .await?
                .map(|v| (v, Shown::Ticket(Some("approved"))))
        }
        ApprovalsCommand::Deny { id, reason, .. } => admin
            .call(
                reqwest::Method::POST,
                &[&id, "deny"],
                &[],
                Some(json!({ "reason": reason })),
            )
            .await?
            .map(|v| (v, Shown::Ticket(Some("denied")))),
    };
    match answer {
        Ok((value, shown)) => {
            if json_out {
                println!("{value}");
            } else {
                print!("{}", human(&value, shown)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(refused) => {
            eprintln!("querygate: {} (HTTP {})", refused.message, refused.code);
            Ok(ExitCode::from(1))
        }
    }
}

/// What a successful answer holds, for human output.
#[derive(Clone, Copy)]
enum Shown {
    List,
    /// A ticket, after this decision if one was made.
    Ticket(Option<&'static str>),
}

/// The gateway said no (or could not answer the request as asked).
struct Refused {
    code: u16,
    message: String,
}

/// A client of one gateway's admin API, as one approver.
struct Admin {
    base: reqwest::Url,
    token: Secret,
    client: reqwest::Client,
}

impl Admin {
    fn new(args: &ServerArgs) -> anyhow::Result<Admin> {
        let (text, config_cert) = match &args.server {
            Some(s) if !s.trim().is_empty() => (s.trim().to_string(), None),
            _ => from_config(&args.config)?,
        };
        let base = reqwest::Url::parse(&text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .with_context(|| {
                format!("the admin API address {text:?} is not a URL like http://127.0.0.1:8080")
            })?;
        if base.scheme() == "http" && !is_local(&base) {
            eprintln!(
                "querygate: warning: your token goes to {} over plaintext http",
                base.host_str().unwrap_or("?")
            );
        }
        let token = match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => Secret::new(t.trim()),
            _ => bail!(
                "{TOKEN_ENV} is not set: export your querygate API key (an approver's key) as \
                 {TOKEN_ENV} to act on tickets"
            ),
        };
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30));
        for cert in args.ca_cert.iter().chain(config_cert.iter()) {
            let pem = std::fs::read(cert)
                .with_context(|| format!("cannot read the certificate {}", cert.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("{} is not a PEM certificate", cert.display()))?;
            builder = builder.tls_certs_merge([cert]);
        }
        let client = builder
            .build()
            .map_err(|e| anyhow::anyhow!("cannot build the HTTP client: {e}"))?;
        Ok(Admin {
            base,
            token,
            client,
        })
    }

    /// Calls `/api/v1/tickets[/segments…]`; `Ok(Err(_))` when the gateway refuses.
    async fn call(
        &self,
        method: reqwest::Method,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Value>,
    ) -> anyhow::Result<Result<Value, Refused>> {
        let mut url = self.base.clone();
        {
            let Ok(mut path) = url.path_segments_mut() else {
                bail!("the admin API address {} cannot have a path", self.base);
            };
            path.pop_if_empty().extend(["api", "v1", "tickets"]);
            path.extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        let mut request = self
            .client
            .request(method, url)
            .bearer_auth(self.token.expose());
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| {
            anyhow::anyhow!(
                "cannot reach the admin API at {}: {} (is `querygate serve` running with \
                 server.admin_listen set?)",
                self.base,
                chain(&e.without_url())
            )
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            anyhow::anyhow!("the admin API at {} answered unreadably: {e}", self.base)
        })?;
        let value: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return value.map(Ok).with_context(|| {
                format!(
                    "the admin API at {} answered HTTP {} with something that is not JSON",
                    self.base,
                    status.as_u16()
                )
            });
        }
        let message = value
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| {
                let short: String = text.chars().take(200).collect();
                format!(
                    "the admin API at {} answered {status}: {}",
                    self.base,
                    short.trim()
                )
            });
        Ok(Err(Refused {
            code: status.as_u16(),
            message,
        }))
    }
}

/// The admin API named by the config's `server.admin_listen`, and its TLS certificate.
fn from_config(config: &ConfigArg) -> anyhow::Result<(String, Option<PathBuf>)> {
    let path = &config.config;
    if !path.exists() {
        bail!(
            "no admin API to ask: pass --server URL, set QUERYGATE_SERVER, or point --config at \
             the gateway's querygate.toml (with server.admin_listen); {} does not exist",
            path.display()
        );
    }
    let c = Config::load(path).map_err(anyhow::Error::msg)?;
    let url = c.admin_url().with_context(|| {
        format!(
            "{}: server.admin_listen is not set, so this gateway has no admin API; set it and \
             restart the gateway, or pass --server URL",
            path.display()
        )
    })?;
    let cert = c.server.tls_cert.as_ref().map(|p| c.resolve(p));
    Ok((url, cert))
}

fn is_local(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn human(value: &Value, shown: Shown) -> anyhow::Result<String> {
    let now = now();
    match shown {
        Shown::List => {
            let tickets: Vec<Ticket> = serde_json::from_value(value["tickets"].clone())
                .context("the admin API answered a list that is not a list of tickets")?;
            Ok(table(&tickets, now))
        }
        Shown::Ticket(decided) => {
            let t: Ticket = serde_json::from_value(value.clone())
                .context("the admin API answered something that is not a ticket")?;
            let mut out = String::new();
            if let Some(verb) = decided {
                out.push_str(&format!("ticket {} {verb}\n", t.id));
            }
            out.push_str(&details(&t, now));
            Ok(out)
        }
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2026-11-27T15:06:47Z`.
fn time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
}

/// `in 59m`, `3m ago`.
fn relative(secs: i64, now: i64) -> String {
    let d = (secs - now).abs();
    if d == 0 {
        return "now".into();
    }
    let span = match d {
        0..60 => format!("{d}s"),
        60..3600 => format!("{}m", d / 60),
        3600..86_400 => format!("{}h{:02}m", d / 3600, (d % 3600) / 60),
        _ => format!("{}d", d / 86_400),
    };
    if secs >= now {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn requester(t: &Ticket) -> String {
    match &t.acting_for {
        Some(p) => format!("{} for {p}", t.requester),
        None => t.requester.clone(),
    }
}

/// `text` on one line, at most `max` characters.
fn short(text: &str, max: usize) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

fn table(tickets: &[Ticket], now: i64) -> String {
    if tickets.is_empty() {
        return "no tickets\n".into();
    }
    let header = [
        "ID",
        "STATE",
        "REQUESTER",
        "SOURCE",
        "RULE",
        "ESTIMATE",
        "EXPIRES",
        "REASON",
        "STATEMENT",
    ];
    let rows: Vec<[String; 9]> = tickets
        .iter()
        .map(|t| {
            [
                t.id.clone(),
                t.state.to_string(),
                requester(t),
                t.source.clone(),
                t.rule.clone(),
                t.bytes_estimate.map_or_else(|| "-".into(), format_bytes),
                if t.state.is_final() {
                    "-".into()
                } else {
                    relative(t.expires, now)
                },
                t.reason
                    .as_deref()
                    .map_or_else(|| "-".into(), |r| short(r, 60)),
                short(&t.statement, 60),
            ]
        })
        .collect();
    let mut widths = header.map(|h| h.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.map(String::from));
    for row in &rows {
        out.push_str(&line(row));
    }
    out
}

fn details(t: &Ticket, now: i64) -> String {
    let mut lines: Vec<(&str, String)> = vec![
        ("id", t.id.clone()),
        ("state", t.state.to_string()),
        ("requester", t.requester.clone()),
    ];
    if !t.requester_groups.is_empty() {
        lines.push(("groups", t.requester_groups.join(", ")));
    }
    if let Some(p) = &t.acting_for {
        lines.push(("acting_for", p.clone()));
    }
    lines.push(("source", t.source.clone()));
    lines.push(("rule", t.rule.clone()));
    lines.push(("approvers", t.approvers.join(", ")));
    if !t.message.is_empty() {
        lines.push(("message", t.message.clone()));
    }
    let cost = t
        .cost_estimate_usd
        .map(|usd| format!(", ~${usd:.2} on demand"))
        .unwrap_or_default();
    let estimate = match (t.bytes_estimate, t.max_bytes_billed) {
        (Some(e), Some(cap)) => format!(
            "{} to process{cost} (billing capped at {})",
            format_bytes(e),
            format_bytes(cap)
        ),
        (Some(e), None) => format!("{} to process{cost}", format_bytes(e)),
        (None, _) => "unknown (no dry-run estimate)".into(),
    };
    lines.push(("estimate", estimate));
    let reason = match (&t.reason, &t.reason_via) {
        (Some(r), Some(via)) => format!("{r} (from the {via})"),
        (Some(r), None) => r.clone(),
        (None, _) => "none given".into(),
    };
    lines.push(("reason", reason));
    if !t.tables.is_empty() {
        lines.push(("tables", t.tables.join(", ")));
    }
    lines.push(("statement", t.statement.clone()));
    if let Some(p) = &t.parameters {
        lines.push(("parameters", p.clone()));
    }
    lines.push(("job", t.job_id.clone()));
    lines.push((
        "created",
        format!("{} ({})", time(t.created), relative(t.created, now)),
    ));
    let at = |secs: i64| format!("{} ({})", time(secs), relative(secs, now));
    match t.state {
        TicketState::Pending => lines.push(("expires", at(t.expires))),
        // An approved ticket must run by then, or it expires unused.
        TicketState::Approved => lines.push(("run_by", at(t.expires))),
        _ => {}
    }
    if let Some(decided) = t.decided_at {
        lines.push(("decided_at", at(decided)));
    }
    if let Some(by) = &t.decided_by {
        lines.push(("decided_by", by.clone()));
    }
    if let Some(r) = &t.decision_reason {
        lines.push(("decision", r.clone()));
    }
    if let Some(until) = t.grant_until {
        lines.push((
            "window",
            format!(
                "until {} ({}): the same rule's requests by {} run without asking",
                time(until),
                relative(until, now),
                t.requester
            ),
        ));
    }
    let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    lines
        .iter()
        .map(|(k, v)| format!("{:<width$} {v}\n", format!("{k}:")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_relative() {
        assert_eq!(relative(1_000 + 3540, 1_000), "in 59m");
        assert_eq!(relative(1_000 - 30, 1_000), "30s ago");
        assert_eq!(relative(1_000, 1_000), "now");
        assert_eq!(relative(1_000 + 7_260, 1_000), "in 2h01m");
        assert_eq!(short("SELECT\n  1", 60), "SELECT 1");
        assert_eq!(short("abcdef", 4), "abc…");
    }
}
