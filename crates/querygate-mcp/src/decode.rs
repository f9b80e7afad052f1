//! Decoding: a tool call (its name and JSON arguments) → a neutral action, its paging, and
//! the project it addresses. Pure and total: an unknown tool or arguments of the wrong
//! shape become `Action::Malformed`, which the pipeline audits and denies like any other
//! request, and the agent reads the message as the tool's error.

use std::time::Duration;

use querygate_core::{Action, Catalog, JobOp, Malformed, Query};
use querygate_pipeline::Paging;
use rmcp::model::JsonObject;
use serde::de::DeserializeOwned;

use crate::model::{
    DatasetArgs, JobArgs, ProjectArgs, ResultsArgs, SqlArgs, TOOL_NAMES, TableArgs,
};

/// The longest a `get_query_results` call waits for a job (or its approval).
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The longest statement `execute_sql` takes: BigQuery's own limit on a query's length.
pub const MAX_STATEMENT_BYTES: usize = 1024 * 1024;

/// A tool call, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded {
    /// The tool, as the audit log and the session recording name the call.
    pub method: String,
    /// The project (source) the call addresses.
    pub project: String,
    pub action: Action,
    pub paging: Paging,
    /// How long the call may wait for a job that is not ready (or waits for approval).
    pub wait: Option<Duration>,
}

/// Decodes a call of tool `name`. `default_project` is used when the arguments name none;
/// `max_rows` caps the rows one call returns.
pub fn decode(
    name: &str,
    arguments: Option<&JsonObject>,
    default_project: &str,
    max_rows: u64,
) -> Decoded {
    let mut decoded = Decoded {
        method: name.to_string(),
        project: default_project.to_string(),
        action: Action::Other {
            what: String::new(),
        },
        paging: Paging::default(),
        wait: None,
    };
    let project = |p: Option<String>| p.unwrap_or_else(|| default_project.to_string());
    let rows = |n: Option<u64>| Some(n.unwrap_or(max_rows).clamp(1, max_rows));
    let result = match name {
        "list_dataset_ids" => args::<ProjectArgs>(name, arguments).map(|a| {
            decoded.project = project(a.project);
            catalog(Catalog::Schemas)
        }),
        "list_table_ids" | "get_dataset_info" => args::<DatasetArgs>(name, arguments).map(|a| {
            decoded.project = project(a.project);
            let schema = format!("{}.{}", decoded.project, a.dataset_id);
            catalog(if name == "list_table_ids" {
                Catalog::Tables { schema }
            } else {
                Catalog::Schema { schema }
            })
        }),
        "get_table_info" => args::<TableArgs>(name, arguments).map(|a| {
            decoded.project = project(a.project);
            catalog(Catalog::Table {
                table: format!("{}.{}.{}", decoded.project, a.dataset_id, a.table_id),
            })
        }),
        "execute_sql" => args::<SqlArgs>(name, arguments).and_then(|a| {
            decoded.project = project(a.project);
            if a.sql.len() > MAX_STATEMENT_BYTES {
                return Err(Action::Malformed {
                    problem: Malformed::TooLarge,
                    message: format!(
                        "The statement is {} bytes, more than the {MAX_STATEMENT_BYTES} a query \
                         may have; send a shorter statement",
                        a.sql.len()
                    ),
                });
            }
            decoded.paging.max_rows = rows(a.max_rows);
            let mut query = Query::new(a.sql);
            query.dry_run = a.dry_run;
            Ok(Action::Query(query))
        }),
        "get_query_results" => args::<ResultsArgs>(name, arguments).map(|a| {
            decoded.project = project(a.project);
            decoded.paging.max_rows = rows(a.max_rows);
            decoded.paging.page_token = a.page_token;
            let wait = Duration::from_millis(a.timeout_ms.unwrap_or(10_000)).min(MAX_WAIT);
            decoded.paging.wait = Some(wait);
            decoded.wait = Some(wait);
            Action::Job(JobOp::Results { job_id: a.job_id })
        }),
        "get_job" | "cancel_job" => args::<JobArgs>(name, arguments).map(|a| {
            decoded.project = project(a.project);
            Action::Job(if name == "get_job" {
                JobOp::Get { job_id: a.job_id }
            } else {
                JobOp::Cancel { job_id: a.job_id }
            })
        }),
        _ => Err(Action::Malformed {
            problem: Malformed::Unknown,
            message: format!(
                "Unknown tool `{}`: the tools are {}",
                name.escape_debug(),
                TOOL_NAMES.join(", ")
            ),
        }),
    };
    decoded.action = result.unwrap_or_else(|malformed| malformed);
    decoded
}

fn catalog(object: Catalog) -> Action {
    Action::Catalog {
        object,
        hidden: false,
    }
}

/// The arguments of `tool`, read strictly: unknown fields and wrong types are refused with
/// what was wrong.
fn args<T: DeserializeOwned>(tool: &str, arguments: Option<&JsonObject>) -> Result<T, Action> {
    let value = serde_json::Value::Object(arguments.cloned().unwrap_or_default());
    serde_json::from_value(value).map_err(|e| Action::Malformed {
        problem: Malformed::Invalid,
        message: format!("Invalid arguments for {tool}: {e}"),
    })
}
