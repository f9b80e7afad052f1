//! An issuer's signing keys: discovery, JWKS fetch, and the cache in front of them.
//!
//! Keys are fetched through the issuer's discovery document (or a configured
//! `jwks_uri`), cached, refreshed in the background when older than `jwks_refresh`,
//! and fetched at once when a token names an unknown `kid` — at most once per
//! `jwks_min_interval`, so a stream of forged `kid`s cannot turn the gateway into a
//! load generator against the IdP. When the IdP cannot be reached, the last good set
//! keeps serving. Only asymmetric signing keys enter the set, each with the one
//! algorithm family its own type allows (see [`VerifyKey`]); symmetric (`oct`) keys are
//! dropped, so no header can make the gateway verify an HMAC.
//! Must not: trust any key material carried by a token (`jwk`, `jku`, `x5u`, `x5c`).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use crate::config::{IssuerConfig, UrlError, check_url, is_loopback};

/// Largest discovery document or JWKS accepted.
const MAX_DOCUMENT: usize = 512 * 1024;

/// One usable verification key and the algorithms it may verify.
#[derive(Clone)]
pub struct VerifyKey {
    pub kid: Option<String>,
    pub key: DecodingKey,
    /// Algorithms allowed for this key: its own `alg` when it declares one, else every
    /// algorithm of its type (RSA: RS*/PS*; EC P-256: ES256; EC P-384: ES384; Ed25519: EdDSA).
    pub algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithms", &self.algorithms)
            .finish()
    }
}

/// The keys of one issuer at one moment.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<VerifyKey>,
}

/// A JWKS document that is not a JSON object with `keys` (the JSON parser's message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the JWKS is not a JSON object with \"keys\": {0}")]
pub struct JwksError(pub String);

/// The HTTP client for an issuer's keys could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot build the HTTP client for {issuer}: {reason}")]
pub struct HttpClientError {
    pub issuer: String,
    pub reason: String,
}

/// Why an issuer's keys could not be fetched (each names the URL it was fetching).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The request failed (the transport's message, without the URL).
    #[error("{url}: {reason}")]
    Transport { url: String, reason: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {MAX_DOCUMENT} bytes")]
    TooLarge { url: String },
    #[error("{url} is not a discovery document: {reason}")]
    NotDiscovery { url: String, reason: String },
    #[error(
        "{url} names issuer {named:?}, not {expected:?}: the config's issuer must match the IdP's exactly"
    )]
    IssuerMismatch {
        url: String,
        named: String,
        expected: String,
    },
    #[error("{url}: jwks_uri {error}")]
    JwksUri { url: String, error: UrlError },
    #[error("{url}: jwks_uri {jwks_uri:?} must be https")]
    JwksUriNotHttps { url: String, jwks_uri: String },
    #[error("{url}: {error}")]
    Jwks { url: String, error: JwksError },
    #[error("{url} holds no asymmetric signing key querygate can use")]
    NoUsableKey { url: String },
}

impl KeySet {
    /// Parses a JWKS document, keeping the keys that can verify asymmetric signatures.
    /// Keys it cannot use are skipped, not fatal (IdPs publish encryption keys too).
    pub fn parse(body: &[u8]) -> Result<KeySet, JwksError> {
        #[derive(Deserialize)]
        struct Doc {
            keys: Vec<serde_json::Value>,
        }
        let doc: Doc = serde_json::from_slice(body).map_err(|e| JwksError(e.to_string()))?;
        let keys = doc
            .keys
            .into_iter()
            .filter_map(|v| serde_json::from_value::<Jwk>(v).ok())
            .filter_map(|jwk| verify_key(&jwk))
            .collect();
        Ok(KeySet { keys })
    }

    /// Keys a token with this `kid` (or none) and this algorithm may be checked against.
    pub fn candidates(&self, kid: Option<&str>) -> Vec<&VerifyKey> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(|k| k.kid.as_deref() == Some(kid))
                .collect(),
            None => self.keys.iter().collect(),
        }
    }

    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn verify_key(jwk: &Jwk) -> Option<VerifyKey> {
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return None,
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return None,
        },
        // Symmetric and unknown key types never verify anything here.
        _ => return None,
    };
    let algorithms = match jwk.common.key_algorithm {
        None => family.to_vec(),
        Some(declared) => {
            let alg = key_algorithm(declared)?;
            if !family.contains(&alg) {
                return None;
            }
            vec![alg]
        }
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerifyKey {
        kid: jwk.common.key_id.clone(),
        key,
        algorithms,
    })
}

