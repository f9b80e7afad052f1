//! The authenticate stage: a presented credential to an [`Identity`].
//!
//! Today: API keys, configured by their SHA-256 so the config never holds a key.
//! The lookup is by hash, so timing reveals nothing about the key itself. The key
//! never leaves this module except as its hash, and is never logged.

use std::collections::HashMap;

use querygate_core::{Denial, DenialKind, Identity, Secret};

/// One configured API key.
#[derive(Debug, Clone)]
pub struct ApiKey {
    pub identity: Identity,
    /// Lower-case hex SHA-256 of the key.
    pub key_sha256: String,
}

/// Maps credentials to identities.
#[derive(Debug, Default)]
pub struct Authenticator {
    by_hash: HashMap<String, Identity>,
}

impl Authenticator {
    pub fn new(keys: impl IntoIterator<Item = ApiKey>) -> Authenticator {
        Authenticator {
            by_hash: keys
                .into_iter()
                .map(|k| (k.key_sha256.to_ascii_lowercase(), k.identity))
                .collect(),
        }
    }

    pub fn authenticate(&self, credential: Option<&Secret>) -> Result<Identity, Denial> {
        let Some(credential) = credential else {
            return Err(Denial::new(
                DenialKind::Unauthenticated,
                "Request had no credential: send your querygate API key as the bearer token \
                 (Authorization: Bearer <key>)",
            ));
        };
        self.by_hash
            .get(&credential.sha256_hex())
            .cloned()
            .ok_or_else(|| {
                Denial::new(
                    DenialKind::Unauthenticated,
                    "Request had invalid authentication credentials: the bearer token is not a \
                     querygate API key known to this gateway (create one with `querygate keys new`)",
                )
            })
    }
}
