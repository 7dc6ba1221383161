//! The Pingora `ProxyHttp` implementation. Each phase calls one module:
//! `request_filter` → route, authn, authz (and management routes);
//! `upstream_peer` → the graph's Unix socket; `upstream_request_filter` →
//! the re-encoded path and the identity headers; `logging` → metrics.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use omnigraph_contract::headers::{ACTOR_HEADER, LEGACY_ACTOR_HEADER, RESERVED_HEADER_PREFIX, WORKER_KEY_HEADER};
use omnigraph_contract::{BranchName, ErrorCode, GraphId, ResolvedActor};
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, Result};
use serde_json::json;

use crate::app::AppState;
use crate::authn::AuthnError;
use crate::authz::{Decision, RequestContext, Resource};
use crate::drain::{Drain, InFlight};
use crate::registry::{GraphEntry, Status};
use crate::respond;
use crate::lifecycle;
use crate::route::{self, Action, Route, RouteError};

/// How long a client should wait before retrying a graph whose worker is down.
const RETRY_AFTER_S: &str = "1";

pub struct Gateway {
    pub state: Arc<AppState>,
    pub drain: Arc<Drain>,
}

/// Per-request state, filled phase by phase; `logging` reads it once.
pub struct Ctx {
    _in_flight: InFlight,
    start: Instant,
    route: &'static str,
    decision: &'static str,
    actor: Option<Arc<ResolvedActor>>,
    upstream: Option<Upstream>,
}

struct Upstream {
    graph: GraphId,
    socket: String,
    path: String,
    key: Arc<str>,
    sent: Option<Instant>,
}

fn graph_json(e: &GraphEntry) -> serde_json::Value {
    json!({"graph_id": e.id.as_str(), "uri": e.uri, "status": e.status().as_str()})
}

