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
//! Served today: startup with TLS, the simple query protocol, transactions, cancel
//! requests, Terminate. Not yet: the extended query protocol (refused, audited),
//! masking (a statement reading a masked table is refused), approvals (refused), COPY
//! FROM STDIN (refused by the upstream's COPY failing).

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
