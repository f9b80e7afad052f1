//! Authenticator tests against a small local IdP (discovery + JWKS served by the test):
//! every accepted algorithm, every refusal a forged or stale token must meet, the key
//! cache (rotation, rate-limited refetch, an IdP that is down), `act` and delegation
//! tokens, and API keys with expiry and revocation in the store.
//! The real OpenID provider runs in crates/querygate/tests/oidc.rs and tests/e2e.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::get;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header, encode};
use querygate_core::{Audience, IdentityKind};
use serde_json::{Value, json};

use super::*;

/// A signing key of the test IdP.
struct Key {
    kid: String,
    alg: jsonwebtoken::Algorithm,
    encoding: EncodingKey,
    jwk: Jwk,
    pem: String,
}

fn key(kid: &str, alg: jsonwebtoken::Algorithm, declare_alg: bool) -> Key {
    use jsonwebtoken::Algorithm as A;
    let (params, from_pem): (&rcgen::SignatureAlgorithm, fn(&[u8]) -> _) = match alg {
        A::RS256 | A::RS384 | A::RS512 | A::PS256 | A::PS384 | A::PS512 => {
            (&rcgen::PKCS_RSA_SHA256, EncodingKey::from_rsa_pem)
        }
        A::ES256 => (&rcgen::PKCS_ECDSA_P256_SHA256, EncodingKey::from_ec_pem),
        A::ES384 => (&rcgen::PKCS_ECDSA_P384_SHA384, EncodingKey::from_ec_pem),
        _ => (&rcgen::PKCS_ED25519, EncodingKey::from_ed_pem),
    };
    let pair = rcgen::KeyPair::generate_for(params).expect("generate key");
    let pem = pair.serialize_pem();
    let encoding = from_pem(pem.as_bytes()).expect("encoding key");
    let mut jwk = if alg == A::EdDSA {
        // rcgen writes PKCS#8 v2 (with the public key), which from_encoding_key does not read.
        serde_json::from_value(json!({
            "kty": "OKP", "crv": "Ed25519", "alg": "EdDSA",
            "x": URL_SAFE_NO_PAD.encode(pair.public_key_raw()),
        }))
        .expect("ed jwk")
    } else {
        Jwk::from_encoding_key(&encoding, alg).expect("jwk")
    };
    jwk.common.key_id = Some(kid.into());
    if !declare_alg {
        jwk.common.key_algorithm = None;
    }
    Key {
        kid: kid.into(),
        alg,
        encoding,
        jwk,
        pem: pair.public_key_pem(),
    }
}

struct Idp {
    jwks: std::sync::Mutex<Value>,
    fetches: AtomicUsize,
    down: AtomicBool,
    issuer: std::sync::Mutex<String>,
}

/// A local IdP on 127.0.0.1 serving discovery and a JWKS the test can change.
struct TestIdp {
    url: String,
    state: Arc<Idp>,
}

impl TestIdp {
    async fn start(keys: &[&Key]) -> TestIdp {
        let state = Arc::new(Idp {
            jwks: std::sync::Mutex::new(json!({})),
            fetches: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            issuer: std::sync::Mutex::new(String::new()),
        });
        async fn discovery(State(s): State<Arc<Idp>>) -> (axum::http::StatusCode, String) {
            if s.down.load(Ordering::SeqCst) {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down".into());
            }
            let iss = s.issuer.lock().expect("lock").clone();
            let doc = json!({"issuer": iss, "jwks_uri": format!("{iss}/jwks")});
            (axum::http::StatusCode::OK, doc.to_string())
        }
        async fn jwks(State(s): State<Arc<Idp>>) -> (axum::http::StatusCode, String) {
            if s.down.load(Ordering::SeqCst) {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down".into());
            }
            s.fetches.fetch_add(1, Ordering::SeqCst);
            (
                axum::http::StatusCode::OK,
                s.jwks.lock().expect("lock").to_string(),
            )
        }
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        *state.issuer.lock().expect("lock") = url.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let idp = TestIdp { url, state };
        idp.publish(keys);
        idp
    }

