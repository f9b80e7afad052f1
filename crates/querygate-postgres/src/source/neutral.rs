//! Neutral calls on a postgres source: what fronts that speak no PostgreSQL (the MCP
//! tools) ask for — a statement's first rows (or, for a dry run, only its columns), the
//! catalog's schemas, a schema's tables, one table with its columns — each run on a
//! connection of its own with the gateway's credential (`search_path` `public`, as the
//! statement was analyzed), and read back as a neutral [`Answer`] with typed values.

use bytes::BytesMut;
use pgwire::messages::data::RowDescription;
use pgwire::messages::extendedquery::{Bind, Describe, Execute, Parse};
use querygate_core::{Action, Catalog, Denial, DenialKind, Fault};
use querygate_pipeline::{Answer, Column, Paging, ResultSet, SchemaInfo, TableInfo};
use serde_json::Value;

use super::{BYTEA, Expect, PgCall, PgReply, PostgresSource, Purpose, encode, fields};

/// The schema unqualified names resolve in on a neutral call's connection.
pub const SCHEMA: &str = "public";

/// What a neutral call asks a postgres source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Neutral {
    /// A statement's first `max_rows` rows; a dry run prepares it and reads only its
    /// columns. `keyed`: the masking rewrite binds the hash key as `$1`.
    Query {
        sql: String,
        dry_run: bool,
        max_rows: u64,
        keyed: bool,
    },
    /// The database's schemas (without PostgreSQL's own).
    Schemas,
    /// The tables, views and foreign tables of one schema (`database.schema`).
    Tables { schema: String },
    /// One schema (`database.schema`).
    Schema { schema: String },
    /// One table and its columns (`database.schema.table`).
    Table { table: String },
}

/// The rows a neutral query returns when the front sets no limit.
const DEFAULT_ROWS: u64 = 1000;

/// A postgres source's call for a neutral action.
pub(crate) fn call_for(action: &Action, paging: &Paging) -> Result<PgCall, Denial> {
    let invalid = |message: &str| Err(Denial::new(DenialKind::Invalid, message.to_string()));
    let neutral = match action {
        Action::Query(query) => {
            if super::highest_parameter(&query.statement) > 0 {
                return invalid(
                    "this statement names a parameter ($1, …), and none can be bound here: \
                     write the values into the statement",
                );
            }
            Neutral::Query {
                sql: query.statement.clone(),
                dry_run: query.dry_run,
                max_rows: paging.max_rows.unwrap_or(DEFAULT_ROWS),
                keyed: false,
            }
        }
        Action::Catalog { object, .. } => match object {
            Catalog::Schemas => Neutral::Schemas,
            Catalog::Tables { schema } => Neutral::Tables {
                schema: schema.clone(),
            },
            Catalog::Schema { schema } => Neutral::Schema {
                schema: schema.clone(),
            },
            Catalog::Table { table } => Neutral::Table {
                table: table.clone(),
            },
        },
        // Its only jobs are statements held for approval, which the pipeline answers and
        // runs from their tickets; any other job id is not the caller's, and refused.
        Action::Job(_) => return Ok(PgCall::Refused),
        Action::ReadTable { .. } => {
            return invalid("read a PostgreSQL table with a SELECT (execute_sql)");
        }
        Action::Other { .. } | Action::Malformed { .. } => return Ok(PgCall::Refused),
    };
    Ok(PgCall::Neutral(neutral))
}

