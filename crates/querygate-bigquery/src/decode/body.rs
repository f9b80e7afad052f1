//! Request bodies, read exactly as BigQuery's REST API defines them.
//!
//! The gateway decides on the job BigQuery will run, so a body is read field by field
//! against the API's own definitions (`QueryRequest` for jobs.query; `Job`,
//! `JobConfiguration` and `JobConfigurationQuery` for jobs.insert), with explicit lists:
//!
//! - a field BigQuery does not define there is refused (400, naming the field): the
//!   gateway cannot know what an upstream makes of it, and Google's front ends accept a
//!   field's `snake_case` name as well, which the gateway would otherwise not read;
//! - a field BigQuery defines but that changes what the query reads or where its results
//!   live, and that the gateway does not analyse (external tables defined in the request,
//!   UDF resources, sessions and connection properties, continuous queries), is refused as
//!   not allowed (`Action::Other`);
//! - a key given twice anywhere in the body is refused (which one a server keeps differs);
//! - `dryRun` is read only where BigQuery reads it: `configuration.dryRun` (jobs.insert) and
//!   the top-level `dryRun` (jobs.query).
//!
//! Options the Node client leaves in `configuration.query` although BigQuery does not
//! define them there (`types`, `wrapIntegers`, `dryRun: false`, …; BigQuery ignores them)
//! are removed before the body is forwarded.

use std::fmt;

use querygate_core::{Action, Query};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

use super::wire::camel;

/// Parses a JSON body, refusing a key given twice in any object.
pub(super) fn parse(bytes: &[u8]) -> Result<Value, String> {
    match serde_json::from_slice::<Strict>(bytes) {
        Ok(Strict(v @ Value::Object(_))) => Ok(v),
        Ok(_) => Err("Invalid JSON payload received: expected a JSON object".into()),
        Err(e) => Err(format!("Invalid JSON payload received: {e}")),
    }
}

/// A JSON value whose objects hold each key once.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Strict, D::Error> {
        d.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Number::from_f64(v)
            .map(Value::Number)
            .ok_or_else(|| E::custom("a number JSON cannot hold"))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if obj.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key `{}` is given twice; send each field once",
                    key.escape_debug()
                )));
            }
            let Strict(v) = map.next_value()?;
            obj.insert(key, v);
        }
        Ok(Value::Object(obj))
    }
}

/// `QueryRequest` (jobs.query): every field BigQuery defines.
const QUERY_REQUEST: &[&str] = &[
    "arrowSerializationOptions",
    "connectionProperties",
    "continuous",
    "createSession",
    "defaultDataset",
    "destinationEncryptionConfiguration",
    "dryRun",
    "formatOptions",
    "jobCreationMode",
    "jobTimeoutMs",
    "kind",
    "labels",
    "location",
    "maxResults",
    "maxSlots",
    "maximumBytesBilled",
    "parameterMode",
    "preserveNulls",
    "query",
    "queryParameters",
    "queryResultsFormat",
    "requestId",
    "reservation",
    "timeoutMs",
    "useLegacySql",
    "useQueryCache",
    "writeIncrementalResults",
];

/// `Job` (jobs.insert) fields a client sets.
const JOB: &[&str] = &["configuration", "jobReference", "kind"];

/// `Job` fields only BigQuery sets.
const JOB_OUTPUT_ONLY: &[&str] = &[
    "etag",
    "id",
    "jobCreationReason",
    "principal_subject",
    "selfLink",
    "statistics",
    "status",
    "user_email",
];

/// `JobConfiguration`: every field BigQuery defines (`jobType` is output only and ignored).
const JOB_CONFIGURATION: &[&str] = &[
    "copy",
    "dryRun",
    "extract",
    "jobTimeoutMs",
    "jobType",
    "labels",
    "load",
    "maxSlots",
    "query",
    "reservation",
];

/// The job kinds of a `JobConfiguration`, of which BigQuery takes exactly one.
const JOB_KINDS: &[&str] = &["query", "load", "copy", "extract"];

