//! `querygate audit …`: tail, search, export and verify the audit log.
//!
//! Every command reads the store named by `--config`; `--json` prints one record
//! per line (JSON Lines) for machines. `verify` exits 0 on an intact chain and 1 on
//! a broken one, naming the first bad record.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};
use querygate_core::AuditRecord;
use querygate_store::{AuditFilter, Reader, VerifyOptions};

use crate::ConfigArg;
use crate::config::Config;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Show the most recent records.
    Tail {
        #[command(flatten)]
        config: ConfigArg,
        /// How many records.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        #[arg(long)]
        json: bool,
    },
    /// Find records by identity, method, decision, source, job or time.
    Search {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long)]
        json: bool,
    },
    /// Write records for another system (JSON Lines or CSV) to stdout.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: FilterArgs,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
    },
    /// Check the hash chain and the checkpoints' signatures; exit 1 naming the first bad
    /// record if anything was changed, forged or cut off.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// The signing key's public key (hex, or a file holding it); default: the
        /// configured key's `.pub` file.
        #[arg(long)]
        public_key: Option<String>,
        /// A checkpoint file kept apart from the store (default: `[audit] checkpoint_file`):
        /// the log must hold every checkpoint in it.
        #[arg(long)]
        checkpoints: Option<std::path::PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args, Clone, Default)]
pub struct FilterArgs {
    /// Only this identity, e.g. agent:claude-code.
    #[arg(long)]
    identity: Option<String>,
    /// Only requests made acting for this person, e.g. alice@example.com.
    #[arg(long)]
    acting_for: Option<String>,
    /// Only records from this long ago (30s, 15m, 1h, 7d) or since an RFC 3339 time.
    #[arg(long)]
    since: Option<String>,
    /// Only records up to this RFC 3339 time (or this long ago).
    #[arg(long)]
    until: Option<String>,
    /// Only this API method, e.g. jobs.query.
    #[arg(long)]
    method: Option<String>,
    /// Only allow or deny.
    #[arg(long)]
    decision: Option<String>,
    /// Only this source.
    #[arg(long)]
    source: Option<String>,
    /// Only this job id.
    #[arg(long)]
    job: Option<String>,
    /// Only statements that read or wrote this table (project.dataset.table).
    #[arg(long)]
    table: Option<String>,
    /// Only records decided by this rule.
    #[arg(long)]
    rule: Option<String>,
    /// Only records of this approval ticket (tk_…).
    #[arg(long)]
    ticket: Option<String>,
    /// Only statements containing this text (case-insensitive).
    #[arg(long)]
    text: Option<String>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ExportFormat {
    Jsonl,
    Csv,
}

pub fn run(command: AuditCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Tail {
            config,
            lines,
            json,
        } => {
            let reader = open(&config)?;
            print(&reader, &AuditFilter::default(), Some(lines), json)
        }
        AuditCommand::Search {
            config,
            filter,
            json,
        } => {
            let reader = open(&config)?;
            print(&reader, &filter.into_filter()?, None, json)
        }
        AuditCommand::Export {
            config,
            filter,
            format,
        } => {
            let reader = open(&config)?;
            let filter = filter.into_filter()?;
            match format {
                ExportFormat::Jsonl => print(&reader, &filter, None, true),
                ExportFormat::Csv => export_csv(&reader, &filter),
            }
        }
        AuditCommand::Verify {
            config,
            public_key,
            checkpoints,
            json,
        } => verify(&config, public_key.as_deref(), checkpoints.as_deref(), json),
    }
}

fn open(config: &ConfigArg) -> anyhow::Result<Reader> {
    let c = Config::load(&config.config).map_err(anyhow::Error::msg)?;
    Ok(Reader::open(&c.store_path())?)
}

