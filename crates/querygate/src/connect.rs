//! `querygate connect`: credentials for tools that only use Google's default credentials.
//!
//! MCP servers, dbt, notebooks and scripts build `bigquery.Client(project=…)` (or
//! `new BigQuery()`) with Application Default Credentials and no endpoint option. This
//! command writes an `external_account_authorized_user` credentials file — the format
//! `gcloud` writes for workforce identity, which Python google-auth and Node
//! google-auth-library both load from `GOOGLE_APPLICATION_CREDENTIALS` without any Google
//! service — whose `refresh_token` is the querygate API key and whose `token_url` is the
//! gateway's token endpoint (`querygate_bigquery::token`). It prints three `export` lines:
//! the file, `BIGQUERY_EMULATOR_HOST` (the endpoint both official BigQuery clients read
//! from the environment, still authenticating with the default credentials) and
//! `GOOGLE_CLOUD_PROJECT` (the source's project).
//!
//! Some tools read `GOOGLE_APPLICATION_CREDENTIALS` as a service-account key file of their
//! own (bq-readonly-mcp does). For them, `--gcloud-config` writes the same file where gcloud
//! keeps Application Default Credentials, `DIR/application_default_credentials.json`, and
//! exports `CLOUDSDK_CONFIG=DIR` instead: both libraries look there when
//! `GOOGLE_APPLICATION_CREDENTIALS` is unset. It never replaces such a file that is not one
//! of querygate's (a person's own gcloud credentials).
//!
//! The key is checked against the config's `[[api_keys]]` and the store's keys first (a
//! typo, a revoked or an expired key fails here, not in the tool). Must not: print or log
//! the key; it is written only into the file, created with mode 0600 (its directory 0700
//! when made here), and never into the `export` lines.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use querygate_core::Secret;
use querygate_store::KeyAdmin;

use crate::ConfigArg;
use crate::config::{Config, parse_time};

#[derive(clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The querygate API key the tools act with ("-" reads it from standard input). It is
    /// written into the credentials file only.
    #[arg(long, env = "QUERYGATE_KEY", hide_env_values = true)]
    key: String,
    /// Directory of the credentials file (default: $XDG_CONFIG_HOME/querygate, else
    /// ~/.config/querygate).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The source (`[[sources]] name`) whose project the tools use; needed when the config
    /// has several.
    #[arg(long)]
    source: Option<String>,
    /// The gateway's BigQuery address as the tools reach it, e.g. https://querygate.internal:9050
    /// (default: from server.bigquery_listen, https when TLS is configured).
    #[arg(long)]
    endpoint: Option<String>,
    /// Write the file as DIR/application_default_credentials.json (gcloud's place for it) and
    /// export CLOUDSDK_CONFIG=DIR instead of GOOGLE_APPLICATION_CREDENTIALS, for tools that
    /// read GOOGLE_APPLICATION_CREDENTIALS as a service-account key.
    #[arg(long)]
    gcloud_config: bool,
}

/// The environment variables `connect` prints, in order.
pub const CREDENTIALS_VAR: &str = "GOOGLE_APPLICATION_CREDENTIALS";
pub const ENDPOINT_VAR: &str = "BIGQUERY_EMULATOR_HOST";
pub const PROJECT_VAR: &str = "GOOGLE_CLOUD_PROJECT";
/// Instead of [`CREDENTIALS_VAR`] with `--gcloud-config`: gcloud's configuration directory.
pub const GCLOUD_CONFIG_VAR: &str = "CLOUDSDK_CONFIG";
/// The name of Application Default Credentials in gcloud's configuration directory.
const GCLOUD_ADC_FILE: &str = "application_default_credentials.json";

/// The `client_secret` of the file: both libraries need one to refresh; the gateway
/// ignores it (the key is the credential).
const CLIENT_SECRET: &str = "not-a-secret";

