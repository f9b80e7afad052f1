//! The embedded DuckDB engine: configured files as views, queries run as jobs whose results are
//! kept in DuckDB tables and read page by page, dry runs estimated from file statistics.
//!
//! One in-memory database per source. Each configured table is a view in a schema named after
//! its dataset (`"shop"."orders"` over `read_csv([...])`); query results are tables in the
//! `_results` schema, dropped when their job is evicted (the newest [`MAX_JOBS`] are kept); the
//! INFORMATION_SCHEMA views' rows (the configured tables, their columns and datasets) are
//! tables in [`META_SCHEMA`], written at start.
//! Extension auto-install and auto-load are off (json and parquet are compiled in), and once the
//! views exist the engine is locked to the configured files (`enable_external_access = false`,
//! `allowed_paths`, `lock_configuration`). Calls block: run them on a blocking thread.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use duckdb::Connection;
use duckdb::types::Value;
use serde_json::Value as Json;

use crate::error::EngineError;
use crate::translate::{self, Context, META_SCHEMA, Translated, quote};
use crate::values::{self, Field, Format};

/// How many finished jobs (and their result tables) are kept.
pub const MAX_JOBS: usize = 500;
/// A page stops growing past this many bytes of JSON (BigQuery's own cap is ~10 MB).
pub const PAGE_BYTES: usize = 8 * 1024 * 1024;
/// Rows per page when the client sets no `maxResults`.
pub const DEFAULT_PAGE_ROWS: u64 = 100_000;
/// The location every job and dataset reports.
pub const LOCATION: &str = "US";
const RESULTS_SCHEMA: &str = "_results";
/// DuckDB's buffer pool: kept result tables and large sorts past it spill to a temp directory,
/// so the gateway's memory stays bounded however many and however large the results are.
pub const MEMORY_LIMIT: &str = "128MB";

/// One configured table: `dataset.table` over a file or glob.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub dataset: String,
    pub table: String,
    /// An absolute path, possibly with glob characters (`data/orders/*.csv`).
    pub pattern: PathBuf,
}

/// What the engine knows of a configured table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    pub fields: Vec<Field>,
    pub num_rows: u64,
    pub num_bytes: u64,
    /// Bytes per top-level column (lower case), from Parquet metadata or an even split.
    pub column_bytes: HashMap<String, u64>,
    pub files: Vec<PathBuf>,
    pub format: &'static str,
    /// A DATE column named in a hive path (`day=2024-01-01/`) or called `*_date`: reported as
    /// the table's time partitioning.
    pub partition_field: Option<String>,
    /// The oldest of its files' modification times (ms since the epoch): its `creationTime`.
    pub created_ms: Option<u64>,
    /// The newest of its files' modification times: its `lastModifiedTime`.
    pub modified_ms: Option<u64>,
}

/// A finished job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: String,
    pub query: String,
    pub created_ms: u64,
    pub ended_ms: u64,
    pub bytes_processed: u64,
    pub dry_run: bool,
    pub outcome: Result<ResultSet, EngineError>,
}

/// A query result, kept as a DuckDB table.
#[derive(Debug, Clone)]
pub struct ResultSet {
    /// The table's name in `_results`.
    pub table: String,
    pub fields: Vec<Field>,
    pub total_rows: u64,
}

/// A page of rows, already serialized: built row by row into one buffer so that paging a large
/// result holds one page of JSON text at a time, not a tree of values.
#[derive(Debug)]
pub struct Page {
    /// The rows as a JSON array (`[{"f": [...]}, ...]`).
    pub rows: Vec<u8>,
    pub count: u64,
    /// Where the next page starts, when there is one.
    pub next: Option<u64>,
}

/// A query as the client sent it.
#[derive(Debug, Clone, Default)]
pub struct QueryRequest {
    pub sql: String,
    pub default_dataset: Option<String>,
    pub parameters: Option<Json>,
    pub job_id: Option<String>,
    pub dry_run: bool,
    /// `maximumBytesBilled`: refuse to run above it (BigQuery's `bytesBilledLimitExceeded`).
    pub maximum_bytes_billed: Option<u64>,
}

/// Why the engine could not open its tables (a file, a format, a pattern, DuckDB itself).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OpenError(pub String);

