//! `[[sources]]`: the upstreams clients reach through their `project`, each of a kind —
//! a BigQuery project (`kind = "bigquery"`, `bigquery.rs`) or the embedded engine over
//! local files (`kind = "local"`, `local.rs`) — with the settings every kind shares: its
//! own rules, byte cap, detectors and recording.
//!
//! A block is written flat: `kind = "bigquery"` beside the keys of every kind and the keys
//! only that kind takes. Before serde reads the file, [`nest_kind_settings`] moves the
//! kind's own keys under `kind` (`kind = { bigquery = { endpoint = …, … } }`, serde's
//! shape for the [`SourceKind`] enum), and refuses, with its line, a kind that does not
//! exist, a key of another kind, and a key of no kind. The kinds and their keys are read
//! from `SourceKind`'s derived `Deserialize` (`probe.rs`), so no list of them is kept here.
//!
//! A postgres source (`kind = "postgres"`, `postgres.rs`) is addressed by its name when it
//! sets no `project` (clients' `dbname`).
//!
//! A new kind is a variant of [`SourceKind`] holding its own settings type, in its own file (its keys,
//! its checks, its accessors), an arm in [`SourceKind::check`], and its wiring in
//! `serve`; nothing else in the config changes.

mod bigquery;
mod local;
mod postgres;
mod probe;

use std::borrow::Cow;
use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use querygate_policy::RuleSpec;
use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Config, line_of};

pub use bigquery::{BigQuerySettings, UpstreamCredential};
pub use local::LocalSettings;
pub use postgres::PostgresSettings;

/// `[[sources]]`: what every kind of source takes, and its kind with that kind's own settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    /// `kind = "..."` and the settings only that kind takes (moved under `kind` by
    /// [`nest_kind_settings`]); the span is that of the `kind = "..."` value.
    pub kind: Spanned<SourceKind>,
    pub project: String,
    /// This source's own rules, checked before the global ones.
    #[serde(default)]
    pub rule: Vec<Spanned<RuleSpec>>,
    /// What happens when no rule matches: "deny" (the default) or "allow".
    pub default: Option<Spanned<String>>,
    /// `maximumBytesBilled` set on every query this source runs, e.g. "1 TiB" (BigQuery
    /// and the local engine both refuse a query that would bill more).
    pub max_bytes_billed: Option<Spanned<String>>,
    /// Whether response bodies of this source are recorded in sessions (default true).
    pub record_results: Option<bool>,
    /// Value detectors run on every result value (`email`, `phone`, `card`, `ssn`, `iban`,
    /// `ip`, `secret`, …): what they find is masked before the client (or a recording)
    /// sees it. A second line behind column masking, not a replacement for it.
    #[serde(default)]
    pub detect: Vec<Spanned<String>>,
    /// How detected values are masked: redact (default), null, last4, email_domain.
    pub detect_strategy: Option<Spanned<String>>,
}

/// A source's kind, as `kind = "..."` names it, with the settings only that kind takes.
#[derive(Debug, Deserialize)]
pub enum SourceKind {
    /// A BigQuery project, through its REST API.
    #[serde(rename = "bigquery")]
    BigQuery(BigQuerySettings),
    /// The embedded engine over local files.
    #[serde(rename = "local")]
    Local(LocalSettings),
    /// A PostgreSQL database, through its wire protocol.
    #[serde(rename = "postgres")]
    Postgres(PostgresSettings),
}

impl SourceKind {
    /// Whether the kind's source bills by bytes (what `Source::bills_bytes` answers for
    /// it): byte budgets hold there.
    pub fn bills_bytes(&self) -> bool {
        !matches!(self, SourceKind::Postgres(_))
    }

    /// The kind's own settings, checked. `kind` is the span of `kind = "..."`, for what
    /// is missing.
    fn check(&self, kind: Range<usize>, project: &str) -> Result<(), (Range<usize>, String)> {
        match self {
            SourceKind::BigQuery(settings) => settings.check(),
            SourceKind::Local(settings) => settings.check(kind),
            SourceKind::Postgres(settings) => settings.check(project),
        }
    }
}

/// Moves each `[[sources]]` block's kind-specific keys under its `kind`, as serde reads
/// [`SourceKind`]: `kind = "local"` with `tables = {…}` becomes
/// `kind = { local = { tables = {…} } }`. Refuses (with the span to report) an unknown or
/// missing kind, a key that belongs to another kind, and a key no kind takes. What is
/// not a table of the expected shape is left for serde to refuse.
pub(super) fn nest_kind_settings(doc: &mut DeTable<'_>) -> Result<(), (Range<usize>, String)> {
    let Some(DeValue::Array(blocks)) = doc.get_mut("sources").map(Spanned::get_mut) else {
        return Ok(());
    };
    let kinds = probe::variants::<SourceKind>();
    let shared = probe::fields::<SourceConfig>();
    for block in blocks.iter_mut() {
        let span = block.span();
        if let DeValue::Table(table) = block.get_mut() {
            nest_block(table, span, &kinds, shared)?;
        }
    }
    Ok(())
}

