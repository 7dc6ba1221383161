//! The worker's HTTP surface (DESIGN.md section 5): axum routes that call
//! into `store`, `query` and `change`. Every error leaves as the contract's
//! JSON body with one status per code.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

use crate::change;
use crate::contract::headers::{ACTOR_HEADER, LOCAL_ACTOR, WORKER_KEY_HEADER};
use crate::contract::{BranchName, ErrorBody, ErrorCode};
use crate::query::{self, Cursor, QueryError, ReadRequest};
use crate::store::{ApplyError, Snapshot, Store, StoreError};

/// Request bodies above this are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// The longest actor id a worker records.
const MAX_ACTOR_LEN: usize = 256;

#[derive(Clone)]
pub struct AppState {
    pub store: Arc<Store>,
    /// The key from `OMNIGRAPH_WORKER_KEY`; without one, no actor header is trusted.
    pub worker_key: Option<Arc<[u8]>>,
}

#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }
    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.code == ErrorCode::Internal {
            tracing::error!(code = self.code.as_str(), error = %self.message, "request failed");
        }
        (status, Json(ErrorBody::new(self.code, self.message))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let code = match &e {
            StoreError::UnknownCommit(_) => ErrorCode::NotFound,
            StoreError::Poisoned => ErrorCode::WorkerUnavailable,
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::BadRequest(m) => ApiError::bad(m),
            QueryError::Store(s) => s.into(),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> ApiError {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, format!("the request body is larger than {BODY_LIMIT} bytes"))
        } else {
            ApiError::bad(r.body_text())
        }
    }
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

fn json_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let bytes = body?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("the body is not valid JSON: {e}")))
}

/// The actor a commit records: the gateway's `x-omnigraph-actor`, but only
/// when the request carries this worker's key (compared in constant time).
pub fn actor(state: &AppState, headers: &HeaderMap) -> String {
    let Some(key) = &state.worker_key else { return LOCAL_ACTOR.to_string() };
    let presented = headers.get(WORKER_KEY_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
    if !bool::from(presented.ct_eq(key)) {
        return LOCAL_ACTOR.to_string();
    }
    headers
        .get(ACTOR_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|a| !a.is_empty() && a.len() <= MAX_ACTOR_LEN)
        .unwrap_or(LOCAL_ACTOR)
        .to_string()
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
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
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
    branch(&map)?;
    let req: ReadRequest = serde_json::from_value(json_body(body)?).map_err(|e| ApiError::bad(format!("invalid read query: {e}")))?;
    let cursor = req.cursor.as_deref().map(Cursor::decode).transpose()?;
    let commit = match (map.get("commit"), &cursor) {
        (Some(c), Some(cur)) if *c != cur.commit_id => return Err(ApiError::bad("the cursor belongs to another commit than ?commit=")),
        (Some(c), _) => Some(c.clone()),
        (None, Some(cur)) => Some(cur.commit_id.clone()),
        (None, None) => None,
    };
    let snap = match commit {
        Some(c) => s.store.snapshot_at(&c).await?,
        None => s.store.head(),
    };
    let offset = cursor.map_or(0, |c| c.offset);
    Ok(Json(query::execute(&s.store.schema, &snap, &req, offset).await?))
}

async fn change(State(s): State<AppState>, headers: HeaderMap, p: Params, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let map = params(p, &["branch"])?;
    branch(&map)?;
    let ops = change::parse_body(&json_body(body)?).map_err(|e| ApiError::bad(e.to_string()))?;
    let actor = actor(&s, &headers);
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

async fn commit(State(s): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let c = s.store.commit(&id).ok_or_else(|| ApiError::new(ErrorCode::NotFound, format!("unknown commit {id:?}")))?;
    Ok(Json(json!(c)))
}
