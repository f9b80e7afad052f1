//! `[audit]`, `[retention]`, `[export]` and `[recording]`: what the gateway keeps of what
//! happened (signed checkpoints of the audit chain, how long records stay, where every
//! record is streamed, and session recordings).
//!
//! Session recording (on unless turned off; read at start, like the rest of this file:
//! a reload does not change it):
//!
//! ```toml
//! [recording]
//! enabled = true                  # record every session (requests, decisions, responses)
//! max_response_bytes = "64 KiB"   # each response body is kept up to this, with its digest
//! readers = ["group:security"]    # who reads every session through the admin API
//!
//! [[sources]]
//! record_results = false          # this source's response bodies stay out of recordings
//! ```

use std::ops::Range;
use std::path::{Path, PathBuf};

use querygate_identity::parse_duration;
use querygate_policy::parse_bytes;
use serde::Deserialize;
use toml::Spanned;

use super::approvals::Webhook;
use super::{Config, duration_of, line_of};

/// `[audit]`: signed checkpoints of the chain (on by default).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Sign checkpoints (default true).
    #[serde(default = "yes")]
    pub signing: bool,
    /// The Ed25519 key (PKCS#8); default `<store path>.key`, created at first start with
    /// its public half in `<key>.pub`.
    pub signing_key: Option<PathBuf>,
    /// A checkpoint every this many records (default 1000) …
    pub checkpoint_every: Option<Spanned<u64>>,
    /// … or this often while records arrive (default 60s), and at every clean stop.
    pub checkpoint_interval: Option<Spanned<String>>,
    /// An append-only file each checkpoint is also written to; keep it apart from the
    /// store (another disk, host or a write-once mount) so that cutting the log's tail is
    /// caught by `audit verify --checkpoints`.
    pub checkpoint_file: Option<PathBuf>,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            signing: true,
            signing_key: None,
            checkpoint_every: None,
            checkpoint_interval: None,
            checkpoint_file: None,
        }
    }
}

fn yes() -> bool {
    true
}

/// `[retention]`: how long audit records are kept (default: forever).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// e.g. `"400d"`: older records are pruned daily, leaving a signed marker.
    pub audit: Option<Spanned<String>>,
    /// Session recordings (see the sessions feature).
    pub recordings: Option<Spanned<String>>,
}

/// `[export]`: a webhook every audit record is streamed to (JSON Lines, in order, resumed
/// from a stored cursor; see `export.rs`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportConfig {
    /// Secret: it usually carries a token.
    pub webhook: Option<Spanned<Webhook>>,
    /// Records per request (default 500).
    pub batch: Option<Spanned<u64>>,
    /// How often to look for new records when caught up (default 2s).
    pub interval: Option<Spanned<String>>,
}

/// `[recording]`: whether sessions are recorded, how much of each response, and who
/// may read every recording (anyone reads their own sessions).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingConfig {
    /// Default true.
    pub enabled: Option<bool>,
    /// Each response body is recorded up to this size (default "64 KiB").
    pub max_response_bytes: Option<Spanned<String>>,
    /// `group:NAME` / `identity:SUBJECT` who may read every session.
    #[serde(default)]
    pub readers: Vec<Spanned<String>>,
}

impl Config {
    pub(super) fn check_audit(&self, text: &str, path: &Path) -> Result<(), String> {
        let fail = |span: Range<usize>, msg: String| {
            Err(format!("{}{}: {msg}", path.display(), line_of(text, &span)))
        };
        if let Some(n) = &self.audit.checkpoint_every
            && *n.get_ref() == 0
        {
            return fail(n.span(), "audit.checkpoint_every must be at least 1".into());
        }
        // A duration no shorter than `min`, or why not (`too_short` says what it is for).
        let at_least = |key: &str, v: &Option<Spanned<String>>, min, too_short: &str| {
            let Some(v) = v else { return Ok(()) };
            match parse_duration(v.get_ref()) {
                Ok(d) if d < min => fail(v.span(), format!("{key} must be {too_short}")),
                Ok(_) => Ok(()),
                Err(e) => fail(v.span(), format!("{key}: {e}")),
            }
        };
        let tick = std::time::Duration::from_nanos(1);
        let day = std::time::Duration::from_secs(86_400);
        at_least(
            "audit.checkpoint_interval",
            &self.audit.checkpoint_interval,
            tick,
            "longer than 0s",
        )?;
        at_least(
            "retention.audit",
            &self.retention.audit,
            day,
            "at least 1d (records are pruned daily)",
        )?;
        at_least(
            "retention.recordings",
            &self.retention.recordings,
            day,
            "at least 1d (records are pruned daily)",
        )?;
        at_least(
            "export.interval",
            &self.export.interval,
            tick,
            "longer than 0s",
        )?;
        if let Some(hook) = &self.export.webhook
            && let Err(e) = hook.get_ref().url_of("export.webhook")
        {
            return fail(hook.span(), e);
        }
        if let Some(n) = &self.export.batch
            && !(1..=10_000).contains(n.get_ref())
        {
            return fail(n.span(), "export.batch must be between 1 and 10000".into());
        }
        if self.retention.audit.is_some() && !self.audit.signing {
            let span = self
                .retention
                .audit
                .as_ref()
                .map(Spanned::span)
                .unwrap_or(0..0);
            return fail(
                span,
                "retention.audit needs audit.signing: pruning leaves a signed marker so that the \
                 rest of the chain still verifies"
                    .into(),
            );
        }
        Ok(())
    }

