//! The worker's HTTP surface (DESIGN.md section 5): axum routes that call
//! into `store`, `query` and `change`. Every error leaves as the contract's
//! JSON body with one status per code ([`error`]); the worker key and the
//! actor are checked once, in the [`gate`] layer, before any handler runs.

pub mod error;
pub mod gate;

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::{Extension, Json, Router};
use serde_json::{json, Value};

use crate::change::{self, BodyError};
use crate::ingest::{self, IngestError};
use crate::contract::routes::{worker_route, RouteId, WORKER_ROUTES};
use crate::contract::{BranchName, ErrorCode, GraphSchema};
use crate::limits::{Cancel, CancelOnDrop, Limits};
use crate::query::{self, Cursor, ReadRequest};
use crate::store::{ApplyError, Author, MergeOutcome, SchemaOptions, Snapshot, Store, WriteTo};
pub use error::ApiError;

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

/// Parses `?branch=`, defaulting to `main`. Whether the branch exists is
/// the store's answer (404), so a write checks it again under its lock.
fn branch(map: &HashMap<String, String>) -> Result<BranchName, ApiError> {
    BranchName::parse_or_main(map.get("branch").map(String::as_str)).map_err(|e| ApiError::bad(e.to_string()))
}

/// A branch-valued parameter the route cannot do without (`?branch=` of a
/// new branch or a merge source, `?target=`).
fn required_branch(map: &HashMap<String, String>, key: &str) -> Result<BranchName, ApiError> {
    let v = map.get(key).ok_or_else(|| ApiError::bad(format!("this route needs ?{key}=")))?;
    BranchName::parse(v).map_err(|e| ApiError::bad(e.to_string()))
}

/// `?if_commit=`: the head the branch must be at for a write to proceed.
fn if_commit(map: &HashMap<String, String>) -> Result<Option<&str>, ApiError> {
    match map.get("if_commit").map(String::as_str) {
        Some("") => Err(ApiError::bad("?if_commit= needs a commit id")),
        other => Ok(other),
    }
}

/// A `true`/`false` flag such as `?dry_run=`; absent is false.
fn flag(map: &HashMap<String, String>, key: &str) -> Result<bool, ApiError> {
    match map.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(ApiError::bad(format!("?{key}= is true or false, not {v:?}"))),
    }
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
        RouteId::ListBranches => on(f, list_branches),
        RouteId::CreateBranch => on(f, create_branch),
        RouteId::DeleteBranch => on(f, delete_branch),
        RouteId::MergeBranches => on(f, merge_branches),
        RouteId::Ingest => on(f, ingest),
        RouteId::Export => on(f, export),
        RouteId::SchemaApply => on(f, schema_apply),
        RouteId::Maintenance => on(f, maintenance),
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

/// `GET /schema?branch=[&commit=]`: the `.pg` text of the branch head, or
/// of a commit in the branch's history.
async fn schema(State(s): State<AppState>, p: Params) -> Result<Response, ApiError> {
    let map = params(p, RouteId::Schema)?;
    let b = branch(&map)?;
    let version = match map.get("commit") {
        Some(c) => s.store.schema_at(b.as_str(), c)?,
        None => s.store.head(b.as_str())?.schema.clone(),
    };
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], version.source.to_string()).into_response())
}

/// `POST /schema/apply?branch=[&dry_run=][&allow_data_loss=][&if_commit=]`,
/// the body the whole new `.pg` text: `{"commit_id", "steps"}`, or 400 with
/// the plan in `details` and nothing changed.
async fn schema_apply(State(s): State<AppState>, Extension(author): Extension<Author>, p: Params, body: Result<Bytes, BytesRejection>) -> Result<Json<Value>, ApiError> {
    let map = params(p, RouteId::SchemaApply)?;
    let b = branch(&map)?;
    let to = WriteTo { branch: b.as_str(), if_commit: if_commit(&map)? };
    let opts = SchemaOptions { dry_run: flag(&map, "dry_run")?, allow_data_loss: flag(&map, "allow_data_loss")? };
    let bytes = ApiError::body(&s.limits, body)?;
    let source = std::str::from_utf8(&bytes).map_err(|e| ApiError::bad(format!("the body is not UTF-8 .pg text: {e}")))?;
    if source.trim().is_empty() {
        // Almost always a client that sent no body: never read it as "drop every type".
        return Err(ApiError::bad("the body is empty: send the whole new .pg schema"));
    }
    let new = GraphSchema::parse(source).map_err(|e| ApiError {
        details: Some(json!({"line": e.line, "column": e.col})),
        ..ApiError::bad(format!("invalid schema: {}", e.render("schema", source)))
    })?;
    let applied = s.store.apply_schema(to, &author, source, new, opts).await.map_err(|e| match e {
        ApplyError::Plan(r) => ApiError { details: Some(json!({"steps": r.diff.steps, "refused": r.diff.refused})), ..ApiError::bad(r.message) },
        ApplyError::Store(e) => e.into(),
    })?;
    let mut out = json!({"commit_id": applied.commit_id, "steps": applied.steps});
    if opts.dry_run {
        out["dry_run"] = json!(true);
    }
    Ok(Json(out))
}

