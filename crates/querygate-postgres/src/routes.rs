//! The PostgreSQL front's listener glue: one task per client connection, which signs the
//! client in with its querygate credential, opens the connection's upstream session with
//! the gateway's, and then turns each message into a request for the pipeline and each
//! outcome into the client's answer.
//!
//! Startup: SSLRequest answered `S` (TLS with the listener's certificate) or `N`;
//! GSSENCRequest `N`; a client asking for a newer minor protocol or `_pq_` options is
//! negotiated down to 3.0; the password (AuthenticationCleartextPassword) is the client's
//! querygate credential, refused in plaintext from a non-loopback address unless
//! `insecure_plaintext`; the user name is informational; `dbname` picks the source.
//! Startup parameters are forwarded from a short list (application name, date and time
//! styles, float digits); `client_encoding` is UTF8 on the upstream whatever the client
//! asks (statements must be UTF-8 to be analyzed as they run), `search_path` one plain
//! schema at most (one-part names resolve there, or in `public`), and anything else —
//! `options` (`-c role=…`), `replication` — is refused.
//!
//! The client gets the gateway's own BackendKeyData; a CancelRequest carrying it is
//! checked in constant time and becomes a cancel of the upstream session's statement.
//!
//! Served today: the simple query protocol (each Query message one request: all its
//! statements decided together) and the extended one (each Execute one request, decided
//! on the text its portal's statement was parsed from; the Parse, Bind, Describe and
//! Close messages before it travel with it, and the Sync after it when the client sent
//! one, so a pipelined batch is one round trip), transactions, Terminate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use pgwire::messages::PgWireFrontendMessage;
use pgwire::messages::startup::NegotiateProtocolVersion;
use querygate_core::{ClientInfo, Secret};
use querygate_pipeline::{Outcome, Pipeline, Reply, Sources};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::decode::{self, Connection, Opening, Problem};
use crate::model::{Extended, Prepared};
use crate::render::{self, CODES};
use crate::source::{
    Exchange, Expect, Link, PgCall, PgReply, PostgresSource, Sent, highest_parameter,
};
use crate::upstream::{self, Endpoint};

/// How long a client has to sign in.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Startup parameters forwarded to the upstream as the client set them.
const FORWARDED: &[&str] = &[
    "application_name",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
];

/// Everything the PostgreSQL front needs.
pub struct PostgresFront {
    pub pipeline: Arc<Pipeline>,
    pub sources: Arc<Sources<PostgresSource>>,
    /// The listener's certificate, when it serves TLS.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Accept passwords in plaintext from non-loopback addresses.
    pub insecure_plaintext: bool,
    /// The largest client message read.
    pub max_message_bytes: usize,
    /// How long a client is held while its statement waits for approval.
    pub wire_wait: Duration,
    /// Connections' cancel keys: the gateway's key → the upstream session's.
    cancels: Mutex<HashMap<i32, Cancel>>,
}

impl std::fmt::Debug for PostgresFront {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresFront")
            .field("tls", &self.tls.is_some())
            .field("insecure_plaintext", &self.insecure_plaintext)
            .finish()
    }
}

struct Cancel {
    secret: i32,
    endpoint: Arc<Endpoint>,
    pid: i32,
    upstream_secret: i32,
    /// Wakes the connection while it waits for an approval (the cancel withdraws it).
    waiting: Arc<tokio::sync::Notify>,
}

impl PostgresFront {
    pub fn new(
        pipeline: Arc<Pipeline>,
        sources: Arc<Sources<PostgresSource>>,
        tls: Option<tokio_rustls::TlsAcceptor>,
        insecure_plaintext: bool,
        max_message_bytes: usize,
    ) -> PostgresFront {
        PostgresFront {
            pipeline,
            sources,
            tls,
            insecure_plaintext,
            max_message_bytes,
            wire_wait: Duration::from_secs(60),
            cancels: Mutex::new(HashMap::new()),
        }
    }

