//! The `bigquery` source: executes admitted calls against BigQuery (or an
//! emulator) with the gateway's own credential, and reads the reply's facts.
//!
//! The client's `Authorization` header is never forwarded: the call carries no
//! headers from the client at all. The credential is either none (emulators) or a
//! service-account key from which access tokens are minted and cached (gcp_auth,
//! JWT bearer grant to the key's own `token_uri`). Tokens never reach logs or errors.

pub mod neutral;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use gcp_auth::TokenProvider;
use http::{HeaderValue, Response, StatusCode, header};
use querygate_core::Secret;
use querygate_core::{Action, Denial, DenialKind, Fault};
use querygate_mask::HASH_KEY_PARAM;
use querygate_pipeline::{
    Admitted, Answer, Column, Held, Paging, Partitioning, Refusal, Reply, Resumed, Rows, Scope,
    Source, SqlDialect, Summary, View,
};
use serde_json::Value;

use crate::decode::{Api, Call};
use crate::model::json_response;
use crate::model::{ErrorEnvelope, ResponseFacts, TableFacts};

const SCOPE: &str = "https://www.googleapis.com/auth/bigquery";

/// Google's IAM Credentials API, which mints tokens for service accounts the gateway may impersonate.
pub const IAM_ENDPOINT: &str = "https://iamcredentials.googleapis.com";

/// Requests of identities matching `who` run as `service_account`, a narrower principal
/// than the gateway's own, so Google's audit logs name it too.
#[derive(Debug, Clone)]
pub struct Impersonation {
    pub who: Vec<querygate_policy::Principal>,
    pub service_account: String,
}

/// What must be escaped of a service account's email in a URL path (it keeps its `@`).
const SA_IN_PATH: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'/')
    .add(b'?')
    .add(b'#')
    .add(b'%')
    .add(b':');

/// An impersonated access token and when to stop using it.
#[derive(Clone)]
struct MintedToken {
    token: String,
    renew_after: Instant,
}

impl std::fmt::Debug for MintedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MintedToken(<redacted>)")
    }
}

/// How the gateway authenticates to the upstream.
#[derive(Clone)]
pub enum UpstreamAuth {
    /// No credential (emulators).
    None,
    /// OAuth access tokens minted from a service-account key.
    ServiceAccount(Arc<gcp_auth::CustomServiceAccount>),
}

impl std::fmt::Debug for UpstreamAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamAuth::None => f.write_str("None"),
            UpstreamAuth::ServiceAccount(_) => f.write_str("ServiceAccount(<redacted>)"),
        }
    }
}

/// Why a `bigquery` source could not be set up. Messages name files, never their content.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read service account key {path}: {error}")]
    KeyUnreadable { path: String, error: std::io::Error },
    #[error("{path} is not a service account key file (expected the JSON key Google issues)")]
    NotAKey { path: String },
    #[error("cannot build the HTTP client: {0}")]
    Client(reqwest::Error),
}

impl UpstreamAuth {
    /// Loads a service-account key file. Errors name the file, never its content.
    pub fn service_account(path: &std::path::Path) -> Result<UpstreamAuth, SetupError> {
        let shown = || path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| SetupError::KeyUnreadable {
            path: shown(),
            error,
        })?;
        let sa = gcp_auth::CustomServiceAccount::from_json(&text)
            .map_err(|_| SetupError::NotAKey { path: shown() })?;
        Ok(UpstreamAuth::ServiceAccount(Arc::new(sa)))
    }
}

/// How long dry-run estimates and table partitioning are reused.
const ESTIMATE_TTL: Duration = Duration::from_secs(60);
/// How long a table's schema and partitioning are trusted before tables.get is asked
/// again (a schema change reaches the masking rewrite within this time).
const TABLE_TTL: Duration = Duration::from_secs(60);
const CACHE_CAP: usize = 4096;

/// A small map of recent answers, cleared when full.
#[derive(Debug)]
struct Recent<V>(Mutex<HashMap<String, (V, Instant)>>);

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent(Mutex::new(HashMap::new()))
    }
}

impl<V: Clone> Recent<V> {
    fn get(&self, key: &str, ttl: Duration) -> Option<V> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(_, at)| at.elapsed() < ttl)
            .map(|(v, _)| v.clone())
    }

    fn put(&self, key: String, value: V) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= CACHE_CAP {
            map.clear();
        }
        map.insert(key, (value, Instant::now()));
    }
}

/// One configured `bigquery` source.
#[derive(Debug)]
pub struct BigQuerySource {
    name: String,
    project: String,
    endpoint: String,
    auth: UpstreamAuth,
    http: reqwest::Client,
    estimates: Recent<u64>,
    tables: Recent<TableMeta>,
    impersonate: Vec<Impersonation>,
    iam_endpoint: String,
    minted: Mutex<HashMap<String, MintedToken>>,
    /// Value detectors run on every result (`detect = [...]`).
    scrubber: Option<querygate_mask::Scrubber>,
    /// An engine in this process (the `local` source kind) that serves the REST calls
    /// instead of `endpoint`: called directly, with no socket an agent could reach.
    in_process: Option<axum::Router>,
    /// The `hash` strategy's key, sent upstream as the query parameter
    /// `@__querygate_mask_key` of masked queries and removed from every answer.
    mask_key: Option<Secret>,
}

/// What the source knows of a table from tables.get.
#[derive(Debug, Clone)]
struct TableMeta {
    partitioning: Partitioning,
    columns: Vec<Column>,
    /// The defining query of a view or materialized view.
    view: Option<View>,
}

