//! The BigQuery REST v2 front and the `bigquery` upstream.
//!
//! - [`decode`]: HTTP request → protocol-neutral [`querygate_core::Request`] + [`Call`]. Pure.
//! - [`render`]: pipeline outcome → HTTP response in BigQuery's own format. Pure.
//! - [`routes`]: the axum service that reads bodies and wires decode → pipeline → render.
//! - [`upstream`]: the [`BigQuerySource`] that executes admitted calls with the
//!   gateway's own credential.
//! - [`model`]: the parts of BigQuery's JSON the gateway reads.
//! - [`token`]: the OAuth token endpoint for clients that use Google's default
//!   credentials (`querygate connect`), and the access tokens it seals.
//!
//! The front holds no policy: everything it refuses by itself is a decode result
//! (`Malformed`) that the pipeline audits and denies like any other request.

pub mod decode;
pub mod model;
pub mod render;
pub mod routes;
pub mod token;
pub mod upstream;

pub use decode::{Api, Call};
pub use routes::{Front, router};
pub use token::Tokens;
pub use upstream::{BigQueryReply, BigQuerySource, IAM_ENDPOINT, Impersonation, UpstreamAuth};

#[cfg(test)]
mod tests;
