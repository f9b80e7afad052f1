//! The OAuth token endpoint of the BigQuery listener, for tools that only use Google's
//! default credentials (`querygate connect`).
//!
//! `querygate connect` writes an `external_account_authorized_user` credentials file whose
//! `refresh_token` is the caller's querygate API key and whose `token_url` is [`PATH`] on
//! this listener. Google's auth libraries (Python google-auth, Node google-auth-library)
//! POST `grant_type=refresh_token&refresh_token=<key>` there, form-encoded, with HTTP Basic
//! client authentication from the file's `client_id`/`client_secret` (which name the one
//! public client, [`CLIENT_ID`], and are not checked: the key is the credential).
//!
//! The key is authenticated as the data path authenticates it (API keys only: an identity
//! provider's token expires and does not belong in a file). The answer is a short-lived
//! access token: the key and an expiry sealed with AES-256-GCM under a secret only the
//! gateway holds ([`Tokens`], kept beside the store so tokens survive a restart). On the
//! data path, [`Tokens::unseal_bearer`] turns a token back into its key before the request
//! is decoded, so the pipeline authenticates the key itself on every request — revocation
//! and expiry take effect at once — and audits the request as the key's identity. A token
//! that is expired, forged or sealed under another secret stays as it is, and the pipeline
//! refuses and audits it like any unknown credential.
//!
//! Every call of the endpoint is audited (method [`METHOD`]): a refused one as the pipeline
//! records a refused credential (`unauthenticated` or `anonymous`, `deny`, the reason), an
//! issued token as `allow` with the identity, durably before the token is returned (if the
//! record cannot be written, no token is issued). Errors are RFC 6749 JSON
//! (`invalid_grant`, `invalid_request`, `unsupported_grant_type`), which both libraries
//! raise with the `error_description`. Neither the key nor a token is ever logged.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use http::{HeaderMap, HeaderValue, Method, Request as HttpRequest, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use querygate_core::{AuditRecord, Identity, IdentityKind, Secret};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::json;

use crate::routes::Front;

/// Where the token endpoint is served on the BigQuery listener.
pub const PATH: &str = "/querygate/oauth2/token";

/// The audit log's method name for calls of the token endpoint.
pub const METHOD: &str = "oauth.token";

/// The `client_id` of the credentials files `querygate connect` writes (a public client:
/// its `client_secret` is no secret, and neither is checked).
pub const CLIENT_ID: &str = "querygate";

/// How long an access token is good for. The clients refresh ahead of expiry (google-auth
/// 3 min 45 s before, google-auth-library 5 min before), so it must be well over 5 min.
pub const TOKEN_TTL_SECS: u64 = 3600;

/// What every access token starts with.
const PREFIX: &str = "qgat_";

/// Bound into every seal, so nothing else sealed with the secret opens as a token.
const AAD: &[u8] = b"querygate access token v1";

/// The largest token request read (a form with a key in it is well under 1 KiB).
const MAX_BODY: usize = 16 * 1024;

/// Why the token endpoint's secret or an access token could not be made. Messages name
/// the secret's file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The secret file could not be read, written or created, or holds no secret.
    #[error("{0}")]
    Secret(String),
    #[error("the system's random number generator failed")]
    Random,
    #[error("cannot seal an access token")]
    Seal,
}

/// Seals keys into access tokens and opens them again, under one secret.
pub struct Tokens {
    key: LessSafeKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens(..)")
    }
}

/// Why an access token did not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsealed {
    /// Not sealed under this secret, or changed since.
    Invalid,
    /// Sealed here, but its time is up (at this Unix time).
    Expired(u64),
}

