//! One JWT, checked strictly, turned into an [`Identity`].
//!
//! Order of checks: size (before any parsing), shape (three base64url parts), header
//! (`alg` must be asymmetric: `none` and HMAC are refused whatever else the token
//! says), the unverified `iss` only to pick the issuer block, the key by `kid` from that
//! issuer's own JWKS, the algorithm against what that key allows, the signature, then
//! `iss`, `aud`, `exp`, `nbf`, `iat` (with the issuer's leeway) and the required claims.
//! Claims are read only after the signature verified.
//! Must not: put the token, or any part of it longer than a short excerpt, into a
//! message; trust key material the token carries.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use querygate_core::{Identity, IdentityKind};
use serde_json::{Map, Value};

use crate::config::IssuerConfig;
use crate::jwks::{KeyCache, Unavailable};

/// Largest bearer token accepted; longer ones are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// An issuer block with its key cache.
#[derive(Debug, Clone)]
pub struct Issuer {
    pub config: IssuerConfig,
    pub keys: Arc<KeyCache>,
}

/// Why a token was refused: said to the client and recorded. Never holds the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(msg: impl Into<String>) -> Refused {
    Refused(msg.into())
}

/// Whether a credential has the shape of a JWS compact serialization (three dot-separated
/// base64url parts); anything else is treated as an API key.
pub fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts[..2].iter().all(|p| !p.is_empty())
        && parts.iter().all(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A short, printable excerpt of a value a client sent (a `kid`, an `iss`).
fn excerpt(text: &str) -> String {
    let cut: String = text.chars().take(80).collect();
    let more = if text.chars().count() > 80 { "…" } else { "" };
    format!("{:?}", format!("{cut}{more}"))
}

fn part_json(part: &str, what: &str) -> Result<Map<String, Value>, Refused> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .map_err(|_| refused(format!("the token's {what} is not base64url")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(refused(format!("the token's {what} is not a JSON object"))),
    }
}

/// What the header and the unverified payload say, for picking the issuer and the key.
#[derive(Debug)]
pub struct Peek {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub iss: String,
}

/// Reads the header and `iss` without trusting them; refuses `none` and HMAC here.
pub fn peek(token: &str) -> Result<Peek, Refused> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(refused(format!(
            "the token is {} bytes, more than the {} querygate accepts",
            token.len(),
            MAX_TOKEN_BYTES
        )));
    }
    if !looks_like_jwt(token) {
        return Err(refused("the token is not a JWT (header.payload.signature)"));
    }
    let mut parts = token.split('.');
    let header = part_json(parts.next().unwrap_or_default(), "header")?;
    let payload = part_json(parts.next().unwrap_or_default(), "payload")?;
    let alg_name = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let alg = match alg_name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "" => return Err(refused("the token's header names no algorithm (alg)")),
        a if a.eq_ignore_ascii_case("none") => {
            return Err(refused(
                "unsigned tokens (alg \"none\") are never accepted; send the token your identity provider signed",
            ));
        }
        a if a.to_ascii_uppercase().starts_with("HS") => {
            return Err(refused(format!(
                "tokens signed with a shared secret (alg {}) are never accepted; querygate accepts \
                 RS256/384/512, PS256/384/512, ES256/384 and EdDSA signatures checked against the \
                 issuer's published keys",
                excerpt(a)
            )));
        }
        a => {
            return Err(refused(format!(
                "the token's algorithm {} is not accepted (accepted: RS256/384/512, PS256/384/512, ES256/384, EdDSA)",
                excerpt(a)
            )));
        }
    };
    if header.get("crit").is_some() {
        return Err(refused(
            "the token's header has critical extensions (crit) querygate does not understand",
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(refused("the token's kid is not a string")),
    };
    let iss = match payload.get("iss") {
        Some(Value::String(i)) => i.clone(),
        Some(_) => return Err(refused("the token's iss is not a string")),
        None => {
            return Err(refused(
                "the token has no issuer (iss): send a token from an identity provider this gateway trusts",
            ));
        }
    };
    Ok(Peek { alg, kid, iss })
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| jiff::Timestamp::from_second(s).ok())
        .map_or_else(|| secs.to_string(), |t| t.to_string())
}

