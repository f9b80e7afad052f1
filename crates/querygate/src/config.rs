//! `querygate.toml`: the format users write, parsed and checked before anything starts.
//!
//! Every error names the file and, where it can, the line. Relative paths in the file
//! are relative to the file's own directory. This module builds no runtime objects;
//! `serve` turns a checked [`Config`] into them.
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
//!
//! Session recording (on unless turned off; read at start, like the above):
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

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use querygate_core::{Identity, IdentityKind, Secret};
use querygate_identity::{IssuerConfig, OidcSpec, parse_duration};
use querygate_pipeline::PolicySet;
use querygate_policy::{Budget, Policy, RuleSpec, parse_bytes};
use serde::Deserialize;
use toml::Spanned;

pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

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
    /// Daily bytes per identity, by `group:NAME` or `identity:SUBJECT`.
    #[serde(default)]
    pub budgets: BTreeMap<String, Spanned<String>>,
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
    /// The directory of the config file; relative paths resolve against it.
    #[serde(skip)]
    pub base: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the BigQuery REST front, e.g. `127.0.0.1:9050`.
    pub bigquery_listen: Spanned<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address (agents send bearer tokens: think twice).
    #[serde(default)]
    pub insecure_plaintext: bool,
    pub max_body_bytes: Option<usize>,
    /// Address of the admin API (approvals), e.g. `127.0.0.1:8080`; none when absent.
    pub admin_listen: Option<Spanned<String>>,
}

/// `[approvals]`: durations as written (`"1h"`), checked at load.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsConfig {
    /// A pending ticket expires after this (default 1h).
    pub ticket_ttl: Option<Spanned<String>>,
    /// The longest window grant an approver may give (default 8h).
    pub max_window: Option<Spanned<String>>,
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

/// `[notify]`: the webhook told of new tickets and the base of the links it gets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyConfig {
    /// A Slack-compatible incoming webhook. Secret: it usually carries a token.
    pub webhook: Option<Spanned<Webhook>>,
    /// Base of ticket links, e.g. `https://querygate.example.com:8080`.
    pub console_url: Option<Spanned<String>>,
}

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

/// `[[classify]]`: these columns (`project.dataset.table.column` globs) carry `tag`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyConfig {
    pub tag: String,
    pub columns: Vec<String>,
}

/// `[[mask]]`: columns tagged `tag` are masked for everyone but `unmasked_for`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskConfig {
    pub tag: String,
    /// redact (default) | null | hash | last4 | email_domain.
    pub strategy: Option<String>,
    #[serde(default)]
    pub unmasked_for: Vec<String>,
    /// "deny" (default) or "allow": may a masked column be used in WHERE, JOIN, GROUP BY,
    /// ORDER BY or windows?
    pub predicates: Option<String>,
}

/// `[masking]`: the key of the `hash` strategy.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// A file holding the key as hex (at least 128 bits), readable by the gateway only.
    /// Default: `<store path>.maskkey`, created with 256 random bits at first start. Give
    /// every gateway of a deployment the same file so that hashes stay joinable.
    pub hash_key_file: Option<PathBuf>,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// "full" (default): every commit is fsynced, records survive power loss.
    /// "normal": fsync at checkpoints only; records survive a querygate crash, not a machine crash.
    #[serde(default)]
    pub synchronous: Synchronous,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    pub identity: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub key_sha256: Spanned<String>,
    pub kind: Option<IdentityKind>,
    /// When the key stops working: an RFC 3339 time, e.g. "2027-01-31T00:00:00Z".
    pub expires: Option<Spanned<String>>,
}

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

