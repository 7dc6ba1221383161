//! The Pingora `ProxyHttp` implementation, one line per phase:
//! `request_filter` → framing → route → authn → authz → an admin handler or the
//! upstream; `upstream_peer` and `upstream_request_filter` → `upstream`;
//! `logging` → the audit line and every metric, from the typed [`Ctx`],
//! after the response has been sent.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use omnigraph_contract::{ErrorCode, ResolvedActor};
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, Result};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::authn::AuthnError;
use crate::authz::{Decision, Resource};
use crate::drain::{Drain, InFlight};
use crate::lifecycle::{self, Requested};
use crate::route::{self, Action, Route, RouteError};
use crate::upstream::{self, Upstream, RETRY_AFTER_S};
use crate::{admin, decision, respond};

pub struct Gateway {
    pub state: Arc<AppState>,
    pub drain: Arc<Drain>,
}

/// One authorization, kept for the audit line.
pub struct Decided {
    pub action: Action,
    pub resource: String,
    pub decision: Decision,
    /// The shadow set's decision, kept only when it differs from the live one.
    pub shadow: Option<Decision>,
}

/// Per-request state, filled phase by phase; `logging` reads it once.
pub struct Ctx {
    _in_flight: InFlight,
    /// This request's place in its actor's in-flight count (fairness.rs).
    _admitted: Option<crate::fairness::Admitted>,
    /// `x-request-id` (request_id.rs).
    request_id: String,
    start: Instant,
    route: Option<Route>,
    actor: Option<Arc<ResolvedActor>>,
    decided: Option<Decided>,
    upstream: Option<Upstream>,
}

impl Ctx {
    fn label(&self) -> &'static str {
        self.route.as_ref().map_or("unrouted", Route::label)
    }

    fn decision_label(&self) -> &'static str {
        match &self.decided {
            Some(d) if d.decision.allowed => "allow",
            Some(_) => "deny",
            None => "none",
        }
    }
}

/// What ends a request early: the answer the gateway gives itself.
struct Answer {
    code: ErrorCode,
    message: String,
    headers: Vec<(&'static str, String)>,
    details: Option<Value>,
}

impl Answer {
    fn new(code: ErrorCode, message: impl Into<String>) -> Answer {
        Answer { code, message: message.into(), headers: Vec::new(), details: None }
    }

    fn header(mut self, k: &'static str, v: impl Into<String>) -> Answer {
        self.headers.push((k, v.into()));
        self
    }

    async fn send(self, session: &mut Session) -> Result<bool> {
        respond::error(session, self.code, self.message, self.details, &self.headers).await?;
        Ok(true)
    }
}

impl Gateway {
    /// Reports a request to another gateway's worker as use of it, at most
    /// a few times per `server.idle_stop_s`, so that gateway keeps it running.
    fn mark_use(&self, entry: Option<&Arc<crate::registry::GraphEntry>>) {
        let (Some(e), Some(shared)) = (entry, self.state.supervisor.shared()) else { return };
        let idle = self.state.config.config.server.idle_stop_s;
        if idle == 0 || !e.due_use_mark(std::time::Duration::from_millis(idle * 1000 / 4).max(std::time::Duration::from_millis(250))) {
            return;
        }
        let (shared, id) = (shared.clone(), e.id.clone());
        tokio::spawn(async move { shared.mark_used(id.as_str()).await });
    }

    /// Chooses the worker again for a request whose remote worker could not
    /// be reached: waits (at most `server.start_wait_ms`) until the graph's
    /// registration changed (the watch saw it move or go), then selects as
    /// the first time, starting a worker here if the graph is now idle.
    /// The pause grows (100 ms, doubling, at most 1 s) and ends early when
    /// the registration changes; the tries end at `server.start_wait_ms`.
    async fn choose_again(&self, ctx: &mut Ctx) -> Result<()> {
        // An upstream error: `fail_to_proxy` answers 503 `worker_unavailable` with `Retry-After`.
        let unreachable = || Error::explain(pingora::ErrorType::ConnectRefused, "the graph's worker is not answering").into_up();
        let Some(Route::Proxy(p)) = ctx.route.clone() else { return Err(unreachable()) };
        let Some(old) = ctx.upstream.as_mut() else { return Err(unreachable()) };
        old.choose_again = false;
        // Not counted as a request in flight on this graph while it waits.
        old.in_use = None;
        let (graph, address, key, refused, first) = (old.graph.clone(), old.socket.clone(), old.key.clone(), old.refused, old.first_refused);
        let entry = self.state.registry.get(&graph);
        let wait = std::time::Duration::from_millis(self.state.config.config.server.start_wait_ms);
        let left = first.map_or(wait, |t| wait.saturating_sub(t.elapsed()));
        let pause = (std::time::Duration::from_millis(100) * 2u32.saturating_pow(refused.saturating_sub(1).min(4))).min(std::time::Duration::from_secs(1)).min(left);
        if let Some(e) = &entry {
            e.moved_from(&address, &key, pause).await;
        }
        let left = first.map_or(wait, |t| wait.saturating_sub(t.elapsed()));
        let mut up = upstream::select_waking(&p, entry.as_ref(), None, &self.state.config.config.limits, left).await.map_err(|r| {
            tracing::info!(graph = %graph, refused, reason = %r.message, "the graph's worker is still not reachable");
            unreachable()
        })?;
        (up.refused, up.first_refused) = (refused, first);
        ctx.upstream = Some(up);
        Ok(())
    }

