//! The `postgres` source: an upstream PostgreSQL server, reached with the gateway's own
//! credential, one upstream session per client connection (session mode).
//!
//! A [`PgCall`] is a client's messages bound to its connection's upstream session (the
//! [`Link`]): a simple Query, or an Execute with the messages that prepared it;
//! [`PostgresSource::execute`] sends them and reads the answers each is owed
//! ([`Expect`]) into a [`PgReply`]: the frames as the server sent them (its
//! ReadyForQuery included), with what the records need (rows, the error and its SQLSTATE). Value
//! detectors run over the text of every row; errors that could echo withheld values keep
//! only their SQLSTATE.
//!
//! A reply holds up to [`STREAM_AFTER`] bytes of answers; the rest of a larger result is
//! read from the session as the client takes it ([`PgReply::more`]: scrubbed and withheld
//! alike, the request completed at its end), so memory stays flat however many rows a
//! statement returns. A statement a row limit applies to is read whole first, up to
//! [`MAX_BUFFERED`].

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use pgwire::messages::Message;
use pgwire::messages::extendedquery::{Bind, Describe, Execute as ExecuteMessage, Parse};
use querygate_core::{Action, Denial, DenialKind, Fault};
use querygate_mask::Scrubber;
use querygate_pipeline::{
    Admitted, Answer, Column, Ending, Held, Paging, Refusal, Reply, ResultSet, Resumed, Scope,
    Source, SqlDialect, Summary,
};
use querygate_policy::Partitioning;
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::upstream::{Endpoint, Upstream, error_text};

mod idle;
mod neutral;
use idle::{Idle, Purpose};
pub use neutral::Neutral;

/// The most answer bytes one statement's reply holds when it must be read whole (a row
/// limit may withhold it).
pub const MAX_BUFFERED: usize = 256 << 20;

/// The answer bytes a reply holds before it streams the rest as the client reads it.
pub const STREAM_AFTER: usize = 256 << 10;

/// A client connection's upstream session.
pub type Link = Arc<Mutex<Upstream>>;

/// A configured PostgreSQL upstream.
#[derive(Debug)]
pub struct PostgresSource {
    name: String,
    /// The database clients address (`dbname`).
    database: String,
    endpoint: Arc<Endpoint>,
    scrubber: Option<Scrubber>,
    mask_key: Option<querygate_core::Secret>,
    /// Tables' columns, looked up with the gateway's credential, kept [`SCHEMA_TTL`].
    schemas: std::sync::Mutex<HashMap<String, (Instant, Vec<Column>)>>,
    /// The gateway's own sessions between calls.
    idle: Idle,
}

/// The type OID of `bytea`, the hash key's.
const BYTEA: u32 = 17;

/// How long a table's looked-up columns are kept.
const SCHEMA_TTL: Duration = Duration::from_secs(60);

impl PostgresSource {
    pub fn new(name: String, database: String, endpoint: Endpoint) -> PostgresSource {
        PostgresSource {
            name,
            database,
            endpoint: Arc::new(endpoint),
            scrubber: None,
            mask_key: None,
            schemas: std::sync::Mutex::new(HashMap::new()),
            idle: Idle::default(),
        }
    }

    /// Sends `frames` on a session of the gateway's own: a kept one when one waits, else a
    /// new one; either is kept for the next call when it can serve one. A kept session the
    /// server has since closed fails before it answers: the gateway's own lookups
    /// ([`Purpose::Lookup`], read-only) run again on a new one; a client's statement never
    /// runs twice (the call fails, and the client may run it again).
    async fn on_session(
        &self,
        purpose: Purpose,
        settings: &[(String, String)],
        frames: BytesMut,
        expect: &[Expect],
    ) -> Result<PgReply, Fault> {
        let frames = match self.idle.take(purpose) {
            Some(mut kept) => {
                let again = (purpose == Purpose::Lookup).then(|| frames.clone());
                match exchange(&mut kept, frames, expect, false).await {
                    Ok(reply) => {
                        self.idle.put(purpose, kept).await;
                        return Ok(reply);
                    }
                    Err(fault) => {
                        kept.terminate().await;
                        again.ok_or(fault)?
                    }
                }
            }
            None => frames,
        };
        let mut upstream = crate::upstream::connect(&self.endpoint, settings).await?;
        let reply = exchange(&mut upstream, frames, expect, false).await;
        match reply {
            Ok(_) => self.idle.put(purpose, upstream).await,
            Err(_) => upstream.terminate().await,
        }
        reply
    }

    /// The hash key as a parameter value (binary `bytea`).
    pub fn key_bytes(&self) -> Option<Bytes> {
        self.mask_key
            .as_ref()
            .map(|k| Bytes::copy_from_slice(k.expose().as_bytes()))
    }

    /// The key of the `hash` masking strategy.
    pub fn with_mask_key(mut self, key: Option<querygate_core::Secret>) -> Self {
        self.mask_key = key;
        self
    }

