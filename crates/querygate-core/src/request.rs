//! A protocol-neutral request: what a front decodes its wire traffic into.
//!
//! Fronts fill this in and hand it to the pipeline; they never decide anything.
//! The credential travels as a [`Secret`] so it cannot be printed by accident.

use std::fmt;

use crate::{Secret, StatusCodes};

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

/// What a request asks to do, in words that fit any protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run SQL, in the source's dialect.
    Query(Query),
    /// Read a stored table's rows directly, without SQL (BigQuery tabledata.list).
    /// `result_table` marks a job's hidden result table, readable only by the job's owner.
    ReadTable { table: String, result_table: bool },
    /// Describe the catalog: schemas (datasets), their tables, a table's columns. Holds no
    /// row data. `hidden` marks a catalog object that holds other jobs' results (BigQuery's
    /// `_…` datasets), visible only to the owner of the result it names.
    Catalog { object: Catalog, hidden: bool },
    /// Operate on a job the caller must own (or list the caller's jobs).
    Job(JobOp),
    /// Anything else: writes, loads, exports, copies, uploads, IAM, routines. Refused until
    /// policy allows it; `what` names it for the message.
    Other { what: String },
    /// A request the front could not decode; the message says what was wrong.
    Malformed { problem: Malformed, message: String },
}

/// A query as a front asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub statement: String,
    /// Only validate the statement and estimate its cost; run nothing.
    pub dry_run: bool,
    /// Set when the request would persist the result into a named table.
    pub destination: Option<String>,
    /// The schema (BigQuery: dataset, `ds` or `project.ds`) one-part table names belong
    /// to, if the request set one.
    pub default_schema: Option<String>,
    /// Set when the statement is in a dialect the gateway cannot analyze (e.g. BigQuery's
    /// legacy SQL): the message says what to do instead.
    pub dialect_problem: Option<String>,
}

impl Query {
    /// A query of `statement` with nothing else set.
    pub fn new(statement: impl Into<String>) -> Query {
        Query {
            statement: statement.into(),
            dry_run: false,
            destination: None,
            default_schema: None,
            dialect_problem: None,
        }
    }
}

/// A part of a source's catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Catalog {
    /// The schemas (datasets) of the source.
    Schemas,
    /// One schema (`project.dataset`).
    Schema { schema: String },
    /// The tables of one schema (`project.dataset`).
    Tables { schema: String },
    /// One table and its columns (`project.dataset.table`).
    Table { table: String },
}

impl Catalog {
    /// The catalog object named, if one is.
    pub fn name(&self) -> Option<&str> {
        match self {
            Catalog::Schemas => None,
            Catalog::Schema { schema } | Catalog::Tables { schema } => Some(schema),
            Catalog::Table { table } => Some(table),
        }
    }
}

/// What a request does with a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOp {
    /// The job's status.
    Get {
        job_id: String,
    },
    /// A page of the job's result (or its status while it runs).
    Results {
        job_id: String,
    },
    Cancel {
        job_id: String,
    },
    /// The caller's jobs.
    List,
}

impl JobOp {
    /// The job operated on (none for a listing).
    pub fn job_id(&self) -> Option<&str> {
        match self {
            JobOp::Get { job_id } | JobOp::Results { job_id } | JobOp::Cancel { job_id } => {
                Some(job_id)
            }
            JobOp::List => None,
        }
    }
}

/// What was wrong with a request the front could not decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// It does not say anything the protocol defines, or says it wrongly.
    Invalid,
    /// It is larger than the gateway accepts.
    TooLarge,
    /// It names a method or path the protocol (as served) does not have.
    Unknown,
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
    /// Whom the credential's token must be issued for, when the front is its own OAuth
    /// resource (MCP); `None`: the `[[oidc]]` audiences.
    pub audience: Option<std::sync::Arc<crate::Audience>>,
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
    /// How the front that decoded the request numbers its answers, for the records.
    pub codes: &'static dyn StatusCodes,
}

impl Request {
    /// The SQL text, for requests that carry one.
    pub fn statement(&self) -> Option<&str> {
        match &self.action {
            Action::Query(q) => Some(&q.statement),
            _ => None,
        }
    }

    /// The table a direct read or a description of one addressed (or the hidden schema
    /// a catalog request named), as the audit record names it.
    pub fn table(&self) -> Option<&str> {
        match &self.action {
            Action::ReadTable { table, .. } => Some(table),
            Action::Catalog {
                object: Catalog::Table { table },
                ..
            } => Some(table),
            Action::Catalog {
                object,
                hidden: true,
            } => object.name(),
            _ => None,
        }
    }

    /// The job the request refers to: the one it operates on, or the id it chose for a
    /// job it creates.
    pub fn job(&self) -> Option<&str> {
        self.job_id.as_deref().or(match &self.action {
            Action::Job(op) => op.job_id(),
            _ => None,
        })
    }
}
