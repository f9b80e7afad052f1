//! Client bytes → messages → requests. Pure and total: any bytes become a message, a
//! request, or a [`Problem`] with the SQLSTATE the client is told; nothing panics.
//!
//! Framing is done here, not by pgwire: its decoders read from the shared buffer rather
//! than the frame (a C string can run past the declared length) and some index without
//! checking (a short `Bind` or `ErrorResponse` panics). So each frame is cut out by its
//! declared length, bounded, decoded alone under `catch_unwind`, must be consumed
//! exactly, and must encode back to the very bytes it came from: a message the gateway
//! would read differently from the server (text that is not UTF-8, trailing bytes) is
//! refused rather than analyzed one way and run another. The opening packets
//! (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage) are four fixed layouts
//! pgwire decodes only inside its own server loop; they are read here.

use std::panic::{AssertUnwindSafe, catch_unwind};

use bytes::{Buf, BytesMut};
use pgwire::messages::{DecodeContext, Message, PgWireFrontendMessage, ProtocolVersion};
use querygate_core::{Action, Malformed, Query, Request, RequestId, StatusCodes};

pub use crate::model::{Connection, Opening, Problem};

/// The largest opening packet read (PostgreSQL's own limit).
pub const MAX_STARTUP_BYTES: usize = 10_000;

/// Codes of the opening packets.
const SSL_REQUEST: i32 = 80_877_103;
const GSSENC_REQUEST: i32 = 80_877_104;
const CANCEL_REQUEST: i32 = 80_877_102;
const PROTOCOL_3: i32 = 3 << 16;

/// Cuts one opening packet (length-prefixed, no type byte) off `buf`; `None` until it is
/// all there.
pub fn opening_frame(buf: &mut BytesMut) -> Result<Option<BytesMut>, Problem> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_BYTES as i32).contains(&len) {
        return Err(Problem::protocol(format!(
            "invalid length of startup packet ({len} bytes)"
        )));
    }
    if buf.len() < len as usize {
        return Ok(None);
    }
    Ok(Some(buf.split_to(len as usize)))
}

/// Reads an opening packet cut by [`opening_frame`].
pub fn opening(mut frame: BytesMut) -> Result<Opening, Problem> {
    frame.advance(4);
    let code = frame.get_i32();
    match code {
        SSL_REQUEST | GSSENC_REQUEST if !frame.is_empty() => {
            Err(Problem::protocol("invalid length of an SSL or GSS request"))
        }
        SSL_REQUEST => Ok(Opening::Ssl),
        GSSENC_REQUEST => Ok(Opening::Gss),
        CANCEL_REQUEST => {
            if frame.len() != 8 {
                return Err(Problem::protocol("invalid length of a cancel request"));
            }
            Ok(Opening::Cancel {
                pid: frame.get_i32(),
                secret: frame.get_i32(),
            })
        }
        code if code >> 16 == 3 => {
            let minor = (code - PROTOCOL_3) as u16;
            let mut parameters = Vec::new();
            loop {
                let name = cstring(&mut frame)?;
                if name.is_empty() {
                    break;
                }
                let value = cstring(&mut frame)?;
                if parameters.iter().any(|(n, _)| *n == name) {
                    return Err(Problem::protocol(format!(
                        "startup parameter {name} is given twice"
                    )));
                }
                parameters.push((name, value));
            }
            if !frame.is_empty() {
                return Err(Problem::protocol(
                    "trailing bytes after the startup parameters",
                ));
            }
            Ok(Opening::Startup { minor, parameters })
        }
        code => Err(Problem {
            code: "08P01",
            message: format!(
                "unsupported frontend protocol {}.{}: querygate serves protocol 3",
                code >> 16,
                code & 0xffff
            ),
            kind: Malformed::Invalid,
        }),
    }
}

/// A NUL-terminated UTF-8 string.
fn cstring(frame: &mut BytesMut) -> Result<String, Problem> {
    let Some(end) = frame.iter().position(|b| *b == 0) else {
        return Err(Problem::protocol(
            "a string in the startup packet is not terminated",
        ));
    };
    let bytes = frame.split_to(end + 1);
    String::from_utf8(bytes[..end].to_vec())
        .map_err(|_| Problem::protocol("the startup packet holds text that is not UTF-8"))
}

/// Cuts one typed message (type byte, length, body) off `buf`; `None` until it is all
/// there. A length below 4 or over `max` is refused before anything is buffered.
pub fn frame(buf: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, Problem> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 {
        return Err(Problem::protocol(format!("invalid message length {len}")));
    }
    if len as usize > max {
        return Err(Problem {
            code: "54000",
            message: format!(
                "the message is {len} bytes, over the {max} bytes querygate accepts \
                 (server.postgres_max_message_bytes)"
            ),
            kind: Malformed::TooLarge,
        });
    }
    let whole = 1 + len as usize;
    if buf.len() < whole {
        buf.reserve(whole - buf.len());
        return Ok(None);
    }
    Ok(Some(buf.split_to(whole)))
}

/// How messages after the startup are decoded (protocol 3.0: the gateway negotiates
/// every client down to it).
fn context() -> DecodeContext {
    let mut ctx = DecodeContext::new(ProtocolVersion::PROTOCOL3_0);
    ctx.awaiting_frontend_ssl = false;
    ctx.awaiting_frontend_startup = false;
    ctx
}

/// Decodes a frame cut by [`frame`] as pgwire's message type `M` (for the upstream's
/// answers, which are read the same careful way).
pub fn decode_as<M: Message>(frame: &BytesMut) -> Option<M> {
    let mut buf = frame.clone();
    let ctx = context();
    match catch_unwind(AssertUnwindSafe(|| M::decode(&mut buf, &ctx))) {
        Ok(Ok(Some(m))) if buf.is_empty() => Some(m),
        _ => None,
    }
}