/// The engine of one `local` source.
pub struct Engine {
    project: String,
    base: Mutex<Connection>,
    catalog: BTreeMap<(String, String), TableInfo>,
    names: BTreeSet<(String, String)>,
    jobs: Mutex<Jobs>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("project", &self.project)
            .field("tables", &self.names)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Jobs {
    by_id: HashMap<String, Job>,
    /// Kept jobs, oldest first, each with the number it was kept under.
    order: VecDeque<(u64, String)>,
    kept: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn engine_error(e: duckdb::Error) -> EngineError {
    EngineError::invalid(clean_duckdb_message(&e.to_string()))
}

/// DuckDB's messages name its own internals (`"shop"."orders"`, `_results`): keep them short.
fn clean_duckdb_message(m: &str) -> String {
    let first = m.lines().next().unwrap_or(m).trim();
    first.to_string()
}

impl Engine {
    /// Opens the engine over `tables`; fails with a message naming the table and file.
    pub fn open(project: &str, tables: &[TableSpec]) -> Result<Engine, OpenError> {
        Self::start(project, tables).map_err(OpenError)
    }

    fn start(project: &str, tables: &[TableSpec]) -> Result<Engine, String> {
        let config = duckdb::Config::default()
            .enable_autoload_extension(false)
            .and_then(|c| c.with("autoinstall_known_extensions", "false"))
            .and_then(|c| c.with("memory_limit", MEMORY_LIMIT))
            // Results past the memory limit spill here, not into the working directory.
            .and_then(|c| {
                c.with(
                    "temp_directory",
                    std::env::temp_dir()
                        .join(format!("querygate-local-{}", std::process::id()))
                        .to_string_lossy(),
                )
            })
            .map_err(|e| format!("cannot configure DuckDB: {e}"))?;
        let conn = Connection::open_in_memory_with_flags(config)
            .map_err(|e| format!("cannot open DuckDB: {e}"))?;
        conn.execute_batch(&format!("CREATE SCHEMA {RESULTS_SCHEMA}"))
            .map_err(|e| format!("cannot prepare DuckDB: {e}"))?;
        let mut catalog = BTreeMap::new();
        let mut allowed: Vec<PathBuf> = Vec::new();
        let mut schemas = BTreeSet::new();
        for spec in tables {
            if [RESULTS_SCHEMA, META_SCHEMA].contains(&spec.dataset.as_str()) {
                return Err(format!(
                    "table {}.{}: the dataset name {} is reserved by the local engine",
                    spec.dataset, spec.table, spec.dataset
                ));
            }
            let info = register(&conn, spec, &mut schemas)
                .map_err(|e| format!("table {}.{}: {e}", spec.dataset, spec.table))?;
            allowed.extend(info.files.iter().cloned());
            catalog.insert((spec.dataset.clone(), spec.table.clone()), info);
        }
        information_schema(&conn, project, &catalog)
            .map_err(|e| format!("cannot prepare INFORMATION_SCHEMA: {e}"))?;
        lock_down(&conn, &allowed)?;
        let names = catalog.keys().cloned().collect();
        Ok(Engine {
            project: project.to_string(),
            base: Mutex::new(conn),
            catalog,
            names,
            jobs: Mutex::new(Jobs::default()),
        })
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn tables(&self) -> &BTreeMap<(String, String), TableInfo> {
        &self.catalog
    }

    pub fn datasets(&self) -> BTreeSet<&str> {
        self.catalog.keys().map(|(d, _)| d.as_str()).collect()
    }

    /// A connection of its own for one call (DuckDB connections are not shared across threads).
    fn connection(&self) -> Result<Connection, EngineError> {
        self.base
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_clone()
            .map_err(|e| EngineError::internal(format!("DuckDB: {e}")))
    }

    /// Translates a query against this source's tables.
    pub fn translate(&self, req: &QueryRequest) -> Result<Translated, EngineError> {
        translate::translate(
            &req.sql,
            &Context {
                project: &self.project,
                tables: &self.names,
                default_dataset: req.default_dataset.as_deref(),
                parameters: req.parameters.as_ref(),
            },
        )
    }

    /// Bytes a translated query reads, as BigQuery bills them: for each table, the columns it
    /// reads, each counted once however often the table is scanned.
    ///
    /// The columns come from DuckDB's own plan (`EXPLAIN`), after its projection pushdown, so a
    /// column that a derived table names but nothing above it uses (the masking rewrite names
    /// every column of a masked table) is not counted. Where the plan cannot be read, every
    /// identifier the query names counts ([`Engine::estimate_from_names`]).
    pub fn estimate(&self, t: &Translated) -> u64 {
        self.estimate_from_plan(t)
            .unwrap_or_else(|| self.estimate_from_names(t))
    }

    fn estimate_from_plan(&self, t: &Translated) -> Option<u64> {
        let conn = self.connection().ok()?;
        let plan: String = conn
            .query_row(&format!("EXPLAIN (FORMAT json) {}", t.sql), [], |r| {
                r.get(1)
            })
            .ok()?;
        let plan: Json = serde_json::from_str(&plan).ok()?;
        let mut scans = Vec::new();
        // A table function this does not know (a reader DuckDB renamed, say) could read any
        // file: count by name instead rather than count it as nothing.
        collect_scans(&plan, &mut scans).then_some(())?;
        let mut read: BTreeMap<&(String, String), BTreeSet<String>> = BTreeMap::new();
        for scan in scans {
            // The scan belongs to a table of its reader's format that has every column it reads;
            // when several do, the costliest one counts, so the estimate never undercounts.
            let owner = t
                .tables
                .iter()
                .filter_map(|k| self.catalog.get_key_value(k))
                .filter(|(_, info)| info.format == scan.format)
                .filter(|(_, info)| {
                    scan.projected
                        .iter()
                        .all(|c| info.column_bytes.contains_key(c))
                })
                .max_by_key(|(_, info)| column_sum(info, scan.columns()));
            let (key, info) = owner?;
            let filtered = scan
                .filtered
                .iter()
                .filter(|c| info.column_bytes.contains_key(*c));
            read.entry(key)
                .or_default()
                .extend(scan.projected.iter().chain(filtered).cloned());
        }
        Some(
            read.iter()
                .filter_map(|(k, cols)| Some(column_sum(self.catalog.get(*k)?, cols.iter())))
                .sum(),
        )
    }

    /// Bytes by name alone: the named columns' share of each referenced table's files, or
    /// the whole table when the query selects `*`.
    fn estimate_from_names(&self, t: &Translated) -> u64 {
        t.tables
            .iter()
            .filter_map(|k| self.catalog.get(k))
            .map(|info| {
                if t.wildcard {
                    info.num_bytes
                } else {
                    column_sum(info, t.identifiers.iter())
                }
            })
            .sum()
    }

    /// The schema a query would return, without reading rows (dry runs).
    pub fn schema_of(&self, sql: &str) -> Result<Vec<Field>, EngineError> {
        let conn = self.connection()?;
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM ({sql}) LIMIT 0"))
            .map_err(engine_error)?;
        stmt.execute([]).map_err(engine_error)?;
        Ok(stmt
            .schema()
            .fields()
            .iter()
            .map(|f| Field::from_arrow(f))
            .collect())
    }

    /// Runs (or dry-runs) a query as a job and keeps it; the job records failure too.
    pub fn run(&self, req: &QueryRequest) -> Job {
        let id = req
            .job_id
            .clone()
            .unwrap_or_else(|| format!("job_{}", uuid::Uuid::new_v4().simple()));
        let created_ms = now_ms();
        let mut bytes = 0;
        let outcome = self.translate(req).and_then(|t| {
            bytes = self.estimate(&t);
            if let Some(cap) = req.maximum_bytes_billed
                && bytes > cap
                && !req.dry_run
            {
                return Err(EngineError::invalid(format!(
                    "Query exceeded limit for bytes billed: {cap}. {bytes} or higher required."
                )));
            }
            if req.dry_run {
                let fields = self.schema_of(&t.sql)?;
                return Ok(ResultSet {
                    table: String::new(),
                    fields,
                    total_rows: 0,
                });
            }
            self.materialize(&id, &t.sql)
        });
        let job = Job {
            id: id.clone(),
            query: req.sql.clone(),
            created_ms,
            ended_ms: now_ms(),
            bytes_processed: bytes,
            dry_run: req.dry_run,
            outcome,
        };
        if !req.dry_run {
            self.keep(job.clone());
        }
        job
    }

    fn materialize(&self, id: &str, sql: &str) -> Result<ResultSet, EngineError> {
        let table = format!("r_{}", uuid::Uuid::new_v4().simple());
        let conn = self.connection()?;
        conn.execute_batch(&format!(
            "CREATE TABLE {RESULTS_SCHEMA}.\"{table}\" AS {sql}"
        ))
        .map_err(engine_error)?;
        // A column of DuckDB's NULL type (`SELECT NULL`, folded constants) has no Arrow reader
        // in the duckdb crate: give it a type.
        let untyped: Vec<String> = {
            let mut stmt = conn
                .prepare(&format!(
                    "SELECT * FROM {RESULTS_SCHEMA}.\"{table}\" LIMIT 0"
                ))
                .map_err(engine_error)?;
            stmt.execute([]).map_err(engine_error)?;
            stmt.schema()
                .fields()
                .iter()
                .filter(|f| f.data_type() == &duckdb::arrow::datatypes::DataType::Null)
                .map(|f| f.name().clone())
                .collect()
        };
        for column in untyped {
            conn.execute_batch(&format!(
                "ALTER TABLE {RESULTS_SCHEMA}.\"{table}\" ALTER COLUMN {} SET DATA TYPE VARCHAR",
                ident(&column)
            ))
            .map_err(engine_error)?;
        }
        let total_rows: i64 = conn
            .query_row(
                &format!("SELECT count(*) FROM {RESULTS_SCHEMA}.\"{table}\""),
                [],
                |r| r.get(0),
            )
            .map_err(engine_error)?;
        let fields = self.schema_of(&format!("SELECT * FROM {RESULTS_SCHEMA}.\"{table}\""))?;
        tracing::debug!(job = id, rows = total_rows, "local query done");
        Ok(ResultSet {
            table,
            fields,
            total_rows: total_rows.max(0) as u64,
        })
    }

    fn keep(&self, job: Job) {
        let evicted = {
            let mut jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
            let mut evicted = Vec::new();
            if let Some(old) = jobs.by_id.insert(job.id.clone(), job.clone()) {
                jobs.order.retain(|(_, id)| id != &old.id);
                evicted.push(old);
            }
            jobs.kept += 1;
            let seq = jobs.kept;
            jobs.order.push_back((seq, job.id));
            while jobs.order.len() > MAX_JOBS {
                if let Some((_, id)) = jobs.order.pop_front()
                    && let Some(j) = jobs.by_id.remove(&id)
                {
                    evicted.push(j);
                }
            }
            evicted
        };
        if evicted.is_empty() {
            return;
        }
        if let Ok(conn) = self.connection() {
            for j in evicted {
                if let Ok(r) = j.outcome {
                    let _ = conn.execute_batch(&format!(
                        "DROP TABLE IF EXISTS {RESULTS_SCHEMA}.\"{}\"",
                        r.table
                    ));
                }
            }
        }
    }

    pub fn job(&self, id: &str) -> Option<Job> {
        self.jobs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .by_id
            .get(id)
            .cloned()
    }

    /// Every kept job, newest first.
    pub fn jobs(&self) -> Vec<Job> {
        self.jobs_from(None).into_iter().map(|(_, j)| j).collect()
    }

    /// Kept jobs newest first, each with the number it was kept under, from number `from` down
    /// (all when `None`). jobs.list's page tokens are these numbers, so a page does not shift
    /// when newer jobs arrive.
    pub fn jobs_from(&self, from: Option<u64>) -> Vec<(u64, Job)> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.order
            .iter()
            .rev()
            .filter(|(seq, _)| from.is_none_or(|f| *seq <= f))
            .filter_map(|(seq, id)| Some((*seq, jobs.by_id.get(id)?.clone())))
            .collect()
    }

    /// The job whose result is the `_results` table `table`.
    pub fn job_of_result(&self, table: &str) -> Option<Job> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.by_id
            .values()
            .find(|j| j.outcome.as_ref().is_ok_and(|r| r.table == table))
            .cloned()
    }

    /// The result table of a job, by the name its `destinationTable` gives.
    pub fn result_by_table(&self, table: &str) -> Option<ResultSet> {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        jobs.by_id
            .values()
            .filter_map(|j| j.outcome.as_ref().ok())
            .find(|r| r.table == table)
            .cloned()
    }

    /// Rows `[start, start + max)` of a job's result, cut at [`PAGE_BYTES`]; only the
    /// `columns` (indexes into its fields, from [`select_columns`]) when given.
    pub fn result_page(
        &self,
        result: &ResultSet,
        start: u64,
        max: Option<u64>,
        format: Format,
        columns: Option<&[usize]>,
    ) -> Result<Page, EngineError> {
        let n = max.unwrap_or(DEFAULT_PAGE_ROWS).min(DEFAULT_PAGE_ROWS);
        let (list, fields) = projection(&result.fields, columns);
        let sql = format!(
            "SELECT {list} FROM {RESULTS_SCHEMA}.\"{}\" WHERE rowid >= {start} AND rowid < {} ORDER BY rowid",
            result.table,
            start.saturating_add(n)
        );
        self.page(&sql, &fields, start, result.total_rows, format)
    }

    /// Rows `[start, start + max)` of a configured table (tabledata.list); only the `columns`
    /// when given.
    pub fn table_page(
        &self,
        dataset: &str,
        table: &str,
        start: u64,
        max: Option<u64>,
        format: Format,
        columns: Option<&[usize]>,
    ) -> Result<Page, EngineError> {
        let info = self
            .catalog
            .get(&(dataset.to_string(), table.to_string()))
            .ok_or_else(|| not_found_table(&self.project, dataset, table))?;
        let n = max.unwrap_or(DEFAULT_PAGE_ROWS).min(DEFAULT_PAGE_ROWS);
        let (list, fields) = projection(&info.fields, columns);
        let sql = format!(
            "SELECT {list} FROM {}.{} LIMIT {n} OFFSET {start}",
            ident(dataset),
            ident(table)
        );
        self.page(&sql, &fields, start, info.num_rows, format)
    }

    fn page(
        &self,
        sql: &str,
        fields: &[Field],
        start: u64,
        total: u64,
        format: Format,
    ) -> Result<Page, EngineError> {
        let conn = self.connection()?;
        let mut stmt = conn.prepare(sql).map_err(engine_error)?;
        let mut rows = stmt.query([]).map_err(engine_error)?;
        let mut out = Vec::with_capacity(64 * 1024);
        out.push(b'[');
        let mut count = 0u64;
        let width = fields.len();
        while let Some(r) = rows.next().map_err(engine_error)? {
            let mut values = Vec::with_capacity(width);
            for i in 0..width {
                // The duckdb crate panics on Arrow types it cannot read (nested NULL types):
                // that is this one query's failure, not the gateway's.
                let value =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.get::<_, Value>(i)))
                        .map_err(|_| {
                            EngineError::invalid(format!(
                                "querygate's local engine cannot return the type of column {}",
                                fields.get(i).map_or("?", |f| f.name.as_str())
                            ))
                        })?;
                values.push(value.map_err(engine_error)?);
            }
            if count > 0 {
                out.push(b',');
            }
            serde_json::to_writer(&mut out, &values::row(values, fields, format))
                .map_err(|e| EngineError::internal(format!("cannot write a row: {e}")))?;
            count += 1;
            if out.len() >= PAGE_BYTES {
                break;
            }
        }
        out.push(b']');
        let end = start + count;
        Ok(Page {
            rows: out,
            count,
            next: (end < total).then_some(end),
        })
    }
}