    /// Route: parse, validate and re-encode the request line.
    fn route(&self, session: &Session) -> std::result::Result<Route, Answer> {
        let req = session.req_header();
        route::parse(req.method.as_str(), req.uri.path(), req.uri.query()).map_err(|e| match e {
            RouteError::BadRequest(m) => Answer::new(ErrorCode::BadRequest, m),
            RouteError::NotFound => Answer::new(ErrorCode::NotFound, "no such route"),
            RouteError::MethodNotAllowed => Answer::new(ErrorCode::MethodNotAllowed, "method not allowed on this route"),
        })
    }

    /// A draining gateway takes no new work.
    fn admit(&self, session: &mut Session) -> std::result::Result<(), Answer> {
        if !self.drain.is_draining() {
            return Ok(());
        }
        session.set_keepalive(None);
        Err(Answer::new(ErrorCode::WorkerUnavailable, "the gateway is shutting down").header("retry-after", RETRY_AFTER_S).header("connection", "close"))
    }

    /// Authn: the one bearer token → the actor. Every failure is the same 401.
    fn authenticate(&self, session: &Session) -> std::result::Result<Arc<ResolvedActor>, Answer> {
        let st = &self.state;
        if let Some(a) = &st.insecure {
            return Ok(a.clone());
        }
        crate::authn::authorization_header(&session.req_header().headers).and_then(|h| st.authn.authenticate(h)).map_err(|e| {
            st.metrics.authn_failures.inc();
            tracing::debug!(reason = %e, "authentication failed");
            Answer::new(ErrorCode::Unauthorized, AuthnError::PUBLIC_MESSAGE).header("www-authenticate", "Bearer realm=\"omnigraph\"")
        })
    }

    /// A create is authorized with what it asks for (DESIGN.md section 2,
    /// step 1): read at most 1 MiB, parse the JSON, then ask Cedar.
    async fn create_body(&self, session: &mut Session, route: &Route) -> Result<std::result::Result<(Option<Value>, Requested), Answer>> {
        if *route != Route::CreateGraph {
            return Ok(Ok((None, Requested::default())));
        }
        let Some(body) = read_body(session, lifecycle::CREATE_BODY_LIMIT).await? else {
            let msg = format!("the request body is larger than {} bytes", lifecycle::CREATE_BODY_LIMIT);
            return Ok(Err(Answer::new(ErrorCode::PayloadTooLarge, msg)));
        };
        // Parsing up to 1 MiB of JSON is CPU work: off the proxy thread.
        let parsed = tokio::task::spawn_blocking(move || lifecycle::requested(&body)).await;
        Ok(match parsed {
            Ok(r) => r.map(|(v, r)| (Some(v), r)).map_err(|e| Answer::new(e.code(), e.to_string())),
            Err(e) => Err(Answer::new(ErrorCode::Internal, format!("body parse task: {e}"))),
        })
    }

