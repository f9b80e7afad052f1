//! The `local` source kind: an embedded DuckDB engine over CSV, Parquet and newline-delimited
//! JSON files, speaking the BigQuery REST v2 surface in-process.
//!
//! - `translate`: BigQuery SQL → DuckDB SQL on the sqlparser AST (pure).
//! - `engine`: DuckDB itself — views over the files, jobs, result tables, pages, estimates.
//! - `values`: DuckDB types and values → BigQuery schema fields and JSON cells (pure).
//! - `rest`: the REST calls (jobs, getQueryResults, tabledata, datasets, tables) and the axum
//!   [`router`] the gateway's `bigquery` source calls without a socket.
//! - `error`: errors in BigQuery's terms.
//!
//! This crate decides nothing (policy, masking and audit happen in the gateway's pipeline before
//! a call gets here) and opens no port. It is its own crate because DuckDB's C++ build is slow:
//! nothing else in the workspace depends on it except the binary.

pub mod engine;
pub mod error;
pub mod rest;
pub mod sample;
pub mod translate;
pub mod values;

pub use engine::{Engine, OpenError, QueryRequest, TableSpec};
pub use error::EngineError;
pub use rest::router;

#[cfg(test)]
mod tests;
