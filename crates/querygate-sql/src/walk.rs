//! The lineage walker: queries, FROM items and expressions to scopes, output columns and
//! accumulated facts (tables read, predicate and ordering columns).
//!
//! Every recursive step goes through a depth counter and turns opaque beyond [`MAX_DEPTH`], so no
//! input can exhaust the stack here. Anything the walker does not understand makes the statement
//! opaque rather than narrowing what is reported; it must never guess a smaller answer, and it
//! must not panic.

use std::cell::Cell;
use std::collections::{BTreeSet, HashMap, HashSet};

use sqlparser::ast::{
    AccessExpr, Distinct, Expr, FunctionArg, GroupByExpr, Ident, JoinConstraint, JoinOperator,
    LimitClause, NamedWindowExpr, ObjectName, ObjectNamePart, OrderBy, OrderByExpr, OrderByKind,
    PivotValueSource, Query, Select, SelectFlavor, SelectInto, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, TableAlias, TableFactor, TableVersion,
    TableWithJoins, Value, WildcardAdditionalOptions,
};

use crate::SqlDialect;
use crate::bounds::Block;
use crate::facts::{ColumnRef, OutputColumn, Scan, StatementKind, TableRef};
use crate::functions;
use crate::guard;
use crate::names::{Names, function_name};
use crate::scope::{
    Col, CteDef, Frame, Lineage, Rel, RelKind, combine, lookup_named, rename, union,
};

/// How deep the walker recurses before it gives up (opaque). sqlparser's own recursion limit
/// (50) keeps real queries far below this.
pub(crate) const MAX_DEPTH: usize = 200;

/// How many steps (queries, FROM items, expressions) one `analyze` call may take: bounds the
/// work adversarial input can cause (nested recursive CTEs multiply it) to well under a second.
pub(crate) const MAX_STEPS: usize = 1_000_000;

/// What earlier statements of the same script left behind for later ones.
#[derive(Debug)]
pub(crate) struct ScriptState {
    /// Steps left for the whole script (see [`MAX_STEPS`]).
    pub budget: Cell<usize>,
    /// Script variables (BigQuery `DECLARE`/`SET`, procedure parameters, lower case) and what
    /// they hold.
    pub vars: HashMap<String, Lineage>,
    /// Variables a procedure may have written (`CALL p(x)`): their contents are unknown.
    pub unknown_vars: HashSet<String>,
    /// Tables and views created by earlier statements (`CREATE TEMP TABLE t AS …`), by name
    /// parts, with what their columns hold: reading them later is reading those sources.
    pub tables: HashMap<Vec<String>, Vec<Col>>,
}

impl Default for ScriptState {
    fn default() -> Self {
        ScriptState {
            budget: Cell::new(MAX_STEPS),
            vars: HashMap::new(),
            unknown_vars: HashSet::new(),
            tables: HashMap::new(),
        }
    }
}

/// Facts accumulated while walking one statement.
#[derive(Debug, Default)]
pub(crate) struct Acc {
    pub reads: BTreeSet<TableRef>,
    pub writes: BTreeSet<TableRef>,
    pub predicates: BTreeSet<ColumnRef>,
    pub ordering: BTreeSet<ColumnRef>,
    pub functions: BTreeSet<String>,
    pub written: Vec<OutputColumn>,
    pub locks: bool,
    /// One entry per read of a base table, in walk order (`Rel::scan` indexes it).
    pub scans: Vec<Scan>,
}

pub(crate) struct Walker<'v> {
    pub names: Names,
    pub script: &'v ScriptState,
    pub acc: Acc,
    pub opaque: Option<String>,
    /// A data-modifying statement met inside a query (`WITH … INSERT`, PostgreSQL DML in CTEs).
    pub dml_kind: Option<StatementKind>,
    /// Addresses of the identifier expressions the walker resolved or knowingly skipped.
    pub seen_idents: HashSet<usize>,
    /// Addresses of the table names the walker accounted for.
    pub seen_rels: HashSet<usize>,
    /// `SELECT … INTO table` is allowed at this point (top level of a statement only).
    into_ok: bool,
    /// Tables created by `SELECT … INTO`, with their columns.
    pub selected_into: Vec<(TableRef, Vec<Col>)>,
    /// The named windows (`WINDOW w AS (…)`) of the SELECT being walked, with their lineage.
    pub(crate) named_windows: Vec<(String, Lineage)>,
    pub(crate) depth: usize,
    /// The FROM clause being walked has a NATURAL join (its merged columns have no table).
    pub(crate) natural_join: bool,
}

pub(crate) fn addr<T>(x: &T) -> usize {
    x as *const T as usize
}

/// `ORDER BY 2` / `GROUP BY 2`: the 1-based output position.
fn ordinal(e: &Expr) -> Option<usize> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        _ => None,
    }
}

impl<'v> Walker<'v> {
    pub(crate) fn new(dialect: SqlDialect, script: &'v ScriptState) -> Self {
        Walker {
            names: Names { dialect },
            script,
            acc: Acc::default(),
            opaque: None,
            dml_kind: None,
            seen_idents: HashSet::new(),
            seen_rels: HashSet::new(),
            into_ok: false,
            selected_into: Vec::new(),
            named_windows: Vec::new(),
            depth: 0,
            natural_join: false,
        }
    }

    /// Records why the statement is opaque (the first reason wins).
    pub(crate) fn opaque(&mut self, why: impl Into<String>) {
        if self.opaque.is_none() {
            self.opaque = Some(why.into());
        }
    }