/// `JobConfigurationQuery`: the fields BigQuery defines that a client sets.
const JOB_CONFIGURATION_QUERY: &[&str] = &[
    "allowLargeResults",
    "clustering",
    "connectionProperties",
    "continuous",
    "createDisposition",
    "createSession",
    "defaultDataset",
    "destinationEncryptionConfiguration",
    "destinationTable",
    "flattenResults",
    "maximumBillingTier",
    "maximumBytesBilled",
    "parameterMode",
    "preserveNulls",
    "priority",
    "query",
    "queryParameters",
    "rangePartitioning",
    "schemaUpdateOptions",
    "scriptOptions",
    "tableDefinitions",
    "timePartitioning",
    "useLegacySql",
    "useQueryCache",
    "userDefinedFunctionResources",
    "writeDisposition",
    "writeIncrementalResults",
];

/// `JobConfigurationQuery` fields only BigQuery sets.
const JOB_CONFIGURATION_QUERY_OUTPUT_ONLY: &[&str] = &["systemVariables"];

/// Options the Node client leaves in `configuration.query` (its `createQueryJob` copies
/// every option it does not move elsewhere: its own options, jobs.query's, and `jobId`,
/// `location`, `reservation`, `jobTimeoutMs`, `jobPrefix` when it did not move them);
/// BigQuery does not define them there and ignores them.
const NODE_LEFTOVERS: &[&str] = &[
    "autoPaginate",
    "jobCreationMode",
    "jobId",
    "jobPrefix",
    "jobTimeoutMs",
    "location",
    "maxApiCalls",
    "maxResults",
    "pageToken",
    "parseJSON",
    "reservation",
    "skipParsing",
    "startIndex",
    "timeoutMs",
    "types",
    "wrapIntegers",
];

/// Options the Node client moves out of `configuration.query` when set, and leaves there
/// when unset (`dryRun: false`): removed when unset, refused when set (BigQuery would not
/// read them there).
const NODE_LEFTOVERS_WHEN_UNSET: &[&str] = &["dryRun", "labels"];

/// Whether a `configuration.query` field is one the Node client left behind.
fn node_leftover(name: &str, value: &Value) -> bool {
    NODE_LEFTOVERS.contains(&name) || (NODE_LEFTOVERS_WHEN_UNSET.contains(&name) && unset(value))
}

/// JavaScript's falsy JSON values.
fn unset(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(false) => true,
        Value::String(s) => s.is_empty(),
        Value::Number(n) => n.as_f64() == Some(0.0),
        _ => false,
    }
}

/// `ScriptOptions`.
const SCRIPT_OPTIONS: &[&str] = &[
    "keyResultStatement",
    "statementByteBudget",
    "statementTimeoutMs",
];

/// `JobReference`.
const JOB_REFERENCE: &[&str] = &["jobId", "location", "projectId"];

/// `DatasetReference`, in the order of a dotted name.
const DATASET_REFERENCE: &[&str] = &["projectId", "datasetId"];

/// `TableReference`, in the order of a dotted name.
const TABLE_REFERENCE: &[&str] = &["projectId", "datasetId", "tableId"];

/// Fields BigQuery defines that change what a query reads, or keep state past the request,
/// and that the gateway does not analyse: refused as not allowed while set.
const UNANALYSED: &[(&str, &str)] = &[
    (
        "tableDefinitions",
        "`tableDefinitions` (external tables defined in the request, which the statement \
         then reads)",
    ),
    (
        "userDefinedFunctionResources",
        "`userDefinedFunctionResources` (function code loaded into the query)",
    ),
    (
        "connectionProperties",
        "`connectionProperties` (sessions and connection settings, which change how the \
         statement's names resolve)",
    ),
    (
        "createSession",
        "`createSession` (sessions, whose temporary tables and variables outlive the request)",
    ),
    ("continuous", "`continuous` (continuous queries)"),
];

/// A field's value, unless absent or `null` (which BigQuery reads as absent).
fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).filter(|v| !v.is_null())
}

/// Refuses fields of `obj` not in `known`, and those only BigQuery sets.
fn known_fields(
    obj: &Map<String, Value>,
    at: &str,
    known: &[&str],
    output_only: &[&str],
) -> Result<(), String> {
    for key in obj.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        let name = format!("{at}{}", key.escape_debug());
        if output_only.contains(&key.as_str()) {
            return Err(format!(
                "Invalid request: `{name}` is output only (BigQuery sets it); remove it"
            ));
        }
        let hint = if key == "dryRun" {
            " (a dry run is `configuration.dryRun` in jobs.insert, `dryRun` in jobs.query)"
                .to_string()
        } else if key.contains('_') && known.contains(&camel(key).as_str()) {
            format!(" (BigQuery's JSON names this field `{at}{}`)", camel(key))
        } else {
            String::new()
        };
        return Err(format!(
            "Invalid request: querygate does not recognise `{name}`; remove it{hint}"
        ));
    }
    Ok(())
}

