//! Policy as the config writes it: `[[rule]]`s (global and per source), `[budgets]`, a
//! separate `policy = "…"` file of more of both, `[[classify]]` (which columns carry which
//! tag), `[[mask]]` (for whom a tag is masked) and `[masking]` (the `hash` strategy's key).
//!
//! Checked here and turned into the pipeline's [`PolicySet`]; the rules themselves are
//! checked by `querygate-policy` (`RuleSpec::check`). Reloads call [`Config::policies`].

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use querygate_pipeline::PolicySet;
use querygate_policy::{Budget, Policy, RuleSpec, parse_bytes};
use serde::Deserialize;
use toml::Spanned;

use super::{Config, SourceConfig, line_of};

/// A policy file named by `policy = "…"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    rule: Vec<Spanned<RuleSpec>>,
    #[serde(default)]
    budgets: BTreeMap<String, Spanned<Amounts>>,
}

/// One `[budgets]` entry's value: `"25 GiB"`, `"1M rows"`, or a list of both.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a budget like \"25 GiB\" or \"1M rows\", or a list of them"
)]
pub enum Amounts {
    One(String),
    Many(Vec<String>),
}

impl Amounts {
    fn each(&self) -> impl Iterator<Item = &str> {
        match self {
            Amounts::One(a) => std::slice::from_ref(a).iter(),
            Amounts::Many(v) => v.iter(),
        }
        .map(String::as_str)
    }
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

impl Config {
    /// The policy this config describes (rules, budgets, byte caps), checked.
    pub fn policies(&self) -> Result<PolicySet, String> {
        // The config file itself was checked at load; its text is only needed for line numbers.
        self.policies_checked("", Path::new("querygate.toml"))
    }

    pub(super) fn policies_checked(&self, text: &str, path: &Path) -> Result<PolicySet, String> {
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
        let mut add_budgets = |b: &BTreeMap<String, Spanned<Amounts>>, text: &str, file: &Path| {
            for (who, amounts) in b {
                for amount in amounts.get_ref().each() {
                    budgets.push(Budget::parse(who, amount).map_err(|e| {
                        format!("{}{}: {e}", file.display(), line_of(text, &amounts.span()))
                    })?);
                }
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
            if let Some(cap) = &s.max_bytes_billed {
                let bytes = parse_bytes(cap.get_ref())
                    .map_err(|e| fail(cap.span(), format!("max_bytes_billed: {e}")))?;
                set.max_bytes_billed.insert(s.name.clone(), bytes);
            }
        }
        Ok(set)
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
        querygate_store::signing::load_or_create_mask_key(&path)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}
