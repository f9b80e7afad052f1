//! One rule: what users write ([`RuleSpec`]), its checked form ([`Rule`]), and how it
//! matches an [`Input`].

use querygate_core::Identity;
use querygate_sql::{StatementKind, name_key, same_name};
use serde::Deserialize;

use crate::{Input, Outcome, Partitioning, SizeError, parse_bytes};

/// A rule as written in querygate.toml or a policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub name: String,
    #[serde(default)]
    pub who: Vec<String>,
    /// Principals the identity must be acting for (an agent acting for a person).
    #[serde(default)]
    pub on_behalf_of: Vec<String>,
    #[serde(default)]
    pub tables: Vec<String>,
    #[serde(default)]
    pub statements: Vec<String>,
    #[serde(default)]
    pub when: WhenSpec,
    pub action: String,
    pub message: Option<String>,
    #[serde(default)]
    pub approvers: Vec<String>,
    pub max_bytes_billed: Option<String>,
    /// How a request an approve rule caught is answered: `"wait"` (the job waits, the
    /// client keeps polling) or `"fail"` (an error at once naming the ticket; running the
    /// same statement again after approval runs it, once).
    pub on_approval: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhenSpec {
    pub bytes_over: Option<String>,
    pub full_scan: Option<bool>,
    pub rows_over: Option<u64>,
    pub opaque: Option<bool>,
    pub touches: Option<String>,
    pub hours: Option<String>,
}

/// How a request an approve rule caught is answered while its ticket is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnApproval {
    /// As a job that has not started: the client keeps polling until it is decided.
    #[default]
    Wait,
    /// At once, with an error naming the ticket and its approvers; the client runs the
    /// same statement again once it is approved.
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleAction {
    Allow,
    Deny,
    Approve,
}

/// `group:NAME` or `identity:SUBJECT` (`*` matches any run of characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Group(String),
    Identity(String),
}

/// A principal that is neither `group:NAME` nor `identity:SUBJECT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} must be \"group:NAME\" or \"identity:SUBJECT\"")]
pub struct PrincipalError {
    pub text: String,
}

impl Principal {
    pub fn parse(text: &str) -> Result<Principal, PrincipalError> {
        if let Some(g) = text.strip_prefix("group:") {
            Ok(Principal::Group(g.to_string()))
        } else if let Some(i) = text.strip_prefix("identity:") {
            Ok(Principal::Identity(i.to_string()))
        } else {
            Err(PrincipalError {
                text: text.to_string(),
            })
        }
    }

    pub fn matches(&self, identity: &Identity) -> bool {
        match self {
            Principal::Group(g) => identity.groups.iter().any(|x| glob(g, x)),
            Principal::Identity(s) => glob(s, &identity.subject),
        }
    }
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::Group(g) => write!(f, "group:{g}"),
            Principal::Identity(i) => write!(f, "identity:{i}"),
        }
    }
}

/// A glob over `project.dataset.table`; `*` matches any run of characters within one part.
/// Names compare without case ([`querygate_sql::name_key`]): upstreams resolve
/// `Shop.CUSTOMERS` to `shop.customers`, so a rule on one is a rule on the other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableGlob(pub String);

impl TableGlob {
    pub fn matches(&self, table: &str) -> bool {
        let (pattern, table) = (name_key(&self.0), name_key(table));
        let pattern: Vec<&str> = pattern.split('.').collect();
        let parts: Vec<&str> = table.split('.').collect();
        pattern.len() == parts.len() && pattern.iter().zip(&parts).all(|(p, t)| glob(p, t))
    }
}

/// A daily time window in a time zone, e.g. `08:00-18:00 Europe/Berlin`.
#[derive(Debug, Clone, PartialEq)]
pub struct Hours {
    start: (i8, i8),
    end: (i8, i8),
    zone: String,
    tz: jiff::tz::TimeZone,
}

impl Eq for Hours {}

/// Why an `hours = "…"` window cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HoursError {
    #[error("hours = {text:?}: write \"08:00-18:00 Europe/Berlin\" (zone optional, default UTC)")]
    Malformed { text: String },
    #[error("hours = {text:?}: unknown time zone {zone:?}")]
    UnknownZone { text: String, zone: String },
}

