//! `kind = "postgres"`: a PostgreSQL database reached with the gateway's own credential;
//! clients connect to querygate's PostgreSQL listener with `dbname` = the source's
//! `project` (its `name` when not set). These keys are refused on a source of any other
//! kind.
//!
//! ```toml
//! [[sources]]
//! name = "app"
//! kind = "postgres"
//! url = "postgresql://querygate@127.0.0.1:5432/app"   # no password in the URL
//! password_env = "APP_DB_PASSWORD"                    # or password_file = "app.pass"
//! tls = "prefer"                                      # disable | prefer | require | verify-full
//! ca_file = "root.crt"                                # for verify-full
//! ```

use std::path::PathBuf;

use querygate_core::Secret;
use serde::Deserialize;
use toml::Spanned;

use crate::config::Config;

/// The settings only a `postgres` source takes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSettings {
    /// `postgresql://user@host:port/database`.
    pub url: Spanned<String>,
    /// The environment variable holding the upstream password.
    pub password_env: Option<Spanned<String>>,
    /// A file holding the upstream password (relative to the config file).
    pub password_file: Option<Spanned<String>>,
    /// How the connection to the upstream is encrypted (default `prefer`).
    pub tls: Option<Spanned<String>>,
    /// The CA certificates (PEM) `verify-full` checks the server's certificate against.
    pub ca_file: Option<Spanned<String>>,
}

impl PostgresSettings {
    /// `project` is the source's `project` (clients' `dbname`): it must be the upstream
    /// database's own name, since a statement may name it (`db.schema.table`) and rules
    /// and masks must see the name the server resolves.
    pub(super) fn check(&self, project: &str) -> Result<(), (std::ops::Range<usize>, String)> {
        let url = self.url.get_ref();
        let parsed =
            url::Url::parse(url).map_err(|e| (self.url.span(), format!("url {url:?}: {e}")))?;
        if !matches!(parsed.scheme(), "postgresql" | "postgres") {
            return Err((self.url.span(), "url must start with postgresql://".into()));
        }
        if parsed.password().is_some() {
            return Err((
                self.url.span(),
                "a password does not belong in url: use password_env or password_file".into(),
            ));
        }
        if parsed.username().is_empty() || parsed.host_str().is_none_or(str::is_empty) {
            return Err((
                self.url.span(),
                "url must name a user and a host: postgresql://user@host:5432/database".into(),
            ));
        }
        let database = parsed.path().trim_start_matches('/');
        let database = if database.is_empty() {
            parsed.username()
        } else {
            database
        };
        if database != project {
            return Err((
                self.url.span(),
                format!(
                    "the url's database {database:?} must be the source's project ({project:?}): \
                     statements may name it (database.schema.table), and rules and masks must \
                     see the name the server reads; set project = {database:?} (clients then \
                     connect with dbname={database})"
                ),
            ));
        }
        if let (Some(_), Some(file)) = (&self.password_env, &self.password_file) {
            return Err((
                file.span(),
                "set password_env or password_file, not both".into(),
            ));
        }
        let tls = self.tls_mode();
        if tls.is_none() {
            let span = self.tls.as_ref().map_or(self.url.span(), Spanned::span);
            return Err((
                span,
                "tls must be one of disable, prefer, require, verify-full".into(),
            ));
        }
        if tls == Some(querygate_postgres::TlsMode::VerifyFull) && self.ca_file.is_none() {
            let span = self.tls.as_ref().map_or(self.url.span(), Spanned::span);
            return Err((span, "tls = \"verify-full\" needs ca_file".into()));
        }
        Ok(())
    }

    pub fn tls_mode(&self) -> Option<querygate_postgres::TlsMode> {
        querygate_postgres::TlsMode::parse(self.tls.as_ref().map_or("prefer", |t| t.get_ref()))
    }

    /// The upstream password, read now (from the environment or the file).
    pub fn password(&self, config: &Config) -> Result<Option<Secret>, String> {
        if let Some(var) = &self.password_env {
            let var = var.get_ref();
            return match std::env::var(var) {
                Ok(v) if !v.is_empty() => Ok(Some(Secret::new(v))),
                _ => Err(format!(
                    "password_env: the environment variable {var} is not set"
                )),
            };
        }
        if let Some(file) = &self.password_file {
            let path = config.resolve(std::path::Path::new(file.get_ref()));
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("password_file {}: {e}", path.display()))?;
            let password = text.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                return Err(format!("password_file {} is empty", path.display()));
            }
            return Ok(Some(Secret::new(password)));
        }
        Ok(None)
    }

    /// The CA certificates of `ca_file`, read now.
    pub fn ca(&self, config: &Config) -> Result<Option<Vec<u8>>, String> {
        let Some(file) = &self.ca_file else {
            return Ok(None);
        };
        let path: PathBuf = config.resolve(std::path::Path::new(file.get_ref()));
        std::fs::read(&path)
            .map(Some)
            .map_err(|e| format!("ca_file {}: {e}", path.display()))
    }
}