fn print(
    reader: &Reader,
    filter: &AuditFilter,
    last: Option<usize>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut failed = None;
    reader.records(filter, last, |r| {
        if failed.is_some() {
            return;
        }
        let line = if json {
            r.to_json().to_string()
        } else {
            human(&r.record)
        };
        if let Err(e) = writeln!(out, "{line}") {
            failed = Some(e);
        }
    })?;
    match failed {
        // A closed pipe (`| head`) is not an error worth reporting.
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

fn human(r: &AuditRecord) -> String {
    let mut s = format!(
        "#{} {} {} {:<9} {} {} {}",
        r.seq,
        r.time,
        r.request_id,
        format!("{:?}", r.phase).to_lowercase(),
        r.identity,
        r.method,
        r.decision
    );
    let opt = |s: &mut String, name: &str, v: Option<String>| {
        if let Some(v) = v {
            s.push_str(&format!(" {name}={v}"));
        }
    };
    opt(&mut s, "status", r.status.map(|v| v.to_string()));
    opt(&mut s, "job", r.job_id.clone());
    opt(&mut s, "rows", r.rows.map(|v| v.to_string()));
    opt(&mut s, "bytes", r.bytes_processed.map(|v| v.to_string()));
    opt(&mut s, "ms", r.duration_ms.map(|v| format!("{v:.1}")));
    opt(&mut s, "table", r.table.clone());
    opt(
        &mut s,
        "statement",
        r.statement.as_ref().map(|v| format!("{v:?}")),
    );
    opt(
        &mut s,
        "reason",
        r.reason.as_ref().map(|v| format!("{v:?}")),
    );
    opt(&mut s, "error", r.error.as_ref().map(|v| format!("{v:?}")));
    s
}

fn export_csv(reader: &Reader, filter: &AuditFilter) -> anyhow::Result<ExitCode> {
    const COLUMNS: &[&str] = &[
        "seq",
        "time",
        "request_id",
        "phase",
        "identity",
        "groups",
        "kind",
        "source",
        "method",
        "statement",
        "table",
        "decision",
        "reason",
        "job_id",
        "status",
        "error",
        "rows",
        "bytes_processed",
        "bytes_billed",
        "duration_ms",
        "user_agent",
        "peer",
        "prev_hash",
        "hash",
    ];
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    writeln!(out, "{}", COLUMNS.join(","))?;
    let mut failed = None;
    reader.records(filter, None, |r| {
        let v = r.to_json();
        let row: Vec<String> = COLUMNS
            .iter()
            .map(|c| match &v[*c] {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) => csv_field(s),
                other => csv_field(&other.to_string()),
            })
            .collect();
        if let Err(e) = writeln!(out, "{}", row.join(",")) {
            failed.get_or_insert(e);
        }
    })?;
    if let Some(e) = failed.filter(|e| e.kind() != std::io::ErrorKind::BrokenPipe) {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn verify(
    config: &ConfigArg,
    public_key: Option<&str>,
    checkpoints: Option<&std::path::Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let c = Config::load(&config.config).map_err(anyhow::Error::msg)?;
    let reader = Reader::open(&c.store_path())?;
    // The public key: given (hex, or a file holding it), else the configured key's `.pub`.
    let public_key = match public_key {
        Some(k) if std::path::Path::new(k).is_file() => Some(
            std::fs::read_to_string(k)
                .with_context(|| format!("cannot read the public key file {k}"))?
                .trim()
                .to_string(),
        ),
        Some(k) => Some(k.trim().to_string()),
        None => {
            std::fs::read_to_string(querygate_store::signing::public_path(&c.signing_key_path()))
                .ok()
                .map(|k| k.trim().to_string())
        }
    };
    let options = VerifyOptions {
        public_key,
        checkpoint_file: checkpoints
            .map(std::path::Path::to_path_buf)
            .or_else(|| c.audit.checkpoint_file.as_ref().map(|p| c.resolve(p))),
    };
    match reader.verify_with(&options)? {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "records": report.records, "head": report.head,
                        "checkpoints": report.checkpoints,
                        "unchecked_checkpoints": report.unchecked_checkpoints,
                        "last_checkpoint": report.last_checkpoint,
                        "unsigned_tail": report.unsigned_tail,
                        "external_checkpoints": report.external_checkpoints,
                    })
                );
            } else {
                println!(
                    "audit log intact: {} records, chain head {}",
                    report.records, report.head
                );
                match report.last_checkpoint {
                    Some(seq) => println!(
                        "signatures: {} checkpoints verified, the last at record {seq}; {} records after it not yet signed",
                        report.checkpoints, report.unsigned_tail
                    ),
                    None if report.unchecked_checkpoints > 0 => println!(
                        "signatures: {} checkpoints NOT checked: no public key (give --public-key)",
                        report.unchecked_checkpoints
                    ),
                    None => println!("signatures: no checkpoints in the log"),
                }
                if options.checkpoint_file.is_some() {
                    println!(
                        "checkpoint file: {} checkpoints match the log",
                        report.external_checkpoints
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(b) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "seq": b.seq, "problem": b.problem})
                );
            } else {
                println!("audit log BROKEN at seq {}: {}", b.seq, b.problem);
            }
            Ok(ExitCode::from(1))
        }
    }
}

impl FilterArgs {
    fn into_filter(self) -> anyhow::Result<AuditFilter> {
        Ok(AuditFilter {
            identity: self.identity,
            source: self.source,
            method: self.method,
            decision: self.decision,
            job_id: self.job,
            since: self.since.as_deref().map(point_in_time).transpose()?,
            until: self.until.as_deref().map(point_in_time).transpose()?,
            acting_for: self.acting_for,
            table: self.table,
            rule: self.rule,
            ticket: self.ticket,
            text: self.text,
        })
    }
}

/// `90s`, `15m`, `1h`, `7d` ago, or an RFC 3339 time, as the audit log's time format.
pub(crate) fn point_in_time(text: &str) -> anyhow::Result<String> {
    querygate_pipeline::point_in_time(text, time::OffsetDateTime::now_utc())
        .map_err(anyhow::Error::msg)
}