impl BigQuerySource {
    pub fn new(
        name: String,
        project: String,
        endpoint: &str,
        auth: UpstreamAuth,
    ) -> Result<Self, SetupError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(300))
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("querygate/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(SetupError::Client)?;
        Ok(BigQuerySource {
            name,
            project,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            auth,
            http,
            estimates: Recent::default(),
            tables: Recent::default(),
            impersonate: Vec::new(),
            iam_endpoint: IAM_ENDPOINT.to_string(),
            minted: Mutex::new(HashMap::new()),
            scrubber: None,
            in_process: None,
            mask_key: None,
        })
    }

    /// A source whose upstream is an engine in this process (`local` sources): every call
    /// goes to `engine` directly, never over the network.
    pub fn in_process(
        name: String,
        project: String,
        engine: axum::Router,
    ) -> Result<Self, SetupError> {
        let mut source = BigQuerySource::new(
            name,
            project,
            "http://in-process.invalid",
            UpstreamAuth::None,
        )?;
        source.in_process = Some(engine);
        Ok(source)
    }

    /// The key of the `hash` masking strategy.
    pub fn with_mask_key(mut self, key: Option<Secret>) -> Self {
        self.mask_key = key;
        self
    }

    /// A query body (jobs.query, or a job's `configuration.query`) with the masking key
    /// added as a named parameter when its statement uses it. `Err` when it cannot be
    /// (no key, or the query uses positional parameters).
    fn add_mask_key(&self, query: &mut Value) -> Result<(), Denial> {
        let uses = query
            .get("query")
            .and_then(Value::as_str)
            .is_some_and(|q| q.contains(HASH_KEY_PARAM));
        if !uses {
            return Ok(());
        }
        let Some(key) = &self.mask_key else {
            return Err(Denial::new(
                DenialKind::Forbidden,
                "Access Denied: a masked column uses the hash strategy, and this gateway has \
                 no masking key",
            ));
        };
        let Value::Object(q) = query else {
            return Ok(());
        };
        if q.get("parameterMode").and_then(Value::as_str) == Some("POSITIONAL") {
            return Err(Denial::new(
                DenialKind::Invalid,
                "Invalid query: this query reads a column masked with the hash strategy, which \
                 querygate computes with a named query parameter; use named parameters \
                 (@name) instead of positional ones (?)",
            ));
        }
        q.insert("parameterMode".into(), Value::String("NAMED".into()));
        let params = q
            .entry("queryParameters")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(list) = params {
            list.retain(|p| p.get("name").and_then(Value::as_str) != Some(HASH_KEY_PARAM));
            list.push(serde_json::json!({
                "name": HASH_KEY_PARAM,
                "parameterType": {"type": "STRING"},
                "parameterValue": {"value": key.expose()},
            }));
        }
        Ok(())
    }

    /// A call's body with the masking key added where its query uses it.
    fn keyed_body(&self, call: &Call) -> Result<Option<Bytes>, Fault> {
        let Some(body) = &call.body else {
            return Ok(None);
        };
        let query_call = matches!(call.api, Api::JobsQuery | Api::JobsInsert);
        if !query_call || memchr::memmem::find(body, HASH_KEY_PARAM.as_bytes()).is_none() {
            return Ok(Some(body.clone()));
        }
        let mut v: Value = serde_json::from_slice(body)
            .map_err(|_| Fault::gateway("a masked query's body is not JSON"))?;
        let query = match call.api {
            Api::JobsQuery => Some(&mut v),
            _ => v.pointer_mut("/configuration/query"),
        };
        if let Some(q) = query {
            self.add_mask_key(q)
                .map_err(|d| Fault::gateway(d.message))?;
        }
        Ok(Some(Bytes::from(
            serde_json::to_vec(&v).unwrap_or_default(),
        )))
    }

    /// An answer with the masking key taken out: the parameter removed from every job
    /// resource, and the key's text replaced wherever else it appears.
    fn without_mask_key(&self, body: Bytes) -> Bytes {
        let Some(key) = &self.mask_key else {
            return body;
        };
        let has_param = memchr::memmem::find(&body, HASH_KEY_PARAM.as_bytes()).is_some();
        let has_key = memchr::memmem::find(&body, key.expose().as_bytes()).is_some();
        if !has_param && !has_key {
            return body;
        }
        if let Ok(mut v) = serde_json::from_slice::<Value>(&body) {
            strip_mask_key(&mut v);
            let text = serde_json::to_string(&v).unwrap_or_default();
            return Bytes::from(text.replace(key.expose(), "[querygate masking key]"));
        }
        let text = String::from_utf8_lossy(&body).replace(key.expose(), "[querygate masking key]");
        Bytes::from(text)
    }

    /// What tables.get says of a table (cached for [`TABLE_TTL`]).
    async fn table_meta(&self, table: &str) -> Result<TableMeta, Fault> {
        self.lookup_table(table).await?.ok_or_else(|| {
            Fault::gateway(format!(
                "Not found: Table {table} (querygate looked for its schema to mask it)"
            ))
        })
    }

    /// tables.get of a table (cached for [`TABLE_TTL`]); `None` when the upstream has no
    /// such table.
    async fn lookup_table(&self, table: &str) -> Result<Option<TableMeta>, Fault> {
        if let Some(m) = self.tables.get(table, TABLE_TTL) {
            return Ok(Some(m));
        }
        let parts: Vec<&str> = table.split('.').collect();
        let [project, dataset, name] = parts.as_slice() else {
            return Err(Fault::gateway(format!(
                "{table} is not project.dataset.table"
            )));
        };
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let path = format!(
            "/bigquery/v2/projects/{}/datasets/{}/tables/{}",
            enc(project),
            enc(dataset),
            enc(name)
        );
        let (mut status, mut body) = self.own_request(http::Method::GET, &path, None).await?;
        if status == http::StatusCode::NOT_FOUND {
            // The upstream's tables.get may compare names exactly while its queries resolve
            // them case-insensitively (the emulator; BigQuery's case-insensitive datasets):
            // the table a miscased name reads is the one whose name folds to the same.
            let Some(path) = self.path_in_other_case(project, dataset, name).await? else {
                return Ok(None);
            };
            (status, body) = self.own_request(http::Method::GET, &path, None).await?;
        }
        if !status.is_success() {
            return Err(Fault::upstream(format!(
                "tables.get {table} answered HTTP {}",
                status.as_u16()
            )));
        }
        let t: TableFacts = serde_json::from_slice(&body)
            .map_err(|_| Fault::upstream(format!("tables.get {table} is not BigQuery JSON")))?;
        let partitioning = match (t.time_partitioning, t.range_partitioning) {
            (Some(tp), _) => {
                Partitioning::Column(tp.field.unwrap_or_else(|| "_PARTITIONTIME".into()))
            }
            (None, Some(rp)) => rp
                .field
                .map_or(Partitioning::NotPartitioned, Partitioning::Column),
            (None, None) => Partitioning::NotPartitioned,
        };
        let columns = t
            .schema
            .fields
            .into_iter()
            .map(|f| Column {
                name: f.name,
                data_type: f.field_type.to_ascii_uppercase(),
                repeated: f.mode.as_deref() == Some("REPEATED"),
            })
            .collect();
        // A view's definition; a resource that says it is a view but shows no definition
        // (as the emulator answers) is a view whose definition is unknown (empty).
        let view = match (
            t.view.or(t.materialized_view),
            t.table_type.contains("VIEW"),
        ) {
            (Some(v), _) => Some(View {
                query: v.query,
                legacy_sql: v.use_legacy_sql.unwrap_or(false),
            }),
            (None, true) => Some(View {
                query: String::new(),
                legacy_sql: false,
            }),
            (None, false) => None,
        };
        let meta = TableMeta {
            partitioning,
            columns,
            view,
        };
        self.tables.put(table.to_string(), meta.clone());
        Ok(Some(meta))
    }

    /// The tables.get path of the one table whose dataset and name equal `dataset.name`
    /// but for case, looked up by listing (bounded); `None` when there is none. More than
    /// one such table is an error: which one a query reads cannot be told.
    async fn path_in_other_case(
        &self,
        project: &str,
        dataset: &str,
        name: &str,
    ) -> Result<Option<String>, Fault> {
        let enc = |s: &str| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        };
        let datasets = self
            .list_ids(
                &format!("/bigquery/v2/projects/{}/datasets", enc(project)),
                "datasets",
                "/datasetReference/datasetId",
                dataset,
            )
            .await?;
        let mut found = Vec::new();
        for d in datasets {
            let path = format!(
                "/bigquery/v2/projects/{}/datasets/{}/tables",
                enc(project),
                enc(&d)
            );
            for t in self
                .list_ids(&path, "tables", "/tableReference/tableId", name)
                .await?
            {
                found.push(format!("{path}/{}", enc(&t)));
            }
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(Fault::gateway(format!(
                "{project}.{dataset}.{name} could name several tables that differ only in \
                 case; name the table exactly as it is spelled"
            ))),
        }
    }

    /// The ids a list call (`datasets.list`, `tables.list`) returns that equal `wanted`
    /// ignoring case, following at most 20 pages.
    async fn list_ids(
        &self,
        path: &str,
        items: &str,
        id: &str,
        wanted: &str,
    ) -> Result<Vec<String>, Fault> {
        let wanted = wanted.to_lowercase();
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..20 {
            let page = match &token {
                Some(t) => format!(
                    "{path}?maxResults=1000&pageToken={}",
                    percent_encoding::utf8_percent_encode(t, percent_encoding::NON_ALPHANUMERIC)
                ),
                None => format!("{path}?maxResults=1000"),
            };
            let (status, body) = self.own_request(http::Method::GET, &page, None).await?;
            if status == http::StatusCode::NOT_FOUND {
                return Ok(out);
            }
            if !status.is_success() {
                return Err(Fault::upstream(format!(
                    "listing {path} answered HTTP {}",
                    status.as_u16()
                )));
            }
            let v: Value = serde_json::from_slice(&body)
                .map_err(|_| Fault::upstream(format!("listing {path} is not BigQuery JSON")))?;
            for item in v.get(items).and_then(Value::as_array).into_iter().flatten() {
                if let Some(name) = item.pointer(id).and_then(Value::as_str)
                    && name.to_lowercase() == wanted
                {
                    out.push(name.to_string());
                }
            }
            token = v
                .get("nextPageToken")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
                .map(str::to_string);
            if token.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Runs `scrubber` on every value this source's results return.
    pub fn with_scrubber(mut self, scrubber: Option<querygate_mask::Scrubber>) -> Self {
        self.scrubber = scrubber;
        self
    }

    /// Adds per-identity impersonation (checked in order; the first match wins).
    pub fn with_impersonation(mut self, rules: Vec<Impersonation>, iam_endpoint: &str) -> Self {
        self.impersonate = rules;
        self.iam_endpoint = iam_endpoint.trim_end_matches('/').to_string();
        self
    }

    /// The token for an identity's request: an impersonated service account's when a rule
    /// names the identity, else the gateway's own.
    async fn token_for(
        &self,
        identity: &querygate_core::Identity,
    ) -> Result<Option<String>, Fault> {
        let Some(rule) = self
            .impersonate
            .iter()
            .find(|r| r.who.iter().any(|p| p.matches(identity)))
        else {
            return self.token().await;
        };
        let sa = &rule.service_account;
        if let Some(t) = self
            .minted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(sa)
            .filter(|t| Instant::now() < t.renew_after)
        {
            return Ok(Some(t.token.clone()));
        }
        let own = self.token().await?.ok_or_else(|| {
            Fault::gateway(format!(
                "source {}: impersonation needs the gateway's own service account",
                self.name
            ))
        })?;
        let url = format!(
            "{}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
            self.iam_endpoint,
            percent_encoding::utf8_percent_encode(sa, SA_IN_PATH)
        );
        let failed = |why: &str| {
            Fault::upstream(format!(
                "querygate could not obtain a token for service account {sa} (source {}): {why}",
                self.name
            ))
        };
        let response = self
            .http
            .post(url)
            .bearer_auth(own)
            .json(&serde_json::json!({"scope": [SCOPE], "lifetime": "3600s"}))
            .send()
            .await
            .map_err(|_| failed("the IAM Credentials API is unreachable"))?;
        if !response.status().is_success() {
            return Err(failed(&format!(
                "the IAM Credentials API answered HTTP {}",
                response.status().as_u16()
            )));
        }
        let body: Value = response
            .json()
            .await
            .map_err(|_| failed("the IAM Credentials API answered something that is not JSON"))?;
        let token = body
            .get("accessToken")
            .and_then(Value::as_str)
            .ok_or_else(|| failed("the answer has no accessToken"))?
            .to_string();
        // Tokens live an hour; renew well before, whatever expireTime says.
        self.minted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                sa.clone(),
                MintedToken {
                    token: token.clone(),
                    renew_after: Instant::now() + Duration::from_secs(45 * 60),
                },
            );
        Ok(Some(token))
    }

    /// The project id clients use for this source.
    pub fn project(&self) -> &str {
        &self.project
    }

    async fn token(&self) -> Result<Option<String>, Fault> {
        match &self.auth {
            UpstreamAuth::None => Ok(None),
            UpstreamAuth::ServiceAccount(sa) => {
                let token = sa.token(&[SCOPE]).await.map_err(|e| {
                    // gcp_auth's errors describe the exchange, not the key; keep them short anyway.
                    let kind = e.to_string();
                    let kind = kind.lines().next().unwrap_or("token exchange failed");
                    Fault::upstream(format!(
                        "querygate could not obtain an access token for source {}: {kind}",
                        self.name
                    ))
                })?;
                Ok(Some(token.as_str().to_string()))
            }
        }
    }
}

