//! Statements to [`StatementFacts`]: classification, flattening of scripts (blocks, IF/WHILE,
//! procedure bodies, EXPLAIN, PREPARE), script variables, and the safety-net checks that turn
//! anything the walker skipped into an opaque statement.
//!
//! Statements the walker does not model in detail get a kind, every table name the visitor
//! reports as written, and are opaque if they contain a query. Must not panic, must not guess.

use sqlparser::ast::{
    ConditionalStatementBlock, ConditionalStatements, CopySource, CopyTarget, CreateFunction,
    CreateFunctionBody, CreateProcedureBody, CreateTableLikeKind, DeclareAssignment, Expr,
    GrantObjects, ObjectName, ObjectNamePart, Query, RaiseStatementValue, SchemaName, Set,
    Statement,
};

use crate::SqlDialect;
use crate::dml::dml_body;
use crate::facts::{Scan, StatementFacts, StatementKind, TableRef};
use crate::guard;
use crate::names::function_name;
use crate::scope::{Col, Frame, Lineage, normalized};
use crate::walk::{MAX_DEPTH, ScriptState, Walker};

/// What the identifier safety net checks for one statement.
enum Check<'a> {
    /// Every identifier in the statement must have been resolved (or knowingly skipped).
    Statement(&'a Statement),
    /// Only the statement's query (DDL around it names new columns, not references).
    Query(&'a Query),
    /// Nothing: generic statements skip identifiers and are opaque if they hold a query.
    Nothing,
}

/// Analysis state across the statements of one script.
pub(crate) struct Script {
    dialect: SqlDialect,
    state: ScriptState,
    depth: usize,
    pub out: Vec<StatementFacts>,
}

impl Script {
    pub fn new(dialect: SqlDialect) -> Self {
        Script {
            dialect,
            state: ScriptState::default(),
            depth: 0,
            out: Vec::new(),
        }
    }

    /// One statement of the script, flattening blocks into their inner statements.
    pub fn statement(&mut self, s: &Statement) {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            let mut f = StatementFacts::new(StatementKind::Other);
            f.opaque = Some("the script nests blocks too deeply".into());
            self.out.push(f);
        } else {
            self.statement_inner(s);
        }
        self.depth -= 1;
    }

    fn statement_inner(&mut self, s: &Statement) {
        match s {
            Statement::StartTransaction {
                statements,
                exception,
                has_end_keyword,
                ..
            } if !statements.is_empty() || exception.is_some() || *has_end_keyword => {
                for st in statements {
                    self.statement(st);
                }
                for handler in exception.iter().flatten() {
                    for st in &handler.statements {
                        self.statement(st);
                    }
                }
            }
            Statement::If(stmt) => {
                let blocks: Vec<&ConditionalStatementBlock> = std::iter::once(&stmt.if_block)
                    .chain(&stmt.elseif_blocks)
                    .chain(&stmt.else_block)
                    .collect();
                self.blocks(None, &blocks);
            }
            Statement::While(stmt) => self.blocks(None, &[&stmt.while_block]),
            Statement::Case(stmt) => {
                let blocks: Vec<&ConditionalStatementBlock> =
                    stmt.when_blocks.iter().chain(&stmt.else_block).collect();
                self.blocks(stmt.match_expr.as_ref(), &blocks);
            }
            Statement::CreateProcedure {
                name, params, body, ..
            } => {
                let mut w = Walker::new(self.dialect, &self.state);
                if let Some(t) = w.table(name) {
                    w.acc.writes.insert(t);
                }
                for p in params.iter().flatten() {
                    if let Some(d) = &p.default {
                        w.expr(d, None);
                    }
                }
                let inner = match body {
                    CreateProcedureBody::As(c) => conditional(c),
                    CreateProcedureBody::BeginAtomic(b) => &b.statements,
                };
                // The body's tables are accounted for by the body's own entries below.
                for st in inner {
                    for (address, _) in guard::relations(st) {
                        w.seen_rels.insert(address);
                    }
                }
                let facts = finish(w, StatementKind::Create, vec![], s, Check::Nothing);
                self.out.push(facts);
                for p in params.iter().flatten() {
                    self.state
                        .vars
                        .entry(p.name.value.to_lowercase())
                        .or_default();
                }
                for st in inner {
                    self.statement(st);
                }
            }
            // EXPLAIN ANALYZE runs its statement; a prepared statement may run later. Either way
            // the inner statement's facts are what matters.
            Statement::Explain { statement, .. } | Statement::Prepare { statement, .. } => {
                self.statement(statement);
            }
            _ => self.leaf(s),
        }
    }

    /// IF / WHILE / CASE: an `other` entry for the conditions, then each branch's statements.
    fn blocks(&mut self, operand: Option<&Expr>, blocks: &[&ConditionalStatementBlock]) {
        let mut exprs: Vec<&Expr> = operand.into_iter().collect();
        exprs.extend(blocks.iter().filter_map(|b| b.condition.as_ref()));
        let mut w = Walker::new(self.dialect, &self.state);
        for e in &exprs {
            let l = w.expr(e, None);
            w.acc.predicates.extend(l.refs);
            guard::functions(*e, &mut w.acc.functions);
        }
        let facts = finish_exprs(w, &exprs);
        self.out.push(facts);
        for b in blocks {
            for st in conditional(&b.conditional_statements) {
                self.statement(st);
            }
        }
    }

    fn leaf(&mut self, s: &Statement) {
        let dialect = self.dialect;
        let mut w = Walker::new(dialect, &self.state);
        let mut output: Vec<Col> = Vec::new();
        let mut new_vars: Vec<(String, Lineage)> = Vec::new();
        // Tables this statement creates, with what their columns will hold.
        let mut created: Vec<(TableRef, Vec<Col>)> = Vec::new();
        // Variables a procedure call may overwrite.
        let mut clobbered: Vec<String> = Vec::new();
        let (kind, check) = match s {
            Statement::Query(q) => {
                w.allow_into();
                output = w.query(q, None);
                if !w.selected_into.is_empty() {
                    output.clear();
                    created.append(&mut w.selected_into);
                }
                let kind = dml_body(&q.body).unwrap_or(StatementKind::Select);
                (kind, Check::Statement(s))
            }
            Statement::Insert(_)
            | Statement::Update(_)
            | Statement::Delete(_)
            | Statement::Merge(_) => {
                output = w.dml(s, None);
                (StatementKind::Other, Check::Statement(s))
            }
            Statement::CreateTable(ct) => {
                let kind = if ct.clone.is_some() || ct.snapshot {
                    StatementKind::Copy
                } else {
                    StatementKind::Create
                };
                let target = w.table(&ct.name);
                if let Some(t) = &target {
                    w.acc.writes.insert(t.clone());
                }
                let mut cols = Vec::new();
                if let Some(c) = &ct.clone
                    && let Some(src) = read_table(&mut w, c, ct.version.is_some())
                {
                    cols = match self.state.tables.get(&src.parts) {
                        Some(existing) => existing.clone(),
                        None => vec![Col::Star {
                            table: src,
                            except: vec![],
                        }],
                    };
                }
                if let Some(like) = &ct.like {
                    let (CreateTableLikeKind::Parenthesized(l) | CreateTableLikeKind::Plain(l)) =
                        like;
                    read_table(&mut w, &l.name, false);
                }
                if ct.partition_of.is_some() || ct.inherits.is_some() {
                    w.opaque("PARTITION OF / INHERITS is not analyzed");
                    if let Some(p) = &ct.partition_of {
                        w.seen_rel(p);
                    }
                }
                let check = match &ct.query {
                    Some(q) => {
                        cols = w.query(q, None);
                        w.acc.written.extend(cols.iter().map(Col::to_output));
                        Check::Query(q)
                    }
                    None => Check::Nothing,
                };
                if let Some(t) = target {
                    created.push((t, cols));
                }
                (kind, check)
            }
            Statement::CreateView(v) => {
                let target = w.table(&v.name);
                let cols = w.query(&v.query, None);
                w.acc.written.extend(cols.iter().map(Col::to_output));
                if let Some(t) = target {
                    w.acc.writes.insert(t.clone());
                    created.push((t, cols));
                }
                (StatementKind::Create, Check::Query(&v.query))
            }
            Statement::ExportData(e) => {
                output = w.query(&e.query, None);
                (StatementKind::Export, Check::Query(&e.query))
            }
            Statement::Copy {
                source,
                to,
                target,
                payload,
                ..
            } => {
                if let CopyTarget::Program { .. } = target {
                    w.opaque("COPY … PROGRAM runs a command on the database server");
                }
                // The parser takes the lines after `COPY … FROM STDIN` as inline data, so any
                // statement written there would go unseen. Data belongs in the COPY protocol.
                if let Some(p) = payload
                    && (p.terminated || !p.data.trim().is_empty())
                {
                    w.opaque(
                        "text after COPY … FROM STDIN is read as inline data and not analyzed; \
                         send COPY data through the COPY protocol",
                    );
                }
                match source {
                    CopySource::Table {
                        table_name,
                        columns,
                    } => {
                        if let Some(t) = w.table(table_name) {
                            if *to {
                                w.read(&t);
                                output = if columns.is_empty() {
                                    vec![Col::Star {
                                        table: t,
                                        except: vec![],
                                    }]
                                } else {
                                    columns
                                        .iter()
                                        .map(|c| {
                                            let name = w.names.ident(c);
                                            Col::Named {
                                                lin: Lineage::column(&t, &name),
                                                name,
                                            }
                                        })
                                        .collect()
                                };
                            } else {
                                w.acc.writes.insert(t);
                            }
                        }
                    }
                    CopySource::Query(q) => {
                        output = w.query(q, None);
                    }
                }
                // `COPY … FROM` loads rows into a table: for policy, an insert (a rule that
                // allows `copy` allows exporting a table, not writing one).
                let kind = if *to {
                    StatementKind::Copy
                } else {
                    StatementKind::Insert
                };
                (kind, Check::Statement(s))
            }
            Statement::Drop { names, table, .. } => {
                for n in names.iter().chain(table) {
                    if let Some(t) = w.table(n) {
                        w.acc.writes.insert(t);
                    }
                }
                (StatementKind::Drop, Check::Nothing)
            }
            Statement::Truncate(t) => {
                for target in &t.table_names {
                    if let Some(t) = w.table(&target.name) {
                        w.acc.writes.insert(t);
                    }
                }
                (StatementKind::Truncate, Check::Nothing)
            }
            Statement::AlterTable(a) => {
                if let Some(t) = w.table(&a.name) {
                    w.acc.writes.insert(t);
                }
                if guard::contains_query(s) {
                    w.opaque("ALTER TABLE with a query is not analyzed");
                }
                (StatementKind::Alter, Check::Nothing)
            }
            Statement::CreateIndex(ci) => {
                if let Some(t) = w.table(&ci.table_name) {
                    w.acc.writes.insert(t);
                }
                if guard::contains_query(s) {
                    w.opaque("CREATE INDEX with a query is not analyzed");
                }
                (StatementKind::Create, Check::Nothing)
            }
            Statement::Grant(g) => {
                grant_objects(&mut w, g.objects.as_ref());
                (StatementKind::Grant, Check::Nothing)
            }
            Statement::Revoke(r) => {
                grant_objects(&mut w, r.objects.as_ref());
                (StatementKind::Grant, Check::Nothing)
            }
            Statement::Call(func) => {
                let name = function_name(&func.name);
                w.acc.functions.insert(name.clone());
                let empty = Frame::new(None);
                if let sqlparser::ast::FunctionArguments::List(list) = &func.args {
                    for arg in &list.args {
                        if let sqlparser::ast::FunctionArg::Unnamed(
                            sqlparser::ast::FunctionArgExpr::Expr(Expr::Identifier(id)),
                        ) = arg
                        {
                            clobbered.push(id.value.to_lowercase());
                        }
                    }
                    w.function_args(&name, &list.args, &empty);
                    if !list.clauses.is_empty() {
                        w.opaque("CALL argument clauses are not analyzed");
                    }
                } else if let sqlparser::ast::FunctionArguments::Subquery(q) = &func.args {
                    w.query(q, None);
                }
                (StatementKind::Call, Check::Statement(s))
            }
            Statement::Declare { stmts, .. } => {
                for d in stmts {
                    let mut lin = Lineage::default();
                    if let Some(a) = &d.assignment {
                        let (DeclareAssignment::Expr(e)
                        | DeclareAssignment::Default(e)
                        | DeclareAssignment::DuckAssignment(e)
                        | DeclareAssignment::For(e)
                        | DeclareAssignment::MsSqlAssignment(e)) = a;
                        lin = w.expr(e, None);
                    }
                    if let Some(q) = &d.for_query {
                        output.extend(w.query(q, None));
                    }
                    for n in &d.names {
                        new_vars.push((n.value.to_lowercase(), lin.clone()));
                    }
                }
                (declare_kind(stmts), Check::Statement(s))
            }
            // A cursor's rows were decided when it was declared; prepared statements and
            // session state are let go of: nothing is read or written.
            Statement::Close { .. }
            | Statement::Deallocate { .. }
            | Statement::Discard { .. }
            | Statement::Fetch { into: None, .. } => (StatementKind::Transaction, Check::Nothing),
            Statement::Set(set) => {
                self.set(&mut w, set, &mut new_vars);
                (set_kind(self.dialect, set), Check::Statement(s))
            }
            Statement::StartTransaction { .. }
            | Statement::Commit { .. }
            | Statement::Rollback { .. }
            | Statement::Savepoint { .. }
            | Statement::ReleaseSavepoint { .. } => (StatementKind::Transaction, Check::Nothing),
            // PostgreSQL's `SHOW x` is `SELECT current_setting('x')`: a read of no table.
            Statement::ShowVariable { .. } if self.dialect == SqlDialect::Postgres => {
                (StatementKind::Select, Check::Nothing)
            }
            Statement::Execute { immediate, .. } => {
                w.skip_idents(s);
                w.opaque(if *immediate {
                    "EXECUTE IMMEDIATE runs SQL text the analyzer cannot see"
                } else {
                    "EXECUTE runs a prepared statement the analyzer cannot see"
                });
                (StatementKind::Other, Check::Nothing)
            }
            Statement::Raise(r) => {
                // The message reaches the client as an error: it is output.
                if let Some(RaiseStatementValue::UsingMessage(e) | RaiseStatementValue::Expr(e)) =
                    &r.value
                {
                    let lin = w.expr(e, None);
                    output.push(Col::Named {
                        name: "message".into(),
                        lin,
                    });
                }
                (StatementKind::Other, Check::Statement(s))
            }
            Statement::Assert { condition, message } => {
                let l = w.expr(condition, None);
                w.acc.predicates.extend(l.refs);
                if let Some(m) = message {
                    let lin = w.expr(m, None);
                    output.push(Col::Named {
                        name: "message".into(),
                        lin,
                    });
                }
                (StatementKind::Other, Check::Statement(s))
            }
            Statement::CreateFunction(cf) => {
                if let Some(t) = w.table(&cf.name) {
                    w.acc.writes.insert(t);
                }
                if guard::contains_query(s) {
                    w.opaque(
                        "a function body with a query is not analyzed (callers would read \
                         tables invisibly)",
                    );
                }
                if body_is_sql_text(cf) {
                    w.opaque(
                        "the function body is SQL text the analyzer does not read (callers \
                         could read tables invisibly)",
                    );
                }
                (StatementKind::Create, Check::Nothing)
            }
            Statement::CreateSchema { schema_name, .. } => {
                if let SchemaName::Simple(name) | SchemaName::NamedAuthorization(name, _) =
                    schema_name
                    && let Some(t) = w.table(name)
                {
                    w.acc.writes.insert(t);
                }
                if guard::contains_query(s) {
                    w.opaque("CREATE SCHEMA with a query is not analyzed");
                }
                (StatementKind::Create, Check::Nothing)
            }
            Statement::ExplainTable { table_name, .. } => {
                read_table(&mut w, table_name, false);
                (StatementKind::Other, Check::Nothing)
            }
            _ => (generic(&mut w, s), Check::Nothing),
        };
        let kind = match (kind, w.dml_kind) {
            (StatementKind::Select | StatementKind::Other, Some(k)) => k,
            (k, _) => k,
        };
        w.acc.functions.extend(collect_functions(s));
        let facts = finish(w, kind, output, s, check);
        // Writes into tables this script created earlier add to what those tables hold.
        let mut written = Lineage::default();
        for c in &facts.written {
            written.refs.extend(c.sources.iter().cloned());
            written.whole_row |= c.whole_row;
        }
        for t in &facts.writes {
            if let Some(cols) = self.state.tables.get_mut(&t.parts)
                && !written.refs.is_empty()
            {
                cols.push(Col::Any {
                    lin: written.clone(),
                });
            }
        }
        for (t, mut cols) in created {
            // The name may still mean an existing table (IF NOT EXISTS, a failed CREATE caught
            // by an exception handler): keep the table's own columns as candidates too.
            cols.push(Col::Star {
                table: t.clone(),
                except: vec![],
            });
            self.state.tables.insert(t.parts, cols);
        }
        self.out.push(facts);
        for (name, lin) in new_vars {
            self.state.vars.entry(name).or_default().add(lin);
        }
        self.state.unknown_vars.extend(clobbered);
    }

    fn set(&self, w: &mut Walker<'_>, set: &Set, new_vars: &mut Vec<(String, Lineage)>) {
        let assignments: Vec<(&ObjectName, Vec<&Expr>)> = match set {
            Set::SingleAssignment {
                variable, values, ..
            } => vec![(variable, values.iter().collect())],
            Set::ParenthesizedAssignments { variables, values } => variables
                .iter()
                .map(|v| (v, values.iter().collect()))
                .collect(),
            Set::MultipleAssignments { assignments } => assignments
                .iter()
                .map(|a| (&a.name, vec![&a.value]))
                .collect(),
            _ => {
                w.skip_idents(set);
                return;
            }
        };
        for (variable, values) in assignments {
            let name = variable.to_string();
            match self.dialect {
                SqlDialect::BigQuery => {
                    let lower = name.to_ascii_lowercase();
                    if lower.starts_with("@@")
                        && (lower.contains("dataset") || lower.contains("project"))
                    {
                        w.opaque(format!(
                            "SET {name} changes how table names resolve; qualify tables instead"
                        ));
                    }
                    let mut lin = Lineage::default();
                    for v in values {
                        lin.add(w.expr(v, None));
                    }
                    let var = match variable.0.last() {
                        Some(ObjectNamePart::Identifier(id)) => id.value.to_lowercase(),
                        _ => lower,
                    };
                    new_vars.push((var, lin));
                }
                SqlDialect::Postgres => {
                    let lower = name.to_ascii_lowercase();
                    if lower.contains("standard_conforming_strings")
                        || lower.contains("backslash_quote")
                    {
                        w.opaque(format!(
                            "SET {name} changes how the server reads string literals, so later \
                             SQL could mean something else than querygate analyzed"
                        ));
                    }
                    // Session settings: their values are words, not column references.
                    for v in values {
                        w.skip_idents(v);
                        if guard::contains_query(v) {
                            w.opaque("SET with a query is not analyzed");
                        }
                    }
                }
            }
        }
    }
}