async fn snapshot(State(s): State<AppState>, p: Params) -> Result<Json<Value>, ApiError> {
    let map = params(p, RouteId::Snapshot)?;
    let b = branch(&map)?;
    let snap = s.store.head(b.as_str())?;
    Ok(Json(json!({"branch": b.as_str(), "commit_id": snap.commit.commit_id, "tables": tables_json(&snap)})))
}

fn tables_json(snap: &Snapshot) -> Vec<Value> {
    let schema = &snap.schema.graph;
    let kinds = schema.nodes.iter().map(|n| (&n.name, "node")).chain(schema.edges.iter().map(|e| (&e.name, "edge")));
    kinds
        .map(|(name, kind)| {
            json!({"name": name, "kind": kind, "version": snap.commit.tables.get(name.as_str()).map(|p| p.version), "rows": snap.data.row_count(name)})
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
            None => s.store.head(b.as_str())?,
        };
        Ok::<_, ApiError>(query::execute(snap.schema.graph.clone(), snap, req, offset, &limits, cancel).await?)
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
    Extension(author): Extension<Author>,
    p: Params,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    let map = params(p, RouteId::Change)?;
    let b = branch(&map)?;
    let to = WriteTo { branch: b.as_str(), if_commit: if_commit(&map)? };
    // Read into typed ops borrowing from the body, the op limit enforced as
    // they are read: a batch never becomes a `Value` tree.
    let bytes = ApiError::body(&s.limits, body)?;
    let ops = change::parse_batch(&bytes, s.limits.max_change_ops).map_err(|e| match e {
        BodyError::TooManyOps(l) => ApiError::from(l),
        BodyError::NotJson(_) | BodyError::Shape(_) => ApiError::bad(e.to_string()),
    })?;
    let (snap, affected) = s.store.apply(to, &author, |base| change::plan(&base.schema.graph, base, ops)).await.map_err(|e| match e {
        ApplyError::Plan(e) => ApiError::bad(e.to_string()),
        ApplyError::Store(e) => e.into(),
    })?;
    tracing::info!(commit = %snap.commit.commit_id, branch = %b, actor = %author.actor_id, nodes = affected.nodes, edges = affected.edges, "change committed");
    Ok(Json(json!({
        "commit_id": snap.commit.commit_id,
        "affected_nodes": affected.nodes,
        "affected_edges": affected.edges,
        "actor_id": author.actor_id,
    })))
}

/// `POST /ingest?branch=[&if_commit=]`: an NDJSON body, streamed (never
/// bounded by `max_body_bytes`, only by `max_ingest_bytes`), as one commit.
async fn ingest(State(s): State<AppState>, Extension(author): Extension<Author>, p: Params, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    let map = params(p, RouteId::Ingest)?;
    let b = branch(&map)?;
    let expected = if_commit(&map)?.map(str::to_string);
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > s.limits.max_ingest_bytes) {
        return Err(IngestError::TooLarge(s.limits.ingest_too_large()).into());
    }
    let (store, limits) = (s.store.clone(), s.limits);
    // A task of its own, so that a client going away cannot drop the ingest
    // half-way: it sees the body end early and aborts cleanly.
    let task = tokio::spawn(async move {
        let to = WriteTo { branch: b.as_str(), if_commit: expected.as_deref() };
        let r = ingest::run(store, to, &author, body, limits).await;
        (r, b, author)
    });
    let (r, b, author) = task.await.map_err(|e| ApiError::new(ErrorCode::Internal, format!("the ingest task failed: {e}")))?;
    let sum = r?;
    tracing::info!(commit = %sum.commit_id, branch = %b, actor = %author.actor_id, lines = sum.lines, nodes = sum.nodes, edges = sum.edges, "ingest committed");
    Ok(Json(json!({"commit_id": sum.commit_id, "lines": sum.lines, "nodes": sum.nodes, "edges": sum.edges})))
}

