//! What the pipeline needs from a source, and the [`Admitted`] token that guards it.
//!
//! A source (the BigQuery upstream and the embedded engine today; PostgreSQL next) runs
//! only an `Admitted` call. `Admitted::new` is private to this crate, so the only
//! code path that can produce one is `Pipeline::handle`, after the decided record
//! is durable.
//!
//! Two ways in: a front that speaks the source's own protocol passes its native call
//! through (the BigQuery front forwards BigQuery's REST calls); a front that speaks no
//! source's protocol (MCP tools, console pages) asks for a neutral [`Action`] with
//! [`Source::call_for`] and reads the reply's neutral [`Answer`]: rows with their
//! schema, catalog listings and descriptions, job states. [`Sources`] is the registry of
//! the configured sources every front finds one in.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use querygate_core::{Action, Denial, Fault, Identity};
use querygate_policy::Partitioning;
use querygate_sql::SqlDialect;

pub use crate::audit::Ending;
use crate::values::Rows;

/// A call the pipeline has authenticated, decided, and audited.
#[derive(Debug)]
pub struct Admitted<C> {
    call: C,
    identity: Identity,
}

impl<C> Admitted<C> {
    pub(crate) fn new(call: C, identity: Identity) -> Self {
        Admitted { call, identity }
    }

    pub fn call(&self) -> &C {
        &self.call
    }

    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn into_call(self) -> C {
        self.call
    }

    /// The same admitted call in another type (a source that delegates to another by
    /// kind unwraps it); `Err` when `f` finds no call in it.
    pub fn try_map<D, E>(self, f: impl FnOnce(C) -> Result<D, E>) -> Result<Admitted<D>, E> {
        Ok(Admitted {
            call: f(self.call)?,
            identity: self.identity,
        })
    }
}

/// What the pipeline learns from a reply, for the audit log and the job table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Status returned to the client, in the source's protocol's numbers.
    pub status: u16,
    /// The source accepted the call (for BigQuery, a 2xx): a job it names was created.
    pub accepted: bool,
    pub rows: Option<u64>,
    /// Rows of the whole result, when the reply says (`totalRows`).
    pub total_rows: Option<u64>,
    pub bytes_processed: Option<u64>,
    pub bytes_billed: Option<u64>,
    pub job_id: Option<String>,
    /// The job's result table, when the reply names one.
    pub destination: Option<String>,
    /// The result schema as JSON, when the reply carries one.
    pub schema: Option<String>,
    /// The error the reply carries (upstream HTTP error or job error).
    pub error: Option<String>,
    /// The outcome's SQLSTATE, for sources that report one (PostgreSQL).
    pub sqlstate: Option<String>,
}

/// What an identity may see of a reply.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Jobs the identity owns on this source (for job listings).
    pub owned_jobs: HashSet<String>,
    /// Names a catalog listing (schema or table ids) must not show: the identity's rules
    /// do not let it read them.
    pub hidden: HashSet<String>,
}