    fn publish(&self, keys: &[&Key]) {
        let keys: Vec<Value> = keys
            .iter()
            .map(|k| serde_json::to_value(&k.jwk).expect("jwk json"))
            .collect();
        *self.state.jwks.lock().expect("lock") = json!({ "keys": keys });
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn config(&self, extra: &str) -> IssuerConfig {
        let text = format!(
            "issuer = {:?}\naudiences = [\"querygate\"]\ngroups_claim = \"realm.roles\"\n\
             kind_claim = \"kind\"\nkind = \"human\"\nleeway = \"5s\"\njwks_min_interval = \"1s\"\n{extra}",
            self.url
        );
        toml::from_str::<OidcSpec>(&text)
            .expect("spec")
            .check()
            .expect("check")
    }

    fn authenticator(&self, extra: &str) -> Authenticator {
        let issuer = KeyCaches::default()
            .issuer(self.config(extra))
            .expect("issuer");
        Authenticator::default().with_issuers([issuer])
    }

    /// Standard claims for a token of this IdP, `secs` from now expiring.
    fn claims(&self, sub: &str) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({
            "iss": self.url, "sub": sub, "aud": "querygate",
            "iat": now, "exp": now + 300,
            "realm": {"roles": ["engineers", "readers"]},
        })
    }
}

fn sign(key: &Key, claims: &Value) -> String {
    let mut header = Header::new(key.alg);
    header.kid = Some(key.kid.clone());
    encode(&header, claims, &key.encoding).expect("sign")
}

fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

async fn auth(a: &Authenticator, token: &str) -> Result<Identity, String> {
    a.authenticate(Some(&Secret::new(token)), None, None)
        .await
        .map_err(|d| {
            assert_eq!(d.kind, DenialKind::Unauthenticated);
            // Whatever the reason, the message never carries the token.
            for part in token.split('.').filter(|p| p.len() > 12) {
                assert!(
                    !d.message.contains(part),
                    "message leaks the token: {}",
                    d.message
                );
            }
            d.message
        })
}

#[tokio::test]
async fn every_accepted_algorithm_verifies_and_claims_become_the_identity() {
    use jsonwebtoken::Algorithm as A;
    let keys = [
        key("rs", A::RS256, true),
        key("ps", A::PS256, false),
        key("es256", A::ES256, true),
        key("es384", A::ES384, true),
        key("ed", A::EdDSA, true),
    ];
    let idp = TestIdp::start(&keys.iter().collect::<Vec<_>>()).await;
    let a = idp.authenticator("");
    for k in &keys {
        let id = auth(&a, &sign(k, &idp.claims("alice")))
            .await
            .unwrap_or_else(|e| panic!("{:?}: {e}", k.alg));
        assert_eq!(id.subject, "alice");
        assert_eq!(id.groups, vec!["engineers", "readers"]);
        assert_eq!(id.kind, IdentityKind::Human);
        assert_eq!(id.auth, Some(format!("oidc:{}", idp.url)));
        assert_eq!(id.acting_for, None);
    }
    // The kind claim decides over the default; a key without `alg` accepts its family.
    let mut c = idp.claims("ci-bot");
    c["kind"] = json!("service");
    let ps = &keys[1];
    let mut header = Header::new(A::PS512);
    header.kid = Some("ps".into());
    let token = encode(&header, &c, &ps.encoding).expect("sign");
    let id = auth(&a, &token).await.expect("PS512 with an RSA key");
    assert_eq!(id.kind, IdentityKind::Service);
    // A key that declares RS256 does not verify RS384, even with a valid signature.
    let mut header = Header::new(A::RS384);
    header.kid = Some("rs".into());
    let token = encode(&header, &idp.claims("alice"), &keys[0].encoding).expect("sign");
    let e = auth(&a, &token)
        .await
        .expect_err("alg the key does not declare");
    assert!(e.contains("not the one its signing key is for"), "{e}");
}

