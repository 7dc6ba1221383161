//! The routes the gateway answers itself (DESIGN.md section 2): health,
//! readiness, metrics, the OpenAPI description, and the graph and policy
//! management routes. Each handler runs after `proxy` has routed,
//! authenticated and authorized the request, and writes the whole answer.

use std::sync::Arc;

use bytes::Bytes;
use omnigraph_contract::ErrorCode;
use pingora::proxy::Session;
use pingora::Result;
use serde_json::{json, Value};

use crate::app::AppState;
use crate::decision::{decide_entry, Branches};
use crate::registry::GraphEntry;
use crate::respond;
use crate::route::{Action, Route};
use crate::upstream::RETRY_AFTER_S;
use crate::lifecycle;
use omnigraph_contract::ResolvedActor;

fn graph_json(e: &GraphEntry) -> Value {
    json!({"graph_id": e.id.as_str(), "uri": e.uri, "status": e.status().as_str()})
}

/// Answers a public route (no authentication): `Some` when `route` is one.
pub async fn public(st: &AppState, session: &mut Session, route: &Route) -> Result<Option<bool>> {
    match route {
        Route::Healthz => respond::json(session, 200, &json!({"status": "ok"})).await?,
        Route::Readyz => {
            // The status only: graphs are listed by GET /graphs, to those allowed.
            let synced = st.catalog_synced.load(std::sync::atomic::Ordering::SeqCst);
            let status = match (st.registry.ready() && synced, crate::audit::healthy()) {
                (true, true) => "ready",
                (false, _) => "starting",
                (true, false) => "decision_log_failing",
            };
            respond::json(session, if status == "ready" { 200 } else { 503 }, &json!({ "status": status })).await?
        }
        Route::OpenApi => respond::send(session, 200, "application/json", Bytes::from_static(crate::openapi().as_bytes()), &[]).await?,
        Route::Metrics if st.config.config.server.metrics_public => metrics(st, session).await?,
        _ => return Ok(None),
    }
    Ok(Some(true))
}

async fn metrics(st: &AppState, session: &mut Session) -> Result<()> {
    st.metrics.in_flight.set(st.drain.in_flight() as i64);
    st.metrics.throttle_waiting.set(st.fairness.waiting());
    st.metrics.decision_log_dropped.set(i64::try_from(crate::audit::dropped()).unwrap_or(i64::MAX));
    st.metrics.decision_log_failures.set(i64::try_from(crate::audit::failures()).unwrap_or(i64::MAX));
    respond::send(session, 200, "text/plain; version=0.0.4", Bytes::from(st.metrics.render()), &[]).await
}

/// Answers an authorized management route. `create_body` is the `POST /graphs`
/// body that was read and parsed before authorization.
pub async fn handle(st: &Arc<AppState>, session: &mut Session, route: Route, actor: &ResolvedActor, entry: Option<Arc<GraphEntry>>, create_body: Option<Value>) -> Result<bool> {
    match route {
        Route::Metrics => metrics(st, session).await?,
        Route::ListGraphs => {
            // Only the graphs this caller may read (graph_read) are named at all.
            let graphs: Vec<Value> = st
                .registry
                .list()
                .iter()
                .filter(|e| decide_entry(st, actor, Action::GraphRead, Some(e.id.as_str()), Some(e), Branches::default(), &Default::default()).decision.allowed)
                .map(|e| graph_json(e))
                .collect();
            respond::json(session, 200, &json!({ "graphs": graphs })).await?
        }
        Route::GetGraph(id) => match entry {
            Some(e) => {
                let s = e.state.load();
                let mut body = graph_json(&e);
                body["tenant"] = json!(e.tenant);
                body["protected_branches"] = json!(e.protected_branches.iter().map(|b| b.as_str()).collect::<Vec<_>>());
                body["restarts"] = json!(s.restarts);
                body["error"] = json!(s.error);
                respond::json(session, 200, &body).await?
            }
            None => respond::error(session, ErrorCode::NotFound, format!("graph {:?} does not exist", id.as_str()), None, &[]).await?,
        },
        Route::CreateGraph => match lifecycle::create(st, create_body.unwrap_or_default()).await {
            Ok(v) => respond::json(session, 201, &v).await?,
            Err(e) => {
                let hdr = if e.code() == ErrorCode::TooManyRequests { vec![("retry-after", RETRY_AFTER_S.to_string())] } else { Vec::new() };
                respond::error(session, e.code(), e.to_string(), None, &hdr).await?
            }
        },
        Route::DeleteGraph { graph, purge } => match lifecycle::delete(st, &graph, purge).await {
            Ok(v) => respond::json(session, 200, &v).await?,
            Err(e) => respond::error(session, e.code(), e.to_string(), None, &[]).await?,
        },
        Route::ReloadPolicies | Route::PromotePolicies => {
            // Parsing and validating every file is CPU and file work: off the proxy thread.
            let st2 = st.clone();
            let promote = route == Route::PromotePolicies;
            let (verb, run): (&str, fn(&AppState) -> _) = if promote { ("promoted", AppState::promote_shadow) } else { ("reloaded", AppState::reload_policies) };
            match tokio::task::spawn_blocking(move || run(&st2)).await {
                Ok(Ok(v)) => respond::json(session, 200, &v).await?,
                Ok(Err(e)) => {
                    let msg = format!("policies not {verb}; the old ones stay in force: {}", e.rendered);
                    respond::error(session, ErrorCode::BadRequest, msg, None, &[]).await?
                }
                Err(e) => respond::error(session, ErrorCode::Internal, format!("policy {verb} task: {e}"), None, &[]).await?,
            }
        }
        Route::Healthz | Route::Readyz | Route::OpenApi | Route::Proxy(_) => {
            respond::error(session, ErrorCode::Internal, "not a management route", None, &[]).await?
        }
    }
    Ok(true)
}