    pub fn with_wire_wait(mut self, wait: Duration) -> Self {
        self.wire_wait = wait;
        self
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Serves PostgreSQL clients on `listener` until `stop` completes.
pub async fn serve(
    front: Arc<PostgresFront>,
    listener: TcpListener,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let _ = tcp.set_nodelay(true);
                    let front = Arc::clone(&front);
                    tokio::spawn(async move { connection(front, tcp, peer).await });
                }
                Err(e) => {
                    tracing::warn!("postgres listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The client's side of a connection: its stream and what it has sent but not yet read.
struct Client {
    io: Box<dyn Io>,
    buf: BytesMut,
    out: BytesMut,
    tls: bool,
    peer: SocketAddr,
}

impl Client {
    async fn fill(&mut self) -> std::io::Result<bool> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(8 * 1024);
        }
        Ok(self.io.read_buf(&mut self.buf).await? > 0)
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(&self.out).await?;
            self.out.clear();
        }
        self.io.flush().await
    }

    /// FATAL with `code` and `message`, then the connection ends.
    async fn fatal(&mut self, code: &str, message: &str) {
        render::error(&mut self.out, "FATAL", code, message, None);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    /// The next opening packet; `None` when the client went away.
    async fn opening(&mut self) -> Result<Option<Opening>, Problem> {
        loop {
            if let Some(frame) = decode::opening_frame(&mut self.buf)? {
                return decode::opening(frame).map(Some);
            }
            if !self.fill().await.unwrap_or(false) {
                return Ok(None);
            }
        }
    }

    /// The next typed message frame; `None` when the client went away. What is owed the
    /// client is sent before waiting for more (answers to pipelined messages go out
    /// together).
    async fn frame(&mut self, max: usize) -> Result<Option<BytesMut>, Problem> {
        loop {
            if let Some(frame) = decode::frame(&mut self.buf, max)? {
                return Ok(Some(frame));
            }
            if !self.out.is_empty() && self.flush().await.is_err() {
                return Ok(None);
            }
            if !self.fill().await.unwrap_or(false) {
                return Ok(None);
            }
        }
    }
}

/// What a signed-in client asked for at startup.
pub(crate) struct Startup {
    pub(crate) database: String,
    pub(crate) user: String,
    pub(crate) parameters: Vec<(String, String)>,
    pub(crate) schema: String,
}

async fn connection(front: Arc<PostgresFront>, tcp: TcpStream, peer: SocketAddr) {
    let opened = tokio::time::timeout(STARTUP_TIMEOUT, async {
        let (mut client, first) = negotiate(&front, tcp, peer).await?;
        let signed_in = open(&front, &mut client, first).await?;
        Some((client, signed_in))
    })
    .await;
    match opened {
        Ok(Some((client, (startup, credential)))) => {
            session(front, client, startup, credential).await
        }
        Ok(None) => {}
        Err(_) => tracing::debug!(%peer, "a PostgreSQL client did not sign in in time"),
    }
}

/// The encryption requests, on the plain stream: GSSENCRequest declined, SSLRequest
/// answered with TLS when the listener has a certificate. Returns the client's stream
/// and the opening packet that followed, when it was read here.
async fn negotiate(
    front: &PostgresFront,
    mut tcp: TcpStream,
    peer: SocketAddr,
) -> Option<(Client, Option<Opening>)> {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let mut asked = 0;
    loop {
        let opening = loop {
            match decode::opening_frame(&mut buf) {
                Ok(Some(frame)) => break decode::opening(frame),
                Ok(None) => {}
                Err(problem) => break Err(problem),
            }
            match tcp.read_buf(&mut buf).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
        };
        let client = |io: Box<dyn Io>, buf: BytesMut, tls: bool| Client {
            io,
            buf,
            out: BytesMut::new(),
            tls,
            peer,
        };
        asked += 1;
        match opening {
            Ok(Opening::Gss) if asked == 1 => {
                tcp.write_all(b"N").await.ok()?;
            }
            Ok(Opening::Ssl) if asked <= 2 => match &front.tls {
                Some(acceptor) => {
                    tcp.write_all(b"S").await.ok()?;
                    if !buf.is_empty() {
                        // Bytes sent before the handshake could come from anyone on the
                        // path (CVE-2021-23214): the connection ends.
                        return None;
                    }
                    match acceptor.accept(tcp).await {
                        Ok(tls) => return Some((client(Box::new(tls), buf, true), None)),
                        Err(e) => {
                            tracing::debug!(%peer, "postgres TLS handshake failed: {e}");
                            return None;
                        }
                    }
                }
                None => {
                    tcp.write_all(b"N").await.ok()?;
                    return Some((client(Box::new(tcp), buf, false), None));
                }
            },
            Ok(opening) => return Some((client(Box::new(tcp), buf, false), Some(opening))),
            Err(problem) => {
                let mut c = client(Box::new(tcp), buf, false);
                c.fatal(problem.code, &problem.message).await;
                return None;
            }
        }
    }
}

/// Reads the opening packets up to the password: the startup parameters, the credential.
/// `None` when the connection ends here (a cancel request, a refusal).
async fn open(
    front: &PostgresFront,
    client: &mut Client,
    first: Option<Opening>,
) -> Option<(Startup, Secret)> {
    let opening = match first {
        Some(o) => Ok(Some(o)),
        None => client.opening().await,
    };
    let (minor, parameters) = match opening {
        Ok(Some(Opening::Startup { minor, parameters })) => (minor, parameters),
        Ok(Some(Opening::Cancel { pid, secret })) => {
            cancel(front, pid, secret).await;
            return None;
        }
        Ok(Some(Opening::Ssl | Opening::Gss)) => {
            client
                .fatal(
                    "08P01",
                    "an encryption request after encryption was negotiated",
                )
                .await;
            return None;
        }
        Ok(None) => return None,
        Err(problem) => {
            client.fatal(problem.code, &problem.message).await;
            return None;
        }
    };
    let (startup, declined) = match startup_parameters(parameters) {
        Ok(s) => s,
        Err((code, message)) => {
            client.fatal(code, &message).await;
            return None;
        }
    };
    if minor > 0 || !declined.is_empty() {
        let mut out = BytesMut::new();
        let _ = pgwire::messages::Message::encode(
            &NegotiateProtocolVersion::new(0, declined),
            &mut out,
        );
        client.out.extend_from_slice(&out);
    }
    if !client.tls && !client.peer.ip().is_loopback() && !front.insecure_plaintext {
        client
            .fatal(
                "28000",
                "querygate does not take a credential over an unencrypted connection from \
                 another host: connect with sslmode=require",
            )
            .await;
        return None;
    }
    render::ask_password(&mut client.out);
    if client.flush().await.is_err() {
        return None;
    }
    let frame = match client.frame(decode::MAX_STARTUP_BYTES).await {
        Ok(Some(frame)) => frame,
        Ok(None) => return None,
        Err(problem) => {
            client.fatal(problem.code, &problem.message).await;
            return None;
        }
    };
    match password(&frame) {
        Some(p) if !p.is_empty() => Some((startup, Secret::new(p))),
        _ => {
            client
                .fatal(
                    "28P01",
                    "querygate expects the password message with your querygate credential \
                     (an API key or a token) as the password",
                )
                .await;
            None
        }
    }
}

/// The password of a PasswordMessage frame.
fn password(frame: &BytesMut) -> Option<String> {
    if frame.first() != Some(&b'p') || frame.len() < 6 || frame[frame.len() - 1] != 0 {
        return None;
    }
    let text = &frame[5..frame.len() - 1];
    if text.contains(&0) {
        return None;
    }
    String::from_utf8(text.to_vec()).ok()
}

/// The startup parameters, checked: what the session forwards, and the `_pq_` options to
/// decline.
#[allow(clippy::type_complexity)]
pub(crate) fn startup_parameters(
    parameters: Vec<(String, String)>,
) -> Result<(Startup, Vec<String>), (&'static str, String)> {
    let mut user = None;
    let mut database = None;
    let mut forwarded = Vec::new();
    let mut declined = Vec::new();
    let mut schema = "public".to_string();
    for (name, value) in parameters {
        match name.as_str() {
            "user" => user = Some(value),
            "database" => database = Some(value),
            "client_encoding" => {
                let v = value
                    .trim_matches(['\'', '"', ' '])
                    .to_ascii_uppercase()
                    .replace(['-', '_'], "");
                if !matches!(v.as_str(), "UTF8" | "UNICODE" | "SQLASCII" | "AUTO") {
                    return Err((
                        "22023",
                        format!(
                            "querygate serves client_encoding UTF8 only (asked: {value}): \
                             statements are analyzed as UTF-8 text"
                        ),
                    ));
                }
            }
            "search_path" => {
                let s = value.trim().trim_matches('"');
                let plain = !s.is_empty()
                    && s.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    && !s.starts_with(|c: char| c.is_ascii_digit());
                if !plain {
                    return Err((
                        "0A000",
                        format!(
                            "querygate takes one plain schema name as search_path (asked: \
                             {value}); qualify names with their schema instead"
                        ),
                    ));
                }
                schema = s.to_string();
            }
            n if n.starts_with("_pq_.") => declined.push(name),
            n if FORWARDED.iter().any(|f| f.eq_ignore_ascii_case(n)) => {
                forwarded.push((name, value))
            }
            "replication" => {
                return Err((
                    "08P01",
                    "querygate does not serve replication connections".to_string(),
                ));
            }
            _ => {
                return Err((
                    "08P01",
                    format!(
                        "querygate does not forward the startup parameter {name:?}; set what \
                         you need with SET in the session, where policy decides it"
                    ),
                ));
            }
        }
    }
    let Some(user) = user else {
        return Err(("28000", "no user name in the startup packet".to_string()));
    };
    let database = database.unwrap_or_else(|| user.clone());
    forwarded.push(("client_encoding".to_string(), "UTF8".to_string()));
    forwarded.push(("search_path".to_string(), schema.clone()));
    Ok((
        Startup {
            database,
            user,
            parameters: forwarded,
            schema,
        },
        declined,
    ))
}

/// A CancelRequest: the gateway's key for a connection, checked, becomes a cancel of
/// that connection's upstream statement. Nothing is answered (as the protocol says).
async fn cancel(front: &PostgresFront, pid: i32, secret: i32) {
    let target = {
        let cancels = front.cancels.lock().unwrap_or_else(|e| e.into_inner());
        cancels.get(&pid).and_then(|c| {
            let same = constant_time_eq(c.secret, secret);
            same.then(|| {
                // A statement waiting for approval is withdrawn.
                c.waiting.notify_waiters();
                (Arc::clone(&c.endpoint), c.pid, c.upstream_secret)
            })
        })
    };
    match target {
        Some((endpoint, upstream_pid, upstream_secret)) => {
            if let Err(fault) = upstream::cancel(&endpoint, upstream_pid, upstream_secret).await {
                tracing::warn!("cancel request: {}", fault.message);
            }
        }
        None => tracing::info!(pid, "cancel request with an unknown key ignored"),
    }
}

fn constant_time_eq(a: i32, b: i32) -> bool {
    let diff = (a ^ b) as u32;
    std::hint::black_box(diff) == 0
}

/// A signed-in connection: the source, the upstream session, then message after message.
async fn session(
    front: Arc<PostgresFront>,
    mut client: Client,
    startup: Startup,
    credential: Secret,
) {
    let conn = Connection {
        credential: credential.clone(),
        database: startup.database.clone(),
        client: ClientInfo {
            user_agent: Some(format!(
                "postgres user={} application_name={}",
                startup.user,
                startup
                    .parameters
                    .iter()
                    .find(|(n, _)| n == "application_name")
                    .map_or("", |(_, v)| v.as_str())
            )),
            peer: Some(client.peer.to_string()),
        },
        session: format!("pg-{}", uuid::Uuid::new_v4().simple()),
        schema: startup.schema.clone(),
    };
    // Who is asking: refused credentials are audited and end the connection.
    if let Err(denial) = front.pipeline.authenticate(Some(&credential), None).await {
        let request = decode::other(&conn, "connect", "a PostgreSQL connection", &CODES);
        let _ = front
            .pipeline
            .handle_unrouted::<PostgresSource>(request)
            .await;
        client.fatal("28P01", &denial.message).await;
        return;
    }
    let Some(source) = front.sources.get(&startup.database).cloned() else {
        let request = decode::other(&conn, "connect", "a PostgreSQL connection", &CODES);
        let _ = front
            .pipeline
            .handle_unrouted::<PostgresSource>(request)
            .await;
        client
            .fatal(
                "3D000",
                &format!(
                    "database \"{}\" is not served by querygate: connect to one of its \
                     postgres sources",
                    startup.database
                ),
            )
            .await;
        return;
    };
    let upstream = match upstream::connect(source.endpoint(), &startup.parameters).await {
        Ok(u) => u,
        Err(fault) => {
            tracing::warn!(source = %source_name(&source), "{}", fault.message);
            client.fatal("08006", &fault.message).await;
            return;
        }
    };
    // The gateway's own cancel key for this connection.
    let waiting = Arc::new(tokio::sync::Notify::new());
    let (pid, secret) = {
        let mut cancels = front.cancels.lock().unwrap_or_else(|e| e.into_inner());
        let mut pid: i32 = rand::random::<i32>() & i32::MAX;
        while pid == 0 || cancels.contains_key(&pid) {
            pid = rand::random::<i32>() & i32::MAX;
        }
        let secret = rand::random::<i32>();
        cancels.insert(
            pid,
            Cancel {
                secret,
                endpoint: Arc::clone(source.endpoint()),
                pid: upstream.pid,
                upstream_secret: upstream.secret,
                waiting: Arc::clone(&waiting),
            },
        );
        (pid, secret)
    };
    render::authenticated(&mut client.out);
    for (name, value) in &upstream.parameters {
        render::parameter(&mut client.out, name, value);
    }
    render::key(&mut client.out, pid, secret);
    render::ready(&mut client.out, upstream.status);
    let link: Link = Arc::new(tokio::sync::Mutex::new(upstream));
    if client.flush().await.is_ok() {
        serve_messages(&front, &mut client, &conn, &source, &link, &waiting).await;
    }
    front
        .cancels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&pid);
    if let Ok(upstream) = Arc::try_unwrap(link) {
        upstream.into_inner().terminate().await;
    }
}

fn source_name(source: &PostgresSource) -> &str {
    querygate_pipeline::Source::name(source)
}

/// A Bind of a statement that carries the hash key, with the key appended as its last
/// parameter (binary); the client binds its own parameters only.
fn bind_with_key(
    bind: pgwire::messages::extendedquery::Bind,
    key: bytes::Bytes,
    parameters: usize,
) -> Result<BytesMut, Problem> {
    let supplied = bind.parameters.len();
    if supplied != parameters {
        return Err(Problem {
            code: "08P01",
            message: format!(
                "bind message supplies {supplied} parameters, but prepared statement \
                 requires {parameters}"
            ),
            kind: querygate_core::Malformed::Invalid,
        });
    }
    let mut formats = match bind.parameter_format_codes.len() {
        0 => vec![0; parameters],
        1 => vec![bind.parameter_format_codes[0]; parameters],
        _ => bind.parameter_format_codes.clone(),
    };
    formats.push(1);
    let mut parameters_with_key = bind.parameters.clone();
    parameters_with_key.push(Some(key));
    let keyed = pgwire::messages::extendedquery::Bind::new(
        bind.portal_name.clone(),
        bind.statement_name.clone(),
        formats,
        parameters_with_key,
        bind.result_column_format_codes.clone(),
    );
    let mut out = BytesMut::new();
    pgwire::messages::Message::encode(&keyed, &mut out).map_err(|e| Problem {
        code: "54000",
        message: format!("cannot bind the statement: {e}"),
        kind: querygate_core::Malformed::TooLarge,
    })?;
    Ok(out)
}

/// Message after message until Terminate, the client leaving, or a protocol fault.
async fn serve_messages(
    front: &PostgresFront,
    client: &mut Client,
    conn: &Connection,
    source: &Arc<PostgresSource>,
    link: &Link,
    waiting: &tokio::sync::Notify,
) {
    let mut ext = Extended::default();
    loop {
        let frame = match client.frame(front.max_message_bytes).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return,
            Err(problem) => {
                refuse(front, client, conn, source, &problem).await;
                return;
            }
        };
        let message = match decode::message(&frame) {
            Ok(m) => m,
            Err(problem) => {
                refuse(front, client, conn, source, &problem).await;
                return;
            }
        };
        if ext.skipping
            && !matches!(
                message,
                PgWireFrontendMessage::Sync(_) | PgWireFrontendMessage::Terminate(_)
            )
        {
            continue;
        }
        match message {
            PgWireFrontendMessage::Query(q) => {
                // A simple Query ends the unnamed statement and portal.
                ext.statements.remove("");
                ext.portals.remove("");
                if let Some(problem) = decode::changes_resolution(&q.query) {
                    refuse_statement(front, client, conn, source, &q.query, &problem).await;
                    let status = link.lock().await.status;
                    render::ready(&mut client.out, status);
                    continue;
                }
                let (frames, expect, _) = ext.with(&frame, Expect::Ready);
                let call = Exchange {
                    link: Arc::clone(link),
                    frames,
                    expect,
                    sql: q.query.clone(),
                    sent: Sent::Query,
                    quiet: false,
                    key: None,
                    whole: false,
                };
                let request = || decode::query(conn, q.query.clone(), &CODES);
                let outcome = run(front, client, source, waiting, request, call).await;
                if let Err(ended) = render_outcome(front, client, link, outcome, true, &[]).await {
                    return end(front, client, conn, source, ended).await;
                }
                ext.end_of_transaction(link.lock().await.status);
            }
            PgWireFrontendMessage::Parse(p) => {
                if let Some(problem) = decode::changes_resolution(&p.query) {
                    refuse_statement(front, client, conn, source, &p.query, &problem).await;
                    ext.fail();
                    continue;
                }
                // Decided (and masked) now, so that what is parsed upstream is what may run.
                let name = p.name.clone().unwrap_or_default();
                // The server refuses a second statement of a name and keeps the first: the
                // gateway must not take the second's text for what that name runs.
                if !name.is_empty() && ext.statements.contains_key(&name) {
                    let message = format!("prepared statement \"{name}\" already exists");
                    render::error(&mut client.out, "ERROR", "42P05", &message, None);
                    ext.fail();
                    continue;
                }
                let request = decode::parse(conn, p.query.clone(), &CODES);
                let call = PgCall::Exchange(Exchange {
                    link: Arc::clone(link),
                    frames: frame.clone(),
                    expect: vec![Expect::One],
                    sql: p.query.clone(),
                    sent: Sent::Parse {
                        name: p.name.clone(),
                        types: p.type_oids.clone(),
                    },
                    quiet: false,
                    key: None,
                    whole: false,
                });
                match front.pipeline.prepare(request, &**source, call).await {
                    Ok(PgCall::Exchange(prepared)) => {
                        let parameters = highest_parameter(&p.query).max(p.type_oids.len());
                        ext.hold(&prepared.frames, Expect::One);
                        ext.unsent.push(name.clone());
                        ext.statements.insert(
                            name,
                            Prepared {
                                original: p.query,
                                sent: prepared.sql,
                                parameters,
                                key: prepared.key,
                                bound: None,
                            },
                        );
                    }
                    Ok(PgCall::Refused | PgCall::Neutral(_)) => ext.fail(),
                    Err(outcome) => {
                        if let Err(ended) =
                            render_outcome(front, client, link, outcome, false, &[]).await
                        {
                            return end(front, client, conn, source, ended).await;
                        }
                        ext.fail();
                    }
                }
            }
            PgWireFrontendMessage::Bind(b) => {
                let statement = b.statement_name.clone().unwrap_or_default();
                let Some(prepared) = ext.statements.get(&statement).cloned() else {
                    render::error(
                        &mut client.out,
                        "ERROR",
                        "26000",
                        &format!(
                            "prepared statement \"{statement}\" does not exist (querygate \
                             knows the statements prepared with Parse on this connection)"
                        ),
                        None,
                    );
                    ext.fail();
                    continue;
                };
                let portal = b.portal_name.clone().unwrap_or_default();
                // Likewise a second portal of a name, within a transaction.
                if !portal.is_empty() && ext.portals.contains_key(&portal) {
                    let message = format!("portal \"{portal}\" already exists");
                    render::error(&mut client.out, "ERROR", "42P03", &message, None);
                    ext.fail();
                    continue;
                }
                let mut prepared = prepared;
                prepared.bound = Some(crate::model::bound_values(&b));
                match (prepared.key, source.key_bytes()) {
                    (Some(_), Some(key)) => match bind_with_key(b, key, prepared.parameters) {
                        Ok(bind) => ext.hold(&bind, Expect::One),
                        Err(problem) => {
                            render::error(
                                &mut client.out,
                                "ERROR",
                                problem.code,
                                &problem.message,
                                None,
                            );
                            ext.fail();
                            continue;
                        }
                    },
                    _ => ext.hold(&frame, Expect::One),
                }
                ext.portals.insert(portal, prepared);
            }
            PgWireFrontendMessage::Describe(d) => {
                let name = d.name.clone().unwrap_or_default();
                if d.target_type == b'S' {
                    let keyed = ext.statements.get(&name).is_some_and(|p| p.key.is_some());
                    ext.described.push(keyed);
                    ext.hold(&frame, Expect::Statement);
                } else {
                    ext.hold(&frame, Expect::Portal);
                }
            }
            PgWireFrontendMessage::Close(c) => {
                let name = c.name.clone().unwrap_or_default();
                if c.target_type == b'S' {
                    ext.statements.remove(&name);
                } else {
                    ext.portals.remove(&name);
                }
                ext.hold(&frame, Expect::One);
            }
            PgWireFrontendMessage::Execute(e) => {
                let portal = e.name.clone().unwrap_or_default();
                let Some(prepared) = ext.portals.get(&portal).cloned() else {
                    render::error(
                        &mut client.out,
                        "ERROR",
                        "34000",
                        &format!("portal \"{portal}\" does not exist"),
                        None,
                    );
                    ext.fail();
                    continue;
                };
                let (mut frames, mut expect, described) = ext.with(&frame, Expect::Execute);
                // The Sync that usually follows goes in the same exchange: one round trip.
                let synced = next_is_sync(&client.buf);
                if synced {
                    let sync = client.buf.split_to(5);
                    frames.extend_from_slice(&sync);
                    expect.push(Expect::Ready);
                }
                let call = Exchange {
                    link: Arc::clone(link),
                    frames,
                    expect,
                    sql: prepared.original.clone(),
                    sent: Sent::Execute {
                        prepared_as: prepared.sent.clone(),
                        parameters: prepared.parameters,
                        bound: prepared.bound.clone(),
                    },
                    quiet: false,
                    key: None,
                    whole: false,
                };
                let request = || decode::execute(conn, prepared.original.clone(), &CODES);
                let outcome = run(front, client, source, waiting, request, call).await;
                let failed =
                    match render_outcome(front, client, link, outcome, synced, &described).await {
                        Ok(failed) => failed,
                        Err(ended) => return end(front, client, conn, source, ended).await,
                    };
                if synced {
                    ext.end_of_transaction(link.lock().await.status);
                }
                if failed && !synced {
                    ext.fail();
                }
            }
            PgWireFrontendMessage::Sync(_) | PgWireFrontendMessage::Flush(_) => {
                let sync = matches!(message, PgWireFrontendMessage::Sync(_));
                if sync {
                    ext.skipping = false;
                } else if ext.owed.is_empty() {
                    continue;
                }
                // Messages that run nothing (and Sync itself) go upstream outside the
                // pipeline: each Parse was decided and masked as it came, and the Execute
                // that runs what they set up is decided on its statement.
                let (frames, expect, described) = if sync {
                    ext.with(&frame, Expect::Ready)
                } else {
                    ext.take()
                };
                let mut upstream = link.lock().await;
                match crate::source::exchange(&mut upstream, frames, &expect, false).await {
                    Ok(mut reply) => {
                        reply.hide_key_parameters(&described);
                        client.out.extend_from_slice(&reply.bytes());
                        if sync {
                            ext.end_of_transaction(reply.status);
                        }
                        if reply.failed() && !sync {
                            ext.fail();
                        }
                    }
                    Err(fault) => {
                        render::failed(&mut client.out, &fault);
                        drop(upstream);
                        let _ = client.flush().await;
                        return;
                    }
                }
            }
            PgWireFrontendMessage::Terminate(_) => return,
            // Outside COPY these are ignored, as the server ignores them.
            PgWireFrontendMessage::CopyData(_)
            | PgWireFrontendMessage::CopyDone(_)
            | PgWireFrontendMessage::CopyFail(_) => {}
            _ => {
                let problem = Problem {
                    code: "08P01",
                    message: "this message is not expected after the startup".into(),
                    kind: querygate_core::Malformed::Invalid,
                };
                refuse(front, client, conn, source, &problem).await;
                return;
            }
        }
    }
}

