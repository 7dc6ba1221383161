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
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::change;
use crate::contract::routes::{worker_route, RouteId, WORKER_ROUTES};
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
fn params(p: Params, route: RouteId) -> Result<HashMap<String, String>, ApiError> {
    let allowed = worker_route(route).params;
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

/// The handler of each route in the contract's table. The `match` is
/// exhaustive, so a route added to the table is served (or explicitly not
/// yet) before the worker compiles.
fn handler(id: RouteId) -> MethodRouter<AppState> {
    let f = match worker_route(id).method {
        "GET" => MethodFilter::GET,
        "POST" => MethodFilter::POST,
        "DELETE" => MethodFilter::DELETE,
        "PUT" => MethodFilter::PUT,
        _ => MethodFilter::PATCH,
    };
    match id {
        RouteId::Healthz => on(f, healthz),
        RouteId::Schema => on(f, schema),
        RouteId::Snapshot => on(f, snapshot),
        RouteId::Read => on(f, read),
        RouteId::Change => on(f, change),
        RouteId::ListCommits => on(f, commits),
        RouteId::GetCommit => on(f, commit),
        RouteId::SchemaApply | RouteId::Ingest | RouteId::Export | RouteId::ListBranches | RouteId::MergeBranches | RouteId::CreateBranch | RouteId::DeleteBranch => {
            on(f, || async { ApiError::new(ErrorCode::NotImplemented, "not implemented yet in this worker version") })
        }
    }
}

/// The worker's router, built from the contract's route table.
pub fn router(state: AppState) -> Router {
    let mut by_path: Vec<(&str, MethodRouter<AppState>)> = Vec::new();
    for r in WORKER_ROUTES {
        let h = handler(r.id);
        match by_path.iter_mut().find(|(p, _)| *p == r.pattern) {
            Some((_, m)) => *m = std::mem::take(m).merge(h),
            None => by_path.push((r.pattern, h)),
        }
    }
    let mut app = Router::new();
    for (pattern, m) in by_path {
        app = app.route(pattern, m);
    }
    app.fallback(|| async { ApiError::new(ErrorCode::NotFound, "no such route") })
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
    let map = params(p, RouteId::Snapshot)?;
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
    let map = params(p, RouteId::Read)?;
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
    let map = params(p, RouteId::Change)?;
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
    let map = params(p, RouteId::ListCommits)?;
    let b = branch(&map)?;
    Ok(Json(json!({"commits": s.store.commits(b.as_str())})))
}

/// One commit, only if it is in `?branch=`'s history (default `main`).
async fn commit(State(s): State<AppState>, Path(id): Path<String>, p: Params) -> Result<Json<Value>, ApiError> {
    let map = params(p, RouteId::GetCommit)?;
    let b = branch(&map)?;
    Ok(Json(json!(s.store.commit_on(b.as_str(), &id)?)))
}