/// Where the secret of the access tokens lives: beside the store, `<store>.token-key`.
pub fn secret_path(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".token-key");
    PathBuf::from(name)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Tokens {
    /// Tokens sealed under `secret` (32 bytes).
    pub fn from_secret(secret: &[u8; 32]) -> Tokens {
        let key = UnboundKey::new(&AES_256_GCM, secret)
            .map(LessSafeKey::new)
            .unwrap_or_else(|_| unreachable!("a 32-byte key is an AES-256 key"));
        Tokens {
            key,
            rng: SystemRandom::new(),
        }
    }

    /// Reads the secret at `path` (64 hex digits), creating it (mode 0600) when missing.
    /// Errors name the file, never its content.
    pub fn load_or_create(path: &Path) -> Result<Tokens, TokenError> {
        use std::io::Write;
        let shown = path.display();
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        match opts.open(path) {
            Ok(mut file) => {
                let mut secret = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut secret)
                    .map_err(|_| TokenError::Random)?;
                file.write_all(format!("{}\n", hex::encode(secret)).as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| {
                        TokenError::Secret(format!(
                            "cannot write the access-token secret {shown}: {e}"
                        ))
                    })?;
                Ok(Tokens::from_secret(&secret))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    TokenError::Secret(format!("cannot read the access-token secret {shown}: {e}"))
                })?;
                let bytes = hex::decode(text.trim()).ok().filter(|b| b.len() == 32);
                let Some(bytes) = bytes else {
                    return Err(TokenError::Secret(format!(
                        "the access-token secret {shown} is not 64 hex digits; delete it to make \
                         a new one (tokens issued under it stop working; clients get new ones)"
                    )));
                };
                let mut secret = [0u8; 32];
                secret.copy_from_slice(&bytes);
                Ok(Tokens::from_secret(&secret))
            }
            Err(e) => Err(TokenError::Secret(format!(
                "cannot create the access-token secret {shown}: {e}"
            ))),
        }
    }

    /// An access token for `key`, good until the Unix time `expires`.
    pub fn seal(&self, key: &Secret, expires: u64) -> Result<String, TokenError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| TokenError::Random)?;
        let mut sealed = Vec::with_capacity(8 + key.expose().len() + 16);
        sealed.extend_from_slice(&expires.to_be_bytes());
        sealed.extend_from_slice(key.expose().as_bytes());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut sealed,
            )
            .map_err(|_| TokenError::Seal)?;
        Ok(format!(
            "{PREFIX}{}{}",
            hex::encode(nonce),
            hex::encode(sealed)
        ))
    }

    /// The key an access token stands for, if it opens under this secret and is not
    /// expired at the Unix time `now`.
    pub fn open(&self, token: &str, now: u64) -> Result<Secret, Unsealed> {
        let raw = token
            .strip_prefix(PREFIX)
            .and_then(|hex_text| hex::decode(hex_text).ok())
            .filter(|raw| raw.len() > NONCE_LEN + 8 + 16)
            .ok_or(Unsealed::Invalid)?;
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unsealed::Invalid)?;
        let mut sealed = sealed.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(AAD), &mut sealed)
            .map_err(|_| Unsealed::Invalid)?;
        let (expires, key) = plain.split_at(8);
        let expires = u64::from_be_bytes(expires.try_into().map_err(|_| Unsealed::Invalid)?);
        if now >= expires {
            return Err(Unsealed::Expired(expires));
        }
        let key = std::str::from_utf8(key).map_err(|_| Unsealed::Invalid)?;
        Ok(Secret::new(key))
    }

    /// Replaces an `Authorization: Bearer <access token>` that opens with the key it
    /// stands for, so the pipeline authenticates (and audits) the key. Anything else is
    /// left as it is.
    pub fn unseal_bearer(&self, headers: &mut HeaderMap) {
        let Some(token) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| token.starts_with(PREFIX))
        else {
            return;
        };
        let Ok(key) = self.open(token, now_secs()) else {
            return;
        };
        if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", key.expose())) {
            value.set_sensitive(true);
            headers.insert(header::AUTHORIZATION, value);
        }
    }
}

/// One OAuth error answer (RFC 6749 §5.2).
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    let body = json!({ "error": error, "error_description": description });
    answer(status, &body)
}

fn answer(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// What a token request asked for, read from its form body.
#[derive(Debug)]
struct Grant {
    grant_type: Option<String>,
    refresh_token: Option<Secret>,
}

/// Reads an `application/x-www-form-urlencoded` body; a parameter sent twice is an error
/// (RFC 6749 §3.2). Values are never part of an error message.
fn read_form(body: &[u8]) -> Result<Grant, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the form is not UTF-8".to_string())?;
    let mut grant = Grant {
        grant_type: None,
        refresh_token: None,
    };
    let mut seen: Vec<String> = Vec::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8()
                .map(|v| v.into_owned())
                .map_err(|_| "the form is not UTF-8 once decoded".to_string())
        };
        let name = decode(name)?;
        if seen.contains(&name) {
            return Err(format!("the parameter {name:?} is sent more than once"));
        }
        let value = decode(value)?;
        match name.as_str() {
            "grant_type" => grant.grant_type = Some(value),
            "refresh_token" => grant.refresh_token = Some(Secret::new(value.trim())),
            _ => {}
        }
        seen.push(name);
    }
    Ok(grant)
}

/// Everything the audit record of one token request needs.
struct Call<'a> {
    front: &'a Front,
    request_id: String,
    peer: Option<String>,
    user_agent: Option<String>,
    started: Instant,
}