/// A policy file named by `policy = "…"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
    #[serde(default)]
    budgets: BTreeMap<String, Spanned<String>>,
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
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read the config file: {e}", path.display()))?;
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, String> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| line_of(text, &s)).unwrap_or_default();
            format!("{}{at}: {}", path.display(), e.message())
        })?;
        config.base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        config.check(text, path)?;
        config.policies_checked(text, path)?;
        Ok(config)
    }

    /// The policy this config describes (rules, budgets, byte caps), checked.
    pub fn policies(&self) -> Result<PolicySet, String> {
        // The config file itself was checked at load; its text is only needed for line numbers.
        self.policies_checked("", Path::new("querygate.toml"))
    }

    fn policies_checked(&self, text: &str, path: &Path) -> Result<PolicySet, String> {
        let checked = |rules: &[Spanned<RuleSpec>], text: &str, file: &Path| {
            rules
                .iter()
                .map(|r| {
                    r.get_ref()
                        .check()
                        .map_err(|e| format!("{}{}: {e}", file.display(), line_of(text, &r.span())))
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let mut global = checked(&self.rule, text, path)?;
        let mut budgets = Vec::new();
        let mut add_budgets = |b: &BTreeMap<String, Spanned<String>>, text: &str, file: &Path| {
            for (who, size) in b {
                budgets.push(Budget::parse(who, size.get_ref()).map_err(|e| {
                    format!("{}{}: {e}", file.display(), line_of(text, &size.span()))
                })?);
            }
            Ok::<(), String>(())
        };
        add_budgets(&self.budgets, text, path)?;
        if let Some(file) = &self.policy {
            let file = self.resolve(file);
            let ptext = std::fs::read_to_string(&file)
                .map_err(|e| format!("{}: cannot read the policy file: {e}", file.display()))?;
            let pf: PolicyFile = toml::from_str(&ptext).map_err(|e| {
                let at = e.span().map(|s| line_of(&ptext, &s)).unwrap_or_default();
                format!("{}{at}: {}", file.display(), e.message())
            })?;
            global.extend(checked(&pf.rule, &ptext, &file)?);
            add_budgets(&pf.budgets, &ptext, &file)?;
        }
        let any_rules = !global.is_empty() || self.sources.iter().any(|s| !s.rule.is_empty());
        let mut set = PolicySet {
            budgets,
            classifier: Arc::new(self.classifier(text, path)?),
            ..PolicySet::default()
        };
        for s in &self.sources {
            let fail = |span: Range<usize>, msg: String| {
                format!(
                    "{}{}: source {}: {msg}",
                    path.display(),
                    line_of(text, &span),
                    s.name
                )
            };
            let mut rules = checked(&s.rule, text, path)?;
            rules.extend(global.iter().cloned());
            match s.default.as_ref().map(|d| (d.get_ref().as_str(), d.span())) {
                None | Some(("deny", _)) => {}
                Some(("allow", _)) => rules.push(querygate_policy::Rule {
                    name: format!("source {} default: allow", s.name),
                    who: vec![],
                    on_behalf_of: vec![],
                    tables: vec![],
                    statements: vec![],
                    when: querygate_policy::When {
                        opaque: None,
                        ..Default::default()
                    },
                    action: querygate_policy::RuleAction::Allow,
                    message: None,
                    approvers: vec![],
                    max_bytes_billed: None,
                    on_approval: querygate_policy::OnApproval::Wait,
                }),
                Some((other, span)) => {
                    return Err(fail(
                        span,
                        format!("default = {other:?} must be \"allow\" or \"deny\""),
                    ));
                }
            }
            let policy = if !any_rules && s.default.is_none() {
                Policy::builtin_read_only()
            } else {
                Policy::new(rules)
            };
            set.sources.insert(s.name.clone(), Arc::new(policy));
            for imp in &s.impersonate {
                for w in &imp.get_ref().who {
                    querygate_policy::Principal::parse(w)
                        .map_err(|e| fail(imp.span(), format!("impersonate.who: {e}")))?;
                }
                if !matches!(s.credential(self), UpstreamCredential::ServiceAccountKey(_)) {
                    return Err(fail(
                        imp.span(),
                        "impersonate needs credentials = { service_account_key = \"…\" }: the gateway's own service account asks for the narrower tokens".into(),
                    ));
                }
            }
            if let Some(cap) = &s.max_bytes_billed {
                let bytes = parse_bytes(cap.get_ref())
                    .map_err(|e| fail(cap.span(), format!("max_bytes_billed: {e}")))?;
                set.max_bytes_billed.insert(s.name.clone(), bytes);
            }
        }
        Ok(set)
    }

    fn check(&self, text: &str, path: &Path) -> Result<(), String> {
        let fail = |span: Range<usize>, msg: String| {
            Err(format!("{}{}: {msg}", path.display(), line_of(text, &span)))
        };
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(format!(
                    "{}: [server] needs both tls_cert and tls_key, or neither",
                    path.display()
                ));
            }
            _ => {}
        }
        for s in &self.sources {
            if let Err((span, msg)) = s.scrubber_checked(Vec::new()) {
                return fail(span, format!("source {}: {msg}", s.name));
            }
        }
        let data =
            self.check_listen("bigquery_listen", &self.server.bigquery_listen, text, path)?;
        if let Some(admin) = &self.server.admin_listen {
            let addr = self.check_listen("admin_listen", admin, text, path)?;
            if addr == data {
                return fail(
                    admin.span(),
                    format!(
                        "server.admin_listen = {addr} is the address of bigquery_listen: give the \
                         admin API its own port"
                    ),
                );
            }
        }
        self.check_approvals(text, path)?;
        self.check_notify(text, path)?;
        self.check_audit(text, path)?;
        self.check_recording(text, path)?;
        let mut hashes = HashSet::new();
        for key in &self.api_keys {
            let h = key.key_sha256.get_ref();
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return fail(
                    key.key_sha256.span(),
                    format!(
                        "key_sha256 of {} must be the 64-hex-digit SHA-256 of the key \
                         (`querygate keys new` prints it); never put the key itself here",
                        key.identity
                    ),
                );
            }
            if !hashes.insert(h.to_ascii_lowercase()) {
                return fail(
                    key.key_sha256.span(),
                    "the same key_sha256 appears twice".into(),
                );
            }
            if key.identity.trim().is_empty() {
                return fail(key.key_sha256.span(), "identity must not be empty".into());
            }
            if key.kind.is_none() && Identity::kind_of_prefix(&key.identity).is_none() {
                return fail(
                    key.key_sha256.span(),
                    format!(
                        "say what kind of principal {} is: kind = \"human\", \"agent\" or \
                         \"service\" (or start the identity with a prefix that says it: \
                         human:/user:/person:, agent:/ai:/bot:, service:/svc:/ci:/workload:)",
                        key.identity
                    ),
                );
            }
            if let Some(e) = &key.expires
                && let Err(msg) = parse_time(e.get_ref())
            {
                return fail(
                    e.span(),
                    format!("api key of {}: expires: {msg}", key.identity),
                );
            }
        }
        let mut issuers = HashSet::new();
        for o in &self.oidc {
            if let Err(msg) = o.get_ref().check() {
                return fail(o.span(), msg);
            }
            if !issuers.insert(o.get_ref().issuer.as_str()) {
                return fail(
                    o.span(),
                    format!("two [[oidc]] blocks name issuer {:?}", o.get_ref().issuer),
                );
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

    /// A listen address: parsed, and plaintext only on loopback or by consent.
    fn check_listen(
        &self,
        key: &str,
        listen: &Spanned<String>,
        text: &str,
        path: &Path,
    ) -> Result<SocketAddr, String> {
        let fail =
            |msg: String| format!("{}{}: {msg}", path.display(), line_of(text, &listen.span()));
        let addr: SocketAddr = listen.get_ref().parse().map_err(|_| {
            fail(format!(
                "server.{key} = {:?} is not an address like \"127.0.0.1:9050\"",
                listen.get_ref()
            ))
        })?;
        let tls = self.server.tls_cert.is_some();
        if !tls && !addr.ip().is_loopback() && !self.server.insecure_plaintext {
            return Err(fail(format!(
                "server.{key} = {addr} is not a loopback address, and clients send \
                 bearer tokens: set tls_cert and tls_key, or insecure_plaintext = true if \
                 TLS ends in front of querygate"
            )));
        }
        Ok(addr)
    }

    fn check_approvals(&self, text: &str, path: &Path) -> Result<(), String> {
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
        Ok(())
    }

    fn check_audit(&self, text: &str, path: &Path) -> Result<(), String> {
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

    /// `[[classify]]` and `[[mask]]`, checked: globs of four parts, known strategies,
    /// principals that parse, masks of tags some classification uses.
    fn classifier(&self, text: &str, path: &Path) -> Result<querygate_policy::Classifier, String> {
        let fail = |span: Range<usize>, msg: String| {
            format!("{}{}: {msg}", path.display(), line_of(text, &span))
        };
        let mut classes = Vec::new();
        for c in &self.classify {
            let spec = c.get_ref();
            if spec.tag.trim().is_empty() || spec.columns.is_empty() {
                return Err(fail(
                    c.span(),
                    "[[classify]] needs a tag and columns".into(),
                ));
            }
            for g in &spec.columns {
                if g.split('.').count() != 4 || g.split('.').any(str::is_empty) {
                    return Err(fail(
                        c.span(),
                        format!(
                            "[[classify]] column {g:?} must be project.dataset.table.column \
                             (globs allowed, e.g. \"*.crm.customers.email\")"
                        ),
                    ));
                }
            }
            classes.push(querygate_policy::Classification {
                tag: spec.tag.clone(),
                columns: spec.columns.clone(),
            });
        }
        let mut masks = Vec::new();
        for m in &self.mask {
            let spec = m.get_ref();
            if !classes.iter().any(|c| c.tag == spec.tag) {
                return Err(fail(
                    m.span(),
                    format!(
                        "[[mask]] tag {:?} is not used by any [[classify]]",
                        spec.tag
                    ),
                ));
            }
            let strategy = spec.strategy.clone().unwrap_or_else(|| "redact".into());
            querygate_mask::Strategy::parse(&strategy)
                .map_err(|e| fail(m.span(), format!("[[mask]] strategy: {e}")))?;
            let unmasked_for = spec
                .unmasked_for
                .iter()
                .map(|p| querygate_policy::Principal::parse(p))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(m.span(), format!("[[mask]] unmasked_for: {e}")))?;
            let predicates_allowed = match spec.predicates.as_deref() {
                None | Some("deny") => false,
                Some("allow") => true,
                Some(other) => {
                    return Err(fail(
                        m.span(),
                        format!("[[mask]] predicates = {other:?} must be \"deny\" or \"allow\""),
                    ));
                }
            };
            masks.push(querygate_policy::MaskRule {
                tag: spec.tag.clone(),
                strategy,
                unmasked_for,
                predicates_allowed,
            });
        }
        Ok(querygate_policy::Classifier { classes, masks })
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
        let signer = querygate_store::signing::Signer::load_or_create(&self.signing_key_path())?;
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

    fn check_notify(&self, text: &str, path: &Path) -> Result<(), String> {
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

    fn check_recording(&self, text: &str, path: &Path) -> Result<(), String> {
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

    /// `[approvals]` as the pipeline takes it (checked at load; defaults where unset).
    pub fn approval_settings(&self) -> querygate_pipeline::ApprovalSettings {
        let defaults = querygate_pipeline::ApprovalSettings::default();
        querygate_pipeline::ApprovalSettings {
            ticket_ttl: duration_of(&self.approvals.ticket_ttl).unwrap_or(defaults.ticket_ttl),
            max_window: duration_of(&self.approvals.max_window).unwrap_or(defaults.max_window),
        }
    }

    /// The admin API's address, if configured (checked at load).
    pub fn admin_listen(&self) -> Option<SocketAddr> {
        self.server
            .admin_listen
            .as_ref()
            .and_then(|a| a.get_ref().parse().ok())
    }

    /// The admin API as clients on this machine reach it: `http(s)://ADDR`, with an
    /// unspecified address (`0.0.0.0`, `[::]`) replaced by loopback.
    pub fn admin_url(&self) -> Option<String> {
        let mut addr = self.admin_listen()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let scheme = if self.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        Some(format!("{scheme}://{addr}"))
    }

    /// The base of ticket links: `console_url`, else the admin API's own URL.
    pub fn console_url(&self) -> Option<String> {
        self.notify
            .console_url
            .as_ref()
            .map(|c| c.get_ref().trim_end_matches('/').to_string())
            .or_else(|| self.admin_url())
    }

    /// The checked `[[oidc]]` blocks (checked at load, so this cannot fail afterwards).
    pub fn issuers(&self) -> Result<Vec<IssuerConfig>, String> {
        self.oidc.iter().map(|o| o.get_ref().check()).collect()
    }

    /// The masking key, when some `[[mask]]` or `detect_strategy` uses the `hash` strategy
    /// (loaded, or created at its default path).
    pub fn mask_key(&self) -> Result<Option<querygate_core::Secret>, String> {
        let hashes = self
            .mask
            .iter()
            .any(|m| m.get_ref().strategy.as_deref() == Some("hash"))
            || self.sources.iter().any(SourceConfig::hashes_detections);
        if !hashes {
            return Ok(None);
        }
        let path = match &self.masking.hash_key_file {
            Some(p) => self.resolve(p),
            None => {
                let mut p = self.store_path().into_os_string();
                p.push(".maskkey");
                PathBuf::from(p)
            }
        };
        querygate_store::signing::load_or_create_mask_key(&path).map(Some)
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.resolve(&self.store.path)
    }

    pub fn listen(&self) -> SocketAddr {
        // Checked in `check`.
        self.server
            .bigquery_listen
            .get_ref()
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9050)))
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

/// Unix seconds of an RFC 3339 time (`2027-01-31T00:00:00Z`) or a date (`2027-01-31`, UTC midnight).
/// A duration setting checked at load (`None` when unset).
fn duration_of(v: &Option<Spanned<String>>) -> Option<std::time::Duration> {
    v.as_ref().and_then(|v| parse_duration(v.get_ref()).ok())
}

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

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
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

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/qg/querygate.toml"))
    }

    #[test]
    fn the_documented_format_parses() {
        let c = parse(GOOD).expect("good config");
        assert_eq!(c.listen().port(), 9050);
        assert_eq!(c.store_path(), PathBuf::from("/etc/qg/querygate.db"));
        assert_eq!(c.sources[0].endpoint(), "http://127.0.0.1:19050");
        assert_eq!(c.sources[0].credential(&c), UpstreamCredential::None);
        let sa = GOOD.replace(
            "credentials = \"none\"",
            "credentials = { service_account_key = \"sa.json\" }",
        );
        let c = parse(&sa).expect("sa config");
        assert_eq!(
            c.sources[0].credential(&c),
            UpstreamCredential::ServiceAccountKey("/etc/qg/sa.json".into())
        );
    }

    fn error_of(text: &str) -> String {
        parse(text).expect_err("bad config must fail")
    }

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
    fn an_api_key_says_what_kind_of_principal_it_is() {
        // `person:` names a human; a prefix querygate does not know needs `kind`.
        let person = parse(&GOOD.replace("agent:claude-code", "person:olga")).expect("person");
        assert_eq!(
            Identity::kind_of_prefix(&person.api_keys[0].identity),
            Some(IdentityKind::Human)
        );
        let e = error_of(&GOOD.replace("agent:claude-code", "staff:olga"));
        assert!(
            e.contains("line 11") && e.contains("kind = \"human\"") && e.contains("staff:olga"),
            "{e}"
        );
        let stated = parse(&GOOD.replace(
            "identity = \"agent:claude-code\"",
            "identity = \"staff:olga\"\nkind = \"human\"",
        ))
        .expect("stated kind");
        assert_eq!(stated.api_keys[0].kind, Some(IdentityKind::Human));
    }

    #[test]
    fn oidc_blocks_are_checked_with_their_line() {
        let with = |block: &str| format!("{GOOD}\n[[oidc]]\n{block}\n");
        let ok = parse(&with(
            "issuer = \"https://idp.example.com\"\naudiences = [\"querygate\"]\nkind = \"human\"\ngroups_claim = \"groups\"",
        ))
        .expect("oidc");
        assert_eq!(
            ok.issuers().expect("issuers")[0].issuer,
            "https://idp.example.com"
        );
        let e = error_of(&with(
            "issuer = \"http://idp.example.com\"\naudiences = [\"q\"]\nkind = \"agent\"",
        ));
        assert!(e.contains("line 20") && e.contains("https"), "{e}");
        let e = error_of(&with(
            "issuer = \"https://idp.example.com\"\nkind = \"agent\"",
        ));
        assert!(e.contains("audiences"), "{e}");
        let e = error_of(&with(
            "issuer = \"https://idp.example.com\"\naudiences = [\"q\"]\nkind = \"robot\"",
        ));
        assert!(e.contains("line 23") && e.contains("robot"), "{e}");
        let e = error_of(&with(
            "issuer = \"https://idp.example.com\"\naudiences = [\"q\"]\nkind = \"agent\"\ngroup_claim = \"g\"",
        ));
        assert!(e.contains("group_claim"), "{e}");
    }

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

    #[test]
    fn plaintext_off_loopback_needs_consent() {
        let open = GOOD.replace("127.0.0.1:9050", "0.0.0.0:9050");
        let e = error_of(&open);
        assert!(
            e.contains("line 3") && e.contains("insecure_plaintext"),
            "{e}"
        );
        let consented = open.replace("[store]", "insecure_plaintext = true\n\n[store]");
        parse(&consented).expect("explicit plaintext");
        let tls = open.replace(
            "[store]",
            "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\n[store]",
        );
        parse(&tls).expect("tls");
    }
}
