//! `querygate policy check` and `querygate policy test`: the rules, run offline.
//!
//! `check` shows what the gateway would decide for one identity and one statement:
//! the facts, the decision, the rule that decided and every rule that matched.
//! `test` runs a table of cases so that teams can check policy changes in CI.
//! Offline, byte estimates, partitioning and the columns of tables with masked columns
//! (for the masking rewrite `check` prints) come from flags, and `check` says what it
//! assumed for what they did not give; `check --live` asks the source for them instead
//! (a dry run and tables.get, with the gateway's own credential; nothing runs).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use querygate_core::Identity;
use querygate_pipeline::reach::Reach;
use querygate_pipeline::{Partitioning, Subject};
use querygate_policy::{Input, Outcome, Verdict, parse_bytes};
use querygate_sql::{SqlDialect, analyze};
use serde::Deserialize;
use serde_json::json;

use crate::ConfigArg;
use crate::config::Config;

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Show the facts and the decision for one statement.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// The identity asking, e.g. agent:claude-code.
        #[arg(long = "as")]
        identity: String,
        /// Its groups (repeatable or comma-separated).
        #[arg(long, value_delimiter = ',')]
        groups: Vec<String>,
        /// The person the identity acts for (for `on_behalf_of` rules), e.g. human:alice.
        #[arg(long = "for")]
        on_behalf_of: Option<String>,
        /// Groups of the person acted for (repeatable or comma-separated).
        #[arg(long = "for-groups", value_delimiter = ',')]
        on_behalf_of_groups: Vec<String>,
        /// The source (default: the only one).
        #[arg(long)]
        source: Option<String>,
        #[arg(long)]
        sql: String,
        /// Bytes the query would process, for `bytes_over` rules (e.g. "12 GiB").
        #[arg(long)]
        bytes: Option<String>,
        /// A table's partition column, `project.dataset.table=column` (repeatable);
        /// `=` with nothing after it means not partitioned.
        #[arg(long = "partition")]
        partitions: Vec<String>,
        /// A table's columns, `project.dataset.table=name:TYPE,name:TYPE` (repeatable), so
        /// that the masking rewrite of reads of it can be shown.
        #[arg(long = "columns")]
        columns: Vec<String>,
        /// Ask the source for what the flags do not give: the bytes (a dry run), the
        /// partitioning and the columns of the tables read (tables.get). Runs nothing.
        #[arg(long)]
        live: bool,
        #[arg(long)]
        json: bool,
    },
    /// Run a file of cases (identity, SQL, expected decision); exit 1 on any mismatch.
    Test {
        #[command(flatten)]
        config: ConfigArg,
        /// The cases file (TOML, `[[case]]` tables).
        file: PathBuf,
    },
}

