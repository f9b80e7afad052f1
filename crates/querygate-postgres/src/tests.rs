//! The front's pure parts: framing, opening packets, message decoding (total, exact,
//! no panics on any bytes), startup parameters, rows and their scrubbing.

use bytes::{BufMut, BytesMut};
use pgwire::messages::PgWireFrontendMessage;
use querygate_core::Malformed;
use querygate_pipeline::Reply;

use crate::decode::{self, Opening};
use crate::routes::startup_parameters;
use crate::source::PgReply;

pub(crate) fn typed(tag: u8, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(tag);
    out.put_i32(4 + body.len() as i32);
    out.put_slice(body);
    out
}

fn startup(code: i32, body: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_i32(8 + body.len() as i32);
    out.put_i32(code);
    out.put_slice(body);
    out
}

#[test]
fn frames_are_cut_by_their_length_and_bounded() {
    let mut buf = typed(b'Q', b"SELECT 1\0");
    buf.extend_from_slice(&typed(b'S', b"")[..3]);
    let frame = decode::frame(&mut buf, 1024).expect("read").expect("whole");
    assert_eq!(&frame[..], &typed(b'Q', b"SELECT 1\0")[..]);
    // The second is not all there yet.
    assert_eq!(decode::frame(&mut buf, 1024).expect("ok"), None);
    // A length under 4, and one over the limit, are refused before anything is buffered.
    let mut short = BytesMut::from(&[b'Q', 0, 0, 0, 3][..]);
    assert_eq!(
        decode::frame(&mut short, 1024).expect_err("refused").code,
        "08P01"
    );
    let mut huge = BytesMut::from(&[b'Q', 0x7f, 0xff, 0xff, 0xff][..]);
    let problem = decode::frame(&mut huge, 1 << 20).expect_err("refused");
    assert_eq!((problem.code, problem.kind), ("54000", Malformed::TooLarge));
}

#[test]
fn opening_packets_are_read_exactly() {
    let open = |b: BytesMut| {
        let mut b = b;
        decode::opening(decode::opening_frame(&mut b).expect("read").expect("whole"))
    };
    assert_eq!(open(startup(80_877_103, b"")).expect("ok"), Opening::Ssl);
    assert_eq!(open(startup(80_877_104, b"")).expect("ok"), Opening::Gss);
    let mut cancel = Vec::new();
    cancel.extend_from_slice(&7i32.to_be_bytes());
    cancel.extend_from_slice(&(-9i32).to_be_bytes());
    assert_eq!(
        open(startup(80_877_102, &cancel)).expect("ok"),
        Opening::Cancel { pid: 7, secret: -9 }
    );
    assert_eq!(
        open(startup(3 << 16, b"user\0agent\0database\0app\0\0")).expect("ok"),
        Opening::Startup {
            minor: 0,
            parameters: vec![
                ("user".into(), "agent".into()),
                ("database".into(), "app".into())
            ],
        }
    );
    // Unterminated, duplicated, trailing, not UTF-8, another protocol: refused.
    for bad in [
        startup(3 << 16, b"user\0agent"),
        startup(3 << 16, b"user\0a\0user\0b\0\0"),
        startup(3 << 16, b"user\0a\0\0junk"),
        startup(3 << 16, b"user\0\xff\0\0"),
        startup(2 << 16, b""),
        startup(80_877_103, b"x"),
        startup(80_877_102, b"1234"),
    ] {
        assert!(open(bad).is_err());
    }
    let mut tiny = BytesMut::from(&[0, 0, 0, 4, 0, 0][..]);
    assert!(decode::opening_frame(&mut tiny).is_err());
    let mut huge = BytesMut::from(&[0, 1, 0, 0][..]);
    assert!(decode::opening_frame(&mut huge).is_err());
}

