//! Identity through the gateway binary with a real OpenID provider (`oidc-provider` from
//! npm, tests/oidc/server.js) on 127.0.0.1: agents with client-credentials tokens, people
//! through authorization code + PKCE, an agent acting for a person (RFC 8693 `act` and the
//! `x-querygate-on-behalf-of` delegation header) matched by `on_behalf_of` rules; forged
//! and stale tokens refused as `403 authError` (not 401: see the BigQuery front's render)
//! and audited; key rotation at the provider while the gateway runs; stored API keys
//! revoked and expiring without a restart. Needs Node (tests/oidc/setup.sh installs the
//! provider; it is run from here when needed).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Once;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::{Value, json};
use support::*;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("repo root")
        .to_path_buf()
}

static SETUP: Once = Once::new();

/// The test OpenID provider, killed on drop.
struct Idp {
    issuer: String,
    keys: TempDir,
    child: Child,
}

impl Idp {
    fn start() -> Idp {
        SETUP.call_once(|| {
            let status = Command::new("bash")
                .arg(repo().join("tests/oidc/setup.sh"))
                .status()
                .expect("run tests/oidc/setup.sh (needs bash, node, npm)");
            assert!(status.success(), "tests/oidc/setup.sh failed");
        });
        let keys = TempDir::new("idp-keys");
        let mut child = Command::new("node")
            .arg(repo().join("tests/oidc/server.js"))
            .arg("--keys-dir")
            .arg(&keys.0)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node tests/oidc/server.js");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("ready line");
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("the provider did not start ({e}): {line:?}"));
        Idp {
            issuer: ready["issuer"].as_str().expect("issuer").to_string(),
            keys,
            child,
        }
    }

    fn client(&self, args: &[&str]) -> String {
        let out = Command::new("node")
            .arg(repo().join("tests/oidc/client.js"))
            .arg(args[0])
            .arg(&self.issuer)
            .args(&args[1..])
            .output()
            .expect("node client.js");
        assert!(
            out.status.success(),
            "client.js {}: {}",
            args[0],
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// A client-credentials token of the agent `claude-code` (groups: agents).
    fn agent(&self) -> String {
        self.client(&["agent", "claude-code", "agent-secret"])
    }

    /// A person's token through authorization code + PKCE.
    fn login(&self, user: &str) -> String {
        self.client(&["login", user, &format!("{user}-pw")])
    }

    /// The agent's token for `person_token`'s subject (RFC 8693, with `act`).
    fn exchange(&self, person_token: &str) -> String {
        self.client(&["exchange", "claude-code", "agent-secret", person_token])
    }

    /// The provider's test controls: `rotate`, `down`, `up`.
    async fn control(&self, what: &str) -> Value {
        reqwest::Client::new()
            .post(format!("{}/__test/{what}", self.issuer))
            .send()
            .await
            .expect("control")
            .json()
            .await
            .expect("control answer")
    }

    fn signing_key(&self) -> (EncodingKey, String) {
        let pem = std::fs::read(self.keys.0.join("signing-key.pem")).expect("signing key");
        let kid = std::fs::read_to_string(self.keys.0.join("kid.txt")).expect("kid");
        (EncodingKey::from_rsa_pem(&pem).expect("rsa pem"), kid)
    }

    fn public_pem(&self) -> Vec<u8> {
        std::fs::read(self.keys.0.join("public-key.pem")).expect("public key")
    }

    /// Claims as the provider would issue them for `sub`.
    fn claims(&self, sub: &str, groups: &[&str], kind: &str) -> Value {
        let now = jsonwebtoken::get_current_timestamp();
        json!({
            "iss": self.issuer, "sub": sub, "aud": "querygate", "iat": now, "exp": now + 300,
            "groups": groups, "kind": kind, "client_id": "claude-code",
        })
    }

    /// Signs `claims` with the provider's own current key ("the IdP issued this").
    fn forge(&self, claims: &Value) -> String {
        let (key, kid) = self.signing_key();
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some(kid);
        encode(&h, claims, &key).expect("sign")
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn oidc_block(issuer: &str) -> String {
    format!(
        "[[oidc]]\nissuer = \"{issuer}\"\naudiences = [\"querygate\"]\ngroups_claim = \"groups\"\n\
         kind_claim = \"kind\"\nkind = \"human\"\nleeway = \"10s\"\njwks_min_interval = \"1s\"\n"
    )
}

/// The delegation rules, shared with tests/e2e/test_oidc.py.
const DELEGATION_RULES: &str = include_str!("../../../tests/oidc/rules.toml");

/// After the delegation rules: this file's own, for the test key and CI identities.
const RULES: &str = r#"
[[rule]]
name = "test key reads"
who = ["identity:agent:test", "identity:ci:*"]
statements = ["select"]
action = "allow"
"#;

async fn gateway(name: &str, issuers: &[&str], upstream: &Recorder) -> Gateway {
    let blocks: String = issuers.iter().map(|i| oidc_block(i)).collect();
    Gateway::start(
        name,
        "",
        &format!(
            "{}\n{blocks}\n{DELEGATION_RULES}{RULES}",
            bigquery_source(&upstream.url(), "\"none\"")
        ),
    )
    .await
}

async fn query(g: &Gateway, token: &str, on_behalf_of: Option<&str>) -> (u16, Value) {
    let mut r = reqwest::Client::new()
        .post(format!(
            "{}/bigquery/v2/projects/test-project/queries",
            g.url()
        ))
        .timeout(Duration::from_secs(20))
        .header("authorization", format!("Bearer {token}"))
        .json(&json!({"query": "SELECT 1", "useLegacySql": false}));
    if let Some(t) = on_behalf_of {
        r = r.header("x-querygate-on-behalf-of", t);
    }
    let resp = r.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn reason(body: &Value) -> (&str, &str) {
    (
        body["error"]["errors"][0]["reason"].as_str().unwrap_or(""),
        body["error"]["message"].as_str().unwrap_or(""),
    )
}

/// The last `decided` record.
fn last_decided(g: &Gateway) -> Value {
    g.audit()
        .into_iter()
        .rev()
        .find(|r| r["phase"] == "decided")
        .expect("a decided record")
}

#[tokio::test]
async fn agents_and_people_authenticate_with_provider_tokens_and_rules_see_whom_an_agent_acts_for()
{
    let idp = Idp::start();
    let jobs = std::sync::atomic::AtomicUsize::new(0);
    let upstream = Recorder::start(move |_| {
        let n = jobs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        (200, query_response(&format!("job-{n}"), 1))
    })
    .await;
    let g = gateway("oidc-flows", &[&idp.issuer], &upstream).await;
    let auth = format!("oidc:{}", idp.issuer);

    // A person, logged in through authorization code + PKCE: groups from the token.
    let alice = idp.login("alice");
    let (status, body) = query(&g, &alice, None).await;
    assert_eq!(status, 200, "{body}");
    let r = last_decided(&g);
    assert_eq!(
        (&r["identity"], &r["kind"], &r["auth"], &r["rule"]),
        (
            &json!("alice"),
            &json!("human"),
            &json!(auth),
            &json!("engineers read")
        )
    );
    assert_eq!(r["groups"], json!(["engineers"]));
    assert_eq!(r["acting_for"], Value::Null);

    // The agent alone (client credentials) matches no rule: on_behalf_of rules need someone.
    let agent = idp.agent();
    let (status, body) = query(&g, &agent, None).await;
    assert_eq!(status, 403, "{body}");
    let (why, message) = reason(&body);
    assert_eq!(why, "accessDenied");
    assert!(
        message.contains("no policy rule allows SELECT statements for claude-code on"),
        "{message}"
    );
    assert_eq!(last_decided(&g)["kind"], "agent");

    // The agent acting for alice through the delegation header.
    let (status, body) = query(&g, &agent, Some(&alice)).await;
    assert_eq!(status, 200, "{body}");
    let job = body["jobReference"]["jobId"]
        .as_str()
        .expect("job id")
        .to_string();
    let r = last_decided(&g);
    assert_eq!(r["identity"], "claude-code");
    assert_eq!(r["groups"], json!(["agents"]));
    assert_eq!(r["kind"], "agent");
    assert_eq!(r["acting_for"], "alice");
    assert_eq!(r["acting_for_groups"], json!(["engineers"]));
    assert_eq!(r["rule"], "agents for engineers");

    // The job it ran for alice is hers: readable by the agent acting for her (either way),
    // not by the agent alone or acting for someone else.
    let read_job = |token: String, delegation: Option<String>| {
        let url = format!(
            "{}/bigquery/v2/projects/test-project/queries/{job}",
            g.url()
        );
        async move {
            let mut r = reqwest::Client::new().get(url).bearer_auth(token);
            if let Some(d) = delegation {
                r = r.header("x-querygate-on-behalf-of", d);
            }
            r.send().await.expect("send").status().as_u16()
        }
    };
    assert_eq!(read_job(agent.clone(), Some(alice.clone())).await, 200);
    assert_eq!(read_job(idp.exchange(&alice), None).await, 200);
    assert_eq!(read_job(agent.clone(), None).await, 404);
    assert_eq!(read_job(agent.clone(), Some(idp.login("bob"))).await, 404);
    assert_eq!(read_job(alice.clone(), None).await, 404);

    // The same through token exchange: the token's `act` names the agent.
    let exchanged = idp.exchange(&alice);
    let (status, body) = query(&g, &exchanged, None).await;
    assert_eq!(status, 200, "{body}");
    let r = last_decided(&g);
    assert_eq!(
        (&r["identity"], &r["acting_for"], &r["rule"]),
        (
            &json!("claude-code"),
            &json!("alice"),
            &json!("agents for engineers")
        )
    );

    // Acting for a contractor: the deny rule says why; bob alone has no rule at all.
    let bob = idp.login("bob");
    for token in [idp.exchange(&bob), agent.clone()] {
        let delegation = (token == agent).then_some(bob.as_str());
        let (status, body) = query(&g, &token, delegation).await;
        assert_eq!(status, 403, "{body}");
        let (why, message) = reason(&body);
        assert_eq!(why, "accessDenied");
        assert!(
            message.contains("agents may not act for contractors"),
            "{message}"
        );
        assert_eq!(last_decided(&g)["acting_for"], "bob");
    }
    let (status, _) = query(&g, &bob, None).await;
    assert_eq!(status, 403);

    // A bad delegation token refuses the request as an authentication error.
    let (status, body) = query(&g, &agent, Some("garbage.garbage.garbage")).await;
    assert_eq!(status, 403);
    let (why, message) = reason(&body);
    assert_eq!(why, "authError");
    assert!(message.contains("x-querygate-on-behalf-of"), "{message}");

    // Nothing the clients sent as credentials reached the upstream.
    for seen in upstream.requests() {
        let all = format!(
            "{} {:?} {}",
            seen.uri,
            seen.headers,
            String::from_utf8_lossy(&seen.body)
        );
        for token in [&alice, &agent, &exchanged, &bob] {
            let signature = token.rsplit('.').next().unwrap_or_default();
            assert!(
                !all.contains(signature),
                "a token reached the upstream: {all}"
            );
        }
        assert!(!all.to_ascii_lowercase().contains("on-behalf-of"), "{all}");
    }
    // Nor the audit log, nor the gateway's own log.
    let audit = serde_json::to_string(&g.audit()).expect("json");
    let log = g.log();
    for token in [&alice, &agent, &exchanged, &bob] {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(!audit.contains(signature) && !log.contains(signature));
    }
}

#[tokio::test]
async fn forged_stale_and_foreign_tokens_are_refused_as_auth_errors_and_audited() {
    let idp = Idp::start();
    let other = Idp::start();
    let upstream = Recorder::start(|_| (200, query_response("job-1", 1))).await;
    // Both issuers are trusted: issuer B's keys must still not vouch for issuer A's tokens.
    let g = gateway("oidc-attacks", &[&idp.issuer, &other.issuer], &upstream).await;
    let now = jsonwebtoken::get_current_timestamp();
    let good = idp.claims("alice", &["engineers"], "human");
    let (status, body) = query(&g, &idp.forge(&good), None).await;
    assert_eq!(status, 200, "the provider's own key, honest claims: {body}");

    let b64 = |v: &Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = good.clone();
        f(&mut c);
        c
    };
    let real = idp.agent();
    let parts: Vec<&str> = real.split('.').collect();
    let (b_key, b_kid) = other.signing_key();
    let attacks: Vec<(&str, String, &str)> = vec![
        (
            "alg none",
            format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&good)
            ),
            "alg \"none\"",
        ),
        (
            "HS256 keyed with the provider's RSA public key",
            {
                let (_, kid) = idp.signing_key();
                let mut h = Header::new(Algorithm::HS256);
                h.kid = Some(kid);
                encode(&h, &good, &EncodingKey::from_secret(&idp.public_pem())).expect("hs256")
            },
            "shared secret",
        ),
        (
            "unknown kid",
            {
                let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("key");
                let key = EncodingKey::from_rsa_pem(pair.serialize_pem().as_bytes()).expect("pem");
                let mut h = Header::new(Algorithm::RS256);
                h.kid = Some("attacker-key-1".into());
                encode(&h, &good, &key).expect("sign")
            },
            "not one of issuer",
        ),
        (
            "expired",
            idp.forge(&with(&|c| {
                c["iat"] = json!(now - 7200);
                c["exp"] = json!(now - 3600);
            })),
            "expired at",
        ),
        (
            "wrong audience",
            idp.forge(&with(&|c| c["aud"] = json!("some-other-service"))),
            "audience",
        ),
        (
            "wrong issuer",
            idp.forge(&with(&|c| c["iss"] = json!("https://login.evil.example"))),
            "not one this gateway trusts",
        ),
        (
            "issuer A's token with issuer B's kid, signed by B",
            {
                let mut h = Header::new(Algorithm::RS256);
                h.kid = Some(b_kid.clone());
                encode(&h, &good, &b_key).expect("sign")
            },
            "not one of issuer",
        ),
        (
            "issuer A's token signed by A, naming B's kid",
            {
                let (a_key, _) = idp.signing_key();
                let mut h = Header::new(Algorithm::RS256);
                h.kid = Some(b_kid.clone());
                encode(&h, &good, &a_key).expect("sign")
            },
            "not one of issuer",
        ),
        (
            "tampered payload (groups rewritten)",
            format!(
                "{}.{}.{}",
                parts[0],
                b64(&json!({
                    "iss": idp.issuer, "sub": "claude-code", "aud": "querygate",
                    "iat": now, "exp": now + 300, "groups": ["engineers"], "kind": "human"
                })),
                parts[2]
            ),
            "does not verify",
        ),
        (
            "issued far in the future",
            idp.forge(&with(&|c| {
                c["iat"] = json!(now + 30 * 86_400);
                c["exp"] = json!(now + 31 * 86_400);
            })),
            "in the future",
        ),
        (
            "not valid before next month",
            idp.forge(&with(&|c| c["nbf"] = json!(now + 30 * 86_400))),
            "not valid yet",
        ),
        (
            "a 100 KB token",
            format!("{}.{}.{}", parts[0], "A".repeat(100 * 1024), parts[2]),
            "more than the 16384",
        ),
        (
            // Read in full (the server accepts request heads up to 2 MiB) so that it is
            // refused in the client's format and audited, not cut off with a bare 431.
            "a 1 MB token",
            format!("{}.{}.{}", parts[0], "A".repeat(1 << 20), parts[2]),
            "more than the 16384",
        ),
        (
            "garbage",
            "not-a-token-at-all".into(),
            "not a querygate API key",
        ),
    ];
    for (name, token, expect) in &attacks {
        let (status, body) = query(&g, token, None).await;
        assert_eq!(status, 403, "{name}: {body}");
        let (why, message) = reason(&body);
        assert_eq!(why, "authError", "{name}: {body}");
        assert!(
            message.contains(expect),
            "{name}: expected {expect:?} in {message:?}"
        );
        let r = last_decided(&g);
        assert_eq!(
            (&r["identity"], &r["decision"]),
            (&json!("unauthenticated"), &json!("deny")),
            "{name}"
        );
        assert_eq!(r["reason"], json!(message), "{name}: the audit says why");
    }
    // Only the honest request went upstream.
    assert_eq!(upstream.requests().len(), 1);

    let (status, _) = query(&g, &idp.forge(&good), None).await;
    assert_eq!(status, 200, "still serving");

    // No token text in the audit log or the gateway's log.
    let audit = serde_json::to_string(&g.audit()).expect("json");
    let log = g.log();
    for (name, token, _) in &attacks {
        for part in token.split('.').filter(|p| p.len() > 20) {
            let excerpt = &part[..20];
            assert!(
                !audit.contains(excerpt),
                "{name}: token text in the audit log"
            );
            assert!(
                !log.contains(excerpt),
                "{name}: token text in the gateway log"
            );
        }
    }
}

#[tokio::test]
async fn keys_rotated_at_the_provider_work_without_a_restart_and_an_outage_keeps_known_keys() {
    let idp = Idp::start();
    let upstream = Recorder::start(|_| (200, query_response("job-1", 1))).await;
    let g = gateway("oidc-rotation", &[&idp.issuer], &upstream).await;
    let before = idp.login("alice");
    assert_eq!(query(&g, &before, None).await.0, 200);

    let rotated = idp.control("rotate").await;
    let after = idp.login("alice");
    let kid = |t: &str| jsonwebtoken::decode_header(t).ok().and_then(|h| h.kid);
    assert_eq!(
        kid(&after).as_deref(),
        rotated["kid"].as_str(),
        "signed with the new key"
    );
    assert_ne!(kid(&after), kid(&before));
    // The new kid makes the gateway refetch the provider's keys, at most once per
    // jwks_min_interval (1 s here) since its last fetch.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, body) = query(&g, &after, None).await;
    assert_eq!(status, 200, "new key without restart: {body}");
    assert_eq!(
        query(&g, &before, None).await.0,
        200,
        "old key still published"
    );
    assert!(g.log().contains("fetched the issuer's signing keys"));

    // The provider goes down: tokens signed with known keys keep working.
    idp.control("down").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(query(&g, &after, None).await.0, 200);
    idp.control("rotate").await;
    let unknown = idp.login("alice");
    let (status, body) = query(&g, &unknown, None).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(reason(&body).0, "authError");
    idp.control("up").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(query(&g, &unknown, None).await.0, 200, "back up: refetched");
}

#[tokio::test]
async fn stored_api_keys_work_at_once_and_stop_at_once_when_revoked_or_expired() {
    let upstream = Recorder::start(|_| (200, query_response("job-1", 1))).await;
    let g = gateway("stored-keys", &[], &upstream).await;

    let new_key = |extra: &[&str]| {
        let mut args = vec![
            "keys",
            "new",
            "--store",
            "--identity",
            "ci:deploy",
            "--group",
            "ci",
        ];
        args.extend_from_slice(extra);
        let (code, out) = g.cli(&args);
        assert_eq!(code, 0, "{out}");
        out.lines()
            .find(|l| l.starts_with("qg_"))
            .expect("the key line")
            .to_string()
    };
    let key = new_key(&[]);
    let (status, body) = query(&g, &key, None).await;
    assert_eq!(status, 200, "a stored key works without a restart: {body}");
    let r = last_decided(&g);
    assert_eq!(
        (&r["identity"], &r["auth"], &r["kind"]),
        (&json!("ci:deploy"), &json!("api_key"), &json!("service"))
    );

    let (code, out) = g.cli(&["keys", "list"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ci:deploy") && out.contains("store") && out.contains("active"),
        "{out}"
    );
    assert!(!out.contains(&key), "keys list never prints a key");

    let (code, out) = g.cli(&["keys", "revoke", "ci:deploy"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("revoked"), "{out}");
    let (status, body) = query(&g, &key, None).await;
    assert_eq!(status, 403);
    let (why, message) = reason(&body);
    assert_eq!(why, "authError");
    assert!(message.contains("ci:deploy was revoked at"), "{message}");
    assert_eq!(last_decided(&g)["reason"], json!(message));

    let short = new_key(&["--expires", "2s"]);
    assert_eq!(query(&g, &short, None).await.0, 200);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = query(&g, &short, None).await;
    assert_eq!(status, 403);
    assert!(reason(&body).1.contains("expired at"), "{body}");

    // A config key cannot be revoked from the store: the command says where it is.
    let (code, out) = g.cli(&["keys", "revoke", "agent:test"]);
    assert_ne!(code, 0);
    assert!(out.contains("[[api_keys]]"), "{out}");
    let (code, out) = g.cli(&["keys", "revoke", "abc"]);
    assert_ne!(code, 0);
    assert!(out.contains("at least 8 hex digits"), "{out}");
    // Nothing of the keys reached the audit log.
    let audit = serde_json::to_string(&g.audit()).expect("json");
    assert!(!audit.contains(&key) && !audit.contains(&short));
}
