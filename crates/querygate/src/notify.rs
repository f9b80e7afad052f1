//! The notifier: tells approvers of new tickets through a Slack-compatible webhook.
//!
//! It wakes when a ticket opens and every few seconds besides (so tickets opened before a
//! restart, or while the webhook was down, are sent too), reads the tickets nobody has
//! been told of, POSTs one message per ticket, and marks a ticket notified only when the
//! webhook answers 2xx. On a failure it logs a warning and tries again after 1 s, doubling
//! up to 60 s; the ticket stays unnotified until it is sent (or is no longer pending).
//!
//! Must not: log, return or print the webhook URL (it usually carries a token): messages
//! name its host at most, and errors are stripped of their URL.

use std::sync::Arc;
use std::time::Duration;

use querygate_core::Ticket;
use querygate_pipeline::{Pipeline, describe};
use serde_json::{Value, json};

/// How often unnotified tickets are looked for without a wake-up.
const POLL: Duration = Duration::from_secs(5);
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

pub struct Notifier {
    pipeline: Arc<Pipeline>,
    client: reqwest::Client,
    /// Secret: the URL itself is never shown.
    webhook: reqwest::Url,
    /// What logs may say about the webhook.
    host: String,
    /// Base of ticket links, without a trailing slash.
    console_url: String,
}

/// Hides the webhook.
impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier")
            .field("host", &self.host)
            .field("console_url", &self.console_url)
            .finish_non_exhaustive()
    }
}

impl Notifier {
    pub fn new(
        pipeline: Arc<Pipeline>,
        webhook: reqwest::Url,
        console_url: String,
    ) -> Result<Notifier, String> {
        let host = webhook.host_str().unwrap_or("?").to_string();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            // A redirect would carry the request (and log lines) to a URL nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the webhook client: {}", e.without_url()))?;
        Ok(Notifier {
            pipeline,
            client,
            webhook,
            host,
            console_url: console_url.trim_end_matches('/').to_string(),
        })
    }

    /// Runs until the process ends.
    pub async fn run(self) {
        tracing::info!(webhook_host = %self.host, "notifying approvers of new tickets");
        let mut retry = FIRST_RETRY;
        loop {
            match self.send_pending().await {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    tokio::select! {
                        () = self.pipeline.approvals().opened().notified() => {}
                        () = tokio::time::sleep(POLL) => {}
                    }
                }
                Err((ticket, why)) => {
                    tracing::warn!(
                        ticket = %ticket, webhook_host = %self.host, retry_in_s = retry.as_secs(),
                        "cannot notify approvers of ticket {ticket} through the webhook at {}: {why}; retrying in {}s",
                        self.host, retry.as_secs()
                    );
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Sends every pending ticket nobody was told of; stops at the first failure
    /// (returning the ticket and why).
    async fn send_pending(&self) -> Result<(), (String, String)> {
        let tickets = self
            .pipeline
            .store()
            .unnotified_tickets()
            .map_err(|e| ("?".to_string(), format!("cannot read the tickets: {e}")))?;
        for t in tickets {
            self.send(&t).await.map_err(|why| (t.id.clone(), why))?;
            match self.pipeline.store().mark_notified(&t.id) {
                Ok(()) => tracing::info!(ticket = %t.id, "approvers notified"),
                // Sent but not marked: it will be sent again, which beats never.
                Err(e) => {
                    tracing::error!(ticket = %t.id, error = %e, "cannot mark a ticket notified")
                }
            }
        }
        Ok(())
    }

    async fn send(&self, t: &Ticket) -> Result<(), String> {
        let response = self
            .client
            .post(self.webhook.clone())
            .json(&message(t, &self.console_url))
            .send()
            .await
            .map_err(|e| chain(&e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the webhook answered HTTP {}", status.as_u16()))
        }
    }
}

/// The Slack-compatible message for a new ticket: `text` for people, `querygate` (what an
/// approver needs to triage it) for machines. Query parameters, which may carry data
/// values, and the requester's groups stay in the gateway (the link shows them to
/// approvers). The summary carries the requester's own words (its reason), so Slack's
/// control characters are escaped: a reason cannot mention `@channel` or dress up a link.
pub fn message(t: &Ticket, console_url: &str) -> Value {
    let mut ticket = serde_json::to_value(t).unwrap_or(Value::Null);
    if let Some(o) = ticket.as_object_mut() {
        o.remove("parameters");
        o.remove("requester_groups");
    }
    json!({
        "text": format!(
            "{} — ticket {}: {console_url}/api/v1/tickets/{} — approve with `querygate approvals approve {}`",
            slack_escape(&describe(t)), t.id, t.id, t.id
        ),
        "querygate": ticket,
    })
}

/// Text as Slack shows it literally (`&`, `<`, `>` are its control characters).
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// An error and its causes on one line ("error sending request: … : connection refused").
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requester_text_cannot_ping_or_link_in_slack() {
        assert_eq!(
            slack_escape("urgent <!channel> see <https://evil.example|approve> & go"),
            "urgent &lt;!channel&gt; see &lt;https://evil.example|approve&gt; &amp; go"
        );
    }
}