#[test]
fn messages_decode_only_when_they_say_exactly_what_they_are() {
    match decode::message(&typed(b'Q', b"SELECT 1\0")).expect("ok") {
        PgWireFrontendMessage::Query(q) => assert_eq!(q.query, "SELECT 1"),
        m => panic!("{m:?}"),
    }
    assert!(matches!(
        decode::message(&typed(b'X', b"")).expect("ok"),
        PgWireFrontendMessage::Terminate(_)
    ));
    // Text that is not UTF-8 would be analyzed as something else than what runs.
    assert!(decode::message(&typed(b'Q', b"SELECT '\xff'\0")).is_err());
    // Bytes after the string: the server would read a different message.
    assert!(decode::message(&typed(b'Q', b"SELECT 1\0; DROP TABLE t\0")).is_err());
    // No terminator.
    assert!(decode::message(&typed(b'Q', b"SELECT 1")).is_err());
    // Short extended-query messages (pgwire would index past them).
    for tag in [b'P', b'B', b'E', b'D', b'C', b'f'] {
        assert!(
            decode::message(&typed(tag, b"")).is_err(),
            "{}",
            tag as char
        );
    }
    let fastpath = decode::message(&typed(b'F', b"\0\0\0\0")).expect_err("refused");
    assert_eq!(fastpath.code, "0A000");
    assert!(decode::message(&typed(b'?', b"")).is_err());
}

/// Any bytes at all: a message or a problem, never a panic.
#[test]
fn garbage_never_panics() {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let tags = b"QPBDECSHXdcfpF?\0";
    for _ in 0..20_000 {
        let len = (next() % 40) as usize;
        let body: Vec<u8> = (0..len)
            .map(|_| match next() % 4 {
                0 => 0,
                1 => 0xff,
                _ => next() as u8,
            })
            .collect();
        let tag = tags[(next() % tags.len() as u64) as usize];
        let _ = decode::message(&typed(tag, &body));
        let mut buf = BytesMut::from(&body[..]);
        if let Ok(Some(frame)) = decode::opening_frame(&mut buf) {
            let _ = decode::opening(frame);
        }
        let mut buf = BytesMut::from(&body[..]);
        let _ = decode::frame(&mut buf, 1 << 20);
    }
}

#[test]
fn startup_parameters_forward_a_short_list_and_pin_the_encoding_and_schema() {
    let p = |v: &[(&str, &str)]| {
        startup_parameters(
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    };
    let (s, declined) = p(&[
        ("user", "agent"),
        ("database", "app"),
        ("application_name", "psql"),
        ("client_encoding", "UTF8"),
        ("_pq_.x", "1"),
    ])
    .expect("ok");
    assert_eq!((s.database.as_str(), s.schema.as_str()), ("app", "public"));
    assert_eq!(declined, vec!["_pq_.x".to_string()]);
    assert!(
        s.parameters
            .contains(&("application_name".into(), "psql".into()))
    );
    assert!(
        s.parameters
            .contains(&("client_encoding".into(), "UTF8".into()))
    );
    assert!(
        s.parameters
            .contains(&("search_path".into(), "public".into()))
    );
    // dbname defaults to the user name, as libpq's does.
    assert_eq!(p(&[("user", "app")]).expect("ok").0.database, "app");
    let (s, _) = p(&[("user", "a"), ("search_path", "shop")]).expect("ok");
    assert_eq!(s.schema, "shop");
    for (bad, code) in [
        (vec![("user", "a"), ("options", "-c role=admin")], "08P01"),
        (vec![("user", "a"), ("replication", "database")], "08P01"),
        (vec![("user", "a"), ("client_encoding", "LATIN1")], "22023"),
        (vec![("user", "a"), ("search_path", "hr, public")], "0A000"),
        (vec![("database", "app")], "28000"),
    ] {
        let err = p(&bad).err().unwrap_or_else(|| panic!("{bad:?} accepted"));
        assert_eq!(err.0, code, "{bad:?}: {}", err.1);
    }
}

pub(crate) fn row(values: &[Option<&str>]) -> BytesMut {
    let mut body = BytesMut::new();
    body.put_i16(values.len() as i16);
    for v in values {
        match v {
            None => body.put_i32(-1),
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v.as_bytes());
            }
        }
    }
    typed(b'D', &body)
}

