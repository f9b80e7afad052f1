//! `querygate keys new`: a fresh API key and the config block that admits it.
//!
//! The key is printed once and never stored; the config holds only its SHA-256.

use std::process::ExitCode;

use clap::Subcommand;
use querygate_core::Secret;
use rand::RngCore;

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print a new random key and the `[[api_keys]]` block to paste into querygate.toml.
    New {
        /// Identity recorded in the audit log, e.g. agent:claude-code.
        #[arg(long)]
        identity: String,
        /// Group of the identity (repeatable).
        #[arg(long = "group")]
        groups: Vec<String>,
    },
}

pub fn run(command: KeysCommand) -> anyhow::Result<ExitCode> {
    match command {
        KeysCommand::New { identity, groups } => {
            let mut raw = [0u8; 32];
            rand::rng().fill_bytes(&mut raw);
            let key = Secret::new(format!("qg_{}", hex::encode(raw)));
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
            println!("key_sha256 = \"{}\"", key.sha256_hex());
            Ok(ExitCode::SUCCESS)
        }
    }
}