    /// Authz: Cedar decides; anything but an allow is a 403 naming the action and resource.
    fn authorize(&self, ctx: &mut Ctx, actor: &ResolvedActor, route: &Route, entry: Option<&crate::registry::GraphEntry>, requested: &Requested) -> std::result::Result<(), Answer> {
        let action = route.action().ok_or_else(|| Answer::new(ErrorCode::Internal, "route without an action"))?;
        let verdict = decision::decide(&self.state, actor, action, route, entry, requested);
        // The candidate set decides too; only a difference is kept (shadow.rs).
        let shadow = self.state.shadow.load().as_deref().map(|sh| decision::decide_shadow(&self.state, sh, actor, action, route, entry, requested)).filter(|sv| sv.decision.allowed != verdict.decision.allowed);
        if shadow.is_some() {
            let direction = if verdict.decision.allowed { "allow→deny" } else { "deny→allow" };
            self.state.metrics.shadow_differences.with_label_values(&[action.name(), direction]).inc();
        }
        let resource = match route.graph() {
            Some(g) if !action.is_server_action() => Resource::Graph { id: g.as_str(), tenant: None }.describe(),
            _ => Resource::Server.describe(),
        };
        let (allowed, denied_action, copied) = (verdict.decision.allowed, verdict.action, verdict.copied);
        // Kept only if the operator asked for explained denials: ids can tell a caller how the rules are written.
        let deciding = (!allowed && self.state.config.config.server.explain_denials).then(|| verdict.decision.policies.clone());
        ctx.decided = Some(Decided { action: denied_action, resource: resource.clone(), decision: verdict.decision, shadow: shadow.map(|sv| sv.decision) });
        if allowed {
            return Ok(());
        }
        let msg = match &copied {
            Some(b) => format!("actor {:?} may not read branch {:?} of {resource}, which {} would copy", &*actor.actor_id, b.as_str(), action.name()),
            None => format!("actor {:?} may not {} on {}", &*actor.actor_id, denied_action.name(), resource),
        };
        let mut details = json!({"action": denied_action.name(), "resource": resource});
        if let Some(b) = copied {
            details["branch"] = json!(b.as_str());
        }
        if let Some(policies) = deciding {
            details["reason"] = json!(if policies.is_empty() { "no permit applies" } else { "forbidden by policy" });
            details["policies"] = json!(policies);
        }
        Err(Answer { details: Some(details), ..Answer::new(ErrorCode::Forbidden, msg) })
    }

    /// Framing: oversized headers (Pingora has already settled the body's length).
    fn framing(&self, session: &mut Session) -> std::result::Result<(), Answer> {
        crate::framing::check(session.req_header()).map_err(|e| {
            // The body was never read, so the connection cannot carry another request.
            session.set_keepalive(None);
            Answer::new(ErrorCode::BadRequest, e.to_string()).header("connection", "close")
        })
    }

    async fn filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        ctx.request_id = crate::request_id::assign(session.req_header_mut());
        if let Err(a) = self.framing(session) {
            return a.send(session).await;
        }
        let route = match self.route(session) {
            Ok(r) => r,
            Err(a) => return a.send(session).await,
        };
        ctx.route = Some(route.clone());
        if let Err(a) = self.admit(session) {
            return a.send(session).await;
        }
        if let Some(done) = admin::public(&self.state, session, &route).await? {
            return Ok(done);
        }
        let actor = match self.authenticate(session) {
            Ok(a) => a,
            Err(a) => return a.send(session).await,
        };
        ctx.actor = Some(actor.clone());
        match self.state.fairness.admit(&actor.actor_id).await {
            Ok(a) => ctx._admitted = Some(a),
            Err(t) => {
                self.state.metrics.throttled.with_label_values(&[t.limit()]).inc();
                // Keep the connection for the client's retry when its body is small.
                drain_small_body(session).await;
                let a = Answer { details: Some(json!({"limit": t.limit()})), ..Answer::new(ErrorCode::TooManyRequests, t.message()) };
                return a.header("retry-after", RETRY_AFTER_S).send(session).await;
            }
        }
        // A request that waited for its turn may find the gateway draining.
        if let Err(a) = self.admit(session) {
            return a.send(session).await;
        }
        let (create_body, requested) = match self.create_body(session, &route).await? {
            Ok(b) => b,
            Err(a) => return a.send(session).await,
        };
        if self.state.config.config.server.decision_log.as_ref().is_some_and(|l| l.required) && !crate::audit::healthy() {
            let msg = "the decision log cannot be written, and server.decision_log.required refuses what it cannot record";
            return Answer::new(ErrorCode::Internal, msg).send(session).await;
        }
        let entry = route.graph().and_then(|g| self.state.registry.get(g));
        if let Err(a) = self.authorize(ctx, &actor, &route, entry.as_deref(), &requested) {
            return a.send(session).await;
        }
        match route {
            Route::Proxy(p) => {
                let limits = &self.state.config.config.limits;
                let wait = std::time::Duration::from_millis(self.state.config.config.server.start_wait_ms);
                match upstream::select_waking(&p, entry.as_ref(), content_length(session), limits, wait).await {
                    Ok(up) => {
                        if up.remote {
                            self.mark_use(entry.as_ref());
                        }
                        ctx.upstream = Some(up);
                        Ok(false)
                    }
                    Err(r) => {
                        if r.code == ErrorCode::PayloadTooLarge {
                            session.set_keepalive(None);
                        }
                        let mut a = Answer::new(r.code, r.message);
                        if r.retry_after {
                            a = a.header("retry-after", RETRY_AFTER_S);
                        }
                        a.send(session).await
                    }
                }
            }
            other => admin::handle(&self.state, session, other, &actor, entry, create_body).await,
        }
    }
}

