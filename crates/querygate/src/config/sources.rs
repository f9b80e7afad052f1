//! `[[sources]]`: the upstreams clients reach through their `project` — a BigQuery
//! project (`kind = "bigquery"`) or the embedded engine over local files
//! (`kind = "local"`) — with each source's own rules, byte cap, detectors and recording.

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use querygate_policy::RuleSpec;
use serde::Deserialize;
use toml::Spanned;

use super::{Config, line_of};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub kind: Spanned<String>,
    pub project: String,
    pub endpoint: Option<Spanned<String>>,
    #[serde(default)]
    pub credentials: Option<Spanned<Credentials>>,
    /// This source's own rules, checked before the global ones.
    #[serde(default)]
    pub rule: Vec<Spanned<RuleSpec>>,
    /// What happens when no rule matches: "deny" (the default) or "allow".
    pub default: Option<Spanned<String>>,
    /// `maximumBytesBilled` set on every query this source forwards, e.g. "1 TiB".
    pub max_bytes_billed: Option<Spanned<String>>,
    /// Narrower service accounts the gateway impersonates for some identities, first match wins.
    #[serde(default)]
    pub impersonate: Vec<Spanned<ImpersonateConfig>>,
    /// The IAM Credentials API root (default https://iamcredentials.googleapis.com).
    pub iam_endpoint: Option<String>,
    /// Whether response bodies of this source are recorded in sessions (default true).
    pub record_results: Option<bool>,
    /// Value detectors run on every result value (`email`, `phone`, `card`, `ssn`, `iban`,
    /// `ip`, `secret`, …): what they find is masked before the client (or a recording)
    /// sees it. A second line behind column masking, not a replacement for it.
    #[serde(default)]
    pub detect: Vec<Spanned<String>>,
    /// How detected values are masked: redact (default), null, last4, email_domain.
    pub detect_strategy: Option<Spanned<String>>,
    /// `kind = "local"`: the tables of the embedded engine, `"dataset.table" = "file or glob"`
    /// (CSV, Parquet, newline-delimited JSON; relative to the config file).
    #[serde(default)]
    pub tables: BTreeMap<String, Spanned<String>>,
}

/// `[[sources.impersonate]]`: requests of these identities run as this service account.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImpersonateConfig {
    /// `group:NAME` / `identity:SUBJECT`, as in rules.
    pub who: Vec<String>,
    pub service_account: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Credentials {
    /// `credentials = "none"`.
    Keyword(String),
    /// `credentials = { service_account_key = "sa.json" }`.
    ServiceAccount { service_account_key: PathBuf },
}

/// The upstream credential of a source, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamCredential {
    None,
    ServiceAccountKey(PathBuf),
}

pub const BIGQUERY_ENDPOINT: &str = "https://bigquery.googleapis.com";

impl Config {
    /// Each source: its detectors, a kind that exists and the settings of that kind only,
    /// a name and a project of its own, an endpoint URL, a known credential.
    pub(super) fn check_sources(&self, text: &str, path: &Path) -> Result<(), String> {
        let fail = |span: Range<usize>, msg: String| {
            Err(format!("{}{}: {msg}", path.display(), line_of(text, &span)))
        };
        for s in &self.sources {
            if let Err((span, msg)) = s.scrubber_checked(Vec::new()) {
                return fail(span, format!("source {}: {msg}", s.name));
            }
        }
        let mut names = HashSet::new();
        let mut projects = HashSet::new();
        for source in &self.sources {
            let kind = source.kind.get_ref().as_str();
            if kind != "bigquery" && kind != "local" {
                return fail(
                    source.kind.span(),
                    format!(
                        "source {}: kind {:?} is not supported; supported kinds: \"bigquery\", \"local\"",
                        source.name,
                        source.kind.get_ref()
                    ),
                );
            }
            if kind == "local" {
                if let Err((span, msg)) = source.check_local() {
                    return fail(span, format!("source {}: {msg}", source.name));
                }
            } else if let Some(value) = source.tables.values().next() {
                return fail(
                    value.span(),
                    format!(
                        "source {}: tables = {{ ... }} is for kind = \"local\"; a bigquery source reads the tables of its project",
                        source.name
                    ),
                );
            }
            if !names.insert(source.name.as_str()) {
                return fail(
                    source.kind.span(),
                    format!("two sources are named {}", source.name),
                );
            }
            if !projects.insert(source.project.as_str()) {
                return fail(
                    source.kind.span(),
                    format!("two sources serve project {}", source.project),
                );
            }
            if let Some(ep) = &source.endpoint {
                let e = ep.get_ref();
                if !(e.starts_with("http://") || e.starts_with("https://")) {
                    return fail(
                        ep.span(),
                        format!("endpoint {e:?} must start with http:// or https://"),
                    );
                }
            }
            if let Some(c) = &source.credentials
                && let Credentials::Keyword(k) = c.get_ref()
                && k != "none"
            {
                return fail(
                    c.span(),
                    format!(
                        "credentials = {k:?}: write \"none\" or {{ service_account_key = \"sa.json\" }}"
                    ),
                );
            }
        }
        Ok(())
    }
}

impl SourceConfig {
    pub fn is_local(&self) -> bool {
        self.kind.get_ref() == "local"
    }