#[tokio::test]
async fn forged_stale_and_foreign_tokens_are_refused_with_reasons() {
    use jsonwebtoken::Algorithm as A;
    let k = key("k1", A::RS256, true);
    let other = key("k-other", A::RS256, true);
    let idp = TestIdp::start(&[&k]).await;
    let idp_b = TestIdp::start(&[&other]).await;
    let a = idp.authenticator("");
    let now = jsonwebtoken::get_current_timestamp();
    let good = idp.claims("alice");
    auth(&a, &sign(&k, &good)).await.expect("the good token");

    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let header = |h: Value| b64(&h);
    let payload = b64(&good);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!("{}.{payload}.", header(json!({"alg": "none", "kid": "k1"}))),
            "never accepted",
        ),
        (
            "alg none, signature kept",
            {
                let real = sign(&k, &good);
                let sig = real.rsplit('.').next().unwrap_or_default().to_string();
                format!("{}.{payload}.{sig}", header(json!({"alg": "none"})))
            },
            "alg \"none\"",
        ),
        (
            "HS256 keyed with the RSA public key",
            {
                let mut h = Header::new(A::HS256);
                h.kid = Some("k1".into());
                encode(&h, &good, &EncodingKey::from_secret(k.pem.as_bytes())).expect("hs256")
            },
            "shared secret",
        ),
        (
            "unknown kid",
            sign(&key("nobody", A::RS256, true), &good),
            "not one of issuer",
        ),
        (
            "issuer A's claims with issuer B's kid and key",
            sign(&other, &good),
            "not one of issuer",
        ),
        (
            "issuer B's kid on a token signed by issuer A's key",
            {
                let mut h = Header::new(A::RS256);
                h.kid = Some("k-other".into());
                encode(&h, &good, &k.encoding).expect("sign")
            },
            "not one of issuer",
        ),
        (
            "expired",
            sign(&k, &with(&|c| c["exp"] = json!(now - 60))),
            "expired",
        ),
        (
            "wrong audience",
            sign(&k, &with(&|c| c["aud"] = json!(["someone-else"]))),
            "audience",
        ),
        (
            "no audience",
            sign(
                &k,
                &with(&|c| {
                    c.as_object_mut().map(|m| m.remove("aud"));
                }),
            ),
            "aud",
        ),
        (
            "untrusted issuer",
            sign(&k, &with(&|c| c["iss"] = json!("https://evil.example"))),
            "not one this gateway trusts",
        ),
        (
            "issued in the future",
            sign(&k, &with(&|c| c["iat"] = json!(now + 86_400))),
            "in the future",
        ),
        (
            "not valid before tomorrow",
            sign(&k, &with(&|c| c["nbf"] = json!(now + 86_400))),
            "not valid yet",
        ),
        (
            "tampered payload",
            {
                let real = sign(&k, &good);
                let parts: Vec<&str> = real.split('.').collect();
                let forged = b64(&with(&|c| c["realm"]["roles"] = json!(["admins"])));
                format!("{}.{forged}.{}", parts[0], parts[2])
            },
            "does not verify",
        ),
        (
            "key embedded in the header",
            {
                let attacker = key("k1", A::RS256, true);
                let mut h = Header::new(A::RS256);
                h.kid = Some("k1".into());
                h.jwk = Some(attacker.jwk.clone());
                encode(&h, &good, &attacker.encoding).expect("sign")
            },
            "does not verify",
        ),
        (
            "garbage",
            "not a token at all".into(),
            "not a querygate API key",
        ),
        (
            "three dots of garbage",
            "eyJ.abc.def".into(),
            "not base64url",
        ),
        (
            "1 MB",
            format!("eyJ{}.e30.sig", "A".repeat(1 << 20)),
            "more than the 16384",
        ),
    ];
    for (name, token, expect) in cases {
        let e = auth(&a, &token)
            .await
            .expect_err(&format!("{name} must be refused"));
        assert!(e.contains(expect), "{name}: expected {expect:?} in {e:?}");
        assert!(
            e.starts_with("Request had invalid authentication credentials"),
            "{e}"
        );
    }
    drop(idp_b);
}

#[tokio::test]
async fn keys_rotate_without_restart_refetch_is_rate_limited_and_an_idp_outage_keeps_the_last_keys()
{
    use jsonwebtoken::Algorithm as A;
    let old = key("old", A::RS256, true);
    let idp = TestIdp::start(&[&old]).await;
    let a = idp.authenticator("");
    a.warm_up();
    auth(&a, &sign(&old, &idp.claims("alice")))
        .await
        .expect("old key");
    let fetched = idp.fetches();
    assert_eq!(fetched, 1, "one fetch for warm-up and first use");

    // Forged kids in a burst cause at most one refetch per interval.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 0..20 {
        let forged = key(&format!("forged-{i}"), A::ES256, true);
        auth(&a, &sign(&forged, &idp.claims("x")))
            .await
            .expect_err("forged");
    }
    assert_eq!(
        idp.fetches(),
        fetched + 1,
        "one refetch for twenty unknown kids"
    );

    // Rotation: the IdP publishes a new key; a token signed with it works once the
    // interval has passed, without a restart; the old key's tokens still work while published.
    let new = key("new", A::ES256, true);
    idp.publish(&[&new, &old]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    auth(&a, &sign(&new, &idp.claims("alice")))
        .await
        .expect("new key after rotation");
    auth(&a, &sign(&old, &idp.claims("alice")))
        .await
        .expect("old key still published");

    // The IdP goes down: known keys keep working; an unknown kid is refused with a reason.
    idp.state.down.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let newer = key("newer", A::RS256, true);
    auth(&a, &sign(&newer, &idp.claims("alice")))
        .await
        .expect_err("unknown while down");
    auth(&a, &sign(&new, &idp.claims("alice")))
        .await
        .expect("cached key while the IdP is down");

    // An issuer whose keys were never fetched, while down: refused, saying why.
    let fresh = idp.authenticator("");
    let e = auth(&fresh, &sign(&new, &idp.claims("alice")))
        .await
        .expect_err("no keys");
    assert!(
        e.contains("cannot get the signing keys") && e.contains("503"),
        "{e}"
    );
}

