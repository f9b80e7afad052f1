//! Independent passes over the AST with sqlparser's visitor: the safety net under the walker.
//!
//! The walker reports what it understood; these passes list everything that is there (every
//! identifier expression, every table name, every function call) so that anything the walker
//! skipped turns the statement opaque instead of silently narrowing the facts. sqlparser's
//! visitor protects its own recursion (`recursive-protection`). Must not interpret anything.

use std::collections::{BTreeSet, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{Expr, ObjectName, Query, Visit, Visitor};

use crate::names::function_name;

fn addr<T>(x: &T) -> usize {
    x as *const T as usize
}

struct Idents<'a>(&'a mut HashSet<usize>);

impl Visitor for Idents<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
            self.0.insert(addr(e));
        }
        ControlFlow::Continue(())
    }
}

/// Adds the address of every identifier expression under `node` to `out`.
pub(crate) fn ident_addrs<V: Visit>(node: &V, out: &mut HashSet<usize>) {
    let _ = node.visit(&mut Idents(out));
}

struct FirstMissingIdent<'a> {
    seen: &'a HashSet<usize>,
}

impl Visitor for FirstMissingIdent<'_> {
    type Break = String;
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<String> {
        if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_))
            && !self.seen.contains(&addr(e))
        {
            return ControlFlow::Break(e.to_string());
        }
        ControlFlow::Continue(())
    }
}

/// The first identifier expression under `node` that is not in `seen`.
pub(crate) fn missing_ident<V: Visit>(node: &V, seen: &HashSet<usize>) -> Option<String> {
    match node.visit(&mut FirstMissingIdent { seen }) {
        ControlFlow::Break(name) => Some(name),
        ControlFlow::Continue(()) => None,
    }
}

struct Relations<'a> {
    out: &'a mut Vec<(usize, String)>,
}

impl Visitor for Relations<'_> {
    type Break = ();
    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        self.out.push((addr(r), r.to_string()));
        ControlFlow::Continue(())
    }
}

/// Every table name sqlparser's visitor reports under `node`: (address, printed name).
pub(crate) fn relations<V: Visit>(node: &V) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let _ = node.visit(&mut Relations { out: &mut out });
    out
}

struct Functions<'a>(&'a mut BTreeSet<String>);

impl Visitor for Functions<'_> {
    type Break = ();
    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            self.0.insert(function_name(&f.name));
        }
        ControlFlow::Continue(())
    }
}

/// Adds every function called under `node` to `out`.
pub(crate) fn functions<V: Visit>(node: &V, out: &mut BTreeSet<String>) {
    let _ = node.visit(&mut Functions(out));
}

struct AnyQuery;

impl Visitor for AnyQuery {
    type Break = ();
    fn pre_visit_query(&mut self, _: &Query) -> ControlFlow<()> {
        ControlFlow::Break(())
    }
}

/// Whether a query appears anywhere under `node`.
pub(crate) fn contains_query<V: Visit>(node: &V) -> bool {
    node.visit(&mut AnyQuery).is_break()
}