pub fn run(command: PolicyCommand) -> anyhow::Result<ExitCode> {
    match command {
        PolicyCommand::Check {
            config,
            identity,
            groups,
            on_behalf_of,
            on_behalf_of_groups,
            source,
            sql,
            bytes,
            partitions,
            columns,
            live,
            json,
        } => {
            let config = Config::load(&config.config).map_err(anyhow::Error::msg)?;
            let mut case = Case {
                name: None,
                identity,
                groups,
                on_behalf_of,
                on_behalf_of_groups,
                source,
                sql,
                bytes,
                partitions: parse_partitions(&partitions)?,
                columns: parse_partitions(&columns)?,
                expect: None,
                rule: None,
            };
            if live {
                ask_the_source(&config, &mut case)?;
            }
            let (facts, subject, verdict, reach, rewritten) = evaluate(&config, &case)?;
            let assumed = assumptions(&config, &case, &subject, &verdict)?;
            if json {
                println!(
                    "{}",
                    json!({
                        "statements": subject.kinds.iter().map(|k| k.name()).collect::<Vec<_>>(),
                        "tables": subject.tables.iter().map(|t| &t.name).collect::<Vec<_>>(),
                        "tags": reach.tags,
                        "opaque": facts.opaque,
                        "decision": decision(&verdict),
                        "message": message(&verdict),
                        "rule": verdict.rule,
                        "matched": verdict.matched,
                        "needs_estimate": verdict.needs_estimate,
                        "max_bytes_billed": verdict.max_bytes_billed,
                        "row_limit": verdict.row_limit.as_ref().map(|r| r.rows),
                        "masked_tables": reach.masked_tables,
                        "rewritten": rewritten.as_ref().ok().and_then(Option::as_ref),
                        "rewrite_error": rewritten.as_ref().err(),
                        "assumed": assumed,
                    })
                );
            } else {
                let kinds: Vec<&str> = subject.kinds.iter().map(|k| k.name()).collect();
                println!("statements: {}", kinds.join(", "));
                let tables: Vec<&str> = subject.tables.iter().map(|t| t.name.as_str()).collect();
                println!("tables:     {}", tables.join(", "));
                if !reach.tags.is_empty() {
                    println!("touches:    {}", reach.tags.join(", "));
                }
                if let Some(why) = &facts.opaque {
                    println!("opaque:     {why}");
                }
                println!("decision:   {}", decision(&verdict));
                println!(
                    "rule:       {}",
                    verdict
                        .rule
                        .as_deref()
                        .unwrap_or("(none matched: default deny)")
                );
                println!("matched:    {}", verdict.matched.join(", "));
                if let Some(m) = message(&verdict) {
                    println!("message:    {m}");
                }
                if let Some(b) = verdict.max_bytes_billed {
                    println!("maximumBytesBilled: {b}");
                }
                if !reach.masked_tables.is_empty() {
                    println!("masked:     {}", reach.masked_tables.join(", "));
                    match &rewritten {
                        Ok(Some(sql)) => println!("rewritten:  {sql}"),
                        Ok(None) => {}
                        Err(why) => println!("rewrite:    {why}"),
                    }
                }
                if let Some(r) = &verdict.needs_estimate {
                    println!(
                        "note:       rule {r:?} needs the bytes the query would process: pass --bytes (or --live)"
                    );
                }
                for a in &assumed {
                    println!("assumed:    {a}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test { config, file } => test(&config.config, &file),
    }
}

/// What `check` assumed for facts neither the flags nor the source gave: a table whose
/// partitioning is unknown counts as a full scan, as the gateway counts it when its source
/// cannot say.
fn assumptions(
    config: &Config,
    case: &Case,
    subject: &Subject,
    verdict: &Verdict,
) -> anyhow::Result<Vec<String>> {
    let policies = config.policies().map_err(anyhow::Error::msg)?;
    let source = source_of(config, case)?;
    let full_scan_rules = policies
        .policy(&source.name)
        .is_some_and(|p| p.rules.iter().any(|r| r.when.full_scan.is_some()));
    let mut out = Vec::new();
    if full_scan_rules {
        for t in subject.tables.iter().filter(|t| !t.write) {
            let known = case
                .partitions
                .keys()
                .any(|k| querygate_sql::same_name(k, &t.name));
            if !known {
                out.push(format!(
                    "the partitioning of {} is unknown, so a read of it counts as a full scan \
                     (pass --partition {}=COLUMN, or --partition {}= if it is not \
                     partitioned, or --live)",
                    t.name, t.name, t.name
                ));
            }
        }
    }
    if case.bytes.is_none() && verdict.needs_estimate.is_none() {
        let bytes_rules = policies
            .policy(&source.name)
            .is_some_and(|p| p.rules.iter().any(|r| r.when.bytes_over.is_some()));
        if bytes_rules || !policies.budgets.is_empty() {
            out.push(
                "no byte estimate: rules over bytes that come after the deciding one, and \
                 budgets, were not checked (pass --bytes, or --live)"
                    .into(),
            );
        }
    }
    if Identity::kind_of_prefix(&case.identity).is_none() {
        out.push(format!(
            "{} names no kind by its prefix: taken as an agent",
            case.identity
        ));
    }
    Ok(out)
}

/// `check --live`: fills in, from the source, what the flags did not give.
fn ask_the_source(config: &Config, case: &mut Case) -> anyhow::Result<()> {
    use querygate_pipeline::Source;
    let spec = source_of(config, case)?;
    if dialect_of(spec).0 == SqlDialect::Postgres {
        // PostgreSQL tables are not partitioned for policy, and it gives no estimate.
        return Ok(());
    }
    let mask_key = config.mask_key().map_err(|e| anyhow::anyhow!(e))?;
    let source = crate::serve::source(config, spec, mask_key.as_ref())?;
    let facts = analyze(&case.sql, SqlDialect::BigQuery);
    let subject = Subject::of(&facts, &spec.project);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        for t in subject.tables.iter().filter(|t| !t.write) {
            if case.partitions.contains_key(&t.name) {
                continue;
            }
            match source.partitioning(&t.name).await {
                Ok(Partitioning::Column(c)) => {
                    case.partitions.insert(t.name.clone(), c);
                }
                Ok(Partitioning::NotPartitioned) => {
                    case.partitions.insert(t.name.clone(), String::new());
                }
                Err(e) => eprintln!("--live: the partitioning of {}: {}", t.name, e.message),
            }
            if !case.columns.contains_key(&t.name)
                && let Ok(columns) = source.columns(&t.name).await
            {
                let spec: Vec<String> = columns
                    .iter()
                    .map(|c| format!("{}:{}", c.name, c.data_type))
                    .collect();
                case.columns.insert(t.name.clone(), spec.join(","));
            }
        }
        if case.bytes.is_none() && facts.opaque.is_none() {
            // The source's own call for the query, as a front that speaks no source's
            // protocol asks for one.
            let query = querygate_core::Action::Query(querygate_core::Query::new(&case.sql));
            let call = match source.call_for(&query, &Default::default()) {
                Ok(call) => call,
                Err(d) => {
                    eprintln!(
                        "--live: the source cannot estimate this query: {}",
                        d.message
                    );
                    return;
                }
            };
            match source.estimate(&call).await {
                Ok(bytes) => case.bytes = Some(bytes.to_string()),
                Err(querygate_pipeline::Refusal::Denied(d)) => {
                    eprintln!("--live: the dry run was refused: {}", d.message)
                }
                Err(querygate_pipeline::Refusal::Failed(f)) => {
                    eprintln!("--live: the dry run failed: {}", f.message)
                }
            }
        }
    });
    Ok(())
}

/// The dialect a source's statements are analyzed in, and the schema one-part names
/// belong to (PostgreSQL: the connection's, `public` by default).
fn dialect_of(source: &crate::config::SourceConfig) -> (SqlDialect, Option<&'static str>) {
    match source.kind.get_ref() {
        crate::config::SourceKind::Postgres(_) => (SqlDialect::Postgres, Some("public")),
        _ => (SqlDialect::BigQuery, None),
    }
}

/// The facts of a case's statement, as the gateway analyzes it for `source`.
fn facts_of(source: &crate::config::SourceConfig, sql: &str) -> querygate_sql::Facts {
    let (dialect, schema) = dialect_of(source);
    let mut facts = analyze(sql, dialect);
    if let Some(schema) = schema {
        facts.with_default_dataset(schema);
    }
    facts
}

/// The source a case names (or the only one).
fn source_of<'a>(
    config: &'a Config,
    case: &Case,
) -> anyhow::Result<&'a crate::config::SourceConfig> {
    match &case.source {
        Some(name) => config
            .sources
            .iter()
            .find(|s| &s.name == name)
            .with_context(|| format!("no source named {name}")),
        None => match config.sources.as_slice() {
            [only] => Ok(only),
            _ => bail!("the config has several sources: name one with --source"),
        },
    }
}

