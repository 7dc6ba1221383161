//! Schema apply: a branch's new schema, as one graph commit.
//!
//! Under the writer lock, the new schema is compared with the branch head's
//! (`schema_change.rs`); a plan that cannot be applied, or that drops data
//! without `allow_data_loss`, writes nothing. Otherwise each step changes
//! the tables of this commit only, on lineages the branch owns (so no other
//! branch, and no older commit, sees the change):
//!
//! - `add_type`: a new, empty table. A type whose dataset already exists
//!   (made by another branch, or dropped earlier) gets a fresh lineage of it,
//!   forked and overwritten with no rows under the new columns;
//! - `add_property`: a column of nulls (Lance `add_columns`, metadata only),
//!   so the rows already there read the property as null;
//! - `drop_property`: the column is dropped from this commit's version of
//!   the table (metadata only; older versions keep it);
//! - `drop_type`: this commit no longer pins the table; older commits still
//!   read it where they pinned it.
//!
//! The commit row then carries the new `.pg` text (`schemas.rs`). A failure
//! before it restores every table this commit extended, as for any write.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{RecordBatch, RecordBatchIterator, RecordBatchReader};
use arrow_schema::{Field, Schema, SchemaRef};
use lance::dataset::{Dataset, InsertBuilder, NewColumnTransform, WriteDestination, WriteMode};

use super::commits::TablePin;
use super::lineage;
use super::value::arrow_type;
use super::write::{ApplyError, Txn, WriteTo};
use super::{tables, Author, Store, StoreError, Writer};
use crate::contract::GraphSchema;
use crate::schema_change::{self, SchemaDiff, Step, StepKind};

/// `?dry_run=` and `?allow_data_loss=`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SchemaOptions {
    pub dry_run: bool,
    pub allow_data_loss: bool,
}

/// What a schema apply did (or, dry, would do).
#[derive(Debug, Clone)]
pub struct SchemaApplied {
    /// The new commit; `None` for a dry run or a schema that changes nothing.
    pub commit_id: Option<String>,
    pub steps: Vec<Step>,
}

/// Why nothing was applied (400), with the whole plan.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct SchemaRefused {
    pub message: String,
    pub diff: SchemaDiff,
}

impl Store {
    /// Makes `new` (parsed from `source`) the schema of `to.branch`, as one
    /// commit by `author` on the branch head (which must be `to.if_commit`
    /// when given, dry or not).
    pub async fn apply_schema(
        &self,
        to: WriteTo<'_>,
        author: &Author,
        source: &str,
        new: GraphSchema,
        opts: SchemaOptions,
    ) -> Result<SchemaApplied, ApplyError<SchemaRefused>> {
        let mut w = self.writer.lock().await;
        let head = if opts.dry_run { self.expected_head(to)? } else { self.writable_head(&w, to)? };
        let diff = schema_change::diff(&head.schema.graph, &new);
        if let Some(message) = diff.refusal(opts.allow_data_loss) {
            return Err(ApplyError::Plan(SchemaRefused { message, diff }));
        }
        if opts.dry_run || diff.steps.is_empty() {
            return Ok(SchemaApplied { commit_id: None, steps: diff.steps });
        }
        let new = Arc::new(new);
        let mut txn = Txn::new(to.branch, &head);
        if let Err(e) = self.migrate_tables(&mut w, &mut txn, &diff.steps, &new).await {
            self.txn_rollback(&mut w, txn).await;
            return Err(e.into());
        }
        let data = schema_change::conform(&head.data, &head.schema.graph, &new);
        txn.new_schema = Some((Arc::from(source), new));
        let parents = vec![head.commit.commit_id.clone()];
        let snap = self.txn_finish(&mut w, txn, data, parents, author).await?;
        let steps: Vec<String> = diff.steps.iter().map(|s| format!("{:?} {}", s.kind, s.target())).collect();
        tracing::info!(commit = %snap.commit.commit_id, branch = to.branch, actor = %author.actor_id, steps = %steps.join(", "), "schema applied");
        Ok(SchemaApplied { commit_id: Some(snap.commit.commit_id.to_string()), steps: diff.steps })
    }

