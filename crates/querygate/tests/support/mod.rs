//! Test support: run the real `querygate` binary against an upstream started by the test.
//!
//! The upstream here is a small recording HTTP server (`Recorder`) for tests that must see
//! exactly what the gateway sends (credential isolation) or must misbehave on purpose
//! (down, garbage). Flows through the real BigQuery emulator and the official clients
//! live in tests/e2e.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;

pub const KEY: &str = "qg_test_key_0123456789abcdef";

pub fn sha256_hex(s: &str) -> String {
    querygate_core::Secret::new(s).sha256_hex()
}

/// An `[[api_keys]]` entry: `identity` in `groups` (none: no `groups` line) with `key`'s
/// SHA-256, and a blank line after it.
pub fn api_key(identity: &str, groups: &[&str], key: &str) -> String {
    let groups = if groups.is_empty() {
        String::new()
    } else {
        let quoted: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
        format!("groups = [{}]\n", quoted.join(", "))
    };
    format!(
        "[[api_keys]]\nidentity = \"{identity}\"\n{groups}key_sha256 = \"{}\"\n\n",
        sha256_hex(key)
    )
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "qg-it-{name}-{}-{}",
            std::process::id(),
            Instant::now().elapsed().as_nanos() ^ rand_u64()
        ));
        std::fs::create_dir_all(&p).expect("mkdir");
        TempDir(p)
    }
}

fn rand_u64() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One request the recorder saw.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

type Handler = Arc<dyn Fn(&Seen) -> (u16, String) + Send + Sync>;

/// An HTTP server on 127.0.0.1 that records every request and answers with `handler`.
pub struct Recorder {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    pub async fn start(
        handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
    ) -> Recorder {
        Recorder::start_on(0, handler).await
    }

    /// Like `start`, on a chosen port (0: any).
    pub async fn start_on(
        port: u16,
        handler: impl Fn(&Seen) -> (u16, String) + Send + Sync + 'static,
    ) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state: (Arc<Mutex<Vec<Seen>>>, Handler) = (seen.clone(), Arc::new(handler));
        async fn any(
            State((seen, handler)): State<(Arc<Mutex<Vec<Seen>>>, Handler)>,
            method: Method,
            uri: Uri,
            headers: HeaderMap,
            body: Bytes,
        ) -> impl IntoResponse {
            let s = Seen {
                method,
                uri: uri.to_string(),
                headers,
                body,
            };
            let (status, body) = handler(&s);
            seen.lock().expect("lock").push(s);
            (
                axum::http::StatusCode::from_u16(status).expect("status"),
                [("content-type", "application/json")],
                body,
            )
        }
        let app = Router::new().fallback(any).with_state(state);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Recorder { addr, seen }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }
}

/// A free port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A running `querygate serve` process.
pub struct Gateway {
    pub dir: TempDir,
    pub port: u16,
    pub config: PathBuf,
    child: Child,
    log: PathBuf,
}

impl Gateway {
    /// Starts the gateway with `[server]` extras, the test key, and `sources` (TOML).
    pub async fn start(name: &str, server_extra: &str, sources: &str) -> Gateway {
        Gateway::start_with(name, "", server_extra, sources).await
    }

    /// Like `start`, with top-level keys (`top`) before the first table.
    pub async fn start_with(name: &str, top: &str, server_extra: &str, sources: &str) -> Gateway {
        let dir = TempDir::new(name);
        let port = free_port();
        let config = dir.0.join("querygate.toml");
        std::fs::write(
            &config,
            format!(
                "{top}\n[server]\nbigquery_listen = \"127.0.0.1:{port}\"\n{server_extra}\n\n\
                 [store]\npath = \"querygate.db\"\n\n{}{sources}\n",
                api_key("agent:test", &["agents"], KEY)
            ),
        )
        .expect("write config");
        let log = dir.0.join("gateway.log");
        let child = Command::new(env!("CARGO_BIN_EXE_querygate"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("QUERYGATE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn querygate");
        let mut g = Gateway {
            dir,
            port,
            config,
            child,
            log,
        };
        g.wait_ready(server_extra.contains("tls_cert")).await;
        g
    }

    async fn wait_ready(&mut self, tls: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("querygate exited early ({status}):\n{}", self.log());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                if tls {
                    return;
                }
                if let Ok(r) = reqwest::get(format!("{}/healthz", self.url())).await
                    && r.status().is_success()
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "querygate did not start:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends SIGHUP (reload keys and policy).
    pub fn hup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Stops the gateway as an operator would (SIGTERM, so it flushes its audit log) and
    /// starts it again on the same config, store and ports.
    pub async fn restart(&mut self) {
        if self.alive() {
            let status = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) {
            assert!(
                Instant::now() < deadline,
                "querygate did not stop:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log)
            .expect("log file");
        self.child = Command::new(env!("CARGO_BIN_EXE_querygate"))
            .args(["serve", "--config"])
            .arg(&self.config)
            .env("QUERYGATE_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn querygate");
        let tls = std::fs::read_to_string(&self.config).is_ok_and(|c| c.contains("tls_cert"));
        self.wait_ready(tls).await;
    }

    /// Kills the gateway at once (SIGKILL), as a crash would: nothing is flushed.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs `querygate <args> --config <this config>` and returns (exit code, stdout).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        cli(&self.config, args)
    }

    /// Every audit record, as JSON values, once the log has settled: completion records
    /// are queued after the response, so they land a moment after the client has its answer.
    pub fn audit(&self) -> Vec<serde_json::Value> {
        let read = || {
            let (code, out) = self.cli(&["audit", "search", "--json"]);
            assert_eq!(code, 0, "audit search failed: {out}");
            out.lines()
                .map(|l| serde_json::from_str(l).expect("json line"))
                .collect::<Vec<serde_json::Value>>()
        };
        let mut last = read();
        for _ in 0..30 {
            std::thread::sleep(Duration::from_millis(100));
            let now = read();
            if now.len() == last.len() {
                return now;
            }
            last = now;
        }
        last
    }

    pub fn db(&self) -> PathBuf {
        self.dir.0.join("querygate.db")
    }
}

pub fn cli(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_querygate"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run querygate");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn bigquery_source(endpoint: &str, credentials: &str) -> String {
    format!(
        "[[sources]]\nname = \"analytics\"\nkind = \"bigquery\"\nproject = \"test-project\"\n\
         endpoint = \"{endpoint}\"\ncredentials = {credentials}\n"
    )
}

/// A canned jobs.query answer with `n` rows.
pub fn query_response(job: &str, n: usize) -> String {
    let rows: Vec<String> = (1..=n)
        .map(|i| format!(r#"{{"f":[{{"v":"{i}"}},{{"v":"user{i}@example.com"}}]}}"#))
        .collect();
    format!(
        r#"{{"kind":"bigquery#queryResponse","jobReference":{{"projectId":"test-project","jobId":"{job}","location":"US"}},"jobComplete":true,"schema":{{"fields":[{{"name":"id","type":"INTEGER"}},{{"name":"email","type":"STRING"}}]}},"rows":[{}],"totalRows":"{n}","totalBytesProcessed":"4096","cacheHit":false}}"#,
        rows.join(",")
    )
}