/// One file scan in a DuckDB plan: its reader's format, the columns it returns, and the words
/// of its pushed-down filters (columns among them), lower case.
struct Scan {
    format: &'static str,
    projected: BTreeSet<String>,
    filtered: BTreeSet<String>,
}

impl Scan {
    fn columns(&self) -> impl Iterator<Item = &String> {
        self.projected.iter().chain(&self.filtered)
    }
}

/// The file scans of an `EXPLAIN (FORMAT json)` plan; `false` when the plan holds a table
/// function that is not one of the file readers.
fn collect_scans(node: &Json, out: &mut Vec<Scan>) -> bool {
    match node {
        Json::Array(items) => items.iter().all(|n| collect_scans(n, out)),
        Json::Object(o) => {
            let info = o.get("extra_info");
            if let Some(function) = info.and_then(|i| i.get("Function")).and_then(Json::as_str) {
                let format = match function {
                    f if f.starts_with("READ_PARQUET") || f.starts_with("PARQUET") => "parquet",
                    f if f.starts_with("READ_CSV") => "csv",
                    f if f.starts_with("READ_JSON") => "json",
                    // Functions that read no file.
                    "UNNEST" | "RANGE" | "GENERATE_SERIES" => "",
                    _ => return false,
                };
                if let (false, Some(info)) = (format.is_empty(), info) {
                    out.push(Scan {
                        format,
                        projected: strings(info.get("Projections"))
                            .into_iter()
                            .map(|c| c.trim_matches('"').to_ascii_lowercase())
                            .collect(),
                        filtered: strings(info.get("Filters"))
                            .into_iter()
                            .flat_map(words)
                            .collect(),
                    });
                }
            }
            o.get("children").is_none_or(|c| collect_scans(c, out))
        }
        _ => true,
    }
}

