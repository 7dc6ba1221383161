//! Request line → [`Route`]: which handler, which Cedar action on which
//! resource, and (for proxied routes) the exact worker path to forward.
//!
//! The path is parsed segment by segment, percent-decoded, validated, and
//! re-encoded; the gateway never forwards the raw path it received, so what
//! the worker sees is exactly what Cedar authorized.

use std::collections::HashSet;

use omnigraph_contract::{BranchName, GraphId};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

pub use omnigraph_contract::routes::Action;
use omnigraph_contract::routes::{find_worker_route, BranchFrom};

/// What a request is, once parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Healthz,
    Readyz,
    Metrics,
    OpenApi,
    ListGraphs,
    CreateGraph,
    ReloadPolicies,
    PromotePolicies,
    GetGraph(GraphId),
    DeleteGraph { graph: GraphId, purge: bool },
    Proxy(ProxyRoute),
}

/// A request for a graph's worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyRoute {
    pub graph: GraphId,
    pub action: Action,
    /// The branch Cedar sees (the default branch when none was given).
    pub branch: Option<BranchName>,
    pub target: Option<BranchName>,
    /// The base of a new branch (`?from=`, default `main`), for `branch_create`.
    pub from: Option<BranchName>,
    /// The re-encoded path and query to send to the worker.
    pub worker_path: String,
    /// A short, bounded label for metrics, such as `POST /read`.
    pub label: &'static str,
}

impl Route {
    /// The Cedar action that gates this route; `None` for public routes.
    pub fn action(&self) -> Option<Action> {
        match self {
            Route::Healthz | Route::Readyz | Route::OpenApi => None,
            Route::Metrics => Some(Action::MetricsRead),
            Route::ListGraphs => Some(Action::GraphList),
            Route::CreateGraph => Some(Action::GraphCreate),
            Route::ReloadPolicies | Route::PromotePolicies => Some(Action::PolicyReload),
            Route::GetGraph(_) => Some(Action::GraphRead),
            Route::DeleteGraph { .. } => Some(Action::GraphDelete),
            Route::Proxy(p) => Some(p.action),
        }
    }

