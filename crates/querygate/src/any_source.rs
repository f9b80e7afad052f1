//! Every configured source behind one type, for the front that serves them all (the MCP
//! tools): a BigQuery source (the upstream or the embedded engine) or a PostgreSQL one.
//! Each delegates to its own `Source`; a call or reply of one kind never reaches a source
//! of the other (the registry builds each call from the source it runs on, and a mismatch
//! fails closed).

use std::sync::Arc;

use querygate_bigquery::{BigQueryReply, BigQuerySource, Call};
use querygate_core::{Action, Denial, DenialKind, Fault};
use querygate_mask::Scrubber;
use querygate_pipeline::{
    Admitted, Answer, Column, ColumnMask, Ending, Held, Paging, Partitioning, Refusal, Reply,
    Resumed, Rows, Scope, Source, SqlDialect, Summary, View,
};
use querygate_postgres::source::{PgCall, PgReply, PostgresSource};

/// A configured source of any kind.
#[derive(Debug)]
pub enum AnySource {
    BigQuery(Arc<BigQuerySource>),
    Postgres(Arc<PostgresSource>),
}

/// A call on an [`AnySource`], of its source's kind.
#[derive(Debug)]
pub enum AnyCall {
    BigQuery(Call),
    Postgres(PgCall),
}

/// A reply from an [`AnySource`].
#[derive(Debug)]
pub enum AnyReply {
    BigQuery(BigQueryReply),
    Postgres(PgReply),
}

/// Runs `$body` with `$s` bound to the source of whichever kind `$self` is.
macro_rules! each {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            AnySource::BigQuery($s) => $body,
            AnySource::Postgres($s) => $body,
        }
    };
}

/// Runs `$bq` or `$pg` on the source and call of the same kind; a mismatch is `$else`.
macro_rules! paired {
    ($self:expr, $call:expr, ($s:ident, $c:ident) => $bq:expr, $pg:expr, else $else:expr) => {
        match ($self, $call) {
            (AnySource::BigQuery($s), AnyCall::BigQuery($c)) => $bq,
            (AnySource::Postgres($s), AnyCall::Postgres($c)) => $pg,
            _ => $else,
        }
    };
}

fn mismatch() -> Fault {
    Fault::gateway("querygate built a call for one source and sent it to another")
}

impl Source for AnySource {
    type Call = AnyCall;
    type Reply = AnyReply;

    fn name(&self) -> &str {
        each!(self, s => s.name())
    }

    fn default_project(&self) -> &str {
        each!(self, s => s.default_project())
    }

    fn default_schema(&self) -> Option<&str> {
        each!(self, s => s.default_schema())
    }

    fn dialect(&self) -> SqlDialect {
        each!(self, s => s.dialect())
    }

    fn table_of(&self, name: &str) -> String {
        each!(self, s => s.table_of(name))
    }

    fn holds_values(&self, table: &str) -> bool {
        each!(self, s => s.holds_values(table))
    }

    async fn execute(&self, call: Admitted<AnyCall>) -> Result<AnyReply, Fault> {
        match self {
            AnySource::BigQuery(s) => {
                let call = call.try_map(|c| match c {
                    AnyCall::BigQuery(c) => Ok(c),
                    AnyCall::Postgres(_) => Err(mismatch()),
                })?;
                s.execute(call).await.map(AnyReply::BigQuery)
            }
            AnySource::Postgres(s) => {
                let call = call.try_map(|c| match c {
                    AnyCall::Postgres(c) => Ok(c),
                    AnyCall::BigQuery(_) => Err(mismatch()),
                })?;
                s.execute(call).await.map(AnyReply::Postgres)
            }
        }
    }

    fn call_for(&self, action: &Action, paging: &Paging) -> Result<AnyCall, Denial> {
        match self {
            AnySource::BigQuery(s) => s.call_for(action, paging).map(AnyCall::BigQuery),
            AnySource::Postgres(s) => s.call_for(action, paging).map(AnyCall::Postgres),
        }
    }

    async fn estimate(&self, call: &AnyCall) -> Result<u64, Refusal> {
        paired!(self, call, (s, c) => s.estimate(c).await, s.estimate(c).await,
            else Err(Refusal::Failed(mismatch())))
    }

    async fn partitioning(&self, table: &str) -> Result<Partitioning, Fault> {
        each!(self, s => s.partitioning(table).await)
    }