#[tokio::test]
async fn act_claims_and_delegation_tokens_name_whom_an_agent_acts_for() {
    use jsonwebtoken::Algorithm as A;
    let k = key("k", A::ES256, true);
    let idp = TestIdp::start(&[&k]).await;
    let a = idp.authenticator("subject_prefix = \"corp:\"");

    // RFC 8693: the subject is the person, `act` the agent acting.
    let mut exchanged = idp.claims("alice");
    exchanged["act"] = json!({"sub": "claude-code", "realm": {"roles": ["agents"]}});
    let id = auth(&a, &sign(&k, &exchanged)).await.expect("act token");
    assert_eq!(id.subject, "corp:claude-code");
    assert_eq!(id.kind, IdentityKind::Agent);
    assert_eq!(id.groups, vec!["agents"]);
    let person = id.acting_for.as_deref().expect("acting for");
    assert_eq!(person.subject, "corp:alice");
    assert_eq!(person.groups, vec!["engineers", "readers"]);
    assert_eq!(person.kind, IdentityKind::Human);

    // A delegation token beside the agent's own token.
    let mut agent = idp.claims("claude-code");
    agent["kind"] = json!("agent");
    agent["realm"] = json!({"roles": ["agents"]});
    let agent_token = Secret::new(sign(&k, &agent));
    let alice = Secret::new(sign(&k, &idp.claims("alice")));
    let id = a
        .authenticate(Some(&agent_token), Some(&alice), None)
        .await
        .expect("delegation");
    assert_eq!(id.subject, "corp:claude-code");
    assert_eq!(id.acting_for.map(|p| p.subject), Some("corp:alice".into()));

    // A bad delegation token refuses the whole request, naming the header.
    let mut stale = idp.claims("alice");
    stale["exp"] = json!(1);
    let e = a
        .authenticate(
            Some(&agent_token),
            Some(&Secret::new(sign(&k, &stale))),
            None,
        )
        .await
        .expect_err("expired delegation");
    assert!(
        e.message.contains("x-querygate-on-behalf-of") && e.message.contains("expired"),
        "{e:?}"
    );
    let e = a
        .authenticate(
            Some(&agent_token),
            Some(&Secret::new("qg_not_a_token")),
            None,
        )
        .await
        .expect_err("delegation must be a token");
    assert!(e.message.contains("OIDC token"), "{e:?}");
    // An act token plus a delegation token is ambiguous.
    let e = a
        .authenticate(Some(&Secret::new(sign(&k, &exchanged))), Some(&alice), None)
        .await
        .expect_err("both");
    assert!(e.message.contains("already acts for corp:alice"), "{e:?}");
}

#[tokio::test]
async fn required_claims_pin_a_shared_issuer() {
    use jsonwebtoken::Algorithm as A;
    let k = key("k", A::RS256, true);
    let idp = TestIdp::start(&[&k]).await;
    let a = idp.authenticator(
        "subject_claim = \"job.workflow_ref\"\ngroups = [\"ci\"]\nrequired_claims = { repository_owner = [\"acme\", \"acme-labs\"] }",
    );
    let mut c = idp.claims("repo:acme/app:ref:refs/heads/main");
    c["job"] = json!({"workflow_ref": "acme/app/.github/workflows/ci.yml@refs/heads/main"});
    c["kind"] = json!("service");
    c["repository_owner"] = json!("acme");
    let id = auth(&a, &sign(&k, &c)).await.expect("acme's workflow");
    assert_eq!(
        id.subject,
        "acme/app/.github/workflows/ci.yml@refs/heads/main"
    );
    assert_eq!(id.groups, vec!["ci", "engineers", "readers"]);
    c["repository_owner"] = json!("mallory");
    let e = auth(&a, &sign(&k, &c))
        .await
        .expect_err("someone else's workflow");
    assert!(e.contains("requires claim repository_owner"), "{e}");
}

