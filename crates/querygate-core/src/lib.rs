//! querygate's vocabulary: the small types every stage of the pipeline shares.
//!
//! An *identity* makes a *request* to a *source*; the pipeline reaches a *decision*,
//! and the front renders the *outcome*. Every request leaves *audit records*.
//! This crate holds data only: no IO, no async, no policy. Anything that needs a
//! socket, a file or a clock lives elsewhere.

pub mod audit;
pub mod decision;
pub mod identity;
pub mod recording;
pub mod request;
pub mod secret;
pub mod ticket;
pub mod usage;

pub use audit::{AuditRecord, Phase};
pub use decision::{Decision, Denial, DenialKind, Fault, FaultCause, StatusCodes};
pub use identity::{Audience, Identity, IdentityKind};
pub use request::{Action, Catalog, ClientInfo, JobOp, Malformed, Query, Request, RequestId};
pub use secret::Secret;
pub use ticket::{Ticket, TicketState};
pub use usage::Usage;