impl BigQuerySource {
    /// Sends a request of the gateway's own (dry run, table metadata) upstream.
    async fn own_request(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), Fault> {
        let token = self.token().await?;
        self.send(
            method,
            &format!("{}{path}", self.endpoint),
            token,
            body.map(Bytes::from),
        )
        .await
    }

    /// One HTTP exchange with the upstream; faults say what went wrong, never with a secret.
    async fn send(
        &self,
        method: http::Method,
        url: &str,
        token: Option<String>,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), Fault> {
        if let Some(engine) = &self.in_process {
            return self.send_in_process(engine, method, url, body).await;
        }
        let mut req = self.http.request(method, url);
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req
                .header(header::CONTENT_TYPE, "application/json")
                .body(body);
        }
        let response = req.send().await.map_err(|e| {
            let why = if e.is_timeout() {
                "timed out"
            } else if e.is_connect() {
                "connection refused or unreachable"
            } else {
                "request failed"
            };
            Fault::upstream(format!(
                "querygate could not reach the BigQuery upstream of source {}: {why}",
                self.name
            ))
        })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|_| {
            Fault::upstream(format!(
                "the BigQuery upstream of source {} closed the connection mid-answer",
                self.name
            ))
        })?;
        Ok((status, body))
    }
}

impl BigQuerySource {
    /// One call to an in-process engine: the same request, handed to its router.
    async fn send_in_process(
        &self,
        engine: &axum::Router,
        method: http::Method,
        url: &str,
        body: Option<Bytes>,
    ) -> Result<(StatusCode, Bytes), Fault> {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let path = url.strip_prefix(&self.endpoint).unwrap_or(url);
        let failed = || {
            Fault::upstream(format!(
                "the local engine of source {} could not answer",
                self.name
            ))
        };
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.unwrap_or_default()))
            .map_err(|_| failed())?;
        let response = engine
            .clone()
            .oneshot(request)
            .await
            .map_err(|_| failed())?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(|_| failed())?
            .to_bytes();
        Ok((status, bytes))
    }
}

