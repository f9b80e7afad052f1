//! `querygate keys`: create, list and revoke API keys.
//!
//! A key is printed once and never stored: the config (`[[api_keys]]`) or the store
//! (`--store`) keeps only its SHA-256. Keys in the store can be revoked with
//! `keys revoke` while the gateway runs, and take effect (or stop working) at once.
//! Must not: print a key anywhere but the one line that hands it to the user.

use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use querygate_core::{Identity, IdentityKind, Secret};
use querygate_store::{KeyAdmin, MIN_PREFIX, RevokeOutcome, StoredKey};
use rand::RngCore;

use crate::ConfigArg;
use crate::config::{Config, parse_time};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print a new random key and the `[[api_keys]]` block to paste into querygate.toml,
    /// or with --store, keep it in the gateway's store (effective at once, no restart).
    New {
        /// Identity recorded in the audit log, e.g. agent:claude-code.
        #[arg(long)]
        identity: String,
        /// Group of the identity (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
        /// human, agent or service (default: the kind the identity's prefix names; required
        /// when it names none).
        #[arg(long, value_parser = parse_kind)]
        kind: Option<IdentityKind>,
        /// When the key stops working: a duration from now ("30d", "12h") or a time
        /// ("2027-01-31", "2027-01-31T00:00:00Z").
        #[arg(long)]
        expires: Option<String>,
        /// Keep the key's hash in the store named by the config instead of printing a block.
        #[arg(long)]
        store: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the keys in the store (and those in the config), never the keys themselves.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revoke stored keys: every key of an identity, or one key by a prefix of its hash
    /// (at least 8 hex digits, as `keys list` shows). Effective at once, no restart.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// An identity (agent:x) or a key hash prefix.
        selector: String,
    },
}

fn parse_kind(text: &str) -> Result<IdentityKind, String> {
    match text {
        "human" => Ok(IdentityKind::Human),
        "agent" => Ok(IdentityKind::Agent),
        "service" => Ok(IdentityKind::Service),
        _ => Err("must be human, agent or service".into()),
    }
}