    /// A simple Query's rewrite: its text replaced, or, when it needs the hash key, the
    /// statement sent as Parse/Bind/Describe/Execute/Sync with the key bound as `$1`.
    fn rewrite_query(
        &self,
        exchange: &mut Exchange,
        statement: &str,
        keyed: bool,
    ) -> Result<(), Denial> {
        if exchange.expect != [Expect::Ready] {
            return Err(Denial::new(
                DenialKind::Forbidden,
                "a statement reading masked columns must not follow unsynchronized \
                 extended-protocol messages; send Sync first",
            ));
        }
        let fail = |fault: Fault| Denial::new(DenialKind::Invalid, fault.message);
        let mut out = BytesMut::new();
        if !keyed {
            encode(
                &mut out,
                pgwire::messages::simplequery::Query::new(statement.to_string()),
            )
            .map_err(fail)?;
            exchange.frames = out;
            return Ok(());
        }
        if querygate_sql::analyze(statement, querygate_sql::SqlDialect::Postgres)
            .statements
            .len()
            > 1
        {
            return Err(Denial::new(
                DenialKind::Forbidden,
                "a script of several statements cannot read hash-masked columns (the key is \
                 bound as a parameter, which only one statement can take): send them one by one",
            ));
        }
        let key = self
            .mask_key
            .as_ref()
            .map(|k| Bytes::copy_from_slice(k.expose().as_bytes()));
        encode(
            &mut out,
            Parse::new(None, statement.to_string(), vec![BYTEA]),
        )
        .map_err(fail)?;
        encode(
            &mut out,
            Bind::new(None, None, vec![1], vec![key], Vec::new()),
        )
        .map_err(fail)?;
        encode(&mut out, Describe::new(b'P', None)).map_err(fail)?;
        encode(&mut out, ExecuteMessage::new(None, 0)).map_err(fail)?;
        out.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        exchange.frames = out;
        exchange.expect = vec![
            Expect::One,
            Expect::One,
            Expect::Portal,
            Expect::Execute,
            Expect::Ready,
        ];
        exchange.quiet = true;
        Ok(())
    }

    /// Runs `sql` with text `parameters` on a connection of its own (the gateway's
    /// credential, nothing of a client's session) and returns its rows as text.
    async fn lookup(
        &self,
        sql: &str,
        parameters: &[&str],
    ) -> Result<Vec<Vec<Option<String>>>, Fault> {
        let settings = [
            ("client_encoding".to_string(), "UTF8".to_string()),
            ("search_path".to_string(), "pg_catalog".to_string()),
            ("application_name".to_string(), "querygate".to_string()),
        ];
        let mut frames = BytesMut::new();
        let params = parameters
            .iter()
            .map(|p| Some(Bytes::copy_from_slice(p.as_bytes())))
            .collect();
        encode(&mut frames, Parse::new(None, sql.to_string(), Vec::new()))?;
        encode(
            &mut frames,
            Bind::new(None, None, Vec::new(), params, Vec::new()),
        )?;
        encode(&mut frames, ExecuteMessage::new(None, 0))?;
        frames.extend_from_slice(&[b'S', 0, 0, 0, 4]);
        let expect = [Expect::One, Expect::One, Expect::Execute, Expect::Ready];
        let reply = self
            .on_session(Purpose::Lookup, &settings, frames, &expect)
            .await?;
        if let Some(error) = reply.error {
            return Err(Fault::upstream(format!(
                "the upstream PostgreSQL refused querygate's catalog lookup: {error}"
            )));
        }
        Ok(reply
            .frames
            .iter()
            .filter(|f| f[0] == b'D')
            .filter_map(fields)
            .map(|row| {
                row.into_iter()
                    .map(|v| v.map(|b| String::from_utf8_lossy(b).into_owned()))
                    .collect()
            })
            .collect())
    }

    pub fn with_scrubber(mut self, scrubber: Option<Scrubber>) -> Self {
        self.scrubber = scrubber;
        self
    }

    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

/// A call on a PostgreSQL source.
#[derive(Debug)]
pub enum PgCall {
    /// Messages for the client's upstream session: a simple Query, a Parse being prepared,
    /// or an Execute with the messages that prepared it (and the Sync after it, when the
    /// client sent one), with the answers each is owed.
    Exchange(Exchange),
    /// A neutral action (an MCP tool's), on a connection of its own.
    Neutral(Neutral),
    /// What the gate refuses before anything is sent (an unknown message, a refused
    /// credential): never forwarded.
    Refused,
}

/// Messages for the client's upstream session.
#[derive(Debug)]
pub struct Exchange {
    pub link: Link,
    pub frames: BytesMut,
    pub expect: Vec<Expect>,
    /// The statement that runs (for the records): after a masking rewrite, the rewritten.
    pub sql: String,
    pub sent: Sent,
    /// The exchange is a simple Query sent as Parse/Bind/Execute (to bind the hash key):
    /// its answers are given back as a simple Query's.
    pub quiet: bool,
    /// The parameter number that carries the hash key, when the rewrite uses it.
    pub key: Option<usize>,
    /// The answers are read whole before the reply is given (a row limit may withhold
    /// them); otherwise a large result streams.
    pub whole: bool,
}

/// What the client's message in an [`Exchange`] was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sent {
    /// A simple Query (the exchange's last frame).
    Query,
    /// A Parse being prepared (the exchange's only frame).
    Parse {
        name: Option<String>,
        types: Vec<u32>,
    },
    /// An Execute of a statement parsed (and masked) as `prepared_as`, which takes
    /// `parameters` of the client's own.
    Execute {
        prepared_as: String,
        parameters: usize,
        /// The values its portal was bound with (JSON).
        bound: Option<String>,
    },
}