/// A plan field that DuckDB writes as one string or as a list of them.
fn strings(v: Option<&Json>) -> Vec<&str> {
    match v {
        Some(Json::String(s)) => vec![s.as_str()],
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    }
}

/// The identifiers in a plan expression (`amount>5`, `contains(email, 'x')`), lower case;
/// string literals are skipped. Words that are not columns (function names) are harmless: a
/// scan's columns are matched against its table's.
fn words(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for d in chars.by_ref() {
                    if d == '\'' {
                        break;
                    }
                }
            }
            '"' => {
                let mut w = String::new();
                for d in chars.by_ref() {
                    if d == '"' {
                        break;
                    }
                    w.push(d);
                }
                out.push(w.to_ascii_lowercase());
            }
            c if c.is_alphabetic() || c == '_' => {
                let mut w = String::from(c);
                while let Some(&d) = chars.peek() {
                    if d.is_alphanumeric() || d == '_' {
                        w.push(d);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push(w.to_ascii_lowercase());
            }
            _ => {}
        }
    }
    out
}

/// The bytes of the named columns of a table (names that are not its columns count nothing).
fn column_sum<'a>(info: &TableInfo, columns: impl Iterator<Item = &'a String>) -> u64 {
    columns
        .filter_map(|c| info.column_bytes.get(c.as_str()))
        .sum()
}

