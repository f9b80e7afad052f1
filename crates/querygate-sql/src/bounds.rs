//! Partition-filter facts: which columns of which reads (scans) a WHERE or JOIN ON condition
//! bounds, i.e. restricts to values computed from constants and query parameters.
//!
//! Part of the walker (`walk.rs` records the scans and calls this for each query block). A
//! purely syntactic pass over one condition that under-approximates: a column counts as
//! bounded only through a form listed in [`crate::Scan`]'s documentation, and a name counts
//! only when it can be pinned to a read of the query block. Must not recurse without bound
//! (AND/OR chains are walked with explicit stacks, everything else is depth-limited), must not
//! panic, and must never report a bound it is unsure of.

use std::collections::{BTreeMap, BTreeSet};

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, InTarget,
};

use crate::SqlDialect;
use crate::functions;
use crate::names::{function_name, name_key};
use crate::scope::{Lineage, Rel, RelKind};
use crate::walk::Walker;

/// Bounded columns by scan index.
pub(crate) type Bounds = BTreeMap<usize, BTreeSet<String>>;

/// Deeper than this, a condition bounds nothing (sqlparser's own recursion limit keeps real
/// conditions far below it).
const MAX_DEPTH: usize = 48;

/// Conjuncts or disjuncts looked at in one chain; the rest bound nothing.
const MAX_TERMS: usize = 20_000;

/// Functions of one column that keep a comparison with a constant a bound on the column
/// (monotone conversions and truncations of dates and times).
const CONVERSIONS: &[&str] = &[
    "DATE",
    "DATETIME",
    "TIMESTAMP",
    "DATE_TRUNC",
    "DATETIME_TRUNC",
    "TIMESTAMP_TRUNC",
    "UNIX_DATE",
    "UNIX_SECONDS",
    "UNIX_MILLIS",
    "UNIX_MICROS",
    "TIMESTAMP_SECONDS",
    "TIMESTAMP_MILLIS",
    "TIMESTAMP_MICROS",
    "DATE_FROM_UNIX_DATE",
];

/// The FROM items of the query block a condition belongs to.
pub(crate) struct Block<'a> {
    pub rels: &'a [Rel],
    pub using: &'a [(String, Lineage)],
    /// A NATURAL join merges same-named columns: no unqualified name is pinned.
    pub natural: bool,
}

