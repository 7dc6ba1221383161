//! The upstream phases: which worker a request goes to (`select`), how to
//! reach it (`peer`), and what it is sent (`rewrite_headers`).
//!
//! `rewrite_headers` is the spoof defence: whatever identity headers a client
//! sent are removed, and only the actor the gateway resolved is injected,
//! with the worker's key. It is pure, so its unit tests pin it exactly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use omnigraph_contract::headers::{ACTOR_HEADER, LEGACY_ACTOR_HEADER, RESERVED_HEADER_PREFIX, WORKER_KEY_HEADER};
use omnigraph_contract::routes::{worker_route, RouteId};
use omnigraph_contract::{ErrorCode, GraphId, ResolvedActor};
use pingora::http::RequestHeader;
use pingora::prelude::HttpPeer;

use crate::config::Limits;
use crate::registry::{GraphEntry, InUse, Status, Wake, MAX_START_WAIT};
use crate::route::ProxyRoute;

/// How long a client should wait before retrying a graph whose worker is down.
pub const RETRY_AFTER_S: &str = "1";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const READ_TIMEOUT: Duration = Duration::from_secs(600);

/// The worker a request was authorized for, chosen in `request_filter`.
pub struct Upstream {
    pub graph: GraphId,
    pub socket: String,
    /// The re-encoded path and query that Cedar authorized.
    pub path: String,
    pub key: Arc<str>,
    /// When the request left for the worker.
    pub sent: Option<Instant>,
    /// Counts the request in its graph's in-flight requests while it lives
    /// (what keeps an idle stop from cutting it off).
    pub in_use: Option<InUse>,
    /// Another gateway's worker (a shared catalog): one that refuses the
    /// connection (nothing was sent) may have just stopped, restarted or
    /// died with its gateway, so the request is tried again (see `proxy.rs`).
    pub remote: bool,
    /// Connecting to the remote worker failed: choose the worker again before the next try.
    pub choose_again: bool,
    /// Failed connections to remote workers so far, and when the first was.
    pub refused: u32,
    pub first_refused: Option<Instant>,
}

/// Why a request cannot be proxied, as the answer to give.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after: bool,
}

fn is_ingest(route: &ProxyRoute) -> bool {
    route.label == worker_route(RouteId::Ingest).label
}

/// The limit on a declared body and its key under `limits:`: `/ingest` is
/// bounded by `max_ingest_bytes` (it is streamed, never held), every other
/// route by `max_body_bytes`.
fn body_limit(limits: &Limits, route: &ProxyRoute) -> (u64, &'static str) {
    if is_ingest(route) {
        (limits.max_ingest_bytes, "max_ingest_bytes")
    } else {
        (limits.max_body_bytes, "max_body_bytes")
    }
}

/// Picks the worker of an allowed request: the graph must exist, its worker
/// must be up, and a declared body must fit its limit (`max_ingest_bytes`
/// for `/ingest`, `max_body_bytes` for the rest; a chunked body is counted
/// by the worker, which runs with the same limits).
pub fn select(route: &ProxyRoute, entry: Option<&Arc<GraphEntry>>, content_length: Option<u64>, limits: &Limits) -> Result<Upstream, Refusal> {
    let Some(e) = entry else {
        return Err(Refusal { code: ErrorCode::NotFound, message: format!("graph {:?} does not exist", route.graph.as_str()), retry_after: false });
    };
    // Before the worker's state: a request refused for its size never waits for, or starts, a worker.
    if let Some(n) = content_length {
        let (max, name) = body_limit(limits, route);
        if n > max {
            let message = format!("the request body is larger than {max} bytes (limits.{name})");
            return Err(Refusal { code: ErrorCode::PayloadTooLarge, message, retry_after: false });
        }
    }
    let in_use = e.enter();
    let ws = e.state.load();
    let (Some(in_use), Status::Up, Some(key)) = (in_use, ws.status, ws.key.clone()) else {
        let message = format!("the worker of graph {:?} is {}; retry shortly", e.id.as_str(), ws.status.as_str());
        return Err(Refusal { code: ErrorCode::WorkerUnavailable, message, retry_after: true });
    };
    // Another gateway's worker (a shared catalog) is reached at its registered address.
    let socket = match &ws.address {
        Some(a) => a.to_string(),
        None => e.socket.display().to_string(),
    };
    Ok(Upstream { graph: e.id.clone(), socket, path: route.worker_path.clone(), key, sent: None, in_use: Some(in_use), remote: ws.remote, choose_again: false, refused: 0, first_refused: None })
}

/// [`select`], but a lazy graph that is idle (or starting) is started and
/// the request waits for it, at most `wait` (`server.start_wait_ms`), then
/// gets 503 as for any graph whose worker is not up. A request that finds
/// the graph going idle just as it arrives waits for the next worker
/// instead of failing.
pub async fn select_waking(route: &ProxyRoute, entry: Option<&Arc<GraphEntry>>, content_length: Option<u64>, limits: &Limits, wait: Duration) -> Result<Upstream, Refusal> {
    let deadline = Instant::now() + wait.min(MAX_START_WAIT);
    loop {
        let chosen = select(route, entry, content_length, limits);
        let Some(e) = entry.filter(|e| e.lazy && matches!(e.status(), Status::Idle | Status::Starting)) else { return chosen };
        match chosen {
            Err(r) if r.code == ErrorCode::WorkerUnavailable => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() || e.wake(left).await == Wake::Unavailable {
                    return select(route, entry, content_length, limits);
                }
            }
            other => return other,
        }
    }
}