impl PostgresSource {
    /// Runs a neutral call on a connection of its own.
    pub(crate) async fn neutral(&self, call: Neutral) -> Result<PgReply, Fault> {
        let answer = match call {
            Neutral::Query {
                sql,
                dry_run,
                max_rows,
                keyed,
            } => return self.neutral_query(&sql, dry_run, max_rows, keyed).await,
            Neutral::Schemas => Answer::Names(first_column(
                self.lookup(
                    "SELECT nspname FROM pg_catalog.pg_namespace WHERE nspname !~ '^pg_' \
                     AND nspname <> 'information_schema' ORDER BY 1",
                    &[],
                )
                .await?,
            )),
            Neutral::Tables { schema } => Answer::Names(first_column(
                self.lookup(
                    "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n \
                     ON n.oid = c.relnamespace WHERE n.nspname = $1 \
                     AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1",
                    &[last_part(&schema)],
                )
                .await?,
            )),
            Neutral::Schema { schema } => {
                let name = last_part(&schema);
                let rows = self
                    .lookup(
                        "SELECT nspname, pg_catalog.obj_description(oid, 'pg_namespace') \
                         FROM pg_catalog.pg_namespace WHERE nspname = $1",
                        &[name],
                    )
                    .await?;
                match rows.into_iter().next() {
                    Some(row) => Answer::Schema(SchemaInfo {
                        name: name.to_string(),
                        location: None,
                        description: row.into_iter().nth(1).flatten(),
                    }),
                    None => not_found(&format!("schema {name}")),
                }
            }
            Neutral::Table { table } => {
                let parts: Vec<&str> = table.split('.').collect();
                let [_, schema, name] = parts[..] else {
                    return Ok(PgReply::neutral(not_found(&table)));
                };
                let relation = format!(
                    "{}.{}",
                    super::quote_ident(schema),
                    super::quote_ident(name)
                );
                let rows = self
                    .lookup(
                        "SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN \
                         'MATERIALIZED VIEW' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END, \
                         GREATEST(c.reltuples, 0)::bigint, \
                         pg_catalog.obj_description(c.oid, 'pg_class') \
                         FROM pg_catalog.pg_class c WHERE c.oid = pg_catalog.to_regclass($1)",
                        &[&relation],
                    )
                    .await?;
                match rows.into_iter().next() {
                    Some(row) => {
                        let mut row = row.into_iter();
                        let kind = row.next().flatten();
                        let count = row.next().flatten().and_then(|n| n.parse().ok());
                        let description = row.next().flatten();
                        let columns = querygate_pipeline::Source::columns(self, &table).await?;
                        Answer::Table(TableInfo {
                            name: name.to_string(),
                            kind,
                            columns,
                            rows: count,
                            description,
                        })
                    }
                    None => not_found(&format!("table {schema}.{name}")),
                }
            }
        };
        Ok(PgReply::neutral(answer))
    }

    /// A statement through the extended protocol: parsed (with the hash key's type when
    /// the rewrite binds it), described, and executed for at most `max_rows` rows.
    async fn neutral_query(
        &self,
        sql: &str,
        dry_run: bool,
        max_rows: u64,
        keyed: bool,
    ) -> Result<PgReply, Fault> {
        let settings = [
            ("client_encoding".to_string(), "UTF8".to_string()),
            ("search_path".to_string(), SCHEMA.to_string()),
            ("application_name".to_string(), "querygate".to_string()),
        ];
        let mut frames = BytesMut::new();
        let types = if keyed { vec![BYTEA] } else { Vec::new() };
        encode(&mut frames, Parse::new(None, sql.to_string(), types))?;
        let expect = if dry_run {
            encode(&mut frames, Describe::new(b'S', None))?;
            vec![Expect::One, Expect::Statement, Expect::Ready]
        } else {
            let (formats, parameters) = if keyed {
                let key = self.key_bytes().ok_or_else(|| {
                    Fault::gateway(
                        "a masked column uses the hash strategy, and this gateway has no \
                         masking key",
                    )
                })?;
                (vec![1], vec![Some(key)])
            } else {
                (Vec::new(), Vec::new())
            };
            encode(
                &mut frames,
                Bind::new(None, None, formats, parameters, Vec::new()),
            )?;
            encode(&mut frames, Describe::new(b'P', None))?;
            let limit = i32::try_from(max_rows.max(1)).unwrap_or(i32::MAX);
            encode(&mut frames, Execute::new(None, limit))?;
            vec![
                Expect::One,
                Expect::One,
                Expect::Portal,
                Expect::Execute,
                Expect::Ready,
            ]
        };
        frames.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        let reply = self
            .on_session(Purpose::Neutral, &settings, frames, &expect)
            .await?;
        if let Some(message) = reply.error.clone() {
            return Ok(PgReply::neutral(Answer::Error { message }));
        }
        Ok(PgReply::neutral(Answer::Rows(result_set(&reply.frames))))
    }
}

