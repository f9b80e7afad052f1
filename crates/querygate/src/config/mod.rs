//! `querygate.toml`: the format users write, parsed and checked before anything starts.
//!
//! Every error names the file and, where it can, the line. Relative paths in the file
//! are relative to the file's own directory. This module builds no runtime objects;
//! `serve` turns a checked [`Config`] into them.
//!
//! Here: [`Config`] (the whole file), [`Config::load`] and [`Config::parse`] (read, then
//! check every part), and the helpers that turn a span into `file, line N`. Each part has
//! its own file, with its types, its checks and the accessors `serve` uses:
//!
//! - `server`: `[server]` (listen addresses, TLS, body size) and `[store]`;
//! - `approvals`: `[approvals]` and `[notify]` (and the webhook URLs `[export]` shares);
//! - `audit`: `[audit]` (signed checkpoints), `[retention]`, `[export]`, `[recording]`;
//! - `identity`: `[[api_keys]]` and `[[oidc]]`;
//! - `policy`: `[[rule]]`, `[budgets]`, the `policy = "…"` file, `[[classify]]`, `[[mask]]`,
//!   `[masking]`;
//! - `sources`: `[[sources]]`.

mod approvals;
mod audit;
mod identity;
mod policy;
mod server;
mod sources;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use querygate_identity::{OidcSpec, parse_duration};
use querygate_policy::RuleSpec;
use serde::Deserialize;
use toml::Spanned;

use approvals::{ApprovalsConfig, NotifyConfig};
use audit::{AuditConfig, ExportConfig, RecordingConfig, RetentionConfig};
use identity::ApiKeyConfig;
use policy::{ClassifyConfig, MaskConfig, MaskingConfig};
use server::{ServerConfig, StoreConfig};

