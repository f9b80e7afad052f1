//! The BigQuery REST v2 front and the `bigquery` source, side by side: they share
//! BigQuery's wire (its JSON, its REST calls), and the front passes its calls through to
//! the source natively.
//!
//! The front, with every front's files:
//! - [`model`]: the parts of BigQuery's JSON the gateway reads or writes.
//! - [`routes`]: the axum service that reads bodies and wires decode → pipeline → render.
//! - [`decode`]: HTTP request → protocol-neutral [`querygate_core::Request`] + [`Call`]. Pure.
//! - [`render`]: pipeline outcome → HTTP response in BigQuery's own format, and the
//!   front's [`querygate_core::StatusCodes`]. Pure.
//! - [`token`]: the OAuth token endpoint for clients that use Google's default
//!   credentials (`querygate connect`), and the access tokens it seals.
//!
//! The source:
//! - [`source`]: the [`BigQuerySource`] that executes admitted calls with the gateway's
//!   own credential, its [`BigQueryReply`], and (`source::neutral`) REST calls for
//!   neutral actions and neutral answers read from its replies.
//!
//! The front holds no policy: everything it refuses by itself is a decode result
//! (`Malformed`) that the pipeline audits and denies like any other request.

pub mod decode;
pub mod model;
pub mod render;
pub mod routes;
pub mod source;
pub mod token;

pub use decode::{Api, Call};
pub use routes::{Front, router};
pub use source::{
    BigQueryReply, BigQuerySource, IAM_ENDPOINT, Impersonation, NotBigQuery, SetupError,
    UpstreamAuth,
};
pub use token::Tokens;

#[cfg(test)]
mod tests;
