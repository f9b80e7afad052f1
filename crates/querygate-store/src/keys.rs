//! API keys kept in the store: only their SHA-256, who they belong to, and when they
//! expire or were revoked.
//!
//! `querygate keys new --store` adds keys and `querygate keys revoke` revokes them from
//! another process while the gateway runs; the gateway looks a key up by its hash on
//! each request (a primary-key lookup), so expiry and revocation take effect at once.
//! The key itself is never stored and never passes through this module. Times are Unix
//! seconds (UTC). Whether a key is still valid is the caller's judgement, not this
//! module's: it only reports what is stored.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Store, StoreError, schema, sqlite_err};

/// One stored key, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// Lower-case hex SHA-256 of the key.
    pub key_sha256: String,
    pub identity: String,
    pub groups: Vec<String>,
    /// `human` / `agent` / `service`, when set at creation.
    pub kind: Option<String>,
    pub created: i64,
    pub expires: Option<i64>,
    pub revoked: Option<i64>,
}

const COLUMNS: &str = "key_sha256, identity, groups, kind, created, expires, revoked";

fn stored_key(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    let groups: String = r.get(2)?;
    Ok(StoredKey {
        key_sha256: r.get(0)?,
        identity: r.get(1)?,
        groups: serde_json::from_str(&groups).unwrap_or_default(),
        kind: r.get(3)?,
        created: r.get(4)?,
        expires: r.get(5)?,
        revoked: r.get(6)?,
    })
}

impl Store {
    /// The stored key with this SHA-256 (lower-case hex), revoked or expired ones included.
    pub fn api_key(&self, key_sha256: &str) -> Result<Option<StoredKey>, StoreError> {
        let conn = self.reads.lock().unwrap_or_else(|e| e.into_inner());
        conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE key_sha256 = ?1"
        ))
        .and_then(|mut st| st.query_row(params![key_sha256], stored_key).optional())
        .map_err(sqlite_err(&self.path))
    }
}

/// What `revoke` was asked to revoke.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// These keys are now revoked (they were not before); empty when every key the
    /// selector names was revoked already.
    Revoked(Vec<StoredKey>),
    /// Nothing stored matches.
    NoMatch,
    /// A hash prefix matches several keys; nothing was revoked.
    Ambiguous(Vec<StoredKey>),
}

/// Administration of stored keys (the `keys` commands), on its own connection.
pub struct KeyAdmin {
    path: PathBuf,
    conn: Connection,
}

impl std::fmt::Debug for KeyAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAdmin")
            .field("path", &self.path)
            .finish()
    }
}

/// Shortest hash prefix `revoke` accepts, so a typo cannot revoke a stranger's key.
pub const MIN_PREFIX: usize = 8;

impl KeyAdmin {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> Result<KeyAdmin, StoreError> {
        let conn = schema::open(path, crate::Sync::Full).map_err(sqlite_err(path))?;
        Ok(KeyAdmin {
            path: path.to_path_buf(),
            conn,
        })
    }

    /// Stores a new key. Fails if the same hash is already stored.
    pub fn add(&self, key: &StoredKey) -> Result<(), StoreError> {
        let groups = serde_json::to_string(&key.groups).unwrap_or_else(|_| "[]".into());
        self.conn
            .execute(
                &format!("INSERT INTO api_keys ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"),
                params![
                    key.key_sha256.to_ascii_lowercase(),
                    key.identity,
                    groups,
                    key.kind,
                    key.created,
                    key.expires,
                    key.revoked
                ],
            )
            .map(|_| ())
            .map_err(sqlite_err(&self.path))
    }

    /// Every stored key, newest first.
    pub fn list(&self) -> Result<Vec<StoredKey>, StoreError> {
        let mut st = self
            .conn
            .prepare(&format!(
                "SELECT {COLUMNS} FROM api_keys ORDER BY created DESC, identity"
            ))
            .map_err(sqlite_err(&self.path))?;
        st.query_map([], stored_key)
            .and_then(|rows| rows.collect())
            .map_err(sqlite_err(&self.path))
    }

    /// Revokes, at time `now`, every unrevoked key of the identity `selector`, or the
    /// one key whose hash starts with `selector` (at least [`MIN_PREFIX`] hex digits).
    pub fn revoke(&self, selector: &str, now: i64) -> Result<RevokeOutcome, StoreError> {
        let keys = self.list()?;
        let by_identity: Vec<StoredKey> = keys
            .iter()
            .filter(|k| k.identity == selector)
            .cloned()
            .collect();
        let selected = if !by_identity.is_empty() {
            by_identity
        } else {
            let prefix = selector.to_ascii_lowercase();
            let is_prefix = prefix.len() >= MIN_PREFIX
                && prefix.len() <= 64
                && prefix.chars().all(|c| c.is_ascii_hexdigit());
            if !is_prefix {
                return Ok(RevokeOutcome::NoMatch);
            }
            let matching: Vec<StoredKey> = keys
                .into_iter()
                .filter(|k| k.key_sha256.starts_with(&prefix))
                .collect();
            if matching.len() > 1 {
                return Ok(RevokeOutcome::Ambiguous(matching));
            }
            matching
        };
        if selected.is_empty() {
            return Ok(RevokeOutcome::NoMatch);
        }
        let fresh: Vec<StoredKey> = selected
            .into_iter()
            .filter(|k| k.revoked.is_none())
            .collect();
        let mut st = self
            .conn
            .prepare("UPDATE api_keys SET revoked = ?2 WHERE key_sha256 = ?1 AND revoked IS NULL")
            .map_err(sqlite_err(&self.path))?;
        for k in &fresh {
            st.execute(params![k.key_sha256, now])
                .map_err(sqlite_err(&self.path))?;
        }
        Ok(RevokeOutcome::Revoked(
            fresh
                .into_iter()
                .map(|k| StoredKey {
                    revoked: Some(now),
                    ..k
                })
                .collect(),
        ))
    }
}
