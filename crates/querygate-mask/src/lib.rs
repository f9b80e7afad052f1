//! Masking: how a protected value is hidden, and how values that slipped through are found.
//!
//! - [`strategy`]: the masking strategies (redact, null, hash, last4, email_domain) as
//!   type-preserving BigQuery SQL expressions, so the statement rewrite can mask a column
//!   *where it is read*, before any expression, join or aggregate sees it.
//! - [`detect`]: value detectors (emails, phone numbers, payment cards with Luhn, US SSNs,
//!   IBANs with their checksum, IP addresses, secrets) that run on result values as a second
//!   line of defence, and mask what they find with the same strategies.
//!
//! Pure: no IO, no SQL parsing (the rewrite lives with the analyzer), no panics on any input.

pub mod detect;
pub mod postgres;
pub mod strategy;

pub use detect::{Detector, DetectorError, DetectorKind, Finding, Scrubber};
pub use postgres::mask_expression_pg;
pub use strategy::{
    HASH_KEY_PARAM, Strategy, StrategyError, mask_cell, mask_expression, mask_text,
};
