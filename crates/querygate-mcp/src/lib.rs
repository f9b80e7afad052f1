//! The MCP front: querygate's own MCP server (Streamable HTTP at `/mcp`, an OAuth 2.1
//! resource server; [`routes`]).
//!
//! Agents reach every source through querygate's own MCP server. Each tool call becomes a
//! neutral [`querygate_core::Action`] ([`decode`]) that the pipeline decides, masks, audits
//! and records like any REST request, run on the source through
//! [`querygate_pipeline::Source::call_for`]; the reply's neutral
//! [`querygate_pipeline::Answer`] becomes the tool result ([`render`]): `structuredContent`
//! and a readable text table, or `isError: true` with the denial's message, which the agent
//! reads and acts on. Tool names and arguments are those of Google's BigQuery MCP server, so
//! agents' prompts carry over ([`model`]).

pub mod decode;
pub mod model;
pub mod render;
pub mod routes;

pub use decode::{Decoded, decode};
pub use model::tools;
pub use render::{CODES, render};
pub use routes::{McpFront, router};

#[cfg(test)]
mod tests;
