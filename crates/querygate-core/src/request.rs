//! A protocol-neutral request: what a front decodes its wire traffic into.
//!
//! Fronts fill this in and hand it to the pipeline; they never decide anything.
//! The credential travels as a [`Secret`] so it cannot be printed by accident.

use std::fmt;

use crate::Secret;

/// Gateway-assigned id of one request, shared by all of its audit records.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RequestId(pub String);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the client software is and where it connected from.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub user_agent: Option<String>,
    pub peer: Option<String>,
}

/// What a request asks to do, in the pipeline's terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run SQL. `dry_run` asks only for validation and an estimate.
    Query {
        statement: String,
        dry_run: bool,
        /// Set when the request would persist the result into a named table.
        destination: Option<String>,
        /// The dataset (`ds` or `project.ds`) one-part table names belong to (BigQuery's
        /// `defaultDataset`), if the request set one.
        default_dataset: Option<String>,
        /// Set when the statement is in a dialect the gateway cannot analyze (e.g. legacy SQL).
        dialect_problem: Option<String>,
    },
    /// Read rows of a stored table directly (BigQuery tabledata.list).
    /// `result_table` marks a job's hidden result table, readable only by the job's owner.
    ReadRows { table: String, result_table: bool },
    /// Read a result page or status of a job the caller must own.
    ReadJob { job_id: String },
    /// Cancel a job the caller must own.
    CancelJob { job_id: String },
    /// List the caller's jobs.
    ListJobs,
    /// Read metadata that holds no row data (dataset and table listings, schemas).
    ReadMetadata {
        table: Option<String>,
        result_table: bool,
    },
    /// Anything else: writes, loads, exports, copies, uploads, IAM, routines. Refused until
    /// policy allows it; `what` names it for the message.
    Other { what: String },
    /// A request the front could not decode; the message says what was wrong.
    Malformed { message: String, status: u16 },
}

/// One request, decoded from any front.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: RequestId,
    /// The bearer credential the client presented, if any.
    pub credential: Option<Secret>,
    /// A second token the client presented for the person it acts for (a delegation
    /// token, e.g. the `x-querygate-on-behalf-of` header), if any.
    pub delegation: Option<Secret>,
    pub client: ClientInfo,
    /// The project (BigQuery) or database the client addressed; the pipeline maps it to a source.
    pub target: String,
    /// The API method, named as the wire protocol names it (`jobs.query`, `tabledata.list`, …).
    pub method: String,
    pub action: Action,
    /// Job id the request creates or refers to, when the client chose one.
    pub job_id: Option<String>,
    /// Why the client says it needs this (for approvers), and how it said so
    /// (`label`, `header`; a SQL comment is read by the pipeline).
    pub reason: Option<(String, String)>,
    /// How long the client is willing to wait for an answer that is not ready (BigQuery
    /// getQueryResults' `timeoutMs`): a poll of a job waiting for approval is held that long.
    pub wait: Option<std::time::Duration>,
    /// The session the client says this request belongs to (for BigQuery: the
    /// `x-querygate-session` header or the job label `querygate-session`); when `None`
    /// the pipeline assigns one from the client connection and idle time.
    pub session: Option<String>,
}

impl Request {
    /// The SQL text, for requests that carry one.
    pub fn statement(&self) -> Option<&str> {
        match &self.action {
            Action::Query { statement, .. } => Some(statement),
            _ => None,
        }
    }

    /// The table a direct read or metadata call addressed.
    pub fn table(&self) -> Option<&str> {
        match &self.action {
            Action::ReadRows { table, .. } => Some(table),
            Action::ReadMetadata { table, .. } => table.as_deref(),
            _ => None,
        }
    }
}