/// The dry-run job (jobs.insert with `dryRun`) equivalent to a query call, or `None` for
/// other calls. A job rather than a jobs.query dry run: both are BigQuery's, and emulators
/// honour `defaultDataset` in jobs only.
fn dry_run_body(call: &Call) -> Option<Value> {
    let body: Value = serde_json::from_slice(call.body.as_deref()?).ok()?;
    let (query, location) = match call.api {
        Api::JobsQuery => (body.clone(), body.get("location").cloned()),
        Api::JobsInsert => (
            body.pointer("/configuration/query")?.clone(),
            body.pointer("/jobReference/location").cloned(),
        ),
        _ => return None,
    };
    let mut dry = serde_json::Map::new();
    for key in [
        "query",
        "useLegacySql",
        "queryParameters",
        "parameterMode",
        "defaultDataset",
        "connectionProperties",
    ] {
        if let Some(v) = query.get(key) {
            dry.insert(key.to_string(), v.clone());
        }
    }
    let mut job = serde_json::json!({
        "configuration": {"query": Value::Object(dry), "dryRun": true},
    });
    if let Some(l) = location {
        job["jobReference"] = serde_json::json!({ "location": l });
    }
    Some(job)
}

impl Source for BigQuerySource {
    type Call = Call;
    type Reply = BigQueryReply;

    fn name(&self) -> &str {
        &self.name
    }

    fn default_project(&self) -> &str {
        &self.project
    }

    fn dialect(&self) -> SqlDialect {
        SqlDialect::BigQuery
    }

    fn call_for(&self, action: &Action, paging: &Paging) -> Result<Call, Denial> {
        neutral::call_for(&self.project, action, paging)
    }

    /// `p.d.t$20240101` (a partition) and `p.d.t@1700000000` (a snapshot) are reads of `p.d.t`.
    fn table_of(&self, name: &str) -> String {
        name.split(['$', '@']).next().unwrap_or(name).to_string()
    }

    async fn estimate(&self, call: &Call) -> Result<u64, Refusal> {
        let Some(body) = dry_run_body(call) else {
            return Err(Refusal::Failed(Fault::gateway(
                "this call carries no query to estimate",
            )));
        };
        let key = body.to_string();
        if let Some(bytes) = self.estimates.get(&key, ESTIMATE_TTL) {
            return Ok(bytes);
        }
        let mut keyed = body;
        if let Some(q) = keyed.pointer_mut("/configuration/query") {
            self.add_mask_key(q).map_err(Refusal::Denied)?;
        }
        let path = format!("/bigquery/v2/projects/{}/jobs", self.project);
        let (status, reply) = self
            .own_request(
                http::Method::POST,
                &path,
                Some(keyed.to_string().into_bytes()),
            )
            .await
            .map_err(Refusal::Failed)?;
        let reply = self.without_mask_key(reply);
        let facts: ResponseFacts = serde_json::from_slice(&reply).map_err(|_| {
            Refusal::Failed(Fault::upstream(format!(
                "the BigQuery upstream of source {} answered a dry run with something that is not BigQuery JSON",
                self.name
            )))
        })?;
        let error = facts.error.and_then(|e| e.message).or_else(|| {
            facts
                .errors
                .and_then(|e| e.into_iter().next())
                .and_then(|e| e.message)
        });
        if let Some(message) = error {
            // The upstream rejected the query itself: that is the client's to fix.
            if status.is_client_error() || status.is_success() {
                return Err(Refusal::Denied(Denial::new(DenialKind::Invalid, message)));
            }
            return Err(Refusal::Failed(Fault::upstream(format!(
                "the BigQuery upstream of source {} failed a dry run: HTTP {}",
                self.name,
                status.as_u16()
            ))));
        }
        let bytes = facts
            .total_bytes_processed
            .or(facts
                .statistics
                .and_then(|s| s.query)
                .and_then(|q| q.total_bytes_processed))
            .unwrap_or(0);
        self.estimates.put(key, bytes);
        Ok(bytes)
    }

    async fn partitioning(&self, table: &str) -> Result<Partitioning, Fault> {
        Ok(self.table_meta(table).await?.partitioning)
    }

    async fn columns(&self, table: &str) -> Result<Vec<Column>, Fault> {
        Ok(self.table_meta(table).await?.columns)
    }

    async fn view(&self, table: &str) -> Result<Option<View>, Fault> {
        Ok(self.lookup_table(table).await?.and_then(|m| m.view))
    }

    /// On-demand pricing: US$6.25 per TiB processed (US multi-region list price; capacity
    /// pricing differs, the bytes are exact).
    fn price(&self, bytes: u64) -> Option<f64> {
        const USD_PER_TIB: f64 = 6.25;
        Some(bytes as f64 / (1u64 << 40) as f64 * USD_PER_TIB)
    }

