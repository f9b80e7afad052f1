//! Decisions, denials and faults: the values the pipeline returns instead of errors.
//!
//! A denial is an answer, not a failure: it carries a message an agent can act on.
//! A fault says who caused it and whether retrying can help, so fronts can choose a
//! status code that makes clients retry only when retrying is useful.

use serde::{Deserialize, Serialize};

/// Why a request is refused; fronts map each kind to their protocol's error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialKind {
    /// No credential, or one that is not valid.
    Unauthenticated,
    /// Authenticated, but policy does not allow it.
    Forbidden,
    /// The thing asked for does not exist for this identity (hides existence).
    NotFound,
    /// The request itself is malformed or unsupported.
    Invalid,
    /// The request body is larger than the gateway accepts.
    TooLarge,
    /// The thing is no longer in a state that allows it (a ticket already decided).
    Conflict,
    /// The gateway cannot answer now (its store failed).
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub kind: DenialKind,
    /// Shown to the client and recorded: say why and what to do instead.
    pub message: String,
}

impl Denial {
    pub fn new(kind: DenialKind, message: impl Into<String>) -> Self {
        Denial {
            kind,
            message: message.into(),
        }
    }
}

/// The decide stage's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Denial),
}

/// Who caused a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultCause {
    /// The upstream could not be reached, or answered something that is not its protocol.
    Upstream,
    /// The gateway itself (e.g. the audit store cannot be written).
    Gateway,
}

/// A failure to complete an allowed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub cause: FaultCause,
    /// Whether the same request may succeed if retried later.
    pub retryable: bool,
    pub message: String,
}

impl Fault {
    pub fn upstream(message: impl Into<String>) -> Self {
        Fault {
            cause: FaultCause::Upstream,
            retryable: true,
            message: message.into(),
        }
    }

    pub fn gateway(message: impl Into<String>) -> Self {
        Fault {
            cause: FaultCause::Gateway,
            retryable: false,
            message: message.into(),
        }
    }
}

/// How a front's protocol numbers its answers, for the `status` of the audit records and
/// session recordings the pipeline writes before the front renders anything (for a REST
/// front, the HTTP status it will answer with). Each front has one, as a `static`, and it
/// is the one place the front maps outcomes to its wire's codes; the pipeline never names
/// a code itself.
pub trait StatusCodes: Sync + std::fmt::Debug {
    /// A refusal of `kind`.
    fn denied(&self, kind: DenialKind) -> u16;
    /// A failure of an allowed request.
    fn failed(&self, fault: &Fault) -> u16;
    /// An answer that the request waits for an approval (the request was accepted).
    fn waiting(&self) -> u16;
    /// A success the gateway answers itself, with nothing run (a statement only prepared).
    fn done(&self) -> u16;
}