/// The highest `$n` in `sql` (strings and comments included: a number too high only
/// moves the key further).
pub fn highest_parameter(sql: &str) -> usize {
    let bytes = sql.as_bytes();
    let mut highest = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'$' {
            let digits = bytes[i + 1..]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .count();
            if digits > 0 {
                let n = std::str::from_utf8(&bytes[i + 1..i + 1 + digits])
                    .ok()
                    .and_then(|d| d.parse::<usize>().ok())
                    .unwrap_or(usize::MAX);
                highest = highest.max(n);
            }
            i += 1 + digits;
        } else {
            i += 1;
        }
    }
    highest
}

/// Whether `sql` names the parameter `$n` (not `$n0`).
fn names_parameter(sql: &str, n: usize) -> bool {
    let needle = format!("${n}");
    sql.match_indices(&needle).any(|(at, _)| {
        !sql[at + needle.len()..]
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit())
    })
}

impl Exchange {
    /// The parameters the client's statement takes.
    fn parameters(&self) -> usize {
        match &self.sent {
            Sent::Query => highest_parameter(&self.sql),
            Sent::Parse { types, .. } => highest_parameter(&self.sql).max(types.len()),
            Sent::Execute { parameters, .. } => *parameters,
        }
    }
}

/// The answers one message is owed, in the order the server sends them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Parse, Bind, Close: ParseComplete, BindComplete, CloseComplete.
    One,
    /// Describe of a statement: ParameterDescription, then RowDescription or NoData.
    Statement,
    /// Describe of a portal: RowDescription or NoData.
    Portal,
    /// Execute: rows up to CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// A simple Query or a Sync: everything up to ReadyForQuery.
    Ready,
}

/// The upstream's answers to one call.
#[derive(Debug, Default)]
pub struct PgReply {
    /// Every answer frame up to (not including) ReadyForQuery, as sent.
    pub frames: Vec<BytesMut>,
    /// The session's transaction status after the call (`I`, `T`, `E`).
    pub status: u8,
    pub(crate) rows: u64,
    /// The upstream's error (`SQLSTATE: message`), if it sent one.
    pub(crate) error: Option<String>,
    /// The columns of the last row description.
    pub(crate) columns: Vec<String>,
    /// The rest of a result larger than a reply holds, still to read.
    pub(crate) tail: Option<Box<Tail>>,
    /// The answer to a neutral call.
    pub(crate) neutral: Option<Answer>,
}

impl PgReply {
    /// Takes the hash key's parameter (the last) out of the ParameterDescription of each
    /// statement description `keyed` says carries it, in order.
    pub fn hide_key_parameters(&mut self, keyed: &[bool]) {
        let mut descriptions = keyed.iter();
        for frame in &mut self.frames {
            if frame[0] != b't' {
                continue;
            }
            if descriptions.next() != Some(&true) || frame.len() < 7 {
                continue;
            }
            let count = i16::from_be_bytes([frame[5], frame[6]]);
            if count < 1 || frame.len() != 7 + 4 * count as usize {
                continue;
            }
            let mut out = BytesMut::with_capacity(frame.len() - 4);
            out.put_u8(b't');
            out.put_i32(frame.len() as i32 - 1 - 4);
            out.put_i16(count - 1);
            out.extend_from_slice(&frame[7..frame.len() - 4]);
            *frame = out;
        }
    }

    /// The upstream's error (`SQLSTATE: message`), if it answered one.
    pub fn error(&self) -> Option<String> {
        self.error.clone()
    }

    /// The upstream answered with an error (the server then skips to the next Sync).
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// The next part of the rest of an open reply (see [`Reply::is_open`]) for the
    /// client, about [`STREAM_AFTER`] bytes at most: its rows scrubbed and its errors
    /// withheld as the request's [`Ending`] says. `None` once the last answer has been
    /// read; the request is then completed. An `Err` leaves the session unusable.
    pub async fn more(&mut self) -> Result<Option<BytesMut>, Fault> {
        let Some(mut tail) = self.tail.take() else {
            return Ok(None);
        };
        let mut out = BytesMut::new();
        while out.len() < STREAM_AFTER {
            let next = tail.reading.next(&mut tail.upstream, self).await?;
            tail.rows = self.rows;
            let Some((mut frame, forward)) = next else {
                if let Some(end) = tail.end.take() {
                    end.finish(self.summary());
                }
                return Ok((!out.is_empty()).then_some(out));
            };
            if let Some(end) = tail.end.as_mut() {
                match frame[0] {
                    b'D' if end.scrubs() => {
                        if let Some(row) = scrub_row(&frame, |t| end.scrub(t))? {
                            frame = row;
                        }
                    }
                    b'd' if end.scrubs() => return Err(copy_unscrubbable()),
                    b'E' => {
                        if let Some(why) = end.withholds() {
                            frame = withheld_error(&frame, why);
                        }
                    }
                    _ => {}
                }
            }
            if forward {
                out.extend_from_slice(&frame);
            }
            if tail.reading.copy_in {
                break;
            }
        }
        self.tail = Some(tail);
        Ok(Some(out))
    }

    /// Whether the server waits for the client's COPY data, or, after a COPY run by the
    /// extended protocol, for the Sync that follows it: the front relays what the client
    /// sends with [`PgReply::copy`] (a message [`PgReply::takes`] does not take ends the
    /// connection).
    pub fn wants_copy_data(&self) -> bool {
        self.tail
            .as_ref()
            .is_some_and(|t| t.reading.copy_in || t.reading.sync_after_copy)
    }