fn kind_name(kind: IdentityKind) -> &'static str {
    match kind {
        IdentityKind::Human => "human",
        IdentityKind::Agent => "agent",
        IdentityKind::Service => "service",
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn show_time(secs: i64) -> String {
    jiff::Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
}

/// `30d`-style durations from now, or an absolute time.
fn expiry(text: &str) -> anyhow::Result<i64> {
    if let Ok(d) = querygate_identity::parse_duration(text) {
        let secs = i64::try_from(d.as_secs()).context("--expires is too far away")?;
        return Ok(now().saturating_add(secs));
    }
    parse_time(text).map_err(|e| anyhow::anyhow!("--expires: {e}; or a duration like \"30d\""))
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::New {
            identity,
            groups,
            kind,
            expires,
            store,
            config,
        } => {
            if identity.trim().is_empty() {
                bail!("--identity must not be empty");
            }
            let Some(kind) = kind.or_else(|| Identity::kind_of_prefix(&identity)) else {
                bail!(
                    "say what kind of principal {identity} is: --kind human, agent or service \
                     (or start the identity with a prefix that says it: human:/user:/person:, \
                     agent:/ai:/bot:, service:/svc:/ci:/workload:)"
                );
            };
            let expires = expires.as_deref().map(expiry).transpose()?;
            if let Some(at) = expires
                && at <= now()
            {
                bail!("--expires {} is in the past", show_time(at));
            }
            let mut raw = [0u8; 32];
            rand::rng().fill_bytes(&mut raw);
            let key = Secret::new(format!("qg_{}", hex::encode(raw)));
            if store {
                let config = Config::load(&config.config).map_err(anyhow::Error::msg)?;
                let path = config.store_path();
                let admin = KeyAdmin::open(&path)
                    .with_context(|| format!("cannot open the store at {}", path.display()))?;
                admin.add(&StoredKey {
                    key_sha256: key.sha256_hex(),
                    identity: identity.clone(),
                    groups: groups.clone(),
                    kind: Some(kind_name(kind).to_string()),
                    created: now(),
                    expires,
                    revoked: None,
                })?;
                println!(
                    "# API key for {identity} (shown once; give it to the client as its bearer token):"
                );
                println!("{}", key.expose());
                eprintln!(
                    "stored as {} in {}{}; the running gateway accepts it at once \
                     (revoke: querygate keys revoke {identity})",
                    &key.sha256_hex()[..12],
                    path.display(),
                    expires
                        .map(|t| format!(", expires {}", show_time(t)))
                        .unwrap_or_default()
                );
                return Ok(ExitCode::SUCCESS);
            }
            let groups = groups
                .iter()
                .map(|g| format!("{g:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            println!(
                "# API key for {identity} (shown once; give it to the client as its bearer token):"
            );
            println!("# {}", key.expose());
            println!();
            println!("[[api_keys]]");
            println!("identity = {identity:?}");
            println!("groups = [{groups}]");
            println!("kind = {:?}", kind_name(kind));
            if let Some(at) = expires {
                println!("expires = {:?}", show_time(at));
            }
            println!("key_sha256 = \"{}\"", key.sha256_hex());
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::List { config } => {
            let config = Config::load(&config.config).map_err(anyhow::Error::msg)?;
            let admin = KeyAdmin::open(&config.store_path())?;
            let now = now();
            println!(
                "{:<14} {:<7} {:<28} {:<24} {:<22} status",
                "key sha256", "where", "identity", "groups", "expires"
            );
            for k in &config.api_keys {
                let expires = k
                    .expires
                    .as_ref()
                    .and_then(|e| parse_time(e.get_ref()).ok());
                println!(
                    "{:<14} {:<7} {:<28} {:<24} {:<22} {}",
                    &k.key_sha256.get_ref()[..12.min(k.key_sha256.get_ref().len())],
                    "config",
                    k.identity,
                    k.groups.join(","),
                    expires.map(show_time).unwrap_or_else(|| "never".into()),
                    if expires.is_some_and(|t| t <= now) {
                        "expired"
                    } else {
                        "active"
                    }
                );
            }
            for k in admin.list()? {
                let status = match (k.revoked, k.expires) {
                    (Some(at), _) => format!("revoked {}", show_time(at)),
                    (None, Some(at)) if at <= now => "expired".to_string(),
                    _ => "active".to_string(),
                };
                println!(
                    "{:<14} {:<7} {:<28} {:<24} {:<22} {status}",
                    &k.key_sha256[..12],
                    "store",
                    k.identity,
                    k.groups.join(","),
                    k.expires.map(show_time).unwrap_or_else(|| "never".into()),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Revoke { config, selector } => {
            let config_path = config.config;
            let config = Config::load(&config_path).map_err(anyhow::Error::msg)?;
            let admin = KeyAdmin::open(&config.store_path())?;
            match admin.revoke(&selector, now())? {
                RevokeOutcome::Revoked(keys) if keys.is_empty() => {
                    println!("{selector}: already revoked; nothing changed");
                }
                RevokeOutcome::Revoked(keys) => {
                    for k in &keys {
                        println!(
                            "revoked {} of {} (the running gateway refuses it from now on)",
                            &k.key_sha256[..12],
                            k.identity
                        );
                    }
                }
                RevokeOutcome::Ambiguous(keys) => {
                    let names: Vec<String> = keys
                        .iter()
                        .map(|k| format!("{} ({})", &k.key_sha256[..12], k.identity))
                        .collect();
                    bail!(
                        "{selector} matches {} keys: {}; give more of the hash",
                        keys.len(),
                        names.join(", ")
                    );
                }
                RevokeOutcome::NoMatch => {
                    let lower = selector.to_ascii_lowercase();
                    let in_config = config.api_keys.iter().find(|k| {
                        k.identity == selector
                            || (lower.len() >= MIN_PREFIX
                                && k.key_sha256
                                    .get_ref()
                                    .to_ascii_lowercase()
                                    .starts_with(&lower))
                    });
                    match in_config {
                        Some(k) => bail!(
                            "the key of {} is in {}, not in the store: delete its [[api_keys]] \
                             block (the gateway reloads the file by itself)",
                            k.identity,
                            config_path.display()
                        ),
                        None => bail!(
                            "no stored key of identity {selector:?} or with a hash starting {selector:?} \
                             (hash prefixes need at least {MIN_PREFIX} hex digits; see `querygate keys list`)"
                        ),
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