    fn mask_key(&self) -> Option<&Secret> {
        self.mask_key.as_ref()
    }

    fn rewrite(&self, call: &mut Call, statement: &str) -> Result<(), Denial> {
        let not_a_query = || {
            Denial::new(
                DenialKind::Forbidden,
                "Access Denied: this call cannot carry a masked query",
            )
        };
        let mut body: Value = call
            .body
            .as_deref()
            .and_then(|b| serde_json::from_slice(b).ok())
            .ok_or_else(not_a_query)?;
        let query = match call.api {
            Api::JobsQuery => Some(&mut body),
            Api::JobsInsert => body.pointer_mut("/configuration/query"),
            _ => None,
        };
        let Some(Value::Object(q)) = query else {
            return Err(not_a_query());
        };
        q.insert("query".into(), Value::String(statement.to_string()));
        // Checked now, so that a query that cannot take the key is refused before it
        // waits for an approval; the key itself is added only as the call leaves.
        let mut probe = Value::Object(q.clone());
        self.add_mask_key(&mut probe)?;
        call.body = Some(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()));
        Ok(())
    }

    fn scrubber(&self) -> Option<&querygate_mask::Scrubber> {
        self.scrubber.as_ref()
    }

    fn hold(&self, call: &Call, request_id: &str) -> Option<Held> {
        let body: Value = serde_json::from_slice(call.body.as_deref()?).ok()?;
        let project_path = match call.api {
            Api::JobsInsert => call.path.clone(),
            Api::JobsQuery => call.path.strip_suffix("/queries")?.to_string() + "/jobs",
            _ => return None,
        };
        let insert = match call.api {
            Api::JobsInsert => body,
            // jobs.query's fields, as the query job it stands for.
            _ => {
                let project = project_path
                    .strip_prefix("/bigquery/v2/projects/")?
                    .strip_suffix("/jobs")?;
                held_query_job(&body, project, request_id)
            }
        };
        let config = insert.pointer("/configuration/query")?;
        if insert
            .pointer("/configuration/dryRun")
            .and_then(Value::as_bool)
            == Some(true)
        {
            return None;
        }
        let job_id = insert
            .pointer("/jobReference/jobId")
            .and_then(Value::as_str)?
            .to_string();
        let location = insert
            .pointer("/jobReference/location")
            .and_then(Value::as_str)
            .map(str::to_string);
        let parameters = config
            .get("queryParameters")
            .filter(|p| p.as_array().is_some_and(|a| !a.is_empty()))
            .map(Value::to_string);
        let saved = serde_json::json!({ "path": project_path, "body": insert });
        Some(Held {
            job_id,
            location,
            call: saved.to_string(),
            parameters,
        })
    }

    fn resume(&self, saved: &str) -> Result<Resumed<Call>, Fault> {
        let v: Value = serde_json::from_str(saved)
            .map_err(|e| Fault::gateway(format!("a held job cannot be read back: {e}")))?;
        let path = v
            .get("path")
            .and_then(Value::as_str)
            .ok_or_else(|| Fault::gateway("a held job has no path"))?;
        let body = v
            .get("body")
            .ok_or_else(|| Fault::gateway("a held job has no body"))?;
        Ok(Resumed {
            call: Call {
                api: Api::JobsInsert,
                method: http::Method::POST,
                path: path.to_string(),
                query: None,
                body: Some(Bytes::from(body.to_string())),
                shows_result_table: false,
            },
            method: "jobs.insert".to_string(),
        })
    }

    fn limit_bytes(&self, call: &mut Call, bytes: u64) {
        let Some(Ok(mut body)) = call.body.as_deref().map(serde_json::from_slice::<Value>) else {
            return;
        };
        let target = match call.api {
            Api::JobsQuery => Some(&mut body),
            Api::JobsInsert => body.pointer_mut("/configuration/query"),
            _ => None,
        };
        let Some(Value::Object(q)) = target else {
            return;
        };
        let existing = q.get("maximumBytesBilled").and_then(|v| match v {
            Value::String(s) => s.parse::<u64>().ok(),
            Value::Number(n) => n.as_u64(),
            _ => None,
        });
        let cap = existing.map_or(bytes, |e| e.min(bytes));
        q.insert("maximumBytesBilled".into(), Value::String(cap.to_string()));
        call.body = Some(Bytes::from(serde_json::to_vec(&body).unwrap_or_default()));
    }

    fn statement(&self, call: &Call) -> Option<String> {
        let body: Value = serde_json::from_slice(call.body.as_deref()?).ok()?;
        let query = match call.api {
            Api::JobsQuery => &body,
            Api::JobsInsert => body.pointer("/configuration/query")?,
            _ => return None,
        };
        query.get("query")?.as_str().map(str::to_string)
    }

    fn parameters(&self, call: &Call) -> Option<String> {
        let body: Value = serde_json::from_slice(call.body.as_deref()?).ok()?;
        let query = match call.api {
            Api::JobsQuery => &body,
            Api::JobsInsert => body.pointer("/configuration/query")?,
            _ => return None,
        };
        query
            .get("queryParameters")
            .filter(|p| p.as_array().is_some_and(|a| !a.is_empty()))
            .map(Value::to_string)
    }

    async fn execute(&self, admitted: Admitted<Call>) -> Result<BigQueryReply, Fault> {
        let token = self.token_for(admitted.identity()).await?;
        let call = admitted.into_call();
        let mut url = format!("{}{}", self.endpoint, call.path);
        if let Some(q) = &call.query {
            url.push('?');
            url.push_str(q);
        }
        let body = self.keyed_body(&call)?;
        let (status, body) = self.send(call.method.clone(), &url, token, body).await?;
        let body = self.without_mask_key(body);
        let selected = selected_fields(&call);
        BigQueryReply::read(call.api, status, body)
            .map(|mut r| {
                r.selected_fields = selected;
                if !call.shows_result_table {
                    r.hide_anonymous_destinations();
                }
                r
            })
            .map_err(|why| {
                Fault::upstream(format!(
                    "the BigQuery upstream of source {} answered HTTP {} with {why}",
                    self.name,
                    status.as_u16()
                ))
            })
    }
}

/// An upstream answered with a body that is not BigQuery's JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a body that is not BigQuery JSON")]
pub struct NotBigQuery;