impl Gateway {
    async fn handle(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let (method, path, query) = {
            let req = session.req_header();
            (req.method.as_str().to_string(), req.uri.path().to_string(), req.uri.query().map(str::to_string))
        };
        let route = match route::parse(&method, &path, query.as_deref()) {
            Ok(r) => r,
            Err(RouteError::BadRequest(m)) => return self.reply_err(session, ErrorCode::BadRequest, m, &[]).await,
            Err(RouteError::NotFound) => return self.reply_err(session, ErrorCode::NotFound, "no such route", &[]).await,
            Err(RouteError::MethodNotAllowed) => return self.reply_err(session, ErrorCode::MethodNotAllowed, "method not allowed on this route", &[]).await,
        };
        ctx.route = route.label();
        let st = &self.state;
        if self.drain.is_draining() {
            session.set_keepalive(None);
            let hdr = [("retry-after", RETRY_AFTER_S.to_string()), ("connection", "close".to_string())];
            return self.reply_err(session, ErrorCode::WorkerUnavailable, "the gateway is shutting down", &hdr).await;
        }
        match &route {
            Route::Healthz => return self.reply(session, 200, &json!({"status": "ok"})).await,
            Route::Readyz => {
                // Public: the status only. Graphs are listed by GET /graphs, to those allowed.
                let ready = st.registry.ready();
                let body = json!({"status": if ready { "ready" } else { "starting" }});
                return self.reply(session, if ready { 200 } else { 503 }, &body).await;
            }
            Route::OpenApi => {
                respond::send(session, 200, "application/json", Bytes::from_static(crate::openapi().as_bytes()), &[]).await?;
                return Ok(true);
            }
            Route::Metrics if st.config.config.server.metrics_public => return self.metrics(session).await,
            _ => {}
        }

        // Authentication.
        let actor = match &st.insecure {
            Some(a) => a.clone(),
            None => match crate::authn::authorization_header(&session.req_header().headers).and_then(|h| st.authn.authenticate(h)) {
                Ok(a) => a,
                Err(e) => {
                    st.metrics.authn_failures.inc();
                    tracing::debug!(reason = %e, "authentication failed");
                    let hdr = [("www-authenticate", "Bearer realm=\"omnigraph\"".to_string())];
                    return self.reply_err(session, ErrorCode::Unauthorized, AuthnError::PUBLIC_MESSAGE, &hdr).await;
                }
            },
        };
        ctx.actor = Some(actor.clone());

        // A create is authorized with what it asks for (DESIGN.md section 2,
        // step 1): read at most 1 MiB, parse the JSON, then ask Cedar.
        let mut create_body = None;
        let mut requested = lifecycle::Requested::default();
        if route == Route::CreateGraph {
            let Some(body) = read_body(session, lifecycle::CREATE_BODY_LIMIT).await? else {
                let msg = format!("the request body is larger than {} bytes", lifecycle::CREATE_BODY_LIMIT);
                return self.reply_err(session, ErrorCode::PayloadTooLarge, msg, &[]).await;
            };
            match lifecycle::requested(&body) {
                Ok((v, r)) => {
                    create_body = Some(v);
                    requested = r;
                }
                Err(e) => return self.reply_err(session, e.code(), e.to_string(), &[]).await,
            }
        }

        // Authorization.
        let Some(action) = route.action() else { return self.reply_err(session, ErrorCode::Internal, "route without an action", &[]).await };
        let entry = route.graph().and_then(|g| st.registry.get(g));
        let decision = self.decide(&actor, action, &route, entry.as_deref(), &requested);
        let resource = match route.graph() {
            Some(g) => Resource::Graph { id: g.as_str(), tenant: None }.describe(),
            None => Resource::Server.describe(),
        };
        crate::audit::log_decision(&actor.actor_id, action.name(), &resource, ctx.route, &decision);
        st.metrics.decision_seconds.observe(decision.elapsed.as_secs_f64());
        if !decision.errors.is_empty() {
            st.metrics.authz_errors.inc();
            tracing::warn!(errors = ?decision.errors, "authorization error: denied");
        }
        ctx.decision = if decision.allowed { "allow" } else { "deny" };
        if !decision.allowed {
            let msg = format!("actor {:?} may not {} on {}", &*actor.actor_id, action.name(), resource);
            respond::error_with_details(session, ErrorCode::Forbidden, msg, json!({"action": action.name(), "resource": resource})).await?;
            return Ok(true);
        }

        match route {
            Route::Metrics => self.metrics(session).await,
            Route::ListGraphs => {
                // Only the graphs this caller may read (graph_read) are named at all.
                let graphs: Vec<_> = st
                    .registry
                    .list()
                    .iter()
                    .filter(|e| self.decide_on(&actor, Action::GraphRead, e, &RequestContext::default()).allowed)
                    .map(|e| graph_json(e))
                    .collect();
                self.reply(session, 200, &json!({ "graphs": graphs })).await
            }
            Route::GetGraph(id) => match entry {
                Some(e) => {
                    let s = e.state.load();
                    let mut body = graph_json(&e);
                    body["tenant"] = json!(e.tenant);
                    body["protected_branches"] = json!(e.protected_branches.iter().map(|b| b.as_str()).collect::<Vec<_>>());
                    body["restarts"] = json!(s.restarts);
                    body["error"] = json!(s.error);
                    self.reply(session, 200, &body).await
                }
                None => self.reply_err(session, ErrorCode::NotFound, format!("graph {:?} does not exist", id.as_str()), &[]).await,
            },
            Route::Proxy(p) => {
                let Some(e) = entry else {
                    return self.reply_err(session, ErrorCode::NotFound, format!("graph {:?} does not exist", p.graph.as_str()), &[]).await;
                };
                let ws = e.state.load();
                let (Status::Up, Some(key)) = (ws.status, ws.key.clone()) else {
                    let msg = format!("the worker of graph {:?} is {}; retry shortly", e.id.as_str(), ws.status.as_str());
                    return self.reply_err(session, ErrorCode::WorkerUnavailable, msg, &[("retry-after", RETRY_AFTER_S.into())]).await;
                };
                // A body past the limit is refused before it is sent; a chunked
                // one the worker counts itself (it runs with the same limit).
                let limit = st.config.config.limits.max_body_bytes;
                if content_length(session).is_some_and(|n| n > limit) {
                    session.set_keepalive(None);
                    let msg = format!("the request body is larger than {limit} bytes (limits.max_body_bytes)");
                    return self.reply_err(session, ErrorCode::PayloadTooLarge, msg, &[]).await;
                }
                ctx.upstream = Some(Upstream { graph: e.id.clone(), socket: e.socket.display().to_string(), path: p.worker_path, key, sent: None });
                Ok(false)
            }
            Route::CreateGraph => {
                let body = create_body.unwrap_or_default();
                match lifecycle::create(&self.state, body).await {
                    Ok(v) => self.reply(session, 201, &v).await,
                    Err(e) => {
                        let hdr = if e.code() == ErrorCode::TooManyRequests { vec![("retry-after", RETRY_AFTER_S.to_string())] } else { Vec::new() };
                        self.reply_err(session, e.code(), e.to_string(), &hdr).await
                    }
                }
            }
            Route::DeleteGraph { graph, purge } => match lifecycle::delete(&self.state, &graph, purge).await {
                Ok(v) => self.reply(session, 200, &v).await,
                Err(e) => self.reply_err(session, e.code(), e.to_string(), &[]).await,
            },
            Route::ReloadPolicies => {
                // Parsing and validating every file is CPU and file work: off the proxy thread.
                let st = self.state.clone();
                match tokio::task::spawn_blocking(move || st.reload_policies()).await {
                    Ok(Ok(v)) => self.reply(session, 200, &v).await,
                    Ok(Err(e)) => self.reply_err(session, ErrorCode::BadRequest, format!("policies not reloaded; the old ones stay in force: {}", e.rendered), &[]).await,
                    Err(e) => self.reply_err(session, ErrorCode::Internal, format!("policy reload task: {e}"), &[]).await,
                }
            }
            Route::Healthz | Route::Readyz | Route::OpenApi => Ok(true),
        }
    }