    /// A `local` source: tables set, named `dataset.table`, and no upstream settings.
    fn check_local(&self) -> Result<(), (Range<usize>, String)> {
        let upstream_only = [
            self.endpoint.as_ref().map(|e| (e.span(), "endpoint")),
            self.credentials.as_ref().map(|c| (c.span(), "credentials")),
            self.impersonate.first().map(|i| (i.span(), "impersonate")),
        ];
        if let Some((span, key)) = upstream_only.into_iter().flatten().next() {
            return Err((
                span,
                format!("{key} is for kind = \"bigquery\"; a local source runs in the gateway"),
            ));
        }
        if self.tables.is_empty() {
            return Err((
                self.kind.span(),
                "kind = \"local\" needs tables = { \"dataset.table\" = \"data/file.parquet\", ... }".into(),
            ));
        }
        for (name, path) in &self.tables {
            let parts: Vec<&str> = name.split('.').collect();
            let valid = |p: &str| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            };
            if parts.len() != 2 || !parts.iter().all(|p| valid(p)) || parts[0].starts_with('_') {
                return Err((
                    path.span(),
                    format!(
                        "table {name:?} must be \"dataset.table\" (letters, digits, _ and -; a dataset may not start with _)"
                    ),
                ));
            }
            if path.get_ref().trim().is_empty() {
                return Err((path.span(), format!("table {name}: the path is empty")));
            }
        }
        Ok(())
    }

    /// The tables of a `local` source as `(dataset, table, absolute path or glob)`.
    #[cfg_attr(not(feature = "local"), allow(dead_code))]
    pub fn local_tables(&self, config: &Config) -> Vec<(String, String, PathBuf)> {
        self.tables
            .iter()
            .filter_map(|(name, path)| {
                let (dataset, table) = name.split_once('.')?;
                Some((
                    dataset.to_string(),
                    table.to_string(),
                    config.resolve(Path::new(path.get_ref())),
                ))
            })
            .collect()
    }

    pub fn endpoint(&self) -> &str {
        self.endpoint
            .as_ref()
            .map_or(BIGQUERY_ENDPOINT, |e| e.get_ref().as_str())
    }

    /// The value detectors of `detect`, with their strategy (and the masking key, for
    /// `hash`); `None` when none are set.
    pub fn scrubber(
        &self,
        key: Option<&querygate_core::Secret>,
    ) -> Option<querygate_mask::Scrubber> {
        let key = key
            .map(|k| k.expose().as_bytes().to_vec())
            .unwrap_or_default();
        self.scrubber_checked(key).ok().flatten()
    }

    /// `detect_strategy = "hash"` (it needs the masking key).
    pub fn hashes_detections(&self) -> bool {
        self.detect_strategy
            .as_ref()
            .is_some_and(|s| s.get_ref() == "hash")
    }

    fn scrubber_checked(
        &self,
        key: Vec<u8>,
    ) -> Result<Option<querygate_mask::Scrubber>, (Range<usize>, String)> {
        if self.detect.is_empty() {
            return Ok(None);
        }
        let mut kinds = Vec::new();
        for d in &self.detect {
            kinds.push(
                querygate_mask::DetectorKind::parse(d.get_ref())
                    .map_err(|e| (d.span(), format!("detect: {e}")))?,
            );
        }
        let strategy = match &self.detect_strategy {
            None => querygate_mask::Strategy::Redact,
            Some(s) => match querygate_mask::Strategy::parse(s.get_ref()) {
                Ok(strategy) => strategy,
                Err(e) => return Err((s.span(), format!("detect_strategy: {e}"))),
            },
        };
        Ok(Some(querygate_mask::Scrubber::new(&kinds, strategy, key)))
    }

    pub fn credential(&self, config: &Config) -> UpstreamCredential {
        match self.credentials.as_ref().map(Spanned::get_ref) {
            Some(Credentials::ServiceAccount {
                service_account_key,
            }) => UpstreamCredential::ServiceAccountKey(config.resolve(service_account_key)),
            _ => UpstreamCredential::None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::super::testing::{GOOD, error_of, parse};

    #[test]
    fn local_sources_name_their_tables_and_nothing_of_an_upstream() {
        let local = GOOD.replace(
            "kind = \"bigquery\"\nproject = \"test-project\"\nendpoint = \"http://127.0.0.1:19050\"\ncredentials = \"none\"",
            "kind = \"local\"\nproject = \"demo\"\ntables = { \"shop.orders\" = \"data/orders/*.csv\", \"shop.customers\" = \"/srv/c.parquet\" }",
        );
        let c = parse(&local).expect("local config");
        assert!(c.sources[0].is_local());
        assert_eq!(
            c.sources[0].local_tables(&c),
            vec![
                (
                    "shop".into(),
                    "customers".into(),
                    PathBuf::from("/srv/c.parquet")
                ),
                (
                    "shop".into(),
                    "orders".into(),
                    PathBuf::from("/etc/qg/data/orders/*.csv")
                ),
            ]
        );
        let e = error_of(&local.replace("tables = {", "endpoint = \"http://x\"\ntables = {"));
        assert!(e.contains("endpoint is for kind = \"bigquery\""), "{e}");
        let e = error_of(&local.replace("\"shop.orders\"", "\"orders\""));
        assert!(e.contains("must be \"dataset.table\""), "{e}");
        let e = error_of(&local.replace("\"shop.orders\"", "\"_results.x\""));
        assert!(e.contains("may not start with _"), "{e}");
        let no_tables = GOOD.replace("kind = \"bigquery\"", "kind = \"local\"");
        assert!(error_of(&no_tables).contains("endpoint is for kind"));
        let e =
            error_of(&GOOD.replace("credentials = \"none\"", "tables = { \"a.b\" = \"x.csv\" }"));
        assert!(
            e.contains("tables = { ... } is for kind = \"local\""),
            "{e}"
        );
    }
}