/// A source's answer, before the front renders it.
pub trait Reply: Send {
    fn summary(&self) -> Summary;
    /// The rows of the result page the reply carries, as neutral values, for masking and
    /// scrubbing; `None` when it carries none (metadata, jobs, errors). `Err` when its rows
    /// cannot be read (then nothing may be returned).
    fn rows(&self) -> Option<Result<Rows, Fault>> {
        None
    }
    /// Puts back the rows [`Reply::rows`] gave, changed.
    fn put_rows(&mut self, _rows: Rows) {}
    /// Masks what `scrubber` finds in every value of the result's rows; how many changed.
    fn scrub(&mut self, scrubber: &querygate_mask::Scrubber) -> Result<u64, Fault> {
        let Some(rows) = self.rows() else {
            return Ok(0);
        };
        let mut rows = rows?;
        let n = crate::values::scrub_rows(&mut rows, scrubber);
        if n > 0 {
            self.put_rows(rows);
        }
        Ok(n)
    }
    /// Masks the cells of a direct table read as `masks` say (every column of the table, in
    /// schema order), with the hash strategy keyed by `key`; how many values changed.
    /// A reply the source accepted that shows no rows cannot be masked: the read fails
    /// (closed) rather than return what it carries.
    fn mask_rows(&mut self, masks: &[ColumnMask], key: &[u8]) -> Result<u64, Fault> {
        let Some(rows) = self.rows() else {
            if self.summary().accepted {
                return Err(Fault::gateway(
                    "this source cannot mask the rows of a table read; run a query instead",
                ));
            }
            return Ok(0);
        };
        let mut rows = rows?;
        let n = crate::values::mask_rows(&mut rows, masks, key)?;
        self.put_rows(rows);
        Ok(n)
    }
    /// Replaces the text of every error the reply carries (it could echo values) with a
    /// note saying why, keeping the error's kind; `true` when something was withheld.
    fn withhold_errors(&mut self, _why: &str) -> bool {
        false
    }
    /// Removes from the reply what `scope` does not allow the identity to see.
    fn restrict(&mut self, scope: &Scope);
    /// The body as it will be returned to the client (after `restrict`), for the
    /// session recording. A cheap handle: the recorder cuts and digests it on its own
    /// thread.
    fn body(&self) -> bytes::Bytes;
    /// The reply in the gateway's own terms, for fronts that speak no source's protocol.
    fn answer(&self) -> Answer;
    /// Whether the reply holds only the start of its result and reads the rest from the
    /// source as the client reads it (a result larger than the source holds at once).
    /// Restricting, scrubbing and withholding apply to what it holds; the rest is the
    /// reply's to treat alike, through the [`Ending`] it is given.
    fn is_open(&self) -> bool {
        false
    }
    /// Hands an open reply the completion of its request, to finish once its last part
    /// has been read. Only called when [`Reply::is_open`].
    fn stream(&mut self, _end: Ending) {}
}

/// Something the gateway forwards admitted calls to.
pub trait Source: Send + Sync {
    /// The source-specific request (for BigQuery: the HTTP call to forward).
    type Call: Send;
    type Reply: Reply;

    /// The source's configured name, recorded in the audit log.
    fn name(&self) -> &str;

    /// The project (or database) unqualified table names belong to.
    fn default_project(&self) -> &str;

    /// The schema one-part table names resolve in when a request names none (PostgreSQL:
    /// `public`, as the source's own connections resolve them). Sources whose requests say
    /// (a BigQuery default dataset) or whose names need none keep the default.
    fn default_schema(&self) -> Option<&str> {
        None
    }

    /// The SQL dialect the source runs: statements to it are analyzed, fingerprinted and
    /// rewritten in it.
    fn dialect(&self) -> SqlDialect;

    /// The stored table a name a client read rows of means (BigQuery: `p.d.t$20240101`, a
    /// partition, and `p.d.t@1700000000`, a snapshot, are reads of `p.d.t`), for policy
    /// and masking. Sources whose names say nothing more keep the default.
    fn table_of(&self, name: &str) -> String {
        name.to_string()
    }

    /// Whether reading `table` (a name as the statement wrote it, its last part the
    /// relation) reads values of other tables or other clients' statements in the source's
    /// own catalog (PostgreSQL's `pg_stats`, `pg_stat_activity`): such reads are refused
    /// to identities something is masked for. Sources without such relations keep the
    /// default.
    fn holds_values(&self, _table: &str) -> bool {
        false
    }

    fn execute(
        &self,
        call: Admitted<Self::Call>,
    ) -> impl Future<Output = Result<Self::Reply, Fault>> + Send;

    /// The source's own call for a neutral action (a query, a catalog description, a job
    /// operation, a table read), paged as `paging` says. `Err` for an action the source
    /// cannot serve (the message is for the client). `Other` and `Malformed` actions get a
    /// call too, which the gate refuses before it is ever forwarded, so that they are
    /// audited like any request.
    fn call_for(&self, action: &Action, paging: &Paging) -> Result<Self::Call, Denial>;

    /// Bytes the call's query would process (a dry run upstream). Runs no query and
    /// returns no rows; the pipeline calls it only when a rule or budget needs it.
    fn estimate(&self, call: &Self::Call) -> impl Future<Output = Result<u64, Refusal>> + Send;

    /// How a table is partitioned (metadata lookup, cached by the source).
    fn partitioning(&self, table: &str)
    -> impl Future<Output = Result<Partitioning, Fault>> + Send;

    /// Whether the source says, before a query runs, how many bytes it will process, and
    /// bills by them (BigQuery). Byte budgets and `bytes_over` apply where it does; a
    /// source that does not (PostgreSQL) is held to row budgets instead.
    fn bills_bytes(&self) -> bool {
        true
    }

