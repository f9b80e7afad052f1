//! `querygate demo`: the whole gateway on one machine, over the embedded engine and sample data.
//!
//! Writes (only what is missing) into a directory: the sample data, API keys (`keys.json`, 0600),
//! a demo config (`querygate.toml`: keys, a `local` source, masking, a write denial, an approval
//! rule, the admin API); then writes `demo.json` for scripts, prints the keys, a Python snippet
//! and the commands to watch the audit log and decide tickets, and serves until Ctrl-C. Re-running
//! reuses everything in the directory, edits to the config included. Wiring only: what it serves
//! is `querygate serve` of that config.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use querygate_core::Secret;
use rand::RngCore;
use serde_json::json;

use crate::config::Config;
use crate::serve::LogFormat;

/// Preferred ports; a busy one is replaced by a free one the OS picks.
const BIGQUERY_PORT: u16 = 9050;
const ADMIN_PORT: u16 = 9080;
const MCP_PORT: u16 = 9060;
const POSTGRES_PORT: u16 = 6432;

/// The demo's database in the machine's PostgreSQL, when there is one.
const POSTGRES_DB: &str = "querygate_demo";

/// Its tables: customers (with personal data the masks cover) and orders.
const POSTGRES_SETUP: &str = "
CREATE TABLE IF NOT EXISTS public.customers (id int PRIMARY KEY, name text, email text, country text);
INSERT INTO public.customers VALUES
  (1, 'Ana Lima', 'ana.lima@example.com', 'BR'), (2, 'Bo Chen', 'bo.chen@example.org', 'SG'),
  (3, 'Cleo Martin', 'cleo@example.net', 'FR'), (4, 'Dev Patel', 'dev.patel@example.com', 'IN')
  ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS public.orders (id int PRIMARY KEY, customer_id int, amount numeric(10,2), status text);
INSERT INTO public.orders SELECT g, 1 + g % 4, (g * 7 % 500) + 0.99, (ARRAY['paid','shipped','refunded'])[1 + g % 3]
  FROM generate_series(1, 200) g ON CONFLICT DO NOTHING;
";

/// Makes the demo database in the machine's PostgreSQL (127.0.0.1:5432, as `postgres`,
/// without a password, as a development machine's usually allows), or says why not.
fn postgres_demo() -> Result<String, String> {
    let url = |db: &str| format!("postgresql://postgres@127.0.0.1:5432/{db}");
    let endpoint = |db: &str| {
        querygate_postgres::Endpoint::new(&url(db), None, querygate_postgres::TlsMode::Prefer, None)
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let within = std::time::Duration::from_secs(5);
        let admin = endpoint("postgres")?;
        let created = tokio::time::timeout(
            within,
            querygate_postgres::upstream::run_script(
                &admin,
                &format!("CREATE DATABASE {POSTGRES_DB}"),
            ),
        )
        .await
        .map_err(|_| "PostgreSQL on 127.0.0.1:5432 did not answer".to_string())?
        .map_err(|f| f.message)?;
        if let Some(e) = created.filter(|e| !e.starts_with("42P04")) {
            return Err(e);
        }
        let demo = endpoint(POSTGRES_DB)?;
        match tokio::time::timeout(
            within,
            querygate_postgres::upstream::run_script(&demo, POSTGRES_SETUP),
        )
        .await
        {
            Ok(Ok(None)) => Ok(url(POSTGRES_DB)),
            Ok(Ok(Some(e))) => Err(e),
            Ok(Err(f)) => Err(f.message),
            Err(_) => Err("PostgreSQL on 127.0.0.1:5432 did not answer".into()),
        }
    })
}

/// The demo's identities: (name in demo.json, identity, group).
const PEOPLE: &[(&str, &str, &str)] = &[
    ("agent", "agent:demo-agent", "agents"),
    ("analyst", "human:analyst", "analysts"),
    ("approver", "human:approver", "approvers"),
    ("privacy", "human:privacy-officer", "privacy"),
];