/// `POST /export?branch=[&commit=]`: every node and edge as NDJSON, streamed.
async fn export(State(s): State<AppState>, p: Params) -> Result<Response, ApiError> {
    let map = params(p, RouteId::Export)?;
    let b = branch(&map)?;
    let snap = match map.get("commit") {
        Some(c) => s.store.snapshot_at(b.as_str(), c).await?,
        None => s.store.head(b.as_str())?,
    };
    let headers = [(header::CONTENT_TYPE, "application/x-ndjson")];
    Ok((headers, crate::export::body(snap.schema.graph.clone(), snap)).into_response())
}

async fn commits(State(s): State<AppState>, p: Params) -> Result<Json<Value>, ApiError> {
    let map = params(p, RouteId::ListCommits)?;
    let b = branch(&map)?;
    Ok(Json(json!({"commits": s.store.commits(b.as_str())?})))
}

/// One commit, only if it is in `?branch=`'s history (default `main`).
async fn commit(State(s): State<AppState>, Path(id): Path<String>, p: Params) -> Result<Json<Value>, ApiError> {
    let map = params(p, RouteId::GetCommit)?;
    let b = branch(&map)?;
    Ok(Json(json!(s.store.commit_on(b.as_str(), &id)?)))
}

async fn list_branches(State(s): State<AppState>, p: Params) -> Result<Json<Value>, ApiError> {
    params(p, RouteId::ListBranches)?;
    let list: Vec<Value> = s.store.branches().into_iter().map(|(name, head)| json!({"name": name, "head": head})).collect();
    Ok(Json(json!({"branches": list})))
}

/// `POST /branches?branch=NEW&from=BASE`: 201, 409 when NEW exists, 404 when BASE does not.
async fn create_branch(State(s): State<AppState>, Extension(author): Extension<Author>, p: Params) -> Result<Response, ApiError> {
    let map = params(p, RouteId::CreateBranch)?;
    let name = required_branch(&map, "branch")?;
    let from = BranchName::parse_or_main(map.get("from").map(String::as_str)).map_err(|e| ApiError::bad(e.to_string()))?;
    let head = s.store.create_branch(name.as_str(), from.as_str(), &author).await?;
    let body = json!({"name": name.as_str(), "head": head.commit.commit_id, "from": from.as_str()});
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `DELETE /branches/{name}`; `main` is 400.
async fn delete_branch(State(s): State<AppState>, Extension(author): Extension<Author>, Path(name): Path<String>, p: Params) -> Result<Json<Value>, ApiError> {
    params(p, RouteId::DeleteBranch)?;
    let name = BranchName::parse(&name).map_err(|e| ApiError::bad(e.to_string()))?;
    s.store.delete_branch(name.as_str(), &author).await?;
    Ok(Json(json!({"name": name.as_str(), "deleted": true})))
}

/// `POST /branches/merge?branch=SRC&target=DST[&dry_run=true]`: 200 with
/// the result, or 409 with every conflict and nothing written.
async fn merge_branches(State(s): State<AppState>, Extension(author): Extension<Author>, p: Params) -> Result<Json<Value>, ApiError> {
    let map = params(p, RouteId::MergeBranches)?;
    let source = required_branch(&map, "branch")?;
    let target = required_branch(&map, "target")?;
    let dry_run = flag(&map, "dry_run")?;
    match s.store.merge(source.as_str(), target.as_str(), dry_run, &author).await? {
        MergeOutcome::Done { result, commit_id } => {
            let mut body = json!({"result": result.as_str(), "commit_id": commit_id});
            if dry_run {
                body["dry_run"] = json!(true);
            }
            Ok(Json(body))
        }
        MergeOutcome::Conflicts(conflicts) => Err(ApiError::merge_conflicts(&conflicts)),
        MergeOutcome::SchemaDiffers(steps) => Err(ApiError::schema_conflict(source.as_str(), target.as_str(), &steps)),
    }
}

/// `POST /maintenance`: compaction and old-version cleanup now (see
/// `store/maintenance.rs`), with this worker's retention:
/// `{compacted_fragments, removed_versions, bytes_freed}`.
async fn maintenance(State(s): State<AppState>, Extension(author): Extension<Author>, p: Params) -> Result<Json<crate::store::MaintenanceReport>, ApiError> {
    params(p, RouteId::Maintenance)?;
    let (store, retention) = (s.store.clone(), s.limits.retention());
    // A task of its own, so a client going away never stops a run half-way.
    let task = tokio::spawn(async move { store.maintain(retention, &author).await });
    let report = task.await.map_err(|e| ApiError::new(ErrorCode::Internal, format!("the maintenance task failed: {e}")))??;
    Ok(Json(report))
}
