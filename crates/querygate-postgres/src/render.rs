//! Outcomes → what the client reads: ErrorResponse with a SQLSTATE for denials and
//! failures, the upstream's own answer otherwise; and [`CODES`], the front's numbers in
//! the records. The one place this front chooses a SQLSTATE.
//!
//! The records keep the numbers every front uses (200 answered, 401/403/404/… refused,
//! 500/502 failed), so one audit query finds refusals across fronts; the SQLSTATE the
//! client saw is in the record's message.

use bytes::BytesMut;
use pgwire::messages::Message;
use pgwire::messages::response::{ErrorResponse, NoticeResponse, ReadyForQuery, TransactionStatus};
use pgwire::messages::startup::{Authentication, BackendKeyData, ParameterStatus, SecretKey};
use querygate_core::{Denial, DenialKind, Fault, StatusCodes};

/// How the PostgreSQL front numbers its answers in the records.
#[derive(Debug)]
pub struct Codes;

pub static CODES: Codes = Codes;

impl StatusCodes for Codes {
    fn denied(&self, kind: DenialKind) -> u16 {
        match kind {
            DenialKind::Unauthenticated => 401,
            DenialKind::Forbidden => 403,
            DenialKind::NotFound => 404,
            DenialKind::Invalid => 400,
            DenialKind::TooLarge => 413,
            DenialKind::Conflict => 409,
            DenialKind::Unavailable => 503,
        }
    }

    fn failed(&self, fault: &Fault) -> u16 {
        if fault.retryable { 502 } else { 500 }
    }

    fn done(&self) -> u16 {
        200
    }

    fn waiting(&self) -> u16 {
        202
    }
}

/// The SQLSTATE of a denial: `42501` (insufficient_privilege) for what policy refuses,
/// `28P01` for a credential the gateway does not accept.
pub fn denial_code(kind: DenialKind) -> &'static str {
    match kind {
        DenialKind::Unauthenticated => "28P01",
        DenialKind::Forbidden => "42501",
        DenialKind::NotFound => "42704",
        DenialKind::Invalid => "42601",
        DenialKind::TooLarge => "54000",
        DenialKind::Conflict => "55000",
        DenialKind::Unavailable => "57P03",
    }
}

/// An ErrorResponse for a denial.
pub fn denied(out: &mut BytesMut, denial: &Denial) {
    error(
        out,
        "ERROR",
        denial_code(denial.kind),
        &denial.message,
        None,
    );
}

/// An ErrorResponse for a request that was allowed and could not be completed: the
/// upstream could not be reached (`08006`) or the gateway failed (`XX000`).
pub fn failed(out: &mut BytesMut, fault: &Fault) {
    let code = match fault.cause {
        querygate_core::FaultCause::Upstream => "08006",
        _ => "XX000",
    };
    error(out, "ERROR", code, &fault.message, None);
}

/// An ErrorResponse (`severity` ERROR or FATAL).
pub fn error(out: &mut BytesMut, severity: &str, code: &str, message: &str, hint: Option<&str>) {
    let mut fields = vec![
        (b'S', severity.to_string()),
        (b'V', severity.to_string()),
        (b'C', code.to_string()),
        (b'M', message.to_string()),
    ];
    if let Some(hint) = hint {
        fields.push((b'H', hint.to_string()));
    }
    put(out, ErrorResponse::new(fields));
}

/// A NoticeResponse (severity NOTICE).
pub fn notice(out: &mut BytesMut, message: &str) {
    let fields = vec![
        (b'S', "NOTICE".to_string()),
        (b'V', "NOTICE".to_string()),
        (b'C', "00000".to_string()),
        (b'M', message.to_string()),
    ];
    put(out, NoticeResponse::new(fields));
}

/// ReadyForQuery with the upstream session's transaction status (`I`, `T` or `E`).
pub fn ready(out: &mut BytesMut, status: u8) {
    let status = match status {
        b'T' => TransactionStatus::Transaction,
        b'E' => TransactionStatus::Error,
        _ => TransactionStatus::Idle,
    };
    put(out, ReadyForQuery::new(status));
}

/// AuthenticationCleartextPassword: the client's password is its querygate credential.
pub fn ask_password(out: &mut BytesMut) {
    put(out, Authentication::CleartextPassword);
}

pub fn authenticated(out: &mut BytesMut) {
    put(out, Authentication::Ok);
}

pub fn parameter(out: &mut BytesMut, name: &str, value: &str) {
    put(
        out,
        ParameterStatus::new(name.to_string(), value.to_string()),
    );
}

/// BackendKeyData with the gateway's own key for this connection (never the upstream's).
pub fn key(out: &mut BytesMut, pid: i32, secret: i32) {
    put(out, BackendKeyData::new(pid, SecretKey::I32(secret)));
}

/// Encodes a message the gateway built (its fields are bounded: encoding cannot fail
/// but for a message over pgwire's limits, which is then left out and logged).
fn put<M: Message + std::fmt::Debug>(out: &mut BytesMut, message: M) {
    let mut one = BytesMut::new();
    match message.encode(&mut one) {
        Ok(()) => out.extend_from_slice(&one),
        Err(e) => tracing::error!("cannot encode {message:?}: {e}"),
    }
}