    /// Caps the bytes the call's query may bill (`maximumBytesBilled` for BigQuery),
    /// keeping a lower cap the client set.
    fn limit_bytes(&self, call: &mut Self::Call, bytes: u64);

    /// The result may be withheld when it has more than `rows` rows: the source reads it
    /// whole before it answers (it does not stream it). Sources that never stream keep
    /// the default.
    fn limit_rows(&self, _call: &mut Self::Call, _rows: u64) {}

    /// Saves a query call that must wait for approval so that it can run later, under a
    /// job id the client can poll (`request_id` seeds one when the client chose none).
    /// `None` when the call cannot wait.
    fn hold(&self, call: &Self::Call, request_id: &str) -> Option<Held>;

    /// The value detectors to run on what this source returns (`detect = [...]`), if any.
    fn scrubber(&self) -> Option<&querygate_mask::Scrubber> {
        None
    }

    /// Whether the source runs queries as jobs that can be polled after they ran
    /// (BigQuery). A source without them (PostgreSQL) answers a held call's run with its
    /// result, which the poll that ran it returns.
    fn keeps_jobs(&self) -> bool {
        true
    }

    /// Rebuilds a call [`Source::hold`] saved: it creates the held job upstream.
    fn resume(&self, saved: &str) -> Result<Resumed<Self::Call>, Fault>;

    /// The query parameters a call carries (JSON), for the session recording.
    fn parameters(&self, _call: &Self::Call) -> Option<String> {
        None
    }

    /// The statement a query call runs (after the masking rewrite, if any).
    fn statement(&self, _call: &Self::Call) -> Option<String> {
        None
    }

    /// The columns of a table (`project.dataset.table`), from its schema, for the masking
    /// rewrite. Looked up with the gateway's own credential and cached by the source.
    /// Sources that cannot describe tables fail, and a query reading a masked table
    /// through them is refused.
    fn columns(&self, table: &str) -> impl Future<Output = Result<Vec<Column>, Fault>> + Send {
        let table = table.to_string();
        async move {
            Err(Fault::gateway(format!(
                "this source cannot describe table {table}, so its masked columns cannot be \
                 masked"
            )))
        }
    }

    /// What `table` (`project.dataset.table`) is defined as when it is a view (or a
    /// materialized view): the query its rows come from. `Ok(None)` for a table, and for a
    /// name the source does not know (the query then fails upstream). Looked up with the
    /// gateway's own credential and cached by the source. Sources without views keep the
    /// default.
    fn view(&self, _table: &str) -> impl Future<Output = Result<Option<View>, Fault>> + Send {
        async { Ok(None) }
    }

    /// What processing `bytes` costs at the source's list price, in US dollars, for the
    /// approver to see beside the estimate. Sources without a price keep the default.
    fn price(&self, _bytes: u64) -> Option<f64> {
        None
    }

    /// The key of the `hash` masking strategy, when the gateway has one.
    fn mask_key(&self) -> Option<&querygate_core::Secret> {
        None
    }

    /// How mask expressions name the hash key in this call's statement: a query parameter
    /// the source binds as the call leaves (BigQuery: `@__querygate_mask_key`;
    /// PostgreSQL: `$n`, one past the statement's own parameters).
    fn mask_key_param(&self, _call: &Self::Call) -> String {
        format!("@{}", querygate_mask::HASH_KEY_PARAM)
    }

    /// Replaces the statement a query call runs (the masking rewrite's output). `Err` when
    /// the call cannot carry it (the message is for the client).
    fn rewrite(&self, _call: &mut Self::Call, _statement: &str) -> Result<(), Denial> {
        Err(Denial::new(
            querygate_core::DenialKind::Forbidden,
            "Access Denied: this source cannot run masked queries",
        ))
    }
}

/// How one column of a table is masked in rows read directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnMask {
    pub column: Column,
    /// `None`: returned as it is.
    pub strategy: Option<querygate_mask::Strategy>,
}

/// One column of a table's schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    pub name: String,
    /// The source's own name of its type (BigQuery's `STRING`, `INTEGER`, `RECORD`, …).
    pub data_type: String,
    /// An array of values of that type (BigQuery's mode `REPEATED`).
    pub repeated: bool,
}

