//! The worker's HTTP surface (DESIGN.md section 5): axum routes that call
//! into `store`, `query` and `change`. Every error leaves as the contract's
//! JSON body with one status per code ([`error`]); the worker key and the
//! actor are checked once, in the [`gate`] layer, before any handler runs.

pub mod error;
pub mod gate;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::change;
use crate::contract::{BranchName, ErrorCode};
use crate::limits::{Cancel, CancelOnDrop, Limits};
use crate::query::{self, Cursor, ReadRequest};
use crate::store::{ApplyError, Snapshot, Store};
pub use error::ApiError;
use gate::Actor;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// The key from `OMNIGRAPH_WORKER_KEY`; with one, every request but
    /// `GET /healthz` must present it, and without one no actor header is trusted.
    pub worker_key: Option<Arc<[u8]>>,
    pub limits: Limits,
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

/// The query string, refusing any parameter the route does not know: a
/// misspelt `?brnach=` must not silently act on `main`.
fn params(p: Params, allowed: &[&str]) -> Result<HashMap<String, String>, ApiError> {
    let Query(map) = p.map_err(|e| ApiError::bad(format!("invalid query string: {}", e.body_text())))?;
    if let Some(k) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(ApiError::bad(format!("unknown query parameter {k:?} (this route takes: {})", allowed.join(", "))));
    }
    Ok(map)
}

/// Resolves `?branch=`, defaulting to `main`. Branches other than `main` arrive with the branches feature.
fn branch(map: &HashMap<String, String>) -> Result<BranchName, ApiError> {
    let b = BranchName::parse_or_main(map.get("branch").map(String::as_str)).map_err(|e| ApiError::bad(e.to_string()))?;
    if b.as_str() != BranchName::MAIN {
        return Err(ApiError::new(ErrorCode::NotFound, format!("branch {:?} does not exist", b.as_str())));
    }
    Ok(b)
}

fn json_body(limits: &Limits, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = ApiError::body(limits, body)?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))
}

pub fn router(state: AppState) -> Router {
    let not_yet = || async { ApiError::new(ErrorCode::NotImplemented, "not implemented yet in this worker version") };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/schema", get(schema))
        .route("/schema/apply", post(not_yet))
        .route("/snapshot", get(snapshot))
        .route("/read", post(read))
        .route("/change", post(change))
        .route("/ingest", post(not_yet))
        .route("/export", post(not_yet))
        .route("/branches", get(not_yet).post(not_yet))
        .route("/branches/merge", post(not_yet))
        .route("/branches/{name}", delete(not_yet))
        .route("/commits", get(commits))
        .route("/commits/{id}", get(commit))
        .fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
        .method_not_allowed_fallback(|| async { ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route") })
        .layer(axum::middleware::from_fn_with_state(state.clone(), gate::gate))
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}

async fn healthz(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "graph_id": s.store.graph_id, "version": env!("CARGO_PKG_VERSION")}))
}

async fn schema(State(s): State<AppState>) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], s.store.schema_source.to_string()).into_response()
}

async fn snapshot(State(s): State<AppState>, p: Params) -> Result<Json<Value>, ApiError> {
    let map = params(p, &["branch"])?;
    let b = branch(&map)?;
    let snap = s.store.head();
    Ok(Json(json!({"branch": b.as_str(), "commit_id": snap.commit.commit_id, "tables": tables_json(&s.store, &snap)})))
}

fn tables_json(store: &Store, snap: &Snapshot) -> Vec<Value> {
    let kinds = store.schema.nodes.iter().map(|n| (&n.name, "node")).chain(store.schema.edges.iter().map(|e| (&e.name, "edge")));
    kinds
        .map(|(name, kind)| {
            json!({"name": name, "kind": kind, "version": snap.commit.tables.get(name.as_str()), "rows": snap.data.row_count(name)})
        })
        .collect()
}

async fn read(State(s): State<AppState>, p: Params, body: Result<Bytes, BytesRejection>) -> Result<Json<query::ReadResponse>, ApiError> {
    let map = params(p, &["branch", "commit"])?;
    let b = branch(&map)?;
    let req: ReadRequest = serde_json::from_value(json_body(&s.limits, body)?).map_err(|e| ApiError::bad(format!("invalid read query: {e}")))?;
    let cursor = req.cursor.as_deref().map(Cursor::decode).transpose()?;
    let commit = match (map.get("commit"), &cursor) {
        (Some(c), Some(cur)) if *c != cur.commit_id => return Err(ApiError::bad("the cursor belongs to another commit than ?commit=")),
        (Some(c), _) => Some(c.clone()),
        (None, Some(cur)) => Some(cur.commit_id.clone()),
        (None, None) => None,
    };
    let offset = cursor.map_or(0, |c| c.offset);
    // Dropping this (the timeout below, or the client going away) stops the
    // blocking part of the read too.
    let cancel = Cancel::default();
    let _stop = CancelOnDrop(cancel.clone());
    let limits = s.limits;
    let work = async {
        let snap = match commit {
            Some(c) => s.store.snapshot_at(b.as_str(), &c).await?,
            None => s.store.head(),
        };
        Ok::<_, ApiError>(query::execute(s.store.schema.clone(), snap, req, offset, &limits, cancel).await?)
    };
    match tokio::time::timeout(limits.read_timeout(), work).await {
        Ok(r) => r.map(Json),
        Err(_) => {
            tracing::warn!(timeout_ms = limits.read_timeout_ms, "a read ran out of time and was stopped");
            Err(limits.read_timed_out().into())
        }
    }
}

async fn change(
    State(s): State<AppState>,
    Extension(Actor(actor)): Extension<Actor>,
    p: Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let map = params(p, &["branch"])?;
    branch(&map)?;
    let ops = change::parse_body(&json_body(&s.limits, body)?).map_err(|e| ApiError::bad(e.to_string()))?;
    s.limits.check_change_ops(ops.len())?;
    let schema = s.store.schema.clone();
    let (snap, affected) = s.store.apply(&actor, |base| change::plan(&schema, base, ops)).await.map_err(|e| match e {
        ApplyError::Plan(e) => ApiError::bad(e.to_string()),
        ApplyError::Store(e) => e.into(),
    })?;
    tracing::info!(commit = %snap.commit.commit_id, actor = %actor, nodes = affected.nodes, edges = affected.edges, "change committed");
    Ok(Json(json!({
        "commit_id": snap.commit.commit_id,
        "affected_nodes": affected.nodes,
        "affected_edges": affected.edges,
        "actor_id": actor,
    })))
}

async fn commits(State(s): State<AppState>, p: Params) -> Result<Json<Value>, ApiError> {
    let map = params(p, &["branch"])?;
    let b = branch(&map)?;
    Ok(Json(json!({"commits": s.store.commits(b.as_str())})))
}

/// One commit, only if it is in `?branch=`'s history (default `main`).
async fn commit(State(s): State<AppState>, Path(id): Path<String>, p: Params) -> Result<Json<Value>, ApiError> {
    let map = params(p, &["branch"])?;
    let b = branch(&map)?;
    Ok(Json(json!(s.store.commit_on(b.as_str(), &id)?)))
}
