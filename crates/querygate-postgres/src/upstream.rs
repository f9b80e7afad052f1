//! The connection to the upstream PostgreSQL server, with the gateway's credential: TCP
//! (no Nagle: a statement is a few small writes), TLS as configured, the startup with the
//! forwarded client parameters, authentication (trust, cleartext, MD5, SCRAM-SHA-256 by
//! postgres-protocol), then the server's answers read one frame at a time.
//!
//! Hand-written over pgwire's messages rather than tokio-postgres: a gateway forwards the
//! client's own statements and reads the server's answers as frames (row descriptions,
//! rows, notices, transaction status) without owning statements or decoding rows into
//! typed values, which tokio-postgres does not expose.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::startup::{
    Authentication, BackendKeyData, ParameterStatus, Password, SASLInitialResponse, SASLResponse,
    SecretKey,
};
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use querygate_core::{Fault, Secret};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::decode::decode_as;

/// The largest answer frame read from the upstream (a row or a description).
const MAX_FRAME: usize = 1 << 30;

/// How the gateway's connection to the upstream is encrypted (libpq's `sslmode` words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    Disable,
    /// TLS when the server offers it, unverified; plaintext otherwise.
    Prefer,
    /// TLS, unverified (encrypts against a passive listener, as libpq's `require`).
    Require,
    /// TLS, the certificate verified against the CA and the host name.
    VerifyFull,
}

impl TlsMode {
    pub fn parse(s: &str) -> Option<TlsMode> {
        Some(match s {
            "disable" => TlsMode::Disable,
            "prefer" => TlsMode::Prefer,
            "require" => TlsMode::Require,
            "verify-full" => TlsMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Where the upstream is and how the gateway signs in.
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
    pub password: Option<Secret>,
    pub tls: TlsMode,
    /// For `require`/`prefer` (accepting any certificate) and `verify-full` (the CA).
    tls_config: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("database", &self.database)
            .field("password", &self.password)
            .field("tls", &self.tls)
            .finish()
    }
}

impl Endpoint {
    /// From `postgresql://user@host:port/database` (no password in the URL: it comes from
    /// `password`), with `tls` and, for `verify-full`, the CA certificates in `ca_pem`.
    pub fn new(
        url: &str,
        password: Option<Secret>,
        tls: TlsMode,
        ca_pem: Option<&[u8]>,
    ) -> Result<Endpoint, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("url {url:?}: {e}"))?;
        if !matches!(parsed.scheme(), "postgresql" | "postgres") {
            return Err(format!("url {url:?}: the scheme must be postgresql://"));
        }
        if parsed.password().is_some() {
            return Err(
                "url: a password does not belong in the URL; use password_env or password_file"
                    .into(),
            );
        }
        if parsed.query().is_some() {
            return Err("url: query parameters are not read; use tls and ca_file".into());
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("url {url:?} names no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let user = match parsed.username() {
            "" => {
                return Err(format!(
                    "url {url:?} names no user (postgresql://user@host/db)"
                ));
            }
            u => decode_component(u)?,
        };
        let database = match parsed.path().trim_start_matches('/') {
            "" => user.clone(),
            d => decode_component(d)?,
        };
        let tls_config = match tls {
            TlsMode::Disable => None,
            TlsMode::Prefer | TlsMode::Require => Some(Arc::new(unverified_tls()?)),
            TlsMode::VerifyFull => {
                let pem = ca_pem.ok_or("tls = \"verify-full\" needs ca_file")?;
                Some(Arc::new(verified_tls(pem)?))
            }
        };
        Ok(Endpoint {
            host,
            port: parsed.port().unwrap_or(5432),
            user,
            database,
            password,
            tls,
            tls_config,
        })
    }

    /// `host:port`, for messages.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

fn decode_component(s: &str) -> Result<String, String> {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| format!("cannot read {s:?} in the url"))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

fn verified_tls(pem: &[u8]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = pem;
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| format!("ca_file: {e}"))?;
        roots.add(cert).map_err(|e| format!("ca_file: {e}"))?;
    }
    if roots.is_empty() {
        return Err("ca_file holds no certificate".into());
    }
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn unverified_tls() -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    Ok(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    )
}

/// `tls = "require"`: encrypted, the certificate not checked (as libpq's `require`); the
/// handshake's signatures are still verified.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A signed-in upstream session.
pub struct Upstream {
    io: Box<dyn Io>,
    buf: BytesMut,
    /// The server's key for cancelling this session's running statement.
    pub pid: i32,
    pub secret: i32,
    /// What the server reported at startup (server_version, encodings, …), for the client.
    pub parameters: Vec<(String, String)>,
    /// The transaction status of the last ReadyForQuery (`I`, `T`, `E`).
    pub status: u8,
    /// A reply was left unread mid-answer: the session cannot serve another statement.
    pub interrupted: bool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").field("pid", &self.pid).finish()
    }
}

