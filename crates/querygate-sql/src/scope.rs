//! Name scopes for lineage: what a query's FROM items, CTEs and outer queries make visible, and
//! the lineage (base columns) behind each visible name.
//!
//! The analyzer has no schema, so a base table may or may not have a given column: such matches
//! are "maybe" candidates, and resolution keeps every candidate (a sound over-approximation).
//! This module must not walk the AST; the walker (`walk.rs`) builds these values.

use std::collections::BTreeSet;

use crate::facts::{ColumnRef, OutputColumn, TableRef};
use crate::names::Names;

/// The base columns a value is computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Lineage {
    pub refs: BTreeSet<ColumnRef>,
    /// A whole row (a table alias used as a value) flowed into this value.
    pub whole_row: bool,
}

impl Lineage {
    pub fn column(table: &TableRef, column: &str) -> Self {
        let mut refs = BTreeSet::new();
        refs.insert(ColumnRef {
            table: table.clone(),
            column: column.to_string(),
        });
        Lineage {
            refs,
            whole_row: false,
        }
    }

    pub fn add(&mut self, other: Lineage) {
        if self.refs.is_empty() {
            self.refs = other.refs;
        } else {
            self.refs.extend(other.refs);
        }
        self.whole_row |= other.whole_row;
    }

    pub fn add_ref(&mut self, other: &Lineage) {
        self.refs.extend(other.refs.iter().cloned());
        self.whole_row |= other.whole_row;
    }
}

/// Sorted column references with `t.x` dropped where `t.*` is present.
pub(crate) fn normalized(refs: &BTreeSet<ColumnRef>) -> Vec<ColumnRef> {
    let all: Vec<&TableRef> = refs
        .iter()
        .filter(|c| c.is_all())
        .map(|c| &c.table)
        .collect();
    if all.is_empty() {
        return refs.iter().cloned().collect();
    }
    refs.iter()
        .filter(|c| c.is_all() || !all.contains(&&c.table))
        .cloned()
        .collect()
}

/// One output column of a query, as seen by the query that reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Col {
    /// A column with a name the outer query can reference.
    Named { name: String, lin: Lineage },
    /// An expression without a name.
    Anon { lin: Lineage },
    /// `*` over a base table: every column of `table` except `except`.
    Star {
        table: TableRef,
        except: Vec<String>,
    },
    /// Columns whose names are unknown (a star over something the analyzer cannot expand); any
    /// name may match, with this lineage.
    Any { lin: Lineage },
}

impl Col {
    /// Everything this column may carry.
    pub fn lineage(&self) -> Lineage {
        match self {
            Col::Named { lin, .. } | Col::Anon { lin } | Col::Any { lin } => lin.clone(),
            Col::Star { table, .. } => Lineage::column(table, "*"),
        }
    }

    /// The lineage of column `name` if this output column may be it, and whether it surely is.
    fn lookup(&self, names: Names, name: &str) -> Option<(Lineage, bool)> {
        match self {
            Col::Named { name: n, lin } if names.same(n, name) => Some((lin.clone(), true)),
            Col::Named { .. } | Col::Anon { .. } => None,
            Col::Star { table, except } => {
                if except.iter().any(|e| names.same(e, name)) {
                    None
                } else {
                    Some((Lineage::column(table, name), false))
                }
            }
            Col::Any { lin } => Some((lin.clone(), false)),
        }
    }

    pub fn to_output(&self) -> OutputColumn {
        match self {
            Col::Named { name, lin } => OutputColumn {
                name: name.clone(),
                sources: normalized(&lin.refs),
                whole_row: lin.whole_row || lin.refs.iter().any(ColumnRef::is_all),
                except: vec![],
            },
            Col::Anon { lin } => OutputColumn {
                name: String::new(),
                sources: normalized(&lin.refs),
                whole_row: lin.whole_row || lin.refs.iter().any(ColumnRef::is_all),
                except: vec![],
            },
            Col::Star { table, except } => OutputColumn {
                name: "*".into(),
                sources: vec![ColumnRef {
                    table: table.clone(),
                    column: "*".into(),
                }],
                whole_row: false,
                except: except.clone(),
            },
            Col::Any { lin } => OutputColumn {
                name: "*".into(),
                sources: normalized(&lin.refs),
                whole_row: lin.whole_row,
                except: vec![],
            },
        }
    }
}