/// The statements of an IF/WHILE branch or procedure body.
fn conditional(c: &ConditionalStatements) -> &[Statement] {
    match c {
        ConditionalStatements::Sequence { statements } => statements,
        ConditionalStatements::BeginEnd(b) => &b.statements,
    }
}

/// A table read by name outside FROM (CLONE, LIKE, DESCRIBE).
fn read_table(w: &mut Walker<'_>, name: &ObjectName, time_travel: bool) -> Option<TableRef> {
    let mut t = w.table(name)?;
    t.time_travel |= time_travel;
    w.read(&t);
    Some(t)
}

/// A function whose body is a string in a language that can run queries (SQL, PL/pgSQL).
fn body_is_sql_text(cf: &CreateFunction) -> bool {
    let body = match &cf.function_body {
        Some(CreateFunctionBody::AsBeforeOptions { body, .. })
        | Some(CreateFunctionBody::AsAfterOptions(body)) => body,
        _ => return false,
    };
    let is_text = matches!(body, Expr::Value(_));
    let language = cf
        .language
        .as_ref()
        .map(|l| l.value.to_ascii_lowercase())
        .unwrap_or_default();
    is_text
        && !matches!(
            language.as_str(),
            "js" | "javascript" | "python" | "c" | "internal"
        )
}