/// The rows and columns of a neutral query's answers, typed by their type OIDs.
fn result_set(frames: &[BytesMut]) -> ResultSet {
    let mut types = Vec::new();
    let mut set = ResultSet::default();
    let mut suspended = false;
    for frame in frames {
        match frame[0] {
            b'T' => {
                if let Some(d) = crate::decode::decode_as::<RowDescription>(frame) {
                    types = d.fields.iter().map(|f| f.type_id).collect();
                    set.columns = d
                        .fields
                        .into_iter()
                        .map(|f| Column {
                            name: f.name,
                            data_type: type_name(f.type_id),
                            repeated: false,
                        })
                        .collect();
                }
            }
            b'D' => {
                let row = fields(frame)
                    .unwrap_or_default()
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| value(types.get(i).copied().unwrap_or(0), v))
                    .collect();
                set.rows.push(row);
            }
            b's' => suspended = true,
            _ => {}
        }
    }
    // A suspended portal has more rows than were asked for: the total is unknown.
    set.total_rows = (!suspended).then_some(set.rows.len() as u64);
    set
}

/// A text-format value as JSON: booleans, integers that fit a double and floats as
/// numbers, JSON as itself, everything else (numeric included, to keep its digits) as text.
fn value(type_oid: u32, v: Option<&[u8]>) -> Value {
    let Some(bytes) = v else {
        return Value::Null;
    };
    let text = String::from_utf8_lossy(bytes);
    match type_oid {
        16 => Value::Bool(text == "t"),
        20 | 21 | 23 | 26 => match text.parse::<i64>() {
            Ok(n) if n.unsigned_abs() <= 1 << 53 => Value::from(n),
            _ => Value::String(text.into_owned()),
        },
        700 | 701 => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(text.to_string()), Value::Number),
        114 | 3802 => {
            serde_json::from_str(&text).unwrap_or_else(|_| Value::String(text.into_owned()))
        }
        _ => Value::String(text.into_owned()),
    }
}

/// PostgreSQL's name of a common type; others by their OID.
fn type_name(oid: u32) -> String {
    match oid {
        16 => "boolean",
        17 => "bytea",
        18 => "char",
        19 => "name",
        20 => "bigint",
        21 => "smallint",
        23 => "integer",
        25 => "text",
        26 => "oid",
        114 => "json",
        700 => "real",
        701 => "double precision",
        1042 => "character",
        1043 => "character varying",
        1082 => "date",
        1083 => "time without time zone",
        1114 => "timestamp without time zone",
        1184 => "timestamp with time zone",
        1186 => "interval",
        1700 => "numeric",
        2950 => "uuid",
        3802 => "jsonb",
        _ => return format!("type {oid}"),
    }
    .to_string()
}

fn first_column(rows: Vec<Vec<Option<String>>>) -> Vec<String> {
    rows.into_iter()
        .filter_map(|row| row.into_iter().next().flatten())
        .collect()
}