impl Hours {
    pub fn parse(text: &str) -> Result<Hours, HoursError> {
        let bad = || HoursError::Malformed {
            text: text.to_string(),
        };
        let (range, zone) = match text.trim().split_once(' ') {
            Some((r, z)) => (r, z.trim()),
            None => (text.trim(), "UTC"),
        };
        let (a, b) = range.split_once('-').ok_or_else(bad)?;
        let hm = |s: &str| -> Result<(i8, i8), HoursError> {
            let (h, m) = s.split_once(':').ok_or_else(bad)?;
            let h: i8 = h.parse().map_err(|_| bad())?;
            let m: i8 = m.parse().map_err(|_| bad())?;
            if !(0..=24).contains(&h) || !(0..60).contains(&m) || (h == 24 && m != 0) {
                return Err(bad());
            }
            Ok((h, m))
        };
        let tz = jiff::tz::TimeZone::get(zone).map_err(|_| HoursError::UnknownZone {
            text: text.to_string(),
            zone: zone.to_string(),
        })?;
        Ok(Hours {
            start: hm(a)?,
            end: hm(b)?,
            zone: zone.to_string(),
            tz,
        })
    }

    /// Whether `now` falls inside the window (windows may wrap past midnight).
    pub fn contains(&self, now: jiff::Timestamp) -> bool {
        let local = now.to_zoned(self.tz.clone());
        let minute = |(h, m): (i8, i8)| i32::from(h) * 60 + i32::from(m);
        let t = i32::from(local.hour()) * 60 + i32::from(local.minute());
        let (s, e) = (minute(self.start), minute(self.end));
        if s <= e {
            s <= t && t < e
        } else {
            t >= s || t < e
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct When {
    pub bytes_over: Option<u64>,
    pub full_scan: Option<bool>,
    pub rows_over: Option<u64>,
    pub opaque: Option<bool>,
    pub touches: Option<String>,
    pub hours: Option<Hours>,
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub who: Vec<Principal>,
    /// Matched against the identity acted for; a rule with entries here never matches a
    /// request that acts for nobody.
    pub on_behalf_of: Vec<Principal>,
    pub tables: Vec<TableGlob>,
    pub statements: Vec<StatementKind>,
    pub when: When,
    pub action: RuleAction,
    pub message: Option<String>,
    pub approvers: Vec<Principal>,
    pub max_bytes_billed: Option<u64>,
    pub on_approval: OnApproval,
}

/// A per-identity daily budget for the identities a principal names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Budget {
    pub who: Principal,
    pub per_day: Amount,
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    /// Bytes a query processes (billed bytes where the source bills them): checked
    /// against the dry-run estimate before it runs, on sources that bill by bytes.
    Bytes(u64),
    /// Rows the requests return or change: on every source, the rest of today's
    /// budget is a row limit on the next result.
    Rows(u64),
}

pub(crate) enum Check {
    No,
    Yes,
    /// Everything else matched; `bytes_over` needs an estimate.
    NeedsBytes,
    /// Everything else matched; applies if the result has more than this many rows.
    AfterRows(u64),
}

const KINDS: &[StatementKind] = &[
    StatementKind::Select,
    StatementKind::Insert,
    StatementKind::Update,
    StatementKind::Delete,
    StatementKind::Merge,
    StatementKind::Create,
    StatementKind::Drop,
    StatementKind::Alter,
    StatementKind::Truncate,
    StatementKind::Grant,
    StatementKind::Export,
    StatementKind::Copy,
    StatementKind::Call,
    StatementKind::Declare,
    StatementKind::Set,
    StatementKind::Transaction,
    StatementKind::Other,
];

/// Why a written rule is not a rule: the rule's name and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule:?}: {problem}")]
pub struct RuleError {
    /// The rule's name.
    pub rule: String,
    pub problem: RuleProblem,
}

/// What is wrong with a written rule, by field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleProblem {
    #[error("action {0:?} must be \"allow\", \"deny\" or \"approve\"")]
    Action(String),
    #[error("who: {0}")]
    Who(PrincipalError),
    #[error("on_behalf_of: {0}")]
    OnBehalfOf(PrincipalError),
    #[error("approvers: {0}")]
    Approvers(PrincipalError),
    #[error("an approve rule needs approvers = [\"group:…\"]")]
    NoApprovers,
    #[error("on_approval applies to approve rules only")]
    OnApprovalNotApprove,
    #[error("on_approval {0:?} must be \"wait\" or \"fail\"")]
    OnApproval(String),
    #[error("statements: unknown kind {kind:?}; known: {known}")]
    UnknownStatement { kind: String, known: String },
    #[error("tables: {0:?} must be a project.dataset.table pattern, e.g. \"*.finance.*\"")]
    TablePattern(String),
    #[error(
        "when.rows_over is known only after the query ran, so it can deny or hold a result but not allow one"
    )]
    RowsOverAllow,
    #[error("when.bytes_over: {0}")]
    BytesOver(SizeError),
    #[error("{0}")]
    Hours(HoursError),
    #[error("max_bytes_billed: {0}")]
    MaxBytesBilled(SizeError),
}

