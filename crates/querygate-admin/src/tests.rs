//! Unit tests of the admin front: `decode` and `render` by tables of inputs and answers. The
//! routes against a running gateway are in `crates/querygate/tests` (approvals.rs, sessions.rs).

use std::time::Duration;

use axum::extract::Path;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use querygate_core::{Denial, DenialKind, Fault, FaultCause, TicketState};
use querygate_pipeline::SessionSummary;
use serde_json::{Value, json};

use crate::decode::{
    self, BadCredential, BadRequest, MAX_LIMIT, MAX_REASON_CHARS, body, check_reason, window,
};
use crate::model::{ApproveBody, DenyBody};
use crate::render;

#[test]
fn filters_refuse_what_they_do_not_know() {
    let filter = decode::ticket_filter;
    let f =
        filter("state=pending&source=analytics&requester=agent%3Atest&limit=5").expect("filter");
    assert_eq!(f.state, Some(TicketState::Pending));
    assert_eq!(f.source.as_deref(), Some("analytics"));
    assert_eq!(f.requester.as_deref(), Some("agent:test"));
    assert_eq!(f.limit, Some(5));
    let e = filter("state=waiting")
        .expect_err("unknown state")
        .to_string();
    assert!(e.contains("\"waiting\"") && e.contains("pending"), "{e}");
    assert!(filter("limit=0").is_err());
    assert!(filter("limit=ten").is_err());
    let e = filter("stat=pending").expect_err("typo").to_string();
    assert!(e.contains("\"stat\""), "{e}");
    assert!(filter("").is_ok());
    assert!(filter("state=").expect("empty").state.is_none());
}