/// An upstream answer, with the facts the pipeline records.
#[derive(Debug)]
pub struct BigQueryReply {
    api: Api,
    status: StatusCode,
    body: Bytes,
    summary: Summary,
    /// tabledata.list's `selectedFields`: which columns its cells are, in order.
    selected_fields: Option<Vec<String>>,
}

impl BigQueryReply {
    /// Reads the facts of a reply; `Err` when the body is not BigQuery's JSON.
    pub fn read(api: Api, status: StatusCode, body: Bytes) -> Result<BigQueryReply, NotBigQuery> {
        let facts: ResponseFacts = serde_json::from_slice(&body).map_err(|_| NotBigQuery)?;
        let errors_in_200 =
            facts.errors.as_ref().is_some_and(|e| !e.is_empty()) && facts.rows.is_none();
        let mut reply = BigQueryReply {
            api,
            status,
            body,
            summary: Summary::default(),
            selected_fields: None,
        };
        reply.summary = reply.summarize(facts);
        if errors_in_200 {
            reply.normalize_query_errors();
        }
        Ok(reply)
    }

    /// Job resources lose the query's anonymous result table (`configuration.query.
    /// destinationTable` in a hidden `_…` dataset) before the client sees them. With it,
    /// the Python client reads results of `to_dataframe()`/`to_arrow()` (and `%%bigquery`,
    /// ibis, pandas-gbq) through the Storage Read API, which does not follow the client's
    /// endpoint: straight to Google with the agent's gateway key. Without it the client
    /// pages through getQueryResults, which the gateway serves. The gateway keeps the
    /// table in its summary (job ownership) all the same. Not for clients that read the
    /// table by name (`Call::shows_result_table`).
    pub(crate) fn hide_anonymous_destinations(&mut self) {
        let jobs = matches!(
            self.api,
            Api::JobsInsert | Api::JobsGet | Api::JobsCancel | Api::JobsList
        );
        if !jobs
            || !self.status.is_success()
            || memchr::memmem::find(&self.body, b"destinationTable").is_none()
        {
            return;
        }
        let Ok(mut v) = serde_json::from_slice::<Value>(&self.body) else {
            return;
        };
        let hide = |job: &mut Value| -> bool {
            let Some(Value::Object(q)) = job.pointer_mut("/configuration/query") else {
                return false;
            };
            let anonymous = q
                .get("destinationTable")
                .and_then(|t| t.get("datasetId"))
                .and_then(Value::as_str)
                .is_some_and(|d| d.starts_with('_'));
            anonymous && q.remove("destinationTable").is_some()
        };
        let changed = match self.api {
            Api::JobsList => v
                .get_mut("jobs")
                .and_then(Value::as_array_mut)
                .map(|jobs| jobs.iter_mut().fold(false, |c, j| hide(j) | c))
                .unwrap_or(false),
            Api::JobsCancel => v.get_mut("job").is_some_and(hide),
            _ => hide(&mut v),
        };
        if changed {
            self.body = Bytes::from(serde_json::to_vec(&v).unwrap_or_default());
        }
    }

    fn summarize(&self, f: ResponseFacts) -> Summary {
        let stats = f.statistics.unwrap_or_default();
        let qstats = stats.query.unwrap_or_default();
        let job_error = f.status.and_then(|s| s.error_result);
        let error = f
            .error
            .and_then(|e| e.message)
            .or_else(|| job_error.and_then(|e| e.message))
            .or_else(|| {
                f.errors
                    .as_ref()
                    .and_then(|v| v.first())
                    .and_then(|e| e.message.clone())
            });
        let schema = f.schema.or(qstats.schema).map(|s| s.get().to_string());
        Summary {
            status: self.status.as_u16(),
            accepted: self.status.is_success(),
            total_rows: f.total_rows,
            rows: f.rows.or(
                // A successful page with no `rows` field returned zero rows.
                matches!(
                    self.api,
                    Api::JobsQuery | Api::JobsGetQueryResults | Api::TabledataList
                )
                .then_some(0)
                .filter(|_| self.status.is_success()),
            ),
            bytes_processed: f
                .total_bytes_processed
                .or(qstats.total_bytes_processed)
                .or(stats.total_bytes_processed),
            bytes_billed: f.total_bytes_billed.or(qstats.total_bytes_billed),
            job_id: f.job_reference.and_then(|r| r.job_id),
            destination: f
                .configuration
                .and_then(|c| c.query)
                .and_then(|q| q.destination_table)
                .map(|t| t.dotted()),
            schema,
            error,
            sqlstate: None,
        }
    }

    /// jobs.query errors that arrive inside an HTTP 200 (as some emulators send them)
    /// are turned into the HTTP error real BigQuery returns, so clients raise instead of
    /// silently returning no rows.
    fn normalize_query_errors(&mut self) {
        if self.api != Api::JobsQuery || !self.status.is_success() {
            return;
        }
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(&self.body) else {
            return;
        };
        let Some(first) = obj
            .get("errors")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
        else {
            return;
        };
        if obj.get("rows").is_some() {
            return;
        }
        let reason = first
            .get("reason")
            .and_then(Value::as_str)
            .unwrap_or("invalidQuery");
        let message = first
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("query failed");
        let code = match reason {
            "accessDenied" => 403,
            "notFound" => 404,
            _ => 400,
        };
        self.status = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
        self.body = Bytes::from(
            serde_json::to_vec(&ErrorEnvelope::new(code, reason, message)).unwrap_or_default(),
        );
        self.summary.status = code;
        self.summary.rows = None;
    }

    /// Masks the cells of a tabledata.list page. Its cells are the table's columns in
    /// schema order, or the top-level columns `selectedFields` names in the order named.
    /// Fails (closed) when the rows do not have that shape.
    pub fn into_response(self) -> Response<Body> {
        let mut r = json_response(self.status, Vec::new());
        *r.body_mut() = Body::from(self.body);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=UTF-8"),
        );
        r
    }
}

impl Reply for BigQueryReply {
    fn summary(&self) -> Summary {
        self.summary.clone()
    }