pub fn run(dir: &Path) -> anyhow::Result<ExitCode> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", dir.display()))?;
    eprintln!("querygate demo: preparing {}", dir.display());
    let started = std::time::Instant::now();
    let wrote = querygate_local::sample::generate(&dir).map_err(anyhow::Error::msg)?;
    for w in &wrote {
        eprintln!("  wrote {w}");
    }
    if !wrote.is_empty() {
        eprintln!(
            "  sample data generated in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let keys = keys(&dir)?;
    let store = dir.join("store");
    std::fs::create_dir_all(&store)
        .with_context(|| format!("cannot create {}", store.display()))?;
    let config_path = dir.join("querygate.toml");
    if !config_path.exists() {
        // The machine's PostgreSQL, when there is one, behind the PostgreSQL front.
        let postgres = postgres_demo()
            .map_err(|why| {
                eprintln!(
                    "  no PostgreSQL source: {why}\n  (to add one: a [[sources]] block with kind = \
                     \"postgres\" and server.postgres_listen; see the README, \"Use with \
                     PostgreSQL\")"
                )
            })
            .ok();
        write_private(&config_path, &config_text(&keys, postgres.as_deref())?)?;
    }
    let config = Config::load(&config_path).map_err(anyhow::Error::msg)?;
    let bigquery = format!("http://{}", config.listen());
    let admin = config.admin_url().unwrap_or_default();
    let mcp = config
        .mcp_listen()
        .map(|a| format!("http://{a}/mcp"))
        .unwrap_or_default();
    let project = config
        .sources
        .first()
        .map_or("demo".to_string(), |s| s.project.clone());
    let postgres = config.postgres_listen().map(|a| {
        let db = config
            .sources
            .iter()
            .find(|s| matches!(s.kind.get_ref(), crate::config::SourceKind::Postgres(_)))
            .map_or(POSTGRES_DB.to_string(), |s| s.project.clone());
        json!({ "host": a.ip().to_string(), "port": a.port(), "dbname": db })
    });
    let demo_json = json!({
        "bigquery_endpoint": bigquery,
        "admin_endpoint": admin,
        "mcp_endpoint": mcp,
        "postgres": postgres,
        "project": project,
        "config": config_path.to_string_lossy(),
        "keys": keys.iter().map(|(n, k)| (n.clone(), json!(k.expose()))).collect::<serde_json::Map<_, _>>(),
    });
    write_private(
        &dir.join("demo.json"),
        &serde_json::to_string_pretty(&demo_json)?,
    )?;
    print_banner(
        &dir,
        &config_path,
        [&bigquery, &admin, &mcp],
        &project,
        &keys,
    );
    if let Some(pg) = &postgres {
        let agent = keys
            .iter()
            .find(|(n, _)| n == "agent")
            .map(|(_, k)| k.expose().to_string())
            .unwrap_or_default();
        println!(
            "PostgreSQL, as the agent (customers.email is masked for it):\n\n\
             PGPASSWORD={agent} psql \"host={} port={} dbname={} user=agent\" \\\n  \
             -c \"SELECT name, email FROM customers\"\n",
            pg["host"].as_str().unwrap_or_default(),
            pg["port"],
            pg["dbname"].as_str().unwrap_or_default()
        );
    }
    crate::serve::run(&config_path, LogFormat::Text)
}

/// The demo's API keys, created once and kept in `keys.json`.
fn keys(dir: &Path) -> anyhow::Result<Vec<(String, Secret)>> {
    let path = dir.join("keys.json");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let stored: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
            .with_context(|| format!("{} is not the demo's keys file", path.display()))?;
        let keys: Option<Vec<_>> = PEOPLE
            .iter()
            .map(|(name, _, _)| {
                stored
                    .get(*name)
                    .and_then(|v| v.as_str())
                    .map(|k| (name.to_string(), Secret::new(k.to_string())))
            })
            .collect();
        if let Some(keys) = keys {
            return Ok(keys);
        }
        anyhow::bail!(
            "{} lacks some demo keys; delete it and {} to start over",
            path.display(),
            dir.join("querygate.toml").display()
        );
    }
    let keys: Vec<(String, Secret)> = PEOPLE
        .iter()
        .map(|(name, _, _)| {
            let mut raw = [0u8; 32];
            rand::rng().fill_bytes(&mut raw);
            (
                name.to_string(),
                Secret::new(format!("qg_{}", hex::encode(raw))),
            )
        })
        .collect();
    let stored: serde_json::Map<String, serde_json::Value> = keys
        .iter()
        .map(|(n, k)| (n.clone(), json!(k.expose())))
        .collect();
    write_private(&path, &serde_json::to_string_pretty(&stored)?)?;
    Ok(keys)
}