/// One case of a policy test file (also the shape `check` evaluates).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: Option<String>,
    identity: String,
    #[serde(default)]
    groups: Vec<String>,
    /// The person the identity acts for.
    on_behalf_of: Option<String>,
    #[serde(default)]
    on_behalf_of_groups: Vec<String>,
    source: Option<String>,
    sql: String,
    bytes: Option<String>,
    #[serde(default)]
    partitions: HashMap<String, String>,
    /// Columns of tables with masked columns: `table = "name:TYPE,name:TYPE"`.
    #[serde(default)]
    columns: HashMap<String, String>,
    /// allow | deny | approve
    expect: Option<String>,
    /// The rule expected to decide.
    rule: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseFile {
    case: Vec<Case>,
}

fn parse_partitions(flags: &[String]) -> anyhow::Result<HashMap<String, String>> {
    flags
        .iter()
        .map(|f| {
            f.split_once('=')
                .map(|(t, c)| (t.to_string(), c.to_string()))
                .with_context(|| format!("--partition {f:?}: write project.dataset.table=column"))
        })
        .collect()
}

/// The masking rewrite `check` shows: `Ok(None)` when nothing is masked, `Err` when it
/// cannot be made (columns not given, or the rewrite refuses the statement).
type Rewritten = Result<Option<String>, String>;

