//! `[[oidc]]` blocks as users write them ([`OidcSpec`]) and their checked form
//! ([`IssuerConfig`]).
//!
//! Checking is strict because a loose issuer block is an open door: an issuer must be
//! https (plain http only on a loopback address, for tests and local IdPs), every block
//! names the audiences its tokens must carry (a token meant for another service must not
//! open this one), and the kind of principal its tokens name is stated, not guessed.
//! No IO here.

use std::collections::BTreeMap;
use std::time::Duration;

use querygate_core::IdentityKind;
use serde::Deserialize;

/// One `[[oidc]]` block, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcSpec {
    /// The issuer URL, exactly as the IdP writes it in `iss`.
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Claim holding the subject recorded in the audit log (dotted path); default `sub`.
    pub subject_claim: Option<String>,
    /// Prepended to the subject, e.g. `"github:"`, so subjects of different issuers cannot collide.
    pub subject_prefix: Option<String>,
    /// Claim holding the groups (dotted path, e.g. `realm_access.roles`).
    pub groups_claim: Option<String>,
    /// Groups every identity from this issuer has, besides those in the token.
    #[serde(default)]
    pub groups: Vec<String>,
    /// The kind of principal this issuer's tokens name.
    pub kind: Option<IdentityKind>,
    /// Claim holding the kind (`human`/`agent`/`service`); `kind` is the fallback.
    pub kind_claim: Option<String>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`, e.g. `"60s"` (default 60 s, at most 5 min).
    pub leeway: Option<String>,
    /// Claims a token must carry with one of the listed values, e.g.
    /// `{ repository_owner = "acme" }` (a shared issuer such as GitHub Actions signs
    /// tokens for everyone: pin yours).
    #[serde(default)]
    pub required_claims: BTreeMap<String, OneOrMany>,
    /// The JWKS URL, when the IdP has no discovery document.
    pub jwks_uri: Option<String>,
    /// How old the cached keys may get before they are refreshed in the background (default `"1h"`).
    pub jwks_refresh: Option<String>,
    /// Least time between two fetches forced by an unknown `kid` or a failure (default `"30s"`).
    pub jwks_min_interval: Option<String>,
}

/// A string or a list of strings.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(v) => vec![v.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A checked issuer block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub subject_claim: String,
    pub subject_prefix: String,
    pub groups_claim: Option<String>,
    pub groups: Vec<String>,
    pub kind: Option<IdentityKind>,
    pub kind_claim: Option<String>,
    pub leeway: Duration,
    pub required_claims: Vec<(String, Vec<String>)>,
    pub jwks_uri: Option<String>,
    pub jwks_refresh: Duration,
    pub jwks_min_interval: Duration,
}

const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// Why an `[[oidc]]` block is not an issuer: the issuer as written and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("oidc issuer {issuer:?}: {problem}")]
pub struct OidcError {
    pub issuer: String,
    pub problem: OidcProblem,
}

/// What is wrong with an `[[oidc]]` block, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OidcProblem {
    #[error("issuer: {0}")]
    Issuer(UrlError),
    #[error(
        "audiences = [\"…\"] is required: the `aud` values tokens for this gateway carry \
         (without it, a token the IdP minted for any other service would be accepted)"
    )]
    NoAudiences,
    #[error(
        "say what kind of principal this issuer's tokens name: kind = \"human\", \
         \"agent\" or \"service\", or kind_claim = \"<claim>\" (with kind as the fallback)"
    )]
    NoKind,
    /// A claim path (`subject_claim`, `groups_claim`, `kind_claim`) with an empty part.
    #[error("{field} = {path:?} must be a claim name or a dotted path like \"realm_access.roles\"")]
    ClaimPath { field: &'static str, path: String },
    /// `leeway`, `jwks_refresh` or `jwks_min_interval` is not a duration.
    #[error("{field}: {error}")]
    Duration {
        field: &'static str,
        error: DurationError,
    },
    /// The leeway as written.
    #[error("leeway = {0:?} is more than 5 minutes: fix the clocks instead")]
    LeewayTooLong(String),
    #[error("jwks_uri: {0}")]
    JwksUri(UrlError),
    /// A required claim with no accepted values (the claim's name).
    #[error("required_claims.{0} lists no values: name the accepted ones")]
    NoClaimValues(String),
}

/// Why a URL is not an issuer's or a key set's URL (the URL as written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{text:?} is not a URL ({reason})")]
    NotAUrl { text: String, reason: String },
    #[error("{0:?} must not have a query or fragment")]
    QueryOrFragment(String),
    #[error("{0:?} must be https (plain http is accepted only on loopback addresses)")]
    PlainHttp(String),
    #[error("{text:?}: scheme {scheme} is not https")]
    Scheme { text: String, scheme: String },
}

/// A duration that is not one of `"90s"`, `"5m"`, `"1h"`, `"30d"`, `"2w"` or seconds (as
/// written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a duration like \"30s\", \"5m\", \"1h\" or \"30d\"")]
pub struct DurationError {
    pub text: String,
}

impl OidcSpec {
    /// Checks a written block. Errors name the issuer and the field.
    pub fn check(&self) -> Result<IssuerConfig, OidcError> {
        let ctx = |problem: OidcProblem| OidcError {
            issuer: self.issuer.clone(),
            problem,
        };
        check_url(&self.issuer).map_err(|e| ctx(OidcProblem::Issuer(e)))?;
        if self.audiences.iter().all(|a| a.trim().is_empty()) {
            return Err(ctx(OidcProblem::NoAudiences));
        }
        if self.kind.is_none() && self.kind_claim.is_none() {
            return Err(ctx(OidcProblem::NoKind));
        }
        let path = |field: &'static str, p: &Option<String>| -> Result<(), OidcError> {
            match p {
                Some(p) if p.split('.').any(str::is_empty) => Err(ctx(OidcProblem::ClaimPath {
                    field,
                    path: p.clone(),
                })),
                _ => Ok(()),
            }
        };
        path("subject_claim", &self.subject_claim)?;
        path("groups_claim", &self.groups_claim)?;
        path("kind_claim", &self.kind_claim)?;
        let leeway = self
            .leeway
            .as_deref()
            .map(parse_duration)
            .transpose()
            .map_err(|error| {
                ctx(OidcProblem::Duration {
                    field: "leeway",
                    error,
                })
            })?
            .unwrap_or(Duration::from_secs(60));
        if leeway > MAX_LEEWAY {
            return Err(ctx(OidcProblem::LeewayTooLong(
                self.leeway.clone().unwrap_or_default(),
            )));
        }
        if let Some(uri) = &self.jwks_uri {
            check_url(uri).map_err(|e| ctx(OidcProblem::JwksUri(e)))?;
        }
        let duration = |field: &'static str, v: &Option<String>, default: u64| {
            v.as_deref()
                .map(parse_duration)
                .transpose()
                .map_err(|error| ctx(OidcProblem::Duration { field, error }))
                .map(|d| d.unwrap_or(Duration::from_secs(default)))
        };
        let mut required_claims = Vec::new();
        for (claim, values) in &self.required_claims {
            let values = values.values();
            if values.is_empty() {
                return Err(ctx(OidcProblem::NoClaimValues(claim.clone())));
            }
            required_claims.push((claim.clone(), values));
        }
        Ok(IssuerConfig {
            issuer: self.issuer.clone(),
            audiences: self
                .audiences
                .iter()
                .filter(|a| !a.trim().is_empty())
                .cloned()
                .collect(),
            subject_claim: self.subject_claim.clone().unwrap_or_else(|| "sub".into()),
            subject_prefix: self.subject_prefix.clone().unwrap_or_default(),
            groups_claim: self.groups_claim.clone(),
            groups: self.groups.clone(),
            kind: self.kind,
            kind_claim: self.kind_claim.clone(),
            leeway,
            required_claims,
            jwks_uri: self.jwks_uri.clone(),
            jwks_refresh: duration("jwks_refresh", &self.jwks_refresh, 3600)?,
            jwks_min_interval: duration("jwks_min_interval", &self.jwks_min_interval, 30)?,
        })
    }
}

/// An https URL, or http on a loopback address (127.0.0.0/8, ::1, localhost).
pub fn check_url(text: &str) -> Result<(), UrlError> {
    let url = reqwest::Url::parse(text).map_err(|e| UrlError::NotAUrl {
        text: text.to_string(),
        reason: e.to_string(),
    })?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(UrlError::QueryOrFragment(text.to_string()));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&url) => Ok(()),
        "http" => Err(UrlError::PlainHttp(text.to_string())),
        other => Err(UrlError::Scheme {
            text: text.to_string(),
            scheme: other.to_string(),
        }),
    }
}

pub(crate) fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        None => false,
    }
}

/// `"90s"`, `"5m"`, `"1h"`, `"30d"`, `"2w"`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let t = text.trim();
    let bad = || DurationError {
        text: text.to_string(),
    };
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => return Err(bad()),
    };
    n.checked_mul(secs).map(Duration::from_secs).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> Result<IssuerConfig, String> {
        let text = format!("issuer = \"https://idp.example.com\"\n{extra}\n");
        toml_spec(&text).check().map_err(|e| e.to_string())
    }

    fn toml_spec(text: &str) -> OidcSpec {
        toml::from_str(text).expect("spec")
    }

    #[test]
    fn a_complete_block_checks() {
        let c = spec("audiences = [\"querygate\"]\nkind = \"human\"\ngroups_claim = \"realm_access.roles\"\nleeway = \"30s\"")
            .expect("ok");
        assert_eq!(c.subject_claim, "sub");
        assert_eq!(c.leeway, Duration::from_secs(30));
        assert_eq!(c.jwks_min_interval, Duration::from_secs(30));
        assert_eq!(c.groups_claim.as_deref(), Some("realm_access.roles"));
    }

    #[test]
    fn loose_blocks_are_refused_with_reasons() {
        let e = spec("kind = \"human\"").expect_err("no audience");
        assert!(e.contains("audiences"), "{e}");
        let e = spec("audiences = [\"q\"]").expect_err("no kind");
        assert!(e.contains("kind"), "{e}");
        let e = spec("audiences = [\"q\"]\nkind = \"agent\"\nleeway = \"1h\"").expect_err("leeway");
        assert!(e.contains("5 minutes"), "{e}");
        let e = spec("audiences = [\"q\"]\nkind = \"agent\"\ngroups_claim = \"a..b\"")
            .expect_err("path");
        assert!(e.contains("dotted path"), "{e}");
    }

    #[test]
    fn issuers_are_https_except_on_loopback() {
        assert!(check_url("https://idp.example.com").is_ok());
        assert!(check_url("http://127.0.0.1:8080").is_ok());
        assert!(check_url("http://127.5.5.5").is_ok());
        assert!(check_url("http://[::1]:9000/realms/x").is_ok());
        assert!(check_url("http://localhost:9000").is_ok());
        let e = check_url("http://idp.example.com")
            .expect_err("plain http")
            .to_string();
        assert!(e.contains("https"), "{e}");
        assert!(check_url("http://127.0.0.1.evil.example").is_err());
        assert!(check_url("http://10.0.0.1").is_err());
        assert!(check_url("ftp://idp.example.com").is_err());
        assert!(check_url("idp.example.com").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-5s").is_err());
    }
}