/// The lineage of column `name` among `cols`, and whether some column surely is it.
pub(crate) fn lookup_cols(cols: &[Col], names: Names, name: &str) -> Option<(Lineage, bool)> {
    let mut found: Option<(Lineage, bool)> = None;
    for c in cols {
        if let Some((lin, sure)) = c.lookup(names, name) {
            match &mut found {
                Some((acc, acc_sure)) => {
                    acc.add(lin);
                    *acc_sure |= sure;
                }
                None => found = Some((lin, sure)),
            }
        }
    }
    found
}

/// Only the columns that surely have the name (an output alias).
pub(crate) fn lookup_named(cols: &[Col], names: Names, name: &str) -> Option<Lineage> {
    let mut found: Option<Lineage> = None;
    for c in cols {
        if let Col::Named { name: n, lin } = c
            && names.same(n, name)
        {
            found.get_or_insert_with(Lineage::default).add_ref(lin);
        }
    }
    found
}

/// Everything the columns carry, as one lineage.
pub(crate) fn union(cols: &[Col]) -> Lineage {
    let mut l = Lineage::default();
    for c in cols {
        l.add(c.lineage());
    }
    l
}

/// What a FROM item contributes to a scope.
#[derive(Debug, Clone)]
pub(crate) enum RelKind {
    /// A base table: any column name may exist.
    Base(TableRef),
    /// A subquery or CTE with known output columns.
    Derived(Vec<Col>),
    /// A value-producing item (UNNEST, a set-returning function, PIVOT): any column name may
    /// match, and every column carries this lineage.
    Value(Lineage),
}

/// A FROM item in scope.
#[derive(Debug, Clone)]
pub(crate) struct Rel {
    /// The name the item is referenced by (explicit alias, or implicit: the table's last name
    /// part, the CTE name).
    pub alias: Option<String>,
    /// For a base table without explicit alias: its name parts, so `ds.t.col` can match.
    pub table_parts: Option<Vec<String>>,
    pub kind: RelKind,
    /// For a read of a base table: its index in the statement's scans (`Acc::scans`), so
    /// that predicates of the query block can mark what they bound.
    pub scan: Option<usize>,
}

impl Rel {
    /// The value of the whole row.
    pub fn whole(&self) -> Lineage {
        match &self.kind {
            RelKind::Base(t) => Lineage {
                whole_row: true,
                ..Lineage::column(t, "*")
            },
            RelKind::Derived(cols) => {
                let mut l = union(cols);
                l.whole_row = true;
                l
            }
            RelKind::Value(lin) => lin.clone(),
        }
    }

    /// An unqualified column `name`: its lineage if this item may have it, and whether it surely
    /// has it.
    pub fn column(&self, names: Names, name: &str) -> Option<(Lineage, bool)> {
        match &self.kind {
            RelKind::Base(t) => Some((Lineage::column(t, name), false)),
            RelKind::Derived(cols) => lookup_cols(cols, names, name),
            RelKind::Value(lin) => Some((lin.clone(), false)),
        }
    }

    /// `alias.name`: the qualifier already chose this item.
    pub fn qualified_column(&self, names: Names, name: &str) -> Lineage {
        match &self.kind {
            RelKind::Base(t) => Lineage::column(t, name),
            RelKind::Derived(cols) => match lookup_cols(cols, names, name) {
                Some((lin, _)) => lin,
                // Not a column of this subquery: the engine rejects it; stay sound anyway.
                None => union(cols),
            },
            RelKind::Value(lin) => lin.clone(),
        }
    }