impl Walker<'_> {
    /// The columns `cond` bounds, by scan, among the reads of `block`.
    pub(crate) fn bounds(&self, cond: &Expr, block: &Block<'_>) -> Bounds {
        self.conjunction(cond, block, 0)
    }

    /// An AND chain: every conjunct's bounds add up.
    fn conjunction(&self, cond: &Expr, block: &Block<'_>, depth: usize) -> Bounds {
        let mut out = Bounds::new();
        if depth > MAX_DEPTH {
            return out;
        }
        let mut stack = vec![cond];
        let mut terms = 0;
        while let Some(e) = stack.pop() {
            terms += 1;
            if terms > MAX_TERMS {
                break;
            }
            match e {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::And,
                    right,
                } => {
                    stack.push(right);
                    stack.push(left);
                }
                Expr::Nested(inner) => stack.push(inner),
                other => {
                    for (scan, cols) in self.term(other, block, depth) {
                        out.entry(scan).or_default().extend(cols);
                    }
                }
            }
        }
        out
    }

    /// One conjunct: an OR chain, or a comparison.
    fn term(&self, e: &Expr, block: &Block<'_>, depth: usize) -> Bounds {
        match e {
            Expr::BinaryOp {
                op: BinaryOperator::Or,
                ..
            } => self.disjunction(e, block, depth),
            Expr::BinaryOp { left, op, right } if is_comparison(op) => {
                if self.constant(right, 0) {
                    self.bound_column(left, block)
                } else if self.constant(left, 0) {
                    self.bound_column(right, block)
                } else {
                    Bounds::new()
                }
            }
            Expr::Between {
                expr,
                negated: false,
                low,
                high,
            } if self.constant(low, 0) && self.constant(high, 0) => self.bound_column(expr, block),
            Expr::In {
                expr,
                target: InTarget::List(list),
                negated: false,
                ..
            } if !list.is_empty() && list.iter().all(|x| self.constant(x, 0)) => {
                self.bound_column(expr, block)
            }
            _ => Bounds::new(),
        }
    }

    /// An OR chain: a column is bounded only when every branch bounds it (on the same scan).
    fn disjunction(&self, e: &Expr, block: &Block<'_>, depth: usize) -> Bounds {
        let mut branches: Vec<&Expr> = Vec::new();
        let mut stack = vec![e];
        while let Some(x) = stack.pop() {
            if branches.len() + stack.len() > MAX_TERMS {
                return Bounds::new();
            }
            match x {
                Expr::BinaryOp {
                    left,
                    op: BinaryOperator::Or,
                    right,
                } => {
                    stack.push(right);
                    stack.push(left);
                }
                Expr::Nested(inner)
                    if matches!(
                        inner.as_ref(),
                        Expr::BinaryOp {
                            op: BinaryOperator::Or,
                            ..
                        }
                    ) =>
                {
                    stack.push(inner)
                }
                other => branches.push(other),
            }
        }
        let mut out: Option<Bounds> = None;
        for b in branches {
            let here = self.conjunction(b, block, depth + 1);
            out = Some(match out {
                None => here,
                Some(acc) => intersect(acc, &here),
            });
            if out.as_ref().is_some_and(BTreeMap::is_empty) {
                break;
            }
        }
        out.unwrap_or_default()
    }

    /// The scan(s) and column a comparison's column side designates: a column of a read of
    /// this block, possibly inside casts and date/time conversions.
    fn bound_column(&self, e: &Expr, block: &Block<'_>) -> Bounds {
        let mut out = Bounds::new();
        if let Some((scans, column)) = self.column_side(e, block, 0) {
            for s in scans {
                out.entry(s).or_default().insert(column.clone());
            }
        }
        out
    }

    fn column_side(
        &self,
        e: &Expr,
        block: &Block<'_>,
        depth: usize,
    ) -> Option<(Vec<usize>, String)> {
        if depth > MAX_DEPTH {
            return None;
        }
        match e {
            Expr::Identifier(id) => self.unqualified(id, block),
            Expr::CompoundIdentifier(ids) => self.qualified(ids, block),
            Expr::Nested(x) | Expr::Cast { expr: x, .. } => self.column_side(x, block, depth + 1),
            Expr::Function(f) => {
                let name = function_name(&f.name);
                let base = name.strip_prefix("SAFE.").unwrap_or(&name);
                if !CONVERSIONS.contains(&base)
                    || f.over.is_some()
                    || f.filter.is_some()
                    || !f.within_group.is_empty()
                    || !matches!(f.parameters, FunctionArguments::None)
                {
                    return None;
                }
                let FunctionArguments::List(list) = &f.args else {
                    return None;
                };
                if !list.clauses.is_empty() || list.duplicate_treatment.is_some() {
                    return None;
                }
                let mut found = None;
                for (i, arg) in list.args.iter().enumerate() {
                    let FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) = arg else {
                        return None;
                    };
                    if self.constant(x, depth + 1) || (i > 0 && self.is_date_part_arg(x)) {
                        continue;
                    }
                    if found.is_some() {
                        return None;
                    }
                    found = Some(self.column_side(x, block, depth + 1)?);
                }
                found
            }
            _ => None,
        }
    }

    /// An unqualified column: every read of the block that may have it. Sound because a name
    /// two FROM items have is ambiguous (the engine refuses the query), so for the table the
    /// consumer asks about (which has the column: it is partitioned on it) the name is its
    /// own. Not pinned: names that are also a FROM item's alias or a JOIN USING column, any
    /// name in a block with a NATURAL join, and pseudo-columns (`_PARTITIONTIME`, …) when the
    /// block has more than one FROM item.
    fn unqualified(&self, id: &Ident, block: &Block<'_>) -> Option<(Vec<usize>, String)> {
        if block.natural
            || (self.names.dialect == SqlDialect::BigQuery && id.value.starts_with('@'))
        {
            return None;
        }
        let name = self.names.ident(id);
        if block.using.iter().any(|(n, _)| self.names.same(n, &name))
            || block
                .rels
                .iter()
                .any(|r| r.alias.as_ref().is_some_and(|a| self.names.same(a, &name)))
        {
            return None;
        }
        if name.starts_with('_') && block.rels.len() != 1 {
            return None;
        }
        let scans: Vec<usize> = block
            .rels
            .iter()
            .filter_map(|r| match (&r.kind, r.scan) {
                (RelKind::Base(_), Some(s)) => Some(s),
                _ => None,
            })
            .collect();
        (!scans.is_empty()).then_some((scans, name))
    }

    /// `alias.column` / `ds.table.column`: the one FROM item of the block the qualifier
    /// designates, when it is a read of a base table and the rest is one column name.
    fn qualified(&self, ids: &[Ident], block: &Block<'_>) -> Option<(Vec<usize>, String)> {
        let parts: Vec<String> = ids.iter().map(|i| self.names.ident(i)).collect();
        let mut matched = block
            .rels
            .iter()
            .filter_map(|r| r.prefix_len(self.names, &parts).map(|k| (r, k)));
        let (rel, k) = matched.next()?;
        if matched.next().is_some() || k + 1 != parts.len() {
            return None;
        }
        match (&rel.kind, rel.scan) {
            (RelKind::Base(_), Some(s)) => Some((vec![s], parts[k].clone())),
            _ => None,
        }
    }

    /// Whether `e` is computed from constants and query parameters only: literals, typed
    /// literals, `@params`, positional `?`, and casts, arithmetic, intervals and plain
    /// function calls over them (`CURRENT_DATE()`, `DATE_SUB(CURRENT_DATE(), INTERVAL 7
    /// DAY)`). No column, subquery, window or aggregate clause.
    pub(crate) fn constant(&self, e: &Expr, depth: usize) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match e {
            Expr::Value(_) | Expr::TypedString(_) => true,
            Expr::Identifier(id) => {
                self.names.dialect == SqlDialect::BigQuery
                    && id.quote_style.is_none()
                    && id.value.starts_with('@')
                    && !id.value.starts_with("@@")
            }
            Expr::Nested(x)
            | Expr::UnaryOp { expr: x, .. }
            | Expr::Cast { expr: x, .. }
            | Expr::Extract { expr: x, .. } => self.constant(x, depth + 1),
            Expr::BinaryOp { left, op, right } => {
                !matches!(op, BinaryOperator::And | BinaryOperator::Or)
                    && self.constant(left, depth + 1)
                    && self.constant(right, depth + 1)
            }
            Expr::Interval(i) => self.constant(&i.value, depth + 1),
            Expr::AtTimeZone {
                timestamp,
                time_zone,
            } => self.constant(timestamp, depth + 1) && self.constant(time_zone, depth + 1),
            Expr::Function(f) => {
                let name = function_name(&f.name);
                if f.over.is_some()
                    || f.filter.is_some()
                    || !f.within_group.is_empty()
                    || functions::runs_sql_text(&name)
                    || functions::is_side_effecting(&name)
                    || !matches!(f.parameters, FunctionArguments::None)
                {
                    return false;
                }
                match &f.args {
                    FunctionArguments::None => true,
                    FunctionArguments::Subquery(_) => false,
                    FunctionArguments::List(list) => {
                        list.clauses.is_empty()
                            && list.args.iter().enumerate().all(|(i, arg)| {
                                let x = match arg {
                                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x))
                                    | FunctionArg::Named {
                                        arg: FunctionArgExpr::Expr(x),
                                        ..
                                    } => x,
                                    _ => return false,
                                };
                                self.constant(x, depth + 1)
                                    || (i > 0
                                        && functions::takes_date_part(&name)
                                        && self.is_date_part_arg(x))
                            })
                    }
                }
            }
            Expr::Array(a) => a.elem.iter().all(|x| self.constant(x, depth + 1)),
            _ => false,
        }
    }
}

fn is_comparison(op: &BinaryOperator) -> bool {
    matches!(
        op,
        BinaryOperator::Eq
            | BinaryOperator::Lt
            | BinaryOperator::LtEq
            | BinaryOperator::Gt
            | BinaryOperator::GtEq
    )
}

/// What both branches of an OR bound: scans in both, columns in both.
fn intersect(a: Bounds, b: &Bounds) -> Bounds {
    let mut out = Bounds::new();
    for (scan, cols) in a {
        let Some(other) = b.get(&scan) else {
            continue;
        };
        let keep: BTreeSet<String> = cols
            .into_iter()
            .filter(|c| other.iter().any(|o| name_key(o) == name_key(c)))
            .collect();
        if !keep.is_empty() {
            out.insert(scan, keep);
        }
    }
    out
}