fn grant_objects(w: &mut Walker<'_>, objects: Option<&GrantObjects>) {
    let Some(objects) = objects else { return };
    let names: &[ObjectName] = match objects {
        GrantObjects::AllSequencesInSchema { schemas }
        | GrantObjects::AllTablesInSchema { schemas }
        | GrantObjects::AllViewsInSchema { schemas }
        | GrantObjects::AllMaterializedViewsInSchema { schemas }
        | GrantObjects::AllExternalTablesInSchema { schemas }
        | GrantObjects::AllFunctionsInSchema { schemas }
        | GrantObjects::AllProceduresInSchema { schemas }
        | GrantObjects::AllRoutinesInSchema { schemas }
        | GrantObjects::FutureTablesInSchema { schemas }
        | GrantObjects::FutureViewsInSchema { schemas }
        | GrantObjects::FutureExternalTablesInSchema { schemas }
        | GrantObjects::FutureMaterializedViewsInSchema { schemas }
        | GrantObjects::FutureSequencesInSchema { schemas } => schemas,
        GrantObjects::FutureSchemasInDatabase { databases } => databases,
        GrantObjects::Databases(n)
        | GrantObjects::Schemas(n)
        | GrantObjects::Sequences(n)
        | GrantObjects::Tables(n)
        | GrantObjects::Views(n)
        | GrantObjects::Warehouses(n)
        | GrantObjects::Integrations(n)
        | GrantObjects::ResourceMonitors(n)
        | GrantObjects::Users(n)
        | GrantObjects::ComputePools(n)
        | GrantObjects::Connections(n)
        | GrantObjects::FailoverGroup(n)
        | GrantObjects::ReplicationGroup(n)
        | GrantObjects::ExternalVolumes(n) => n,
        GrantObjects::Procedures(_) | GrantObjects::Functions(_) | GrantObjects::Routines(_) => &[],
    };
    for n in names {
        if let Some(t) = w.table(n) {
            w.acc.writes.insert(t);
        }
    }
}