impl Call<'_> {
    fn record(
        &self,
        identity: Result<&Identity, bool>,
        decision: &str,
        reason: String,
        status: StatusCode,
    ) -> AuditRecord {
        let subject = match identity {
            Ok(i) => i.subject.as_str(),
            Err(true) => "unauthenticated",
            Err(false) => "anonymous",
        };
        let mut record = AuditRecord::default_for(METHOD, subject);
        record.time = querygate_pipeline::audit_time(time::OffsetDateTime::now_utc());
        record.request_id = self.request_id.clone();
        record.decision = decision.to_string();
        record.reason = Some(reason);
        record.status = Some(status.as_u16());
        record.duration_ms = Some(self.started.elapsed().as_secs_f64() * 1000.0);
        record.user_agent = self.user_agent.clone();
        record.peer = self.peer.clone();
        if let Ok(i) = identity {
            record.groups = i.groups.clone();
            record.kind = Some(
                match i.kind {
                    IdentityKind::Human => "human",
                    IdentityKind::Agent => "agent",
                    IdentityKind::Service => "service",
                }
                .to_string(),
            );
            record.auth = i.auth.clone();
        }
        record
    }

    /// Audits a refusal (logging a failed write, as the pipeline does) and answers it.
    async fn refuse(
        &self,
        identity: Result<&Identity, bool>,
        status: StatusCode,
        error: &str,
        description: &str,
    ) -> Response<Body> {
        let record = self.record(identity, "deny", description.to_string(), status);
        tracing::info!(
            request_id = %self.request_id, identity = %record.identity, error,
            reason = %description, "token request refused"
        );
        if let Err(e) = self.front.pipeline.store().append(record).await {
            tracing::error!(request_id = %self.request_id, error = %e, "cannot write the record of a refused token request");
        }
        oauth_error(status, error, description)
    }
}

/// `POST` [`PATH`]: the refresh-token grant, answered with an access token for the key.
pub async fn grant(State(front): State<Arc<Front>>, request: HttpRequest<Body>) -> Response<Body> {
    let (parts, body) = request.into_parts();
    let call = Call {
        front: &front,
        request_id: format!("qg-{}", uuid::Uuid::new_v4().simple()),
        peer: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(a)| a.to_string()),
        user_agent: parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        started: Instant::now(),
    };
    let mut response = exchange(&call, &parts.method, &parts.headers, body).await;
    if let Ok(v) = HeaderValue::from_str(&call.request_id) {
        response.headers_mut().insert("x-querygate-request-id", v);
    }
    response
}

