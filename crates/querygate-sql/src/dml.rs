//! INSERT, UPDATE, DELETE and MERGE: targets (writes), sources (reads), what flows into the
//! target (`written`), conditions (predicates) and RETURNING (output).
//!
//! Part of the walker; same rules: no panics, no guessing — clauses of other dialects that are not
//! analyzed make the statement opaque.

use sqlparser::ast::{
    Assignment, AssignmentTarget, Delete, FromTable, Insert, Merge, MergeAction, MergeInsertKind,
    MergeUpdateKind, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, SelectItem, SetExpr,
    Statement, TableFactor, TableObject, Update, UpdateTableFromKind,
};

use crate::bounds::Block;
use crate::facts::{OutputColumn, StatementKind, TableRef};
use crate::scope::{Col, Frame, Lineage, Rel, RelKind, union};
use crate::walk::Walker;

impl Walker<'_> {
    /// A data-modifying statement (top level, or the body of a `WITH … INSERT` query, or a
    /// PostgreSQL DML CTE). Returns its RETURNING columns.
    pub fn dml(&mut self, st: &Statement, f: Option<&Frame<'_>>) -> Vec<Col> {
        match st {
            Statement::Insert(ins) => self.insert(ins, f),
            Statement::Update(up) => self.update(up, f),
            Statement::Delete(del) => self.delete(del, f),
            Statement::Merge(m) => self.merge(m, f),
            _ => {
                self.opaque("unexpected statement inside a query");
                vec![]
            }
        }
    }

    /// The target table of a DML statement: written, and registered as a FROM item.
    fn target(&mut self, tf: &TableFactor, rels: &mut Vec<Rel>, reads: bool) -> Option<TableRef> {
        let TableFactor::Table {
            name,
            alias,
            args: None,
            version: None,
            ..
        } = tf
        else {
            self.opaque("the DML target is not a plain table");
            return None;
        };
        let t = self.table(name)?;
        self.acc.writes.insert(t.clone());
        let scan = reads.then(|| self.read(&t));
        rels.push(Rel {
            alias: Some(match alias {
                Some(a) => self.names.ident(&a.name),
                None => t.parts.last().cloned().unwrap_or_default(),
            }),
            table_parts: alias.is_none().then(|| t.parts.clone()),
            kind: RelKind::Base(t.clone()),
            scan,
        });
        Some(t)
    }

    fn returning(&mut self, items: Option<&Vec<SelectItem>>, fr: &Frame<'_>) -> Vec<Col> {
        match items {
            Some(items) => self.select_items(items, fr),
            None => vec![],
        }
    }

    /// Assignment targets' column names.
    fn assigned(&mut self, target: &AssignmentTarget) -> Vec<String> {
        let names: Vec<&ObjectName> = match target {
            AssignmentTarget::ColumnName(n) => vec![n],
            AssignmentTarget::Tuple(ns) => ns.iter().collect(),
        };
        names
            .into_iter()
            .map(|n| match n.0.last() {
                Some(ObjectNamePart::Identifier(id)) => self.names.ident(id),
                _ => {
                    self.opaque("cannot read an assignment target");
                    String::new()
                }
            })
            .collect()
    }

    fn assignments(&mut self, assignments: &[Assignment], fr: &Frame<'_>) {
        for a in assignments {
            let lin = self.expr(&a.value, Some(fr));
            for name in self.assigned(&a.target) {
                self.acc.written.push(
                    Col::Named {
                        name,
                        lin: lin.clone(),
                    }
                    .to_output(),
                );
            }
        }
    }

    fn insert(&mut self, ins: &Insert, f: Option<&Frame<'_>>) -> Vec<Col> {
        self.note_dml(StatementKind::Insert);
        if ins.partitioned.is_some()
            || !ins.after_columns.is_empty()
            || ins.output.is_some()
            || ins.insert_alias.is_some()
            || ins.settings.is_some()
            || ins.format_clause.is_some()
            || ins.multi_table_insert_type.is_some()
            || !ins.multi_table_into_clauses.is_empty()
            || !ins.multi_table_when_clauses.is_empty()
            || ins.multi_table_else_clause.is_some()
        {
            self.opaque("this INSERT uses clauses of another SQL dialect");
        }
        let t = match &ins.table {
            TableObject::TableName(name) => self.table(name),
            _ => {
                self.opaque("INSERT into a table function or subquery is not analyzed");
                None
            }
        };
        let Some(t) = t else { return vec![] };
        self.acc.writes.insert(t.clone());
        let columns: Vec<String> = ins
            .columns
            .iter()
            .filter_map(|c| match c.0.last() {
                Some(ObjectNamePart::Identifier(id)) => Some(self.names.ident(id)),
                _ => None,
            })
            .collect();
        let mut source_lin = Lineage::default();
        if let Some(src) = &ins.source {
            let cols = self.query(src, f);
            source_lin = union(&cols);
            let named = cols.len() == columns.len()
                && cols
                    .iter()
                    .all(|c| matches!(c, Col::Named { .. } | Col::Anon { .. }));
            for (i, c) in cols.iter().enumerate() {
                let mut out: OutputColumn = c.to_output();
                if named && let Some(n) = columns.get(i) {
                    out.name = n.clone();
                }
                self.acc.written.push(out);
            }
        }
        let target_rel = Rel {
            alias: Some(match &ins.table_alias {
                Some(a) => self.names.ident(&a.alias),
                None => t.parts.last().cloned().unwrap_or_default(),
            }),
            table_parts: ins.table_alias.is_none().then(|| t.parts.clone()),
            kind: RelKind::Base(t.clone()),
            scan: None,
        };
        let excluded = Rel {
            alias: Some("excluded".into()),
            table_parts: None,
            kind: RelKind::Value(source_lin),
            scan: None,
        };
        let rels = [target_rel, excluded];
        {
            let fr = Frame {
                rels: &rels[..1],
                ..Frame::new(f)
            };
            self.assignments(&ins.assignments, &fr);
        }
        if let Some(on) = &ins.on {
            let fr = Frame {
                rels: &rels,
                ..Frame::new(f)
            };
            match on {
                OnInsert::DuplicateKeyUpdate(assignments) => self.assignments(assignments, &fr),
                OnInsert::OnConflict(c) => {
                    if let Some(target) = &c.conflict_target {
                        self.skip_idents(target);
                    }
                    if let OnConflictAction::DoUpdate(du) = &c.action {
                        self.assignments(&du.assignments, &fr);
                        if let Some(w) = &du.selection {
                            let l = self.expr(w, Some(&fr));
                            self.acc.predicates.extend(l.refs);
                        }
                    }
                }
                _ => self.opaque("this INSERT … ON clause is not analyzed"),
            }
        }
        let fr = Frame {
            rels: &rels[..1],
            ..Frame::new(f)
        };
        self.returning(ins.returning.as_ref(), &fr)
    }

    fn update(&mut self, up: &Update, f: Option<&Frame<'_>>) -> Vec<Col> {
        self.note_dml(StatementKind::Update);
        if up.output.is_some()
            || !up.order_by.is_empty()
            || up.limit.is_some()
            || up.settings.is_some()
            || !up.table.joins.is_empty()
        {
            self.opaque("this UPDATE uses clauses of another SQL dialect");
        }
        let mut rels = Vec::new();
        let mut using = Vec::new();
        self.target(&up.table.relation, &mut rels, true);
        let outer_natural = std::mem::take(&mut self.natural_join);
        if let Some(from) = &up.from {
            let items = match from {
                UpdateTableFromKind::BeforeSet(items) | UpdateTableFromKind::AfterSet(items) => {
                    items
                }
            };
            for twj in items {
                self.join_tree(twj, f, &mut rels, &mut using);
            }
        }
        let natural = std::mem::replace(&mut self.natural_join, outer_natural);
        let fr = Frame {
            rels: &rels,
            using: &using,
            ..Frame::new(f)
        };
        self.assignments(&up.assignments, &fr);
        if let Some(w) = &up.selection {
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
        self.returning(up.returning.as_ref(), &fr)
    }

    fn delete(&mut self, del: &Delete, f: Option<&Frame<'_>>) -> Vec<Col> {
        self.note_dml(StatementKind::Delete);
        if !del.tables.is_empty()
            || del.output.is_some()
            || !del.order_by.is_empty()
            || del.limit.is_some()
            || del.settings.is_some()
        {
            self.opaque("this DELETE uses clauses of another SQL dialect");
        }
        let mut rels = Vec::new();
        let mut using = Vec::new();
        let targets = match &del.from {
            FromTable::WithFromKeyword(t) | FromTable::WithoutKeyword(t) => t,
        };
        for twj in targets {
            self.target(&twj.relation, &mut rels, true);
            if !twj.joins.is_empty() {
                self.opaque("DELETE with joins is not analyzed");
            }
        }
        let outer_natural = std::mem::take(&mut self.natural_join);
        if let Some(items) = &del.using {
            for twj in items {
                self.join_tree(twj, f, &mut rels, &mut using);
            }
        }
        let natural = std::mem::replace(&mut self.natural_join, outer_natural);
        let fr = Frame {
            rels: &rels,
            using: &using,
            ..Frame::new(f)
        };
        if let Some(w) = &del.selection {
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
        self.returning(del.returning.as_ref(), &fr)
    }

    fn merge(&mut self, m: &Merge, f: Option<&Frame<'_>>) -> Vec<Col> {
        self.note_dml(StatementKind::Merge);
        if m.output.is_some() {
            self.opaque("MERGE … OUTPUT is not analyzed");
        }
        let mut rels = Vec::new();
        let mut using = Vec::new();
        self.target(&m.table, &mut rels, true);
        let target_rels = rels.len();
        self.table_factor(&m.source, f, &mut rels, &mut using);
        let source_lin = {
            let mut l = Lineage::default();
            for r in &rels[target_rels..] {
                l.add(r.whole());
            }
            l
        };
        let fr = Frame {
            rels: &rels,
            using: &using,
            ..Frame::new(f)
        };
        let on = self.expr(&m.on, Some(&fr));
        self.acc.predicates.extend(on.refs);
        for clause in &m.clauses {
            if let Some(p) = &clause.predicate {
                let l = self.expr(p, Some(&fr));
                self.acc.predicates.extend(l.refs);
            }
            match &clause.action {
                MergeAction::Insert(ins) => {
                    let columns: Vec<String> = ins
                        .columns
                        .iter()
                        .filter_map(|c| match c.0.last() {
                            Some(ObjectNamePart::Identifier(id)) => Some(self.names.ident(id)),
                            _ => None,
                        })
                        .collect();
                    match &ins.kind {
                        MergeInsertKind::Values(values) => {
                            for row in &values.rows {
                                for (i, e) in row.iter().enumerate() {
                                    let lin = self.expr(e, Some(&fr));
                                    let col = match columns.get(i) {
                                        Some(name) => Col::Named {
                                            name: name.clone(),
                                            lin,
                                        },
                                        None => Col::Anon { lin },
                                    };
                                    self.acc.written.push(col.to_output());
                                }
                            }
                        }
                        MergeInsertKind::Row | MergeInsertKind::Wildcard => {
                            self.acc.written.push(
                                Col::Any {
                                    lin: source_lin.clone(),
                                }
                                .to_output(),
                            );
                        }
                    }
                    if let Some(p) = &ins.insert_predicate {
                        let l = self.expr(p, Some(&fr));
                        self.acc.predicates.extend(l.refs);
                    }
                }
                MergeAction::Update(up) => {
                    match &up.kind {
                        MergeUpdateKind::Set(assignments) => self.assignments(assignments, &fr),
                        MergeUpdateKind::Wildcard => self.acc.written.push(
                            Col::Any {
                                lin: source_lin.clone(),
                            }
                            .to_output(),
                        ),
                    }
                    for p in [&up.update_predicate, &up.delete_predicate]
                        .into_iter()
                        .flatten()
                    {
                        let l = self.expr(p, Some(&fr));
                        self.acc.predicates.extend(l.refs);
                    }
                }
                MergeAction::Delete { .. } | MergeAction::DoNothing { .. } => {}
            }
        }
        vec![]
    }
}

/// The statement inside a `WITH … <DML>` query body, if that is what the body is.
pub(crate) fn dml_body(body: &SetExpr) -> Option<StatementKind> {
    match body {
        SetExpr::Insert(_) => Some(StatementKind::Insert),
        SetExpr::Update(_) => Some(StatementKind::Update),
        SetExpr::Delete(_) => Some(StatementKind::Delete),
        SetExpr::Merge(_) => Some(StatementKind::Merge),
        _ => None,
    }
}