/// The worker as a Pingora peer: its Unix socket, or, for a worker a
/// shared catalog registered at `http://host:port` (gateways on several
/// hosts), that TCP address.
pub fn peer(up: &mut Upstream) -> pingora::Result<Box<HttpPeer>> {
    let mut peer = match up.socket.strip_prefix("http://") {
        Some(host_port) => {
            // Parsed here: Pingora's own resolution panics on a bad address.
            let addr: std::net::SocketAddr = host_port
                .parse()
                .map_err(|_| pingora::Error::explain(pingora::ErrorType::ConnectError, "the worker's registered address is not host:port").into_up())?;
            HttpPeer::new(addr, false, String::new())
        }
        None => HttpPeer::new_uds(&up.socket, false, String::new())?,
    };
    peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
    peer.options.read_timeout = Some(READ_TIMEOUT);
    up.sent = Some(Instant::now());
    Ok(Box::new(peer))
}

/// True for a header a client may never send to a worker.
fn is_identity_header(name: &str) -> bool {
    name.starts_with(RESERVED_HEADER_PREFIX) || name == LEGACY_ACTOR_HEADER || name == "authorization"
}

/// Sets the authorized path, strips every client identity header and
/// injects the worker key and the resolved actor (as raw UTF-8 bytes: an id
/// such as "josé" reaches the worker unchanged; authn already refused ids
/// with control characters or over 256 bytes).
pub fn rewrite_headers(req: &mut RequestHeader, up: &Upstream, actor: &ResolvedActor) -> pingora::Result<()> {
    let uri: http::Uri = up.path.parse().map_err(|_| pingora::Error::explain(pingora::ErrorType::InternalError, "bad worker path"))?;
    req.set_uri(uri);
    let strip: Vec<http::HeaderName> = req.headers.keys().filter(|k| is_identity_header(k.as_str())).cloned().collect();
    for name in strip {
        req.remove_header(&name);
    }
    req.insert_header(WORKER_KEY_HEADER, &*up.key)?;
    req.insert_header(ACTOR_HEADER, actor.actor_id.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use omnigraph_contract::AuthSource;

    fn upstream() -> Upstream {
        Upstream { graph: GraphId::parse("g").unwrap(), socket: "/s".into(), path: "/read?branch=dev".into(), key: Arc::from("k3y"), sent: None, in_use: None, remote: false, choose_again: false, refused: 0, first_refused: None }
    }

    fn actor(id: &str) -> ResolvedActor {
        ResolvedActor { actor_id: Arc::from(id), tenant_id: None, groups: Vec::new(), scopes: Vec::new(), source: AuthSource::Static }
    }

    #[test]
    fn spoofed_identity_headers_are_replaced_by_the_resolved_actor() {
        let mut req = RequestHeader::build("POST", b"/graphs/g/read?branch=dev", None).unwrap();
        for (k, v) in [
            ("x-omnigraph-actor", "mallory"),
            ("X-Omnigraph-Worker-Key", "guess"),
            ("x-omnigraph-anything", "x"),
            ("x-actor-id", "mallory"),
            ("authorization", "Bearer secret"),
            ("content-type", "application/json"),
        ] {
            req.append_header(k, v).unwrap();
        }
        req.append_header("x-omnigraph-actor", "mallory2").unwrap();
        rewrite_headers(&mut req, &upstream(), &actor("alice")).unwrap();
        let all = |k: &str| req.headers.get_all(k).iter().map(|v| v.to_str().unwrap().to_string()).collect::<Vec<_>>();
        assert_eq!(all("x-omnigraph-actor"), vec!["alice"]);
        assert_eq!(all("x-omnigraph-worker-key"), vec!["k3y"]);
        assert!(all("x-omnigraph-anything").is_empty() && all("x-actor-id").is_empty() && all("authorization").is_empty());
        assert_eq!(all("content-type"), vec!["application/json"], "other headers pass");
        assert_eq!(req.uri.to_string(), "/read?branch=dev", "the authorized path, not the client's");
    }

    fn route(label: &'static str) -> ProxyRoute {
        let graph = GraphId::parse("g").unwrap();
        ProxyRoute { graph, action: omnigraph_contract::routes::Action::Change, branch: None, target: None, from: None, worker_path: "/x".into(), label }
    }

    #[test]
    fn ingest_is_bounded_by_max_ingest_bytes_and_the_rest_by_max_body_bytes() {
        let limits = Limits { max_body_bytes: 10, max_ingest_bytes: 1000, ..Limits::default() };
        assert_eq!(body_limit(&limits, &route("POST /ingest")), (1000, "max_ingest_bytes"), "max_body_bytes never bounds an ingest");
        assert_eq!(body_limit(&limits, &route("POST /change")), (10, "max_body_bytes"));
    }

    #[test]
    fn non_ascii_actor_ids_pass_as_utf8_bytes() {
        let mut req = RequestHeader::build("GET", b"/x", None).unwrap();
        rewrite_headers(&mut req, &upstream(), &actor("josé")).unwrap();
        assert_eq!(req.headers.get("x-omnigraph-actor").unwrap().as_bytes(), "josé".as_bytes());
    }
}
