//! The decide stage: the rules, budgets and caps over what analysis found, as a value.
//!
//! [`decide`] is pure: facts, identity and policy in (a [`Question`]), an [`Admission`]
//! out — run with this plan, deny with this denial, or wait for an approval — or
//! [`Decided::Estimate`] when a rule or a budget needs the bytes a query would process
//! and they are not known yet. `querygate policy check` asks it the same question the
//! data path does. [`Pipeline::decide`] gathers the inputs around it: the views a
//! statement reads (a rule on a table holds for the tables its views read), the
//! partitioning of the tables read, the mask stage, the dry-run estimate and the
//! identity's usage today, each fetched only when a rule or budget needs it.

use std::collections::HashMap;

use querygate_core::{Action, Denial, DenialKind, Fault, Identity, Query, Request, Ticket, Usage};
use querygate_policy::{
    Input, OnApproval, Outcome as PolicyOutcome, Policy, RowLimit, StatementKind, TableUse,
    Verdict, format_bytes, format_rows,
};
use querygate_sql::Facts;

use crate::analyze::Subject;
use crate::policies::Budgets;
use crate::source::{ColumnMask, Refusal, Source};
use crate::{Explained, Pipeline, PolicySet, audit_time, reach};

/// What the policy is asked about one request.
#[derive(Debug, Clone)]
pub struct Question<'a> {
    /// What the rules see.
    pub input: Input<'a>,
    /// The request is a query (not a direct table read).
    pub query: bool,
    /// It only validates and estimates: nothing runs, nothing is billed, nobody waits.
    pub dry_run: bool,
    /// Its bytes can be estimated (a query the analyzer understood).
    pub estimable: bool,
    /// The identity's daily budgets that hold on this source (a byte budget only where
    /// the source bills bytes).
    pub budgets: Budgets,
    /// What the identity used today (read when a budget applies).
    pub used_today: Usage,
    /// The most the source lets any query bill (`max_bytes_billed` of the source).
    pub source_cap: Option<u64>,
}

/// What the decide stage admits a request to.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Run it under this plan.
    Run(Plan),
    /// An approve rule caught it: it runs under a grant that covers it, or waits in a
    /// ticket for a person.
    Approve {
        needed: Needed,
        plan: Plan,
    },
    Deny(Denial),
}

/// The answer of [`decide`]: a value returned once per request, never stored, so its
/// size does not matter.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)]
pub enum Decided {
    Admission(Admission),
    /// A rule or a budget needs the bytes the query would process: estimate them and ask
    /// again with `input.bytes` set.
    Estimate,
}

/// How an admitted request runs.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// The most the query may bill.
    pub max_bytes_billed: Option<u64>,
    /// Results over this many rows are withheld.
    pub row_limit: Option<RowLimit>,
    /// The bytes it bills and the rows it returns or changes count against the identity's
    /// daily usage.
    pub billable: bool,
    /// It reaches columns masked for the identity: its errors, which could echo values,
    /// are withheld. Says why.
    pub sensitive: Option<String>,
    /// A direct read of a table with masked columns: how to mask its rows.
    pub row_masks: Option<Vec<ColumnMask>>,
    /// The approved ticket it runs under, and why that lets it run (set by the approve
    /// stage), for the decided record.
    pub grant: Option<Ticket>,
    pub reason: Option<String>,
}

/// What an approve rule asked for.
#[derive(Debug, Clone)]
pub struct Needed {
    pub rule: String,
    pub approvers: Vec<String>,
    pub message: String,
    /// Whether the request waits as a job or is answered at once.
    pub on_approval: OnApproval,
}

