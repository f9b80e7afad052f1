//! Rendering: a pipeline outcome → an MCP tool result. Pure.
//!
//! Results carry `structuredContent` (the shapes of Google's BigQuery MCP server) and a
//! readable text version in `content`. Denials, failures and the source's own errors are
//! tool results with `isError: true` and a message the agent can act on; protocol-level
//! errors are reserved for protocol faults. A request an approval holds answers at once
//! with `"state": "PENDING"`, the job, the ticket and its approvers. A dry run answers
//! with the estimate and the decision a real run would get (`allow`/`deny`/`approve` and
//! the rule); a table's description says, per column, whether it is masked for the caller
//! and how.

use querygate_core::{DenialKind, Fault, StatusCodes};
use querygate_pipeline::{Answer, Explanation, Outcome, Reply, ResultSet, Waiting};
use rmcp::model::{CallToolResult, ContentBlock};
use serde_json::{Map, Value, json};

/// How the MCP front numbers its answers in the audit log and session recordings. Every
/// tool result travels in an HTTP 200; the records keep the numbers the REST fronts use for
/// the same outcome, so a search by status reads the same across fronts.
#[derive(Debug)]
pub struct Codes;

/// The MCP front's [`StatusCodes`].
pub static CODES: Codes = Codes;

impl StatusCodes for Codes {
    fn denied(&self, kind: DenialKind) -> u16 {
        match kind {
            DenialKind::Unauthenticated => 401,
            DenialKind::Forbidden => 403,
            DenialKind::NotFound => 404,
            DenialKind::Invalid => 400,
            DenialKind::TooLarge => 413,
            DenialKind::Conflict => 409,
            DenialKind::Unavailable => 503,
        }
    }

    fn failed(&self, fault: &Fault) -> u16 {
        if fault.retryable { 502 } else { 500 }
    }

    fn done(&self) -> u16 {
        200
    }

    fn waiting(&self) -> u16 {
        200
    }
}

/// The result of a call of `tool`, with what the pipeline decided about it (`dry_run`:
/// the call was a dry run, which answers with the decision).
pub fn render<R: Reply>(
    tool: &str,
    outcome: Outcome<R>,
    explanation: &Explanation,
    dry_run: bool,
) -> CallToolResult {
    match outcome {
        Outcome::Done(reply) => match reply.answer() {
            Answer::Rows(set) if dry_run => dry(&set, explanation),
            Answer::Table(info) => table_info(&info, explanation),
            other => answer(tool, other),
        },
        Outcome::Denied(denial) if dry_run => {
            let mut result = CallToolResult::structured_error(json!({
                "dry_run": true,
                "decision": decision(explanation),
                "message": denial.message,
            }));
            result.content = vec![ContentBlock::text(denial.message)];
            result
        }
        Outcome::Denied(denial) => error(&denial.message),
        Outcome::Failed(fault) => error(&fault.message),
        Outcome::Waiting(w) => waiting(&w),
    }
}

/// `{"verdict", "rule", "approvers"?}`: what the rules say of the statement.
fn decision(e: &Explanation) -> Value {
    let mut value = json!({
        "verdict": e.verdict.unwrap_or("deny"),
        "rule": e.rule,
    });
    if !e.approvers.is_empty() {
        value["approvers"] = json!(e.approvers);
    }
    value
}

/// A dry run: the estimate, the result's schema, and the decision a real run would get.
fn dry(set: &ResultSet, e: &Explanation) -> CallToolResult {
    let verdict = e.verdict.unwrap_or("allow");
    let rule = e
        .rule
        .as_deref()
        .map(|r| format!(" (rule {r:?})"))
        .unwrap_or_default();
    let then = match verdict {
        "approve" => format!(
            "; a real run waits for approval by {}",
            e.approvers.join(" or ")
        ),
        _ => String::new(),
    };
    let bytes = set
        .bytes_processed
        .map_or_else(|| "an unknown number of".to_string(), |b| b.to_string());
    let text =
        format!("Dry run: the query would process {bytes} bytes; decision: {verdict}{rule}{then}");
    structured(
        json!({
            "dry_run": true,
            "bytes_processed": set.bytes_processed,
            "schema": set.columns.iter().map(|c| json!({ "name": c.name, "type": c.data_type })).collect::<Vec<_>>(),
            "decision": decision(e),
        }),
        text,
    )
}

