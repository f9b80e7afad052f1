//! The upstream credential end to end: the gateway signs a JWT bearer grant with its
//! service-account key (checked here with the key's public half by a stand-in for Google's
//! token endpoint), and for some identities impersonates a narrower service account through
//! a stand-in for the IAM Credentials API. Nothing an agent receives — bodies, errors, job
//! resources, headers — ever holds an upstream token or the key.
//!
//! Google's endpoints cannot run here; the stand-ins are recording servers started by the test.

mod support;

use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use serde_json::{Value, json};
use support::*;

const GATEWAY_TOKEN: &str = "ya29.gateway-own-token";
const FINANCE_TOKEN: &str = "ya29.finance-reader-token";

#[tokio::test]
async fn tokens_are_minted_signed_and_narrowed_per_group_and_never_reach_the_agent() {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
    let public_pem = key.public_key_pem();
    let token_port = free_port();
    let token_uri = format!("http://127.0.0.1:{token_port}/token");
    let expected_aud = token_uri.clone();
    // The stand-in for oauth2.googleapis.com: answers only a grant signed with the key.
    let token = Recorder::start_on(token_port, move |r| {
        let form = String::from_utf8_lossy(&r.body).into_owned();
        let Some(assertion) = form.split('&').find_map(|p| p.strip_prefix("assertion=")) else {
            return (400, r#"{"error":"invalid_request"}"#.into());
        };
        // gcp_auth pads the signature's base64 (form-encoded as %3D); Google accepts that.
        let assertion = assertion.replace("%3D", "=");
        let assertion = assertion.trim_end_matches('=');
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[expected_aud.as_str()]);
        v.set_issuer(&["querygate@test-project.iam.gserviceaccount.com"]);
        let Ok(decoding) = DecodingKey::from_rsa_pem(public_pem.as_bytes()) else {
            return (500, "{}".into());
        };
        match decode::<Value>(assertion, &decoding, &v) {
            Ok(_) => (
                200,
                json!({"access_token": GATEWAY_TOKEN, "expires_in": 3600, "token_type": "Bearer"})
                    .to_string(),
            ),
            Err(e) => (
                400,
                json!({"error": "invalid_grant", "error_description": e.to_string()}).to_string(),
            ),
        }
    })
    .await;
    // The stand-in for iamcredentials.googleapis.com: mints only for the gateway's own token.
    let iam = Recorder::start(|r| {
        let authorized = r.headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {GATEWAY_TOKEN}"));
        if authorized
            && r.uri.ends_with(
                "/v1/projects/-/serviceAccounts/finance-reader@test-project.iam.gserviceaccount.com:generateAccessToken",
            )
        {
            (
                200,
                json!({"accessToken": FINANCE_TOKEN, "expireTime": "2099-01-01T00:00:00Z"})
                    .to_string(),
            )
        } else {
            (403, r#"{"error":{"code":403,"message":"denied"}}"#.into())
        }
    })
    .await;
    // The upstream echoes nothing secret but records which token each call carried; its job
    // resources and errors are what an agent would see.
    let upstream = Recorder::start(|r| {
        if r.uri.contains("/tables/missing") {
            return (404, json!({"error": {"code": 404, "message": "Not found: Table test-project:shop.missing", "errors": [{"reason": "notFound", "message": "Not found: Table test-project:shop.missing"}], "status": "NOT_FOUND"}}).to_string());
        }
        if r.uri.contains("/jobs") {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            return (200, json!({"kind": "bigquery#job", "jobReference": body["jobReference"], "configuration": body["configuration"], "status": {"state": "DONE"}, "user_email": "querygate@test-project.iam.gserviceaccount.com"}).to_string());
        }
        (200, query_response("job-id", 2))
    })
    .await;
    let dir = TempDir::new("sa-key");
    let sa_path = dir.0.join("sa.json");
    std::fs::write(
        &sa_path,
        json!({
            "type": "service_account", "project_id": "test-project", "private_key_id": "kid-1",
            "private_key": key.serialize_pem(), "client_email": "querygate@test-project.iam.gserviceaccount.com",
            "client_id": "1", "token_uri": token_uri,
        })
        .to_string(),
    )
    .expect("write key");
    let finance_key = "qg_finance_agent_key";
    let sources = format!(
        "{}{}iam_endpoint = \"{}\"\n\n\
         [[sources.impersonate]]\nwho = [\"group:finance\"]\nservice_account = \"finance-reader@test-project.iam.gserviceaccount.com\"\n",
        api_key("agent:finance-bot", &["finance"], finance_key),
        bigquery_source(
            &upstream.url(),
            &format!(
                "{{ service_account_key = {:?} }}",
                sa_path.display().to_string()
            )
        ),
        iam.url()
    );
    let g = Gateway::start("impersonate", "", &sources).await;

    let client = reqwest::Client::new();
    let mut seen_by_agents = String::new();
    for (n, key) in [KEY, finance_key, KEY, finance_key].into_iter().enumerate() {
        let job = json!({"jobReference": {"projectId": "test-project", "jobId": format!("job-{n}")},
                         "configuration": {"query": {"query": "SELECT 2", "useLegacySql": false}}});
        for (method, path, body) in [
            (
                "POST",
                "queries",
                Some(json!({"query": "SELECT 1", "useLegacySql": false})),
            ),
            ("POST", "jobs", Some(job)),
            ("GET", "datasets/shop/tables/missing", None),
        ] {
            let url = format!("{}/bigquery/v2/projects/test-project/{path}", g.url());
            let req = if method == "POST" {
                client.post(url).json(&body)
            } else {
                client.get(url)
            };
            let resp = req.bearer_auth(key).send().await.expect("send");
            seen_by_agents.push_str(&format!("{:?}", resp.headers()));
            seen_by_agents.push_str(&resp.text().await.expect("body"));
        }
    }
    let tokens: Vec<String> = upstream
        .requests()
        .iter()
        .map(|r| {
            r.headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        })
        .collect();
    assert_eq!(
        tokens.len(),
        12,
        "every request reached the upstream: {seen_by_agents:.600}"
    );
    for (i, t) in tokens.iter().enumerate() {
        let want = if (i / 3) % 2 == 0 {
            GATEWAY_TOKEN
        } else {
            FINANCE_TOKEN
        };
        assert_eq!(t, &format!("Bearer {want}"), "call {i}");
    }
    assert_eq!(token.requests().len(), 1, "the gateway's token is cached");
    assert_eq!(iam.requests().len(), 1, "the impersonated token is cached");
    for secret in [
        GATEWAY_TOKEN,
        FINANCE_TOKEN,
        "ya29.",
        "PRIVATE KEY",
        "finance-reader@",
    ] {
        assert!(!seen_by_agents.contains(secret), "an agent saw {secret}");
        assert!(
            !g.log().contains(secret) || secret == "finance-reader@",
            "the log holds {secret}"
        );
    }
}
