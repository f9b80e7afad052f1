//! The policy in force: rules per source, daily budgets, and per-source byte caps.
//!
//! Built by the binary from the config, swapped whole on reload, read per request.

use std::collections::HashMap;
use std::sync::Arc;

use querygate_core::Identity;
use querygate_policy::{Amount, Budget, Classifier, Policy};

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

    /// The smallest daily budgets in bytes and in rows that apply to `identity`.
    pub fn budgets(&self, identity: &Identity) -> Budgets {
        let smallest = |unit: fn(&Amount) -> Option<u64>| {
            self.budgets
                .iter()
                .filter(|b| b.who.matches(identity))
                .filter_map(|b| Some((unit(&b.per_day)?, b.who.to_string())))
                .min_by_key(|(amount, _)| *amount)
        };
        Budgets {
            bytes: smallest(|a| match a {
                Amount::Bytes(b) => Some(*b),
                Amount::Rows(_) => None,
            }),
            rows: smallest(|a| match a {
                Amount::Rows(r) => Some(*r),
                Amount::Bytes(_) => None,
            }),
        }
    }
}

/// The daily budgets that hold an identity: each the smallest of its unit that applies,
/// and whose it is (`group:agents`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budgets {
    pub bytes: Option<(u64, String)>,
    pub rows: Option<(u64, String)>,
}