    pub fn graph(&self) -> Option<&GraphId> {
        match self {
            Route::GetGraph(g) | Route::DeleteGraph { graph: g, .. } => Some(g),
            Route::Proxy(p) => Some(&p.graph),
            _ => None,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Route::Healthz => "GET /healthz",
            Route::Readyz => "GET /readyz",
            Route::Metrics => "GET /metrics",
            Route::OpenApi => "GET /openapi.json",
            Route::ListGraphs => "GET /graphs",
            Route::CreateGraph => "POST /graphs",
            Route::ReloadPolicies => "POST /policies/reload",
            Route::PromotePolicies => "POST /policies/promote",
            Route::GetGraph(_) => "GET /graphs/{id}",
            Route::DeleteGraph { .. } => "DELETE /graphs/{id}",
            Route::Proxy(p) => p.label,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
}

/// Characters left unescaped when re-encoding a segment or a query value.
const SAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

fn bad(m: impl Into<String>) -> RouteError {
    RouteError::BadRequest(m.into())
}

/// Splits and decodes the path. Rejects empty segments, `.`/`..` (also
/// encoded), and segments whose decoded form holds `\` or a NUL. A decoded
/// `/` is kept for [`parse`] to allow in the one place it may stand.
fn segments(path: &str) -> Result<Vec<String>, RouteError> {
    let rest = path.strip_prefix('/').ok_or_else(|| bad("the path must start with '/'"))?;
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for raw in rest.split('/') {
        if raw.is_empty() {
            return Err(bad("empty path segment (double or trailing slash)"));
        }
        let seg = percent_decode_str(raw).decode_utf8().map_err(|_| bad("path segment is not valid UTF-8"))?;
        if seg == "." || seg == ".." {
            return Err(bad("'.' and '..' are not allowed in paths"));
        }
        if seg.contains(['\\', '\0']) {
            return Err(bad("encoded '/', '\\' or NUL in a path segment"));
        }
        out.push(seg.into_owned());
    }
    Ok(out)
}

/// Parses the query string into decoded pairs. A repeated key is an error:
/// the gateway and the worker must never read different values of one key.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, RouteError> {
    let Some(q) = query.filter(|q| !q.is_empty()) else { return Ok(Vec::new()) };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for part in q.split('&') {
        if part.is_empty() {
            continue;
        }
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let decode = |s: &str| {
            percent_decode_str(&s.replace('+', " ")).decode_utf8().map(|c| c.into_owned()).map_err(|_| bad("query string is not valid UTF-8"))
        };
        let (k, v) = (decode(k)?, decode(v)?);
        if !seen.insert(k.clone()) {
            return Err(bad(format!("query parameter {k:?} is given twice")));
        }
        out.push((k, v));
    }
    Ok(out)
}

fn parse_branch(name: &str) -> Result<BranchName, RouteError> {
    BranchName::parse(name).map_err(|e| bad(e.to_string()))
}

/// Parses a request line into a route.
pub fn parse(method: &str, path: &str, query: Option<&str>) -> Result<Route, RouteError> {
    let segs = segments(path)?;
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    // An encoded '/' may stand only in a branch name that is the last
    // segment of a graph route taking its branch from the path
    // (`DELETE /graphs/{id}/branches/feature%2Fx`): branch names may hold
    // '/', and that segment is re-encoded before it reaches the worker.
    if let Some(i) = s.iter().position(|seg| seg.contains('/')) {
        let branch_in_path = s.len() > 2
            && s[0] == "graphs"
            && i == s.len() - 1
            && find_worker_route(method, &s[2..]).is_ok_and(|r| r.branch == BranchFrom::Path);
        if !branch_in_path {
            return Err(bad("encoded '/', '\\' or NUL in a path segment"));
        }
    }
    let only = |m: &str, r: Route| if method == m { Ok(r) } else { Err(RouteError::MethodNotAllowed) };
    match s.as_slice() {
        ["healthz"] => only("GET", Route::Healthz),
        ["readyz"] => only("GET", Route::Readyz),
        ["metrics"] => only("GET", Route::Metrics),
        ["openapi.json"] => only("GET", Route::OpenApi),
        ["policies", "reload"] => only("POST", Route::ReloadPolicies),
        ["policies", "promote"] => only("POST", Route::PromotePolicies),
        ["graphs"] => match method {
            "GET" => Ok(Route::ListGraphs),
            "POST" => Ok(Route::CreateGraph),
            _ => Err(RouteError::MethodNotAllowed),
        },
        ["graphs", id, rest @ ..] => {
            let graph = GraphId::parse(id).map_err(|e| bad(e.to_string()))?;
            if rest.is_empty() {
                let q = query_pairs(query)?;
                return match method {
                    "GET" => Ok(Route::GetGraph(graph)),
                    "DELETE" => {
                        let mut purge = false;
                        for (k, v) in q {
                            match (k.as_str(), v.as_str()) {
                                ("purge", "true") => purge = true,
                                ("purge", "false") => purge = false,
                                _ => return Err(bad(format!("unknown query parameter {k:?}={v:?} (DELETE takes purge=true|false)"))),
                            }
                        }
                        Ok(Route::DeleteGraph { graph, purge })
                    }
                    _ => Err(RouteError::MethodNotAllowed),
                };
            }
            proxy_route(method, graph, rest, query).map(Route::Proxy)
        }
        _ => Err(RouteError::NotFound),
    }
}

fn proxy_route(method: &str, graph: GraphId, rest: &[&str], query: Option<&str>) -> Result<ProxyRoute, RouteError> {
    let r = find_worker_route(method, rest).map_err(|path_exists| if path_exists { RouteError::MethodNotAllowed } else { RouteError::NotFound })?;
    let pairs = query_pairs(query)?;
    for (k, _) in &pairs {
        if !r.takes(k) {
            return Err(bad(format!("unknown query parameter {k:?} for {}", r.label)));
        }
    }
    let get = |k: &str| pairs.iter().find(|(pk, _)| pk == k).map(|(_, v)| v.as_str());
    let branch = match r.branch {
        BranchFrom::None => None,
        BranchFrom::Query => Some(BranchName::parse_or_main(get("branch")).map_err(|e| bad(e.to_string()))?),
        BranchFrom::QueryRequired => Some(parse_branch(get("branch").ok_or_else(|| bad(format!("{} needs ?branch=", r.label)))?)?),
        BranchFrom::Path => Some(parse_branch(rest[rest.len() - 1])?),
    };
    let target = match get("target") {
        Some(t) => Some(parse_branch(t)?),
        None if r.action == Action::BranchMerge => return Err(bad("POST /branches/merge needs ?target=")),
        None => None,
    };
    let from = match r.action {
        Action::BranchCreate => Some(BranchName::parse_or_main(get("from")).map_err(|e| bad(e.to_string()))?),
        _ => None,
    };
    let mut worker_path = String::with_capacity(64);
    for seg in rest {
        worker_path.push('/');
        worker_path.extend(utf8_percent_encode(seg, SAFE));
    }
    for (i, (k, v)) in pairs.iter().enumerate() {
        worker_path.push(if i == 0 { '?' } else { '&' });
        worker_path.extend(utf8_percent_encode(k, SAFE));
        worker_path.push('=');
        worker_path.extend(utf8_percent_encode(v, SAFE));
    }
    Ok(ProxyRoute { graph, action: r.action, branch, target, from, worker_path, label: r.label })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(method: &str, path: &str, query: Option<&str>) -> ProxyRoute {
        match parse(method, path, query).unwrap() {
            Route::Proxy(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_route_table_row_by_row() {
        let rows: &[(&str, &str, Option<&str>, Action, Option<&str>, &str)] = &[
            ("GET", "/graphs/a/healthz", None, Action::GraphRead, None, "/healthz"),
            ("GET", "/graphs/a/schema", None, Action::Read, Some("main"), "/schema"),
            ("POST", "/graphs/a/schema/apply", Some("allow_data_loss=true"), Action::SchemaApply, Some("main"), "/schema/apply?allow_data_loss=true"),
            ("GET", "/graphs/a/snapshot", Some("branch=dev"), Action::Read, Some("dev"), "/snapshot?branch=dev"),
            ("POST", "/graphs/a/read", None, Action::Read, Some("main"), "/read"),
            ("POST", "/graphs/a/change", Some("branch=feature/x"), Action::Change, Some("feature/x"), "/change?branch=feature%2Fx"),
            ("POST", "/graphs/a/ingest", None, Action::Change, Some("main"), "/ingest"),
            ("POST", "/graphs/a/export", None, Action::Export, Some("main"), "/export"),
            ("GET", "/graphs/a/branches", None, Action::Read, None, "/branches"),
            ("POST", "/graphs/a/branches", Some("branch=dev&from=main"), Action::BranchCreate, Some("dev"), "/branches?branch=dev&from=main"),
            ("DELETE", "/graphs/a/branches/dev", None, Action::BranchDelete, Some("dev"), "/branches/dev"),
            ("POST", "/graphs/a/branches/merge", Some("branch=dev&target=main"), Action::BranchMerge, Some("dev"), "/branches/merge?branch=dev&target=main"),
            ("GET", "/graphs/a/commits", None, Action::Read, Some("main"), "/commits"),
            ("GET", "/graphs/a/commits/01ABC", None, Action::Read, Some("main"), "/commits/01ABC"),
            ("GET", "/graphs/a/commits/01ABC", Some("branch=dev"), Action::Read, Some("dev"), "/commits/01ABC?branch=dev"),
        ];
        for (m, p, q, action, branch, wp) in rows {
            let r = proxy(m, p, *q);
            assert_eq!(r.action, *action, "{m} {p}");
            assert_eq!(r.branch.as_ref().map(|b| b.as_str()), *branch, "{m} {p}");
            assert_eq!(r.worker_path, *wp, "{m} {p}");
        }
        assert_eq!(proxy("POST", "/graphs/a/branches/merge", Some("branch=dev&target=main")).target.unwrap().as_str(), "main");
        assert_eq!(proxy("POST", "/graphs/a/branches", Some("branch=dev&from=secret")).from.unwrap().as_str(), "secret");
        assert_eq!(proxy("POST", "/graphs/a/branches", Some("branch=dev")).from.unwrap().as_str(), "main", "from defaults to main");
        assert_eq!(proxy("POST", "/graphs/a/read", None).from, None);
        assert_eq!(parse("GET", "/graphs", None).unwrap(), Route::ListGraphs);
        assert_eq!(parse("POST", "/graphs", None).unwrap(), Route::CreateGraph);
        assert_eq!(parse("GET", "/graphs/a", None).unwrap().action(), Some(Action::GraphRead));
        assert_eq!(parse("DELETE", "/graphs/a", Some("purge=true")).unwrap(), Route::DeleteGraph { graph: GraphId::parse("a").unwrap(), purge: true });
        assert_eq!(parse("GET", "/healthz", None).unwrap().action(), None);
    }

    #[test]
    fn path_tricks_are_rejected() {
        for (p, q) in [
            ("/graphs/alpha/../beta/read", None),
            ("/graphs/alpha/%2e%2e/beta/read", None),
            ("/graphs/alpha%2Fbeta/read", None),
            ("/graphs/alpha%5cbeta/read", None),
            ("/graphs//alpha/read", None),
            ("/graphs/alpha//read", None),
            ("/graphs/Alpha/read", None),
            ("/graphs/alpha/read/", None),
            ("/graphs/alpha/read", Some("branch=a..b")),
            ("/graphs/alpha/read", Some("branch=main&branch=dev")),
            ("/graphs/alpha/read", Some("brnach=dev")),
            ("/graphs/alpha/branches/merge", Some("branch=dev")),
            ("/graphs/alpha/read", Some("branch=main/")),
            ("/graphs/alpha/read", Some("branch=a//b")),
            ("/graphs/alpha/read", Some("branch=a/./b")),
        ] {
            assert!(matches!(parse("POST", p, q), Err(RouteError::BadRequest(_))), "{p} {q:?}");
        }
        for p in ["/read", "/graphs/alpha/nope", "/graphs/alpha/commits/a/b", "/"] {
            assert_eq!(parse("POST", p, None).unwrap_err(), RouteError::NotFound, "{p}");
        }
        assert_eq!(parse("GET", "/graphs/alpha/read", None).unwrap_err(), RouteError::MethodNotAllowed);
    }

    #[test]
    fn only_a_branch_name_in_the_path_may_hold_an_encoded_slash() {
        let r = parse("DELETE", "/graphs/a/branches/feature%2Fx", None).unwrap();
        let Route::Proxy(p) = r else { panic!("a proxy route") };
        assert_eq!(p.branch.as_ref().map(|b| b.as_str()), Some("feature/x"));
        assert_eq!(p.worker_path, "/branches/feature%2Fx", "re-encoded: one segment at the worker");
        for (m, path) in [
            ("POST", "/graphs/a%2Fb/read"),
            ("GET", "/graphs/a/commits/x%2Fy"),
            ("GET", "/graphs/a%2Fb"),
            ("POST", "/policies%2Freload"),
            ("DELETE", "/graphs/a/branches%2Fmain"),
            ("DELETE", "/graphs/a/branches/feature%5Cx"),
        ] {
            assert!(matches!(parse(m, path, None), Err(RouteError::BadRequest(_))), "{m} {path}");
        }
    }

    #[test]
    fn query_values_are_re_encoded() {
        let r = proxy("POST", "/graphs/a/read", Some("commit=01%41B"));
        assert_eq!(r.worker_path, "/read?commit=01AB");
        let r = proxy("GET", "/graphs/a/commits/x%20y", None);
        assert_eq!(r.worker_path, "/commits/x%20y");
    }
}
