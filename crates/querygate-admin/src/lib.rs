//! The admin API front: approvers list, read, approve and deny tickets, and readers list and
//! read recorded sessions, over HTTP (JSON). A peer of the BigQuery front: it reaches the rest
//! of querygate only through [`querygate_pipeline::Pipeline`].
//!
//! ```text
//! GET  /healthz                          no authentication
//! GET  /api/v1/tickets?state=&source=&requester=&limit=   {"tickets": [ticket…]}
//! GET  /api/v1/tickets/{id}              ticket
//! POST /api/v1/tickets/{id}/approve      {"for": "1h", "reason": "…"} (both optional) → ticket
//! POST /api/v1/tickets/{id}/deny         {"reason": "…"} → ticket
//! GET  /api/v1/sessions?identity=&since=&limit=   {"sessions": [summary…]}
//! GET  /api/v1/sessions/{id}             {"session": summary, "events": [event…]}
//! ```
//!
//! - [`model`]: the JSON shapes the front reads and writes.
//! - [`decode`]: query strings, ids, credentials and bodies → typed requests. Pure.
//! - [`render`]: tickets, sessions, denials, faults and bad input → HTTP responses; the only
//!   place this front chooses a status code.
//! - [`routes`]: the axum [`router`]: read the request, decode, call the pipeline, render.
//!
//! Recorded sessions are read by the members of `[recording] readers` (every session) and by
//! each identity for its own requests. The pipeline decides who may see and decide a ticket
//! or read a session, and audits every attempt; this front must not decide anything itself.
//! Every refusal is `{"error": {"code": N, "message": "…"}}` with a message a person can act
//! on; bad input is a 400, never a panic or a 5xx. A credential is never logged or echoed.

pub mod decode;
pub mod model;
pub mod render;
pub mod routes;
#[cfg(test)]
mod tests;

pub use decode::{BadCredential, BadRequest};
pub use routes::router;