fn down(endpoint: &Endpoint, what: impl std::fmt::Display) -> Fault {
    Fault::upstream(format!(
        "querygate cannot reach the upstream PostgreSQL at {}: {what}",
        endpoint.address()
    ))
}

/// The upstream's ErrorResponse as one line (`SQLSTATE: message`).
pub fn error_text(frame: &BytesMut) -> String {
    match decode_as::<ErrorResponse>(frame) {
        Some(e) => {
            let field = |c: u8| e.fields.iter().find(|f| f.0 == c).map(|f| f.1.as_str());
            format!(
                "{}: {}",
                field(b'C').unwrap_or("XX000"),
                field(b'M').unwrap_or("error")
            )
        }
        None => "an error querygate cannot read".into(),
    }
}

/// Opens a session on the upstream: TLS as configured, the startup with `parameters`
/// (besides user and database), authentication with the gateway's credential, up to the
/// first ReadyForQuery.
pub async fn connect(
    endpoint: &Endpoint,
    parameters: &[(String, String)],
) -> Result<Upstream, Fault> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| down(endpoint, e))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Io> = match (&endpoint.tls_config, endpoint.tls) {
        (Some(config), mode) => {
            let mut tcp = tcp;
            let mut ssl = BytesMut::new();
            ssl.put_i32(8);
            ssl.put_i32(80_877_103);
            tcp.write_all(&ssl).await.map_err(|e| down(endpoint, e))?;
            let mut answer = [0u8; 1];
            tcp.read_exact(&mut answer)
                .await
                .map_err(|e| down(endpoint, e))?;
            match answer[0] {
                b'S' => {
                    let name = rustls::pki_types::ServerName::try_from(endpoint.host.clone())
                        .map_err(|e| down(endpoint, e))?;
                    let tls = tokio_rustls::TlsConnector::from(config.clone())
                        .connect(name, tcp)
                        .await
                        .map_err(|e| down(endpoint, format!("TLS: {e}")))?;
                    Box::new(tls)
                }
                b'N' if mode == TlsMode::Prefer => Box::new(tcp),
                b'N' => {
                    return Err(down(
                        endpoint,
                        "the server does not offer TLS (tls is required)",
                    ));
                }
                _ => {
                    return Err(down(
                        endpoint,
                        "the server answered the SSL request with garbage",
                    ));
                }
            }
        }
        (None, _) => Box::new(tcp),
    };
    let mut upstream = Upstream {
        io,
        buf: BytesMut::with_capacity(8 * 1024),
        pid: 0,
        secret: 0,
        parameters: Vec::new(),
        status: b'I',
        interrupted: false,
    };
    let mut startup = BytesMut::new();
    startup.put_i32(0);
    startup.put_i32(3 << 16);
    for (name, value) in [
        ("user", endpoint.user.as_str()),
        ("database", endpoint.database.as_str()),
    ]
    .into_iter()
    .chain(parameters.iter().map(|(n, v)| (n.as_str(), v.as_str())))
    {
        startup.put_slice(name.as_bytes());
        startup.put_u8(0);
        startup.put_slice(value.as_bytes());
        startup.put_u8(0);
    }
    startup.put_u8(0);
    let len = startup.len() as i32;
    startup[..4].copy_from_slice(&len.to_be_bytes());
    upstream
        .send(&startup)
        .await
        .map_err(|e| down(endpoint, e))?;
    upstream.sign_in(endpoint).await?;
    Ok(upstream)
}

impl Upstream {
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.interrupted {
            return Err(std::io::Error::other(
                "its session was left in the middle of an answer",
            ));
        }
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Sends one message.
    pub async fn send_message<M: Message>(&mut self, message: M) -> Result<(), Fault> {
        let mut out = BytesMut::new();
        message.encode(&mut out).map_err(|e| {
            Fault::gateway(format!("cannot encode a message for the upstream: {e}"))
        })?;
        self.send(&out)
            .await
            .map_err(|e| Fault::upstream(format!("the upstream PostgreSQL went away: {e}")))
    }

    /// The next answer frame (type byte, length, body).
    pub async fn frame(&mut self) -> Result<BytesMut, Fault> {
        loop {
            match crate::decode::frame(&mut self.buf, MAX_FRAME) {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(p) => {
                    return Err(Fault::upstream(format!(
                        "the upstream PostgreSQL sent what querygate cannot read: {}",
                        p.message
                    )));
                }
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(8 * 1024);
            }
            let n =
                self.io.read_buf(&mut self.buf).await.map_err(|e| {
                    Fault::upstream(format!("the upstream PostgreSQL went away: {e}"))
                })?;
            if n == 0 {
                return Err(Fault::upstream(
                    "the upstream PostgreSQL closed the connection",
                ));
            }
        }
    }