impl RuleSpec {
    /// Checks a written rule. Errors name the rule and the field.
    pub fn check(&self) -> Result<Rule, RuleError> {
        let ctx = |problem: RuleProblem| RuleError {
            rule: self.name.clone(),
            problem,
        };
        let action = match self.action.as_str() {
            "allow" => RuleAction::Allow,
            "deny" => RuleAction::Deny,
            "approve" => RuleAction::Approve,
            other => {
                return Err(ctx(RuleProblem::Action(other.to_string())));
            }
        };
        let who = self
            .who
            .iter()
            .map(|w| Principal::parse(w))
            .collect::<Result<_, _>>()
            .map_err(|e| ctx(RuleProblem::Who(e)))?;
        let on_behalf_of = self
            .on_behalf_of
            .iter()
            .map(|w| Principal::parse(w))
            .collect::<Result<_, _>>()
            .map_err(|e| ctx(RuleProblem::OnBehalfOf(e)))?;
        let approvers: Vec<Principal> = self
            .approvers
            .iter()
            .map(|w| Principal::parse(w))
            .collect::<Result<_, _>>()
            .map_err(|e| ctx(RuleProblem::Approvers(e)))?;
        if action == RuleAction::Approve && approvers.is_empty() {
            return Err(ctx(RuleProblem::NoApprovers));
        }
        let on_approval = match (self.on_approval.as_deref(), action) {
            (None | Some("wait"), _) => OnApproval::Wait,
            (Some("fail"), RuleAction::Approve) => OnApproval::Fail,
            (Some("fail"), _) => {
                return Err(ctx(RuleProblem::OnApprovalNotApprove));
            }
            (Some(other), _) => {
                return Err(ctx(RuleProblem::OnApproval(other.to_string())));
            }
        };
        let statements = self
            .statements
            .iter()
            .map(|s| {
                KINDS
                    .iter()
                    .copied()
                    .find(|k| k.name() == s.as_str())
                    .ok_or_else(|| {
                        let names: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
                        ctx(RuleProblem::UnknownStatement {
                            kind: s.clone(),
                            known: names.join(", "),
                        })
                    })
            })
            .collect::<Result<_, _>>()?;
        for t in &self.tables {
            if t.split('.').count() != 3 {
                return Err(ctx(RuleProblem::TablePattern(t.clone())));
            }
        }
        let w = &self.when;
        if w.rows_over.is_some() && action == RuleAction::Allow {
            return Err(ctx(RuleProblem::RowsOverAllow));
        }
        let when = When {
            bytes_over: w
                .bytes_over
                .as_deref()
                .map(parse_bytes)
                .transpose()
                .map_err(|e| ctx(RuleProblem::BytesOver(e)))?,
            full_scan: w.full_scan,
            rows_over: w.rows_over,
            opaque: w.opaque,
            touches: w.touches.clone(),
            hours: w
                .hours
                .as_deref()
                .map(Hours::parse)
                .transpose()
                .map_err(|e| ctx(RuleProblem::Hours(e)))?,
        };
        Ok(Rule {
            name: self.name.clone(),
            who,
            on_behalf_of,
            tables: self.tables.iter().map(|t| TableGlob(t.clone())).collect(),
            statements,
            when,
            action,
            message: self.message.clone(),
            approvers,
            max_bytes_billed: self
                .max_bytes_billed
                .as_deref()
                .map(parse_bytes)
                .transpose()
                .map_err(|e| ctx(RuleProblem::MaxBytesBilled(e)))?,
            on_approval,
        })
    }
}