    pub(crate) fn enter(&mut self) -> bool {
        self.depth += 1;
        let budget = self.script.budget.get();
        if budget == 0 {
            self.opaque("the SQL is too complex to analyze; simplify it");
            return false;
        }
        self.script.budget.set(budget - 1);
        if self.depth > MAX_DEPTH {
            self.opaque(format!(
                "the statement nests deeper than {MAX_DEPTH} levels; simplify it"
            ));
            false
        } else {
            true
        }
    }

    pub(crate) fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    pub(crate) fn allow_into(&mut self) {
        self.into_ok = true;
    }

    pub(crate) fn seen_rel(&mut self, name: &ObjectName) {
        self.seen_rels.insert(addr(name));
    }

    /// Marks every identifier under `node` as knowingly not a column reference.
    pub(crate) fn skip_idents<V: sqlparser::ast::Visit>(&mut self, node: &V) {
        guard::ident_addrs(node, &mut self.seen_idents);
    }

    /// A base table that this statement writes (and, for DML targets, reads).
    pub(crate) fn table(&mut self, name: &ObjectName) -> Option<TableRef> {
        self.seen_rel(name);
        match self.names.table_ref(name) {
            Ok(t) => Some(t),
            Err(why) => {
                self.opaque(why.to_string());
                None
            }
        }
    }

    /// A read of a base table: listed in `reads` and as a scan of its own. Returns the
    /// scan's index, for the predicates of its query block to mark what they bound.
    pub(crate) fn read(&mut self, t: &TableRef) -> usize {
        self.acc.reads.insert(t.clone());
        self.acc.scans.push(Scan {
            table: t.clone(),
            bounded: vec![],
        });
        self.acc.scans.len() - 1
    }

    /// A WHERE clause: the columns it filters on (predicates), and the columns it bounds on
    /// the scans of its block.
    pub(crate) fn where_clause(
        &mut self,
        w: &Expr,
        fr: &Frame<'_>,
        block: &crate::bounds::Block<'_>,
    ) {
        let l = self.expr(w, Some(fr));
        self.acc.predicates.extend(l.refs);
        let bounds = self.bounds(w, block);
        self.mark_bounded(bounds);
    }

    /// Marks the columns `bounds` gives as bounded on their scans.
    pub(crate) fn mark_bounded(&mut self, bounds: crate::bounds::Bounds) {
        for (scan, columns) in bounds {
            if let Some(s) = self.acc.scans.get_mut(scan) {
                s.bounded.extend(columns);
            }
        }
    }

    pub(crate) fn note_dml(&mut self, kind: StatementKind) {
        if self.dml_kind.is_none() {
            self.dml_kind = Some(kind);
        }
    }

    // ----- queries -------------------------------------------------------------------------

    /// A query's output columns. Tables read, predicates and ordering go to `self.acc`.
    pub(crate) fn query(&mut self, q: &Query, parent: Option<&Frame<'_>>) -> Vec<Col> {
        let cols = if self.enter() {
            self.query_inner(q, parent)
        } else {
            vec![]
        };
        self.leave();
        cols
    }