/// The policy's answer to `q`, with the verdict that explains it. Pure.
pub fn decide(policy: &Policy, q: &Question<'_>) -> (Verdict, Decided) {
    let verdict = policy.evaluate(&q.input);
    let budget = q.budgets.bytes.as_ref().filter(|_| q.query && !q.dry_run);
    let needs_bytes = verdict.needs_estimate.is_some()
        || (budget.is_some() && matches!(verdict.outcome, PolicyOutcome::Allow));
    if needs_bytes && q.input.bytes.is_none() && q.query && q.estimable {
        return (verdict, Decided::Estimate);
    }
    let deny = |message: String| {
        Decided::Admission(Admission::Deny(Denial::new(DenialKind::Forbidden, message)))
    };
    if let Some(rule) = &verdict.needs_estimate {
        // Only reachable for requests that cannot be estimated (opaque SQL, table reads).
        let message = format!(
            "Access Denied: rule {rule:?} needs the bytes this request would process, and \
             querygate cannot estimate them for it"
        );
        return (verdict, deny(message));
    }
    let mut approval = None;
    match &verdict.outcome {
        PolicyOutcome::Allow => {}
        // A dry run runs nothing: it answers without waiting (the real run will).
        PolicyOutcome::Approve { .. } if q.dry_run => {}
        PolicyOutcome::Approve {
            message,
            approvers,
            on_approval,
        } => {
            approval = Some(Needed {
                rule: verdict.rule.clone().unwrap_or_default(),
                approvers: approvers.clone(),
                message: message.clone(),
                on_approval: *on_approval,
            });
        }
        PolicyOutcome::Deny { message } => {
            let message = message.clone();
            return (verdict, deny(message));
        }
    }
    if let (Some((limit, whose)), Some(bytes)) = (budget, q.input.bytes)
        && q.used_today.bytes.saturating_add(bytes) > *limit
    {
        let message = format!(
            "Access Denied: daily budget of {} for {whose} would be exceeded: {} used today, \
             {} remaining, and this query would process {}; try a narrower query or wait \
             until tomorrow (UTC)",
            format_bytes(*limit),
            format_bytes(q.used_today.bytes),
            format_bytes(limit.saturating_sub(q.used_today.bytes)),
            format_bytes(bytes)
        );
        return (verdict, deny(message));
    }
    // A row budget: spent, nothing more runs today; else what is left of it is a row
    // limit on a result (a statement that changes rows cannot be stopped halfway: it is
    // charged what it changed). Transaction control returns and changes nothing: a spent
    // budget still lets a client end its transaction.
    let control = !q.input.statements.is_empty()
        && q.input
            .statements
            .iter()
            .all(|k| *k == StatementKind::Transaction);
    let mut row_limit = verdict.row_limit.clone();
    if let Some((limit, whose)) = q.budgets.rows.as_ref().filter(|_| !q.dry_run && !control) {
        let left = limit.saturating_sub(q.used_today.rows);
        if left == 0 {
            let message = format!(
                "Access Denied: daily budget of {} for {whose} is spent: {} returned or \
                 changed today; wait until tomorrow (UTC) or ask the gateway's operator for a \
                 larger budget",
                format_rows(*limit),
                format_rows(q.used_today.rows),
            );
            return (verdict, deny(message));
        }
        let reads = !q.input.statements.iter().any(|k| changes(*k));
        if reads && row_limit.as_ref().is_none_or(|l| l.rows > left) {
            row_limit = Some(RowLimit {
                rows: left,
                rule: format!("budget of {whose}"),
                message: format!(
                    "Access Denied: the result has more than {}, what is left of the daily \
                     budget of {} for {whose} ({} used today); narrow the query (a LIMIT or \
                     a filter) or wait until tomorrow (UTC)",
                    format_rows(left),
                    format_rows(*limit),
                    format_rows(q.used_today.rows),
                ),
            });
        }
    }
    let runs = q.query && !q.dry_run;
    let cap = [verdict.max_bytes_billed, q.source_cap]
        .into_iter()
        .flatten()
        .min();
    let plan = Plan {
        max_bytes_billed: cap.filter(|_| runs),
        row_limit,
        billable: !q.dry_run,
        sensitive: None,
        row_masks: None,
        grant: None,
        reason: None,
    };
    let admission = match approval {
        Some(needed) => Admission::Approve { needed, plan },
        None => Admission::Run(plan),
    };
    (verdict, Decided::Admission(admission))
}

impl Pipeline {
    /// The decide stage for a query or a table read: the inputs of [`decide`], gathered
    /// as the rules need them, and the mask stage (before any estimate: the dry run runs
    /// what will run, and can fail with an error that echoes values). Returns the admission
    /// and what it found, for the records (a refusal has findings too).
    pub(crate) async fn decide<S: Source>(
        &self,
        policies: &PolicySet,
        request: &Request,
        identity: &Identity,
        source: &S,
        call: &mut S::Call,
        facts: Option<&Facts>,
    ) -> (Result<Admission, Refusal>, Explained) {
        let mut explained = Explained::default();
        let decided = self
            .consider(
                policies,
                request,
                identity,
                source,
                call,
                facts,
                &mut explained,
            )
            .await;
        (decided, explained)
    }