/// Runs one statement through the pipeline. One that waits for approval holds the
/// client: a NOTICE names the ticket and its approvers, and the connection waits up to
/// `wire_wait` for the decision (a CancelRequest withdraws it); approved, the statement
/// runs (the grant is bound to it); otherwise the answer says why, and a statement still
/// waiting runs once if it is sent again after its approval.
async fn run(
    front: &PostgresFront,
    client: &mut Client,
    source: &Arc<PostgresSource>,
    waiting: &tokio::sync::Notify,
    request: impl Fn() -> querygate_core::Request,
    call: Exchange,
) -> Outcome<PgReply> {
    let again = Exchange {
        link: Arc::clone(&call.link),
        frames: call.frames.clone(),
        expect: call.expect.clone(),
        sql: call.sql.clone(),
        sent: call.sent.clone(),
        quiet: call.quiet,
        key: call.key,
        whole: call.whole,
    };
    let outcome = front
        .pipeline
        .handle(request(), Some(&**source), PgCall::Exchange(call))
        .await;
    let Outcome::Waiting(held) = outcome else {
        return outcome;
    };
    if held.ended.is_some() {
        return Outcome::Waiting(held);
    }
    let ticket = &held.ticket;
    render::notice(
        &mut client.out,
        &format!(
            "this statement waits for approval (ticket {}, for {}): {}. Waiting up to {} s; \
             cancel the statement to withdraw the request",
            ticket.id,
            ticket.approvers.join(" or "),
            ticket.message,
            front.wire_wait.as_secs()
        ),
    );
    if client.flush().await.is_err() {
        return Outcome::Waiting(held);
    }
    let decided = tokio::select! {
        t = front.pipeline.approvals().wait(&ticket.id, front.wire_wait) => t,
        () = waiting.notified() => {
            // Withdrawn: the ticket ends as cancelled, audited.
            let mut cancel = request();
            cancel.method = "cancel".into();
            cancel.action = querygate_core::Action::Job(querygate_core::JobOp::Cancel {
                job_id: ticket.job_id.clone(),
            });
            let _ = front.pipeline.handle(cancel, Some(&**source), PgCall::Refused).await;
            return Outcome::Denied(querygate_core::Denial::new(
                querygate_core::DenialKind::Forbidden,
                format!("the statement was cancelled while it waited; ticket {} is withdrawn", ticket.id),
            ));
        }
    };
    match decided {
        Ok(Some(t)) if t.state == querygate_core::TicketState::Approved => {
            front
                .pipeline
                .handle(request(), Some(&**source), PgCall::Exchange(again))
                .await
        }
        Ok(Some(t)) if t.state == querygate_core::TicketState::Pending => {
            Outcome::Denied(querygate_core::Denial::new(
                querygate_core::DenialKind::Forbidden,
                format!(
                    "{} (ticket {}, for {}): nobody decided within {} s. Nothing ran: run the \
                     same statement again once it is approved, and it will run once",
                    t.message,
                    t.id,
                    t.approvers.join(" or "),
                    front.wire_wait.as_secs()
                ),
            ))
        }
        Ok(Some(t)) => Outcome::Denied(querygate_core::Denial::new(
            querygate_core::DenialKind::Forbidden,
            querygate_pipeline::ended_message(&t),
        )),
        Ok(None) => Outcome::Waiting(held),
        Err(fault) => Outcome::Failed(fault),
    }
}

