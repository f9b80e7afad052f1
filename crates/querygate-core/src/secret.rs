//! A secret string (an API key, a bearer token) that never prints itself.
//!
//! `Debug` and `Display` show a fixed placeholder, so a secret that ends up in a
//! log line, an error or a `{:?}` dump leaks nothing. Only [`Secret::expose`]
//! gives the value, and its callers are few and greppable.

use std::fmt;

/// A value that must never reach logs, errors, `Debug` output or the audit log.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Call only where the value is needed to compute
    /// something (a hash, an outgoing header), never to print it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Hex SHA-256 of the secret: what the config stores for API keys.
    pub fn sha256_hex(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_hide_the_value() {
        let s = Secret::new("qg_supersecret");
        assert!(!format!("{s:?}").contains("supersecret"));
        assert!(!format!("{s}").contains("supersecret"));
        assert_eq!(s.expose(), "qg_supersecret");
    }

    #[test]
    fn sha256_is_hex_of_the_value() {
        let s = Secret::new("abc");
        assert_eq!(
            s.sha256_hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