    /// Whether a client message of type `tag` may go to the server now: CopyData, CopyDone,
    /// CopyFail (and the Flush or Sync a client sends along, which the server ignores)
    /// during the COPY; after it, a Flush or the Sync that ends it. Nothing that could
    /// run a statement goes this way.
    pub fn takes(&self, tag: u8) -> bool {
        match self.tail.as_ref().map(|t| &t.reading) {
            Some(r) if r.copy_in => matches!(tag, b'd' | b'c' | b'f' | b'H' | b'S'),
            Some(r) if r.sync_after_copy => matches!(tag, b'H' | b'S'),
            _ => false,
        }
    }

    /// Relays one client message of a COPY FROM STDIN to the server.
    pub async fn copy(&mut self, frame: &[u8]) -> Result<(), Fault> {
        let tag = frame.first().copied().unwrap_or(0);
        if !self.takes(tag) {
            return Err(Fault::gateway("no COPY is waiting for this message"));
        }
        let Some(tail) = self.tail.as_mut() else {
            return Err(Fault::gateway("no COPY is waiting for data"));
        };
        match tag {
            b'c' | b'f' => tail.reading.copy_in = false,
            b'S' if !tail.reading.copy_in => tail.reading.sync_after_copy = false,
            _ => {}
        }
        tail.upstream
            .send(frame)
            .await
            .map_err(|e| Fault::upstream(format!("the upstream PostgreSQL went away: {e}")))
    }

    /// The frames as one buffer, for the client.
    pub fn bytes(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(self.frames.iter().map(|f| f.len()).sum());
        for f in &self.frames {
            out.extend_from_slice(f);
        }
        out
    }
}

/// The fields of a DataRow: `None` for NULL. `None` overall when the frame is malformed.
fn fields(frame: &BytesMut) -> Option<Vec<Option<&[u8]>>> {
    let mut body = frame.get(5..)?;
    if body.len() < 2 {
        return None;
    }
    let n = body.get_i16();
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        if body.len() < 4 {
            return None;
        }
        let len = body.get_i32();
        if len < 0 {
            out.push(None);
            continue;
        }
        let len = len as usize;
        if body.len() < len {
            return None;
        }
        out.push(Some(&body[..len]));
        body.advance(len);
    }
    body.is_empty().then_some(out)
}

fn data_row(values: &[Option<Vec<u8>>]) -> BytesMut {
    let mut out = BytesMut::new();
    out.put_u8(b'D');
    out.put_i32(0);
    out.put_i16(values.len() as i16);
    for v in values {
        match v {
            None => out.put_i32(-1),
            Some(v) => {
                out.put_i32(v.len() as i32);
                out.put_slice(v);
            }
        }
    }
    let len = (out.len() - 1) as i32;
    out[1..5].copy_from_slice(&len.to_be_bytes());
    out
}

/// The column names of a RowDescription.
fn column_names(frame: &BytesMut) -> Vec<String> {
    use pgwire::messages::data::RowDescription;
    crate::decode::decode_as::<RowDescription>(frame)
        .map(|d| d.fields.into_iter().map(|f| f.name).collect())
        .unwrap_or_default()
}

impl Reply for PgReply {
    fn summary(&self) -> Summary {
        Summary {
            status: 200,
            accepted: self.error.is_none(),
            rows: Some(self.rows),
            total_rows: Some(self.rows),
            error: self.error.clone(),
            // The upstream's errors read `SQLSTATE: message`; the gateway's own have none.
            sqlstate: match self.error.as_deref() {
                None => Some("00000".to_string()),
                Some(e) => sqlstate(e).map(str::to_string),
            },
            ..Summary::default()
        }
    }

    fn scrub(&mut self, scrubber: &Scrubber) -> Result<u64, Fault> {
        if let Some(Answer::Rows(set)) = &mut self.neutral {
            let mut rows = querygate_pipeline::Rows {
                columns: None,
                rows: std::mem::take(&mut set.rows),
            };
            let changed = querygate_pipeline::scrub_rows(&mut rows, scrubber);
            set.rows = rows.rows;
            return Ok(changed);
        }
        let mut changed = 0;
        for frame in &mut self.frames {
            match frame[0] {
                b'D' => {
                    let row = scrub_row(frame, |text| {
                        let out = scrubber.scrub(text);
                        changed += u64::from(matches!(out, std::borrow::Cow::Owned(_)));
                        out
                    })?;
                    if let Some(row) = row {
                        *frame = row;
                    }
                }
                b'd' => return Err(copy_unscrubbable()),
                _ => {}
            }
        }
        Ok(changed)
    }

    fn withhold_errors(&mut self, why: &str) -> bool {
        if let Some(Answer::Error { message }) = &mut self.neutral {
            let (code, text) = withheld(self.error.as_deref().unwrap_or(message), why);
            self.error = Some(format!("{code}: {text}"));
            *message = text;
            return true;
        }
        let mut withheld = false;
        for frame in &mut self.frames {
            if frame[0] == b'E' {
                *frame = withheld_error(frame, why);
                withheld = true;
            }
        }
        withheld
    }

    fn is_open(&self) -> bool {
        self.tail.is_some()
    }

    fn stream(&mut self, end: Ending) {
        if let Some(tail) = self.tail.as_mut() {
            tail.end = Some(end);
        }
    }

    fn restrict(&mut self, scope: &Scope) {
        if let Some(Answer::Names(names)) = &mut self.neutral {
            names.retain(|n| !scope.hidden.contains(n));
        }
    }

    fn body(&self) -> Bytes {
        match &self.neutral {
            Some(answer) => Bytes::from(neutral::body(answer)),
            None => self.bytes().freeze(),
        }
    }

