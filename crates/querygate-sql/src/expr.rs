//! Names and expressions: resolving column names through scopes, and the lineage of every
//! expression form (functions, windows, subqueries, CASE, casts, field access, …).
//!
//! Part of the walker (`walk.rs`). The match over `Expr` is exhaustive on purpose: a new
//! sqlparser variant must be looked at, not silently ignored. Must not panic, must not guess.

use sqlparser::ast::{
    AccessExpr, Expr, Function, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArguments, Ident, JsonPathElem, ListAggOnOverflow, ObjectName, ObjectNamePart, Query,
    Subscript, WindowFrameBound, WindowSpec, WindowType,
};

use crate::SqlDialect;
use crate::functions;
use crate::names::function_name;
use crate::scope::{Frame, Lineage, lookup_named, union};
use crate::walk::{Walker, addr};

impl Walker<'_> {
    // ----- names ---------------------------------------------------------------------------

    /// An unqualified name: a column of some FROM item (at any depth), an output alias, a whole
    /// row, or a script variable. Every candidate is kept.
    pub(crate) fn resolve_name(&mut self, id: &Ident, f: Option<&Frame<'_>>) -> Lineage {
        if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("DEFAULT") {
            return Lineage::default();
        }
        if self.names.dialect == SqlDialect::Postgres
            && id.quote_style.is_none()
            && functions::is_pg_sql_value_keyword(&id.value)
        {
            // `current_schema`, `current_role`, …: SQL-standard niladic functions, not columns.
            return Lineage::default();
        }
        if self.names.dialect == SqlDialect::BigQuery && id.value.starts_with('@') {
            // Query parameters (`@ids`) and system variables (`@@time_zone`) hold no table
            // data, except the message of a caught error.
            if id.value.to_ascii_lowercase().starts_with("@@error") {
                self.opaque(
                    "@@error can carry data from the statement that failed (error text); \
                     querygate cannot tell what it holds",
                );
            }
            return Lineage::default();
        }
        let names = self.names;
        let name = names.ident(id);
        let mut acc = Lineage::default();
        let mut found = false;
        let mut cur = f;
        while let Some(fr) = cur {
            let mut sure = false;
            if let Some(cols) = fr.aliases
                && let Some(l) = lookup_named(cols, names, &name)
            {
                acc.add(l);
                found = true;
                sure = true;
            }
            for (n, l) in fr.using {
                if names.same(n, &name) {
                    acc.add_ref(l);
                    found = true;
                    sure = true;
                }
            }
            for rel in fr.rels {
                if let Some(a) = &rel.alias
                    && names.same(a, &name)
                {
                    acc.add(rel.whole());
                    found = true;
                    sure = true;
                }
                if let Some((l, s)) = rel.column(names, &name) {
                    acc.add(l);
                    found = true;
                    sure |= s;
                }
            }
            if sure {
                return acc;
            }
            cur = fr.parent;
        }
        let var = name.to_lowercase();
        if let Some(l) = self.script.vars.get(&var) {
            acc.add_ref(l);
            found = true;
        }
        if self.script.unknown_vars.contains(&var) {
            self.opaque(format!(
                "the variable `{}` was passed to a procedure, which may have stored anything in it",
                id.value
            ));
        }
        if !found {
            self.opaque(format!("cannot resolve the name `{}`", id.value));
        }
        acc
    }

    /// A dotted name: `alias.column[.field…]`, `ds.table.column`, or `column.field…`.
    pub(crate) fn resolve_compound(&mut self, ids: &[Ident], f: Option<&Frame<'_>>) -> Lineage {
        let names = self.names;
        let parts: Vec<String> = ids.iter().map(|i| names.ident(i)).collect();
        let Some(first) = ids.first() else {
            return Lineage::default();
        };
        let first_name = names.ident(first);
        // Inner FROM items that might have a struct column named like the qualifier.
        let mut maybe = Lineage::default();
        let mut cur = f;
        while let Some(fr) = cur {
            for rel in fr.rels {
                if let Some(k) = rel.prefix_len(names, &parts) {
                    let mut l = match parts.get(k) {
                        Some(col) => rel.qualified_column(names, col),
                        None => rel.whole(),
                    };
                    l.add(maybe);
                    return l;
                }
            }
            // BigQuery resolves `a.b` against local columns before outer range variables, so a
            // local struct column `a` may be meant. PostgreSQL needs `(a).b` for that.
            if names.dialect == SqlDialect::BigQuery {
                for rel in fr.rels {
                    if let Some((l, _)) = rel.column(names, &first_name) {
                        maybe.add(l);
                    }
                }
            }
            cur = fr.parent;
        }
        self.resolve_name(first, f)
    }

    /// Every column of every FROM item of the innermost scope that has one (`*` as a value).
    pub(crate) fn whole_all(&mut self, f: Option<&Frame<'_>>) -> Lineage {
        let mut cur = f;
        while let Some(fr) = cur {
            if !fr.rels.is_empty() {
                let mut l = Lineage::default();
                for rel in fr.rels {
                    l.add(rel.whole());
                }
                return l;
            }
            cur = fr.parent;
        }
        self.opaque("`*` used as a value without a FROM clause");
        Lineage::default()
    }

    /// `t.*` used as a value.
    pub(crate) fn whole_named(&mut self, name: &ObjectName, f: Option<&Frame<'_>>) -> Lineage {
        let mut ids = Vec::with_capacity(name.0.len());
        for part in &name.0 {
            match part {
                ObjectNamePart::Identifier(id) => ids.push(id.clone()),
                ObjectNamePart::Function(_) => {
                    self.opaque(format!("cannot resolve `{name}.*`"));
                    return Lineage::default();
                }
            }
        }
        let parts: Vec<String> = ids.iter().map(|i| self.names.ident(i)).collect();
        let mut cur = f;
        while let Some(fr) = cur {
            for rel in fr.rels {
                if rel.prefix_len(self.names, &parts) == Some(parts.len()) {
                    return rel.whole();
                }
            }
            cur = fr.parent;
        }
        match ids.as_slice() {
            [one] => self.resolve_name(one, f),
            _ => self.resolve_compound(&ids, f),
        }
    }

    // ----- expressions ---------------------------------------------------------------------

    /// The base columns an expression's value is computed from. Subqueries inside add their
    /// own facts (tables read, predicates) to the statement.
    pub(crate) fn expr(&mut self, e: &Expr, f: Option<&Frame<'_>>) -> Lineage {
        let l = if self.enter() {
            self.expr_inner(e, f)
        } else {
            Lineage::default()
        };
        self.leave();
        l
    }

    pub(crate) fn exprs<'e>(
        &mut self,
        es: impl IntoIterator<Item = &'e Expr>,
        f: Option<&Frame<'_>>,
    ) -> Lineage {
        let mut l = Lineage::default();
        for e in es {
            l.add(self.expr(e, f));
        }
        l
    }

    pub(crate) fn subquery(&mut self, q: &Query, f: Option<&Frame<'_>>) -> Lineage {
        let cols = self.query(q, f);
        union(&cols)
    }

    pub(crate) fn expr_inner(&mut self, e: &Expr, f: Option<&Frame<'_>>) -> Lineage {
        match e {
            Expr::Identifier(id) => {
                self.seen_idents.insert(addr(e));
                self.resolve_name(id, f)
            }
            Expr::CompoundIdentifier(ids) => {
                self.seen_idents.insert(addr(e));
                self.resolve_compound(ids, f)
            }
            Expr::CompoundFieldAccess { root, access_chain } => {
                let mut l = self.expr(root, f);
                for a in access_chain {
                    match a {
                        AccessExpr::Dot(d) => match d {
                            // A field name, not a column.
                            Expr::Identifier(_) | Expr::CompoundIdentifier(_) => {
                                self.seen_idents.insert(addr(d));
                            }
                            other => l.add(self.expr(other, f)),
                        },
                        AccessExpr::Subscript(s) => l.add(self.subscript(s, f)),
                    }
                }
                l
            }
            Expr::JsonAccess { value, path } => {
                let mut l = self.expr(value, f);
                for elem in &path.path {
                    match elem {
                        JsonPathElem::Dot { .. } => {}
                        JsonPathElem::Bracket { key } | JsonPathElem::ColonBracket { key } => {
                            l.add(self.expr(key, f));
                        }
                    }
                }
                l
            }
            Expr::IsFalse(x)
            | Expr::IsNotFalse(x)
            | Expr::IsTrue(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNull(x)
            | Expr::IsNotNull(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotUnknown(x)
            | Expr::Nested(x)
            | Expr::OuterJoin(x)
            | Expr::Prior(x) => self.expr(x, f),
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                self.exprs([a.as_ref(), b.as_ref()], f)
            }
            Expr::IsJson { expr, .. } | Expr::IsNormalized { expr, .. } => self.expr(expr, f),
            Expr::In { expr, target, .. } => {
                let mut l = self.expr(expr, f);
                match target {
                    sqlparser::ast::InTarget::List(list) => l.add(self.exprs(list, f)),
                    sqlparser::ast::InTarget::Subquery(q) => l.add(self.subquery(q, f)),
                    sqlparser::ast::InTarget::Unnest(x) => l.add(self.expr(x, f)),
                    sqlparser::ast::InTarget::Table { name, .. } => {
                        self.seen_rel(name);
                        self.opaque("IN <table> is not analyzed");
                    }
                }
                l
            }
            Expr::Between {
                expr, low, high, ..
            } => self.exprs([expr.as_ref(), low.as_ref(), high.as_ref()], f),
            Expr::BinaryOp { .. } => {
                // Long AND/OR/|| chains are left-deep: walk the spine without recursing on it.
                let mut l = Lineage::default();
                let mut cur = e;
                while let Expr::BinaryOp { left, right, .. } = cur {
                    l.add(self.expr(right, f));
                    cur = left;
                }
                l.add(self.expr(cur, f));
                l
            }
            Expr::Like {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::SimilarTo {
                expr,
                pattern,
                escape_char,
                ..
            } => {
                let mut l = self.exprs([expr.as_ref(), pattern.as_ref()], f);
                if let Some(x) = escape_char {
                    l.add(self.expr(x, f));
                }
                l
            }
            Expr::RLike { expr, pattern, .. } => self.exprs([expr.as_ref(), pattern.as_ref()], f),
            Expr::AnyOp { left, right, .. } | Expr::AllOp { left, right, .. } => {
                self.exprs([left.as_ref(), right.as_ref()], f)
            }
            Expr::UnaryOp { expr, .. } => self.expr(expr, f),
            Expr::Convert { expr, styles, .. } => {
                let mut l = self.expr(expr, f);
                l.add(self.exprs(styles, f));
                l
            }
            Expr::Cast { expr, .. } => self.expr(expr, f),
            Expr::AtTimeZone {
                timestamp,
                time_zone,
            } => self.exprs([timestamp.as_ref(), time_zone.as_ref()], f),
            Expr::Extract { expr, .. } => self.expr(expr, f),
            Expr::Ceil { expr, .. } | Expr::Floor { expr, .. } => self.expr(expr, f),
            Expr::Position { expr, r#in } => self.exprs([expr.as_ref(), r#in.as_ref()], f),
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let mut l = self.expr(expr, f);
                for x in [substring_from, substring_for].into_iter().flatten() {
                    l.add(self.expr(x, f));
                }
                l
            }
            Expr::Trim {
                expr,
                trim_what,
                trim_characters,
                ..
            } => {
                let mut l = self.expr(expr, f);
                if let Some(x) = trim_what {
                    l.add(self.expr(x, f));
                }
                if let Some(xs) = trim_characters {
                    l.add(self.exprs(xs, f));
                }
                l
            }
            Expr::Overlay {
                expr,
                overlay_what,
                overlay_from,
                overlay_for,
            } => {
                let mut l = self.exprs(
                    [expr.as_ref(), overlay_what.as_ref(), overlay_from.as_ref()],
                    f,
                );
                if let Some(x) = overlay_for {
                    l.add(self.expr(x, f));
                }
                l
            }
            Expr::Collate { expr, .. } => self.expr(expr, f),
            Expr::Value(_) | Expr::TypedString(_) => Lineage::default(),
            Expr::Prefixed { value, .. } => self.expr(value, f),
            Expr::Function(func) => self.function(func, f),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                let mut l = Lineage::default();
                if let Some(x) = operand {
                    l.add(self.expr(x, f));
                }
                for c in conditions {
                    l.add(self.expr(&c.condition, f));
                    l.add(self.expr(&c.result, f));
                }
                if let Some(x) = else_result {
                    l.add(self.expr(x, f));
                }
                l
            }
            Expr::Exists { subquery, .. } => {
                // The value is a yes/no over the subquery's filters (recorded as predicates).
                self.query(subquery, f);
                Lineage::default()
            }
            Expr::Subquery(q) => self.subquery(q, f),
            Expr::GroupingSets(sets) | Expr::Cube(sets) | Expr::Rollup(sets) => {
                let mut l = Lineage::default();
                for set in sets {
                    l.add(self.exprs(set, f));
                }
                l
            }
            Expr::Tuple(xs) => self.exprs(xs, f),
            Expr::Struct { values, .. } => self.exprs(values, f),
            Expr::Named { expr, .. } => self.expr(expr, f),
            Expr::Dictionary(fields) => {
                let mut l = Lineage::default();
                for field in fields {
                    l.add(self.expr(&field.value, f));
                }
                l
            }
            Expr::Map(map) => {
                let mut l = Lineage::default();
                for entry in &map.entries {
                    l.add(self.exprs([entry.key.as_ref(), entry.value.as_ref()], f));
                }
                l
            }
            Expr::Array(a) => self.exprs(&a.elem, f),
            Expr::Interval(i) => self.expr(&i.value, f),
            Expr::MatchAgainst { .. } => {
                self.opaque("MATCH … AGAINST is not analyzed");
                Lineage::default()
            }
            Expr::Wildcard(_) => self.whole_all(f),
            Expr::QualifiedWildcard(name, _) => self.whole_named(name, f),
            Expr::Lambda(_) => {
                self.opaque("lambda expressions are not analyzed");
                Lineage::default()
            }
            Expr::MemberOf(m) => self.exprs([m.value.as_ref(), m.array.as_ref()], f),
        }
    }

    pub(crate) fn subscript(&mut self, s: &Subscript, f: Option<&Frame<'_>>) -> Lineage {
        match s {
            Subscript::Index { index } => self.expr(index, f),
            Subscript::Slice {
                lower_bound,
                upper_bound,
                stride,
            } => {
                let mut l = Lineage::default();
                for x in [lower_bound, upper_bound, stride].into_iter().flatten() {
                    l.add(self.expr(x, f));
                }
                l
            }
        }
    }

    pub(crate) fn function(&mut self, func: &Function, f: Option<&Frame<'_>>) -> Lineage {
        let fname = function_name(&func.name);
        if functions::runs_sql_text(&fname) {
            self.opaque(format!("{fname} runs SQL text the analyzer cannot see"));
        }
        let mut l = Lineage::default();
        let fr_owned;
        let fr = match f {
            Some(fr) => fr,
            None => {
                fr_owned = Frame::new(None);
                &fr_owned
            }
        };
        for args in [&func.parameters, &func.args] {
            match args {
                FunctionArguments::None => {}
                FunctionArguments::Subquery(q) => l.add(self.subquery(q, f)),
                FunctionArguments::List(list) => {
                    l.add(self.function_args(&fname, &list.args, fr));
                    for clause in &list.clauses {
                        match clause {
                            FunctionArgumentClause::IgnoreOrRespectNulls(_)
                            | FunctionArgumentClause::Separator(_)
                            | FunctionArgumentClause::JsonNullClause(_)
                            | FunctionArgumentClause::JsonReturningClause(_) => {}
                            FunctionArgumentClause::Where(x) => {
                                let p = self.expr(x, f);
                                self.acc.predicates.extend(p.refs.iter().cloned());
                                l.add(p);
                            }
                            FunctionArgumentClause::OrderBy(items) => {
                                for item in items {
                                    let o = self.expr(&item.expr, f);
                                    self.acc.ordering.extend(o.refs.iter().cloned());
                                    l.add(o);
                                }
                            }
                            FunctionArgumentClause::Limit(x) => l.add(self.expr(x, f)),
                            FunctionArgumentClause::OnOverflow(o) => {
                                if let ListAggOnOverflow::Truncate {
                                    filler: Some(x), ..
                                } = o
                                {
                                    l.add(self.expr(x, f));
                                }
                            }
                            FunctionArgumentClause::Having(bound) => {
                                let o = self.expr(&bound.1, f);
                                self.acc.ordering.extend(o.refs.iter().cloned());
                                l.add(o);
                            }
                        }
                    }
                }
            }
        }
        // Ordered-set aggregates, FILTER and OVER decide which values the function sees: the
        // result is computed from them too.
        for item in &func.within_group {
            let o = self.expr(&item.expr, f);
            self.acc.ordering.extend(o.refs.iter().cloned());
            l.add(o);
        }
        if let Some(x) = &func.filter {
            let p = self.expr(x, f);
            self.acc.predicates.extend(p.refs.iter().cloned());
            l.add(p);
        }
        if let Some(over) = &func.over {
            match over {
                WindowType::WindowSpec(spec) => l.add(self.window_spec(spec, fr)),
                WindowType::NamedWindow(name) => l.add(self.named_window(name)),
            }
        }
        l
    }

    /// The lineage of a function's arguments (BigQuery date parts and `COUNT(*)` carry none).
    pub(crate) fn function_args(
        &mut self,
        fname: &str,
        args: &[FunctionArg],
        fr: &Frame<'_>,
    ) -> Lineage {
        let date_parts =
            self.names.dialect == SqlDialect::BigQuery && functions::takes_date_part(fname);
        let mut l = Lineage::default();
        for (i, arg) in args.iter().enumerate() {
            let ae = match arg {
                FunctionArg::Named { arg, .. } => arg,
                FunctionArg::ExprNamed { name, arg, .. } => {
                    self.skip_idents(name);
                    arg
                }
                FunctionArg::Unnamed(arg) => arg,
            };
            match ae {
                FunctionArgExpr::Expr(x) => {
                    if date_parts && i > 0 && self.is_date_part_arg(x) {
                        self.skip_idents(x);
                        continue;
                    }
                    l.add(self.expr(x, Some(fr)));
                }
                FunctionArgExpr::QualifiedWildcard(name) => l.add(self.whole_named(name, Some(fr))),
                FunctionArgExpr::Wildcard => {
                    let base = fname.rsplit('.').next().unwrap_or(fname);
                    if !base.eq_ignore_ascii_case("COUNT") {
                        l.add(self.whole_all(Some(fr)));
                    }
                }
                FunctionArgExpr::WildcardWithOptions(_) => l.add(self.whole_all(Some(fr))),
            }
        }
        l
    }

    pub(crate) fn is_date_part_arg(&self, x: &Expr) -> bool {
        match x {
            Expr::Identifier(id) => id.quote_style.is_none() && functions::is_date_part(&id.value),
            Expr::Function(func) => {
                let name = function_name(&func.name);
                let FunctionArguments::List(list) = &func.args else {
                    return false;
                };
                name == "WEEK"
                    && matches!(
                        list.args.as_slice(),
                        [FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Identifier(d)))]
                            if d.quote_style.is_none() && functions::is_weekday(&d.value)
                    )
            }
            _ => false,
        }
    }

    /// Records a window's partitioning and ordering columns; returns them as lineage.
    pub(crate) fn window_spec(&mut self, spec: &WindowSpec, fr: &Frame<'_>) -> Lineage {
        let mut l = match &spec.window_name {
            Some(base) => self.named_window(base),
            None => Lineage::default(),
        };
        for e in &spec.partition_by {
            l.add(self.expr(e, Some(fr)));
        }
        for item in &spec.order_by {
            l.add(self.expr(&item.expr, Some(fr)));
        }
        self.acc.ordering.extend(l.refs.iter().cloned());
        if let Some(frame) = &spec.window_frame {
            for bound in [Some(&frame.start_bound), frame.end_bound.as_ref()]
                .into_iter()
                .flatten()
            {
                if let WindowFrameBound::Preceding(Some(x)) | WindowFrameBound::Following(Some(x)) =
                    bound
                {
                    l.add(self.expr(x, Some(fr)));
                }
            }
        }
        l
    }
}
