//! The policy in force: rules per source, daily byte budgets, and per-source byte caps.
//!
//! Built by the binary from the config, swapped whole on reload, read per request.

use std::collections::HashMap;
use std::sync::Arc;

use querygate_core::Identity;
use querygate_policy::{Budget, Classifier, Policy};

#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// Rules of each source by source name (source rules, then global rules, then the
    /// source's default). A source missing here is refused.
    pub sources: HashMap<String, Arc<Policy>>,
    pub budgets: Vec<Budget>,
    /// `maximumBytesBilled` each source sets on every query, by source name.
    pub max_bytes_billed: HashMap<String, u64>,
    /// Column classification and masking (`[[classify]]`, `[[mask]]`).
    pub classifier: Arc<Classifier>,
}

impl PolicySet {
    pub fn policy(&self, source: &str) -> Option<&Policy> {
        self.sources.get(source).map(Arc::as_ref)
    }

    /// The smallest daily budget that applies to `identity`, and whose it is.
    pub fn budget(&self, identity: &Identity) -> Option<(u64, String)> {
        self.budgets
            .iter()
            .filter(|b| b.who.matches(identity))
            .min_by_key(|b| b.bytes_per_day)
            .map(|b| (b.bytes_per_day, b.who.to_string()))
    }
}