    pub(crate) fn query_inner(&mut self, q: &Query, parent: Option<&Frame<'_>>) -> Vec<Col> {
        let into_ok = std::mem::replace(&mut self.into_ok, false);
        if q.for_clause.is_some() || q.settings.is_some() || q.format_clause.is_some() {
            self.opaque("FOR/SETTINGS/FORMAT clauses are not analyzed");
        }
        if !q.pipe_operators.is_empty() {
            self.opaque("BigQuery pipe syntax (|>) is not analyzed; write the query without pipes");
        }
        let mut ctes: Vec<CteDef> = Vec::new();
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let name = self.names.ident(&cte.alias.name);
                let new_names = self.alias_columns(&cte.alias);
                let cols = if with.recursive {
                    self.recursive_cte(&name, &new_names, &cte.query, &ctes, parent)
                } else {
                    let fr = Frame {
                        ctes: &ctes,
                        ..Frame::new(parent)
                    };
                    let cols = self.query(&cte.query, Some(&fr));
                    rename(cols, &new_names)
                };
                if cte.from.is_some() {
                    self.opaque("CTE FROM clauses are not analyzed");
                }
                ctes.push(CteDef { name, cols });
            }
        }
        let qf = Frame {
            ctes: &ctes,
            ..Frame::new(parent)
        };
        let out = self.set_expr(&q.body, Some(&qf), q.order_by.as_ref(), into_ok);
        if let Some(limit) = &q.limit_clause {
            match limit {
                LimitClause::LimitOffset {
                    limit,
                    offset,
                    limit_by,
                } => {
                    if let Some(e) = limit {
                        self.expr(e, Some(&qf));
                    }
                    if let Some(o) = offset {
                        self.expr(&o.value, Some(&qf));
                    }
                    for e in limit_by {
                        let l = self.expr(e, Some(&qf));
                        self.acc.ordering.extend(l.refs);
                    }
                }
                LimitClause::OffsetCommaLimit { offset, limit } => {
                    self.expr(offset, Some(&qf));
                    self.expr(limit, Some(&qf));
                }
            }
        }
        if let Some(fetch) = &q.fetch
            && let Some(e) = &fetch.quantity
        {
            self.expr(e, Some(&qf));
        }
        if !q.locks.is_empty() {
            self.acc.locks = true;
        }
        out
    }

    /// A recursive CTE: iterate its body until the lineage stops growing.
    pub(crate) fn recursive_cte(
        &mut self,
        name: &str,
        new_names: &[String],
        body: &Query,
        ctes: &[CteDef],
        parent: Option<&Frame<'_>>,
    ) -> Vec<Col> {
        // Start with a self-reference of unknown shape (any column, no sources) and iterate
        // until what the CTE carries stops growing.
        let mut cols = vec![Col::Any {
            lin: Lineage::default(),
        }];
        let mut first = true;
        for _ in 0..8 {
            let mut visible = ctes.to_vec();
            visible.push(CteDef {
                name: name.to_string(),
                cols: cols.clone(),
            });
            let fr = Frame {
                ctes: &visible,
                ..Frame::new(parent)
            };
            let next = rename(self.query(body, Some(&fr)), new_names);
            let next = if first {
                first = false;
                next
            } else {
                combine(vec![cols.clone(), next])
            };
            if next == cols {
                return cols;
            }
            cols = next;
        }
        self.opaque(format!(
            "the lineage of recursive CTE {name} did not settle"
        ));
        cols
    }

    pub(crate) fn set_expr(
        &mut self,
        body: &SetExpr,
        f: Option<&Frame<'_>>,
        order_by: Option<&OrderBy>,
        into_ok: bool,
    ) -> Vec<Col> {
        match body {
            SetExpr::Select(s) => return self.select(s, f, order_by, into_ok),
            SetExpr::Query(q) => {
                let out = self.query(q, f);
                self.order_outputs(order_by, &out, f);
                return out;
            }
            _ => {}
        }
        let out = match body {
            SetExpr::SetOperation { .. } => {
                // UNION chains are left-deep: walk the spine without recursing on it.
                let mut branches = Vec::new();
                let mut cur = body;
                while let SetExpr::SetOperation { left, right, .. } = cur {
                    branches.push(right.as_ref());
                    cur = left.as_ref();
                }
                branches.push(cur);
                branches.reverse();
                let mut outs = Vec::with_capacity(branches.len());
                for b in branches {
                    let cols = if self.enter() {
                        self.set_expr(b, f, None, false)
                    } else {
                        vec![]
                    };
                    self.leave();
                    outs.push(cols);
                }
                combine(outs)
            }
            SetExpr::Values(values) => {
                let mut rows = Vec::with_capacity(values.rows.len());
                for row in &values.rows {
                    let mut cols = Vec::with_capacity(row.len());
                    for (i, e) in row.iter().enumerate() {
                        let lin = self.expr(e, f);
                        cols.push(match self.names.dialect {
                            SqlDialect::Postgres => Col::Named {
                                name: format!("column{}", i + 1),
                                lin,
                            },
                            SqlDialect::BigQuery => Col::Anon { lin },
                        });
                    }
                    rows.push(cols);
                }
                combine(rows)
            }
            SetExpr::Insert(st)
            | SetExpr::Update(st)
            | SetExpr::Delete(st)
            | SetExpr::Merge(st) => self.dml(st, f),
            SetExpr::Table(t) => {
                let mut parts = Vec::new();
                if let Some(s) = &t.schema_name {
                    parts.push(self.names.ident(s));
                }
                if let Some(n) = &t.table_name {
                    parts.push(self.names.ident(n));
                }
                match self.names.table_ref_from_parts(parts) {
                    Some(t) => {
                        self.read(&t);
                        vec![Col::Star {
                            table: t,
                            except: vec![],
                        }]
                    }
                    None => {
                        self.opaque("cannot read the TABLE statement's name");
                        vec![]
                    }
                }
            }
            SetExpr::Select(_) | SetExpr::Query(_) => vec![],
        };
        self.order_outputs(order_by, &out, f);
        out
    }

    /// ORDER BY over a query's output (set operations, parenthesized queries).
    pub(crate) fn order_outputs(
        &mut self,
        order_by: Option<&OrderBy>,
        out: &[Col],
        f: Option<&Frame<'_>>,
    ) {
        let Some(ob) = order_by else { return };
        let fr = Frame {
            aliases: Some(out),
            ..Frame::new(f)
        };
        self.order_by(ob, out, &fr);
    }

    pub(crate) fn order_by(&mut self, ob: &OrderBy, out: &[Col], fr: &Frame<'_>) {
        if ob.interpolate.is_some() {
            self.opaque("ORDER BY … INTERPOLATE is not analyzed");
        }
        match &ob.kind {
            OrderByKind::All(_) => {
                let l = union(out);
                self.acc.ordering.extend(l.refs);
            }
            OrderByKind::Expressions(items) => {
                for item in items {
                    let l = self.ordered_item(item, out, fr);
                    self.acc.ordering.extend(l.refs);
                }
            }
        }
    }

    pub(crate) fn ordered_item(
        &mut self,
        item: &OrderByExpr,
        out: &[Col],
        fr: &Frame<'_>,
    ) -> Lineage {
        if item.with_fill.is_some() {
            self.opaque("ORDER BY … WITH FILL is not analyzed");
        }
        // A bare name that is an output alias means that output column (both dialects); inside
        // an expression PostgreSQL reads input columns instead, so there both are kept.
        if let Expr::Identifier(id) = &item.expr
            && let Some(l) = lookup_named(out, self.names, &self.names.ident(id))
        {
            self.seen_idents.insert(addr(&item.expr));
            return l;
        }
        self.group_item(&item.expr, out, fr)
    }

    /// A GROUP BY / ORDER BY item: an ordinal names an output column.
    pub(crate) fn group_item(&mut self, e: &Expr, out: &[Col], fr: &Frame<'_>) -> Lineage {
        if let Some(n) = ordinal(e) {
            return match n.checked_sub(1).and_then(|i| out.get(i)) {
                Some(c) => c.lineage(),
                None => {
                    self.opaque(format!("ordinal {n} does not name an output column"));
                    Lineage::default()
                }
            };
        }
        self.expr(e, Some(fr))
    }

    pub(crate) fn select(
        &mut self,
        s: &Select,
        f: Option<&Frame<'_>>,
        order_by: Option<&OrderBy>,
        into_ok: bool,
    ) -> Vec<Col> {
        if s.top.is_some()
            || s.exclude.is_some()
            || !s.lateral_views.is_empty()
            || s.prewhere.is_some()
            || !s.connect_by.is_empty()
            || !s.cluster_by.is_empty()
            || !s.distribute_by.is_empty()
            || !s.sort_by.is_empty()
        {
            self.opaque("this SELECT uses clauses of another SQL dialect");
        }
        let mut rels: Vec<Rel> = Vec::new();
        let mut using: Vec<(String, Lineage)> = Vec::new();
        let outer_natural = std::mem::take(&mut self.natural_join);
        for twj in &s.from {
            self.join_tree(twj, f, &mut rels, &mut using);
        }
        let natural = std::mem::replace(&mut self.natural_join, outer_natural);
        let fr = Frame {
            rels: &rels,
            using: &using,
            ..Frame::new(f)
        };
        let mut windows = Vec::with_capacity(s.named_window.len());
        for w in &s.named_window {
            let lin = match &w.1 {
                NamedWindowExpr::WindowSpec(spec) => self.window_spec(spec, &fr),
                NamedWindowExpr::NamedWindow(other) => self.named_window(other),
            };
            windows.push((w.0.value.clone(), lin));
        }
        let outer_windows = std::mem::replace(&mut self.named_windows, windows);
        let mut out = self.select_items(&s.projection, &fr);
        if s.projection.is_empty() && s.flavor == SelectFlavor::FromFirstNoSelect {
            for rel in &rels {
                out.extend(rel.expand());
            }
        }
        if let Some(Distinct::On(exprs)) = &s.distinct {
            for e in exprs {
                let l = self.expr(e, Some(&fr));
                self.acc.ordering.extend(l.refs);
            }
        }
        if let Some(into) = &s.into {
            self.select_into(into, &out, into_ok);
        }
        if let Some(w) = &s.selection {
            self.where_clause(
                w,
                &fr,
                &Block {
                    rels: &rels,
                    using: &using,
                    natural,
                },
            );
        }
        let af = Frame {
            aliases: Some(&out),
            ..fr
        };
        match &s.group_by {
            GroupByExpr::All(_) => {
                let l = union(&out);
                self.acc.ordering.extend(l.refs);
            }
            GroupByExpr::Expressions(exprs, _) => {
                for e in exprs {
                    let l = self.group_item(e, &out, &af);
                    self.acc.ordering.extend(l.refs);
                }
            }
        }
        if let Some(h) = &s.having {
            let l = self.expr(h, Some(&af));
            self.acc.predicates.extend(l.refs);
        }
        if let Some(q) = &s.qualify {
            let l = self.expr(q, Some(&af));
            self.acc.predicates.extend(l.refs);
        }
        if let Some(ob) = order_by {
            let of = Frame {
                aliases: Some(&out),
                ..fr
            };
            self.order_by(ob, &out, &of);
        }
        self.named_windows = outer_windows;
        out
    }

    pub(crate) fn named_window(&self, name: &Ident) -> Lineage {
        self.named_windows
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(&name.value))
            .fold(Lineage::default(), |mut acc, (_, l)| {
                acc.add_ref(l);
                acc
            })
    }

    pub(crate) fn select_into(&mut self, into: &SelectInto, out: &[Col], into_ok: bool) {
        if !into_ok {
            self.opaque("SELECT … INTO is only understood at the top of a statement");
            return;
        }
        for target in &into.targets {
            let parts: Vec<Ident> = match target {
                Expr::Identifier(id) => vec![id.clone()],
                Expr::CompoundIdentifier(ids) => ids.clone(),
                _ => {
                    self.opaque("SELECT … INTO target is not a table name");
                    continue;
                }
            };
            self.seen_idents.insert(addr(target));
            match self.names.table_ref(&ObjectName::from(parts)) {
                Ok(t) => {
                    self.selected_into.push((t.clone(), out.to_vec()));
                    self.acc.writes.insert(t);
                }
                Err(why) => self.opaque(why.to_string()),
            }
        }
        self.note_dml(StatementKind::Create);
        self.acc.written.extend(out.iter().map(Col::to_output));
    }

    /// Output columns of a projection (also used for RETURNING).
    pub(crate) fn select_items(&mut self, items: &[SelectItem], fr: &Frame<'_>) -> Vec<Col> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let lin = self.expr(e, Some(fr));
                    match self.implicit_name(e) {
                        Some(name) => out.push(Col::Named { name, lin }),
                        None => out.push(Col::Anon { lin }),
                    }
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let lin = self.expr(expr, Some(fr));
                    out.push(Col::Named {
                        name: self.names.ident(alias),
                        lin,
                    });
                }
                SelectItem::ExprWithAliases { expr, .. } => {
                    let lin = self.expr(expr, Some(fr));
                    self.opaque("multiple aliases for one select item are not analyzed");
                    out.push(Col::Any { lin });
                }
                SelectItem::Wildcard(opts) => {
                    if fr.rels.is_empty() {
                        self.opaque("SELECT * without a FROM clause");
                    }
                    let mut cols = Vec::new();
                    for rel in fr.rels {
                        cols.extend(rel.expand());
                    }
                    let cols = self.star_options(cols, opts, fr);
                    out.extend(cols);
                }
                SelectItem::QualifiedWildcard(kind, opts) => {
                    let cols = match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(name) => {
                            self.qualified_star(name, fr)
                        }
                        SelectItemQualifiedWildcardKind::Expr(e) => {
                            let lin = self.expr(e, Some(fr));
                            vec![Col::Any { lin }]
                        }
                    };
                    let cols = self.star_options(cols, opts, fr);
                    out.extend(cols);
                }
            }
        }
        out
    }

    /// `x.*`: a FROM item's columns, or a struct column's fields.
    pub(crate) fn qualified_star(&mut self, name: &ObjectName, fr: &Frame<'_>) -> Vec<Col> {
        let mut ids = Vec::with_capacity(name.0.len());
        for part in &name.0 {
            match part {
                ObjectNamePart::Identifier(id) => ids.push(id.clone()),
                ObjectNamePart::Function(_) => {
                    self.opaque(format!("cannot expand `{name}.*`"));
                    return vec![];
                }
            }
        }
        let parts: Vec<String> = ids.iter().map(|i| self.names.ident(i)).collect();
        let mut cur = Some(fr);
        while let Some(frame) = cur {
            for rel in frame.rels {
                if rel.prefix_len(self.names, &parts) == Some(parts.len()) {
                    return rel.expand();
                }
            }
            cur = frame.parent;
        }
        // Not a FROM item: a struct-valued column whose fields are expanded.
        let lin = match ids.as_slice() {
            [one] => self.resolve_name(one, Some(fr)),
            _ => self.resolve_compound(&ids, Some(fr)),
        };
        vec![Col::Any { lin }]
    }

    pub(crate) fn star_options(
        &mut self,
        mut cols: Vec<Col>,
        opts: &WildcardAdditionalOptions,
        fr: &Frame<'_>,
    ) -> Vec<Col> {
        if opts.opt_ilike.is_some()
            || opts.opt_exclude.is_some()
            || opts.opt_rename.is_some()
            || opts.opt_alias.is_some()
        {
            self.opaque("this form of SELECT * is not analyzed");
        }
        let names = self.names;
        if let Some(except) = &opts.opt_except {
            let mut ex: Vec<String> = vec![names.ident(&except.first_element)];
            ex.extend(except.additional_elements.iter().map(|i| names.ident(i)));
            cols = cols
                .into_iter()
                .filter_map(|c| match c {
                    Col::Named { ref name, .. } if ex.iter().any(|e| names.same(e, name)) => None,
                    Col::Star { table, mut except } => {
                        except.extend(ex.iter().cloned());
                        Some(Col::Star { table, except })
                    }
                    other => Some(other),
                })
                .collect();
        }
        if let Some(replace) = &opts.opt_replace {
            for item in &replace.items {
                let name = names.ident(&item.column_name);
                let lin = self.expr(&item.expr, Some(fr));
                let mut replaced = false;
                for c in cols.iter_mut() {
                    if let Col::Named { name: n, lin: l } = c
                        && names.same(n, &name)
                    {
                        *l = lin.clone();
                        replaced = true;
                    }
                }
                if !replaced {
                    for c in cols.iter_mut() {
                        if let Col::Star { except, .. } = c {
                            except.push(name.clone());
                        }
                    }
                    cols.push(Col::Named { name, lin });
                }
            }
        }
        cols
    }

    /// The name an unaliased select item gets, when an outer query can reference it.
    pub(crate) fn implicit_name(&self, e: &Expr) -> Option<String> {
        match e {
            Expr::Identifier(id) => Some(self.names.ident(id)),
            Expr::CompoundIdentifier(ids) => ids.last().map(|i| self.names.ident(i)),
            Expr::CompoundFieldAccess { access_chain, .. } => match access_chain.last() {
                Some(AccessExpr::Dot(Expr::Identifier(id))) => Some(self.names.ident(id)),
                _ => None,
            },
            Expr::Nested(inner) => self.implicit_name(inner),
            Expr::Function(func) if self.names.dialect == SqlDialect::Postgres => {
                match func.name.0.last() {
                    Some(ObjectNamePart::Identifier(id)) => Some(self.names.ident(id)),
                    _ => None,
                }
            }
            Expr::Cast { expr, .. } if self.names.dialect == SqlDialect::Postgres => {
                self.implicit_name(expr)
            }
            _ => None,
        }
    }

    // ----- FROM ----------------------------------------------------------------------------

    pub(crate) fn alias_columns(&self, alias: &TableAlias) -> Vec<String> {
        alias
            .columns
            .iter()
            .map(|c| self.names.ident(&c.name))
            .collect()
    }

    /// One FROM item with its joins; adds relations to `rels`.
    pub(crate) fn join_tree(
        &mut self,
        twj: &TableWithJoins,
        outer: Option<&Frame<'_>>,
        rels: &mut Vec<Rel>,
        using: &mut Vec<(String, Lineage)>,
    ) {
        if !self.enter() {
            self.leave();
            return;
        }
        let tree_start = rels.len();
        self.table_factor(&twj.relation, outer, rels, using);
        for join in &twj.joins {
            let right_start = rels.len();
            self.table_factor(&join.relation, outer, rels, using);
            let constraint = match &join.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c)
                | JoinOperator::Semi(c)
                | JoinOperator::LeftSemi(c)
                | JoinOperator::RightSemi(c)
                | JoinOperator::Anti(c)
                | JoinOperator::LeftAnti(c)
                | JoinOperator::RightAnti(c)
                | JoinOperator::StraightJoin(c) => Some(c),
                JoinOperator::CrossApply
                | JoinOperator::OuterApply
                | JoinOperator::AsOf { .. }
                | JoinOperator::ArrayJoin
                | JoinOperator::LeftArrayJoin
                | JoinOperator::InnerArrayJoin => {
                    self.opaque("this kind of JOIN is not analyzed");
                    None
                }
            };
            match constraint {
                Some(JoinConstraint::On(e)) => {
                    let fr = Frame {
                        rels: &rels[..],
                        using: &using[..],
                        ..Frame::new(outer)
                    };
                    let l = self.expr(e, Some(&fr));
                    self.acc.predicates.extend(l.refs);
                    // An ON filters the rows of the sides it does not preserve: both of an
                    // inner join, the right of a LEFT, the left of a RIGHT, none of a FULL.
                    let filtered = match &join.join_operator {
                        JoinOperator::Join(_)
                        | JoinOperator::Inner(_)
                        | JoinOperator::CrossJoin(_) => Some(tree_start..rels.len()),
                        JoinOperator::Left(_) | JoinOperator::LeftOuter(_) => {
                            Some(right_start..rels.len())
                        }
                        JoinOperator::Right(_) | JoinOperator::RightOuter(_) => {
                            Some(tree_start..right_start)
                        }
                        _ => None,
                    };
                    if let Some(range) = filtered {
                        let scans: Vec<usize> = rels[range].iter().filter_map(|r| r.scan).collect();
                        let mut bounds = self.bounds(
                            e,
                            &Block {
                                rels: &rels[..],
                                using: &using[..],
                                natural: self.natural_join,
                            },
                        );
                        bounds.retain(|scan, _| scans.contains(scan));
                        self.mark_bounded(bounds);
                    }
                }
                Some(JoinConstraint::Using(cols)) => {
                    for c in cols {
                        let Some(ObjectNamePart::Identifier(id)) = c.0.last() else {
                            self.opaque("cannot read a JOIN USING column");
                            continue;
                        };
                        let name = self.names.ident(id);
                        let mut lin = Lineage::default();
                        for rel in rels.iter() {
                            if let Some((l, _)) = rel.column(self.names, &name) {
                                lin.add(l);
                            }
                        }
                        self.acc.predicates.extend(lin.refs.iter().cloned());
                        using.push((name, lin));
                    }
                }
                Some(JoinConstraint::UsingAlias(..)) => {
                    self.opaque("JOIN USING … AS is not analyzed");
                }
                Some(JoinConstraint::Natural) => {
                    self.natural_join = true;
                    for rel in rels.iter() {
                        self.acc.predicates.extend(rel.whole().refs);
                    }
                }
                Some(JoinConstraint::None) | None => {}
            }
        }
        self.leave();
    }

    pub(crate) fn table_factor(
        &mut self,
        tf: &TableFactor,
        outer: Option<&Frame<'_>>,
        rels: &mut Vec<Rel>,
        using: &mut Vec<(String, Lineage)>,
    ) {
        if !self.enter() {
            self.leave();
            return;
        }
        self.table_factor_inner(tf, outer, rels, using);
        self.leave();
    }

    pub(crate) fn table_factor_inner(
        &mut self,
        tf: &TableFactor,
        outer: Option<&Frame<'_>>,
        rels: &mut Vec<Rel>,
        using: &mut Vec<(String, Lineage)>,
    ) {
        match tf {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality: _,
                partitions,
                json_path,
                sample,
                index_directives,
                inheritance: _,
            } => {
                self.seen_rel(name);
                if !with_hints.is_empty()
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || !index_directives.is_empty()
                {
                    self.opaque("table hints, partitions and index directives are not analyzed");
                }
                if let Some(sample) = sample {
                    self.skip_idents(sample);
                }
                if let Some(args) = args {
                    if args.settings.is_some() {
                        self.opaque("table function SETTINGS are not analyzed");
                    }
                    self.table_function(name, &args.args, alias.as_ref(), outer, rels, using);
                    return;
                }
                let alias_name = alias.as_ref().map(|a| self.names.ident(&a.name));
                let alias_cols = alias
                    .as_ref()
                    .map(|a| self.alias_columns(a))
                    .unwrap_or_default();
                if let Some(lin) = self.correlated_path(name, outer, rels, using) {
                    // BigQuery `FROM t, t.arr AS a`: an array path over an earlier FROM item.
                    let implicit = match name.0.last() {
                        Some(ObjectNamePart::Identifier(id)) => Some(self.names.ident(id)),
                        _ => None,
                    };
                    rels.push(Rel {
                        alias: alias_name.or(implicit),
                        table_parts: None,
                        kind: RelKind::Value(lin),
                        scan: None,
                    });
                    return;
                }
                if let [ObjectNamePart::Identifier(id)] = name.0.as_slice()
                    && let Some((cte_name, cols)) = self.find_cte(id, outer)
                {
                    if version.is_some() {
                        self.opaque("time travel on a CTE is not analyzed");
                    }
                    rels.push(Rel {
                        alias: alias_name.or(Some(cte_name)),
                        table_parts: None,
                        kind: RelKind::Derived(rename(cols, &alias_cols)),
                        scan: None,
                    });
                    return;
                }
                let mut t = match self.names.table_ref(name) {
                    Ok(t) => t,
                    Err(why) => {
                        self.opaque(why.to_string());
                        return;
                    }
                };
                let mut alias_name = alias_name;
                // BigQuery: an unquoted `t@1700000000000` parses as table `t` with alias `@…`.
                if self.names.dialect == SqlDialect::BigQuery
                    && let Some(a) = alias
                    && a.name.quote_style.is_none()
                    && a.name.value.starts_with('@')
                    && t.decorator.is_none()
                {
                    t.decorator = Some(a.name.value.clone());
                    alias_name = None;
                }
                if let Some(v) = version {
                    t.time_travel = true;
                    let pf = Frame {
                        rels: &rels[..],
                        using: &using[..],
                        ..Frame::new(outer)
                    };
                    match v {
                        TableVersion::ForSystemTimeAsOf(e) => {
                            self.expr(e, Some(&pf));
                        }
                        _ => self.opaque("this form of time travel is not analyzed"),
                    }
                }
                let scan = self.read(&t);
                let implicit = t.parts.last().cloned();
                let table_parts = if alias_name.is_none() {
                    Some(t.parts.clone())
                } else {
                    None
                };
                let created = match (&t.decorator, t.time_travel) {
                    (None, false) => self.script.tables.get(&t.parts),
                    _ => None,
                };
                let kind = match created {
                    // Created earlier in this script: its columns hold what was put in them.
                    Some(cols) => RelKind::Derived(rename(cols.clone(), &alias_cols)),
                    None if alias_cols.is_empty() => RelKind::Base(t),
                    None => RelKind::Value(Lineage::column(&t, "*")),
                };
                rels.push(Rel {
                    alias: alias_name.or(implicit),
                    table_parts,
                    kind,
                    scan: Some(scan),
                });
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                sample,
            } => {
                if let Some(sample) = sample {
                    self.skip_idents(sample);
                }
                let cols = if *lateral {
                    let pf = Frame {
                        rels: &rels[..],
                        using: &using[..],
                        ..Frame::new(outer)
                    };
                    self.query(subquery, Some(&pf))
                } else {
                    self.query(subquery, outer)
                };
                let (alias_name, alias_cols) = match alias {
                    Some(a) => (Some(self.names.ident(&a.name)), self.alias_columns(a)),
                    None => (None, vec![]),
                };
                rels.push(Rel {
                    alias: alias_name,
                    table_parts: None,
                    kind: RelKind::Derived(rename(cols, &alias_cols)),
                    scan: None,
                });
            }
            TableFactor::Function {
                lateral: _,
                name,
                args,
                with_ordinality: _,
                alias,
            } => {
                self.table_function(name, args, alias.as_ref(), outer, rels, using);
            }
            TableFactor::UNNEST {
                alias,
                array_exprs,
                with_offset,
                with_offset_alias,
                with_ordinality: _,
            } => {
                let mut lin = Lineage::default();
                {
                    let pf = Frame {
                        rels: &rels[..],
                        using: &using[..],
                        ..Frame::new(outer)
                    };
                    for e in array_exprs {
                        lin.add(self.expr(e, Some(&pf)));
                    }
                }
                let alias_name = match alias {
                    Some(a) => Some(self.names.ident(&a.name)),
                    None => match array_exprs.as_slice() {
                        [Expr::Identifier(id)] => Some(self.names.ident(id)),
                        [Expr::CompoundIdentifier(ids)] => ids.last().map(|i| self.names.ident(i)),
                        _ => None,
                    },
                };
                rels.push(Rel {
                    alias: alias_name,
                    table_parts: None,
                    kind: RelKind::Value(lin),
                    scan: None,
                });
                if *with_offset || with_offset_alias.is_some() {
                    let name = with_offset_alias
                        .as_ref()
                        .map(|a| self.names.ident(a))
                        .unwrap_or_else(|| "offset".into());
                    rels.push(Rel {
                        alias: Some(name),
                        table_parts: None,
                        kind: RelKind::Value(Lineage::default()),
                        scan: None,
                    });
                }
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let mut inner = Vec::new();
                self.join_tree(table_with_joins, outer, &mut inner, using);
                if let Some(a) = alias {
                    let mut lin = Lineage::default();
                    for r in &inner {
                        lin.add(r.whole());
                    }
                    rels.push(Rel {
                        alias: Some(self.names.ident(&a.name)),
                        table_parts: None,
                        kind: RelKind::Value(lin),
                        scan: None,
                    });
                }
                rels.extend(inner);
            }
            TableFactor::Pivot {
                table,
                aggregate_functions,
                value_column,
                value_source,
                default_on_null,
                alias,
            } => {
                let mut inner = Vec::new();
                let mut inner_using = Vec::new();
                self.table_factor(table, outer, &mut inner, &mut inner_using);
                let mut lin = Lineage::default();
                for r in &inner {
                    lin.add(r.whole());
                }
                let fr = Frame {
                    rels: &inner,
                    using: &inner_using,
                    ..Frame::new(outer)
                };
                for a in aggregate_functions {
                    lin.add(self.expr(&a.expr, Some(&fr)));
                }
                for e in value_column {
                    let l = self.expr(e, Some(&fr));
                    self.acc.ordering.extend(l.refs.iter().cloned());
                    lin.add(l);
                }
                match value_source {
                    PivotValueSource::List(items) => {
                        for i in items {
                            self.expr(&i.expr, Some(&fr));
                        }
                    }
                    PivotValueSource::Any(items) => {
                        for i in items {
                            self.expr(&i.expr, Some(&fr));
                        }
                    }
                    PivotValueSource::Subquery(q) => {
                        self.query(q, outer);
                    }
                }
                if let Some(e) = default_on_null {
                    lin.add(self.expr(e, Some(&fr)));
                }
                lin.whole_row = false;
                rels.push(Rel {
                    alias: alias.as_ref().map(|a| self.names.ident(&a.name)),
                    table_parts: None,
                    kind: RelKind::Value(lin),
                    scan: None,
                });
            }
            TableFactor::Unpivot {
                table,
                value,
                name: _,
                columns,
                null_inclusion: _,
                alias,
            } => {
                let mut inner = Vec::new();
                let mut inner_using = Vec::new();
                self.table_factor(table, outer, &mut inner, &mut inner_using);
                let mut lin = Lineage::default();
                for r in &inner {
                    lin.add(r.whole());
                }
                // `value` names the new column(s); it references nothing.
                self.skip_idents(value);
                let fr = Frame {
                    rels: &inner,
                    using: &inner_using,
                    ..Frame::new(outer)
                };
                for c in columns {
                    lin.add(self.expr(&c.expr, Some(&fr)));
                }
                lin.whole_row = false;
                rels.push(Rel {
                    alias: alias.as_ref().map(|a| self.names.ident(&a.name)),
                    table_parts: None,
                    kind: RelKind::Value(lin),
                    scan: None,
                });
            }
            TableFactor::TableFunction { .. }
            | TableFactor::JsonTable { .. }
            | TableFactor::OpenJsonTable { .. }
            | TableFactor::UnpivotExpr { .. }
            | TableFactor::MatchRecognize { .. }
            | TableFactor::XmlTable { .. }
            | TableFactor::SemanticView { .. } => {
                self.opaque("this kind of FROM item is not analyzed");
            }
        }
    }

    pub(crate) fn table_function(
        &mut self,
        name: &ObjectName,
        args: &[FunctionArg],
        alias: Option<&TableAlias>,
        outer: Option<&Frame<'_>>,
        rels: &mut Vec<Rel>,
        using: &[(String, Lineage)],
    ) {
        let fname = function_name(name);
        self.acc.functions.insert(fname.clone());
        let lin = {
            let pf = Frame {
                rels: &rels[..],
                using,
                ..Frame::new(outer)
            };
            self.function_args(&fname, args, &pf)
        };
        if !(self.names.dialect == SqlDialect::Postgres && functions::is_pure_set_returning(&fname))
        {
            self.opaque(format!(
                "the table function {fname} is not analyzed (what it reads is unknown)"
            ));
        }
        let alias_name = match alias {
            Some(a) => Some(self.names.ident(&a.name)),
            None => match name.0.last() {
                Some(ObjectNamePart::Identifier(id)) => Some(self.names.ident(id)),
                _ => None,
            },
        };
        rels.push(Rel {
            alias: alias_name,
            table_parts: None,
            kind: RelKind::Value(lin),
            scan: None,
        });
    }

    /// BigQuery: a FROM name whose first part is a range variable already in scope is a path
    /// into that row (an implicit UNNEST), not a table. Returns its lineage if so.
    fn correlated_path(
        &mut self,
        name: &ObjectName,
        outer: Option<&Frame<'_>>,
        rels: &[Rel],
        using: &[(String, Lineage)],
    ) -> Option<Lineage> {
        if self.names.dialect != SqlDialect::BigQuery || name.0.len() < 2 {
            return None;
        }
        let mut ids = Vec::with_capacity(name.0.len());
        for part in &name.0 {
            match part {
                ObjectNamePart::Identifier(id) => ids.push(id.clone()),
                ObjectNamePart::Function(_) => return None,
            }
        }
        let first = self.names.ident(ids.first()?);
        let pf = Frame {
            rels,
            using,
            ..Frame::new(outer)
        };
        let mut cur = Some(&pf);
        let mut in_scope = false;
        while let Some(fr) = cur {
            if fr
                .rels
                .iter()
                .any(|r| r.alias.as_ref().is_some_and(|a| self.names.same(a, &first)))
            {
                in_scope = true;
                break;
            }
            cur = fr.parent;
        }
        if !in_scope {
            return None;
        }
        Some(self.resolve_compound(&ids, Some(&pf)))
    }

    /// A CTE visible under this (single-part) table name.
    pub(crate) fn find_cte(
        &mut self,
        id: &Ident,
        f: Option<&Frame<'_>>,
    ) -> Option<(String, Vec<Col>)> {
        let name = self.names.ident(id);
        let mut cur = f;
        while let Some(fr) = cur {
            for cte in fr.ctes.iter().rev() {
                if cte.name == name {
                    return Some((cte.name.clone(), cte.cols.clone()));
                }
                if self.names.same(&cte.name, &name) {
                    self.opaque(format!(
                        "`{name}` differs from the CTE `{}` only in case; rename one",
                        cte.name
                    ));
                    return Some((cte.name.clone(), cte.cols.clone()));
                }
            }
            cur = fr.parent;
        }
        None
    }
}
