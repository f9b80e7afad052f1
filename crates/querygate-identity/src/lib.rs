//! The authenticate stage: a presented credential to an [`Identity`].
//!
//! Credentials, in the order they are tried:
//! - API keys from the config, by SHA-256 (the config never holds a key);
//! - OIDC tokens (JWTs) from the issuers of `[[oidc]]` blocks: the token's `iss` picks the
//!   block, the signature is checked against that issuer's published keys (see [`jwks`]),
//!   and the claims strictly (see [`jwt`]). Groups come from the token on every request;
//!   nothing about an identity is cached, so a person removed from a group in the IdP
//!   loses access when their token expires;
//! - API keys kept in the store (`querygate keys new --store`), looked up by hash on each
//!   request, so revocation and expiry take effect without a restart.
//!
//! An agent acting for a person: a token's `act` claim (RFC 8693 token exchange) makes
//! the actor the identity and the token's subject the one acted for; a delegation token
//! beside the credential (the `x-querygate-on-behalf-of` header) is verified like any
//! OIDC token and names the one acted for.
//!
//! Must not: log, print or return a credential or any part of one (credentials travel as
//! [`Secret`]; messages name issuers, key ids and times, never token text).

pub mod config;
pub mod jwks;
pub mod jwt;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use querygate_core::{Audience, Denial, DenialKind, Identity, Secret};
use querygate_store::Store;

pub use config::{
    DurationError, IssuerConfig, OidcError, OidcProblem, OidcSpec, UrlError, parse_duration,
};
pub use jwks::{FetchError, HttpClientError, JwksError, KeyCache};
pub use jwt::{Issuer, MAX_TOKEN_BYTES, looks_like_jwt};

/// One configured API key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub identity: Identity,
    /// Lower-case hex SHA-256 of the key.
    pub key_sha256: String,
    /// Unix seconds after which the key is refused, if it expires.
    pub expires: Option<i64>,
}

/// The key caches of issuers, kept across reloads so a reload does not refetch every JWKS.
#[derive(Debug, Default, Clone)]
pub struct KeyCaches(Arc<Mutex<HashMap<CacheKey, Arc<KeyCache>>>>);

/// An IdP's keys are identified by its issuer and the configured `jwks_uri`, if any.
type CacheKey = (String, Option<String>);

impl KeyCaches {
    /// The issuer for a checked block, reusing the cached keys of the same IdP.
    pub fn issuer(&self, config: IssuerConfig) -> Result<Issuer, HttpClientError> {
        let key = (config.issuer.clone(), config.jwks_uri.clone());
        let mut caches = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let keys = match caches.get(&key) {
            Some(k) => k.clone(),
            None => {
                let k = Arc::new(KeyCache::new(&config)?);
                caches.insert(key, k.clone());
                k
            }
        };
        Ok(Issuer { config, keys })
    }
}

/// Maps credentials to identities.
#[derive(Debug, Default)]
pub struct Authenticator {
    by_hash: HashMap<String, ApiKey>,
    store: Option<Arc<Store>>,
    issuers: HashMap<String, Issuer>,
}

const INVALID: &str = "Request had invalid authentication credentials: ";