pub fn run(args: ConnectArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config.config).map_err(anyhow::Error::msg)?;
    let key = read_key(&args.key)?;
    let project = project_of(&config, args.source.as_deref())?;
    let identity = identity_of(&config, &key)?;
    let endpoint = match &args.endpoint {
        Some(e) => endpoint_arg(e)?,
        None => endpoint_of(&config),
    };
    let name = format!("{}.{}", slug(&identity), slug(&project));
    let dir = match args.dir {
        Some(d) => d,
        None if args.gcloud_config => default_dir()?.join(format!("gcloud-{name}")),
        None => default_dir()?,
    };
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    let file = if args.gcloud_config {
        let file = dir.join(GCLOUD_ADC_FILE);
        refuse_foreign(&file)?;
        file
    } else {
        dir.join(format!("{name}.json"))
    };
    let json = credentials_json(&key, &endpoint);
    write_private(&dir, &file, &json)?;
    let first = if args.gcloud_config {
        (GCLOUD_CONFIG_VAR, dir.as_path())
    } else {
        (CREDENTIALS_VAR, file.as_path())
    };
    print!("{}", exports(first, &endpoint, &project));
    eprintln!(
        "querygate: credentials of {identity} for project {project} through {endpoint} written \
         to {} (mode 0600; it holds the key). Run the tool with these variables, e.g. \
         eval \"$(querygate connect …)\".",
        file.display()
    );
    if endpoint.starts_with("https://") {
        eprintln!(
            "querygate: over TLS, the tools must trust the gateway's certificate: \
             REQUESTS_CA_BUNDLE (Python), NODE_EXTRA_CA_CERTS (Node), or the system's store."
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The key as given, or read from standard input for `-`.
fn read_key(arg: &str) -> anyhow::Result<Secret> {
    let text = if arg == "-" {
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .context("cannot read the key from standard input")?;
        line
    } else {
        arg.to_string()
    };
    let key = text.trim();
    if key.is_empty() {
        bail!("--key is empty: pass the querygate API key (or - to read it from standard input)");
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("--key holds spaces or control characters: pass the API key alone");
    }
    if key.split('.').count() == 3 && key.starts_with("ey") {
        bail!(
            "--key looks like an identity provider's token (a JWT); connect needs a querygate \
             API key (`querygate keys new`): a token expires and does not belong in a file"
        );
    }
    Ok(Secret::new(key))
}

/// The project of the source the tools use.
fn project_of(config: &Config, source: Option<&str>) -> anyhow::Result<String> {
    let names = || {
        config
            .sources
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match source {
        Some(name) => match config.sources.iter().find(|s| s.name == name) {
            Some(s) => Ok(s.project.clone()),
            None => bail!(
                "no source named {name:?} in the config (sources: {})",
                names()
            ),
        },
        None => match config.sources.as_slice() {
            [only] => Ok(only.project.clone()),
            [] => bail!("the config has no [[sources]]"),
            _ => bail!(
                "the config has several sources; pick one with --source ({})",
                names()
            ),
        },
    }
}

/// Whose key this is: a config key, else a stored one; refused when unknown, expired or revoked.
fn identity_of(config: &Config, key: &Secret) -> anyhow::Result<String> {
    let hash = key.sha256_hex();
    let now = jiff::Timestamp::now().as_second();
    let show = |secs: i64| {
        jiff::Timestamp::from_second(secs).map_or_else(|_| secs.to_string(), |t| t.to_string())
    };
    if let Some(k) = config
        .api_keys
        .iter()
        .find(|k| k.key_sha256.get_ref().eq_ignore_ascii_case(&hash))
    {
        if let Some(expires) = &k.expires {
            let at = parse_time(expires.get_ref()).map_err(anyhow::Error::msg)?;
            if at <= now {
                bail!("this key of {} expired at {}", k.identity, show(at));
            }
        }
        return Ok(k.identity.clone());
    }
    let store = config.store_path();
    if store.exists() {
        let admin = KeyAdmin::open(&store)
            .with_context(|| format!("cannot open the store at {}", store.display()))?;
        if let Some(k) = admin.list()?.into_iter().find(|k| k.key_sha256 == hash) {
            if let Some(at) = k.revoked {
                bail!("this key of {} was revoked at {}", k.identity, show(at));
            }
            if let Some(at) = k.expires.filter(|at| *at <= now) {
                bail!("this key of {} expired at {}", k.identity, show(at));
            }
            return Ok(k.identity);
        }
    }
    bail!(
        "this key is not one of the gateway's API keys (neither in {}'s [[api_keys]] nor in its \
         store); check --config, or make one with `querygate keys new`",
        config.base.display()
    )
}

/// The BigQuery endpoint of a config as a tool on this machine reaches it.
fn endpoint_of(config: &Config) -> String {
    let addr = config.listen();
    let scheme = if config.server.tls_cert.is_some() {
        "https"
    } else {
        "http"
    };
    let host = match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V4(ip) => ip.to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
    };
    format!("{scheme}://{host}:{}", addr.port())
}

/// `--endpoint`, checked: http(s), a host, no path (Node's client appends `/projects/…`
/// to it as it is, Python's `/bigquery/v2/projects/…`), no credentials or query.
fn endpoint_arg(text: &str) -> anyhow::Result<String> {
    let url = url::Url::parse(text.trim()).with_context(|| format!("--endpoint {text:?}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        bail!("--endpoint must be http(s)://HOST[:PORT], not {text:?}");
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        bail!("--endpoint must have no path or query (the clients add the API path): {text:?}");
    }
    if !url.username().is_empty() || url.password().is_some() {
        bail!("--endpoint must not hold credentials");
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

/// Where credentials go by default.
fn default_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .context("neither XDG_CONFIG_HOME nor HOME is set: pass --dir")?;
    Ok(base.join("querygate"))
}

/// A file-name-safe form of an identity or project.
fn slug(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The credentials file: what google-auth and google-auth-library need to refresh
/// (`refresh_token`, `token_url`, `client_id`, `client_secret`), nothing else.
fn credentials_json(key: &Secret, endpoint: &str) -> String {
    let doc = serde_json::json!({
        "type": "external_account_authorized_user",
        "client_id": querygate_bigquery::token::CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "refresh_token": key.expose(),
        "token_url": format!("{endpoint}{}", querygate_bigquery::token::PATH),
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// Refuses to replace a credentials file that querygate did not write (say, a person's own
/// gcloud Application Default Credentials).
fn refuse_foreign(file: &Path) -> anyhow::Result<()> {
    let Ok(text) = std::fs::read_to_string(file) else {
        return Ok(());
    };
    let ours = serde_json::from_str::<serde_json::Value>(&text).is_ok_and(|doc| {
        doc["type"] == "external_account_authorized_user"
            && doc["client_id"] == querygate_bigquery::token::CLIENT_ID
            && doc["token_url"]
                .as_str()
                .is_some_and(|u| u.ends_with(querygate_bigquery::token::PATH))
    });
    if !ours {
        bail!(
            "{} holds credentials querygate did not write; pass another --dir",
            file.display()
        );
    }
    Ok(())
}

/// Writes `text` to `file` with mode 0600 (atomically: a private temporary file renamed
/// over it), making `dir` with mode 0700 when it does not exist.
fn write_private(dir: &Path, file: &Path, text: &str) -> anyhow::Result<()> {
    if !dir.exists() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("credentials"),
        std::process::id()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let written = opts
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, file));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", file.display()));
    }
    Ok(())
}

/// The `export` lines, values quoted for a POSIX shell where they need it: where the
/// credentials are (`first`), the endpoint and the project.
fn exports(first: (&str, &Path), endpoint: &str, project: &str) -> String {
    let path = first.1.to_string_lossy();
    [
        (first.0, path.as_ref()),
        (ENDPOINT_VAR, endpoint),
        (PROJECT_VAR, project),
    ]
    .iter()
    .map(|(name, value)| format!("export {name}={}\n", shell_quote(value)))
    .collect()
}

fn shell_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:@%+=,[]".contains(c));
    if plain {
        value.to_string()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, extra: &str) -> Config {
        let path = dir.join("querygate.toml");
        std::fs::write(&path, extra).expect("write config");
        Config::load(&path).expect("config loads")
    }

    fn tmp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("qg-connect-{}", uuid_like()));
        std::fs::create_dir_all(&dir).expect("tmp");
        dir
    }

    fn uuid_like() -> String {
        use rand::RngCore;
        let mut raw = [0u8; 8];
        rand::rng().fill_bytes(&mut raw);
        hex::encode(raw)
    }

    const KEY: &str = "qg_0123456789abcdef";

    fn base(listen: &str, tls: &str) -> String {
        let hash = Secret::new(KEY).sha256_hex();
        format!(
            "[server]\nbigquery_listen = \"{listen}\"\n{tls}\n[store]\npath = \"qg.db\"\n\n\
             [[api_keys]]\nidentity = \"agent:claude-code\"\ngroups = [\"agents\"]\nkey_sha256 = \"{hash}\"\n\n\
             [[sources]]\nname = \"analytics\"\nkind = \"bigquery\"\nproject = \"test-project\"\n\
             endpoint = \"http://127.0.0.1:1\"\ncredentials = \"none\"\n"
        )
    }

    #[test]
    fn the_file_is_what_both_libraries_refresh_with_and_private() {
        let dir = tmp();
        let out = dir.join("creds").join("nested");
        let file = out.join("a.json");
        write_private(
            &out,
            &file,
            &credentials_json(&Secret::new(KEY), "http://127.0.0.1:9050"),
        )
        .expect("write");
        let doc: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).expect("read")).expect("json");
        assert_eq!(doc["type"], "external_account_authorized_user");
        assert_eq!(doc["refresh_token"], KEY);
        assert_eq!(
            doc["token_url"],
            "http://127.0.0.1:9050/querygate/oauth2/token"
        );
        assert_eq!(doc["client_id"], "querygate");
        assert!(doc["client_secret"].as_str().is_some_and(|s| !s.is_empty()));
        assert_eq!(doc.as_object().expect("object").len(), 5, "{doc}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
            assert_eq!(mode(&file), 0o600);
            assert_eq!(mode(&out), 0o700);
            // Rewriting an existing file (say one made 0644 by hand) leaves it 0600 again.
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
            write_private(&out, &file, "{}").expect("rewrite");
            assert_eq!(mode(&file), 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(&out)
            .expect("ls")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("a.json")]);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_exports_name_the_file_endpoint_and_project_never_the_key() {
        let text = exports(
            (
                CREDENTIALS_VAR,
                Path::new("/home/ana/.config/querygate/agent_x.p.json"),
            ),
            "http://127.0.0.1:9050",
            "test-project",
        );
        assert_eq!(
            text,
            "export GOOGLE_APPLICATION_CREDENTIALS=/home/ana/.config/querygate/agent_x.p.json\n\
             export BIGQUERY_EMULATOR_HOST=http://127.0.0.1:9050\n\
             export GOOGLE_CLOUD_PROJECT=test-project\n"
        );
        let odd = exports(
            (CREDENTIALS_VAR, Path::new("/tmp/it's here/c.json")),
            "https://[::1]:9050",
            "p",
        );
        assert!(
            odd.starts_with("export GOOGLE_APPLICATION_CREDENTIALS='/tmp/it'\\''s here/c.json'\n"),
            "{odd}"
        );
        assert!(odd.contains("BIGQUERY_EMULATOR_HOST=https://[::1]:9050\n"));
        assert!(!text.contains(KEY) && !odd.contains(KEY));
        let gcloud = exports(
            (GCLOUD_CONFIG_VAR, Path::new("/c/gcloud-x")),
            "http://h:1",
            "p",
        );
        assert!(
            gcloud.starts_with("export CLOUDSDK_CONFIG=/c/gcloud-x\n"),
            "{gcloud}"
        );
        assert!(!gcloud.contains(CREDENTIALS_VAR));
    }

    #[test]
    fn a_gcloud_file_that_is_not_querygates_is_never_replaced() {
        let dir = tmp();
        let file = dir.join(GCLOUD_ADC_FILE);
        refuse_foreign(&file).expect("absent: fine");
        std::fs::write(
            &file,
            r#"{"type": "authorized_user", "refresh_token": "1//x"}"#,
        )
        .expect("write");
        let err = refuse_foreign(&file).expect_err("a person's own");
        assert!(err.to_string().contains("did not write"), "{err}");
        std::fs::write(&file, credentials_json(&Secret::new(KEY), "http://h:1")).expect("write");
        refuse_foreign(&file).expect("ours: replaced");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_key_names_its_identity_or_is_refused() {
        let dir = tmp();
        let c = config(&dir, &base("127.0.0.1:9050", ""));
        assert_eq!(
            identity_of(&c, &Secret::new(KEY)).expect("known"),
            "agent:claude-code"
        );
        let err = identity_of(&c, &Secret::new("qg_other")).expect_err("unknown");
        assert!(
            err.to_string()
                .contains("not one of the gateway's API keys")
        );
        assert!(!err.to_string().contains("qg_other"));
        // A stored key, then revoked.
        let admin = KeyAdmin::open(&c.store_path()).expect("store");
        let stored = Secret::new("qg_stored");
        admin
            .add(&querygate_store::StoredKey {
                key_sha256: stored.sha256_hex(),
                identity: "ci:deploy".into(),
                groups: vec![],
                kind: Some("service".into()),
                created: 0,
                expires: None,
                revoked: None,
            })
            .expect("add");
        assert_eq!(identity_of(&c, &stored).expect("stored"), "ci:deploy");
        admin.revoke("ci:deploy", 1).expect("revoke");
        let err = identity_of(&c, &stored).expect_err("revoked");
        assert!(err.to_string().contains("revoked"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn keys_that_cannot_go_into_a_file_are_refused() {
        assert!(read_key("  ").is_err());
        assert!(read_key("qg_a b").is_err());
        assert!(read_key("eyJhbGciOi.eyJzdWIiOi.c2ln").is_err());
        assert_eq!(read_key(" qg_k \n").expect("trimmed").expose(), "qg_k");
    }

    #[test]
    fn the_endpoint_follows_the_listener_or_the_flag() {
        let dir = tmp();
        assert_eq!(
            endpoint_of(&config(&dir, &base("127.0.0.1:9050", ""))),
            "http://127.0.0.1:9050"
        );
        assert_eq!(
            endpoint_of(&config(
                &dir,
                &base(
                    "0.0.0.0:9443",
                    "tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\ninsecure_plaintext = false"
                )
            )),
            "https://127.0.0.1:9443"
        );
        assert_eq!(
            endpoint_arg("https://querygate.internal:9050/").expect("ok"),
            "https://querygate.internal:9050"
        );
        for bad in [
            "querygate:9050",
            "ftp://h",
            "http://h/bigquery/v2",
            "http://u:p@h",
            "http://h?x=1",
        ] {
            assert!(endpoint_arg(bad).is_err(), "{bad}");
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn the_project_is_the_sources_and_several_need_a_choice() {
        let dir = tmp();
        let one = config(&dir, &base("127.0.0.1:9050", ""));
        assert_eq!(project_of(&one, None).expect("one"), "test-project");
        assert_eq!(
            project_of(&one, Some("analytics")).expect("named"),
            "test-project"
        );
        assert!(project_of(&one, Some("nope")).is_err());
        let two = config(
            &dir,
            &format!(
                "{}\n[[sources]]\nname = \"other\"\nkind = \"bigquery\"\nproject = \"p2\"\n\
                 endpoint = \"http://127.0.0.1:2\"\ncredentials = \"none\"\n",
                base("127.0.0.1:9050", "")
            ),
        );
        let err = project_of(&two, None).expect_err("ambiguous");
        assert!(err.to_string().contains("--source"), "{err}");
        assert_eq!(project_of(&two, Some("other")).expect("named"), "p2");
        assert_eq!(slug("agent:claude code/x"), "agent_claude_code_x");
        std::fs::remove_dir_all(&dir).ok();
    }
}