    fn answer(&self) -> Answer {
        if let Some(answer) = &self.neutral {
            return answer.clone();
        }
        if let Some(message) = &self.error {
            return Answer::Error {
                message: message.clone(),
            };
        }
        let mut rows = Vec::new();
        for frame in self.frames.iter().filter(|f| f[0] == b'D') {
            let row = fields(frame)
                .unwrap_or_default()
                .into_iter()
                .map(|v| match v {
                    None => serde_json::Value::Null,
                    Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
                })
                .collect();
            rows.push(row);
        }
        Answer::Rows(ResultSet {
            columns: self
                .columns
                .iter()
                .map(|name| Column {
                    name: name.clone(),
                    data_type: "TEXT".into(),
                    repeated: false,
                })
                .collect(),
            total_rows: Some(rows.len() as u64),
            rows,
            ..ResultSet::default()
        })
    }
}

/// A DataRow with `scrub` applied to each value that is text; `None` when none changed.
fn scrub_row<'a>(
    frame: &'a BytesMut,
    mut scrub: impl FnMut(&'a str) -> std::borrow::Cow<'a, str>,
) -> Result<Option<BytesMut>, Fault> {
    let Some(cells) = fields(frame) else {
        return Err(Fault::upstream(
            "the upstream sent a row querygate cannot read",
        ));
    };
    let mut values: Vec<Option<Vec<u8>>> = Vec::with_capacity(cells.len());
    let mut changed = false;
    for cell in cells {
        values.push(cell.map(|bytes| match std::str::from_utf8(bytes) {
            Ok(text) => match scrub(text) {
                std::borrow::Cow::Owned(masked) => {
                    changed = true;
                    masked.into_bytes()
                }
                std::borrow::Cow::Borrowed(_) => bytes.to_vec(),
            },
            Err(_) => bytes.to_vec(),
        }));
    }
    Ok(changed.then(|| data_row(&values)))
}