/// The request's declared body length, if any.
fn content_length(session: &Session) -> Option<u64> {
    session.req_header().headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// Bodies up to this size are read and dropped before a refusal, so that
/// the connection can carry the client's next request; a larger one is not
/// worth reading, and its connection is closed instead (respond.rs).
const DRAIN_LIMIT: u64 = 64 * 1024;

/// How long reading such a body may take in all, whatever the client's pace.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops a declared HTTP/1 body of at most [`DRAIN_LIMIT`] bytes
/// within [`DRAIN_TIME`]. Not when the client waits for `100 Continue`
/// (it would only wait out its own timeout) nor on HTTP/2, whose streams
/// end without closing the connection. A body not read to its end, for any
/// reason, closes the connection after the answer (respond.rs); nothing
/// here fails the request.
async fn drain_small_body(session: &mut Session) {
    let small = content_length(session).is_some_and(|n| n <= DRAIN_LIMIT);
    let expects = session.req_header().headers.contains_key(http::header::EXPECT);
    if !small || expects || session.is_http2() {
        return;
    }
    let read_all = async {
        while let Ok(Some(_)) = session.read_request_body().await {}
    };
    if tokio::time::timeout(DRAIN_TIME, read_all).await.is_err() {
        session.set_keepalive(None);
    }
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
        Ctx { _in_flight: self.drain.enter(), _admitted: None, request_id: String::new(), start: Instant::now(), route: None, actor: None, decided: None, upstream: None }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        self.filter(session, ctx).await
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        if ctx.upstream.as_ref().is_some_and(|u| u.choose_again) {
            self.choose_again(ctx).await?;
        }
        let up = ctx.upstream.as_mut().ok_or_else(|| Error::explain(pingora::ErrorType::InternalError, "no upstream chosen"))?;
        upstream::peer(up)
    }

    /// Another gateway's worker could not be reached (nothing was sent):
    /// it may have just stopped as idle, be restarting after a crash, or
    /// have died with its gateway (its lease then expires and a worker is
    /// started here). Tried again, choosing the worker anew each time, until
    /// `server.start_wait_ms` after the first refusal.
    fn fail_to_connect(&self, _session: &mut Session, _peer: &HttpPeer, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
        let wait = std::time::Duration::from_millis(self.state.config.config.server.start_wait_ms);
        if let Some(up) = ctx.upstream.as_mut().filter(|u| u.remote) {
            let first = *up.first_refused.get_or_insert_with(Instant::now);
            up.refused += 1;
            if first.elapsed() < wait {
                up.choose_again = true;
                e.set_retry(true);
            }
        }
        e
    }

    async fn upstream_request_filter(&self, _session: &mut Session, req: &mut RequestHeader, ctx: &mut Ctx) -> Result<()> {
        let (Some(up), Some(actor)) = (&ctx.upstream, &ctx.actor) else {
            return Err(Error::explain(pingora::ErrorType::InternalError, "no upstream chosen"));
        };
        upstream::rewrite_headers(req, up, actor)
    }

    /// Every proxied answer carries the request's id back.
    async fn response_filter(&self, _session: &mut Session, resp: &mut pingora::http::ResponseHeader, ctx: &mut Ctx) -> Result<()> {
        resp.insert_header(crate::request_id::HEADER, ctx.request_id.as_str())
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
        // The connection is not reused (below), so the answer says so.
        session.set_keepalive(None);
        if session.response_written().is_none() {
            let _ = respond::error(session, code, msg, None, &headers).await;
        }
        FailToProxy { error_code: code.status(), can_reuse_downstream: false }
    }

    /// After the response: the audit line and every metric, read once from the context.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let st = &self.state;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let (Some(d), Some(actor)) = (&ctx.decided, &ctx.actor) {
            let b = ctx.route.as_ref().map(crate::decision::Branches::of).unwrap_or_default();
            crate::audit::log_decision(&crate::audit::Entry {
                request_id: &ctx.request_id,
                actor,
                action: d.action.name(),
                resource: &d.resource,
                branch: b.branch.map(|b| b.as_str()),
                target: b.target.map(|b| b.as_str()),
                route: ctx.label(),
                decision: &d.decision,
                shadow: d.shadow.as_ref(),
            });
            st.metrics.decision_seconds.observe(d.decision.elapsed.as_secs_f64());
            if !d.decision.errors.is_empty() {
                st.metrics.authz_errors.inc();
                tracing::warn!(errors = ?d.decision.errors, "authorization error: denied");
            }
        }
        st.metrics.requests.with_label_values(&[ctx.label(), status.to_string().as_str(), ctx.decision_label()]).inc();
        if let Some(sent) = ctx.upstream.as_ref().and_then(|u| u.sent) {
            st.metrics.upstream_seconds.observe(sent.elapsed().as_secs_f64());
        }
        tracing::debug!(route = ctx.label(), status, decision = ctx.decision_label(), elapsed_us = ctx.start.elapsed().as_micros() as u64, "request");
    }
}