impl Issuer {
    /// Verifies `token` (already peeked as `peek`) against this issuer and returns who it
    /// names. With an `act` claim, the identity is the actor and `acting_for` the subject.
    /// `resource`, when given, is the one audience accepted instead of the issuer's own.
    pub async fn verify(
        &self,
        token: &str,
        peek: &Peek,
        resource: Option<&str>,
    ) -> Result<Identity, Refused> {
        let c = &self.config;
        let audiences = match resource {
            Some(r) => vec![r.to_string()],
            None => c.audiences.clone(),
        };
        let keyset = self
            .keys
            .keys(peek.kid.as_deref(), c.jwks_refresh, c.jwks_min_interval)
            .await
            .map_err(|Unavailable(why)| {
                refused(format!(
                    "querygate cannot get the signing keys of issuer {} ({why}); try again shortly",
                    c.issuer
                ))
            })?;
        let candidates = keyset.candidates(peek.kid.as_deref());
        let key = match (peek.kid.as_deref(), candidates.as_slice()) {
            (Some(kid), []) => {
                return Err(refused(format!(
                    "the token's signing key (kid {}) is not one of issuer {}'s published keys; \
                     get a fresh token from the issuer",
                    excerpt(kid),
                    c.issuer
                )));
            }
            (None, [only]) => *only,
            (None, _) => {
                return Err(refused(format!(
                    "the token names no signing key (kid) and issuer {} publishes several",
                    c.issuer
                )));
            }
            (Some(_), [first, ..]) => candidates
                .iter()
                .find(|k| k.algorithms.contains(&peek.alg))
                .copied()
                .unwrap_or(*first),
        };
        if !key.algorithms.contains(&peek.alg) {
            return Err(refused(format!(
                "the token's algorithm {:?} is not the one its signing key is for ({:?})",
                peek.alg, key.algorithms
            )));
        }
        let mut validation = Validation::new(peek.alg);
        validation.leeway = c.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = true;
        validation.set_issuer(&[c.issuer.as_str()]);
        validation.set_audience(&audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        let claims = match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
        {
            Ok(data) => data.claims,
            Err(e) => return Err(self.explain(e.kind(), token, &audiences)),
        };
        let now = now();
        if let Some(iat) = claims.get("iat") {
            let Some(iat) = iat.as_u64().or_else(|| iat.as_f64().map(|f| f as u64)) else {
                return Err(refused("the token's iat is not a number"));
            };
            if iat > now + c.leeway.as_secs() {
                return Err(refused(format!(
                    "the token says it was issued at {}, in the future; check the clocks of the \
                     identity provider and the client",
                    time(iat)
                )));
            }
        }
        for (claim, accepted) in &c.required_claims {
            let ok = match lookup(&claims, claim) {
                Some(Value::String(v)) => accepted.contains(v),
                Some(Value::Bool(b)) => accepted.contains(&b.to_string()),
                Some(Value::Number(n)) => accepted.contains(&n.to_string()),
                _ => false,
            };
            if !ok {
                return Err(refused(format!(
                    "issuer {} requires claim {claim} to be one of {accepted:?}, and this token's is not",
                    c.issuer
                )));
            }
        }
        let subject = self.identity_of(&claims, None)?;
        match claims.get("act") {
            None | Some(Value::Null) => Ok(subject),
            Some(Value::Object(act)) => {
                let actor = self.identity_of(act, Some(IdentityKind::Agent))?;
                Ok(Identity {
                    acting_for: Some(Box::new(subject)),
                    ..actor
                })
            }
            Some(_) => Err(refused("the token's act claim is not an object")),
        }
    }

    /// Maps a verification failure to a message the client can act on.
    fn explain(&self, kind: &ErrorKind, token: &str, audiences: &[String]) -> Refused {
        let c = &self.config;
        // Safe to read now only for messages: the failure is already decided.
        let unverified = token
            .split('.')
            .nth(1)
            .and_then(|p| part_json(p, "payload").ok())
            .unwrap_or_default();
        let num = |name: &str| unverified.get(name).and_then(Value::as_u64);
        match kind {
            ErrorKind::InvalidSignature => refused(format!(
                "the token's signature does not verify with issuer {}'s key (it was altered, or \
                 signed by someone else)",
                c.issuer
            )),
            ErrorKind::ExpiredSignature => refused(format!(
                "the token expired{}; get a fresh token from {}",
                num("exp")
                    .map(|t| format!(" at {}", time(t)))
                    .unwrap_or_default(),
                c.issuer
            )),
            ErrorKind::ImmatureSignature => refused(format!(
                "the token is not valid yet{}; check the clocks of the identity provider and the client",
                num("nbf")
                    .map(|t| format!(" (not before {})", time(t)))
                    .unwrap_or_default()
            )),
            ErrorKind::InvalidAudience => refused(format!(
                "the token's audience (aud) is not one this gateway accepts from {} ({:?}); \
                 request a token for this gateway's audience",
                c.issuer, audiences
            )),
            ErrorKind::InvalidIssuer => refused(format!("the token's issuer is not {}", c.issuer)),
            ErrorKind::MissingRequiredClaim(claim) => refused(format!(
                "the token has no {} claim, which querygate requires",
                excerpt(claim)
            )),
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
                refused("the token's algorithm does not match its signing key")
            }
            _ => refused("the token is malformed (its signature or claims cannot be read)"),
        }
    }