/// Whether the next buffered client message is a Sync.
fn next_is_sync(buf: &BytesMut) -> bool {
    buf.len() >= 5 && buf[..5] == [b'S', 0, 0, 0, 4]
}

/// Audits a statement the front does not forward (its text and why) and answers ERROR
/// with `problem`'s SQLSTATE.
async fn refuse_statement(
    front: &PostgresFront,
    client: &mut Client,
    conn: &Connection,
    source: &Arc<PostgresSource>,
    sql: &str,
    problem: &Problem,
) {
    let request = decode::refused(conn, sql, problem, &CODES);
    let _ = front
        .pipeline
        .handle(request, Some(&**source), PgCall::Refused)
        .await;
    render::error(
        &mut client.out,
        "ERROR",
        problem.code,
        &problem.message,
        None,
    );
}

/// Ends a connection that cannot go on after a statement's answer: refused (audited, FATAL)
/// when the client sent what the front cannot serve, quietly when it went away.
async fn end(
    front: &PostgresFront,
    client: &mut Client,
    conn: &Connection,
    source: &Arc<PostgresSource>,
    ended: Option<Problem>,
) {
    if let Some(problem) = ended {
        refuse(front, client, conn, source, &problem).await;
    }
}

/// Audits bytes the front cannot serve and ends the connection with FATAL.
async fn refuse(
    front: &PostgresFront,
    client: &mut Client,
    conn: &Connection,
    source: &Arc<PostgresSource>,
    problem: &Problem,
) {
    let request = decode::malformed(conn, problem, &CODES);
    let _ = front
        .pipeline
        .handle(request, Some(&**source), PgCall::Refused)
        .await;
    client.fatal(problem.code, &problem.message).await;
}

