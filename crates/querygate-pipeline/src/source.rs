//! What the pipeline needs from a source, and the [`Admitted`] token that guards it.
//!
//! A source (the BigQuery upstream, later PostgreSQL and the embedded engine) runs
//! only an `Admitted` call. `Admitted::new` is private to this crate, so the only
//! code path that can produce one is `Pipeline::handle`, after the decided record
//! is durable.

use std::collections::HashSet;
use std::future::Future;

use querygate_core::{Denial, Fault, Identity};
use querygate_policy::Partitioning;
use querygate_sql::SqlDialect;

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
}

/// What the pipeline learns from a reply, for the audit log and the job table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    /// Status returned to the client.
    pub status: u16,
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
}

/// What an identity may see of a reply.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Jobs the identity owns on this source (for job listings).
    pub owned_jobs: HashSet<String>,
}

/// A source's answer, before the front renders it.
pub trait Reply: Send {
    fn summary(&self) -> Summary;
    /// Masks what `scrubber` finds in every value the reply returns (result rows); returns
    /// how many values changed. Replies that carry no result values change nothing.
    fn scrub(&mut self, _scrubber: &querygate_mask::Scrubber) -> u64 {
        0
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

    /// The SQL dialect the source runs: statements to it are analyzed, fingerprinted and
    /// rewritten in it.
    fn dialect(&self) -> SqlDialect;

    /// The stored table a name a client read rows of means (BigQuery: `p.d.t$20240101`, a
    /// partition, and `p.d.t@1700000000`, a snapshot, are reads of `p.d.t`), for policy
    /// and masking. Sources whose names say nothing more keep the default.
    fn table_of(&self, name: &str) -> String {
        name.to_string()
    }

    fn execute(
        &self,
        call: Admitted<Self::Call>,
    ) -> impl Future<Output = Result<Self::Reply, Fault>> + Send;

    /// Bytes the call's query would process (a dry run upstream). Runs no query and
    /// returns no rows; the pipeline calls it only when a rule or budget needs it.
    fn estimate(&self, call: &Self::Call) -> impl Future<Output = Result<u64, Refusal>> + Send;

    /// How a table is partitioned (metadata lookup, cached by the source).
    fn partitioning(&self, table: &str)
    -> impl Future<Output = Result<Partitioning, Fault>> + Send;

    /// Caps the bytes the call's query may bill (`maximumBytesBilled` for BigQuery),
    /// keeping a lower cap the client set.
    fn limit_bytes(&self, call: &mut Self::Call, bytes: u64);

    /// Saves a query call that must wait for approval so that it can run later, under a
    /// job id the client can poll (`request_id` seeds one when the client chose none).
    /// `None` when the call cannot wait.
    fn hold(&self, call: &Self::Call, request_id: &str) -> Option<Held>;

    /// The value detectors to run on what this source returns (`detect = [...]`), if any.
    fn scrubber(&self) -> Option<&querygate_mask::Scrubber> {
        None
    }

    /// Rebuilds a call [`Source::hold`] saved: it creates the held job upstream.
    fn resume(&self, saved: &str) -> Result<Self::Call, Fault>;

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

    /// Masks the rows of a direct table read (tabledata.list) in `reply`, column by column
    /// as `masks` says (every column of the table, in schema order); returns how many
    /// values changed. Sources that cannot fail, and the read is refused.
    fn mask_rows(&self, _reply: &mut Self::Reply, _masks: &[ColumnMask]) -> Result<u64, Fault> {
        Err(Fault::gateway(
            "this source cannot mask the rows of a table read; run a query instead",
        ))
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
    /// The BigQuery type name (`STRING`, `INTEGER`, `RECORD`, …).
    pub bq_type: String,
    /// An ARRAY (BigQuery mode `REPEATED`).
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