impl Rule {
    /// The rule names `identity` (its `who` and `on_behalf_of`), whatever it is about.
    pub(crate) fn names(&self, identity: &Identity) -> bool {
        (self.who.is_empty() || self.who.iter().any(|p| p.matches(identity)))
            && (self.on_behalf_of.is_empty()
                || identity
                    .acting_for
                    .as_deref()
                    .is_some_and(|person| self.on_behalf_of.iter().any(|p| p.matches(person))))
    }

    /// The rule holds for every request of whom it names (no tables, statements or
    /// conditions).
    pub(crate) fn unconditional(&self) -> bool {
        self.tables.is_empty() && self.statements.is_empty() && self.when == When::default()
    }

    pub(crate) fn check(&self, input: &Input<'_>) -> Check {
        let allow = self.action == RuleAction::Allow;
        if !self.who.is_empty() && !self.who.iter().any(|p| p.matches(input.identity)) {
            return Check::No;
        }
        if !self.on_behalf_of.is_empty() {
            let Some(principal) = input.identity.acting_for.as_deref() else {
                return Check::No;
            };
            if !self.on_behalf_of.iter().any(|p| p.matches(principal)) {
                return Check::No;
            }
        }
        if let Some(hours) = &self.when.hours
            && !hours.contains(input.now)
        {
            return Check::No;
        }
        let opaque = input.opaque.is_some();
        match self.when.opaque {
            Some(want) if want != opaque => return Check::No,
            None if opaque && allow => return Check::No,
            _ => {}
        }
        // Opaque input could be any statement on any table: it satisfies deny/approve lists.
        let unknown = opaque && !allow;
        if !self.statements.is_empty() && !unknown {
            let listed = |k: &StatementKind| self.statements.contains(k);
            let ok = if allow {
                input
                    .statements
                    .iter()
                    .filter(|k| **k != StatementKind::Transaction)
                    .all(listed)
            } else {
                input.statements.iter().any(listed)
            };
            if !ok {
                return Check::No;
            }
        }
        let in_scope = |t: &&crate::TableUse| {
            self.tables.is_empty() || self.tables.iter().any(|g| g.matches(&t.name))
        };
        if !self.tables.is_empty() && !unknown {
            let ok = if allow {
                input.tables.iter().all(|t| in_scope(&t))
            } else {
                input.tables.iter().any(|t| in_scope(&t))
            };
            if !ok {
                return Check::No;
            }
        }
        if let Some(want) = self.when.full_scan {
            let full = input
                .tables
                .iter()
                .filter(|t| !t.write)
                .filter(in_scope)
                .any(|t| unfiltered(t, input));
            if full != want {
                return Check::No;
            }
        }
        if let Some(tag) = &self.when.touches
            && !input.tags.iter().any(|t| t == tag)
        {
            return Check::No;
        }
        if let Some(limit) = self.when.bytes_over {
            match input.bytes {
                None => return Check::NeedsBytes,
                Some(b) if b <= limit => return Check::No,
                Some(_) => {}
            }
        }
        if let Some(rows) = self.when.rows_over {
            return Check::AfterRows(rows);
        }
        Check::Yes
    }

    pub(crate) fn outcome(&self, input: &Input<'_>) -> Outcome {
        match self.action {
            RuleAction::Allow => Outcome::Allow,
            RuleAction::Deny => Outcome::Deny {
                message: self.denial_message(input, ""),
            },
            RuleAction::Approve => {
                let approvers: Vec<String> =
                    self.approvers.iter().map(ToString::to_string).collect();
                Outcome::Approve {
                    message: format!(
                        "{}; it needs approval by {}",
                        self.denial_message(input, ""),
                        approvers.join(" or ")
                    ),
                    approvers,
                    on_approval: self.on_approval,
                }
            }
        }
    }