/// Writes a file only its owner may read (it holds keys, or their hashes next to them).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// `preferred` if nothing listens there, else a free port.
fn free_port(preferred: u16, avoid: &[u16]) -> anyhow::Result<u16> {
    if !avoid.contains(&preferred)
        && TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], preferred))).is_ok()
    {
        return Ok(preferred);
    }
    for _ in 0..10 {
        let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .context("cannot find a free port")?;
        let port = l.local_addr()?.port();
        if !avoid.contains(&port) {
            return Ok(port);
        }
    }
    anyhow::bail!("cannot find a free port")
}

/// The demo's config; `postgres`: the URL of the demo database in the machine's PostgreSQL.
fn config_text(keys: &[(String, Secret)], postgres: Option<&str>) -> anyhow::Result<String> {
    let bigquery = free_port(BIGQUERY_PORT, &[])?;
    let admin = free_port(ADMIN_PORT, &[bigquery])?;
    let mcp = free_port(MCP_PORT, &[bigquery, admin])?;
    let (postgres_listen, postgres_source) = match postgres {
        Some(url) => {
            let port = free_port(POSTGRES_PORT, &[bigquery, admin, mcp])?;
            (
                format!(
                    "postgres_listen = \"127.0.0.1:{port}\"  # the PostgreSQL front (psql, drivers)\n"
                ),
                format!(
                    "# The machine's PostgreSQL: a database the demo made, behind the PostgreSQL front.\n\
                     [[sources]]\nname = \"{POSTGRES_DB}\"\nkind = \"postgres\"\nurl = \"{url}\"\n\
                     tls = \"prefer\"\n\n[[classify]]\ntag = \"email\"\n\
                     columns = [\"{POSTGRES_DB}.public.customers.email\"]\n\n"
                ),
            )
        }
        None => (String::new(), String::new()),
    };
    let mut api_keys = String::new();
    for ((name, key), (_, identity, group)) in keys.iter().zip(PEOPLE) {
        api_keys.push_str(&format!(
            "[[api_keys]]   # {name}\nidentity = \"{identity}\"\ngroups = [\"{group}\"]\nkey_sha256 = \"{}\"\n\n",
            key.sha256_hex()
        ));
    }
    Ok(format!(
        r#"# querygate demo configuration, written by `querygate demo` (re-runs keep your edits;
# delete this file to get the original back). Paths are relative to this file.
# The policy reloads when you save this file.

[server]
bigquery_listen = "127.0.0.1:{bigquery}"
admin_listen = "127.0.0.1:{admin}"       # the admin API: approvals
mcp_listen = "127.0.0.1:{mcp}"         # the MCP server for agents (Streamable HTTP at /mcp)
{postgres_listen}
[store]
path = "store/querygate.db"               # the audit log, tickets, jobs, sessions

{api_keys}# The embedded engine (DuckDB, in the gateway's own process) over the sample files.
[[sources]]
name = "sample"
kind = "local"
project = "demo"
tables = {{ "shop.customers" = "data/customers.parquet", "shop.orders" = "data/orders/*.csv", "shop.events" = "data/events.parquet" }}

{postgres_source}# Personal data: masked for everyone but the privacy group.
[[classify]]
tag = "email"
columns = ["demo.shop.customers.email"]

[[classify]]
tag = "pii"
columns = ["demo.shop.customers.phone", "demo.shop.customers.card_number", "demo.shop.customers.national_id"]

[[classify]]
tag = "network"
columns = ["demo.shop.events.ip_address"]

[[mask]]
tag = "email"
strategy = "email_domain"                 # ***@example.com
unmasked_for = ["group:privacy"]

[[mask]]
tag = "pii"
strategy = "last4"                        # ************1234
unmasked_for = ["group:privacy"]

[[mask]]
tag = "network"
strategy = "hash"                         # keyed SHA-256: still joins and groups, reveals nothing
unmasked_for = ["group:privacy"]

[[rule]]
name = "the sample data is read-only"
statements = ["insert", "update", "delete", "merge", "create", "drop", "alter", "truncate", "grant", "export", "copy"]
action = "deny"
message = "the demo data is read-only: querygate refuses writes before they reach the engine; ask a person to change the data"

[[rule]]
name = "large scans by agents need an approver"
who = ["group:agents"]
tables = ["demo.*.*"]                     # the embedded engine's: PostgreSQL gives no byte estimate
when = {{ bytes_over = "8 MiB" }}           # from a dry run: SELECT * over shop.events (1.2M rows) is ~29 MiB
action = "approve"
approvers = ["group:approvers"]

[[rule]]
name = "read"
who = ["group:agents", "group:analysts", "group:approvers", "group:privacy"]
statements = ["select"]
action = "allow"

[approvals]
ticket_ttl = "1h"
"#
    ))
}