/// The columns tabledata.list's `selectedFields` names (comma-separated top-level columns,
/// any case), as indexes into `fields` in the order named, each once (as the gateway reads the
/// cells it masks). A name that is no column, or a nested path, is `invalid`.
pub fn select_columns(fields: &[Field], selected: &str) -> Result<Vec<usize>, EngineError> {
    let mut out: Vec<usize> = Vec::new();
    for name in selected.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if name.contains('.') {
            return Err(EngineError::bad_request(format!(
                "selectedFields {name:?}: querygate's local engine selects top-level columns only \
                 (name the column {:?} to read it whole)",
                name.split('.').next().unwrap_or(name)
            )));
        }
        let i = fields
            .iter()
            .position(|f| f.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                EngineError::bad_request(format!(
                    "selectedFields {name:?} is not a column of this table (its columns: {})",
                    fields
                        .iter()
                        .map(|f| f.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

/// The select list and the fields of a page: every column, or the chosen ones in their order.
fn projection(fields: &[Field], columns: Option<&[usize]>) -> (String, Vec<Field>) {
    match columns {
        None => ("*".to_string(), fields.to_vec()),
        Some(columns) => {
            let chosen: Vec<Field> = columns
                .iter()
                .filter_map(|&i| fields.get(i).cloned())
                .collect();
            let list = chosen
                .iter()
                .map(|f| ident(&f.name))
                .collect::<Vec<_>>()
                .join(", ");
            (list, chosen)
        }
    }
}

pub fn not_found_table(project: &str, dataset: &str, table: &str) -> EngineError {
    EngineError::not_found(format!(
        "Not found: Table {project}:{dataset}.{table} was not found in location {LOCATION}"
    ))
}

fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The reader for a file, by extension.
fn format_of(path: &Path) -> Result<&'static str, String> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    let name = name.trim_end_matches(".gz").trim_end_matches(".zst");
    if name.ends_with(".parquet") || name.ends_with(".pq") {
        Ok("parquet")
    } else if name.ends_with(".csv") || name.ends_with(".tsv") || name.ends_with(".txt") {
        Ok("csv")
    } else if name.ends_with(".json") || name.ends_with(".ndjson") || name.ends_with(".jsonl") {
        Ok("json")
    } else {
        Err(format!(
            "{} is not a .parquet, .csv or .ndjson/.jsonl/.json file",
            path.display()
        ))
    }
}

/// Creates the view of one table and reads its statistics.
fn register(
    conn: &Connection,
    spec: &TableSpec,
    schemas: &mut BTreeSet<String>,
) -> Result<TableInfo, String> {
    let pattern = spec.pattern.to_string_lossy().to_string();
    let format = format_of(&spec.pattern)?;
    let mut files: Vec<PathBuf> = {
        let mut stmt = conn
            .prepare("SELECT file FROM glob(?) ORDER BY file")
            .map_err(|e| format!("cannot list {pattern}: {e}"))?;
        stmt.query_map([&pattern], |r| r.get::<_, String>(0))
            .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
            .map_err(|e| format!("cannot list {pattern}: {e}"))?
            .into_iter()
            .map(PathBuf::from)
            .collect()
    };
    files.sort();
    if files.is_empty() {
        return Err(format!("no file matches {pattern}"));
    }
    let list = format!(
        "[{}]",
        files
            .iter()
            .map(|f| quote(&f.to_string_lossy()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let reader = match format {
        "parquet" => format!("read_parquet({list}, union_by_name = true)"),
        "csv" => format!("read_csv({list}, header = true, union_by_name = true)"),
        _ => format!("read_json({list}, format = 'newline_delimited', union_by_name = true)"),
    };
    if schemas.insert(spec.dataset.clone()) {
        conn.execute_batch(&format!("CREATE SCHEMA {}", ident(&spec.dataset)))
            .map_err(|e| format!("cannot create dataset {}: {e}", spec.dataset))?;
    }
    conn.execute_batch(&format!(
        "CREATE VIEW {}.{} AS SELECT * FROM {reader}",
        ident(&spec.dataset),
        ident(&spec.table)
    ))
    .map_err(|e| {
        format!(
            "cannot read {pattern}: {}",
            clean_duckdb_message(&e.to_string())
        )
    })?;
    let view = format!("{}.{}", ident(&spec.dataset), ident(&spec.table));
    let fields = {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {view} LIMIT 0"))
            .map_err(|e| format!("cannot read {pattern}: {e}"))?;
        stmt.execute([])
            .map_err(|e| format!("cannot read {pattern}: {e}"))?;
        stmt.schema()
            .fields()
            .iter()
            .map(|f| Field::from_arrow(f))
            .collect::<Vec<_>>()
    };
    let num_rows: i64 = conn
        .query_row(&format!("SELECT count(*) FROM {view}"), [], |r| r.get(0))
        .map_err(|e| format!("cannot count the rows of {pattern}: {e}"))?;
    let num_bytes: u64 = files
        .iter()
        .map(|f| std::fs::metadata(f).map_or(0, |m| m.len()))
        .sum();
    let mut column_bytes: HashMap<String, u64> = HashMap::new();
    if format == "parquet" {
        let sql = format!(
            "SELECT path_in_schema, CAST(sum(total_compressed_size) AS BIGINT) FROM parquet_metadata({list}) GROUP BY 1"
        );
        if let Ok(mut stmt) = conn.prepare(&sql)
            && let Ok(rows) =
                stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        {
            for (path, size) in rows.flatten() {
                let top = path
                    .split([',', '.'])
                    .next()
                    .unwrap_or(&path)
                    .trim()
                    .to_ascii_lowercase();
                *column_bytes.entry(top).or_default() += size.max(0) as u64;
            }
        }
    }
    if column_bytes.is_empty() && !fields.is_empty() {
        let each = num_bytes / fields.len() as u64;
        for f in &fields {
            column_bytes.insert(f.name.to_ascii_lowercase(), each);
        }
    }
    let partition_field = fields
        .iter()
        .find(|f| f.ty == "DATE" && (f.name.ends_with("_date") || f.name == "date"))
        .map(|f| f.name.clone());
    let times: Vec<u64> = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .filter_map(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .collect();
    Ok(TableInfo {
        fields,
        num_rows: num_rows.max(0) as u64,
        num_bytes,
        column_bytes,
        files,
        format,
        partition_field,
        created_ms: times.iter().min().copied(),
        modified_ms: times.iter().max().copied(),
    })
}

/// The rows of the INFORMATION_SCHEMA views the translator serves (TABLES, COLUMNS, SCHEMATA),
/// as tables in [`META_SCHEMA`]: the configured tables as tables.get reports them, written
/// once (files are read at start). Columns are those BigQuery documents, in its order; those
/// that cannot apply here (replicas, collations, generated columns) hold its defaults.
fn information_schema(
    conn: &Connection,
    project: &str,
    catalog: &BTreeMap<(String, String), TableInfo>,
) -> Result<(), duckdb::Error> {
    conn.execute_batch(&format!(
        "CREATE SCHEMA \"{META_SCHEMA}\";
         CREATE TABLE \"{META_SCHEMA}\".tables (
           table_catalog VARCHAR, table_schema VARCHAR, table_name VARCHAR, table_type VARCHAR,
           is_insertable_into VARCHAR, is_typed VARCHAR, is_change_history_enabled VARCHAR,
           creation_time TIMESTAMPTZ, base_table_catalog VARCHAR, base_table_schema VARCHAR,
           base_table_name VARCHAR, snapshot_time_ms TIMESTAMPTZ, ddl VARCHAR,
           default_collation_name VARCHAR, upsert_stream_apply_watermark TIMESTAMPTZ);
         CREATE TABLE \"{META_SCHEMA}\".columns (
           table_catalog VARCHAR, table_schema VARCHAR, table_name VARCHAR, column_name VARCHAR,
           ordinal_position BIGINT, is_nullable VARCHAR, data_type VARCHAR, is_generated VARCHAR,
           generation_expression VARCHAR, is_stored VARCHAR, is_hidden VARCHAR,
           is_updatable VARCHAR, is_system_defined VARCHAR, is_partitioning_column VARCHAR,
           clustering_ordinal_position BIGINT, collation_name VARCHAR, column_default VARCHAR,
           rounding_mode VARCHAR);
         CREATE TABLE \"{META_SCHEMA}\".schemata (
           catalog_name VARCHAR, schema_name VARCHAR, schema_owner VARCHAR,
           creation_time TIMESTAMPTZ, last_modified_time TIMESTAMPTZ, location VARCHAR,
           ddl VARCHAR, default_collation_name VARCHAR);"
    ))?;
    let ms = |t: Option<u64>| t.map(|t| t.min(i64::MAX as u64) as i64);
    let mut tables = conn.prepare(&format!(
        "INSERT INTO \"{META_SCHEMA}\".tables VALUES (?, ?, ?, 'BASE TABLE', 'NO', 'NO', 'NO', \
         CAST(epoch_ms(CAST(? AS BIGINT)) AS TIMESTAMPTZ), NULL, NULL, NULL, NULL, ?, NULL, NULL)"
    ))?;
    let mut columns = conn.prepare(&format!(
        "INSERT INTO \"{META_SCHEMA}\".columns VALUES (?, ?, ?, ?, ?, ?, ?, 'NEVER', NULL, NULL, \
         'NO', NULL, 'NO', ?, NULL, 'NULL', 'NULL', NULL)"
    ))?;
    for ((dataset, table), info) in catalog {
        tables.execute(duckdb::params![
            project,
            dataset,
            table,
            ms(info.created_ms),
            ddl(project, dataset, table, info)
        ])?;
        for (i, f) in info.fields.iter().enumerate() {
            let partitioning = info.partition_field.as_deref() == Some(f.name.as_str());
            columns.execute(duckdb::params![
                project,
                dataset,
                table,
                f.name,
                i as i64 + 1,
                if f.repeated { "NO" } else { "YES" },
                f.standard_type(),
                if partitioning { "YES" } else { "NO" },
            ])?;
        }
    }
    let mut schemata = conn.prepare(&format!(
        "INSERT INTO \"{META_SCHEMA}\".schemata VALUES (?, ?, NULL, \
         CAST(epoch_ms(CAST(? AS BIGINT)) AS TIMESTAMPTZ), \
         CAST(epoch_ms(CAST(? AS BIGINT)) AS TIMESTAMPTZ), '{LOCATION}', ?, NULL)"
    ))?;
    let datasets: BTreeSet<&str> = catalog.keys().map(|(d, _)| d.as_str()).collect();
    for dataset in datasets {
        let infos = catalog
            .iter()
            .filter(|((d, _), _)| d == dataset)
            .map(|(_, i)| i);
        let created = infos.clone().filter_map(|i| i.created_ms).min();
        let modified = infos.filter_map(|i| i.modified_ms).max();
        schemata.execute(duckdb::params![
            project,
            dataset,
            ms(created),
            ms(modified),
            format!(
                "CREATE SCHEMA `{project}.{dataset}`\nOPTIONS(\n  location=\"{}\"\n);",
                LOCATION.to_ascii_lowercase()
            ),
        ])?;
    }
    Ok(())
}

/// A table's DDL as INFORMATION_SCHEMA.TABLES writes it.
fn ddl(project: &str, dataset: &str, table: &str, info: &TableInfo) -> String {
    let columns = info
        .fields
        .iter()
        .map(|f| format!("  {} {}", values::ddl_name(&f.name), f.standard_type()))
        .collect::<Vec<_>>()
        .join(",\n");
    let partition = info
        .partition_field
        .as_ref()
        .map(|p| format!("\nPARTITION BY {}", values::ddl_name(p)))
        .unwrap_or_default();
    format!("CREATE TABLE `{project}.{dataset}.{table}`\n(\n{columns}\n){partition};")
}

/// From here on the engine reads the configured files and nothing else, and its settings
/// cannot be changed by a query.
fn lock_down(conn: &Connection, files: &[PathBuf]) -> Result<(), String> {
    let list = files
        .iter()
        .map(|f| quote(&f.to_string_lossy()))
        .collect::<Vec<_>>()
        .join(", ");
    conn.execute_batch(&format!(
        "SET allowed_paths = [{list}]; SET enable_external_access = false; SET lock_configuration = true;"
    ))
    .map_err(|e| format!("cannot lock DuckDB to the configured files: {e}"))
}

#[cfg(test)]
pub(crate) fn engine_for_tests(dir: &Path) -> Engine {
    use std::io::Write;
    let customers = dir.join("customers.csv");
    let mut f = std::fs::File::create(&customers).expect("create");
    writeln!(f, "id,name,email,signup_date,score").expect("write");
    writeln!(f, "1,Ana Lima,ana@example.com,2024-01-05,3.5").expect("write");
    writeln!(f, "2,Bo Chen,bo@corp.example,2024-02-11,4.0").expect("write");
    writeln!(f, "3,Cy Diaz,,2024-03-20,").expect("write");
    drop(f);
    let events = dir.join("events.ndjson");
    std::fs::write(
        &events,
        "{\"id\": 1, \"tags\": [\"a\", \"b\"], \"seen_at\": \"2024-01-05T10:00:00Z\"}\n{\"id\": 2, \"tags\": [], \"seen_at\": \"2024-01-06T11:30:00Z\"}\n",
    )
    .expect("write");
    Engine::open(
        "demo",
        &[
            TableSpec {
                dataset: "shop".into(),
                table: "customers".into(),
                pattern: customers,
            },
            TableSpec {
                dataset: "shop".into(),
                table: "events".into(),
                pattern: events,
            },
        ],
    )
    .expect("engine")
}
