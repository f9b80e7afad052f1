//! The PostgreSQL front and the `postgres` source.
//!
//! Clients (psql, drivers, agents) connect to querygate's PostgreSQL listener with their
//! own querygate credential as the password and a `dbname` naming a `postgres` source;
//! querygate holds the database's password. Each message becomes a
//! [`querygate_core::Request`] ([`decode`]) that the pipeline authenticates, analyzes in
//! the PostgreSQL dialect, decides, audits (durably, before anything is forwarded) and
//! records; the admitted statement runs on the connection's own upstream session
//! ([`source`], [`upstream`]), and the outcome becomes the client's answer ([`render`]):
//! the server's own messages, or an ErrorResponse with SQLSTATE `42501` and the rule's
//! message for a denial. [`routes`] is the listener glue.
//!
//! Served: startup with TLS, both query protocols (each simple Query one request; each
//! Parse decided and masked by `Pipeline::prepare`, each Execute one request decided on
//! the client's text), masking with PostgreSQL expressions, approvals that hold the
//! client up to `wire_wait`, transactions, cancel requests, Terminate. Not yet: MCP tools
//! over postgres sources, COPY FROM STDIN (the upstream's COPY is failed), streaming
//! results (held up to 256 MiB per statement).

pub mod decode;
pub mod model;
pub mod render;
pub mod routes;
pub mod source;
pub mod upstream;

pub use render::CODES;
pub use routes::{PostgresFront, serve};
pub use source::{PgCall, PgReply, PostgresSource};
pub use upstream::{Endpoint, TlsMode};

#[cfg(test)]
mod tests;