fn print_banner(
    dir: &Path,
    config: &Path,
    [bigquery, admin, mcp]: [&str; 3],
    project: &str,
    keys: &[(String, Secret)],
) {
    let exe = std::env::current_exe()
        .ok()
        .map_or_else(|| "querygate".to_string(), |p| p.display().to_string());
    let key = |name: &str| {
        keys.iter()
            .find(|(n, _)| n == name)
            .map(|(_, k)| k.expose().to_string())
            .unwrap_or_default()
    };
    let mut people = String::new();
    for (name, identity, group) in PEOPLE {
        people.push_str(&format!(
            "  {name:<9} {}   {identity} (group {group})\n",
            key(name)
        ));
    }
    let c = config.display();
    println!(
        r#"
querygate demo: the gateway over an embedded DuckDB with sample data, in {dir}

  BigQuery REST API  {bigquery}   (project "{project}": shop.customers, shop.orders, shop.events)
  Admin API          {admin}
  MCP server         {mcp}
  Config             {c}
  For scripts        {dir}/demo.json

API keys (the agent's PII is masked and its large scans wait for the approver; the privacy group sees PII):
{people}
Python (pip install google-cloud-bigquery):

from google.cloud import bigquery
from google.oauth2.credentials import Credentials
client = bigquery.Client(project="{project}", credentials=Credentials(token="{agent}"),
                         client_options={{"api_endpoint": "{bigquery}"}})
for row in client.query_and_wait("SELECT status, COUNT(*) AS n FROM shop.orders GROUP BY status ORDER BY n DESC"):
    print(row.status, row.n)

Claude Code (or any MCP client), as the agent:

claude mcp add --transport http querygate {mcp} --header "Authorization: Bearer {agent}"

Watch the audit log:   {exe} audit tail --config {c} -n 20
Pending approvals:     QUERYGATE_TOKEN={approver} {exe} approvals list --config {c}
Approve one:           QUERYGATE_TOKEN={approver} {exe} approvals approve tk_… --config {c}
Verify the audit log:  {exe} audit verify --config {c}

Ctrl-C stops the gateway; everything stays in {dir}.
"#,
        dir = dir.display(),
        agent = key("agent"),
        approver = key("approver"),
    );
}

/// The neutral side of a source, end to end on the demo's real engine: a front that speaks
/// no source's protocol (as the MCP front will) asks for queries and catalog descriptions in
/// neutral words, and gets typed rows back, masked as the REST front's are, through the same
/// pipeline (authenticated, decided, audited).
#[cfg(all(test, feature = "local"))]
mod neutral_tests {
    use querygate_core::{Action, Catalog, ClientInfo, Query, Request, RequestId};
    use querygate_pipeline::{Answer, Outcome, Paging, Reply, Source};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn neutral_queries_and_catalog_reads_run_through_the_pipeline_on_the_local_engine() {
        let dir = std::env::temp_dir().join(format!("qg-demo-neutral-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        querygate_local::sample::generate(&dir).expect("sample data");
        let keys: Vec<(String, Secret)> = PEOPLE
            .iter()
            .map(|(name, _, _)| (name.to_string(), Secret::new(format!("qg_neutral_{name}"))))
            .collect();
        std::fs::create_dir_all(dir.join("store")).expect("store dir");
        let config_path = dir.join("querygate.toml");
        std::fs::write(&config_path, config_text(&keys, None).expect("config")).expect("write");
        let config = Config::load(&config_path).expect("config loads");
        let (front, store) =
            crate::serve::front(&config, &querygate_identity::KeyCaches::default()).expect("front");
        let source = front.sources.get("demo").expect("the demo source").clone();
        let ask = |who: &str, action: Action| Request {
            id: RequestId(format!("qg-neutral-{who}")),
            credential: Some(Secret::new(format!("qg_neutral_{who}"))),
            delegation: None,
            audience: None,
            client: ClientInfo::default(),
            target: "demo".into(),
            method: "neutral".into(),
            action,
            job_id: None,
            reason: None,
            wait: None,
            session: None,
            codes: &querygate_bigquery::render::CODES,
        };
        let run = |who: &'static str, action: Action| {
            let front = front.clone();
            let source = source.clone();
            async move {
                let paging = Paging {
                    max_rows: Some(5),
                    ..Paging::default()
                };
                let call = source.call_for(&action, &paging).expect("a call");
                front
                    .pipeline
                    .handle(ask(who, action), Some(source.as_ref()), call)
                    .await
            }
        };
        let emails = "SELECT customer_id, email FROM shop.customers ORDER BY customer_id LIMIT 3";

        // The agent's rows come back typed, and masked at the read.
        let reply = match run("agent", Action::Query(Query::new(emails))).await {
            Outcome::Done(reply) => reply,
            other => panic!("the agent's query runs: {other:?}"),
        };
        let Answer::Rows(rows) = reply.answer() else {
            panic!("rows: {:?}", reply.answer());
        };
        assert_eq!(rows.columns.len(), 2);
        assert_eq!(rows.columns[1].name, "email");
        assert_eq!(rows.rows.len(), 3);
        assert!(rows.rows[0][0].is_number(), "{:?}", rows.rows[0]);
        for row in &rows.rows {
            let email = row[1].as_str().expect("a string");
            assert!(email.starts_with("***@"), "masked for the agent: {email}");
        }
        // The privacy group reads them in clear, through the same call.
        let Outcome::Done(reply) = run("privacy", Action::Query(Query::new(emails))).await else {
            panic!("the privacy officer's query runs");
        };
        let Answer::Rows(clear) = reply.answer() else {
            panic!("rows");
        };
        let email = clear.rows[0][1].as_str().expect("a string");
        assert!(email.contains('@') && !email.starts_with("***"), "{email}");

        // The catalog, described.
        let tables = Action::Catalog {
            object: Catalog::Tables {
                schema: "demo.shop".into(),
            },
            hidden: false,
        };
        let Outcome::Done(reply) = run("agent", tables).await else {
            panic!("tables are listed");
        };
        let Answer::Names(names) = reply.answer() else {
            panic!("names: {:?}", reply.answer());
        };
        for t in ["customers", "orders", "events"] {
            assert!(names.iter().any(|n| n == t), "{t} in {names:?}");
        }
        let table = Action::Catalog {
            object: Catalog::Table {
                table: "demo.shop.customers".into(),
            },
            hidden: false,
        };
        let Outcome::Done(reply) = run("agent", table).await else {
            panic!("a table is described");
        };
        let Answer::Table(info) = reply.answer() else {
            panic!("a table: {:?}", reply.answer());
        };
        assert!(info.columns.iter().any(|c| c.name == "email"), "{info:?}");

        // A write is refused with the rule's message before the engine sees it.
        let write = Action::Query(Query::new("DELETE FROM shop.orders WHERE TRUE"));
        match run("agent", write).await {
            Outcome::Denied(d) => assert!(d.message.contains("read-only"), "{}", d.message),
            other => panic!("a write is denied: {other:?}"),
        }

        // Every request is in the audit log.
        store.flush().await.expect("flush");
        let mut seen = Vec::new();
        querygate_store::Reader::open(&config.store_path())
            .expect("reader")
            .records(&Default::default(), None, |r| {
                seen.push((r.record.method.clone(), r.record.decision.clone()))
            })
            .expect("records");
        assert!(
            seen.iter().filter(|(m, _)| m == "neutral").count() >= 9,
            "{seen:?}"
        );
        assert!(seen.iter().any(|(m, d)| m == "neutral" && d == "deny"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
