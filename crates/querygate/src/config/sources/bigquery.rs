//! `kind = "bigquery"`: a BigQuery project reached through its REST API, with the
//! gateway's own credential and, optionally, narrower service accounts it impersonates
//! for some identities. These keys are refused on a source of any other kind.
//!
//! ```toml
//! [[sources]]
//! name = "analytics"
//! kind = "bigquery"
//! project = "test-project"
//! endpoint = "http://127.0.0.1:19050"  # default https://bigquery.googleapis.com
//! credentials = "none"                 # or { service_account_key = "sa.json" }
//! iam_endpoint = "…"                   # default https://iamcredentials.googleapis.com
//!
//! [[sources.impersonate]]
//! who = ["group:finance"]
//! service_account = "finance-reader@my-project.iam.gserviceaccount.com"
//! ```

use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::config::Config;

pub const BIGQUERY_ENDPOINT: &str = "https://bigquery.googleapis.com";

/// The settings only a `bigquery` source takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigQuerySettings {
    pub endpoint: Option<Spanned<String>>,
    #[serde(default)]
    pub credentials: Option<Spanned<Credentials>>,
    /// Narrower service accounts the gateway impersonates for some identities, first match wins.
    #[serde(default)]
    pub impersonate: Vec<Spanned<ImpersonateConfig>>,
    /// The IAM Credentials API root (default https://iamcredentials.googleapis.com).
    pub iam_endpoint: Option<String>,
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

impl BigQuerySettings {
    /// An http(s) endpoint, a credential that exists, and impersonation only with a
    /// service-account key to ask for the narrower tokens.
    pub(super) fn check(&self) -> Result<(), (Range<usize>, String)> {
        if let Some(ep) = &self.endpoint {
            let e = ep.get_ref();
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err((
                    ep.span(),
                    format!("endpoint {e:?} must start with http:// or https://"),
                ));
            }
        }
        if let Some(c) = &self.credentials
            && let Credentials::Keyword(k) = c.get_ref()
            && k != "none"
        {
            return Err((
                c.span(),
                format!(
                    "credentials = {k:?}: write \"none\" or {{ service_account_key = \"sa.json\" }}"
                ),
            ));
        }
        let has_key = matches!(
            self.credentials.as_ref().map(Spanned::get_ref),
            Some(Credentials::ServiceAccount { .. })
        );
        for imp in &self.impersonate {
            for w in &imp.get_ref().who {
                querygate_policy::Principal::parse(w)
                    .map_err(|e| (imp.span(), format!("impersonate.who: {e}")))?;
            }
            if !has_key {
                return Err((
                    imp.span(),
                    "impersonate needs credentials = { service_account_key = \"…\" }: the gateway's own service account asks for the narrower tokens".into(),
                ));
            }
        }
        Ok(())
    }

    pub fn endpoint(&self) -> &str {
        self.endpoint
            .as_ref()
            .map_or(BIGQUERY_ENDPOINT, |e| e.get_ref().as_str())
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
