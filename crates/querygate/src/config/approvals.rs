//! `[approvals]` and `[notify]`: how long tickets wait, how long window grants may last,
//! and the webhook told of new tickets (with [`Webhook`], the URL type `[export]` shares).
//!
//! Approvals (requests an `action = "approve"` rule catches wait for a person):
//!
//! ```toml
//! [server]
//! # The admin API (tickets; `querygate approvals …` talks to it). Optional: without it
//! # there is no admin API and nobody can decide a ticket. Same rules as bigquery_listen:
//! # served with the same tls_cert/tls_key, and plaintext only on loopback unless
//! # insecure_plaintext = true. Must differ from bigquery_listen.
//! admin_listen = "127.0.0.1:8080"
//!
//! [approvals]
//! ticket_ttl = "1h"   # a pending ticket expires after this; an approved one must run within it
//! max_window = "8h"   # the longest `--for` window an approver may grant ("0s": no windows)
//! wire_wait = "60s"   # how long a PostgreSQL client is held while its statement waits
//!
//! [notify]
//! # A Slack-compatible incoming webhook told of every new ticket. It often carries a
//! # token, so it is never logged or printed (the host at most). https, or http to loopback.
//! webhook = "https://hooks.slack.com/services/…"
//! # The base of ticket links in notifications; default: http(s)://<admin_listen>.
//! console_url = "https://querygate.example.com:8080"
//! ```
//!
//! Durations are written like `"90s"`, `"15m"`, `"1h"`, `"7d"`. These settings are read
//! at start; a reload does not change them.

use std::ops::Range;
use std::path::Path;

use querygate_core::Secret;
use querygate_identity::parse_duration;
use serde::Deserialize;
use toml::Spanned;

use super::{Config, duration_of, line_of};

/// `[approvals]`: durations as written (`"1h"`), checked at load.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// A pending ticket expires after this (default 1h).
    pub ticket_ttl: Option<Spanned<String>>,
    /// The longest window grant an approver may give (default 8h).
    pub max_window: Option<Spanned<String>>,
    /// How long a client of a wire protocol (PostgreSQL) is held while its statement waits
    /// for approval (default 60s); then it is answered with the ticket to re-run it.
    pub wire_wait: Option<Spanned<String>>,
}

/// `[notify]`: the webhook told of new tickets and the base of the links it gets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A Slack-compatible incoming webhook. Secret: it usually carries a token.
    pub webhook: Option<Spanned<Webhook>>,
    /// Base of ticket links, e.g. `https://querygate.example.com:8080`.
    pub console_url: Option<Spanned<String>>,
}

/// A webhook URL. It usually carries a token, so `Debug` hides it and errors name its
/// host at most.
#[derive(Debug, Clone)]
pub struct Webhook(pub Secret);

impl<'de> Deserialize<'de> for Webhook {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Webhook(Secret::new(s)))
    }
}

impl Webhook {
    /// The parsed URL, or why it is not one (never quoting it).
    pub fn url(&self) -> Result<reqwest::Url, String> {
        self.url_of("notify.webhook")
    }

    /// The parsed URL of the config key `key`, or why it is not one (never quoting it).
    pub fn url_of(&self, key: &str) -> Result<reqwest::Url, String> {
        let url = reqwest::Url::parse(self.0.expose().trim())
            .map_err(|e| format!("{key} is not a URL ({e})"))?;
        match url.scheme() {
            "https" => {}
            "http" if is_loopback_host(&url) => {}
            "http" => {
                return Err(format!(
                    "{key} must use https (it carries a token); http is accepted only \
                     for a loopback host, not {}",
                    url.host_str().unwrap_or("?")
                ));
            }
            other => {
                return Err(format!("{key} must be an https:// URL, not {other}://…"));
            }
        }
        if url.host_str().is_none() {
            return Err(format!("{key} has no host"));
        }
        Ok(url)
    }