    /// Job listings keep only the caller's own jobs.
    /// Job listings keep the caller's jobs; dataset and table listings lose the names the
    /// caller's rules hide. A job listing that cannot be read is replaced by an empty one.
    fn restrict(&mut self, scope: &Scope) {
        let jobs = self.api == Api::JobsList;
        let names = self.api == Api::Metadata && !scope.hidden.is_empty();
        if !(jobs || names) || !self.status.is_success() {
            return;
        }
        let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&self.body) else {
            self.body = Bytes::from_static(if jobs {
                br#"{"kind":"bigquery#jobList","jobs":[]}"#
            } else {
                br#"{}"#
            });
            return;
        };
        let (key, id) = if jobs {
            ("jobs", "/jobReference/jobId")
        } else if obj.contains_key("datasets") {
            ("datasets", "/datasetReference/datasetId")
        } else {
            ("tables", "/tableReference/tableId")
        };
        let keep = |item: &Value| {
            let name = item.pointer(id).and_then(Value::as_str);
            if jobs {
                name.is_some_and(|n| scope.owned_jobs.contains(n))
            } else {
                name.is_some_and(|n| !scope.hidden.contains(n))
            }
        };
        if let Some(Value::Array(items)) = obj.get_mut(key) {
            items.retain(keep);
            let n = items.len();
            if key == "tables" && obj.contains_key("totalItems") {
                obj.insert("totalItems".into(), Value::from(n));
            }
        }
        self.body = Bytes::from(serde_json::to_vec(&obj).unwrap_or_default());
    }

    /// The body as the client gets it (`into_response` sends these bytes).
    fn answer(&self) -> Answer {
        neutral::answer(self.api, self.status.as_u16(), &self.body)
    }

    fn body(&self) -> Bytes {
        self.body.clone()
    }

    /// Error envelopes (`error.message`, `error.errors[].message`), job errors
    /// (`status.errorResult`, `status.errors`) and errors in a 200 (`errors`) keep their
    /// reason and location; their text becomes the note.
    fn withhold_errors(&mut self, why: &str) -> bool {
        let Ok(mut doc) = serde_json::from_slice::<Value>(&self.body) else {
            return false;
        };
        let note = format!(
            "querygate withheld this error's text: {why}, and an error message could echo its \
             values; the reason and location are kept"
        );
        let mut changed = false;
        let mut rewrite = |e: &mut Value| {
            if let Some(m) = e.get_mut("message") {
                *m = Value::String(note.clone());
                changed = true;
            }
        };
        if let Some(error) = doc.get_mut("error") {
            rewrite(error);
            if let Some(Value::Array(errors)) = error.get_mut("errors") {
                errors.iter_mut().for_each(&mut rewrite);
            }
        }
        if let Some(status) = doc.get_mut("status") {
            if let Some(e) = status.get_mut("errorResult") {
                rewrite(e);
            }
            if let Some(Value::Array(errors)) = status.get_mut("errors") {
                errors.iter_mut().for_each(&mut rewrite);
            }
        }
        if let Some(Value::Array(errors)) = doc.get_mut("errors") {
            errors.iter_mut().for_each(&mut rewrite);
        }
        if changed {
            self.body = Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
            if self.summary.error.is_some() {
                self.summary.error = Some(note);
            }
        }
        changed
    }

    /// Result pages (jobs.query, getQueryResults, tabledata.list): every string cell,
    /// nested records and arrays included, through the scrubber. A page that cannot be
    /// read is replaced by an error (fail closed: it would leave unscanned values).
    fn rows(&self) -> Option<Result<Rows, Fault>> {
        let pages = matches!(
            self.api,
            Api::JobsQuery | Api::JobsGetQueryResults | Api::TabledataList
        );
        if !pages || !self.status.is_success() {
            return None;
        }
        let unreadable = || {
            Fault::upstream(
                "querygate could not read this result to check its values, so it was withheld",
            )
        };
        let Ok(page) = serde_json::from_slice::<Value>(&self.body) else {
            return Some(Err(unreadable()));
        };
        let columns = self
            .selected_fields
            .clone()
            .filter(|_| self.api == Api::TabledataList);
        let mut rows = Vec::new();
        if let Some(Value::Array(list)) = page.get("rows") {
            for row in list {
                let Some(Value::Array(cells)) = row.get("f") else {
                    return Some(Err(unreadable()));
                };
                rows.push(
                    cells
                        .iter()
                        .map(|c| neutral_cell(c.get("v").unwrap_or(&Value::Null)))
                        .collect(),
                );
            }
        }
        Some(Ok(Rows { columns, rows }))
    }

    fn put_rows(&mut self, rows: Rows) {
        let Ok(mut page) = serde_json::from_slice::<Value>(&self.body) else {
            return;
        };
        if let Some(Value::Array(list)) = page.get_mut("rows") {
            for (row, values) in list.iter_mut().zip(rows.rows) {
                if let Some(Value::Array(cells)) = row.get_mut("f") {
                    for (cell, value) in cells.iter_mut().zip(values) {
                        if let Some(v) = cell.get_mut("v") {
                            *v = wire_cell(value, v);
                        }
                    }
                }
            }
        }
        self.body = Bytes::from(serde_json::to_vec(&page).unwrap_or_default());
    }
}

/// A cell's value (`v`) as a neutral value: arrays of `{"v": …}` become arrays of values,
/// records (`{"f": [{"v": …}, …]}`) arrays of their fields' values.
fn neutral_cell(v: &Value) -> Value {
    match v {
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|i| neutral_cell(i.get("v").unwrap_or(&Value::Null)))
                .collect(),
        ),
        Value::Object(record) => match record.get("f") {
            Some(Value::Array(fields)) => Value::Array(
                fields
                    .iter()
                    .map(|f| neutral_cell(f.get("v").unwrap_or(&Value::Null)))
                    .collect(),
            ),
            _ => v.clone(),
        },
        other => other.clone(),
    }
}

/// A neutral value back in the shape of the cell value `was` it came from (a value masked
/// to a scalar or null takes its place whole).
fn wire_cell(value: Value, was: &Value) -> Value {
    match (value, was) {
        (Value::Array(items), Value::Array(old)) if items.len() == old.len() => Value::Array(
            items
                .into_iter()
                .zip(old)
                .map(|(n, o)| {
                    serde_json::json!({ "v": wire_cell(n, o.get("v").unwrap_or(&Value::Null)) })
                })
                .collect(),
        ),
        (Value::Array(items), Value::Object(record)) => match record.get("f") {
            Some(Value::Array(old)) if items.len() == old.len() => serde_json::json!({
                "f": items
                    .into_iter()
                    .zip(old)
                    .map(|(n, o)| serde_json::json!({ "v": wire_cell(n, o.get("v").unwrap_or(&Value::Null)) }))
                    .collect::<Vec<_>>()
            }),
            _ => Value::Null,
        },
        (value, _) => value,
    }
}