    pub(super) fn check_recording(&self, text: &str, path: &Path) -> Result<(), String> {
        let fail = |span: Range<usize>, msg: String| {
            Err(format!("{}{}: {msg}", path.display(), line_of(text, &span)))
        };
        if let Some(size) = &self.recording.max_response_bytes {
            match parse_bytes(size.get_ref()) {
                Ok(n) if usize::try_from(n).is_ok() => {}
                Ok(_) => {
                    return fail(
                        size.span(),
                        "recording.max_response_bytes is too large".into(),
                    );
                }
                Err(e) => return fail(size.span(), format!("recording.max_response_bytes: {e}")),
            }
        }
        for r in &self.recording.readers {
            if let Err(e) = querygate_policy::Principal::parse(r.get_ref()) {
                return fail(r.span(), format!("recording.readers: {e}"));
            }
        }
        Ok(())
    }

    /// The signing key's path (`[audit] signing_key`, default `<store>.key`).
    pub fn signing_key_path(&self) -> PathBuf {
        self.audit
            .signing_key
            .as_ref()
            .map(|p| self.resolve(p))
            .unwrap_or_else(|| querygate_store::default_key_path(&self.store_path()))
    }

    /// `[audit]` as the store takes it; `None` when signing is off.
    pub fn checkpoints(&self) -> Result<Option<querygate_store::Checkpoints>, String> {
        if !self.audit.signing {
            return Ok(None);
        }
        let signer = querygate_store::signing::Signer::load_or_create(&self.signing_key_path())
            .map_err(|e| e.to_string())?;
        Ok(Some(querygate_store::Checkpoints {
            signer,
            every: self
                .audit
                .checkpoint_every
                .as_ref()
                .map_or(1000, |n| *n.get_ref()),
            interval: duration_of(&self.audit.checkpoint_interval)
                .unwrap_or(std::time::Duration::from_secs(60)),
            file: self.audit.checkpoint_file.as_ref().map(|p| self.resolve(p)),
        }))
    }

    /// `[retention] audit`, checked at load.
    pub fn audit_retention(&self) -> Option<std::time::Duration> {
        duration_of(&self.retention.audit)
    }

    /// `[retention] recordings`, checked at load.
    pub fn recordings_retention(&self) -> Option<std::time::Duration> {
        duration_of(&self.retention.recordings)
    }

    /// `[export] interval` (default 2s), checked at load.
    pub fn export_interval(&self) -> std::time::Duration {
        duration_of(&self.export.interval).unwrap_or(std::time::Duration::from_secs(2))
    }

    /// `[recording]` as the pipeline takes it, or `None` when sessions are not recorded
    /// (checked at load).
    pub fn recording_settings(&self) -> Option<querygate_pipeline::RecordingSettings> {
        if self.recording.enabled == Some(false) {
            return None;
        }
        let defaults = querygate_pipeline::RecordingSettings::default();
        Some(querygate_pipeline::RecordingSettings {
            max_response_bytes: self
                .recording
                .max_response_bytes
                .as_ref()
                .and_then(|s| parse_bytes(s.get_ref()).ok())
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(defaults.max_response_bytes),
            without_results: self
                .sources
                .iter()
                .filter(|s| s.record_results == Some(false))
                .map(|s| s.name.clone())
                .collect(),
            readers: self
                .recording
                .readers
                .iter()
                .filter_map(|r| querygate_policy::Principal::parse(r.get_ref()).ok())
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{GOOD, error_of, parse};

    #[test]
    fn recording_is_on_by_default_and_checked_with_its_line() {
        let c = parse(GOOD).expect("good config");
        let s = c.recording_settings().expect("on by default");
        assert_eq!(s.max_response_bytes, 64 << 10);
        assert!(s.readers.is_empty() && s.without_results.is_empty());
        let text = GOOD.replace(
            "credentials = \"none\"",
            "credentials = \"none\"\nrecord_results = false",
        ) + "\n[recording]\nmax_response_bytes = \"1 MiB\"\nreaders = [\"group:security\"]\n";
        let s = parse(&text)
            .expect("recording")
            .recording_settings()
            .expect("on");
        assert_eq!(s.max_response_bytes, 1 << 20);
        assert!(s.without_results.contains("analytics"));
        assert_eq!(s.readers.len(), 1);
        let off = format!("{GOOD}\n[recording]\nenabled = false\n");
        assert!(parse(&off).expect("off").recording_settings().is_none());
        let e = error_of(&format!(
            "{GOOD}\n[recording]\nmax_response_bytes = \"lots\"\n"
        ));
        assert!(
            e.contains("line 21") && e.contains("max_response_bytes"),
            "{e}"
        );
        let e = error_of(&format!("{GOOD}\n[recording]\nreaders = [\"security\"]\n"));
        assert!(e.contains("line 21") && e.contains("readers"), "{e}");
        let e = error_of(&format!("{GOOD}\n[recording]\nenable = true\n"));
        assert!(e.contains("enable"), "{e}");
    }
}