pub use server::{DEFAULT_MAX_BODY_BYTES, DEFAULT_POSTGRES_MAX_MESSAGE_BYTES, Synchronous};
pub use sources::{BigQuerySettings, LocalSettings, SourceConfig, SourceKind, UpstreamCredential};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub store: StoreConfig,
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// OIDC issuers whose tokens are accepted.
    #[serde(default)]
    pub oidc: Vec<Spanned<OidcSpec>>,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    /// A separate file of `[[rule]]`s and `[budgets]`, checked after this file's rules.
    pub policy: Option<PathBuf>,
    /// Rules for every source, checked in order after the source's own.
    #[serde(default)]
    pub rule: Vec<Spanned<RuleSpec>>,
    /// Daily budgets per identity, by `group:NAME` or `identity:SUBJECT`: `"25 GiB"`,
    /// `"1M rows"`, or both as a list.
    #[serde(default)]
    pub budgets: BTreeMap<String, Spanned<policy::Amounts>>,
    /// How long tickets wait and how long window grants may last.
    #[serde(default)]
    pub approvals: ApprovalsConfig,
    /// Where approvers hear of new tickets.
    #[serde(default)]
    pub notify: NotifyConfig,
    /// Signed checkpoints of the audit chain.
    #[serde(default)]
    pub audit: AuditConfig,
    /// How long records are kept.
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Where every audit record is streamed.
    #[serde(default)]
    pub export: ExportConfig,
    /// Column classification: which columns carry which tag.
    #[serde(default)]
    pub classify: Vec<Spanned<ClassifyConfig>>,
    /// For whom a tag's columns are masked.
    #[serde(default)]
    pub mask: Vec<Spanned<MaskConfig>>,
    /// Session recording.
    #[serde(default)]
    pub recording: RecordingConfig,
    /// Where the `hash` masking strategy's key is kept.
    #[serde(default)]
    pub masking: MaskingConfig,
    /// The MCP front (`server.mcp_listen`).
    #[serde(default)]
    pub mcp: server::McpConfig,
    /// The directory of the config file; relative paths resolve against it.
    #[serde(skip)]
    pub base: PathBuf,
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the config file: {e}", path.display()))?;
        Config::parse(&text, path)
    }

    /// Parses and checks config text read from `path`. Each `[[sources]]` block's
    /// kind-specific keys are first moved under its `kind` (see [`SourceKind`]).
    pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
        let toml_error = |e: toml::de::Error| {
            let at = e.span().map(|s| line_of(text, &s)).unwrap_or_default();
            format!("{}{at}: {}", path.display(), e.message())
        };
        let mut doc = toml::de::DeTable::parse(text).map_err(toml_error)?;
        sources::nest_kind_settings(doc.get_mut())
            .map_err(|(span, msg)| format!("{}{}: {msg}", path.display(), line_of(text, &span)))?;
        let mut config =
            Config::deserialize(toml::de::Deserializer::from(doc)).map_err(toml_error)?;
        config.base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.check(text, path)?;
        config.policies_checked(text, path)?;
        Ok(config)
    }

    /// Every part checked (each in its own file); the first error is the answer.
    fn check(&self, text: &str, path: &Path) -> Result<(), String> {
        self.check_server(text, path)?;
        self.check_approvals(text, path)?;
        self.check_notify(text, path)?;
        self.check_audit(text, path)?;
        self.check_recording(text, path)?;
        self.check_identities(text, path)?;
        self.check_sources(text, path)
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

/// A duration setting checked at load (`None` when unset).
fn duration_of(v: &Option<Spanned<String>>) -> Option<std::time::Duration> {
    v.as_ref().and_then(|v| parse_duration(v.get_ref()).ok())
}

/// Unix seconds of an RFC 3339 time (`2027-01-31T00:00:00Z`) or a date (`2027-01-31`, UTC midnight).
pub fn parse_time(text: &str) -> Result<i64, String> {
    let t = text.trim();
    if let Ok(ts) = t.parse::<jiff::Timestamp>() {
        return Ok(ts.as_second());
    }
    t.parse::<jiff::civil::Date>()
        .ok()
        .and_then(|d| d.to_zoned(jiff::tz::TimeZone::UTC).ok())
        .map(|z| z.timestamp().as_second())
        .ok_or_else(|| {
            format!(
                "{t:?} is not a time like \"2027-01-31T00:00:00Z\" or a date like \"2027-01-31\""
            )
        })
}

/// `" line N"` for a byte span of `text`.
fn line_of(text: &str, span: &Range<usize>) -> String {
    let start = span.start.min(text.len());
    let line = text[..start].matches('\n').count() + 1;
    format!(", line {line}")
}

/// What the tests of every part share: a good config and ways to parse it.
#[cfg(test)]
mod testing {
    use std::path::Path;

    use super::Config;

    pub const GOOD: &str = r#"
[server]
bigquery_listen = "127.0.0.1:9050"

[store]
path = "querygate.db"

[[api_keys]]
identity = "agent:claude-code"
groups = ["agents"]
key_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"

[[sources]]
name = "analytics"
kind = "bigquery"
project = "test-project"
endpoint = "http://127.0.0.1:19050"
credentials = "none"
"#;

    pub fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/qg/querygate.toml"))
    }

    pub fn error_of(text: &str) -> String {
        parse(text).expect_err("bad config must fail")
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::testing::{GOOD, error_of, parse};
    use super::*;

    #[test]
    fn the_documented_format_parses() {
        let c = parse(GOOD).expect("good config");
        assert_eq!(c.listen().port(), 9050);
        assert_eq!(c.store_path(), PathBuf::from("/etc/qg/querygate.db"));
        let SourceKind::BigQuery(bigquery) = c.sources[0].kind.get_ref() else {
            panic!("a bigquery source")
        };
        assert_eq!(bigquery.endpoint(), "http://127.0.0.1:19050");
        assert_eq!(bigquery.credential(&c), UpstreamCredential::None);
        let sa = GOOD.replace(
            "credentials = \"none\"",
            "credentials = { service_account_key = \"sa.json\" }",
        );
        let c = parse(&sa).expect("sa config");
        let SourceKind::BigQuery(bigquery) = c.sources[0].kind.get_ref() else {
            panic!("a bigquery source")
        };
        assert_eq!(
            bigquery.credential(&c),
            UpstreamCredential::ServiceAccountKey("/etc/qg/sa.json".into())
        );
    }

    #[test]
    fn errors_name_file_line_and_problem() {
        let e = error_of(&GOOD.replace("key_sha256 = \"ba78", "key_sha256 = \"secret-ba78"));
        assert!(
            e.starts_with("/etc/qg/querygate.toml, line 11:") && e.contains("64-hex-digit"),
            "{e}"
        );
        let e = error_of(&GOOD.replace("project =", "projekt ="));
        assert!(e.contains("line 16") && e.contains("projekt"), "{e}");
        let e = error_of(&GOOD.replace("kind = \"bigquery\"", "kind = \"oracle\""));
        assert!(e.contains("line 15") && e.contains("oracle"), "{e}");
        let e = error_of(&GOOD.replace("\"127.0.0.1:9050\"", "\"nonsense\""));
        assert!(e.contains("line 3"), "{e}");
        let e = error_of(&GOOD.replace("credentials = \"none\"", "credentials = \"adc\""));
        assert!(e.contains("line 18") && e.contains("adc"), "{e}");
        let e = error_of("[server\n");
        assert!(e.contains("line 1"), "{e}");
        let e = error_of(&GOOD.replace(
            "groups = [\"agents\"]",
            "groups = [\"agents\"]\nexpires = \"next week\"",
        ));
        assert!(e.contains("line 11") && e.contains("expires"), "{e}");
    }

    #[test]
    fn budgets_are_bytes_rows_or_both() {
        use querygate_policy::Amount;
        let with = |budgets: &str| format!("{GOOD}\n[budgets]\n{budgets}\n");
        let c = parse(&with(
            "\"group:agents\" = \"1 TiB\"\n\"identity:agent:etl\" = [\"200 GiB\", \"5M rows\"]",
        ))
        .expect("budgets");
        let mut budgets: Vec<_> = c
            .policies()
            .expect("policies")
            .budgets
            .iter()
            .map(|b| (b.who.to_string(), b.per_day))
            .collect();
        budgets.sort_by_key(|(who, _)| who.clone());
        assert_eq!(
            budgets,
            vec![
                ("group:agents".to_string(), Amount::Bytes(1 << 40)),
                ("identity:agent:etl".to_string(), Amount::Bytes(200 << 30)),
                ("identity:agent:etl".to_string(), Amount::Rows(5_000_000)),
            ]
        );
        let e = error_of(&with("\"group:agents\" = \"lots of rows\""));
        assert!(e.contains("line 21") && e.contains("row count"), "{e}");
        let e = error_of(&with("\"group:agents\" = 5"));
        assert!(e.contains("line 21") && e.contains("a budget like"), "{e}");
    }
}