/// Relays a COPY FROM STDIN's data from the client to the server, up to its CopyDone or
/// CopyFail (the Flush and Sync a client sends along go too: the server ignores them until
/// the COPY ends). Anything else ends the connection: the server would be left mid-COPY.
async fn copy_in(
    front: &PostgresFront,
    client: &mut Client,
    reply: &mut PgReply,
) -> Result<(), Option<Problem>> {
    while reply.wants_copy_data() {
        let frame = match client.frame(front.max_message_bytes).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Err(None),
            Err(problem) => return Err(Some(problem)),
        };
        if !reply.takes(frame[0]) {
            return Err(Some(Problem {
                code: "08P01",
                message: "only CopyData, CopyDone or CopyFail may follow a COPY FROM STDIN (and, \
                          in the extended protocol, the Sync after its CopyDone)"
                    .into(),
                kind: querygate_core::Malformed::Invalid,
            }));
        }
        if let Err(fault) = reply.copy(&frame).await {
            render::failed(&mut client.out, &fault);
            let _ = client.flush().await;
            return Err(None);
        }
    }
    Ok(())
}

/// The client's answer to one Query or Execute; `ready`: the exchange ended with a
/// ReadyForQuery the client waits for (a simple Query, or an Execute sent with its Sync),
/// which a refusal must send too; `described`: which statement descriptions in it carry
/// the hash key's parameter. The rest of a large result is streamed: written to the client
/// as it drains it. `Ok(failed)`: whether the statement failed; `Err` when the connection
/// cannot go on: the client went away mid-result or the upstream failed (`None`), or the
/// client sent what the front cannot serve (a problem to refuse and audit).
async fn render_outcome(
    front: &PostgresFront,
    client: &mut Client,
    link: &Link,
    outcome: Outcome<PgReply>,
    ready: bool,
    described: &[bool],
) -> Result<bool, Option<Problem>> {
    match outcome {
        Outcome::Done(mut reply) => {
            reply.hide_key_parameters(described);
            client.out.extend_from_slice(&reply.bytes());
            while reply.is_open() {
                if reply.wants_copy_data() {
                    client.flush().await.map_err(|_| None)?;
                    copy_in(front, client, &mut reply).await?;
                    continue;
                }
                match reply.more().await {
                    Ok(Some(part)) => {
                        client.out.extend_from_slice(&part);
                        client.flush().await.map_err(|_| None)?;
                    }
                    Ok(None) => break,
                    Err(fault) => {
                        render::failed(&mut client.out, &fault);
                        let _ = client.flush().await;
                        return Err(None);
                    }
                }
            }
            return Ok(reply.failed());
        }
        Outcome::Denied(denial) => render::denied(&mut client.out, &denial),
        Outcome::Failed(fault) => render::failed(&mut client.out, &fault),
        Outcome::Waiting(waiting) => {
            let message = waiting.ended.unwrap_or_else(|| {
                format!(
                    "this statement waits for approval (ticket {}); approvals on the \
                     PostgreSQL front come next",
                    waiting.ticket.id
                )
            });
            render::error(&mut client.out, "ERROR", "42501", &message, None);
        }
    }
    if ready {
        let status = link.lock().await.status;
        render::ready(&mut client.out, status);
    }
    Ok(true)
}