/// The row count at the end of a CommandComplete's tag (`INSERT 0 5`, `COPY 5`); 0 when
/// it has none.
pub(crate) fn command_rows(frame: &BytesMut) -> u64 {
    let tag = frame
        .get(5..frame.len().saturating_sub(1))
        .unwrap_or_default();
    std::str::from_utf8(tag)
        .ok()
        .and_then(|t| t.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// COPY's rows are not cut into values, so they cannot be scrubbed: fail closed.
fn copy_unscrubbable() -> Fault {
    Fault::gateway(
        "this source's results are scanned for sensitive values, which COPY TO STDOUT does \
         not allow; run the SELECT instead",
    )
}

/// An ErrorResponse that keeps only the SQLSTATE of `frame`'s, saying why.
fn withheld_error(frame: &BytesMut, why: &str) -> BytesMut {
    let (code, message) = withheld(&error_text(frame), why);
    let mut out = BytesMut::new();
    crate::render::error(&mut out, "ERROR", &code, &message, None);
    out
}

/// The SQLSTATE an error's text (`SQLSTATE: message`, as [`error_text`] writes it) starts
/// with; `None` for the gateway's own errors, which have none.
fn sqlstate(error: &str) -> Option<&str> {
    error
        .split(':')
        .next()
        .filter(|c| c.len() == 5 && c.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// What an error whose text could echo withheld values says instead: its SQLSTATE, and a
/// message saying why the rest is withheld.
fn withheld(error: &str, why: &str) -> (String, String) {
    let code = sqlstate(error).unwrap_or("XX000").to_string();
    let message = format!("the statement failed ({code}); its message is withheld: {why}");
    (code, message)
}

/// `"name"`, quoted for PostgreSQL.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Appends one encoded message.
fn encode<M: Message>(out: &mut BytesMut, message: M) -> Result<(), Fault> {
    message
        .encode(out)
        .map_err(|e| Fault::gateway(format!("cannot encode a message for the upstream: {e}")))
}

/// Reading the answers one exchange is owed, in order. After an error the server skips
/// everything up to the next Sync, and so does the reading.
#[derive(Debug)]
struct Reading {
    owed: VecDeque<Expect>,
    /// A simple Query sent as Parse/Bind/Execute: answers as a simple Query would.
    quiet: bool,
    /// The server waits for the client's COPY data (it sent CopyInResponse).
    copy_in: bool,
    /// A COPY run by an Execute that was sent with its Sync: the server ignores a Sync
    /// during COPY, so the client's own Sync after its CopyDone must reach it too.
    sync_after_copy: bool,
}

impl Reading {
    /// The next answer frame and whether the client gets it; `None` once every answer
    /// owed has come. What the records need is tallied in `reply`.
    async fn next(
        &mut self,
        upstream: &mut Upstream,
        reply: &mut PgReply,
    ) -> Result<Option<(BytesMut, bool)>, Fault> {
        let Some(&next) = self.owed.front() else {
            return Ok(None);
        };
        let frame = upstream.frame().await?;
        let tag = frame[0];
        match tag {
            // Asynchronous: a notice, a setting changed, a notification.
            b'N' | b'S' | b'A' => {}
            b'E' => {
                reply.error.get_or_insert_with(|| error_text(&frame));
                // The rest up to the next Sync is skipped by the server.
                while self.owed.front().is_some_and(|e| *e != Expect::Ready) {
                    self.owed.pop_front();
                }
                // A simple Query's own error is followed by its ReadyForQuery.
            }
            b'Z' => {
                upstream.status = frame.get(5).copied().unwrap_or(b'I');
                reply.status = upstream.status;
                self.owed.pop_front();
            }
            b'D' => reply.rows += 1,
            b'T' => {
                reply.columns = column_names(&frame);
                if matches!(next, Expect::Statement | Expect::Portal) {
                    self.owed.pop_front();
                }
            }
            b'n' if matches!(next, Expect::Statement | Expect::Portal) => {
                self.owed.pop_front();
            }
            b'1' | b'2' | b'3' if next == Expect::One => {
                self.owed.pop_front();
            }
            b'C' | b'I' | b's' => {
                // `INSERT 0 5`, `COPY 5`, `UPDATE 5`: the rows a statement that returns
                // none wrote.
                if tag == b'C' && reply.rows == 0 {
                    reply.rows = command_rows(&frame);
                }
                if next == Expect::Execute {
                    self.owed.pop_front();
                }
            }
            // COPY FROM STDIN: the server waits for the client's data, which the front
            // relays ([`PgReply::copy`]) before the reading goes on.
            b'G' => {
                self.copy_in = true;
                self.sync_after_copy = !self.quiet
                    && next == Expect::Execute
                    && self.owed.back() == Some(&Expect::Ready);
            }
            b'W' => {
                return Err(Fault::upstream(
                    "the upstream started a COPY BOTH exchange, which querygate does not serve",
                ));
            }
            _ => {}
        }
        let hidden = self.quiet && matches!(tag, b'1' | b'2' | b'n');
        Ok(Some((frame, !hidden)))
    }
}

/// The rest of a reply that streams: the session it is read from (held until its last
/// answer), where the reading is, and the request's completion.
pub(crate) struct Tail {
    upstream: OwnedMutexGuard<Upstream>,
    reading: Reading,
    end: Option<Ending>,
    /// Rows read so far, for a completion the client never reads to.
    rows: u64,
}

impl std::fmt::Debug for Tail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tail")
            .field("reading", &self.reading)
            .finish()
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        // Left mid-answer: the session's next statement would read this one's answers.
        if !self.reading.owed.is_empty() {
            self.upstream.interrupted = true;
        }
        if let Some(end) = self.end.take() {
            end.finish(Summary {
                rows: Some(self.rows),
                error: Some(
                    "the result was not read to its end: the client went away or the upstream \
                     failed while it streamed"
                        .into(),
                ),
                ..Summary::default()
            });
        }
    }
}

/// Sends `frames` (and a Flush when they hold no Sync or Query, so that the server
/// answers now) and reads, whole, the answers `expect` says they are owed.
pub(crate) async fn exchange(
    upstream: &mut Upstream,
    frames: BytesMut,
    expect: &[Expect],
    quiet: bool,
) -> Result<PgReply, Fault> {
    let mut reading = send(upstream, frames, expect, quiet).await?;
    let mut reply = PgReply {
        status: upstream.status,
        ..PgReply::default()
    };
    if read(upstream, &mut reading, &mut reply, None).await? {
        upstream.interrupted = true;
        return Err(Fault::upstream(
            "the upstream started a COPY outside a statement querygate decided",
        ));
    }
    Ok(reply)
}

/// [`exchange`] on the session behind `link`, holding at most [`STREAM_AFTER`] bytes of
/// answers unless `whole`: the reply to a larger result keeps the session and reads the
/// rest as the client takes it ([`PgReply::more`]).
async fn exchange_on(
    link: &Link,
    frames: BytesMut,
    expect: &[Expect],
    quiet: bool,
    whole: bool,
) -> Result<PgReply, Fault> {
    let mut upstream = Arc::clone(link).lock_owned().await;
    let mut reading = send(&mut upstream, frames, expect, quiet).await?;
    let mut reply = PgReply {
        status: upstream.status,
        ..PgReply::default()
    };
    // A reply read whole still stops where the server waits for COPY data.
    let hold = (!whole).then_some(STREAM_AFTER);
    if read(&mut upstream, &mut reading, &mut reply, hold).await? {
        reply.tail = Some(Box::new(Tail {
            upstream,
            reading,
            end: None,
            rows: reply.rows,
        }));
    }
    Ok(reply)
}

async fn send(
    upstream: &mut Upstream,
    mut frames: BytesMut,
    expect: &[Expect],
    quiet: bool,
) -> Result<Reading, Fault> {
    let owed: VecDeque<Expect> = expect.iter().copied().collect();
    if owed.back() != Some(&Expect::Ready) && !owed.is_empty() {
        frames.extend_from_slice(&[b'H', 0, 0, 0, 4]);
    }
    upstream
        .send(&frames)
        .await
        .map_err(|e| Fault::upstream(format!("the upstream PostgreSQL went away: {e}")))?;
    Ok(Reading {
        owed,
        quiet,
        copy_in: false,
        sync_after_copy: false,
    })
}

/// Reads answers into `reply`: all of them (a result over [`MAX_BUFFERED`] is refused
/// with a message saying how to page it), or, with `hold`, until `hold` bytes are held.
/// `true` when answers are left to read.
async fn read(
    upstream: &mut Upstream,
    reading: &mut Reading,
    reply: &mut PgReply,
    hold: Option<usize>,
) -> Result<bool, Fault> {
    let mut buffered = 0usize;
    let mut overflow = false;
    while let Some((frame, forward)) = reading.next(upstream, reply).await? {
        let tag = frame[0];
        buffered += frame.len();
        if hold.is_some_and(|h| buffered > h) || reading.copy_in {
            if forward {
                reply.frames.push(frame);
            }
            return Ok(!reading.owed.is_empty());
        }
        if buffered > MAX_BUFFERED && !overflow {
            overflow = true;
            reply.frames.clear();
        }
        if (!overflow || tag == b'Z') && forward {
            reply.frames.push(frame);
        }
    }
    if overflow {
        let message = format!(
            "the result is larger than the {} MiB querygate holds for a statement a row \
             limit applies to; page it (LIMIT/OFFSET, a cursor with FETCH, or a row limit on \
             Execute)",
            MAX_BUFFERED >> 20
        );
        let mut out = BytesMut::new();
        crate::render::error(&mut out, "ERROR", "54000", &message, None);
        reply.frames.insert(0, out);
        reply.error = Some(format!("54000: {message}"));
    }
    Ok(false)
}

impl Source for PostgresSource {
    type Call = PgCall;
    type Reply = PgReply;

    fn name(&self) -> &str {
        &self.name
    }

    fn default_project(&self) -> &str {
        &self.database
    }

    fn dialect(&self) -> SqlDialect {
        SqlDialect::Postgres
    }

    /// Statistics (most common values, histograms: values of any column) and the views
    /// that show every session's statement (all clients share the gateway's role).
    fn holds_values(&self, table: &str) -> bool {
        let relation = table
            .rsplit('.')
            .next()
            .unwrap_or(table)
            .to_ascii_lowercase();
        matches!(
            relation.as_str(),
            "pg_stats"
                | "pg_stats_ext"
                | "pg_stats_ext_exprs"
                | "pg_statistic"
                | "pg_statistic_ext"
                | "pg_statistic_ext_data"
                | "pg_stat_activity"
                | "pg_stat_statements"
        )
    }

    async fn execute(&self, call: Admitted<PgCall>) -> Result<PgReply, Fault> {
        match call.into_call() {
            PgCall::Exchange(Exchange {
                link,
                frames,
                expect,
                quiet,
                whole,
                ..
            }) => exchange_on(&link, frames, &expect, quiet, whole).await,
            PgCall::Neutral(neutral) => self.neutral(neutral).await,
            PgCall::Refused => Err(Fault::gateway(
                "querygate forwards no such call (a PostgreSQL source keeps no jobs: a statement \
                 approved after it waited runs once, and the poll that ran it returned its rows)",
            )),
        }
    }

    fn call_for(&self, action: &Action, paging: &Paging) -> Result<PgCall, Denial> {
        neutral::call_for(action, paging)
    }

    fn default_schema(&self) -> Option<&str> {
        Some(neutral::SCHEMA)
    }

    async fn estimate(&self, _call: &PgCall) -> Result<u64, Refusal> {
        Err(Refusal::Failed(Fault::gateway(
            "PostgreSQL does not say how many bytes a query reads before it runs: write rules \
             with rows_over rather than bytes_over for this source",
        )))
    }

    async fn partitioning(&self, _table: &str) -> Result<Partitioning, Fault> {
        Ok(Partitioning::NotPartitioned)
    }

    fn limit_bytes(&self, _call: &mut PgCall, _bytes: u64) {}

    fn limit_rows(&self, call: &mut PgCall, rows: u64) {
        match call {
            PgCall::Exchange(exchange) => exchange.whole = true,
            // One row past the limit is enough to know the result is over it.
            PgCall::Neutral(Neutral::Query { max_rows, .. }) => {
                *max_rows = (*max_rows).min(rows.saturating_add(1));
            }
            _ => {}
        }
    }

    /// A statement that waits for approval is held by its client's connection (the front
    /// waits for the decision, then runs it again): the ticket shows the statement, and a
    /// grant is bound to it.
    /// A neutral query (an MCP tool's) is saved to run once approved, under a job id the
    /// agent polls.
    fn hold(&self, call: &PgCall, _request_id: &str) -> Option<Held> {
        let saved = match call {
            PgCall::Exchange(exchange) => serde_json::json!({ "statement": exchange.sql }),
            PgCall::Neutral(Neutral::Query {
                sql,
                max_rows,
                keyed,
                dry_run: false,
            }) => serde_json::json!({
                "statement": sql, "max_rows": max_rows, "keyed": keyed, "neutral": true,
            }),
            _ => return None,
        };
        Some(Held {
            job_id: format!("pg-{}", uuid::Uuid::new_v4().simple()),
            location: None,
            call: saved.to_string(),
            // What the grant binds besides the statement (see `Source::parameters`).
            parameters: self.parameters(call),
        })
    }

    fn scrubber(&self) -> Option<&Scrubber> {
        self.scrubber.as_ref()
    }

    fn bills_bytes(&self) -> bool {
        false
    }

    fn keeps_jobs(&self) -> bool {
        false
    }

    fn resume(&self, saved: &str) -> Result<Resumed<PgCall>, Fault> {
        let saved: serde_json::Value = serde_json::from_str(saved)
            .map_err(|e| Fault::gateway(format!("the held statement cannot be read: {e}")))?;
        if saved["neutral"] != serde_json::Value::Bool(true) {
            return Err(Fault::gateway(
                "a PostgreSQL statement runs when the client sends it again after approval",
            ));
        }
        Ok(Resumed {
            call: PgCall::Neutral(Neutral::Query {
                sql: saved["statement"].as_str().unwrap_or_default().to_string(),
                dry_run: false,
                max_rows: saved["max_rows"].as_u64().unwrap_or(1),
                keyed: saved["keyed"].as_bool().unwrap_or(false),
            }),
            method: "execute_sql".into(),
        })
    }

    fn mask_key(&self) -> Option<&querygate_core::Secret> {
        self.mask_key.as_ref()
    }

    /// The columns of `database.schema.table`, from the upstream's catalog (the element
    /// type of an array column, with `repeated`).
    async fn columns(&self, table: &str) -> Result<Vec<Column>, Fault> {
        if let Some((at, columns)) = self
            .schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(table)
            && at.elapsed() < SCHEMA_TTL
        {
            return Ok(columns.clone());
        }
        let parts: Vec<&str> = table.split('.').collect();
        let [_, schema, name] = parts[..] else {
            return Err(Fault::gateway(format!(
                "cannot describe {table}: expected database.schema.table"
            )));
        };
        let relation = format!("{}.{}", quote_ident(schema), quote_ident(name));
        let rows = self
            .lookup(
                "SELECT a.attname, pg_catalog.format_type(CASE WHEN t.typcategory = 'A' \
                 THEN t.typelem ELSE a.atttypid END, a.atttypmod), t.typcategory = 'A' \
                 FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
                 WHERE a.attrelid = pg_catalog.to_regclass($1) AND a.attnum > 0 \
                 AND NOT a.attisdropped ORDER BY a.attnum",
                &[&relation],
            )
            .await?;
        let columns: Vec<Column> = rows
            .into_iter()
            .filter_map(|row| match &row[..] {
                [Some(name), Some(data_type), repeated] => Some(Column {
                    name: name.clone(),
                    data_type: data_type.clone(),
                    repeated: repeated.as_deref() == Some("t"),
                }),
                _ => None,
            })
            .collect();
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(table.to_string(), (Instant::now(), columns.clone()));
        Ok(columns)
    }

    fn mask_key_param(&self, call: &PgCall) -> String {
        match call {
            PgCall::Exchange(e) => format!("${}", e.parameters() + 1),
            PgCall::Neutral(_) | PgCall::Refused => "$1".into(),
        }
    }

    /// Carries the masking rewrite. A simple Query's text is replaced (one that needs the
    /// hash key is sent as Parse/Bind/Execute with the key bound as `$1`, `bytea` in
    /// binary, and answered as the simple Query it was); a Parse's text is replaced (with
    /// the key as one more parameter, which the front binds at each Bind); an Execute runs
    /// what its statement was parsed as, which must be this very rewrite.
    fn rewrite(&self, call: &mut PgCall, statement: &str) -> Result<(), Denial> {
        if let PgCall::Neutral(Neutral::Query { sql, keyed, .. }) = call {
            // A neutral statement takes no parameters of its own (`call_for`): the key is $1.
            *keyed = names_parameter(statement, 1);
            if *keyed && self.mask_key.is_none() {
                return Err(Denial::new(
                    DenialKind::Unavailable,
                    "a masked column uses the hash strategy, and this gateway has no masking key",
                ));
            }
            *sql = statement.to_string();
            return Ok(());
        }
        let PgCall::Exchange(exchange) = call else {
            return Err(Denial::new(DenialKind::Invalid, "nothing to rewrite"));
        };
        let k = exchange.parameters() + 1;
        let keyed = names_parameter(statement, k);
        if keyed
            && querygate_sql::analyze(statement, querygate_sql::SqlDialect::Postgres)
                .kinds()
                .any(|kind| kind == querygate_sql::StatementKind::Copy)
        {
            return Err(Denial::new(
                DenialKind::Forbidden,
                "this COPY reads columns masked for you with the hash strategy, whose key is \
                 bound as a parameter, which COPY cannot take: read them with SELECT",
            ));
        }
        if keyed && self.mask_key.is_none() {
            return Err(Denial::new(
                DenialKind::Unavailable,
                "a masked column uses the hash strategy, and this gateway has no masking key",
            ));
        }
        match exchange.sent.clone() {
            Sent::Execute { prepared_as, .. } => {
                if prepared_as != statement {
                    return Err(Denial::new(
                        DenialKind::Conflict,
                        "how this statement's columns are masked for you changed since it was \
                         prepared: prepare it again (Close it and Parse it anew)",
                    ));
                }
            }
            Sent::Parse { name, types } => {
                let mut types = types;
                if keyed {
                    types.resize(k - 1, 0);
                    types.push(BYTEA);
                }
                let mut out = BytesMut::new();
                encode(&mut out, Parse::new(name, statement.to_string(), types))
                    .map_err(|fault| Denial::new(DenialKind::Invalid, fault.message))?;
                exchange.frames = out;
            }
            Sent::Query => self.rewrite_query(exchange, statement, keyed)?,
        }
        exchange.sql = statement.to_string();
        exchange.key = keyed.then_some(k);
        Ok(())
    }

    /// The values an Execute's portal was bound with: an approval of the statement is an
    /// approval of these values, as for BigQuery's query parameters.
    fn parameters(&self, call: &PgCall) -> Option<String> {
        match call {
            PgCall::Exchange(Exchange {
                sent: Sent::Execute { bound, .. },
                ..
            }) => bound.clone(),
            _ => None,
        }
    }

    fn statement(&self, call: &PgCall) -> Option<String> {
        match call {
            PgCall::Exchange(e) => Some(e.sql.clone()),
            PgCall::Neutral(Neutral::Query { sql, .. }) => Some(sql.clone()),
            PgCall::Neutral(_) | PgCall::Refused => None,
        }
    }
}