#[tokio::test]
async fn api_keys_expire_and_stored_keys_are_revoked_without_restart() {
    let dir = std::env::temp_dir().join(format!("qg-identity-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let path = dir.join("qg.db");
    let store = Arc::new(Store::open(&path).expect("store"));
    let admin = querygate_store::KeyAdmin::open(&path).expect("admin");
    let stored = |secret: &str, identity: &str, expires: Option<i64>| querygate_store::StoredKey {
        key_sha256: Secret::new(secret).sha256_hex(),
        identity: identity.into(),
        groups: vec!["agents".into()],
        kind: Some("service".into()),
        created: now(),
        expires,
        revoked: None,
    };
    admin
        .add(&stored("qg_live", "ci:deploy", Some(now() + 3600)))
        .expect("add");
    admin
        .add(&stored("qg_old", "ci:old", Some(now() - 1)))
        .expect("add");
    let config_key = |secret: &str, expires| ApiKey {
        identity: Identity {
            subject: "agent:cfg".into(),
            groups: vec!["agents".into()],
            ..Identity::default()
        },
        key_sha256: Secret::new(secret).sha256_hex(),
        expires,
    };
    let a = Authenticator::new([
        config_key("qg_cfg", None),
        ApiKey {
            identity: Identity {
                subject: "agent:gone".into(),
                ..Identity::default()
            },
            ..config_key("qg_cfg_old", Some(now() - 10))
        },
    ])
    .with_store(store);

    let id = auth(&a, "qg_cfg").await.expect("config key");
    assert_eq!(
        (id.subject.as_str(), id.auth.as_deref()),
        ("agent:cfg", Some("api_key"))
    );
    let e = auth(&a, "qg_cfg_old")
        .await
        .expect_err("expired config key");
    assert!(e.contains("agent:gone expired at"), "{e}");

    let id = auth(&a, "qg_live").await.expect("stored key");
    assert_eq!(id.subject, "ci:deploy");
    assert_eq!(id.kind, IdentityKind::Service);
    assert_eq!(id.groups, vec!["agents"]);
    let e = auth(&a, "qg_old").await.expect_err("expired stored key");
    assert!(e.contains("ci:old expired at"), "{e}");

    admin.revoke("ci:deploy", now()).expect("revoke");
    let e = auth(&a, "qg_live").await.expect_err("revoked");
    assert!(e.contains("ci:deploy was revoked at"), "{e}");
    let e = auth(&a, "qg_unknown").await.expect_err("unknown");
    assert!(e.contains("not a querygate API key"), "{e}");
    let e = a.authenticate(None, None, None).await.expect_err("none");
    assert!(e.message.contains("no credential"), "{e:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_front_that_is_its_own_resource_takes_only_tokens_issued_for_it() {
    use jsonwebtoken::Algorithm as A;
    let k = key("k", A::RS256, true);
    let idp = TestIdp::start(&[&k]).await;
    let a = idp.authenticator("");
    let mcp = Audience {
        resource: "https://gw.example/mcp".into(),
        issuers: vec![idp.url.clone()],
    };
    let at = |audience: &Audience, token: String| {
        let a = &a;
        let audience = audience.clone();
        async move {
            a.authenticate(Some(&Secret::new(token)), None, Some(&audience))
                .await
                .map_err(|d| d.message)
        }
    };
    let mut for_mcp = idp.claims("alice");
    for_mcp["aud"] = json!("https://gw.example/mcp");
    // Issued for the resource: accepted there, and not at the gateway's own audience.
    let id = at(&mcp, sign(&k, &for_mcp))
        .await
        .expect("token for the resource");
    assert_eq!(id.subject, "alice");
    let e = auth(&a, &sign(&k, &for_mcp))
        .await
        .expect_err("not for querygate");
    assert!(e.contains("audience"), "{e}");
    // Issued for the gateway (or anyone else): refused at the resource, saying for what.
    let e = at(&mcp, sign(&k, &idp.claims("alice")))
        .await
        .expect_err("token for another audience");
    assert!(
        e.contains("audience") && e.contains("https://gw.example/mcp"),
        "{e}"
    );
    // From a trusted issuer the resource does not name: refused before any key is fetched.
    let elsewhere = Audience {
        issuers: vec!["https://other-idp.example".into()],
        ..mcp.clone()
    };
    let e = at(&elsewhere, sign(&k, &for_mcp))
        .await
        .expect_err("issuer");
    assert!(
        e.contains("does not issue tokens for https://gw.example/mcp"),
        "{e}"
    );
    // Expired is expired.
    let mut old = for_mcp.clone();
    old["exp"] = json!(jsonwebtoken::get_current_timestamp() - 600);
    let e = at(&mcp, sign(&k, &old)).await.expect_err("expired");
    assert!(e.contains("expired"), "{e}");
}