fn evaluate(
    config: &Config,
    case: &Case,
) -> anyhow::Result<(querygate_sql::Facts, Subject, Verdict, Reach, Rewritten)> {
    let source = source_of(config, case)?;
    let policies = config.policies().map_err(anyhow::Error::msg)?;
    let policy = policies
        .policy(&source.name)
        .with_context(|| format!("source {} has no policy", source.name))?;
    let identity = Identity {
        subject: case.identity.clone(),
        groups: case.groups.clone(),
        kind: Identity::kind_from_subject(&case.identity),
        acting_for: case.on_behalf_of.as_ref().map(|p| {
            Box::new(Identity {
                subject: p.clone(),
                groups: case.on_behalf_of_groups.clone(),
                kind: Identity::kind_from_subject(p),
                ..Identity::default()
            })
        }),
        auth: None,
    };
    let facts = facts_of(source, &case.sql);
    let subject = Subject::of(&facts, &source.project);
    let reach = querygate_pipeline::reach::of_facts(
        &policies.classifier,
        &facts,
        &source.project,
        &identity,
    );
    let partitions: HashMap<String, Partitioning> = case
        .partitions
        .iter()
        .map(|(t, c)| {
            let p = if c.is_empty() {
                Partitioning::NotPartitioned
            } else {
                Partitioning::Column(c.clone())
            };
            (t.clone(), p)
        })
        .collect();
    let bytes = case
        .bytes
        .as_deref()
        .map(parse_bytes)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    // The data path's own decision: the rules, budgets (nothing counted as used today) and
    // the source's byte cap, over the facts.
    let question = querygate_pipeline::Question {
        input: Input {
            identity: &identity,
            source: &source.name,
            statements: &subject.kinds,
            tables: &subject.tables,
            opaque: subject.opaque.as_deref(),
            bytes,
            partitions: &partitions,
            tags: &reach.tags,
            now: jiff::Timestamp::now(),
        },
        query: true,
        dry_run: false,
        estimable: subject.opaque.is_none(),
        // As the data path holds the identity: bytes where the source bills them.
        budgets: {
            let mut budgets = policies.budgets(&identity);
            budgets.bytes = budgets
                .bytes
                .filter(|_| source.kind.get_ref().bills_bytes());
            budgets
        },
        used_today: Default::default(),
        source_cap: policies.max_bytes_billed.get(&source.name).copied(),
    };
    let (verdict, decided) = querygate_pipeline::decide(policy, &question);
    let verdict = match decided {
        // A budget or a cap can refuse what the rules allow.
        querygate_pipeline::Decided::Admission(querygate_pipeline::Admission::Deny(d))
            if verdict.needs_estimate.is_none()
                && !matches!(verdict.outcome, Outcome::Deny { .. }) =>
        {
            Verdict {
                outcome: Outcome::Deny { message: d.message },
                ..verdict
            }
        }
        _ => verdict,
    };
    let rewritten = rewrite(&policies.classifier, source, &identity, case, &reach);
    let verdict = match reach
        .refusal
        .as_ref()
        .or(rewritten.as_ref().err().filter(|e| {
            // A rewrite the gateway would refuse (not merely columns not given here).
            !e.starts_with("pass --columns")
        })) {
        // As the gateway decides: a masked column the query returns (or filters on) refuses
        // it, whatever the bytes (it needs no estimate).
        Some(why)
            if verdict.needs_estimate.is_some()
                || matches!(verdict.outcome, Outcome::Allow | Outcome::Approve { .. }) =>
        {
            Verdict {
                outcome: Outcome::Deny {
                    message: why.clone(),
                },
                rule: Some("masking".into()),
                needs_estimate: None,
                ..verdict
            }
        }
        _ => verdict,
    };
    Ok((facts, subject, verdict, reach, rewritten))
}

