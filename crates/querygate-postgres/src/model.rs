//! The PostgreSQL wire's shapes as the front keeps them: what was wrong with a client's
//! bytes ([`Problem`]), the opening packets ([`Opening`]), what a connection is
//! ([`Connection`]) and what the extended query protocol has set up on it ([`Extended`]:
//! prepared statements and portals, messages held until the next Execute or Sync).

use std::collections::HashMap;

use bytes::BytesMut;
use querygate_core::{ClientInfo, Malformed, Secret};

use crate::source::Expect;

/// What was wrong with the client's bytes, as the client is told (an ErrorResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// SQLSTATE.
    pub code: &'static str,
    pub message: String,
    /// How the audit log classes it.
    pub kind: Malformed,
}

impl Problem {
    pub(crate) fn protocol(message: impl Into<String>) -> Problem {
        Problem {
            code: "08P01",
            message: message.into(),
            kind: Malformed::Invalid,
        }
    }
}

/// The first packet of a connection (or the one after an SSL/GSS answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    Ssl,
    Gss,
    Cancel {
        pid: i32,
        secret: i32,
    },
    /// A StartupMessage: protocol minor version (major is 3) and its parameters.
    Startup {
        minor: u16,
        parameters: Vec<(String, String)>,
    },
}

/// What the front knows of the connection a message came on, for its requests.
#[derive(Debug, Clone)]
pub struct Connection {
    /// The credential the client authenticated with.
    pub credential: Secret,
    /// The database the client addressed (the source's `project`).
    pub database: String,
    pub client: ClientInfo,
    /// The recorded session: one per connection.
    pub session: String,
    /// The schema one-part names resolve to (the upstream session's pinned search_path).
    pub schema: String,
}

/// What the extended query protocol has set up on the connection: each prepared
/// statement and portal (so that an Execute is decided on the statement it runs, and runs
/// what it was parsed as), the messages that run nothing yet, and whether messages are
/// skipped to the next Sync after an error.
#[derive(Default)]
pub struct Extended {
    pub statements: HashMap<String, Prepared>,
    pub portals: HashMap<String, Prepared>,
    /// Parse, Bind, Describe and Close messages not yet sent, with the answers they are owed.
    pub pending: BytesMut,
    pub owed: Vec<Expect>,
    /// For each statement Describe held, whether its statement carries the hash key (whose
    /// parameter the client must not see).
    pub described: Vec<bool>,
    /// Statements whose Parse is held, not yet sent: an error drops them unsent, and
    /// the server never knew them.
    pub unsent: Vec<String>,
    pub skipping: bool,
}

/// A statement as the client parsed it and as it went upstream.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The client's text: what each Execute is decided on.
    pub original: String,
    /// What was parsed upstream (the masking rewrite's, when masks apply).
    pub sent: String,
    /// The client's own parameters.
    pub parameters: usize,
    /// The parameter the hash key is bound to, one past the client's.
    pub key: Option<usize>,
    /// The values a portal was bound with (JSON), which an approval binds too.
    pub bound: Option<String>,
}

/// The values of a Bind as JSON: text as it is, binary as `\x` and hex (as PostgreSQL
/// writes `bytea`), NULL as null.
pub fn bound_values(bind: &pgwire::messages::extendedquery::Bind) -> String {
    let binary = |i: usize| match bind.parameter_format_codes.len() {
        0 => false,
        1 => bind.parameter_format_codes[0] == 1,
        _ => bind.parameter_format_codes.get(i) == Some(&1),
    };
    let values: Vec<serde_json::Value> = bind
        .parameters
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            None => serde_json::Value::Null,
            Some(b) if binary(i) => serde_json::Value::String(format!(
                "\\x{}",
                b.iter().map(|x| format!("{x:02x}")).collect::<String>()
            )),
            Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
        })
        .collect();
    serde_json::Value::Array(values).to_string()
}

impl Extended {
    pub fn hold(&mut self, frame: &[u8], expect: Expect) {
        self.pending.extend_from_slice(frame);
        self.owed.push(expect);
    }

    /// The held messages, with `frame` after them, as one exchange, and which statement
    /// descriptions in it carry the key.
    pub fn with(&mut self, frame: &[u8], expect: Expect) -> (BytesMut, Vec<Expect>, Vec<bool>) {
        self.hold(frame, expect);
        self.take()
    }

    pub fn take(&mut self) -> (BytesMut, Vec<Expect>, Vec<bool>) {
        self.unsent.clear();
        (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.owed),
            std::mem::take(&mut self.described),
        )
    }

    /// Portals end with their transaction: at ReadyForQuery with status `I` (idle) none
    /// is left on the server, so none is kept here.
    pub fn end_of_transaction(&mut self, status: u8) {
        if status == b'I' {
            self.portals.clear();
        }
    }

    /// After an error: what was held is dropped, and messages up to Sync are skipped.
    pub fn fail(&mut self) {
        for name in self.unsent.drain(..) {
            self.statements.remove(&name);
        }
        self.pending.clear();
        self.owed.clear();
        self.described.clear();
        self.skipping = true;
    }
}
