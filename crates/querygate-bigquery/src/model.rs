//! The parts of BigQuery's JSON the gateway reads or writes.
//!
//! Reading is shallow on purpose: row cells are counted, never materialized, so a
//! 10 MB page costs one pass and no per-cell allocation. Numbers arrive as JSON
//! strings (`"12345"`) and sometimes as numbers; both are accepted.

use std::fmt;

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// The fields of any BigQuery response the audit log and job table need.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseFacts {
    pub job_reference: Option<JobReference>,
    #[serde(default, deserialize_with = "count_seq")]
    pub rows: Option<u64>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub total_rows: Option<u64>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub total_bytes_processed: Option<u64>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub total_bytes_billed: Option<u64>,
    pub schema: Option<Box<RawValue>>,
    pub statistics: Option<Statistics>,
    pub configuration: Option<JobConfigurationFacts>,
    pub status: Option<JobStatus>,
    pub error: Option<ErrorBody>,
    /// jobs.query answered with errors inside an HTTP 200 (seen from emulators).
    pub errors: Option<Vec<ErrorItem>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobReference {
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub job_id: Option<String>,
    #[serde(default)]
    pub location: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Statistics {
    pub query: Option<QueryStatistics>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub total_bytes_processed: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryStatistics {
    #[serde(default, deserialize_with = "opt_u64")]
    pub total_bytes_processed: Option<u64>,
    #[serde(default, deserialize_with = "opt_u64")]
    pub total_bytes_billed: Option<u64>,
    pub schema: Option<Box<RawValue>>,
}

/// The partitioning and schema of a table resource (tables.get).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableFacts {
    pub time_partitioning: Option<PartitionSpec>,
    pub range_partitioning: Option<PartitionSpec>,
    #[serde(default)]
    pub schema: TableSchema,
    /// `VIEW`, `MATERIALIZED_VIEW`, `TABLE`, `EXTERNAL`, `SNAPSHOT`, …
    #[serde(rename = "type", default)]
    pub table_type: String,
    pub view: Option<ViewSpec>,
    pub materialized_view: Option<ViewSpec>,
}

/// A view's (or materialized view's) defining query.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ViewSpec {
    #[serde(default)]
    pub query: String,
    pub use_legacy_sql: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
pub struct TableSchema {
    #[serde(default)]
    pub fields: Vec<FieldFacts>,
}

#[derive(Debug, Default, Deserialize)]
pub struct FieldFacts {
    pub name: String,
    #[serde(rename = "type", default)]
    pub field_type: String,
    pub mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct PartitionSpec {
    pub field: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct JobConfigurationFacts {
    pub query: Option<QueryConfigFacts>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct QueryConfigFacts {
    pub destination_table: Option<TableReference>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TableReference {
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub dataset_id: String,
    #[serde(default)]
    pub table_id: String,
}

impl TableReference {
    pub fn dotted(&self) -> String {
        format!("{}.{}.{}", self.project_id, self.dataset_id, self.table_id)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JobStatus {
    pub state: Option<String>,
    pub error_result: Option<ErrorItem>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ErrorItem {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub struct ErrorBody {
    pub code: Option<u16>,
    pub message: Option<String>,
}

/// BigQuery's error envelope (the Google JSON API error model).
#[derive(Debug, Serialize)]
pub struct ErrorEnvelope {
    pub error: ErrorEnvelopeBody,
}

#[derive(Debug, Serialize)]
pub struct ErrorEnvelopeBody {
    pub code: u16,
    pub message: String,
    pub errors: Vec<ErrorItem>,
    pub status: &'static str,
}

impl ErrorEnvelope {
    pub fn new(code: u16, reason: &str, message: impl Into<String>) -> ErrorEnvelope {
        let message = message.into();
        ErrorEnvelope {
            error: ErrorEnvelopeBody {
                code,
                errors: vec![ErrorItem {
                    reason: Some(reason.to_string()),
                    message: Some(message.clone()),
                    domain: Some("global".into()),
                    location: None,
                }],
                message,
                status: grpc_status(code),
            },
        }
    }
}

/// The `status` string Google APIs pair with an HTTP code.
fn grpc_status(code: u16) -> &'static str {
    match code {
        400 | 413 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        _ => "UNKNOWN",
    }
}

fn count_seq<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Count;
    impl<'de> Visitor<'de> for Count {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array of rows")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut n = 0u64;
            while seq.next_element::<IgnoredAny>()?.is_some() {
                n += 1;
            }
            Ok(Some(n))
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Count)
}

fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct Num;
    impl<'de> Visitor<'de> for Num {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a number or a string holding one")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(u64::try_from(v).ok())
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.parse().ok())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(Num)
}

/// A JSON body as BigQuery answers it.
pub fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=UTF-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rows_and_reads_string_numbers() {
        let body = r#"{"jobReference":{"projectId":"p","jobId":"j","location":"US"},
            "rows":[{"f":[{"v":"1"}]},{"f":[{"v":"2"}]}],"totalRows":"2",
            "totalBytesProcessed":"1024","schema":{"fields":[{"name":"id","type":"INTEGER"}]}}"#;
        let f: ResponseFacts = serde_json::from_str(body).expect("parse");
        assert_eq!(f.rows, Some(2));
        assert_eq!(f.total_bytes_processed, Some(1024));
        assert_eq!(f.job_reference.and_then(|r| r.job_id).as_deref(), Some("j"));
        assert!(f.schema.expect("schema").get().contains("INTEGER"));
    }

    #[test]
    fn job_resource_facts() {
        let body = r#"{"jobReference":{"jobId":"j"},"configuration":{"query":{"query":"SELECT 1",
            "destinationTable":{"projectId":"p","datasetId":"_anon","tableId":"t1"}}},
            "status":{"state":"DONE","errorResult":{"reason":"invalidQuery","message":"bad"}},
            "statistics":{"query":{"totalBytesProcessed":"7","totalBytesBilled":"10485760"}}}"#;
        let f: ResponseFacts = serde_json::from_str(body).expect("parse");
        let dest = f
            .configuration
            .and_then(|c| c.query)
            .and_then(|q| q.destination_table);
        assert_eq!(dest.map(|d| d.dotted()).as_deref(), Some("p._anon.t1"));
        let q = f.statistics.and_then(|s| s.query).expect("stats");
        assert_eq!(
            (q.total_bytes_processed, q.total_bytes_billed),
            (Some(7), Some(10485760))
        );
        assert_eq!(
            f.status
                .and_then(|s| s.error_result)
                .and_then(|e| e.reason)
                .as_deref(),
            Some("invalidQuery")
        );
    }

    #[test]
    fn envelope_has_googles_shape() {
        let e = serde_json::to_value(ErrorEnvelope::new(403, "accessDenied", "no")).expect("json");
        assert_eq!(e["error"]["code"], 403);
        assert_eq!(e["error"]["errors"][0]["reason"], "accessDenied");
        assert_eq!(e["error"]["status"], "PERMISSION_DENIED");
    }
}
