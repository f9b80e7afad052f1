//! `[server]` and `[store]`: where the gateway listens (the BigQuery front, the admin
//! API, the MCP and PostgreSQL fronts), TLS, the largest request body, and where the store lives and how it syncs.
//!
//! Checked here: listen addresses parse, plaintext only on loopback or by consent
//! (`insecure_plaintext`), TLS cert and key together, the admin API on its own port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Config, line_of};

pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the BigQuery REST front, e.g. `127.0.0.1:9050`.
    pub bigquery_listen: Spanned<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Allow plaintext on a non-loopback address (agents send bearer tokens: think twice).
    #[serde(default)]
    pub insecure_plaintext: bool,
    pub max_body_bytes: Option<usize>,
    /// Address of the admin API (approvals), e.g. `127.0.0.1:8080`; none when absent.
    pub admin_listen: Option<Spanned<String>>,
    /// Address of the MCP front (Streamable HTTP at `/mcp`), e.g. `127.0.0.1:9060`; none
    /// when absent.
    pub mcp_listen: Option<Spanned<String>>,
    /// Address of the PostgreSQL front, e.g. `127.0.0.1:6432`; none when absent.
    pub postgres_listen: Option<Spanned<String>>,
    /// The largest message a PostgreSQL client may send (default 64 MiB).
    pub postgres_max_message_bytes: Option<usize>,
}

pub const DEFAULT_POSTGRES_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// `[mcp]`: the MCP front's settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// The canonical URI tokens must be issued for (RFC 8707), shown in the
    /// protected-resource metadata; default: `http(s)://<mcp_listen>/mcp`.
    pub resource: Option<String>,
    /// The issuers that mint tokens for it (from `[[oidc]]`).
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Rows one tool call returns (pages beyond); default 200.
    pub max_rows: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    pub path: PathBuf,
    /// "full" (default): every commit is fsynced, records survive power loss.
    /// "normal": fsync at checkpoints only; records survive a querygate crash, not a machine crash.
    #[serde(default)]
    pub synchronous: Synchronous,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    #[default]
    Full,
    Normal,
}

impl Config {
    /// `[server]`: TLS both or neither, the listen addresses, the admin API's own port.
    pub(super) fn check_server(&self, text: &str, path: &Path) -> Result<(), String> {
        match (&self.server.tls_cert, &self.server.tls_key) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(format!(
                    "{}: [server] needs both tls_cert and tls_key, or neither",
                    path.display()
                ));
            }
            _ => {}
        }
        let data =
            self.check_listen("bigquery_listen", &self.server.bigquery_listen, text, path)?;
        let mut taken = vec![("bigquery_listen", data)];
        for (key, listen) in [
            ("admin_listen", &self.server.admin_listen),
            ("mcp_listen", &self.server.mcp_listen),
            ("postgres_listen", &self.server.postgres_listen),
        ] {
            let Some(listen) = listen else { continue };
            let addr = self.check_listen(key, listen, text, path)?;
            if let Some((other, _)) = taken.iter().find(|(_, a)| *a == addr) {
                return Err(format!(
                    "{}{}: server.{key} = {addr} is the address of {other}: give each \
                     front its own port",
                    path.display(),
                    line_of(text, &listen.span())
                ));
            }
            taken.push((key, addr));
        }
        Ok(())
    }

    /// A listen address: parsed, and plaintext only on loopback or by consent.
    fn check_listen(
        &self,
        key: &str,
        listen: &Spanned<String>,
        text: &str,
        path: &Path,
    ) -> Result<SocketAddr, String> {
        let fail =
            |msg: String| format!("{}{}: {msg}", path.display(), line_of(text, &listen.span()));
        let addr: SocketAddr = listen.get_ref().parse().map_err(|_| {
            fail(format!(
                "server.{key} = {:?} is not an address like \"127.0.0.1:9050\"",
                listen.get_ref()
            ))
        })?;
        let tls = self.server.tls_cert.is_some();
        if !tls && !addr.ip().is_loopback() && !self.server.insecure_plaintext {
            return Err(fail(format!(
                "server.{key} = {addr} is not a loopback address, and clients send \
                 bearer tokens: set tls_cert and tls_key, or insecure_plaintext = true if \
                 TLS ends in front of querygate"
            )));
        }
        Ok(addr)
    }

    pub fn listen(&self) -> SocketAddr {
        // Checked in `check`.
        self.server
            .bigquery_listen
            .get_ref()
            .parse()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9050)))
    }

    /// The admin API's address, if configured (checked at load).
    pub fn admin_listen(&self) -> Option<SocketAddr> {
        self.server
            .admin_listen
            .as_ref()
            .and_then(|a| a.get_ref().parse().ok())
    }

    /// The admin API as clients on this machine reach it: `http(s)://ADDR`, with an
    /// unspecified address (`0.0.0.0`, `[::]`) replaced by loopback.
    pub fn admin_url(&self) -> Option<String> {
        let mut addr = self.admin_listen()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let scheme = if self.server.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        Some(format!("{scheme}://{addr}"))
    }

    /// The MCP front's address, if configured (checked at load).
    pub fn mcp_listen(&self) -> Option<SocketAddr> {
        self.server
            .mcp_listen
            .as_ref()
            .and_then(|a| a.get_ref().parse().ok())
    }

    /// The PostgreSQL front's address, if configured (checked at load).
    pub fn postgres_listen(&self) -> Option<SocketAddr> {
        self.server
            .postgres_listen
            .as_ref()
            .and_then(|a| a.get_ref().parse().ok())
    }

    pub fn store_path(&self) -> PathBuf {
        self.resolve(&self.store.path)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{GOOD, error_of, parse};

    #[test]
    fn plaintext_off_loopback_needs_consent() {
        let open = GOOD.replace("127.0.0.1:9050", "0.0.0.0:9050");
        let e = error_of(&open);
        assert!(
            e.contains("line 3") && e.contains("insecure_plaintext"),
            "{e}"
        );
        let consented = open.replace("[store]", "insecure_plaintext = true\n\n[store]");
        parse(&consented).expect("explicit plaintext");
        let tls = open.replace(
            "[store]",
            "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\n[store]",
        );
        parse(&tls).expect("tls");
    }
}