/// The schema of `database.schema`.
fn last_part(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn not_found(what: &str) -> Answer {
    Answer::Error {
        message: format!("Not found: {what}"),
    }
}

impl PgReply {
    /// A reply that carries a neutral answer.
    pub(crate) fn neutral(answer: Answer) -> PgReply {
        let rows = match &answer {
            Answer::Rows(set) => set.rows.len() as u64,
            _ => 0,
        };
        let error = match &answer {
            Answer::Error { message } => Some(message.clone()),
            _ => None,
        };
        PgReply {
            status: b'I',
            rows,
            error,
            neutral: Some(answer),
            ..PgReply::default()
        }
    }
}

/// A neutral answer as JSON, for the session recording.
pub(crate) fn body(answer: &Answer) -> String {
    let value = match answer {
        Answer::Rows(set) => serde_json::json!({
            "columns": set.columns.iter().map(|c| &c.name).collect::<Vec<_>>(),
            "rows": set.rows,
        }),
        Answer::Names(names) => serde_json::json!({ "names": names }),
        Answer::Schema(info) => serde_json::json!({ "schema": info.name }),
        Answer::Table(info) => serde_json::json!({
            "table": info.name,
            "columns": info.columns.iter().map(|c| &c.name).collect::<Vec<_>>(),
        }),
        Answer::Error { message } => serde_json::json!({ "error": message }),
        Answer::Running { job_id } => serde_json::json!({ "running": job_id }),
        Answer::Jobs(jobs) => serde_json::json!({ "jobs": jobs.len() }),
    };
    value.to_string()
}

#[cfg(test)]
mod tests {
    use bytes::{BufMut, BytesMut};
    use querygate_core::{Action, Catalog, JobOp, Query};
    use querygate_pipeline::{Answer, Paging, Reply, Scope};
    use serde_json::json;

    use super::*;
    use crate::tests::{row, typed};

    fn description(columns: &[(&str, u32)]) -> BytesMut {
        let mut body = BytesMut::new();
        body.put_i16(columns.len() as i16);
        for (name, oid) in columns {
            body.put_slice(name.as_bytes());
            body.put_u8(0);
            body.put_i32(0);
            body.put_i16(0);
            body.put_u32(*oid);
            body.put_i16(-1);
            body.put_i32(-1);
            body.put_i16(0);
        }
        typed(b'T', &body)
    }

    #[test]
    fn values_are_typed_by_their_type_oids() {
        let frames = vec![
            description(&[
                ("n", 23),
                ("big", 20),
                ("ok", 16),
                ("x", 701),
                ("doc", 3802),
                ("amount", 1700),
                ("name", 25),
            ]),
            row(&[
                Some("7"),
                Some("9007199254740993"),
                Some("t"),
                Some("1.5"),
                Some(r#"{"a":1}"#),
                Some("9.50"),
                None,
            ]),
            typed(b's', b""),
        ];
        let set = result_set(&frames);
        assert_eq!(
            set.rows,
            vec![vec![
                json!(7),
                json!("9007199254740993"),
                json!(true),
                json!(1.5),
                json!({"a": 1}),
                json!("9.50"),
                serde_json::Value::Null,
            ]]
        );
        assert_eq!(set.columns[3].data_type, "double precision");
        assert_eq!(set.total_rows, None, "a suspended portal has more rows");
    }

    #[test]
    fn neutral_actions_become_calls_and_jobs_are_never_forwarded() {
        let paging = Paging {
            max_rows: Some(5),
            ..Paging::default()
        };
        let query = Action::Query(Query::new("SELECT 1"));
        assert!(matches!(
            call_for(&query, &paging),
            Ok(PgCall::Neutral(Neutral::Query { max_rows: 5, .. }))
        ));
        let parameter = Action::Query(Query::new("SELECT $1"));
        assert!(call_for(&parameter, &paging).is_err());
        let tables = Action::Catalog {
            object: Catalog::Tables {
                schema: "db.public".into(),
            },
            hidden: false,
        };
        assert!(matches!(
            call_for(&tables, &paging),
            Ok(PgCall::Neutral(Neutral::Tables { .. }))
        ));
        let job = Action::Job(JobOp::Get {
            job_id: "pg-1".into(),
        });
        assert!(matches!(call_for(&job, &paging), Ok(PgCall::Refused)));
    }

    #[test]
    fn a_listing_keeps_only_what_the_scope_shows_and_errors_can_be_withheld() {
        let mut names = PgReply::neutral(Answer::Names(vec!["public".into(), "hr".into()]));
        names.restrict(&Scope {
            hidden: ["hr".to_string()].into_iter().collect(),
            ..Scope::default()
        });
        assert_eq!(names.answer(), Answer::Names(vec!["public".into()]));
        let mut failed = PgReply::neutral(Answer::Error {
            message: "22012: division by zero near 123-45-6789".into(),
        });
        assert!(failed.withhold_errors("it reads masked columns"));
        let Answer::Error { message } = failed.answer() else {
            panic!("an error");
        };
        assert!(
            message.contains("22012") && !message.contains("6789"),
            "{message}"
        );
        assert_eq!(failed.summary().sqlstate.as_deref(), Some("22012"));
    }
}