/// A view's definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// The query the view's rows come from; empty when the source says the table is a
    /// view but does not show its definition.
    pub query: String,
    /// The query is legacy SQL, which querygate cannot analyze.
    pub legacy_sql: bool,
}

/// A saved call rebuilt to run once approved.
#[derive(Debug)]
pub struct Resumed<C> {
    pub call: C,
    /// How the audit log names the call (BigQuery: `jobs.insert`).
    pub method: String,
}

/// A call saved to wait for approval.
#[derive(Debug, Clone)]
pub struct Held {
    /// The job the client polls while it waits, and that runs once approved.
    pub job_id: String,
    pub location: Option<String>,
    /// The saved call, opaque to the pipeline.
    pub call: String,
    /// The query parameters (JSON), which the approval binds too.
    pub parameters: Option<String>,
}

/// Why an estimate could not be made: the upstream rejected the query (its message is
/// for the client) or could not be asked.
#[derive(Debug, Clone)]
pub enum Refusal {
    Denied(Denial),
    Failed(Fault),
}

/// How much of a result a neutral call returns, and from where.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Paging {
    /// Rows per page (the source's default when `None`).
    pub max_rows: Option<u64>,
    /// Where the page starts: a token from the previous page.
    pub page_token: Option<String>,
    /// How long a read may wait for a query to complete.
    pub wait: Option<Duration>,
}

/// A source's reply in the gateway's own terms.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A page of rows: of a query, a job's result or a table read.
    Rows(ResultSet),
    /// The query was accepted and has not completed: read the job's result again.
    Running { job_id: Option<String> },
    /// Names in the catalog: the schemas (datasets) of a source, or a schema's tables.
    Names(Vec<String>),
    /// One schema (dataset).
    Schema(SchemaInfo),
    /// One table and its columns.
    Table(TableInfo),
    /// Jobs, newest first, or one job.
    Jobs(Vec<JobInfo>),
    /// The source answered with an error of its own (its message, as the client would
    /// read it).
    Error { message: String },
}

/// Rows and their schema. Values are JSON: null, booleans, numbers (integers that do not
/// fit a double stay strings), strings, arrays and objects (records).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultSet {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<serde_json::Value>>,
    /// Rows of the whole result, when the source says.
    pub total_rows: Option<u64>,
    /// Where the next page starts, when there is one.
    pub page_token: Option<String>,
    /// The job that produced the rows.
    pub job_id: Option<String>,
    pub bytes_processed: Option<u64>,
}

/// A schema (dataset) as the catalog describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SchemaInfo {
    pub name: String,
    pub location: Option<String>,
    pub description: Option<String>,
}

/// A table as the catalog describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableInfo {
    pub name: String,
    /// `TABLE`, `VIEW`, …, in the source's words.
    pub kind: Option<String>,
    pub columns: Vec<Column>,
    pub rows: Option<u64>,
    pub description: Option<String>,
}

/// A job's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobInfo {
    pub job_id: String,
    /// `PENDING`, `RUNNING`, `DONE`, in the source's words.
    pub state: String,
    /// Why it failed, when it did.
    pub error: Option<String>,
    pub statement: Option<String>,
}

/// The configured sources, found by the name clients address them with (a BigQuery
/// project id, a database name) or by their configured name. Every front looks sources
/// up here. Sources of another kind join by being a variant of the one source type the
/// registry holds (an enum that delegates), so fronts keep one lookup.
#[derive(Debug)]
pub struct Sources<S> {
    /// In configuration order.
    all: Vec<Arc<S>>,
    by_target: HashMap<String, Arc<S>>,
}

impl<S: Source> Sources<S> {
    pub fn new(sources: impl IntoIterator<Item = Arc<S>>) -> Sources<S> {
        let all: Vec<Arc<S>> = sources.into_iter().collect();
        let by_target = all
            .iter()
            .map(|s| (s.default_project().to_string(), Arc::clone(s)))
            .collect();
        Sources { all, by_target }
    }

    /// The source clients address as `target` (its project or database).
    pub fn get(&self, target: &str) -> Option<&Arc<S>> {
        self.by_target.get(target)
    }

    /// The source configured as `name`.
    pub fn named(&self, name: &str) -> Option<&Arc<S>> {
        self.all.iter().find(|s| s.name() == name)
    }

    /// Every source, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<S>> {
        self.all.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }
}
