//! `kind = "local"`: the embedded engine (DuckDB, in the gateway's process) over files
//! named in the config. Its one key, `tables`, is refused on a source of any other kind;
//! the keys of an upstream (`endpoint`, `credentials`, …) are refused here.
//!
//! ```toml
//! [[sources]]
//! name = "sample"
//! kind = "local"
//! project = "demo"
//! tables = { "shop.customers" = "data/customers.parquet", "shop.orders" = "data/orders/*.csv" }
//! ```
//!
//! Parsed and checked in every build; only a build with the `local` feature can serve it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use crate::config::Config;

/// The settings only a `local` source takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalSettings {
    /// The tables of the embedded engine, `"dataset.table" = "file or glob"` (CSV, Parquet,
    /// newline-delimited JSON; relative to the config file).
    #[serde(default)]
    pub tables: BTreeMap<String, Spanned<String>>,
}

impl LocalSettings {
    /// Tables set, each named `dataset.table` with a path. `kind` is the span of the
    /// source's `kind = "local"`, where a missing `tables` is reported.
    pub(super) fn check(&self, kind: Range<usize>) -> Result<(), (Range<usize>, String)> {
        if self.tables.is_empty() {
            return Err((
                kind,
                "kind = \"local\" needs tables = { \"dataset.table\" = \"data/file.parquet\", ... }".into(),
            ));
        }
        for (name, path) in &self.tables {
            let parts: Vec<&str> = name.split('.').collect();
            let valid = |p: &str| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            };
            if parts.len() != 2 || !parts.iter().all(|p| valid(p)) || parts[0].starts_with('_') {
                return Err((
                    path.span(),
                    format!(
                        "table {name:?} must be \"dataset.table\" (letters, digits, _ and -; a dataset may not start with _)"
                    ),
                ));
            }
            if path.get_ref().trim().is_empty() {
                return Err((path.span(), format!("table {name}: the path is empty")));
            }
        }
        Ok(())
    }

    /// The tables as `(dataset, table, absolute path or glob)`.
    #[cfg_attr(not(feature = "local"), allow(dead_code))]
    pub fn table_paths(&self, config: &Config) -> Vec<(String, String, PathBuf)> {
        self.tables
            .iter()
            .filter_map(|(name, path)| {
                let (dataset, table) = name.split_once('.')?;
                Some((
                    dataset.to_string(),
                    table.to_string(),
                    config.resolve(Path::new(path.get_ref())),
                ))
            })
            .collect()
    }
}
