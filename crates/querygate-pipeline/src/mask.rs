//! The mask stage: what the identity may not see of a statement's columns.
//!
//! A statement that names the rewrite's own markers, or that masking cannot make safe,
//! is refused; a query reading tables with columns masked for the identity is rewritten
//! (`querygate_sql::mask_reads`, the tables' schemas from the source) so that every such
//! read returns masked values only; a direct read of a table's rows gets the masks to
//! apply to its cells as they come back. Views are not rewritten: a view whose
//! definition reaches a masked column is refused. Runs inside the decide stage, before
//! any estimate, so the statement as written never goes upstream.

use std::collections::HashMap;

use querygate_core::{Action, Denial, DenialKind, Identity, Query, Request};
use querygate_sql::Facts;

use crate::decide::views_read;
use crate::source::{ColumnMask, Refusal, Source};
use crate::{Explained, Pipeline, PolicySet, masking, reach};

impl Pipeline {
    /// The mask stage. A statement that names the rewrite's own markers, or that masking
    /// cannot make safe (`reach.refusal`), is refused, dry runs too. A query reading tables
    /// with columns masked for the identity is rewritten (their schemas from the source)
    /// so that every such read returns masked values only. A direct read of a table's rows
    /// runs no SQL: the masks for its cells are returned, to apply as the rows come back.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn mask<S: Source>(
        &self,
        policies: &PolicySet,
        request: &Request,
        explained: &mut Explained,
        identity: &Identity,
        source: &S,
        call: &mut S::Call,
        reach: &reach::Reach,
    ) -> Result<Option<Vec<ColumnMask>>, Refusal> {
        let forbidden = |why: String| Refusal::Denied(Denial::new(DenialKind::Forbidden, why));
        if let Some(marker) = request.statement().and_then(querygate_sql::reserved_marker) {
            return Err(Refusal::Denied(Denial::new(
                DenialKind::Invalid,
                format!(
                    "Invalid query: the statement contains `{marker}`, a name querygate \
                     reserves for masking; rename it"
                ),
            )));
        }
        if let Some(why) = &reach.refusal {
            explained.rule = Some("masking".into());
            return Err(forbidden(why.clone()));
        }
        let Some(first) = reach.masked_tables.first() else {
            return Ok(None);
        };
        let (sql, dataset) = match &request.action {
            Action::ReadTable { .. } => {
                let columns = source.columns(first).await.map_err(Refusal::Failed)?;
                let masks = masking::column_masks(&policies.classifier, first, &columns, identity)
                    .map_err(|e| forbidden(e.to_string()))?;
                return Ok(Some(masks));
            }
            Action::Query(Query {
                statement,
                default_schema,
                ..
            }) => (
                statement,
                default_schema.as_deref().or(source.default_schema()),
            ),
            _ => return Ok(None),
        };
        let mut lists = HashMap::new();
        let key_param = source.mask_key_param(call);
        for table in &reach.masked_tables {
            let columns = source.columns(table).await.map_err(Refusal::Failed)?;
            if columns.is_empty() {
                return Err(forbidden(format!(
                    "Access Denied: {table} has columns masked for {}, and the source shows no \
                     schema for it, so its reads cannot be masked",
                    identity.subject
                )));
            }
            let list = masking::select_list(
                &policies.classifier,
                table,
                &columns,
                identity,
                source.dialect(),
                &key_param,
            )
            .map_err(|e| forbidden(e.to_string()))?;
            lists.insert(table.clone(), list);
        }
        let rewritten = querygate_sql::mask_reads(
            sql,
            &querygate_sql::Masking {
                dialect: source.dialect(),
                project: source.default_project(),
                dataset,
                tables: &lists,
            },
        )
        .map_err(|why| forbidden(format!("Access Denied: {why}")))?;
        source.rewrite(call, &rewritten).map_err(Refusal::Denied)?;
        explained.rewritten = Some(rewritten);
        Ok(None)
    }

    /// Views are not rewritten: a view whose definition reaches a column masked for the
    /// identity (returns it or filters on it, through any depth of views) is refused, so a
    /// view over a classified table never returns its values in clear. Nor are catalog
    /// relations that hold values (`Source::holds_values`): refused to the same identities. Views are looked up
    /// (tables.get, cached by the source) only for identities something is masked for.
    pub(crate) async fn views<S: Source>(
        &self,
        classifier: &querygate_policy::Classifier,
        explained: &mut Explained,
        identity: &Identity,
        source: &S,
        facts: &Facts,
    ) -> Result<(), Refusal> {
        let masks_apply = classifier
            .classes
            .iter()
            .any(|c| classifier.masked_for(&c.tag, identity).is_some());
        if !masks_apply {
            return Ok(());
        }
        let mut refuse = |why: String| {
            explained.rule = Some("masking".into());
            Refusal::Denied(Denial::new(DenialKind::Forbidden, why))
        };
        // Catalog relations that hold other tables' values (statistics) or other clients'
        // statements would show what the masks hide.
        if let Some(t) = facts
            .statements
            .iter()
            .flat_map(|s| s.reads.iter())
            .find(|t| source.holds_values(&t.name()))
        {
            return Err(refuse(format!(
                "Access Denied: {} holds values of other tables (or other clients' \
                 statements), and columns are masked for {}; it is not readable through \
                 querygate for you",
                t.name(),
                identity.subject
            )));
        }
        let views = match views_read(source, facts).await.map_err(Refusal::Failed)? {
            Ok(views) => views,
            Err(why) => {
                return Err(refuse(format!(
                    "Access Denied: {why}, and columns are masked for {}; query the tables \
                     directly",
                    identity.subject
                )));
            }
        };
        for v in views {
            let inner_reach = reach::of_facts(classifier, &v.facts, &v.project, identity);
            // What the view returns or filters on of a masked column: its values leave in
            // clear, since the view's definition runs upstream as written.
            if let Some(why) = inner_reach
                .refusal
                .clone()
                .or(inner_reach.sensitive.clone())
            {
                let table = inner_reach
                    .masked_tables
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "the underlying table".to_string());
                return Err(refuse(format!(
                    "Access Denied: the view {} reads {table}, which has columns masked for {} \
                     ({why}); querygate masks reads of tables, not of views, so a view over \
                     masked columns is refused: query {table} directly (its masked columns \
                     come back masked)",
                    v.path, identity.subject
                )));
            }
        }
        Ok(())
    }
}