/// An object field, or `Err` when it is set to something else.
fn object<'a>(
    obj: &'a Map<String, Value>,
    at: &str,
    name: &str,
) -> Result<Option<&'a Map<String, Value>>, String> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(_) => Err(format!("Invalid request: `{at}{name}` must be an object")),
    }
}

/// A boolean field, or `Err` when it is set to something else.
fn flag(obj: &Map<String, Value>, at: &str, name: &str) -> Result<Option<bool>, String> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(format!(
            "Invalid request: `{at}{name}` must be true or false"
        )),
    }
}

/// A string field, or `Err` when it is set to something else.
fn text<'a>(obj: &'a Map<String, Value>, at: &str, name: &str) -> Result<Option<&'a str>, String> {
    match field(obj, name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("Invalid request: `{at}{name}` must be a string")),
    }
}

/// A reference object (`DatasetReference`, `TableReference`): its string fields, in the
/// order of `fields`.
fn reference(
    obj: &Map<String, Value>,
    at: &str,
    name: &str,
    fields: &[&str],
) -> Result<Option<Vec<String>>, String> {
    let Some(r) = object(obj, at, name)? else {
        return Ok(None);
    };
    let inner = format!("{at}{name}.");
    known_fields(r, &inner, fields, &[])?;
    fields
        .iter()
        .map(|f| Ok(text(r, &inner, f)?.unwrap_or("").to_string()))
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

/// The first field of `UNANALYSED` that is set, as what the refusal names.
fn unanalysed(obj: &Map<String, Value>) -> Option<&'static str> {
    UNANALYSED.iter().find_map(|(name, what)| {
        let set = match field(obj, name) {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Array(a)) => !a.is_empty(),
            Some(Value::Object(o)) => !o.is_empty(),
            Some(_) => true,
        };
        set.then_some(*what)
    })
}

/// The query of a `QueryRequest` or `JobConfigurationQuery`, as the gateway decides on it.
fn query_action(q: &Map<String, Value>, at: &str, dry_run: bool) -> Result<Action, String> {
    let statement = text(q, at, "query")?
        .ok_or_else(|| format!("Invalid query request: the `{at}query` field is required"))?
        .to_string();
    let use_legacy_sql = flag(q, at, "useLegacySql")?;
    let destination =
        reference(q, at, "destinationTable", TABLE_REFERENCE)?.map(|parts| parts.join("."));
    let default_dataset =
        reference(q, at, "defaultDataset", DATASET_REFERENCE)?.and_then(|r| match r.as_slice() {
            [_, d] if d.is_empty() => None,
            [p, d] if p.is_empty() => Some(d.clone()),
            [p, d] => Some(format!("{p}.{d}")),
            _ => None,
        });
    if let Some(s) = object(q, at, "scriptOptions")? {
        known_fields(s, &format!("{at}scriptOptions."), SCRIPT_OPTIONS, &[])?;
    }
    // The REST API defaults to legacy SQL when `useLegacySql` is absent, unless the text
    // opens with `#standardSQL` (read at the very start: anything before it, the gateway
    // takes as legacy SQL, and refuses).
    let standard_marker = statement
        .as_bytes()
        .get(..12)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"#standardSQL"));
    let legacy = use_legacy_sql.unwrap_or(!standard_marker);
    Ok(Action::Query(Query {
        dialect_problem: legacy.then(|| {
            "Legacy SQL is not supported through querygate: set useLegacySql to false \
             (the client libraries do by default) and use GoogleSQL"
                .to_string()
        }),
        destination,
        default_schema: default_dataset,
        dry_run,
        statement,
    }))
}