    /// `Access Denied: rule "NAME": MESSAGE (what would be allowed instead)`.
    pub(crate) fn denial_message(&self, input: &Input<'_>, why: &str) -> String {
        let mut msg = format!("Access Denied: rule {:?}", self.name);
        if !why.is_empty() {
            msg.push_str(&format!(" ({why})"));
        }
        if let Some(m) = &self.message {
            msg.push_str(": ");
            msg.push_str(m);
        }
        if let (Some(limit), Some(bytes)) = (self.when.bytes_over, input.bytes) {
            msg.push_str(&format!(
                " [the query would process {}, over the rule's {}]",
                crate::format_bytes(bytes),
                crate::format_bytes(limit)
            ));
        }
        if self.when.full_scan == Some(true) {
            let hints: Vec<String> = input
                .tables
                .iter()
                .filter(|t| !t.write && unfiltered(t, input))
                .filter_map(|t| match partitioning(input, &t.name) {
                    Some(Partitioning::Column(c)) => {
                        Some(format!("filter {} on its partition column {c}", t.name))
                    }
                    _ => None,
                })
                .collect();
            if !hints.is_empty() {
                msg.push_str(&format!(" [to be allowed: {}]", hints.join("; ")));
            }
        }
        if let Some(why) = input.opaque {
            msg.push_str(&format!(
                " [querygate could not fully analyze the statement: {why}]"
            ));
        }
        msg
    }
}

/// A read of a partitioned table without a predicate on its partition column; a table
/// whose partitioning is unknown counts as unfiltered (fail closed).
fn unfiltered(t: &crate::TableUse, input: &Input<'_>) -> bool {
    let entries = partitionings(input, &t.name);
    entries.is_empty()
        || entries.iter().any(|p| match p {
            Partitioning::NotPartitioned => false,
            Partitioning::Column(c) => !t.filtered.iter().any(|f| same_name(f, c)),
        })
}

/// A table's partitioning entries, names compared without case (`Shop.Orders` is
/// `shop.orders`); every one of them must be satisfied.
fn partitionings<'a>(input: &'a Input<'_>, table: &str) -> Vec<&'a Partitioning> {
    let key = name_key(table);
    input
        .partitions
        .iter()
        .filter(|(name, _)| name.as_str() == table || name_key(name) == key)
        .map(|(_, p)| p)
        .collect()
}

/// The partition column of a table, for a hint.
fn partitioning<'a>(input: &'a Input<'_>, table: &str) -> Option<&'a Partitioning> {
    partitionings(input, table)
        .into_iter()
        .find(|p| matches!(p, Partitioning::Column(_)))
}

/// [`glob`] over names that compare without case: table, dataset, project and column names,
/// both sides folded as [`querygate_sql::name_key`] folds them. (Principals — groups and
/// subjects — keep exact [`glob`]: they are identities, not names an engine resolves.)
pub(crate) fn name_glob(pattern: &str, text: &str) -> bool {
    glob(&name_key(pattern), &name_key(text))
}

/// `*` matches any run of characters (including none); everything else literally.
pub(crate) fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Why a `budgets` entry cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    #[error("budgets: {0}")]
    Who(PrincipalError),
    #[error("budgets.{who:?}: {size}")]
    Size { who: String, size: SizeError },
    #[error("budgets.{who:?}: {rows}")]
    Rows { who: String, rows: crate::RowsError },
}

impl Budget {
    /// A budget as `[budgets]` writes it: `"25 GiB"` (bytes) or `"1M rows"`.
    pub fn parse(who: &str, amount: &str) -> Result<Budget, BudgetError> {
        let who_ = || who.to_string();
        let trimmed = amount.trim_end();
        let per_day = if trimmed.ends_with("rows") || trimmed.ends_with("row") {
            Amount::Rows(
                crate::parse_rows(amount)
                    .map_err(|rows| BudgetError::Rows { who: who_(), rows })?,
            )
        } else {
            Amount::Bytes(
                parse_bytes(amount).map_err(|size| BudgetError::Size { who: who_(), size })?,
            )
        };
        Ok(Budget {
            who: Principal::parse(who).map_err(BudgetError::Who)?,
            per_day,
        })
    }
}