    /// Decides `action` for `route`. A graph action on a graph that does not
    /// exist is decided by the server policies alone, so a caller learns that
    /// a graph is missing only if they would be allowed to use it.
    fn decide(&self, actor: &ResolvedActor, action: Action, route: &Route, entry: Option<&GraphEntry>, requested: &lifecycle::Requested) -> Decision {
        let st = &self.state;
        let graph = match route.graph() {
            Some(g) if !action.is_server_action() => g,
            _ => {
                let ctx = RequestContext { requested_graph: requested.graph.as_deref(), requested_tenant: requested.tenant.as_deref(), ..Default::default() };
                return st.engine.decide(&st.server_sets.load(), actor, action, Resource::Server, &ctx);
            }
        };
        let (branch, target, from) = match route {
            Route::Proxy(p) => (p.branch.as_ref(), p.target.as_ref(), p.from.as_ref()),
            _ => (None, None, None),
        };
        let protected = |b: &BranchName| entry.is_some_and(|e| e.is_protected(b));
        let ctx = RequestContext {
            branch: branch.map(|b| b.as_str()),
            branch_protected: branch.map(protected),
            target_branch: target.map(|b| b.as_str()),
            target_protected: target.map(protected),
            from_branch: from.map(|b| b.as_str()),
            from_protected: from.map(protected),
            ..Default::default()
        };
        match entry {
            Some(e) => self.decide_on(actor, action, e, &ctx),
            None => st.engine.decide(&st.server_sets.load(), actor, action, Resource::Graph { id: graph.as_str(), tenant: None }, &ctx),
        }
    }

    /// Decides a graph action on a graph that exists, with its own policies.
    fn decide_on(&self, actor: &ResolvedActor, action: Action, e: &GraphEntry, ctx: &RequestContext<'_>) -> Decision {
        self.state.engine.decide(&e.policies.load(), actor, action, Resource::Graph { id: e.id.as_str(), tenant: e.tenant.as_deref() }, ctx)
    }