/// The statement as the gateway would send it upstream, from the columns the case gives.
fn rewrite(
    classifier: &querygate_policy::Classifier,
    source: &crate::config::SourceConfig,
    identity: &Identity,
    case: &Case,
    reach: &Reach,
) -> Rewritten {
    let (dialect, schema) = dialect_of(source);
    let key_param = match dialect {
        SqlDialect::Postgres => format!(
            "${}",
            querygate_postgres::source::highest_parameter(&case.sql) + 1
        ),
        SqlDialect::BigQuery => "@__querygate_mask_key".to_string(),
    };
    if reach.masked_tables.is_empty() || reach.refusal.is_some() {
        return Ok(None);
    }
    let mut lists = HashMap::new();
    for table in &reach.masked_tables {
        let Some(spec) = case.columns.get(table) else {
            return Err(format!(
                "pass --columns {table}=name:TYPE,… to see the rewritten statement"
            ));
        };
        let columns = spec
            .split(',')
            .filter(|c| !c.trim().is_empty())
            .map(|c| {
                let (name, ty) = c.split_once(':').unwrap_or((c, "STRING"));
                let ty = ty.trim().to_ascii_uppercase();
                let repeated = ty.starts_with("ARRAY");
                querygate_pipeline::Column {
                    name: name.trim().to_string(),
                    data_type: ty
                        .trim_start_matches("ARRAY<")
                        .trim_end_matches('>')
                        .to_string(),
                    repeated,
                }
            })
            .collect::<Vec<_>>();
        let list = querygate_pipeline::masking::select_list(
            classifier, table, &columns, identity, dialect, &key_param,
        )
        .map_err(|e| e.to_string())?;
        lists.insert(table.clone(), list);
    }
    querygate_sql::mask_reads(
        &case.sql,
        &querygate_sql::Masking {
            dialect,
            project: &source.project,
            dataset: schema,
            tables: &lists,
        },
    )
    .map(Some)
    .map_err(|why| format!("Access Denied: {why}"))
}

fn decision(v: &Verdict) -> &'static str {
    if v.needs_estimate.is_some() {
        return "needs-estimate";
    }
    match v.outcome {
        Outcome::Allow => "allow",
        Outcome::Deny { .. } => "deny",
        Outcome::Approve { .. } => "approve",
    }
}

fn message(v: &Verdict) -> Option<&str> {
    match &v.outcome {
        Outcome::Allow => None,
        Outcome::Deny { message } | Outcome::Approve { message, .. } => Some(message),
    }
}

fn test(config_path: &Path, file: &Path) -> anyhow::Result<ExitCode> {
    let config = Config::load(config_path).map_err(anyhow::Error::msg)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let cases: CaseFile =
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let mut failed = 0;
    for (i, case) in cases.case.iter().enumerate() {
        let name = case
            .name
            .clone()
            .unwrap_or_else(|| format!("case {}", i + 1));
        let Some(expect) = case.expect.as_deref() else {
            bail!("{}: {name} has no `expect`", file.display());
        };
        let (_, _, verdict, _, _) = evaluate(&config, case).with_context(|| name.clone())?;
        let got = decision(&verdict);
        let rule_ok = case
            .rule
            .as_ref()
            .is_none_or(|r| verdict.rule.as_ref() == Some(r));
        if got == expect && rule_ok {
            println!(
                "ok    {name}: {got} ({})",
                verdict.rule.as_deref().unwrap_or("no rule")
            );
        } else {
            failed += 1;
            println!(
                "FAIL  {name}: expected {expect}{}, got {got} by {}",
                case.rule
                    .as_ref()
                    .map(|r| format!(" by {r:?}"))
                    .unwrap_or_default(),
                verdict
                    .rule
                    .as_deref()
                    .map_or("no rule".to_string(), |r| format!("{r:?}"))
            );
        }
    }
    println!("{} cases, {} failed", cases.case.len(), failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
