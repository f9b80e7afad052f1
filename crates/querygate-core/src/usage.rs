//! What an identity's requests used on a day, as budgets count it.

/// Bytes processed (or billed) and rows returned or changed: what one request charges,
/// or what a day's requests added up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub rows: u64,
}

impl Usage {
    pub fn is_zero(&self) -> bool {
        self.bytes == 0 && self.rows == 0
    }

    /// Both counts added, saturating.
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            bytes: self.bytes.saturating_add(other.bytes),
            rows: self.rows.saturating_add(other.rows),
        }
    }

    /// Both counts less `other`'s, saturating at zero.
    pub fn minus(self, other: Usage) -> Usage {
        Usage {
            bytes: self.bytes.saturating_sub(other.bytes),
            rows: self.rows.saturating_sub(other.rows),
        }
    }
}