    async fn metrics(&self, session: &mut Session) -> Result<bool> {
        let body = self.state.metrics.render();
        respond::send(session, 200, "text/plain; version=0.0.4", Bytes::from(body), &[]).await?;
        Ok(true)
    }

    async fn reply(&self, session: &mut Session, status: u16, body: &serde_json::Value) -> Result<bool> {
        respond::json(session, status, body).await?;
        Ok(true)
    }

    async fn reply_err(&self, session: &mut Session, code: ErrorCode, msg: impl Into<String>, headers: &[(&'static str, String)]) -> Result<bool> {
        respond::error(session, code, msg, headers).await?;
        Ok(true)
    }
}

/// The request's declared body length, if any.
fn content_length(session: &Session) -> Option<u64> {
    session.req_header().headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Reads the whole request body, or `None` once it passes `limit` bytes.
async fn read_body(session: &mut Session, limit: usize) -> Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > limit {
            session.set_keepalive(None);
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx { _in_flight: self.drain.enter(), start: Instant::now(), route: "unrouted", decision: "none", actor: None, upstream: None }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.handle(session, ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let up = ctx.upstream.as_mut().ok_or_else(|| Error::explain(pingora::ErrorType::InternalError, "no upstream chosen"))?;
        let mut peer = HttpPeer::new_uds(&up.socket, false, String::new())?;
        peer.options.connection_timeout = Some(std::time::Duration::from_secs(2));
        peer.options.read_timeout = Some(std::time::Duration::from_secs(600));
        up.sent = Some(Instant::now());
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(&self, _session: &mut Session, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        let (Some(up), Some(actor)) = (&ctx.upstream, &ctx.actor) else {
            return Err(Error::explain(pingora::ErrorType::InternalError, "no upstream chosen"));
        };
        let uri: http::Uri = up.path.parse().map_err(|_| Error::explain(pingora::ErrorType::InternalError, "bad worker path"))?;
        req.set_uri(uri);
        // The spoof defence: no client-sent identity header ever reaches a worker.
        let strip: Vec<http::HeaderName> = req
            .headers
            .keys()
            .filter(|k| {
                let n = k.as_str();
                n.starts_with(RESERVED_HEADER_PREFIX) || n == LEGACY_ACTOR_HEADER || n == "authorization"
            })
            .cloned()
            .collect();
        for name in strip {
            req.remove_header(&name);
        }
        req.insert_header(WORKER_KEY_HEADER, &*up.key)?;
        // Raw UTF-8 bytes: an id such as "josé" reaches the worker unchanged
        // (authn already refused ids with control characters or over 256 bytes).
        req.insert_header(ACTOR_HEADER, actor.actor_id.as_bytes())?;
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (code, msg) = match (&ctx.upstream, e.esource()) {
            (Some(up), ErrorSource::Upstream) => {
                (ErrorCode::WorkerUnavailable, format!("the worker of graph {:?} is not answering; retry shortly", up.graph.as_str()))
            }
            (_, ErrorSource::Downstream) => (ErrorCode::BadRequest, "the request could not be read".to_string()),
            _ => (ErrorCode::Internal, "internal gateway error".to_string()),
        };
        let headers = if code == ErrorCode::WorkerUnavailable { vec![("retry-after", RETRY_AFTER_S.to_string())] } else { Vec::new() };
        if session.response_written().is_none() {
            let _ = respond::error(session, code, msg, &headers).await;
        }
        FailToProxy { error_code: code.status(), can_reuse_downstream: false }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        self.state.metrics.requests.with_label_values(&[ctx.route, status.to_string().as_str(), ctx.decision]).inc();
        if let Some(sent) = ctx.upstream.as_ref().and_then(|u| u.sent) {
            self.state.metrics.upstream_seconds.observe(sent.elapsed().as_secs_f64());
        }
        tracing::debug!(route = ctx.route, status, decision = ctx.decision, elapsed_us = ctx.start.elapsed().as_micros() as u64, "request");
    }
}