/// jobs.query: the action, and whether the body was changed.
pub(super) fn jobs_query(body: &mut Value) -> Result<(Action, bool), String> {
    let Some(q) = body.as_object() else {
        return Err("Invalid JSON payload received: expected a JSON object".into());
    };
    // Inline Arrow batches would carry rows querygate does not read: values its detectors
    // and masking must see, and the row counts the audit log records.
    let format = text(q, "", "queryResultsFormat")?;
    if format.is_some_and(|f| !f.eq_ignore_ascii_case("json")) {
        return Err(format!(
            "queryResultsFormat {} is not served through querygate, which inspects results \
             as JSON rows; leave the option out (the client then reads JSON rows)",
            format.unwrap_or_default().escape_debug()
        ));
    }
    known_fields(q, "", QUERY_REQUEST, &[])?;
    if let Some(what) = unanalysed(q) {
        return Ok((
            Action::Other {
                what: what.to_string(),
            },
            false,
        ));
    }
    let dry_run = flag(q, "", "dryRun")?.unwrap_or(false);
    Ok((query_action(q, "", dry_run)?, false))
}

/// jobs.insert: the action, and whether the body was changed (a job id chosen, client-only
/// options removed). `job_id` is the job's id, the client's or the one chosen here.
pub(super) fn jobs_insert(
    body: &mut Value,
    project: &str,
    job_id: &mut Option<String>,
    describe_job: impl FnOnce(&Value) -> String,
) -> Result<(Action, bool), String> {
    let Some(job) = body.as_object_mut() else {
        return Err("Invalid JSON payload received: expected a JSON object".into());
    };
    known_fields(job, "", JOB, JOB_OUTPUT_ONLY)?;
    let mut changed = false;

    // The job reference: the client's job id, or one chosen so the job can be tracked.
    let reference = object(job, "", "jobReference")?;
    if let Some(r) = reference {
        known_fields(r, "jobReference.", JOB_REFERENCE, &[])?;
        text(r, "jobReference.", "location")?;
        let named_project = text(r, "jobReference.", "projectId")?;
        if let Some(p) = named_project.filter(|p| *p != project) {
            return Err(format!(
                "Invalid request: jobReference.projectId `{}` is not the project of the \
                 path (`{}`); they must be the same",
                p.escape_debug(),
                project.escape_debug()
            ));
        }
    }
    let existing = reference
        .map(|r| text(r, "jobReference.", "jobId"))
        .transpose()?
        .flatten()
        .map(str::to_string);

    let config = match job.get_mut("configuration") {
        Some(Value::Object(c)) => c,
        _ => return Err("Invalid job: the `configuration` object is required".into()),
    };
    known_fields(config, "configuration.", JOB_CONFIGURATION, &[])?;
    let kinds: Vec<&str> = JOB_KINDS
        .iter()
        .copied()
        .filter(|k| field(config, k).is_some())
        .collect();
    if kinds.len() > 1 {
        return Err(format!(
            "Invalid job: it configures {}; a job is exactly one of a query, load, copy or \
             extract job",
            kinds
                .iter()
                .map(|k| format!("`configuration.{k}`"))
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    let dry_run = flag(config, "configuration.", "dryRun")?.unwrap_or(false);
    text(config, "configuration.", "jobType")?;
    object(config, "configuration.", "labels")?;
    let action = match config.get_mut("query") {
        Some(Value::Object(q)) => {
            let before = q.len();
            q.retain(|k, v| !node_leftover(k, v));
            changed |= q.len() != before;
            let at = "configuration.query.";
            known_fields(
                q,
                at,
                JOB_CONFIGURATION_QUERY,
                JOB_CONFIGURATION_QUERY_OUTPUT_ONLY,
            )?;
            match unanalysed(q) {
                Some(what) => Action::Other {
                    what: what.to_string(),
                },
                None => query_action(q, at, dry_run)?,
            }
        }
        Some(Value::Null) | None => Action::Other {
            what: describe_job(&Value::Object(config.clone())),
        },
        Some(_) => return Err("Invalid job: `configuration.query` must be an object".into()),
    };

    let id = match existing {
        Some(id) => id,
        None => {
            let id = format!("querygate_{}", uuid::Uuid::new_v4().simple());
            let mut r = Map::new();
            if let Some(Value::Object(old)) = job.get("jobReference") {
                r.clone_from(old);
            }
            r.insert("jobId".into(), Value::String(id.clone()));
            r.entry("projectId")
                .or_insert_with(|| Value::String(project.to_string()));
            job.insert("jobReference".into(), Value::Object(r));
            changed = true;
            id
        }
    };
    *job_id = Some(id);
    Ok((action, changed))
}
