//! The export sink: streams every audit record to a webhook (a SIEM's HTTP collector),
//! in order, at least once, resuming where it stopped.
//!
//! Records go out in batches of up to `batch` as JSON Lines (`application/x-ndjson`), one
//! record per line exactly as `audit export --format jsonl` prints it (schema `v: 1`, with
//! `prev_hash` and `hash`, so the receiver can check the chain). Each batch carries
//! `X-Querygate-First-Seq` / `X-Querygate-Last-Seq` and an `Idempotency-Key` of the two, so a
//! receiver can drop a batch it already has: the only duplicate possible is a batch resent
//! after a crash between its 2xx and the cursor's write. The cursor (the last seq
//! acknowledged) is stored durably after each 2xx; on failure the same batch is retried
//! after 1 s, doubling up to 60 s. A sink outage loses nothing: the records wait in the log.
//!
//! Must not: log, return or print the webhook URL (it may carry a token).

use std::sync::Arc;
use std::time::Duration;

use querygate_pipeline::Pipeline;

/// The cursor's name in the store.
pub const SINK: &str = "webhook";
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

pub struct Exporter {
    pipeline: Arc<Pipeline>,
    client: reqwest::Client,
    /// Secret: the URL itself is never shown.
    url: reqwest::Url,
    host: String,
    batch: usize,
    idle: Duration,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("host", &self.host)
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl Exporter {
    pub fn new(
        pipeline: Arc<Pipeline>,
        url: reqwest::Url,
        batch: usize,
        idle: Duration,
    ) -> Result<Exporter, String> {
        let host = url.host_str().unwrap_or("?").to_string();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build the export client: {}", e.without_url()))?;
        Ok(Exporter {
            pipeline,
            client,
            url,
            host,
            batch: batch.max(1),
            idle,
        })
    }

    /// Runs until the process ends.
    pub async fn run(self) {
        let store = self.pipeline.store();
        let mut retry = FIRST_RETRY;
        loop {
            let cursor = match store.export_cursor(SINK) {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "export: cannot read the cursor");
                    tokio::time::sleep(MAX_RETRY).await;
                    continue;
                }
            };
            let records = match store.records_after(cursor, self.batch) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "export: cannot read records");
                    tokio::time::sleep(MAX_RETRY).await;
                    continue;
                }
            };
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                tokio::time::sleep(self.idle).await;
                continue;
            };
            let (first, last) = (first.record.seq, last.record.seq);
            let mut body = String::new();
            for r in &records {
                body.push_str(&r.to_json().to_string());
                body.push('\n');
            }
            match self.send(body, first, last).await {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    if let Err(e) = store.set_export_cursor(SINK, last) {
                        tracing::error!(error = %e, "export: cannot store the cursor");
                    }
                    tracing::debug!(first, last, "export: batch delivered");
                }
                Err(why) => {
                    tracing::warn!(
                        host = %self.host, first, last, "export: {why}; retrying in {}s",
                        retry.as_secs()
                    );
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(MAX_RETRY);
                }
            }
        }
    }

    async fn send(&self, body: String, first: u64, last: u64) -> Result<(), String> {
        let response = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/x-ndjson")
            .header("x-querygate-first-seq", first.to_string())
            .header("x-querygate-last-seq", last.to_string())
            .header("idempotency-key", format!("querygate-audit-{first}-{last}"))
            .body(body)
            .send()
            .await
            .map_err(|e| format!("the sink cannot be reached ({})", e.without_url()))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("the sink answered HTTP {}", status.as_u16()))
        }
    }
}