    async fn sign_in(&mut self, endpoint: &Endpoint) -> Result<(), Fault> {
        let refused = |what: String| {
            Fault::upstream(format!(
                "the upstream PostgreSQL at {} refused querygate's sign-in: {what}",
                endpoint.address()
            ))
        };
        let password = || {
            endpoint.password.as_ref().ok_or_else(|| {
                refused("it asks for a password and the source has none (password_env or password_file)".into())
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let frame = self.frame().await?;
            match frame[0] {
                b'R' => match decode_as::<Authentication>(&frame) {
                    Some(Authentication::Ok) => {}
                    Some(Authentication::CleartextPassword) => {
                        let pw = password()?.expose().to_string();
                        self.send_message(Password::new(pw)).await?;
                    }
                    Some(Authentication::MD5Password(salt)) if salt.len() == 4 => {
                        let salt = [salt[0], salt[1], salt[2], salt[3]];
                        let hashed = postgres_protocol::authentication::md5_hash(
                            endpoint.user.as_bytes(),
                            password()?.expose().as_bytes(),
                            salt,
                        );
                        self.send_message(Password::new(hashed)).await?;
                    }
                    Some(Authentication::SASL(mechanisms)) => {
                        if !mechanisms.iter().any(|m| m == "SCRAM-SHA-256") {
                            return Err(refused(format!(
                                "it offers only {mechanisms:?}; querygate signs in with SCRAM-SHA-256"
                            )));
                        }
                        let s = ScramSha256::new(
                            password()?.expose().as_bytes(),
                            ChannelBinding::unsupported(),
                        );
                        let first = bytes::Bytes::copy_from_slice(s.message());
                        scram = Some(s);
                        self.send_message(SASLInitialResponse::new(
                            "SCRAM-SHA-256".to_string(),
                            Some(first),
                        ))
                        .await?;
                    }
                    Some(Authentication::SASLContinue(data)) => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| refused("SCRAM out of order".into()))?;
                        s.update(&data).map_err(|e| refused(e.to_string()))?;
                        let next = bytes::Bytes::copy_from_slice(s.message());
                        self.send_message(SASLResponse::new(next)).await?;
                    }
                    Some(Authentication::SASLFinal(data)) => {
                        let mut s = scram
                            .take()
                            .ok_or_else(|| refused("SCRAM out of order".into()))?;
                        s.finish(&data).map_err(|e| refused(e.to_string()))?;
                    }
                    _ => {
                        return Err(refused(
                            "it asks for an authentication method querygate does not speak".into(),
                        ));
                    }
                },
                b'S' => {
                    if let Some(p) = decode_as::<ParameterStatus>(&frame) {
                        self.parameters.push((p.name, p.value));
                    }
                }
                b'K' => {
                    if let Some(BackendKeyData {
                        pid,
                        secret_key: SecretKey::I32(secret),
                        ..
                    }) = decode_as::<BackendKeyData>(&frame)
                    {
                        self.pid = pid;
                        self.secret = secret;
                    }
                }
                b'Z' => {
                    self.status = frame.get(5).copied().unwrap_or(b'I');
                    return Ok(());
                }
                b'E' => return Err(refused(error_text(&frame))),
                b'N' => {}
                other => {
                    return Err(refused(format!(
                        "unexpected message {:?} during sign-in",
                        other as char
                    )));
                }
            }
        }
    }

    /// Tells the server the session ends.
    pub async fn terminate(mut self) {
        let _ = self.send(&[b'X', 0, 0, 0, 4]).await;
        let _ = self.io.shutdown().await;
    }
}

/// Runs `sql` (a script of statements, through a simple query) on a session of its own,
/// for setup work (`querygate demo`); the upstream's first error, if it answers one.
pub async fn run_script(endpoint: &Endpoint, sql: &str) -> Result<Option<String>, Fault> {
    let mut upstream = connect(endpoint, &[]).await?;
    let mut frames = BytesMut::new();
    pgwire::messages::simplequery::Query::new(sql.to_string())
        .encode(&mut frames)
        .map_err(|e| Fault::gateway(format!("cannot encode the script: {e}")))?;
    let reply = crate::source::exchange(
        &mut upstream,
        frames,
        &[crate::source::Expect::Ready],
        false,
    )
    .await;
    upstream.terminate().await;
    Ok(reply?.error())
}

/// Asks the upstream to cancel the statement session `(pid, secret)` runs (a new
/// connection, as the protocol says).
pub async fn cancel(endpoint: &Endpoint, pid: i32, secret: i32) -> Result<(), Fault> {
    let mut tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| down(endpoint, e))?;
    let mut out = BytesMut::new();
    out.put_i32(16);
    out.put_i32(80_877_102);
    out.put_i32(pid);
    out.put_i32(secret);
    tcp.write_all(&out).await.map_err(|e| down(endpoint, e))?;
    let _ = tcp.shutdown().await;
    Ok(())
}