    /// How many leading parts of a dotted name designate this item: 1 for its alias, more for a
    /// qualified table name (`ds.t.col` against `FROM proj.ds.t`).
    pub fn prefix_len(&self, names: Names, parts: &[String]) -> Option<usize> {
        if let Some(tp) = &self.table_parts {
            let max = tp.len().min(parts.len());
            for k in (2..=max).rev() {
                let suffix = &tp[tp.len() - k..];
                if suffix
                    .iter()
                    .zip(&parts[..k])
                    .all(|(a, b)| a.eq_ignore_ascii_case(b))
                {
                    return Some(k);
                }
            }
        }
        match (&self.alias, parts.first()) {
            (Some(a), Some(p)) if names.same(a, p) => Some(1),
            _ => None,
        }
    }

    /// The columns `alias.*` / `*` expand to.
    pub fn expand(&self) -> Vec<Col> {
        match &self.kind {
            RelKind::Base(t) => vec![Col::Star {
                table: t.clone(),
                except: vec![],
            }],
            RelKind::Derived(cols) => cols.clone(),
            RelKind::Value(lin) => vec![Col::Any { lin: lin.clone() }],
        }
    }
}

/// A CTE visible by name.
#[derive(Debug, Clone)]
pub(crate) struct CteDef {
    pub name: String,
    pub cols: Vec<Col>,
}

/// One level of name scope. Frames chain outwards through `parent`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    pub rels: &'a [Rel],
    pub using: &'a [(String, Lineage)],
    pub ctes: &'a [CteDef],
    /// Output columns whose aliases GROUP BY, HAVING, QUALIFY and ORDER BY may name; a name
    /// that is both an alias and an input column keeps both lineages.
    pub aliases: Option<&'a [Col]>,
    pub parent: Option<&'a Frame<'a>>,
}

impl<'a> Frame<'a> {
    pub fn new(parent: Option<&'a Frame<'a>>) -> Self {
        Frame {
            rels: &[],
            using: &[],
            ctes: &[],
            aliases: None,
            parent,
        }
    }
}

/// Rename columns positionally (`AS s(a, b)`, `WITH c(a, b) AS …`). When the shape is unknown
/// (a star), every new name carries everything.
pub(crate) fn rename(cols: Vec<Col>, new_names: &[String]) -> Vec<Col> {
    if new_names.is_empty() {
        return cols;
    }
    let known = cols
        .iter()
        .all(|c| matches!(c, Col::Named { .. } | Col::Anon { .. }));
    if known && cols.len() >= new_names.len() {
        let mut out = Vec::with_capacity(cols.len());
        for (i, c) in cols.into_iter().enumerate() {
            let lin = c.lineage();
            match new_names.get(i) {
                Some(n) => out.push(Col::Named {
                    name: n.clone(),
                    lin,
                }),
                None => out.push(c),
            }
        }
        out
    } else {
        let all = union(&cols);
        let mut out: Vec<Col> = new_names
            .iter()
            .map(|n| Col::Named {
                name: n.clone(),
                lin: all.clone(),
            })
            .collect();
        out.push(Col::Any { lin: all });
        out
    }
}

/// The columns of a set operation: positional when every branch has a known shape of the same
/// width, otherwise one column of unknown shape carrying everything.
pub(crate) fn combine(branches: Vec<Vec<Col>>) -> Vec<Col> {
    let width = branches.first().map(Vec::len).unwrap_or(0);
    let known = branches.iter().all(|b| {
        b.len() == width
            && b.iter()
                .all(|c| matches!(c, Col::Named { .. } | Col::Anon { .. }))
    });
    let mut iter = branches.into_iter();
    let Some(first) = iter.next() else {
        return vec![];
    };
    if known {
        let mut out = first;
        for b in iter {
            for (o, c) in out.iter_mut().zip(b) {
                let add = c.lineage();
                match o {
                    Col::Named { lin, .. } | Col::Anon { lin } | Col::Any { lin } => lin.add(add),
                    Col::Star { .. } => {}
                }
            }
        }
        out
    } else {
        let mut lin = union(&first);
        for b in iter {
            lin.add(union(&b));
        }
        vec![Col::Any { lin }]
    }
}