#[test]
fn bodies_and_windows_are_checked() {
    let b: ApproveBody = body(b"", "{}").expect("empty");
    assert!(b.window.is_none() && b.reason.is_none());
    let b: ApproveBody = body(br#"{"for": "1h", "reason": "ok"}"#, "{}").expect("body");
    assert_eq!(
        window(b.window.as_deref()),
        Ok(Some(Duration::from_secs(3600)))
    );
    let e = body::<ApproveBody>(br#"{"window": "1h"}"#, "{}")
        .expect_err("unknown field")
        .to_string();
    assert!(e.contains("window"), "{e}");
    assert!(body::<DenyBody>(b"{not json", "{}").is_err());
    assert!(window(Some("soon")).is_err());
    assert!(window(Some("0s")).is_err());
    assert_eq!(check_reason(Some("  ".into())), Ok(None));
    assert!(check_reason(Some("x".repeat(MAX_REASON_CHARS + 1))).is_err());
}

#[test]
fn list_queries_decode_or_say_what_is_wrong() {
    let unknown = |p: &str| BadRequest::UnknownTicketParameter(p.into());
    type Tickets<'a> = Result<(Option<TicketState>, Option<&'a str>, Option<usize>), BadRequest>;
    let cases: &[(&str, Tickets)] = &[
        ("", Ok((None, None, None))),
        ("state=denied", Ok((Some(TicketState::Denied), None, None))),
        (
            "state=%20expired%20",
            Ok((Some(TicketState::Expired), None, None)),
        ),
        ("source=sales&state=", Ok((None, Some("sales"), None))),
        ("limit=1000", Ok((None, None, Some(MAX_LIMIT)))),
        ("limit=1001", Err(BadRequest::Limit("1001".into()))),
        ("limit=-1", Err(BadRequest::Limit("-1".into()))),
        (
            "state=Pending",
            Err(BadRequest::UnknownState("Pending".into())),
        ),
        ("identity=agent%3Ax", Err(unknown("identity"))),
        ("limit=5&order=asc", Err(unknown("order"))),
    ];
    for (query, expected) in cases {
        let got = decode::ticket_filter(query).map(|f| (f.state, f.source, f.limit));
        let expected = expected
            .clone()
            .map(|(state, source, limit)| (state, source.map(str::to_string), limit));
        assert_eq!(got, expected, "{query}");
    }
    assert_eq!(
        BadRequest::Limit("0".into()).to_string(),
        "limit \"0\" must be a whole number from 1 to 1000"
    );

    let now = time::macros::datetime!(2026-11-27 10:00:00 UTC);
    let unknown = |p: &str| BadRequest::UnknownSessionParameter(p.into());
    type Sessions<'a> = Result<(Option<&'a str>, Option<&'a str>, Option<usize>), BadRequest>;
    let cases: &[(&str, Sessions)] = &[
        ("", Ok((None, None, None))),
        (
            "identity=agent%3Ax&limit=3",
            Ok((Some("agent:x"), None, Some(3))),
        ),
        (
            "since=15m",
            Ok((None, Some("2026-11-27T09:45:00.000000Z"), None)),
        ),
        (
            "since=2026-11-01T00:00:00Z",
            Ok((None, Some("2026-11-01T00:00:00.000000Z"), None)),
        ),
        ("limit=0", Err(BadRequest::Limit("0".into()))),
        ("state=pending", Err(unknown("state"))),
    ];
    for (query, expected) in cases {
        let got = decode::session_filter(query, now).map(|f| (f.identity, f.since, f.limit));
        let expected = expected.clone().map(|(identity, since, limit)| {
            (
                identity.map(str::to_string),
                since.map(str::to_string),
                limit,
            )
        });
        assert_eq!(got, expected, "{query}");
    }
    let e = decode::session_filter("since=yesterday", now)
        .expect_err("not a time")
        .to_string();
    assert!(
        e.starts_with("since: ") && e.contains("\"yesterday\""),
        "{e}"
    );
    let e = decode::session_filter("since=99999999999d", now)
        .expect_err("before any date")
        .to_string();
    assert!(
        e.starts_with("since: ") && e.contains("too far back"),
        "{e}"
    );
}

#[test]
fn credentials_are_bearer_keys() {
    let cases: &[(Option<&str>, Result<&str, BadCredential>)] = &[
        (Some("Bearer qg_key"), Ok("qg_key")),
        (Some("bearer  qg_key "), Ok("qg_key")),
        (Some("BEARER qg_key"), Ok("qg_key")),
        (None, Err(BadCredential::Missing)),
        (Some("qg_key"), Err(BadCredential::NotBearer)),
        (Some("Basic dXNlcjpwdw=="), Err(BadCredential::NotBearer)),
        (Some("Bearer "), Err(BadCredential::NotBearer)),
        (Some("Bearer    "), Err(BadCredential::NotBearer)),
    ];
    for (header, expected) in cases {
        let value = header.map(|h| HeaderValue::from_str(h).expect("header"));
        let got = decode::bearer(value.as_ref());
        assert_eq!(
            got.as_ref().map(|s| s.expose()),
            expected.as_ref().map(|s| *s),
            "{header:?}"
        );
    }
    let opaque = HeaderValue::from_bytes(b"Bearer \xff").expect("header");
    assert_eq!(
        decode::bearer(Some(&opaque)).map(|s| s.expose().to_string()),
        Err(BadCredential::NotBearer)
    );
    assert!(!BadCredential::Missing.presented());
    assert!(BadCredential::NotBearer.presented());
    for bad in [BadCredential::Missing, BadCredential::NotBearer] {
        assert!(bad.to_string().contains("Bearer <key>"), "{bad}");
    }
}

#[test]
fn decisions_decode_from_bodies() {
    type Expected = Result<(Option<u64>, Option<&'static str>), BadRequest>;
    let too_long = "x".repeat(MAX_REASON_CHARS + 1);
    let too_long_body = format!(r#"{{"reason": "{too_long}"}}"#);
    let approvals: &[(&[u8], Expected)] = &[
        (b"", Ok((None, None))),
        (b" \n", Ok((None, None))),
        (b"{}", Ok((None, None))),
        (
            br#"{"reason": " looks fine "}"#,
            Ok((None, Some("looks fine"))),
        ),
        (br#"{"for": "30m", "reason": ""}"#, Ok((Some(1800), None))),
        (br#"{"for": "0s"}"#, Err(BadRequest::EmptyWindow)),
        (
            too_long_body.as_bytes(),
            Err(BadRequest::ReasonTooLong(MAX_REASON_CHARS + 1)),
        ),
    ];
    for (bytes, expected) in approvals {
        let got = decode::approval(bytes).map(|d| {
            assert!(d.approve);
            (d.window.map(|w| w.as_secs()), d.reason)
        });
        let expected = expected.clone().map(|(w, r)| (w, r.map(str::to_string)));
        assert_eq!(got, expected, "{}", String::from_utf8_lossy(bytes));
    }
    let denials: &[(&[u8], Expected)] = &[
        (b"", Ok((None, None))),
        (
            br#"{"reason": "not this table"}"#,
            Ok((None, Some("not this table"))),
        ),
    ];
    for (bytes, expected) in denials {
        let got = decode::denial(bytes).map(|d| {
            assert!(!d.approve);
            (d.window.map(|w| w.as_secs()), d.reason)
        });
        let expected = expected.clone().map(|(w, r)| (w, r.map(str::to_string)));
        assert_eq!(got, expected, "{}", String::from_utf8_lossy(bytes));
    }
    // What each refusal says: the field, an example, what to do.
    let refused: &[(Result<_, BadRequest>, &[&str])] = &[
        (decode::approval(br#"{"for": "soon"}"#), &["\"for\": "]),
        (
            decode::approval(b"[1]"),
            &[r#"like {"for": "1h", "reason": "…"}"#],
        ),
        (
            decode::denial(br#"{"reason": "x", "for": "1h"}"#),
            &[r#"like {"reason": "…"}"#, "unknown field `for`"],
        ),
        (
            decode::approval(br#"{"for": "0s"}"#),
            &["leave \"for\" out"],
        ),
        (
            decode::denial(too_long_body.as_bytes()),
            &["2001 characters", "under 2000"],
        ),
    ];
    for (got, needles) in refused {
        let e = got.as_ref().map(|_| ()).expect_err("refused").to_string();
        for needle in *needles {
            assert!(e.contains(needle), "{e:?} lacks {needle:?}");
        }
    }
}

#[test]
fn ids_must_not_be_empty() {
    assert_eq!(decode::ticket_id(Ok(Path("t-1".into()))), Ok("t-1".into()));
    assert_eq!(decode::session_id(Ok(Path("s-1".into()))), Ok("s-1".into()));
    assert_eq!(
        decode::ticket_id(Ok(Path(" ".into()))),
        Err(BadRequest::EmptyId("ticket"))
    );
    assert_eq!(
        decode::session_id(Ok(Path(String::new()))),
        Err(BadRequest::EmptyId("session"))
    );
    assert_eq!(
        BadRequest::EmptyId("session").to_string(),
        "the session id is empty"
    );
}

/// A response's status, its `WWW-Authenticate`, and its body as JSON.
async fn read(response: Response) -> (StatusCode, Option<String>, Value) {
    let status = response.status();
    let challenge = response
        .headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().expect("ascii").to_string());
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, challenge, body)
}

#[tokio::test]
async fn denials_render_with_their_status() {
    let cases = [
        (DenialKind::Unauthenticated, 401),
        (DenialKind::Forbidden, 403),
        (DenialKind::NotFound, 404),
        (DenialKind::Invalid, 400),
        (DenialKind::TooLarge, 413),
        (DenialKind::Conflict, 409),
        (DenialKind::Unavailable, 503),
    ];
    for (kind, code) in cases {
        let (status, challenge, body) =
            read(render::denial(&Denial::new(kind, "why and what to do"))).await;
        assert_eq!(status.as_u16(), code, "{kind:?}");
        assert_eq!(
            body,
            json!({ "error": { "code": code, "message": "why and what to do" } }),
            "{kind:?}"
        );
        assert_eq!(
            challenge.as_deref(),
            (code == 401).then_some("Bearer realm=\"querygate-admin\""),
            "{kind:?}"
        );
    }
}

#[tokio::test]
async fn front_refusals_render_with_their_status() {
    let fault = Fault {
        cause: FaultCause::Gateway,
        retryable: true,
        message: "disk I/O error".into(),
    };
    let cases: Vec<(&str, Response, u16, &str)> = vec![
        (
            "no credential",
            render::bad_credential(BadCredential::Missing),
            401,
            "missing credential",
        ),
        (
            "not bearer",
            render::bad_credential(BadCredential::NotBearer),
            401,
            "is not `Bearer <key>`",
        ),
        (
            "bad input",
            render::bad_request(&BadRequest::UnknownState("waiting".into())),
            400,
            "unknown state \"waiting\"",
        ),
        (
            "store down",
            render::tickets_unavailable(&fault),
            503,
            "cannot read its tickets now: disk I/O error",
        ),
        (
            "unknown path",
            render::no_such_endpoint(&Method::GET, "/api/v2/tickets"),
            404,
            "no such endpoint: GET /api/v2/tickets; the admin API serves /api/v1/tickets",
        ),
        (
            "wrong method",
            render::method_not_allowed(&Method::DELETE, "/api/v1/tickets/t-1"),
            405,
            "DELETE is not served on /api/v1/tickets/t-1",
        ),
    ];
    for (name, response, code, message) in cases {
        let (status, challenge, body) = read(response).await;
        assert_eq!(status.as_u16(), code, "{name}");
        assert_eq!(body["error"]["code"], json!(code), "{name}");
        let text = body["error"]["message"].as_str().expect("message");
        assert!(text.contains(message), "{name}: {text}");
        assert_eq!(challenge.is_some(), code == 401, "{name}");
    }
}

#[tokio::test]
async fn lists_and_sessions_render_as_json() {
    let summary = SessionSummary {
        id: "s-1".into(),
        identities: vec!["agent:x".into()],
        first_time: "2026-11-27T10:00:00.000000Z".into(),
        last_time: "2026-11-27T10:05:00.000000Z".into(),
        requests: 2,
        events: 8,
        segments: 1,
        raw_bytes: 900,
        stored_bytes: 300,
    };
    let cases = [
        (render::tickets(&[]), json!({ "tickets": [] })),
        (
            render::sessions(std::slice::from_ref(&summary)),
            json!({ "sessions": [serde_json::to_value(&summary).expect("summary")] }),
        ),
        (
            render::session(&summary, &[]),
            json!({ "session": serde_json::to_value(&summary).expect("summary"), "events": [] }),
        ),
        (render::healthy(), json!("ok")),
    ];
    for (response, expected) in cases {
        let (status, challenge, body) = read(response).await;
        assert_eq!((status, challenge, body), (StatusCode::OK, None, expected));
    }
}
