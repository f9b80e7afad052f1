//! The tools the MCP front serves, with their input schemas, and the arguments each takes.
//!
//! Names and arguments are those of Google's BigQuery MCP server and MCP Toolbox
//! (`list_dataset_ids`, `list_table_ids`, `get_dataset_info`, `get_table_info`,
//! `execute_sql`) and of its jobs tools (`get_query_results`, `get_job`, `cancel_job`).
//! `project` picks the source as the REST front does (its project id).

use std::sync::Arc;

use rmcp::model::{JsonObject, Tool};
use serde::Deserialize;
use serde_json::{Value, json};

/// The tools, in the order `tools/list` shows them.
pub const TOOL_NAMES: &[&str] = &[
    "list_dataset_ids",
    "list_table_ids",
    "get_dataset_info",
    "get_table_info",
    "execute_sql",
    "get_query_results",
    "get_job",
    "cancel_job",
];

/// `list_dataset_ids` and every tool's optional `project`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectArgs {
    pub project: Option<String>,
}

/// `list_table_ids`, `get_dataset_info`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetArgs {
    pub dataset_id: String,
    pub project: Option<String>,
}

/// `get_table_info`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableArgs {
    pub dataset_id: String,
    pub table_id: String,
    pub project: Option<String>,
}

/// `execute_sql`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlArgs {
    pub sql: String,
    pub project: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
    pub max_rows: Option<u64>,
}

/// `get_query_results`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResultsArgs {
    pub job_id: String,
    pub page_token: Option<String>,
    pub max_rows: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub project: Option<String>,
}

/// `get_job`, `cancel_job`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobArgs {
    pub job_id: String,
    pub project: Option<String>,
}

fn schema(properties: Value, required: &[&str]) -> Arc<JsonObject> {
    let mut object = JsonObject::new();
    object.insert("type".into(), json!("object"));
    object.insert("properties".into(), properties);
    object.insert("required".into(), json!(required));
    object.insert("additionalProperties".into(), json!(false));
    Arc::new(object)
}

fn tool(name: &'static str, description: &'static str, input: Arc<JsonObject>) -> Tool {
    Tool::new(name, description, input)
}

/// The tools `tools/list` answers with.
pub fn tools() -> Vec<Tool> {
    let project = json!({ "type": "string", "description": "The project (source) to use; the first one you may use when left out" });
    let dataset = json!({ "type": "string", "description": "The dataset id" });
    vec![
        tool(
            "list_dataset_ids",
            "List the dataset ids of a project.",
            schema(json!({ "project": project }), &[]),
        ),
        tool(
            "list_table_ids",
            "List the table ids of a dataset.",
            schema(
                json!({ "dataset_id": dataset, "project": project }),
                &["dataset_id"],
            ),
        ),
        tool(
            "get_dataset_info",
            "Describe a dataset.",
            schema(
                json!({ "dataset_id": dataset, "project": project }),
                &["dataset_id"],
            ),
        ),
        tool(
            "get_table_info",
            "Describe a table: its columns and their types, and for you whether each is masked.",
            schema(
                json!({ "dataset_id": dataset, "table_id": { "type": "string", "description": "The table id" }, "project": project }),
                &["dataset_id", "table_id"],
            ),
        ),
        tool(
            "execute_sql",
            "Run a SQL statement (the source's dialect: GoogleSQL for BigQuery projects). \
             Returns rows, or the estimate and the decision with dry_run. Writes, reads of \
             protected data and large scans may be refused or wait for a person's approval.",
            schema(
                json!({
                    "sql": { "type": "string", "description": "The statement" },
                    "project": project,
                    "dry_run": { "type": "boolean", "description": "Only estimate the bytes and say what querygate would decide" },
                    "max_rows": { "type": "integer", "minimum": 1, "description": "Rows to return (pages beyond)" }
                }),
                &["sql"],
            ),
        ),
        tool(
            "get_query_results",
            "Read a page of a job's result; waits up to timeout_ms (at most 30 s) for a job \
             that runs or waits for approval.",
            schema(
                json!({
                    "job_id": { "type": "string" },
                    "page_token": { "type": "string" },
                    "max_rows": { "type": "integer", "minimum": 1 },
                    "timeout_ms": { "type": "integer", "minimum": 0, "maximum": 30000 },
                    "project": project
                }),
                &["job_id"],
            ),
        ),
        tool(
            "get_job",
            "The state of one of your jobs.",
            schema(
                json!({ "job_id": { "type": "string" }, "project": project }),
                &["job_id"],
            ),
        ),
        tool(
            "cancel_job",
            "Cancel one of your jobs (or its wait for approval).",
            schema(
                json!({ "job_id": { "type": "string" }, "project": project }),
                &["job_id"],
            ),
        ),
    ]
}