#[test]
fn detectors_scrub_every_value_of_every_row() {
    let scrubber = querygate_mask::Scrubber::new(
        &[querygate_mask::DetectorKind::Email],
        querygate_mask::Strategy::Redact,
        Vec::new(),
    );
    let mut reply = PgReply {
        frames: vec![
            row(&[Some("1"), Some("ada@example.com"), None]),
            row(&[Some("2"), Some("nothing here"), Some("x")]),
            typed(b'C', b"SELECT 2\0"),
        ],
        ..PgReply::default()
    };
    assert_eq!(reply.scrub(&scrubber).expect("ok"), 1);
    let bytes = reply.bytes();
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("ada@example.com"), "{text}");
    assert!(text.contains("nothing here"));
    // The rewritten row is still a well-formed DataRow with its NULL.
    assert_eq!(reply.frames[0][0], b'D');
    let len = i32::from_be_bytes([
        reply.frames[0][1],
        reply.frames[0][2],
        reply.frames[0][3],
        reply.frames[0][4],
    ]);
    assert_eq!(len as usize, reply.frames[0].len() - 1);
    assert!(reply.frames[0].ends_with(&(-1i32).to_be_bytes()));
    // COPY data cannot be cut into values: scanning it fails closed.
    let mut copy = PgReply {
        frames: vec![typed(b'd', b"1\tada@example.com\n")],
        ..PgReply::default()
    };
    assert!(copy.scrub(&scrubber).is_err());
}

#[test]
fn withheld_errors_keep_their_sqlstate_only() {
    let mut e = BytesMut::new();
    crate::render::error(
        &mut e,
        "ERROR",
        "22P02",
        "invalid input: \"ada@example.com\"",
        None,
    );
    let mut reply = PgReply {
        frames: vec![e],
        ..PgReply::default()
    };
    assert!(reply.withhold_errors("the statement reads masked columns"));
    let text = String::from_utf8_lossy(&reply.frames[0]).into_owned();
    assert!(!text.contains("ada@example.com"), "{text}");
    assert!(
        text.contains("22P02") && text.contains("masked columns"),
        "{text}"
    );
}

#[test]
fn statements_that_could_move_name_resolution_are_caught_however_written() {
    for sql in [
        "SET search_path = hr, public",
        "set SEARCH_PATH to hr",
        "SELECT set_config('search_path', 'hr', false)",
        "RESET search_path",
        "SET LOCAL search_path = hr",
        "ALTER ROLE x SET search_path = hr",
    ] {
        assert!(decode::changes_resolution(sql).is_some(), "{sql}");
    }
    assert!(decode::changes_resolution("SELECT * FROM public.t").is_none());
    assert!(decode::changes_resolution("SELECT current_setting('search_path')").is_none());
    for sql in [
        "SET client_encoding = 'LATIN1'",
        "set names 'SJIS'",
        "RESET client_encoding",
        "SELECT set_config('search' || '_path', 'hr', false)",
        "SELECT pg_catalog.SET_CONFIG('x', 'y', true)",
        "SELECT * FROM U&\"\\0063ustomers\"",
        "select * from u&\"\\0063ustomers\"",
    ] {
        assert!(decode::changes_resolution(sql).is_some(), "{sql}");
    }
}

#[test]
fn the_hash_key_is_numbered_past_the_clients_parameters_and_hidden_from_descriptions() {
    use crate::source::highest_parameter;
    assert_eq!(highest_parameter("SELECT $1, $12 FROM t WHERE a = $3"), 12);
    assert_eq!(highest_parameter("SELECT '$' || x, $$a$$ FROM t"), 0);
    // A statement description of a keyed statement: the key's OID (bytea, 17) goes.
    let mut body = BytesMut::new();
    body.put_i16(2);
    body.put_u32(23);
    body.put_u32(17);
    let mut reply = PgReply {
        frames: vec![typed(b't', &body), typed(b'n', b"")],
        ..PgReply::default()
    };
    reply.hide_key_parameters(&[true]);
    let mut want = BytesMut::new();
    want.put_i16(1);
    want.put_u32(23);
    assert_eq!(reply.frames[0], typed(b't', &want));
    // Not keyed: untouched.
    let mut plain = PgReply {
        frames: vec![typed(b't', &body)],
        ..PgReply::default()
    };
    plain.hide_key_parameters(&[false]);
    assert_eq!(plain.frames[0], typed(b't', &body));
}

#[test]
fn a_write_reports_its_rows_in_its_command_tag() {
    use crate::source::command_rows;
    assert_eq!(command_rows(&typed(b'C', b"INSERT 0 5\0")), 5);
    assert_eq!(command_rows(&typed(b'C', b"COPY 12\0")), 12);
    assert_eq!(command_rows(&typed(b'C', b"BEGIN\0")), 0);
    assert_eq!(command_rows(&typed(b'C', b"")), 0);
}