fn key_algorithm(k: KeyAlgorithm) -> Option<Algorithm> {
    Some(match k {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

#[derive(Default)]
struct State {
    keys: Option<Arc<KeySet>>,
    /// When the current keys were fetched.
    fetched: Option<Instant>,
    /// When a fetch was last started (successful or not).
    attempted: Option<Instant>,
    last_error: Option<String>,
}

/// The cached keys of one issuer, shared by every request and kept across reloads.
pub struct KeyCache {
    issuer: String,
    jwks_uri: Option<String>,
    http: reqwest::Client,
    state: RwLock<State>,
    /// Held while fetching, so concurrent misses cause one fetch.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Why no keys could be had.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable(pub String);

impl KeyCache {
    pub fn new(config: &IssuerConfig) -> Result<KeyCache, HttpClientError> {
        let local = reqwest::Url::parse(&config.issuer)
            .map(|u| is_loopback(&u))
            .unwrap_or(false);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .https_only(!local)
            .redirect(reqwest::redirect::Policy::limited(3))
            .user_agent(concat!("querygate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HttpClientError {
                issuer: config.issuer.clone(),
                reason: e.to_string(),
            })?;
        Ok(KeyCache {
            issuer: config.issuer.clone(),
            jwks_uri: config.jwks_uri.clone(),
            http,
            state: RwLock::new(State::default()),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    /// The keys to check a token with `kid` against: the cached set, refreshed first when
    /// there is none yet or `kid` is unknown (rate-limited), and in the background when old.
    pub async fn keys(
        self: &Arc<Self>,
        kid: Option<&str>,
        refresh_every: Duration,
        min_interval: Duration,
    ) -> Result<Arc<KeySet>, Unavailable> {
        let (keys, fetched, attempted) = {
            let s = self.read();
            (s.keys.clone(), s.fetched, s.attempted)
        };
        let may_fetch = attempted.is_none_or(|t| t.elapsed() >= min_interval);
        match keys {
            Some(keys) => {
                let known = kid.is_none_or(|k| keys.has_kid(k));
                if !known && may_fetch {
                    self.refresh(attempted).await;
                    return Ok(self.read().keys.clone().unwrap_or(keys));
                }
                if fetched.is_none_or(|t| t.elapsed() >= refresh_every) && may_fetch {
                    let me = self.clone();
                    tokio::spawn(async move { me.refresh(attempted).await });
                }
                Ok(keys)
            }
            None => {
                if may_fetch {
                    self.refresh(attempted).await;
                }
                let s = self.read();
                s.keys.clone().ok_or_else(|| {
                    Unavailable(
                        s.last_error
                            .clone()
                            .unwrap_or_else(|| "its keys have not been fetched yet".into()),
                    )
                })
            }
        }
    }

    /// Starts fetching the keys in the background (at start-up).
    pub fn warm_up(self: &Arc<Self>) {
        let me = self.clone();
        let attempted = me.read().attempted;
        if attempted.is_none() {
            tokio::spawn(async move { me.refresh(None).await });
        }
    }

    /// Fetches the keys unless another fetch started after `seen` (the attempt time the
    /// caller saw), in which case that fetch's result is used.
    async fn refresh(&self, seen: Option<Instant>) {
        let _guard = self.fetching.lock().await;
        if self.read().attempted != seen {
            return;
        }
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .attempted = Some(Instant::now());
        let result = self.fetch().await;
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        match result {
            Ok(set) => {
                tracing::info!(issuer = %self.issuer, keys = set.keys.len(), "fetched the issuer's signing keys");
                s.keys = Some(Arc::new(set));
                s.fetched = Some(Instant::now());
                s.last_error = None;
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, kept = s.keys.is_some(), "cannot fetch the issuer's signing keys");
                s.last_error = Some(e.to_string());
            }
        }
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let jwks_uri = match &self.jwks_uri {
            Some(u) => u.clone(),
            None => self.discover().await?,
        };
        let body = self.get(&jwks_uri).await?;
        let set = KeySet::parse(&body).map_err(|error| FetchError::Jwks {
            url: jwks_uri.clone(),
            error,
        })?;
        if set.keys.is_empty() {
            return Err(FetchError::NoUsableKey { url: jwks_uri });
        }
        Ok(set)
    }

    async fn discover(&self) -> Result<String, FetchError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let body = self.get(&url).await?;
        let doc: Discovery =
            serde_json::from_slice(&body).map_err(|e| FetchError::NotDiscovery {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        if doc.issuer != self.issuer {
            return Err(FetchError::IssuerMismatch {
                url,
                named: doc.issuer,
                expected: self.issuer.clone(),
            });
        }
        check_url(&doc.jwks_uri).map_err(|error| FetchError::JwksUri {
            url: url.clone(),
            error,
        })?;
        // An https issuer's keys come over https too (no pointing them at loopback http).
        if self.issuer.starts_with("https://") && !doc.jwks_uri.starts_with("https://") {
            return Err(FetchError::JwksUriNotHttps {
                url,
                jwks_uri: doc.jwks_uri,
            });
        }
        Ok(doc.jwks_uri)
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        let transport = |e: reqwest::Error| FetchError::Transport {
            url: url.to_string(),
            reason: without_url(&e),
        };
        let mut resp = self
            .http
            .get(url)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(transport)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" ({url})"), "");
    }
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
