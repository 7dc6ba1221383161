//! The mapping between schema types and Lance tables: one dataset per node
//! type (a column per property) and one per edge type (`_id`, `_from`, `_to`
//! and a column per property).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::TryStreamExt;
use lance::dataset::Dataset;
use serde_json::{Map, Value};

use super::state::{edge_id, EdgeTable, Key, NodeTable, Props};
use super::value::{arrow_type, from_array, to_array};
use super::StoreError;
use crate::contract::{EdgeType, NodeType, Property};

pub const EDGE_ID: &str = "_id";
pub const EDGE_FROM: &str = "_from";
pub const EDGE_TO: &str = "_to";

fn prop_fields(props: &[Property]) -> impl Iterator<Item = Field> + '_ {
    props.iter().map(|p| Field::new(&p.name, arrow_type(&p.ty), p.optional))
}

pub fn node_schema(t: &NodeType) -> SchemaRef {
    Arc::new(Schema::new(prop_fields(&t.props).collect::<Vec<_>>()))
}

pub fn edge_schema(t: &EdgeType) -> SchemaRef {
    let mut fields = vec![
        Field::new(EDGE_ID, DataType::Utf8, false),
        Field::new(EDGE_FROM, DataType::Utf8, false),
        Field::new(EDGE_TO, DataType::Utf8, false),
    ];
    fields.extend(prop_fields(&t.props));
    Arc::new(Schema::new(fields))
}

fn prop_columns(props: &[Property], rows: &[&Props]) -> Result<Vec<ArrayRef>, StoreError> {
    props
        .iter()
        .map(|p| {
            let vals: Vec<Option<&Value>> = rows.iter().map(|r| r.get(&p.name)).collect();
            to_array(&p.ty, &vals).map_err(|e| StoreError::Internal(format!("column {}: {e}", p.name)))
        })
        .collect()
}

pub fn node_batch(t: &NodeType, rows: &[&Props]) -> Result<RecordBatch, StoreError> {
    RecordBatch::try_new(node_schema(t), prop_columns(&t.props, rows)?).map_err(|e| StoreError::Internal(format!("{}: {e}", t.name)))
}

pub fn edge_batch(t: &EdgeType, rows: &[(&Key, &Key, &Props)]) -> Result<RecordBatch, StoreError> {
    let ids: StringArray = rows.iter().map(|(f, to, _)| Some(edge_id(f, to))).collect();
    let froms: StringArray = rows.iter().map(|(f, _, _)| Some(f.as_ref())).collect();
    let tos: StringArray = rows.iter().map(|(_, to, _)| Some(to.as_ref())).collect();
    let props: Vec<&Props> = rows.iter().map(|(_, _, p)| *p).collect();
    let mut cols: Vec<ArrayRef> = vec![Arc::new(ids), Arc::new(froms), Arc::new(tos)];
    cols.extend(prop_columns(&t.props, &props)?);
    RecordBatch::try_new(edge_schema(t), cols).map_err(|e| StoreError::Internal(format!("{}: {e}", t.name)))
}

async fn scan_all(ds: &Dataset, table: &str) -> Result<Vec<RecordBatch>, StoreError> {
    ds.scan()
        .try_into_stream()
        .await
        .map_err(|e| StoreError::lance(format!("scan {table}"), e))?
        .try_collect()
        .await
        .map_err(|e| StoreError::lance(format!("scan {table}"), e))
}

fn row_props(props: &[Property], b: &RecordBatch, i: usize, table: &str) -> Result<Props, StoreError> {
    let mut m = Map::with_capacity(props.len());
    for p in props {
        let col = b.column_by_name(&p.name).ok_or_else(|| StoreError::Corrupt(format!("{table} has no column {}", p.name)))?;
        let v = from_array(&p.ty, col.as_ref(), i);
        if !v.is_null() {
            m.insert(p.name.clone(), v);
        }
    }
    Ok(super::state::props(m))
}

pub async fn load_nodes(t: &NodeType, ds: &Dataset) -> Result<NodeTable, StoreError> {
    let mut table = NodeTable::default();
    let key = &t.key_prop().name;
    for b in scan_all(ds, &t.name).await? {
        for i in 0..b.num_rows() {
            let props = row_props(&t.props, &b, i, &t.name)?;
            let k: Key = props.get(key).and_then(Value::as_str).ok_or_else(|| StoreError::Corrupt(format!("{}: row without key", t.name)))?.into();
            table.rows.insert(k, props);
        }
    }
    Ok(table)
}

/// An edge table's rows, each endpoint sharing the key string of its node
/// in `nodes` (a graph of a million edges would otherwise hold two million
/// more copies of keys it already has).
pub async fn load_edges(t: &EdgeType, ds: &Dataset, nodes: &BTreeMap<&str, &NodeTable>) -> Result<EdgeTable, StoreError> {
    let mut table = EdgeTable::default();
    let shared = |ty: &str, k: &str| -> Key { nodes.get(ty).and_then(|n| n.rows.get_key_value(k)).map_or_else(|| Key::from(k), |(k, _)| k.clone()) };
    for b in scan_all(ds, &t.name).await? {
        let string_col = |name: &str| {
            b.column_by_name(name).and_then(|c| c.as_string_opt::<i32>()).ok_or_else(|| StoreError::Corrupt(format!("{} has no {name}", t.name)))
        };
        let (from, to) = (string_col(EDGE_FROM)?, string_col(EDGE_TO)?);
        for i in 0..b.num_rows() {
            table.insert(shared(&t.from, from.value(i)), shared(&t.to, to.value(i)), row_props(&t.props, &b, i, &t.name)?);
        }
    }
    Ok(table)
}