    /// The identity a set of claims names (the token's own, or its `act` claim's).
    fn identity_of(
        &self,
        claims: &Map<String, Value>,
        default_kind: Option<IdentityKind>,
    ) -> Result<Identity, Refused> {
        let c = &self.config;
        let subject = match lookup(claims, &c.subject_claim).or_else(|| {
            // An actor (`act`) often carries only `sub`.
            default_kind.and_then(|_| claims.get("sub"))
        }) {
            Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => {
                return Err(refused(format!(
                    "the token{} has no {} claim, which issuer {} names as the subject",
                    if default_kind.is_some() {
                        "'s act claim"
                    } else {
                        ""
                    },
                    c.subject_claim,
                    c.issuer
                )));
            }
        };
        let mut groups: Vec<String> = c.groups.clone();
        if let Some(path) = &c.groups_claim {
            match lookup(claims, path) {
                Some(Value::Array(items)) => {
                    groups.extend(items.iter().filter_map(|v| v.as_str().map(str::to_string)))
                }
                Some(Value::String(s)) => groups.extend(s.split_whitespace().map(str::to_string)),
                _ => {}
            }
        }
        groups.sort();
        groups.dedup();
        let claimed = c
            .kind_claim
            .as_deref()
            .and_then(|p| lookup(claims, p))
            .and_then(Value::as_str)
            .and_then(kind_named);
        let kind = match (claimed, default_kind, c.kind) {
            (Some(k), _, _) => k,
            (None, Some(k), _) => k,
            (None, None, Some(k)) => k,
            (None, None, None) => {
                return Err(refused(format!(
                    "the token's {} claim does not say human, agent or service, and issuer {} has \
                     no default kind",
                    c.kind_claim.as_deref().unwrap_or("kind"),
                    c.issuer
                )));
            }
        };
        Ok(Identity {
            subject: format!("{}{subject}", c.subject_prefix),
            groups,
            kind,
            acting_for: None,
            auth: Some(format!("oidc:{}", c.issuer)),
        })
    }
}

fn kind_named(name: &str) -> Option<IdentityKind> {
    match name.to_ascii_lowercase().as_str() {
        "human" | "user" | "person" => Some(IdentityKind::Human),
        "agent" | "ai" => Some(IdentityKind::Agent),
        "service" | "ci" | "workload" => Some(IdentityKind::Service),
        _ => None,
    }
}

/// A claim by dotted path (`realm_access.roles`); a claim whose own name contains dots
/// (`https://example.com/groups`) is found by its full name first.
pub fn lookup<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    if let Some(v) = claims.get(path) {
        return Some(v);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}