    #[allow(clippy::too_many_arguments)]
    async fn consider<S: Source>(
        &self,
        policies: &PolicySet,
        request: &Request,
        identity: &Identity,
        source: &S,
        call: &mut S::Call,
        facts: Option<&Facts>,
        explained: &mut Explained,
    ) -> Result<Admission, Refusal> {
        let Some(policy) = policies.policy(source.name()) else {
            return Ok(Admission::Deny(Denial::new(
                DenialKind::Forbidden,
                format!("Access Denied: source {} has no policy", source.name()),
            )));
        };
        let project = source.default_project();
        let Subject {
            kinds,
            mut tables,
            mut opaque,
        } = match (facts, &request.action) {
            (Some(f), _) => Subject::of(f, project),
            (None, Action::ReadTable { table, .. }) => Subject::table_read(&source.table_of(table)),
            _ => Subject::default(),
        };
        // Rules that name tables hold for the tables a view reads too (a rule on
        // `*.finance.*` is not skipped by a view over a finance table): views are followed
        // when such a rule exists, and a view that cannot be followed makes the statement
        // opaque.
        let table_rules = policy
            .rules
            .iter()
            .any(|r| !r.tables.is_empty() || r.when.full_scan.is_some());
        if let (true, Some(f)) = (table_rules, facts) {
            match views_read(source, f).await.map_err(Refusal::Failed)? {
                Ok(views) => {
                    for v in &views {
                        for t in v.facts.reads() {
                            let name = t.qualified(&v.project);
                            if !tables
                                .iter()
                                .any(|u| !u.write && querygate_sql::same_name(&u.name, &name))
                            {
                                tables.push(TableUse {
                                    filtered: v.facts.filtered(&name, &v.project),
                                    name,
                                    write: false,
                                });
                            }
                        }
                    }
                }
                Err(why) => {
                    opaque.get_or_insert(why);
                }
            }
        }
        explained.kinds = kinds.iter().map(|k| k.name().to_string()).collect();
        explained.tables = tables.iter().map(|t| t.name.clone()).collect();
        explained.policy_version = Some(policy.version.clone());
        // Classified columns the request reaches: the policy's `touches`, the reads to
        // mask, and what masking cannot make safe.
        let reach = match (facts, &request.action) {
            (Some(f), _) => reach::of_facts(&policies.classifier, f, project, identity),
            (
                None,
                Action::ReadTable {
                    table,
                    result_table: false,
                },
            ) => reach::of_table(&policies.classifier, &source.table_of(table), identity),
            _ => reach::Reach::default(),
        };
        let dry_run = matches!(request.action, Action::Query(Query { dry_run: true, .. }));
        let query = matches!(request.action, Action::Query(_));
        // mask: before the estimate, so the statement as written never goes upstream.
        if let Some(f) = facts {
            self.views(&policies.classifier, explained, identity, source, f)
                .await?;
        }
        let row_masks = self
            .mask(policies, request, explained, identity, source, call, &reach)
            .await?;

        let mut partitions = HashMap::new();
        if policy.rules.iter().any(|r| r.when.full_scan.is_some()) {
            for t in tables.iter().filter(|t| !t.write) {
                if partitions.contains_key(&t.name) {
                    continue;
                }
                if let Ok(p) = source.partitioning(&t.name).await {
                    partitions.insert(t.name.clone(), p);
                }
            }
        }
        // Budgets: bytes where the source bills them (queries), rows on every source.
        let all = policies.budgets(identity);
        let budgets = Budgets {
            bytes: all
                .bytes
                .filter(|_| query && !dry_run && source.bills_bytes()),
            rows: all.rows.filter(|_| !dry_run),
        };
        let used_today = if budgets == Budgets::default() {
            Usage::default()
        } else {
            let day = audit_time(time::OffsetDateTime::now_utc());
            self.store
                .usage(&identity.subject, &day[..10])
                .map_err(|e| Refusal::Failed(Fault::gateway(e.to_string())))?
        };
        let mut question = Question {
            input: Input {
                identity,
                source: source.name(),
                statements: &kinds,
                tables: &tables,
                opaque: opaque.as_deref(),
                // Reading a table's rows directly processes and bills nothing.
                bytes: (!query).then_some(0),
                partitions: &partitions,
                tags: &reach.tags,
                now: jiff::Timestamp::now(),
            },
            query,
            dry_run,
            estimable: opaque.is_none(),
            budgets,
            used_today,
            source_cap: policies.max_bytes_billed.get(source.name()).copied(),
        };
        let (mut verdict, mut decided) = decide(policy, &question);
        if let Decided::Estimate = decided {
            let estimate = source.estimate(call).await.map_err(|refusal| match refusal {
                // The dry run's error could echo values the query reads.
                Refusal::Denied(d) if reach.sensitive.is_some() => Refusal::Denied(Denial::new(
                    d.kind,
                    format!(
                        "Invalid query: the query failed its dry run; the error is withheld \
                         because {}",
                        reach.sensitive.as_deref().unwrap_or("it reads masked columns")
                    ),
                )),
                other => other,
            })?;
            explained.bytes_estimate = Some(estimate);
            question.input.bytes = Some(estimate);
            (verdict, decided) = decide(policy, &question);
        }
        (explained.verdict, explained.approvers) = match &verdict.outcome {
            PolicyOutcome::Allow => (Some("allow"), Vec::new()),
            PolicyOutcome::Deny { .. } => (Some("deny"), Vec::new()),
            PolicyOutcome::Approve { approvers, .. } => (Some("approve"), approvers.clone()),
        };
        explained.rule = verdict.rule.take();
        explained.rules = std::mem::take(&mut verdict.matched);
        let admission = match decided {
            Decided::Admission(a) => a,
            // Asked again with the bytes: never asks a third time.
            Decided::Estimate => Admission::Deny(Denial::new(
                DenialKind::Forbidden,
                "Access Denied: querygate could not decide this request without an estimate",
            )),
        };
        Ok(match admission {
            Admission::Run(plan) => Admission::Run(Plan {
                sensitive: reach.sensitive,
                row_masks,
                ..plan
            }),
            Admission::Approve { needed, plan } => Admission::Approve {
                needed,
                plan: Plan {
                    sensitive: reach.sensitive,
                    row_masks,
                    ..plan
                },
            },
            deny => deny,
        })
    }
}

