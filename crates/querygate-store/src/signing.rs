//! The audit signing key: Ed25519 (ring), kept as a PKCS#8 file beside the store.
//!
//! Checkpoints sign the chain head so that an auditor holding only the public key can
//! check that nobody rewrote the log, and, with checkpoints kept elsewhere, that nobody
//! cut its tail. The key file is created at first start with mode 0600; the public key is
//! written next to it (`<key>.pub`, hex) for auditors. The private key never leaves this
//! module: [`Signer`]'s `Debug` shows only the key id.

use std::path::{Path, PathBuf};

use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// Why a key file (the audit signing key or the masking key) cannot be loaded or created.
/// `key` says which key it is ("audit signing key", "masking key").
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot generate the {key} {}", path.display())]
    Generate { key: &'static str, path: PathBuf },
    #[error("cannot write the {key} {}: {error}", path.display())]
    Write {
        key: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("cannot read the {key} {}: {error}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is not an Ed25519 PKCS#8 key", path.display())]
    NotEd25519 { path: PathBuf },
    /// The public key file beside the signing key.
    #[error("cannot write {}: {error}", path.display())]
    WritePublic {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "the masking key {} must be at least 32 hex characters (128 bits)",
        path.display()
    )]
    ShortMaskKey { path: PathBuf },
}

const SIGNING_KEY: &str = "audit signing key";
const MASK_KEY: &str = "masking key";

pub struct Signer {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

/// The key id of a public key: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// The path of the public key written beside a key file.
pub fn public_path(key: &Path) -> PathBuf {
    let mut name = key.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

impl Signer {
    /// Loads the key at `path`, creating it (and `<path>.pub`) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Signer, KeyFileError> {
        let pkcs8 = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| {
                    KeyFileError::Generate {
                        key: SIGNING_KEY,
                        path: path.to_path_buf(),
                    }
                })?;
                write_private(path, doc.as_ref()).map_err(|error| KeyFileError::Write {
                    key: SIGNING_KEY,
                    path: path.to_path_buf(),
                    error,
                })?;
                doc.as_ref().to_vec()
            }
            Err(error) => {
                return Err(KeyFileError::Read {
                    key: SIGNING_KEY,
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8).map_err(|_| KeyFileError::NotEd25519 {
            path: path.to_path_buf(),
        })?;
        let public = hex::encode(pair.public_key().as_ref());
        let pub_path = public_path(path);
        let written = std::fs::read_to_string(&pub_path).ok();
        if written.as_deref().map(str::trim) != Some(public.as_str()) {
            std::fs::write(&pub_path, format!("{public}\n")).map_err(|error| {
                KeyFileError::WritePublic {
                    path: pub_path.clone(),
                    error,
                }
            })?;
        }
        let key_id = key_id(pair.public_key().as_ref());
        Ok(Signer { pair, key_id })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.pair.public_key().as_ref())
    }

    /// Hex signature of `message`.
    pub fn sign(&self, message: &str) -> String {
        hex::encode(self.pair.sign(message.as_bytes()).as_ref())
    }
}

#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Loads the masking key at `path` (64 hex characters: the `hash` strategy's key),
/// creating it with 256 random bits, readable by the owner only, when it does not exist.
pub fn load_or_create_mask_key(path: &Path) -> Result<querygate_core::Secret, KeyFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            ring::rand::SecureRandom::fill(&SystemRandom::new(), &mut bytes).map_err(|_| {
                KeyFileError::Generate {
                    key: MASK_KEY,
                    path: path.to_path_buf(),
                }
            })?;
            let text = hex::encode(bytes);
            write_private(path, text.as_bytes()).map_err(|error| KeyFileError::Write {
                key: MASK_KEY,
                path: path.to_path_buf(),
                error,
            })?;
            text
        }
        Err(error) => {
            return Err(KeyFileError::Read {
                key: MASK_KEY,
                path: path.to_path_buf(),
                error,
            });
        }
    };
    let key = text.trim();
    if key.len() < 32 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(KeyFileError::ShortMaskKey {
            path: path.to_path_buf(),
        });
    }
    Ok(querygate_core::Secret::new(key))
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

/// Whether `signature` (hex) is `public_key`'s (hex) signature of `message`.
pub fn verify(public_key: &str, message: &str, signature: &str) -> bool {
    let (Ok(public), Ok(sig)) = (hex::decode(public_key.trim()), hex::decode(signature)) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, public)
        .verify(message.as_bytes(), &sig)
        .is_ok()
}