/// tabledata.list's `selectedFields` (comma-separated), if the call names them: the
/// value decode read and forwarded, so the masks follow the columns the upstream returns.
fn selected_fields(call: &Call) -> Option<Vec<String>> {
    if call.api != Api::TabledataList {
        return None;
    }
    let fields = call.param("selectedFields")?;
    Some(
        fields
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
    )
}

/// Removes the masking key's query parameter from every `queryParameters` list in `v`
/// (job resources of jobs.insert, jobs.get, jobs.list, jobs.cancel).
fn strip_mask_key(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(params)) = map.get_mut("queryParameters") {
                params.retain(|p| p.get("name").and_then(Value::as_str) != Some(HASH_KEY_PARAM));
            }
            map.values_mut().for_each(strip_mask_key);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_mask_key),
        _ => {}
    }
}

/// The query job a held jobs.query request runs as once approved: the same query,
/// parameters and settings, under a job id the client polls (`jobReference`).
fn held_query_job(query: &Value, project: &str, request_id: &str) -> Value {
    const QUERY_FIELDS: &[&str] = &[
        "query",
        "useLegacySql",
        "parameterMode",
        "queryParameters",
        "defaultDataset",
        "maximumBytesBilled",
        "useQueryCache",
        "connectionProperties",
        "createSession",
    ];
    let mut q = serde_json::Map::new();
    for field in QUERY_FIELDS {
        if let Some(v) = query.get(*field) {
            q.insert((*field).to_string(), v.clone());
        }
    }
    let hex: String = request_id.chars().filter(char::is_ascii_hexdigit).collect();
    let mut reference =
        serde_json::json!({ "projectId": project, "jobId": format!("qg_held_{hex}") });
    if let Some(location) = query.get("location") {
        reference["location"] = location.clone();
    }
    let mut job = serde_json::json!({
        "jobReference": reference,
        "configuration": { "query": q },
    });
    if let Some(labels) = query.get("labels") {
        job["configuration"]["labels"] = labels.clone();
    }
    job
}

#[cfg(test)]
mod scrub_tests {
    use super::*;
    use querygate_mask::{DetectorKind, Scrubber, Strategy};

    #[test]
    fn table_read_cells_are_masked_through_neutral_rows_and_keep_their_wire_shape() {
        use querygate_pipeline::ColumnMask;
        let body = serde_json::json!({
            "kind": "bigquery#tableDataList", "totalRows": "1",
            "rows": [{"f": [{"v": "ana@example.com"}, {"v": "7"},
                            {"v": [{"v": "555-1"}, {"v": "555-2"}]},
                            {"v": {"f": [{"v": "Main St"}]}}]}]
        });
        let mut reply = BigQueryReply::read(
            Api::TabledataList,
            StatusCode::OK,
            Bytes::from(body.to_string()),
        )
        .expect("reply");
        // selectedFields=email,id,phones,address — in that order.
        reply.selected_fields = Some(vec![
            "email".into(),
            "id".into(),
            "phones".into(),
            "address".into(),
        ]);
        let column = |name: &str, t: &str, repeated: bool| Column {
            name: name.into(),
            data_type: t.into(),
            repeated,
        };
        let masks = [
            ColumnMask {
                column: column("id", "INTEGER", false),
                strategy: None,
            },
            ColumnMask {
                column: column("email", "STRING", false),
                strategy: Some(Strategy::EmailDomain),
            },
            ColumnMask {
                column: column("phones", "STRING", true),
                strategy: Some(Strategy::Redact),
            },
            ColumnMask {
                column: column("address", "RECORD", false),
                strategy: Some(Strategy::Null),
            },
        ];
        assert_eq!(reply.mask_rows(&masks, b"").expect("masked"), 4);
        let page: Value = serde_json::from_slice(&reply.body()).expect("json");
        let cells = &page["rows"][0]["f"];
        assert_eq!(cells[0]["v"], "***@example.com");
        assert_eq!(
            cells[1]["v"], "7",
            "unmasked cells are as the upstream sent them"
        );
        assert!(
            cells[2]["v"]
                .as_array()
                .is_some_and(|a| a.len() == 2 && a[0].get("v").is_some())
        );
        assert!(!cells[2].to_string().contains("555"));
        assert_eq!(cells[3]["v"], Value::Null);
        assert_eq!(page["totalRows"], "1");
    }

    #[test]
    fn every_string_cell_of_a_result_page_is_scrubbed_nested_ones_too() {
        let body = serde_json::json!({
            "kind": "bigquery#queryResponse",
            "jobComplete": true,
            "totalRows": "2",
            "rows": [
                {"f": [{"v": "1"}, {"v": "ana@example.com"}, {"v": null}]},
                {"f": [{"v": "2"}, {"v": [{"v": "write to bo@corp.example"}, {"v": "none"}]},
                       {"v": {"f": [{"v": "cy@example.org"}]}}]}
            ]
        });
        let mut reply = BigQueryReply::read(
            Api::JobsQuery,
            StatusCode::OK,
            Bytes::from(body.to_string()),
        )
        .expect("reply");
        let scrubber = Scrubber::new(&[DetectorKind::Email], Strategy::EmailDomain, vec![]);
        assert_eq!(reply.scrub(&scrubber).expect("a readable page"), 3);
        let text = String::from_utf8_lossy(&reply.body()).to_string();
        assert!(
            !text.contains("ana@") && !text.contains("bo@") && !text.contains("cy@"),
            "{text}"
        );
        assert!(text.contains("***@example.com") && text.contains("write to ***@corp.example"));
        // An error that echoes a value keeps its kind, not its text.
        let mut failed = BigQueryReply::read(
            Api::JobsGet,
            StatusCode::OK,
            Bytes::from(
                serde_json::json!({"status": {"state": "DONE",
                    "errorResult": {"reason": "invalidQuery", "location": "query",
                        "message": "Bad int64 value: ana@example.com"},
                    "errors": [{"reason": "invalidQuery", "message": "Bad int64 value: ana@example.com"}]}})
                .to_string(),
            ),
        )
        .expect("reply");
        assert!(failed.withhold_errors("the query filters on p.crm.customers.email"));
        let text = String::from_utf8_lossy(&failed.body()).to_string();
        assert!(
            !text.contains("ana@") && text.contains("invalidQuery") && text.contains("withheld"),
            "{text}"
        );
        // Metadata replies are left alone.
        let mut table = BigQueryReply::read(
            Api::Metadata,
            StatusCode::OK,
            Bytes::from(r#"{"description":"owner ana@example.com"}"#),
        )
        .expect("reply");
        assert_eq!(table.scrub(&scrubber).expect("nothing to read"), 0);
    }
}