/// Decodes a client message cut by [`frame`]: it must decode alone, be consumed exactly
/// and encode back to the same bytes.
pub fn message(frame: &BytesMut) -> Result<PgWireFrontendMessage, Problem> {
    let tag = frame.first().copied().unwrap_or(0);
    let unreadable = || {
        Problem::protocol(format!(
            "querygate cannot read this message (type {:?}): it is not a well-formed \
             message of protocol 3.0, or holds text that is not UTF-8",
            tag as char
        ))
    };
    if tag == b'F' {
        return Err(Problem {
            code: "0A000",
            message: "querygate does not serve the fastpath function call interface \
                      (FunctionCall); call the function in a query"
                .into(),
            kind: Malformed::Unknown,
        });
    }
    let mut buf = frame.clone();
    let ctx = context();
    let decoded = catch_unwind(AssertUnwindSafe(|| {
        PgWireFrontendMessage::decode(&mut buf, &ctx)
    }));
    let message = match decoded {
        Ok(Ok(Some(m))) if buf.is_empty() => m,
        _ => return Err(unreadable()),
    };
    let mut again = BytesMut::with_capacity(frame.len());
    match message.encode(&mut again) {
        Ok(()) if again == *frame => Ok(message),
        _ => Err(unreadable()),
    }
}

/// A request for one simple Query message (all its statements).
pub fn query(conn: &Connection, sql: String, codes: &'static dyn StatusCodes) -> Request {
    let mut query = Query::new(sql);
    query.default_schema = Some(conn.schema.clone());
    request(conn, "query", Action::Query(query), codes)
}

/// A request for one Parse: the statement being prepared (decided and masked, run by
/// nothing).
pub fn parse(conn: &Connection, sql: String, codes: &'static dyn StatusCodes) -> Request {
    let mut query = Query::new(sql);
    query.default_schema = Some(conn.schema.clone());
    request(conn, "parse", Action::Query(query), codes)
}

/// A request for one Execute: the statement its portal was bound from.
pub fn execute(conn: &Connection, sql: String, codes: &'static dyn StatusCodes) -> Request {
    let mut query = Query::new(sql);
    query.default_schema = Some(conn.schema.clone());
    request(conn, "execute", Action::Query(query), codes)
}

/// Why a statement is not forwarded as it stands: it could change how the session
/// resolves unqualified names (`search_path`), which the gateway reads as the connection's
/// schema. Matched on the words of the text, comments and strings included: a false match
/// is refused with a message, never run with names resolved two ways.
pub fn changes_resolution(sql: &str) -> Option<Problem> {
    let lower = sql.to_ascii_lowercase();
    let words = lower.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
    let mut names_path = false;
    let mut sets = false;
    for w in words {
        names_path |= w == "search_path";
        sets |= matches!(w, "set" | "reset" | "set_config");
    }
    // set_config() can build its setting's name (`'search' || '_path'`), so it is not
    // read; and a Unicode-escaped identifier (U&"\0063ustomers") names a table the
    // analyzer would read as written, not as the server decodes it.
    if words_any(&lower, &["set_config"]) || lower.contains("u&\"") {
        return Some(Problem {
            code: "0A000",
            message: "querygate does not forward set_config() or Unicode-escaped identifiers \
                      (U&\"…\"): it could not tell what they name; use SET for settings it \
                      allows and plain identifiers"
                .into(),
            kind: Malformed::Invalid,
        });
    }
    let encoding =
        sets && (lower.contains("client_encoding") || lower.trim_start().starts_with("set names"));
    if encoding {
        return Some(Problem {
            code: "0A000",
            message: "querygate does not let a session change client_encoding: statements \
                      and results are read as UTF-8"
                .into(),
            kind: Malformed::Invalid,
        });
    }
    (names_path && sets).then(|| Problem {
        code: "0A000",
        message: "querygate does not let a session change search_path: it resolves \
                  unqualified names in the connection's schema (search_path in the \
                  connection string, default public); qualify names with their schema, or \
                  reconnect with search_path set"
            .into(),
        kind: Malformed::Invalid,
    })
}

fn words_any(lower: &str, wanted: &[&str]) -> bool {
    lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| wanted.contains(&w))
}

/// A request for a statement the front does not forward (`problem` says why): refused by
/// the gate, audited with its text.
pub fn refused(
    conn: &Connection,
    sql: &str,
    problem: &Problem,
    codes: &'static dyn StatusCodes,
) -> Request {
    let mut query = Query::new(sql);
    query.dialect_problem = Some(problem.message.clone());
    request(conn, "query", Action::Query(query), codes)
}

/// A request for something the front refuses to forward (`what` names it for the message).
pub fn other(
    conn: &Connection,
    method: &str,
    what: &str,
    codes: &'static dyn StatusCodes,
) -> Request {
    let action = Action::Other { what: what.into() };
    request(conn, method, action, codes)
}

/// A request for bytes that are not a message the front serves.
pub fn malformed(conn: &Connection, problem: &Problem, codes: &'static dyn StatusCodes) -> Request {
    let action = Action::Malformed {
        problem: problem.kind,
        message: problem.message.clone(),
    };
    request(conn, "malformed", action, codes)
}

fn request(
    conn: &Connection,
    method: &str,
    action: Action,
    codes: &'static dyn StatusCodes,
) -> Request {
    Request {
        id: RequestId(format!("qg-{}", uuid::Uuid::new_v4().simple())),
        credential: Some(conn.credential.clone()),
        delegation: None,
        audience: None,
        client: conn.client.clone(),
        target: conn.database.clone(),
        method: method.into(),
        action,
        job_id: None,
        reason: None,
        wait: None,
        session: Some(conn.session.clone()),
        codes,
    }
}