async fn exchange(
    call: &Call<'_>,
    method: &Method,
    headers: &HeaderMap,
    body: Body,
) -> Response<Body> {
    let bad = StatusCode::BAD_REQUEST;
    if method != Method::POST {
        let why = format!("the token endpoint takes POST, not {method}");
        return call
            .refuse(
                Err(false),
                StatusCode::METHOD_NOT_ALLOWED,
                "invalid_request",
                &why,
            )
            .await;
    }
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        let why = "send the token request as application/x-www-form-urlencoded";
        return call.refuse(Err(false), bad, "invalid_request", why).await;
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            let why = format!("the token request could not be read (at most {MAX_BODY} bytes)");
            return call.refuse(Err(false), bad, "invalid_request", &why).await;
        }
    };
    let grant = match read_form(&body) {
        Ok(g) => g,
        Err(why) => return call.refuse(Err(false), bad, "invalid_request", &why).await,
    };
    let presented = grant.refresh_token.is_some();
    match grant.grant_type.as_deref() {
        Some("refresh_token") => {}
        Some(other) => {
            let why = format!(
                "querygate issues tokens for the refresh_token grant only, not {:?}",
                other.chars().take(60).collect::<String>()
            );
            return call
                .refuse(Err(presented), bad, "unsupported_grant_type", &why)
                .await;
        }
        None => {
            let why = "grant_type is missing (querygate takes grant_type=refresh_token)";
            return call
                .refuse(Err(presented), bad, "invalid_request", why)
                .await;
        }
    }
    let Some(key) = grant.refresh_token.filter(|k| !k.expose().is_empty()) else {
        let why = "refresh_token is missing: it is your querygate API key (`querygate connect` \
                   writes it into the credentials file)";
        return call.refuse(Err(false), bad, "invalid_request", why).await;
    };
    let identity = match call.front.pipeline.authenticate(Some(&key), None).await {
        Ok(i) => i,
        Err(denial) => {
            return call
                .refuse(Err(true), bad, "invalid_grant", &denial.message)
                .await;
        }
    };
    if identity.auth.as_deref() != Some("api_key") {
        let why = "the refresh token must be a querygate API key; an identity provider's token \
                   expires and does not belong in a credentials file";
        return call.refuse(Ok(&identity), bad, "invalid_grant", why).await;
    }
    let expires = now_secs() + TOKEN_TTL_SECS;
    let token = match call.front.tokens.seal(&key, expires) {
        Ok(t) => t,
        Err(why) => {
            tracing::error!(request_id = %call.request_id, error = %why, "cannot issue an access token");
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "querygate cannot issue access tokens now; try again shortly",
            );
        }
    };
    let record = call.record(
        Ok(&identity),
        "allow",
        format!("access token issued, valid for {TOKEN_TTL_SECS} s"),
        StatusCode::OK,
    );
    // Fail closed: no token the audit log does not hold.
    if let Err(e) = call.front.pipeline.store().append(record).await {
        tracing::error!(request_id = %call.request_id, error = %e, "cannot write the record of a token request; refusing it");
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "querygate cannot write its audit log now, so it issues no token; try again shortly",
        );
    }
    tracing::info!(request_id = %call.request_id, identity = %identity.subject, "access token issued");
    answer(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": TOKEN_TTL_SECS,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::from_secret(&[7u8; 32])
    }

    #[test]
    fn a_token_opens_to_its_key_until_it_expires() {
        let t = tokens();
        let key = Secret::new("qg_some-key");
        let token = t.seal(&key, 1_000).expect("seal");
        assert!(token.starts_with(PREFIX));
        assert!(!token.contains("qg_some-key"));
        assert_eq!(t.open(&token, 999).expect("open").expose(), "qg_some-key");
        assert_eq!(t.open(&token, 1_000), Err(Unsealed::Expired(1_000)));
        // Two tokens for the same key differ (fresh nonces).
        assert_ne!(token, t.seal(&key, 1_000).expect("seal"));
    }

    #[test]
    fn tokens_of_another_secret_or_changed_do_not_open() {
        let token = tokens().seal(&Secret::new("k"), u64::MAX).expect("seal");
        let other = Tokens::from_secret(&[8u8; 32]);
        assert_eq!(other.open(&token, 0), Err(Unsealed::Invalid));
        let mut flipped = token.clone().into_bytes();
        let last = flipped.len() - 1;
        flipped[last] = if flipped[last] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).expect("hex");
        assert_eq!(tokens().open(&flipped, 0), Err(Unsealed::Invalid));
        for junk in ["", "qgat_", "qgat_zz", "qgat_00", "qg_plain_key"] {
            assert_eq!(tokens().open(junk, 0), Err(Unsealed::Invalid), "{junk}");
        }
    }

    #[test]
    fn bearer_tokens_are_swapped_for_their_key_and_nothing_else_is() {
        let t = tokens();
        let token = t.seal(&Secret::new("qg_k"), u64::MAX).expect("seal");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
        );
        t.unseal_bearer(&mut headers);
        let value = headers.get(header::AUTHORIZATION).expect("auth");
        assert_eq!(value.to_str().expect("ascii"), "Bearer qg_k");
        assert!(value.is_sensitive());
        for untouched in ["Bearer qg_k", "Bearer qgat_00", "Basic qgat_00"] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(untouched));
            t.unseal_bearer(&mut headers);
            assert_eq!(headers[header::AUTHORIZATION], untouched);
        }
        let expired = t.seal(&Secret::new("qg_k"), 1).expect("seal");
        let mut headers = HeaderMap::new();
        let value = format!("Bearer {expired}");
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&value).expect("header"),
        );
        t.unseal_bearer(&mut headers);
        assert_eq!(headers[header::AUTHORIZATION], value.as_str());
    }

    #[test]
    fn the_form_is_read_as_rfc_6749_says() {
        let g = read_form(b"grant_type=refresh_token&refresh_token=qg_a%2Bb+c").expect("form");
        assert_eq!(g.grant_type.as_deref(), Some("refresh_token"));
        assert_eq!(g.refresh_token.expect("token").expose(), "qg_a+b c");
        let twice = read_form(b"refresh_token=k1&refresh_token=k2").expect_err("twice");
        assert!(twice.contains("more than once"), "{twice}");
        assert!(!twice.contains("k1") && !twice.contains("k2"), "{twice}");
        let g = read_form(b"").expect("empty");
        assert!(g.grant_type.is_none() && g.refresh_token.is_none());
        assert!(read_form(b"grant_type=%ff").is_err());
    }

    #[test]
    fn the_secret_file_is_made_once_private_and_reread() {
        let dir = std::env::temp_dir().join(format!("qg-token-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = secret_path(&dir.join("querygate.db"));
        assert!(path.ends_with("querygate.db.token-key"));
        let first = Tokens::load_or_create(&path).expect("create");
        let token = first.seal(&Secret::new("qg_k"), u64::MAX).expect("seal");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let again = Tokens::load_or_create(&path).expect("reread");
        assert_eq!(again.open(&token, 0).expect("open").expose(), "qg_k");
        std::fs::write(&path, "not hex\n").expect("write");
        let err = Tokens::load_or_create(&path).expect_err("bad file");
        assert!(err.to_string().contains("64 hex digits"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