    fn limit_bytes(&self, call: &mut AnyCall, bytes: u64) {
        paired!(self, call, (s, c) => s.limit_bytes(c, bytes), s.limit_bytes(c, bytes), else ())
    }

    fn limit_rows(&self, call: &mut AnyCall, rows: u64) {
        paired!(self, call, (s, c) => s.limit_rows(c, rows), s.limit_rows(c, rows), else ())
    }

    fn hold(&self, call: &AnyCall, request_id: &str) -> Option<Held> {
        paired!(self, call, (s, c) => s.hold(c, request_id), s.hold(c, request_id), else None)
    }

    fn bills_bytes(&self) -> bool {
        each!(self, s => s.bills_bytes())
    }

    fn keeps_jobs(&self) -> bool {
        each!(self, s => s.keeps_jobs())
    }

    fn scrubber(&self) -> Option<&Scrubber> {
        each!(self, s => s.scrubber())
    }

    fn resume(&self, saved: &str) -> Result<Resumed<AnyCall>, Fault> {
        match self {
            AnySource::BigQuery(s) => s.resume(saved).map(|r| Resumed {
                call: AnyCall::BigQuery(r.call),
                method: r.method,
            }),
            AnySource::Postgres(s) => s.resume(saved).map(|r| Resumed {
                call: AnyCall::Postgres(r.call),
                method: r.method,
            }),
        }
    }

    fn parameters(&self, call: &AnyCall) -> Option<String> {
        paired!(self, call, (s, c) => s.parameters(c), s.parameters(c), else None)
    }

    fn statement(&self, call: &AnyCall) -> Option<String> {
        paired!(self, call, (s, c) => s.statement(c), s.statement(c), else None)
    }

    async fn columns(&self, table: &str) -> Result<Vec<Column>, Fault> {
        each!(self, s => s.columns(table).await)
    }

    async fn view(&self, table: &str) -> Result<Option<View>, Fault> {
        each!(self, s => s.view(table).await)
    }

    fn price(&self, bytes: u64) -> Option<f64> {
        each!(self, s => s.price(bytes))
    }

    fn mask_key(&self) -> Option<&querygate_core::Secret> {
        each!(self, s => s.mask_key())
    }

    fn mask_key_param(&self, call: &AnyCall) -> String {
        paired!(self, call, (s, c) => s.mask_key_param(c), s.mask_key_param(c),
            else String::new())
    }

    fn rewrite(&self, call: &mut AnyCall, statement: &str) -> Result<(), Denial> {
        paired!(self, call, (s, c) => s.rewrite(c, statement), s.rewrite(c, statement),
            else Err(Denial::new(DenialKind::Invalid, mismatch().message)))
    }
}

/// Runs `$body` with `$r` bound to the reply of whichever kind `$self` is.
macro_rules! reply {
    ($self:expr, $r:ident => $body:expr) => {
        match $self {
            AnyReply::BigQuery($r) => $body,
            AnyReply::Postgres($r) => $body,
        }
    };
}

impl Reply for AnyReply {
    fn summary(&self) -> Summary {
        reply!(self, r => r.summary())
    }

    fn rows(&self) -> Option<Result<Rows, Fault>> {
        reply!(self, r => r.rows())
    }

    fn put_rows(&mut self, rows: Rows) {
        reply!(self, r => r.put_rows(rows))
    }

    fn scrub(&mut self, scrubber: &Scrubber) -> Result<u64, Fault> {
        reply!(self, r => r.scrub(scrubber))
    }

    fn mask_rows(&mut self, masks: &[ColumnMask], key: &[u8]) -> Result<u64, Fault> {
        reply!(self, r => r.mask_rows(masks, key))
    }

    fn withhold_errors(&mut self, why: &str) -> bool {
        reply!(self, r => r.withhold_errors(why))
    }

    fn restrict(&mut self, scope: &Scope) {
        reply!(self, r => r.restrict(scope))
    }

    fn body(&self) -> bytes::Bytes {
        reply!(self, r => r.body())
    }

    fn answer(&self) -> Answer {
        reply!(self, r => r.answer())
    }

    fn is_open(&self) -> bool {
        reply!(self, r => r.is_open())
    }

    fn stream(&mut self, end: Ending) {
        reply!(self, r => r.stream(end))
    }
}