/// A table's description, each column with whether (and how) it is masked for the caller.
fn table_info(info: &querygate_pipeline::TableInfo, e: &Explanation) -> CallToolResult {
    let mask = |name: &str| {
        e.masks
            .iter()
            .find(|m| m.column.name == name)
            .and_then(|m| m.strategy)
            .map(|s| s.name())
    };
    let schema: Vec<Value> = info
        .columns
        .iter()
        .map(|c| {
            let mut column = json!({
                "name": c.name,
                "type": c.data_type,
                "mode": if c.repeated { "REPEATED" } else { "NULLABLE" },
                "masked": mask(&c.name).is_some(),
            });
            if let Some(how) = mask(&c.name) {
                column["mask"] = json!(how);
            }
            column
        })
        .collect();
    let text = info
        .columns
        .iter()
        .map(|c| match mask(&c.name) {
            Some(how) => format!("{} {} (masked for you: {how})", c.name, c.data_type),
            None => format!("{} {}", c.name, c.data_type),
        })
        .collect::<Vec<_>>()
        .join("\n");
    structured(
        json!({
            "table_id": info.name,
            "type": info.kind,
            "num_rows": info.rows,
            "description": info.description,
            "schema": schema,
        }),
        format!("{}\n{text}", info.name),
    )
}

fn error(message: &str) -> CallToolResult {
    CallToolResult::error(vec![ContentBlock::text(message.to_string())])
}

fn structured(value: Value, text: String) -> CallToolResult {
    let mut result = CallToolResult::structured(value);
    result.content = vec![ContentBlock::text(text)];
    result
}

fn answer(tool: &str, answer: Answer) -> CallToolResult {
    match answer {
        Answer::Error { message } => error(&message),
        Answer::Rows(set) => rows(&set),
        Answer::Running { job_id } => {
            let job = job_id.unwrap_or_default();
            let message = format!(
                "the query is still running; call get_query_results with job_id {job} to wait for its rows"
            );
            structured(
                json!({ "state": "RUNNING", "job_id": job, "message": message }),
                message,
            )
        }
        Answer::Names(names) => {
            let key = if tool == "list_dataset_ids" {
                "dataset_ids"
            } else {
                "table_ids"
            };
            let text = names.join("\n");
            structured(json!({ key: names }), text)
        }
        Answer::Schema(info) => {
            let value = json!({
                "dataset_id": info.name,
                "location": info.location,
                "description": info.description,
            });
            let text = value.to_string();
            structured(value, text)
        }
        Answer::Table(info) => table_info(&info, &Explanation::default()),
        Answer::Jobs(jobs) => {
            let list: Vec<Value> = jobs
                .iter()
                .map(|j| {
                    json!({ "job_id": j.job_id, "state": j.state, "error": j.error, "statement": j.statement })
                })
                .collect();
            let value = match list.as_slice() {
                [one] => one.clone(),
                _ => json!({ "jobs": list }),
            };
            let text = value.to_string();
            structured(value, text)
        }
    }
}

/// A page of rows: each row an object keyed by column name, and a text table.
fn rows(set: &ResultSet) -> CallToolResult {
    let names: Vec<&str> = set.columns.iter().map(|c| c.name.as_str()).collect();
    let objects: Vec<Value> = set
        .rows
        .iter()
        .map(|row| {
            let mut object = Map::new();
            for (i, value) in row.iter().enumerate() {
                let name = names
                    .get(i)
                    .map_or_else(|| format!("f{i}"), |n| n.to_string());
                object.insert(name, value.clone());
            }
            Value::Object(object)
        })
        .collect();
    let mut value = json!({
        "job_id": set.job_id,
        "schema": set.columns.iter().map(|c| json!({ "name": c.name, "type": c.data_type })).collect::<Vec<_>>(),
        "rows": objects,
        "total_rows": set.total_rows,
        "bytes_processed": set.bytes_processed,
    });
    if let Some(token) = &set.page_token {
        value["page_token"] = json!(token);
    }
    structured(value, table(&names, &set.rows, set.page_token.is_some()))
}

/// A text table: a header line, one line per row, cells separated by ` | `.
fn table(names: &[&str], rows: &[Vec<Value>], more: bool) -> String {
    let cell = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "NULL".to_string(),
        other => other.to_string(),
    };
    let mut out = names.join(" | ");
    for row in rows {
        out.push('\n');
        out.push_str(&row.iter().map(cell).collect::<Vec<_>>().join(" | "));
    }
    out.push_str(&format!("\n({} rows", rows.len()));
    out.push_str(if more {
        "; more with get_query_results and the page_token)"
    } else {
        ")"
    });
    out
}

/// A call an approval holds (or ended): the job, the ticket, who may approve, and what to do.
fn waiting(w: &Waiting) -> CallToolResult {
    let t = &w.ticket;
    if let Some(ended) = &w.ended {
        return error(ended);
    }
    let message = format!(
        "{} — waiting for approval (ticket {}) by {}; call get_query_results with job_id {} \
         to wait for the rows",
        t.message,
        t.id,
        t.approvers.join(" or "),
        t.job_id
    );
    structured(
        json!({
            "state": "PENDING",
            "job_id": t.job_id,
            "ticket": t.id,
            "approvers": t.approvers,
            "message": message,
        }),
        message,
    )
}