    /// Carries out `steps` on the tables of `txn`: one Lance version per
    /// table for its dropped columns and one for its added ones.
    async fn migrate_tables(&self, w: &mut Writer, txn: &mut Txn, steps: &[Step], new: &GraphSchema) -> Result<(), StoreError> {
        let mut drops: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut adds: BTreeMap<&str, Vec<Field>> = BTreeMap::new();
        let missing = |what: &str| StoreError::Internal(format!("schema apply: {what} is not in the new schema"));
        for s in steps {
            match (s.kind, s.property.as_deref()) {
                (StepKind::DropType, _) => txn.dropped(&s.ty),
                (StepKind::AddType, _) => {
                    let arrow = match (new.node(&s.ty), new.edge(&s.ty)) {
                        (Some(n), _) => tables::node_schema(n),
                        (None, Some(e)) => tables::edge_schema(e),
                        (None, None) => return Err(missing(&s.ty)),
                    };
                    let (pin, ds) = self.create_table(&s.ty, arrow).await?;
                    txn.created(&s.ty, pin, Arc::new(ds));
                }
                (StepKind::DropProperty, Some(p)) => drops.entry(&s.ty).or_default().push(p),
                (StepKind::AddProperty, Some(p)) => {
                    let prop = new.node(&s.ty).and_then(|n| n.prop(p)).or_else(|| new.edge(&s.ty).and_then(|e| e.prop(p))).ok_or_else(|| missing(&s.target()))?;
                    adds.entry(&s.ty).or_default().push(Field::new(&prop.name, arrow_type(&prop.ty), true));
                }
                (_, None) => return Err(StoreError::Internal(format!("schema apply: a property step without a property on {}", s.ty))),
            }
        }
        for (table, columns) in drops {
            let (lineage, start) = self.txn_open(w, txn, table).await?;
            let mut ds = Dataset::clone(&start);
            ds.drop_columns(&columns).await.map_err(|e| StoreError::lance(format!("drop {} from {table}", columns.join(", ")), e))?;
            txn.wrote(table, lineage, Arc::new(ds));
        }
        for (table, fields) in adds {
            let names: Vec<String> = fields.iter().map(|f| f.name().clone()).collect();
            let (lineage, start) = self.txn_open(w, txn, table).await?;
            let mut ds = Dataset::clone(&start);
            ds.add_columns(NewColumnTransform::AllNulls(Arc::new(Schema::new(fields))), None, None)
                .await
                .map_err(|e| StoreError::lance(format!("add {} to {table}", names.join(", ")), e))?;
            txn.wrote(table, lineage, Arc::new(ds));
        }
        Ok(())
    }

    /// A new, empty table `name` with the columns `schema`, pinned by
    /// nothing yet. A dataset that does not exist is created; one that does
    /// (another branch's type, or one dropped before) gets a new lineage,
    /// forked from its latest version and overwritten with no rows, so every
    /// commit that pins an older version keeps reading what it read.
    async fn create_table(&self, name: &str, schema: SchemaRef) -> Result<(TablePin, Dataset), StoreError> {
        let empty = || RecordBatchIterator::new(Vec::<Result<RecordBatch, arrow_schema::ArrowError>>::new(), schema.clone());
        match self.loc.open(name, None).await {
            Ok(latest) => {
                let (lineage, forked) = lineage::fork(&self.loc, name, &latest).await?;
                let params = self.loc.write_params(WriteMode::Overwrite);
                let ds = InsertBuilder::new(WriteDestination::Dataset(Arc::new(forked)))
                    .with_params(&params)
                    .execute_stream(Box::new(empty()) as Box<dyn RecordBatchReader + Send>)
                    .await
                    .map_err(|e| StoreError::lance(format!("start {name} over on {lineage}"), e))?;
                Ok((TablePin { lineage: Some(lineage), version: ds.version().version }, ds))
            }
            Err(e) if self.loc.has_versions(name).await? => Err(e),
            Err(_) => {
                let ds = Dataset::write(empty(), self.loc.table_uri(name).as_str(), Some(self.loc.write_params(WriteMode::Create)))
                    .await
                    .map_err(|e| StoreError::lance(format!("create {name}"), e))?;
                Ok((TablePin::main(ds.version().version), ds))
            }
        }
    }
}
