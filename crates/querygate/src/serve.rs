//! `querygate serve`: build the runtime objects from a checked config and run the fronts.
//!
//! Wiring only: config → store, authenticator (API keys, stored keys, OIDC issuers),
//! sources, pipeline → BigQuery front and, when `admin_listen` is set, the admin front
//! (`querygate-admin`: approvals, sessions), both served over TLS (rustls) when configured, else plaintext (loopback,
//! or by consent). Background tasks: reload, the ticket sweeper (every 5 s) and, when
//! `[notify] webhook` is set, the notifier. Unless `[recording] enabled = false`, the
//! session recorder runs beside the store and is closed (flushed) at a clean stop.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, bail};
use querygate_bigquery::{BigQuerySource, Front, UpstreamAuth, router};

use crate::any_source::AnySource;
use querygate_core::Identity;
use querygate_identity::KeyCaches;
use querygate_pipeline::{ApiKey, Approvals, Authenticator, Pipeline, Recordings};
use querygate_store::Store;
use tokio::net::TcpListener;

use crate::config::{
    BigQuerySettings, Config, DEFAULT_MAX_BODY_BYTES, LocalSettings, SourceConfig, SourceKind,
    UpstreamCredential,
};
use crate::notify::Notifier;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn run(config_path: &Path, log_format: LogFormat) -> anyhow::Result<ExitCode> {
    init_logging(log_format);
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(config, config_path.to_path_buf()))?;
    Ok(ExitCode::SUCCESS)
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUERYGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The credentials a config admits: its API keys, the keys in the store, and tokens of
/// its `[[oidc]]` issuers (whose cached keys `caches` keeps across reloads).
fn authenticator(
    config: &Config,
    store: &Arc<Store>,
    caches: &KeyCaches,
) -> Result<Authenticator, String> {
    let keys = config
        .api_keys
        .iter()
        .map(|k| {
            Ok(ApiKey {
                identity: Identity {
                    subject: k.identity.clone(),
                    groups: k.groups.clone(),
                    kind: k
                        .kind
                        .unwrap_or_else(|| Identity::kind_from_subject(&k.identity)),
                    ..Identity::default()
                },
                key_sha256: k.key_sha256.get_ref().clone(),
                expires: k
                    .expires
                    .as_ref()
                    .map(|e| crate::config::parse_time(e.get_ref()))
                    .transpose()?,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let issuers = config
        .issuers()?
        .into_iter()
        .map(|c| caches.issuer(c).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Authenticator::new(keys)
        .with_store(store.clone())
        .with_issuers(issuers))
}

/// Builds the BigQuery front from a config; also returns the store, for reloads.
pub fn front(config: &Config, caches: &KeyCaches) -> anyhow::Result<(Arc<Front>, Arc<Store>)> {
    let store_path = config.store_path();
    let sync = match config.store.synchronous {
        crate::config::Synchronous::Full => querygate_store::Sync::Full,
        crate::config::Synchronous::Normal => querygate_store::Sync::Normal,
    };
    let checkpoints = config.checkpoints().map_err(anyhow::Error::msg)?;
    let store =
        Store::open_with_options(&store_path, querygate_store::Options { sync, checkpoints })
            .with_context(|| format!("cannot open the store at {}", store_path.display()))?;
    let store = Arc::new(store);
    let policies = config.policies().map_err(anyhow::Error::msg)?;
    let authenticator = authenticator(config, &store, caches).map_err(anyhow::Error::msg)?;
    authenticator.warm_up();
    // The three services: approvals, recordings, and the data path that uses both.
    let approvals = Arc::new(Approvals::new(store.clone(), config.approval_settings()));
    let recordings = Arc::new(match config.recording_settings() {
        Some(settings) => {
            let recorder = querygate_store::Recorder::start(&store_path, Default::default())
                .with_context(|| format!("cannot record sessions in {}", store_path.display()))?;
            Recordings::on(store.clone(), settings, Arc::new(recorder))
        }
        None => Recordings::off(store.clone()),
    });
    let pipeline = Arc::new(
        Pipeline::new(authenticator, policies, store.clone()).with_services(approvals, recordings),
    );
    let mask_key = config.mask_key().map_err(|e| anyhow::anyhow!(e))?;
    let mut sources = Vec::new();
    for s in &config.sources {
        if matches!(s.kind.get_ref(), SourceKind::Postgres(_)) {
            continue;
        }
        sources.push(Arc::new(source(config, s, mask_key.as_ref())?));
    }
    let sources = Arc::new(querygate_pipeline::Sources::new(sources));
    // The secret of the token endpoint's access tokens (`querygate connect`), beside the store.
    let tokens = querygate_bigquery::Tokens::load_or_create(
        &querygate_bigquery::token::secret_path(&store_path),
    )
    .map_err(anyhow::Error::msg)?;
    let front = Arc::new(Front {
        pipeline,
        sources,
        max_body_bytes: config
            .server
            .max_body_bytes
            .unwrap_or(DEFAULT_MAX_BODY_BYTES),
        tokens: Arc::new(tokens),
    });
    Ok((front, store))
}

/// The source a `[[sources]]` block configures: the BigQuery upstream (or the embedded
/// engine, for `local`), with its scrubber and the masking key.
pub fn source(
    config: &Config,
    s: &SourceConfig,
    mask_key: Option<&querygate_core::Secret>,
) -> anyhow::Result<BigQuerySource> {
    let source = match s.kind.get_ref() {
        SourceKind::BigQuery(settings) => bigquery_source(config, s, settings)?,
        SourceKind::Local(settings) => local_source(config, s, settings)?,
        SourceKind::Postgres(_) => bail!(
            "source {} is a PostgreSQL database, served by the PostgreSQL front",
            s.name
        ),
    };
    Ok(source
        .with_scrubber(s.scrubber(mask_key))
        .with_mask_key(mask_key.cloned()))
}

/// Every configured source, in configuration order, for the MCP tools.
fn any_sources(
    config: &Config,
    bigquery: &querygate_pipeline::Sources<BigQuerySource>,
    postgres: &querygate_pipeline::Sources<querygate_postgres::PostgresSource>,
) -> querygate_pipeline::Sources<AnySource> {
    querygate_pipeline::Sources::new(config.sources.iter().filter_map(|s| {
        let any = match bigquery.named(&s.name) {
            Some(bq) => AnySource::BigQuery(bq.clone()),
            None => AnySource::Postgres(postgres.named(&s.name)?.clone()),
        };
        Some(Arc::new(any))
    }))
}

/// The `postgres` sources: each upstream with the gateway's password for it (read now).
pub fn postgres_sources(
    config: &Config,
) -> anyhow::Result<querygate_pipeline::Sources<querygate_postgres::PostgresSource>> {
    let mask_key = config.mask_key().map_err(|e| anyhow::anyhow!(e))?;
    let mut sources = Vec::new();
    for s in &config.sources {
        let SourceKind::Postgres(settings) = s.kind.get_ref() else {
            continue;
        };
        let fail = |e: String| anyhow::anyhow!("source {}: {e}", s.name);
        let tls = settings.tls_mode().ok_or_else(|| {
            fail("tls is not one of disable, prefer, require, verify-full".into())
        })?;
        let endpoint = querygate_postgres::Endpoint::new(
            settings.url.get_ref(),
            settings.password(config).map_err(fail)?,
            tls,
            settings.ca(config).map_err(fail)?.as_deref(),
        )
        .map_err(fail)?;
        let source =
            querygate_postgres::PostgresSource::new(s.name.clone(), s.project.clone(), endpoint)
                .with_scrubber(s.scrubber(mask_key.as_ref()))
                .with_mask_key(mask_key.clone());
        sources.push(Arc::new(source));
    }
    Ok(querygate_pipeline::Sources::new(sources))
}

/// A `bigquery` source: the REST upstream with the gateway's credential, and the service
/// accounts it impersonates for some identities.
fn bigquery_source(
    config: &Config,
    s: &SourceConfig,
    settings: &BigQuerySettings,
) -> anyhow::Result<BigQuerySource> {
    let auth = match settings.credential(config) {
        UpstreamCredential::None => UpstreamAuth::None,
        UpstreamCredential::ServiceAccountKey(path) => UpstreamAuth::service_account(&path)
            .map_err(|e| anyhow::anyhow!("source {}: {e}", s.name))?,
    };
    let impersonate = settings
        .impersonate
        .iter()
        .map(|i| {
            let i = i.get_ref();
            let who = i
                .who
                .iter()
                .map(|w| querygate_policy::Principal::parse(w))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("source {}: {e}", s.name))?;
            Ok(querygate_bigquery::Impersonation {
                who,
                service_account: i.service_account.clone(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(
        BigQuerySource::new(s.name.clone(), s.project.clone(), settings.endpoint(), auth)
            .map_err(|e| anyhow::anyhow!("source {}: {e}", s.name))?
            .with_impersonation(
                impersonate,
                settings
                    .iam_endpoint
                    .as_deref()
                    .unwrap_or(querygate_bigquery::IAM_ENDPOINT),
            ),
    )
}

/// A `local` source: the embedded engine over its files, called in-process by a `bigquery`
/// source (so it goes through the same pipeline as BigQuery itself).
#[cfg(feature = "local")]
fn local_source(
    config: &Config,
    s: &SourceConfig,
    settings: &LocalSettings,
) -> anyhow::Result<BigQuerySource> {
    let tables: Vec<querygate_local::TableSpec> = settings
        .table_paths(config)
        .into_iter()
        .map(|(dataset, table, pattern)| querygate_local::TableSpec {
            dataset,
            table,
            pattern,
        })
        .collect();
    let started = std::time::Instant::now();
    let engine = querygate_local::Engine::open(&s.project, &tables)
        .map_err(|e| anyhow::anyhow!("source {}: {e}", s.name))?;
    tracing::info!(
        source = %s.name,
        tables = tables.len(),
        ms = started.elapsed().as_millis() as u64,
        "local engine ready"
    );
    BigQuerySource::in_process(
        s.name.clone(),
        s.project.clone(),
        querygate_local::router(Arc::new(engine)),
    )
    .map_err(|e| anyhow::anyhow!("source {}: {e}", s.name))
}

/// Without the embedded engine (`--features local`), a `local` source cannot start.
#[cfg(not(feature = "local"))]
fn local_source(
    _config: &Config,
    s: &SourceConfig,
    _settings: &LocalSettings,
) -> anyhow::Result<BigQuerySource> {
    anyhow::bail!(
        "source {}: kind = \"local\" needs the embedded engine, which this build leaves out; \
         build querygate with `--features local`",
        s.name
    )
}

async fn serve(config: Config, config_path: PathBuf) -> anyhow::Result<()> {
    let caches = KeyCaches::default();
    let (front, store) = front(&config, &caches)?;
    for o in &config.oidc {
        tracing::info!(issuer = %o.get_ref().issuer, "accepting OIDC tokens");
    }
    let pipeline = front.pipeline.clone();
    tokio::spawn(reload(
        config_path,
        config.policy.as_ref().map(|p| config.resolve(p)),
        pipeline.clone(),
        Credentials { store, caches },
    ));
    let addr = config.listen();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let tls = match (&config.server.tls_cert, &config.server.tls_key) {
        (Some(cert), Some(key)) => Some(tls_acceptor(&config.resolve(cert), &config.resolve(key))?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    for s in &config.sources {
        let upstream = match s.kind.get_ref() {
            SourceKind::BigQuery(settings) => settings.endpoint(),
            SourceKind::Local(_) => "local engine (in-process)",
            SourceKind::Postgres(settings) => settings.url.get_ref().as_str(),
        };
        tracing::info!(source = %s.name, project = %s.project, upstream, "source ready");
    }
    let admin = match config.admin_listen() {
        Some(admin_addr) => {
            let listener = TcpListener::bind(admin_addr)
                .await
                .with_context(|| format!("cannot listen on {admin_addr} (server.admin_listen)"))?;
            tracing::info!(
                "querygate serving the admin API (approvals) at {scheme}://{}",
                listener.local_addr().unwrap_or(admin_addr)
            );
            Some(listener)
        }
        None => {
            if has_approve_rules(&config) {
                tracing::warn!(
                    "approve rules are configured but server.admin_listen is not: requests they \
                     catch will wait until their tickets expire, as nobody can decide them"
                );
            }
            None
        }
    };
    // The postgres sources, shared by the PostgreSQL front and the MCP tools.
    let pg_sources = Arc::new(postgres_sources(&config)?);
    let mcp = match config.mcp_listen() {
        Some(mcp_addr) => {
            let listener = TcpListener::bind(mcp_addr)
                .await
                .with_context(|| format!("cannot listen on {mcp_addr} (server.mcp_listen)"))?;
            let local = listener.local_addr().unwrap_or(mcp_addr);
            tracing::info!("querygate serving MCP (Streamable HTTP) at {scheme}://{local}/mcp");
            let mut allowed_hosts: Vec<String> =
                vec!["localhost".into(), "127.0.0.1".into(), "::1".into()];
            allowed_hosts.push(local.ip().to_string());
            if let Some(host) = config
                .mcp
                .resource
                .as_deref()
                .and_then(|r| reqwest::Url::parse(r).ok())
                .and_then(|u| u.host_str().map(str::to_string))
            {
                allowed_hosts.push(host);
            }
            let mcp_front = Arc::new(querygate_mcp::McpFront {
                pipeline: pipeline.clone(),
                sources: Arc::new(any_sources(&config, &front.sources, &pg_sources)),
                max_rows: config.mcp.max_rows.unwrap_or(200).max(1),
                // Tokens are accepted for this resource only: the configured one, or this
                // listener's own /mcp URL.
                resource: config
                    .mcp
                    .resource
                    .clone()
                    .unwrap_or_else(|| format!("{scheme}://{local}/mcp")),
                authorization_servers: config.mcp.authorization_servers.clone(),
                allowed_hosts,
                max_body_bytes: front.max_body_bytes,
            });
            Some((listener, querygate_mcp::router(mcp_front)))
        }
        None => None,
    };
    let postgres = match config.postgres_listen() {
        Some(pg_addr) => {
            let listener = TcpListener::bind(pg_addr)
                .await
                .with_context(|| format!("cannot listen on {pg_addr} (server.postgres_listen)"))?;
            let local = listener.local_addr().unwrap_or(pg_addr);
            let pg_tls = match (&config.server.tls_cert, &config.server.tls_key) {
                (Some(cert), Some(key)) => Some(tls_acceptor_for(
                    &config.resolve(cert),
                    &config.resolve(key),
                    &[b"postgresql"],
                )?),
                _ => None,
            };
            let sources = pg_sources.clone();
            tracing::info!(
                "querygate serving PostgreSQL at {local} (clients: host={} port={} dbname=<source>)",
                local.ip(),
                local.port()
            );
            let pg_front = querygate_postgres::PostgresFront::new(
                pipeline.clone(),
                sources,
                pg_tls,
                config.server.insecure_plaintext,
                config
                    .server
                    .postgres_max_message_bytes
                    .unwrap_or(crate::config::DEFAULT_POSTGRES_MAX_MESSAGE_BYTES),
            )
            .with_wire_wait(config.wire_wait());
            Some((listener, Arc::new(pg_front)))
        }
        None => None,
    };
    tokio::spawn(sweep(pipeline.clone()));
    let recordings_keep = config.recordings_retention();
    if config.audit_retention().is_some() || recordings_keep.is_some() {
        tokio::spawn(retain(
            pipeline.clone(),
            config.audit_retention(),
            recordings_keep,
        ));
    }
    if let Some(hook) = &config.export.webhook {
        let url = hook
            .get_ref()
            .url_of("export.webhook")
            .map_err(anyhow::Error::msg)?;
        let batch = config
            .export
            .batch
            .as_ref()
            .map_or(500, |b| *b.get_ref() as usize);
        let idle = config.export_interval();
        let exporter = crate::export::Exporter::new(pipeline.clone(), url, batch, idle)
            .map_err(anyhow::Error::msg)?;
        tracing::info!(host = %hook.get_ref().host(), batch, "export: streaming audit records");
        tokio::spawn(exporter.run());
    }
    if let Some(webhook) = &config.notify.webhook {
        let url = webhook.get_ref().url().map_err(anyhow::Error::msg)?;
        let console = config.console_url().unwrap_or_default();
        if config.notify.console_url.is_none()
            && config
                .admin_listen()
                .is_some_and(|a| a.ip().is_unspecified())
        {
            tracing::warn!(
                "ticket links in notifications point at {console}, which works on this machine \
                 only; set [notify] console_url to the address approvers use"
            );
        }
        let notifier = Notifier::new(pipeline.clone(), url, console).map_err(anyhow::Error::msg)?;
        tokio::spawn(notifier.run());
    }
    tracing::info!(
        store = %config.store_path().display(),
        "querygate serving the BigQuery REST API at {scheme}://{} (clients: api_endpoint = \"{scheme}://{}\")",
        listener.local_addr().unwrap_or(addr),
        listener.local_addr().unwrap_or(addr)
    );
    let (stop_admin, admin_stopped) = tokio::sync::watch::channel(false);
    let admin = admin.map(|listener| {
        let mut stopped = admin_stopped;
        tokio::spawn(serve_on(
            listener,
            querygate_admin::router(pipeline.clone()),
            tls.clone(),
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        ))
    });
    let mcp = mcp.map(|(listener, mcp_router)| {
        let mut stopped = stop_admin.subscribe();
        tokio::spawn(serve_on(listener, mcp_router, tls.clone(), async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    });
    let postgres = postgres.map(|(listener, pg_front)| {
        let mut stopped = stop_admin.subscribe();
        tokio::spawn(querygate_postgres::serve(pg_front, listener, async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    });
    let served = serve_on(listener, router(front.clone()), tls, shutdown()).await;
    let _ = stop_admin.send(true);
    if let Some(postgres) = postgres {
        let _ = postgres.await;
    }
    if let Some(mcp) = mcp {
        match mcp.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the MCP front failed"),
            Err(e) => tracing::error!(error = %e, "the MCP front task failed"),
            Ok(Ok(())) => {}
        }
    }
    if let Some(admin) = admin {
        match admin.await {
            Ok(Err(e)) => tracing::error!(error = %e, "the admin API failed"),
            Err(e) => tracing::error!(error = %e, "the admin API task failed"),
            Ok(Ok(())) => {}
        }
    }
    // Completion records are queued, not awaited: write them before exiting.
    if let Err(e) = front.pipeline.store().flush().await {
        tracing::error!(error = %e, "could not flush the audit log at shutdown");
    }
    // And the sessions' last events, buffered for at most a quarter second.
    if let Some(recorder) = front.pipeline.recordings().recorder() {
        recorder.close();
    }
    served
}

/// How often pending tickets past their expiry are marked expired (and audited).
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Expires tickets nobody decided in time, so they leave the pending list and the
/// expiry is in the audit log even if the requester never polls again.
/// Retention: every six hours (the first a minute after start), prunes audit records
/// older than `audit`, leaving a signed marker (see `Store::prune_before`), and session
/// recordings older than `recordings` (audited as `recordings.prune`).
async fn retain(
    pipeline: Arc<Pipeline>,
    audit: Option<std::time::Duration>,
    recordings: Option<std::time::Duration>,
) {
    tokio::time::sleep(std::time::Duration::from_secs(60)).await;
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(6 * 3600));
    loop {
        tick.tick().await;
        let cutoff = |keep| querygate_pipeline::audit_time(time::OffsetDateTime::now_utc() - keep);
        if let Some(keep) = audit {
            match pipeline.store().prune_before(&cutoff(keep)).await {
                Ok(Some((n, up_to))) => {
                    tracing::info!(records = n, up_to, "retention: pruned audit records")
                }
                Ok(None) => {}
                Err(e) => tracing::error!(error = %e, "retention: cannot prune audit records"),
            }
        }
        if let (Some(keep), Some(recorder)) = (recordings, pipeline.recordings().recorder()) {
            let before = cutoff(keep);
            match recorder.prune(&before) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(segments = n, "retention: pruned session recordings");
                    let mut record =
                        querygate_core::AuditRecord::default_for("recordings.prune", "querygate");
                    record.time = querygate_pipeline::audit_time(time::OffsetDateTime::now_utc());
                    record.kind = Some("gateway".into());
                    record.decision = "allow".into();
                    record.reason = Some(format!(
                        "retention: {n} recording segments older than {before} deleted"
                    ));
                    if let Err(e) = pipeline.store().append(record).await {
                        tracing::error!(error = %e, "retention: cannot audit the recordings pruned");
                    }
                }
                Err(e) => tracing::error!(error = %e, "retention: cannot prune recordings"),
            }
        }
    }
}

async fn sweep(pipeline: Arc<Pipeline>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match pipeline.approvals().sweep().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "tickets expired undecided"),
            Err(fault) => tracing::warn!(error = %fault.message, "cannot expire tickets"),
        }
    }
}

/// Whether any rule of the config (or its policy file) asks for approval.
fn has_approve_rules(config: &Config) -> bool {
    config.policies().is_ok_and(|set| {
        set.sources.values().any(|p| {
            p.rules
                .iter()
                .any(|r| matches!(r.action, querygate_policy::RuleAction::Approve))
        })
    })
}

/// Serves `app` on a bound listener until `stop` completes.
pub async fn serve_on(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tokio::pin!(stop);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); continue; }
            },
            () = &mut stop => return Ok(()),
        };
        let _ = tcp.set_nodelay(true);
        let tls = tls.clone();
        let app = app
            .clone()
            .layer(axum::Extension(axum::extract::ConnectInfo(peer)));
        tokio::spawn(async move {
            let served = match tls {
                Some(tls) => match tls.accept(tcp).await {
                    Ok(stream) => serve_connection(stream, app).await,
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                },
                None => serve_connection(tcp, app).await,
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}

/// Largest request head (line and headers) read before answering: big enough that an
/// oversized bearer token reaches authentication, which refuses and audits it in the
/// client's own error format, instead of hyper answering a bare 431.
const MAX_HEAD_BYTES: usize = 2 * 1024 * 1024;

async fn serve_connection<S>(
    stream: S,
    app: axum::Router,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.http1().max_buf_size(MAX_HEAD_BYTES);
    builder.http2().max_header_list_size(MAX_HEAD_BYTES as u32);
    builder
        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
        .await
}

/// A TLS acceptor from PEM files. Errors name the files, never their content.
pub fn tls_acceptor(cert: &Path, key: &Path) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    tls_acceptor_for(cert, key, &[b"h2", b"http/1.1"])
}

/// A TLS acceptor with the listener's certificate, offering `alpn` (PostgreSQL clients
/// that negotiate it ask for `postgresql`).
pub fn tls_acceptor_for(
    cert: &Path,
    key: &Path,
    alpn: &[&[u8]],
) -> anyhow::Result<tokio_rustls::TlsAcceptor> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert)
            .with_context(|| format!("cannot open tls_cert {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("tls_cert {} is not PEM", cert.display()))?;
    if certs.is_empty() {
        bail!("tls_cert {} holds no certificate", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key)
            .with_context(|| format!("cannot open tls_key {}", key.display()))?,
    ))
    .ok()
    .flatten()
    .with_context(|| format!("tls_key {} holds no PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("tls_cert and tls_key do not form a usable certificate")?;
    server.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}

/// What a reload needs to rebuild the authenticator without losing cached issuer keys.
struct Credentials {
    store: Arc<Store>,
    caches: KeyCaches,
}

/// Reloads keys, issuers and policy on SIGHUP and when the config or policy file changes.
/// A bad file keeps the running policy and says why.
async fn reload(
    config_path: PathBuf,
    policy_path: Option<PathBuf>,
    pipeline: Arc<Pipeline>,
    credentials: Credentials,
) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let stamp = |policy: &Option<PathBuf>| (mtime(&config_path), policy.as_deref().and_then(mtime));
    let mut policy_path = policy_path;
    let mut seen: (Option<SystemTime>, Option<SystemTime>) = stamp(&policy_path);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let poll = tokio::time::sleep(Duration::from_secs(2));
        #[cfg(unix)]
        let signalled = async {
            match hup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let signalled = std::future::pending::<()>();
        let why = tokio::select! {
            () = poll => {
                let now = stamp(&policy_path);
                if now == seen { continue; }
                seen = now;
                "a file changed"
            }
            () = signalled => "SIGHUP",
        };
        let loaded = Config::load(&config_path).and_then(|c| {
            let policies = c.policies()?;
            let authenticator = authenticator(&c, &credentials.store, &credentials.caches)?;
            Ok((policies, authenticator, c))
        });
        match loaded {
            Ok((policies, authenticator, config)) => {
                authenticator.warm_up();
                pipeline.reload(authenticator, policies);
                policy_path = config.policy.as_ref().map(|p| config.resolve(p));
                seen = stamp(&policy_path);
                tracing::info!(
                    reason = why,
                    "reloaded keys and policy from {}",
                    config_path.display()
                );
            }
            Err(e) => {
                tracing::error!(
                    reason = why,
                    "reload failed, keeping the running policy: {e}"
                );
            }
        }
    }
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
    tracing::info!("shutting down");
}