/// Whether a statement of this kind changes something (it is charged the rows it changed,
/// but cannot be held to a row limit: it has run by the time they are known).
fn changes(kind: StatementKind) -> bool {
    use StatementKind::*;
    match kind {
        Insert | Update | Delete | Merge | Create | Drop | Alter | Truncate | Grant | Export
        | Call => true,
        Select | Copy | Declare | Set | Transaction | Other => false,
    }
}

/// One view a statement reads, directly or through other views.
pub(crate) struct ViewRead {
    /// The views it was reached through and itself, `a → b`.
    pub path: String,
    /// The project its unqualified names belong to (the view's own).
    pub project: String,
    /// Its definition's facts.
    pub facts: Facts,
}

/// Every view `facts` read, following views in views (up to 8 deep, 64 lookups), with the
/// facts of each definition. `Ok(Err(why))` when one cannot be followed: too deep, or a
/// definition the source does not show or querygate cannot analyze.
pub(crate) async fn views_read<S: Source>(
    source: &S,
    facts: &Facts,
) -> Result<Result<Vec<ViewRead>, String>, Fault> {
    const DEPTH: usize = 8;
    const LOOKUPS: usize = 64;
    let project = source.default_project();
    // (table, the views it was reached through)
    let mut queue: Vec<(String, Vec<String>)> = facts
        .reads()
        .into_iter()
        .filter(|t| !t.wildcard && !t.information_schema)
        .map(|t| (t.qualified(project), Vec::new()))
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    while let Some((table, via)) = queue.pop() {
        if !seen.insert(querygate_sql::name_key(&table)) {
            continue;
        }
        if seen.len() > LOOKUPS || via.len() >= DEPTH {
            return Ok(Err(format!(
                "the query reads views nested too deeply for querygate to follow ({table})"
            )));
        }
        let Some(view) = source.view(&table).await? else {
            continue;
        };
        let mut chain = via;
        chain.push(table.clone());
        let path = chain.join(" → ");
        if view.query.trim().is_empty() {
            return Ok(Err(format!(
                "the query reads the view {path}, whose definition the source does not show, \
                 so querygate cannot tell which tables and columns it reads"
            )));
        }
        let inner = querygate_sql::analyze(&view.query, source.dialect());
        if let Some(why) = &inner.opaque {
            let legacy = if view.legacy_sql {
                " (a legacy SQL view)"
            } else {
                ""
            };
            return Ok(Err(format!(
                "the query reads the view {path}{legacy}, whose definition querygate cannot \
                 analyze ({why})"
            )));
        }
        let view_project = table.split('.').next().unwrap_or(project).to_string();
        for t in inner.reads() {
            if !t.information_schema && !t.wildcard {
                queue.push((t.qualified(&view_project), chain.clone()));
            }
        }
        out.push(ViewRead {
            path,
            project: view_project,
            facts: inner,
        });
    }
    Ok(Ok(out))
}