fn nest_block(
    table: &mut DeTable<'_>,
    span: Range<usize>,
    kinds: &[(&'static str, &'static [&'static str])],
    shared: &[&str],
) -> Result<(), (Range<usize>, String)> {
    let source = match table.get("name").and_then(|n| n.get_ref().as_str()) {
        Some(name) => format!("source {name}"),
        None => "[[sources]]".to_string(),
    };
    let supported = kinds
        .iter()
        .map(|(kind, _)| format!("{kind:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let Some((key, kind)) = table.remove_entry("kind") else {
        return Err((
            span,
            format!("{source} has no kind: write kind = \"...\"; supported kinds: {supported}"),
        ));
    };
    let Some(written) = kind.get_ref().as_str() else {
        return Err((
            kind.span(),
            format!("{source}: kind must be a string; supported kinds: {supported}"),
        ));
    };
    let Some(&(kind_name, own)) = kinds.iter().find(|(k, _)| *k == written) else {
        return Err((
            kind.span(),
            format!("{source}: kind {written:?} is not supported; supported kinds: {supported}"),
        ));
    };
    // The first key (in the file) that is not this kind's.
    let mut keys: Vec<_> = table.iter().collect();
    keys.sort_by_key(|(k, _)| k.span().start);
    for (k, value) in keys {
        let k_name = k.get_ref().as_ref();
        if shared.contains(&k_name) || own.contains(&k_name) {
            continue;
        }
        let message = match kinds.iter().find(|(_, keys)| keys.contains(&k_name)) {
            Some((owner, _)) => {
                let shown = match value.get_ref() {
                    DeValue::Table(_) => format!("{k_name} = {{ ... }}"),
                    _ => k_name.to_string(),
                };
                format!("{source}: {shown} is for kind = {owner:?}, not kind = {kind_name:?}")
            }
            None => {
                let takes = shared
                    .iter()
                    .chain(own)
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ");
                format!("{source}: unknown field `{k_name}`; a {kind_name} source takes {takes}")
            }
        };
        return Err((k.span(), message));
    }
    let mut settings = DeTable::new();
    for k in own {
        if let Some((k, v)) = table.remove_entry(*k) {
            settings.insert(k, v);
        }
    }
    // A postgres source is addressed by its name (`dbname`) unless it says otherwise.
    if kind_name == "postgres"
        && !table.contains_key("project")
        && let Some(name) = table.get("name").cloned()
    {
        table.insert(Spanned::new(span.clone(), Cow::Borrowed("project")), name);
    }
    let at = kind.span();
    let mut nested = DeTable::new();
    nested.insert(
        Spanned::new(at.clone(), Cow::Borrowed(kind_name)),
        Spanned::new(at.clone(), DeValue::Table(settings)),
    );
    table.insert(key, Spanned::new(at, DeValue::Table(nested)));
    Ok(())
}

impl Config {
    /// Each source: its detectors, its kind's own settings, a name and a project of its own.
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
            if let Err((span, msg)) = source
                .kind
                .get_ref()
                .check(source.kind.span(), &source.project)
            {
                return fail(span, format!("source {}: {msg}", source.name));
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
        }
        Ok(())
    }
}

impl SourceConfig {
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
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::SourceKind;
    use crate::config::testing::{GOOD, error_of, parse};

    #[test]
    fn local_sources_name_their_tables_and_nothing_of_an_upstream() {
        let local = GOOD.replace(
            "kind = \"bigquery\"\nproject = \"test-project\"\nendpoint = \"http://127.0.0.1:19050\"\ncredentials = \"none\"",
            "kind = \"local\"\nproject = \"demo\"\ntables = { \"shop.orders\" = \"data/orders/*.csv\", \"shop.customers\" = \"/srv/c.parquet\" }",
        );
        let c = parse(&local).expect("local config");
        let SourceKind::Local(settings) = c.sources[0].kind.get_ref() else {
            panic!("a local source")
        };
        assert_eq!(
            settings.table_paths(&c),
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

    #[test]
    fn a_key_of_another_kind_is_refused_with_its_line() {
        // GOOD's source block: name (line 14), kind (15), project (16), endpoint (17),
        // credentials (18).
        let local = GOOD.replace("kind = \"bigquery\"", "kind = \"local\"");
        let e = error_of(&local);
        assert!(
            e.starts_with("/etc/qg/querygate.toml, line 17: source analytics: endpoint is for kind = \"bigquery\", not kind = \"local\""),
            "{e}"
        );
        let e = error_of(&GOOD.replace(
            "credentials = \"none\"",
            "credentials = \"none\"\ntables = { \"a.b\" = \"x.csv\" }",
        ));
        assert!(
            e.contains("line 19: source analytics: tables = { ... } is for kind = \"local\", not kind = \"bigquery\""),
            "{e}"
        );
        let local_with = |extra: &str| {
            GOOD.replace(
                "endpoint = \"http://127.0.0.1:19050\"\ncredentials = \"none\"",
                &format!("tables = {{ \"a.b\" = \"x.csv\" }}\n{extra}"),
            )
            .replace("kind = \"bigquery\"", "kind = \"local\"")
        };
        parse(&local_with("")).expect("a local source");
        let e = error_of(&local_with("iam_endpoint = \"http://127.0.0.1:1\""));
        assert!(
            e.contains("line 18") && e.contains("iam_endpoint is for kind = \"bigquery\""),
            "{e}"
        );
        let e = error_of(&local_with(
            "\n[[sources.impersonate]]\nwho = [\"group:x\"]\nservice_account = \"x@p.iam.gserviceaccount.com\"",
        ));
        assert!(
            e.contains("line 19") && e.contains("impersonate is for kind = \"bigquery\""),
            "{e}"
        );
        // A key of no kind names what this kind takes.
        let e = error_of(&GOOD.replace("endpoint =", "endpont ="));
        assert!(
            e.contains("line 17")
                && e.contains("unknown field `endpont`")
                && e.contains("`endpoint`")
                && !e.contains("`tables`"),
            "{e}"
        );
        // Shared keys go with every kind.
        let shared = "max_bytes_billed = \"1 TiB\"\nrecord_results = false\ndetect = [\"email\"]\ndefault = \"allow\"";
        parse(&local_with(shared)).expect("shared keys on a local source");
        parse(&GOOD.replace(
            "credentials = \"none\"",
            &format!("credentials = \"none\"\n{shared}"),
        ))
        .expect("shared keys on a bigquery source");
    }

    #[test]
    fn an_unknown_or_missing_kind_is_refused_with_the_kinds() {
        let e = error_of(&GOOD.replace("kind = \"bigquery\"", "kind = \"mysql\""));
        assert!(
            e.starts_with("/etc/qg/querygate.toml, line 15: source analytics: kind \"mysql\" is not supported; supported kinds: \"bigquery\", \"local\", \"postgres\""),
            "{e}"
        );
        let e = error_of(&GOOD.replace("kind = \"bigquery\"", "kind = 7"));
        assert!(
            e.contains("line 15")
                && e.contains("supported kinds: \"bigquery\", \"local\", \"postgres\""),
            "{e}"
        );
        let e = error_of(&GOOD.replace("kind = \"bigquery\"\n", ""));
        assert!(
            e.contains("has no kind")
                && e.contains("supported kinds: \"bigquery\", \"local\", \"postgres\""),
            "{e}"
        );
    }

    #[test]
    fn every_kind_has_keys_of_its_own() {
        let shared = super::probe::fields::<super::SourceConfig>();
        let kinds = super::probe::variants::<SourceKind>();
        assert_eq!(
            kinds.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            ["bigquery", "local", "postgres"]
        );
        for (i, (kind, keys)) in kinds.iter().enumerate() {
            assert!(!keys.is_empty(), "{kind}");
            for key in *keys {
                assert!(!shared.contains(key), "{kind}: {key} is a shared key");
                for (other, other_keys) in &kinds[i + 1..] {
                    assert!(
                        !other_keys.contains(key),
                        "{key} is both {kind}'s and {other}'s"
                    );
                }
            }
        }
    }

    const POSTGRES: &str = r#"
[[sources]]
name = "app"
kind = "postgres"
url = "postgresql://querygate@127.0.0.1:5432/app"
password_env = "APP_DB_PASSWORD"
"#;

    #[test]
    fn a_postgres_source_is_addressed_by_its_name_and_its_settings_are_checked() {
        let c = parse(&format!("{GOOD}{POSTGRES}")).expect("postgres source");
        let app = &c.sources[1];
        assert_eq!(app.project, "app");
        let SourceKind::Postgres(settings) = app.kind.get_ref() else {
            panic!("kind")
        };
        assert_eq!(
            settings.tls_mode(),
            Some(querygate_postgres::TlsMode::Prefer)
        );
        for (bad, says) in [
            (
                "postgresql://querygate:secret@127.0.0.1/app",
                "password does not belong in url",
            ),
            ("mysql://querygate@127.0.0.1/app", "postgresql://"),
            ("postgresql://127.0.0.1/app", "must name a user"),
        ] {
            let e = error_of(&format!(
                "{GOOD}{}",
                POSTGRES.replace("postgresql://querygate@127.0.0.1:5432/app", bad)
            ));
            assert!(e.contains("line 23") && e.contains(says), "{bad}: {e}");
        }
        let e = error_of(&format!("{GOOD}{POSTGRES}project = \"other\"\n"));
        assert!(e.contains("must be the source's project"), "{e}");
        let e = error_of(&format!("{GOOD}{POSTGRES}tls = \"maybe\"\n"));
        assert!(e.contains("tls must be one of"), "{e}");
        let e = error_of(&format!("{GOOD}{POSTGRES}tls = \"verify-full\"\n"));
        assert!(e.contains("needs ca_file"), "{e}");
        let e = error_of(&format!("{GOOD}{POSTGRES}endpoint = \"http://x\"\n"));
        assert!(e.contains("is for kind = \"bigquery\""), "{e}");
    }
}