/// A statement not modeled in detail: its kind, and every table name in it as written.
fn generic(w: &mut Walker<'_>, s: &Statement) -> StatementKind {
    let kind = classify(s);
    for (address, _) in guard::relations(s) {
        w.seen_rels.insert(address);
    }
    let mut names = Vec::new();
    let _ = sqlparser::ast::visit_relations(s, |r: &ObjectName| {
        names.push(r.clone());
        std::ops::ControlFlow::<()>::Continue(())
    });
    for n in &names {
        match w.names.table_ref(n) {
            Ok(t) => {
                w.acc.writes.insert(t);
            }
            Err(why) => w.opaque(why.to_string()),
        }
    }
    if guard::contains_query(s) {
        w.opaque(format!(
            "queries inside {} statements are not analyzed",
            kind.name()
        ));
    }
    kind
}

fn classify(s: &Statement) -> StatementKind {
    use StatementKind as K;
    match s {
        Statement::Query(_) => K::Select,
        Statement::Insert(_) => K::Insert,
        Statement::Update(_) => K::Update,
        Statement::Delete(_) => K::Delete,
        Statement::Merge(_) => K::Merge,
        Statement::CreateTable(_)
        | Statement::CreateView(_)
        | Statement::CreateIndex(_)
        | Statement::CreateVirtualTable { .. }
        | Statement::CreateRole(_)
        | Statement::CreateSecret { .. }
        | Statement::CreateServer(_)
        | Statement::CreateForeignTable(_)
        | Statement::CreateForeignDataWrapper(_)
        | Statement::CreateUserMapping(_)
        | Statement::CreatePolicy(_)
        | Statement::CreateRule(_)
        | Statement::CreateConnector(_)
        | Statement::CreateOperator(_)
        | Statement::CreateOperatorFamily(_)
        | Statement::CreateOperatorClass(_)
        | Statement::CreateTextSearch(_)
        | Statement::CreateAggregate(_)
        | Statement::CreateExtension(_)
        | Statement::CreateCollation(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateDatabase { .. }
        | Statement::CreateFunction(_)
        | Statement::CreateTrigger(_)
        | Statement::CreateProcedure { .. }
        | Statement::CreateMacro { .. }
        | Statement::CreateStage { .. }
        | Statement::CreateFileFormat { .. }
        | Statement::CreateWarehouse(_)
        | Statement::CreateSequence { .. }
        | Statement::CreateDomain(_)
        | Statement::CreateType { .. }
        | Statement::CreateUser(_) => K::Create,
        Statement::Drop { .. }
        | Statement::DropFunction(_)
        | Statement::DropDomain(_)
        | Statement::DropProcedure { .. }
        | Statement::DropSecret { .. }
        | Statement::DropPolicy(_)
        | Statement::DropRule(_)
        | Statement::DropConnector { .. }
        | Statement::DropExtension(_)
        | Statement::DropOperator(_)
        | Statement::DropOperatorFamily(_)
        | Statement::DropOperatorClass(_)
        | Statement::DropTrigger(_) => K::Drop,
        Statement::AlterTable(_)
        | Statement::AlterSchema(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView(_)
        | Statement::AlterFunction(_)
        | Statement::AlterType(_)
        | Statement::AlterCollation(_)
        | Statement::AlterOperator(_)
        | Statement::AlterOperatorFamily(_)
        | Statement::AlterOperatorClass(_)
        | Statement::AlterTextSearch(_)
        | Statement::AlterRole { .. }
        | Statement::AlterPolicy(_)
        | Statement::AlterTrigger(_)
        | Statement::AlterConnector { .. }
        | Statement::AlterSession { .. }
        | Statement::AlterUser(_)
        | Statement::RenameTable(_) => K::Alter,
        Statement::Truncate(_) => K::Truncate,
        Statement::Grant(_)
        | Statement::GrantRole(_)
        | Statement::Deny(_)
        | Statement::Revoke(_)
        | Statement::RevokeRole(_)
        | Statement::AlterDefaultPrivileges(_) => K::Grant,
        Statement::ExportData(_) | Statement::Unload { .. } => K::Export,
        Statement::Copy { .. } | Statement::CopyIntoSnowflake { .. } => K::Copy,
        Statement::Call(_) => K::Call,
        Statement::Declare { stmts, .. } => declare_kind(stmts),
        Statement::Close { .. }
        | Statement::Deallocate { .. }
        | Statement::Discard { .. }
        | Statement::Fetch { into: None, .. } => K::Transaction,
        Statement::Set(set) => set_kind(SqlDialect::Postgres, set),
        Statement::ShowVariable { .. } => K::Select,
        Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Savepoint { .. }
        | Statement::ReleaseSavepoint { .. } => K::Transaction,
        _ => K::Other,
    }
}

/// PostgreSQL settings that change only how values are shown or how long a statement may
/// take, which drivers set as they connect (JDBC: `extra_float_digits`, `application_name`):
/// session housekeeping. Every other `SET` (roles, `search_path`, encodings, …) is a `set`
/// for rules to decide.
const PRESENTATION_SETTINGS: &[&str] = &[
    "application_name",
    "extra_float_digits",
    "datestyle",
    "timezone",
    "intervalstyle",
    "client_min_messages",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "bytea_output",
];

fn set_kind(dialect: SqlDialect, set: &Set) -> StatementKind {
    let presentation = |variable: &ObjectName| {
        matches!(&variable.0[..], [ObjectNamePart::Identifier(id)]
            if PRESENTATION_SETTINGS.contains(&id.value.to_ascii_lowercase().as_str()))
    };
    match (dialect, set) {
        (SqlDialect::Postgres, Set::SingleAssignment { variable, .. })
            if presentation(variable) =>
        {
            StatementKind::Transaction
        }
        (SqlDialect::Postgres, Set::SetTimeZone { .. }) => StatementKind::Transaction,
        _ => StatementKind::Set,
    }
}

/// A PostgreSQL cursor (`DECLARE c CURSOR FOR SELECT …`) is a query whose rows are
/// fetched later; other declarations (BigQuery script variables) are `declare`.
fn declare_kind(stmts: &[sqlparser::ast::Declare]) -> StatementKind {
    if !stmts.is_empty()
        && stmts
            .iter()
            .all(|d| d.for_query.is_some() && d.assignment.is_none())
    {
        StatementKind::Select
    } else {
        StatementKind::Declare
    }
}

fn collect_functions(s: &Statement) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    guard::functions(s, &mut out);
    out
}

/// Runs the safety nets and turns the walker's state into facts.
fn finish(
    mut w: Walker<'_>,
    kind: StatementKind,
    output: Vec<Col>,
    s: &Statement,
    check: Check<'_>,
) -> StatementFacts {
    let missing = match &check {
        Check::Statement(st) => guard::missing_ident(*st, &w.seen_idents),
        Check::Query(q) => guard::missing_ident(*q, &w.seen_idents),
        Check::Nothing => None,
    };
    if let Some(name) = missing {
        w.opaque(format!(
            "the analyzer did not account for the name `{name}` (unsupported construct)"
        ));
    }
    let unaccounted = guard::relations(s)
        .into_iter()
        .find(|(address, _)| !w.seen_rels.contains(address));
    if let Some((_, name)) = unaccounted {
        w.opaque(format!(
            "the analyzer did not account for the table `{name}` (unsupported construct)"
        ));
    }
    build(w, kind, output)
}

fn finish_exprs(mut w: Walker<'_>, exprs: &[&Expr]) -> StatementFacts {
    if let Some(name) = exprs
        .iter()
        .find_map(|e| guard::missing_ident(*e, &w.seen_idents))
    {
        w.opaque(format!(
            "the analyzer did not account for the name `{name}` (unsupported construct)"
        ));
    }
    for e in exprs {
        if let Some((_, name)) = guard::relations(*e)
            .into_iter()
            .find(|(address, _)| !w.seen_rels.contains(address))
        {
            w.opaque(format!(
                "the analyzer did not account for the table `{name}` (unsupported construct)"
            ));
        }
    }
    build(w, StatementKind::Other, vec![])
}

/// Scans sorted, each one's bounded columns sorted and deduplicated, and scans alike listed
/// once (a recursive CTE's body is walked more than once).
fn scans(mut scans: Vec<Scan>) -> Vec<Scan> {
    for s in &mut scans {
        s.bounded.sort();
        s.bounded.dedup();
    }
    scans.sort();
    scans.dedup();
    scans
}

fn build(w: Walker<'_>, kind: StatementKind, output: Vec<Col>) -> StatementFacts {
    let acc = w.acc;
    StatementFacts {
        kind,
        reads: acc.reads.into_iter().collect(),
        writes: acc.writes.into_iter().collect(),
        functions: acc.functions.into_iter().collect(),
        output: output.iter().map(Col::to_output).collect(),
        written: acc.written,
        predicates: normalized(&acc.predicates),
        ordering: normalized(&acc.ordering),
        scans: scans(acc.scans),
        locks: acc.locks,
        opaque: w.opaque,
    }
}