    /// The host, the most of the URL that may be shown.
    pub fn host(&self) -> String {
        self.url()
            .ok()
            .and_then(|u| u.host_str().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    }
}

fn is_loopback_host(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

impl Config {
    pub(super) fn check_approvals(&self, text: &str, path: &Path) -> Result<(), String> {
        let duration = |key: &str, v: &Spanned<String>| {
            parse_duration(v.get_ref()).map_err(|e| {
                format!(
                    "{}{}: approvals.{key}: {e}",
                    path.display(),
                    line_of(text, &v.span())
                )
            })
        };
        if let Some(ttl) = &self.approvals.ticket_ttl
            && duration("ticket_ttl", ttl)?.is_zero()
        {
            return Err(format!(
                "{}{}: approvals.ticket_ttl must be longer than 0s: tickets would expire before anyone could decide them",
                path.display(),
                line_of(text, &ttl.span())
            ));
        }
        if let Some(w) = &self.approvals.max_window {
            duration("max_window", w)?;
        }
        if let Some(w) = &self.approvals.wire_wait {
            duration("wire_wait", w)?;
        }
        Ok(())
    }

    pub(super) fn check_notify(&self, text: &str, path: &Path) -> Result<(), String> {
        let fail = |span: Range<usize>, msg: String| {
            Err(format!("{}{}: {msg}", path.display(), line_of(text, &span)))
        };
        if let Some(hook) = &self.notify.webhook {
            if let Err(e) = hook.get_ref().url() {
                return fail(hook.span(), e);
            }
            if self.server.admin_listen.is_none() && self.notify.console_url.is_none() {
                return fail(
                    hook.span(),
                    "notify.webhook is set but server.admin_listen is not: approvers decide \
                     tickets through the admin API, so set admin_listen (or console_url, if \
                     the admin API is reached through a proxy)"
                        .into(),
                );
            }
        }
        if let Some(c) = &self.notify.console_url {
            let ok = reqwest::Url::parse(c.get_ref())
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
            if ok.is_none() {
                return fail(
                    c.span(),
                    format!(
                        "notify.console_url = {:?} is not an http(s) URL like \"https://querygate.example.com:8080\"",
                        c.get_ref()
                    ),
                );
            }
        }
        Ok(())
    }

    /// `[approvals]` as the pipeline takes it (checked at load; defaults where unset).
    pub fn approval_settings(&self) -> querygate_pipeline::ApprovalSettings {
        let defaults = querygate_pipeline::ApprovalSettings::default();
        querygate_pipeline::ApprovalSettings {
            ticket_ttl: duration_of(&self.approvals.ticket_ttl).unwrap_or(defaults.ticket_ttl),
            max_window: duration_of(&self.approvals.max_window).unwrap_or(defaults.max_window),
        }
    }

    /// How long a PostgreSQL client waits for a decision on its statement.
    pub fn wire_wait(&self) -> std::time::Duration {
        duration_of(&self.approvals.wire_wait).unwrap_or(std::time::Duration::from_secs(60))
    }

    /// The base of ticket links: `console_url`, else the admin API's own URL.
    pub fn console_url(&self) -> Option<String> {
        self.notify
            .console_url
            .as_ref()
            .map(|c| c.get_ref().trim_end_matches('/').to_string())
            .or_else(|| self.admin_url())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{GOOD, error_of, parse};

    #[test]
    fn approvals_admin_and_notify_parse_with_defaults() {
        let c = parse(GOOD).expect("good config");
        assert!(c.admin_listen().is_none() && c.admin_url().is_none());
        let s = c.approval_settings();
        assert_eq!(s.ticket_ttl, std::time::Duration::from_secs(3600));
        assert_eq!(s.max_window, std::time::Duration::from_secs(8 * 3600));
        let text = GOOD.replace(
            "[store]",
            "admin_listen = \"0.0.0.0:8080\"\ninsecure_plaintext = true\n\n[store]",
        ) + "\n[approvals]\nticket_ttl = \"15m\"\nmax_window = \"1d\"\n\n[notify]\nwebhook = \"https://hooks.example.com/services/T0/B0/SECRETTOKEN\"\n";
        let c = parse(&text).expect("approvals config");
        assert_eq!(c.admin_url().as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(c.console_url().as_deref(), Some("http://127.0.0.1:8080"));
        let s = c.approval_settings();
        assert_eq!(s.ticket_ttl, std::time::Duration::from_secs(900));
        assert_eq!(s.max_window, std::time::Duration::from_secs(86_400));
        assert_eq!(
            c.notify.webhook.as_ref().expect("hook").get_ref().host(),
            "hooks.example.com"
        );
        assert!(
            !format!("{c:?}").contains("SECRETTOKEN"),
            "the webhook must not reach Debug output"
        );
        let with_console = text.replace(
            "[notify]",
            "[notify]\nconsole_url = \"https://qg.example.com/admin/\"",
        );
        let c = parse(&with_console).expect("console_url");
        assert_eq!(
            c.console_url().as_deref(),
            Some("https://qg.example.com/admin")
        );
    }

    #[test]
    fn approvals_admin_and_notify_errors_name_the_line() {
        let admin = |v: &str| GOOD.replace("[store]", &format!("admin_listen = {v}\n\n[store]"));
        let e = error_of(&admin("\"localhost\""));
        assert!(e.contains("line 5") && e.contains("admin_listen"), "{e}");
        let e = error_of(&admin("\"0.0.0.0:8080\""));
        assert!(
            e.contains("line 5") && e.contains("insecure_plaintext"),
            "{e}"
        );
        let e = error_of(&admin("\"127.0.0.1:9050\""));
        assert!(e.contains("line 5") && e.contains("own port"), "{e}");

        let approvals = |body: &str| format!("{GOOD}\n[approvals]\n{body}\n");
        let e = error_of(&approvals("ticket_ttl = \"soon\""));
        assert!(
            e.contains("line 21") && e.contains("approvals.ticket_ttl") && e.contains("soon"),
            "{e}"
        );
        let e = error_of(&approvals("ticket_ttl = \"0s\""));
        assert!(e.contains("line 21") && e.contains("longer than 0s"), "{e}");
        let e = error_of(&approvals("max_window = \"8 hours\""));
        assert!(e.contains("line 21") && e.contains("max_window"), "{e}");
        let e = error_of(&approvals("max_windw = \"8h\""));
        assert!(e.contains("max_windw"), "{e}");

        let with_admin = admin("\"127.0.0.1:8080\"");
        let notify = |body: &str| format!("{with_admin}\n[notify]\n{body}\n");
        let e = error_of(&notify(
            "webhook = \"http://hooks.example.com/T0/SECRETTOKEN\"",
        ));
        assert!(
            e.contains("line 23") && e.contains("https") && !e.contains("SECRETTOKEN"),
            "{e}"
        );
        let e = error_of(&notify("webhook = \"not a url SECRETTOKEN\""));
        assert!(
            e.contains("line 23") && e.contains("not a URL") && !e.contains("SECRETTOKEN"),
            "{e}"
        );
        parse(&notify("webhook = \"http://127.0.0.1:9/hook\"")).expect("http to loopback");
        let e = error_of(&notify("console_url = \"qg.example.com\""));
        assert!(e.contains("line 23") && e.contains("console_url"), "{e}");
        let e = error_of(&format!(
            "{GOOD}\n[notify]\nwebhook = \"https://hooks.example.com/T0/SECRETTOKEN\"\n"
        ));
        assert!(
            e.contains("line 21") && e.contains("admin_listen") && !e.contains("SECRETTOKEN"),
            "{e}"
        );
    }
}