fn denied(message: impl AsRef<str>) -> Denial {
    Denial::new(
        DenialKind::Unauthenticated,
        format!("{INVALID}{}", message.as_ref()),
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
}

impl Authenticator {
    /// An authenticator for API keys from the config.
    pub fn new(keys: impl IntoIterator<Item = ApiKey>) -> Authenticator {
        Authenticator {
            by_hash: keys
                .into_iter()
                .map(|k| (k.key_sha256.to_ascii_lowercase(), k))
                .collect(),
            ..Authenticator::default()
        }
    }

    /// Also accepts the API keys kept in `store`.
    pub fn with_store(mut self, store: Arc<Store>) -> Authenticator {
        self.store = Some(store);
        self
    }

    /// Also accepts OIDC tokens from these issuers.
    pub fn with_issuers(mut self, issuers: impl IntoIterator<Item = Issuer>) -> Authenticator {
        self.issuers = issuers
            .into_iter()
            .map(|i| (i.config.issuer.clone(), i))
            .collect();
        self
    }

    /// Starts fetching every issuer's keys in the background. Needs a Tokio runtime.
    pub fn warm_up(&self) {
        for issuer in self.issuers.values() {
            issuer.keys.warm_up();
        }
    }

    /// Who presented `credential`, and whom they act for (`act` claim or `delegation`).
    /// With `audience`, a token is accepted only from its issuers and for its resource.
    pub async fn authenticate(
        &self,
        credential: Option<&Secret>,
        delegation: Option<&Secret>,
        audience: Option<&Audience>,
    ) -> Result<Identity, Denial> {
        let Some(credential) = credential else {
            return Err(Denial::new(
                DenialKind::Unauthenticated,
                "Request had no credential: send your querygate API key or your identity \
                 provider's token as the bearer token (Authorization: Bearer <token>)",
            ));
        };
        let mut identity = self.identify(credential, audience).await?;
        if let Some(delegation) = delegation {
            let what = "the delegation token (x-querygate-on-behalf-of)";
            if let Some(p) = &identity.acting_for {
                return Err(denied(format!(
                    "the bearer token already acts for {} (act claim); do not also send {what}",
                    p.subject
                )));
            }
            let token = delegation.expose();
            if !looks_like_jwt(token) || token.len() > MAX_TOKEN_BYTES {
                return Err(denied(format!(
                    "{what} must be an OIDC token (JWT) of the person the agent acts for, at most {MAX_TOKEN_BYTES} bytes"
                )));
            }
            let person = self
                .oidc(token, None)
                .await
                .map_err(|e| denied(format!("{what}: {e}")))?;
            if person.acting_for.is_some() {
                return Err(denied(format!(
                    "{what} must be the person's own token, not one that acts for someone (act claim)"
                )));
            }
            identity.acting_for = Some(Box::new(person));
        }
        Ok(identity)
    }

    async fn identify(
        &self,
        credential: &Secret,
        audience: Option<&Audience>,
    ) -> Result<Identity, Denial> {
        let token = credential.expose();
        if token.len() > MAX_TOKEN_BYTES {
            return Err(denied(format!(
                "the bearer token is {} bytes, more than the {MAX_TOKEN_BYTES} querygate accepts",
                token.len()
            )));
        }
        let hash = credential.sha256_hex();
        if let Some(key) = self.by_hash.get(&hash) {
            if let Some(expires) = key.expires
                && now() >= expires
            {
                return Err(denied(format!(
                    "this API key of {} expired at {}; ask the gateway's operator for a new one",
                    key.identity.subject,
                    time(expires)
                )));
            }
            return Ok(Identity {
                auth: Some("api_key".into()),
                ..key.identity.clone()
            });
        }
        if looks_like_jwt(token) {
            return self.oidc(token, audience).await.map_err(|e| denied(e.0));
        }
        if let Some(store) = &self.store {
            match store.api_key(&hash) {
                Ok(Some(key)) => {
                    if let Some(at) = key.revoked {
                        return Err(denied(format!(
                            "this API key of {} was revoked at {}; ask the gateway's operator for a new one",
                            key.identity,
                            time(at)
                        )));
                    }
                    if let Some(at) = key.expires
                        && now() >= at
                    {
                        return Err(denied(format!(
                            "this API key of {} expired at {}; ask the gateway's operator for a new one",
                            key.identity,
                            time(at)
                        )));
                    }
                    let kind = key
                        .kind
                        .as_deref()
                        .and_then(|k| serde_json::from_value(serde_json::json!(k)).ok())
                        .unwrap_or_else(|| Identity::kind_from_subject(&key.identity));
                    return Ok(Identity {
                        subject: key.identity,
                        groups: key.groups,
                        kind,
                        acting_for: None,
                        auth: Some("api_key".into()),
                    });
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot look up a stored API key; refusing");
                    return Err(denied(
                        "querygate could not check the API key against its store; try again shortly",
                    ));
                }
            }
        }
        Err(denied(
            "the bearer token is not a querygate API key known to this gateway (create one with \
             `querygate keys new`), nor a token from an identity provider it trusts",
        ))
    }

    /// Verifies an OIDC token against the issuer its `iss` names (one of `audience`'s
    /// issuers, and for its resource, when one is given).
    async fn oidc(
        &self,
        token: &str,
        audience: Option<&Audience>,
    ) -> Result<Identity, jwt::Refused> {
        let peek = jwt::peek(token)?;
        if let Some(a) = audience
            && !a.issuers.iter().any(|i| i == &peek.iss)
        {
            let iss: String = peek.iss.chars().take(80).collect();
            return Err(jwt::Refused(format!(
                "the token's issuer {iss:?} does not issue tokens for {}; get one from {} for \
                 the resource {}",
                a.resource,
                a.issuers.join(" or "),
                a.resource
            )));
        }
        let Some(issuer) = self.issuers.get(&peek.iss) else {
            return Err(jwt::Refused(if self.issuers.is_empty() {
                "the bearer token is a JWT, and this gateway trusts no identity provider \
                 (no [[oidc]] issuers configured); use a querygate API key"
                    .into()
            } else {
                let iss: String = peek.iss.chars().take(80).collect();
                format!(
                    "the token's issuer {iss:?} is not one this gateway trusts; ask the gateway's \
                     operator which identity providers it accepts"
                )
            }));
        };
        issuer
            .verify(token, &peek, audience.map(|a| a.resource.as_str()))
            .await
    }
}

#[cfg(test)]
mod tests;
