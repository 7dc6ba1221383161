//! Fuzz target: the gateway's path router and normaliser (`route::parse`).
//!
//! Short form: `cargo test -p omnigraph-gateway --test fuzz_route` runs the
//! corpus in `tests/__fuzz__/fuzz_route__<target>/corpus/` and then random
//! inputs for a bounded time. Long form (libFuzzer):
//! `cargo bolero test -p omnigraph-gateway --test fuzz_route <target> --profile dev -T 60s`.
//!
//! Properties, for any method, path and query:
//! - `parse` never panics; it answers a route or a typed `RouteError`;
//! - a route that names a graph names the graph of the path's first segment
//!   after `/graphs/` (percent-decoded), never another one;
//! - an accepted path has no empty segment and no segment that decodes to
//!   `.`, `..`, or holds `/`, `\` or NUL (so `..`, encoded slashes and dot
//!   segments are never ids, nor anywhere else in a forwarded path);
//! - the forwarded worker path is canonical: it starts with `/`, holds only
//!   unreserved characters, `%XX`, and the separators `/ ? & =`, and routing
//!   `/graphs/{id}` + that path again gives the same route (what the worker
//!   sees is exactly what Cedar authorized);
//! - a branch, target or base that Cedar sees is a valid `BranchName`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bolero::check;
use omnigraph_contract::{BranchName, GraphId};
use omnigraph_gateway::route::{self, Route, RouteError};
use percent_encoding::percent_decode_str;

const SHORT: Duration = Duration::from_millis(2500);
const METHODS: &[&str] = &["GET", "POST", "DELETE", "PUT", "PATCH", "HEAD", "OPTIONS", "get", ""];

fn decode(seg: &str) -> Option<String> {
    percent_decode_str(seg).decode_utf8().ok().map(|c| c.into_owned())
}

/// The properties for one request line.
fn one(method: &str, path: &str, query: Option<&str>) {
    let r = route::parse(method, path, query);
    let Ok(route) = r else {
        // Typed errors only; a bad request carries a message.
        if let Err(RouteError::BadRequest(m)) = &r {
            assert!(!m.is_empty());
        }
        return;
    };
    let rest = path.strip_prefix('/').expect("an accepted path starts with '/'");
    let raw: Vec<&str> = if rest.is_empty() { Vec::new() } else { rest.split('/').collect() };
    // Only the branch name of `DELETE /graphs/{id}/branches/{name}` may hold an encoded '/'.
    let branch_in_path = matches!(&route, Route::Proxy(p) if p.action == omnigraph_gateway::route::Action::BranchDelete);
    for (i, seg) in raw.iter().enumerate() {
        assert!(!seg.is_empty(), "{path}: empty segment accepted");
        let d = decode(seg).unwrap_or_else(|| panic!("{path}: a non-UTF-8 segment was accepted"));
        assert!(d != "." && d != "..", "{path}: dot segment accepted");
        assert!(!d.contains(['\\', '\0']), "{path}: encoded '\\' or NUL accepted");
        assert!(!d.contains('/') || (branch_in_path && i == raw.len() - 1), "{path}: encoded '/' accepted outside a branch name");
    }
    if let Some(g) = route.graph() {
        assert_eq!(raw.first().copied(), Some("graphs"), "{path}: a graph route outside /graphs/");
        let first = decode(raw[1]).expect("checked above");
        assert_eq!(g.as_str(), first, "{path}: routed to graph {g}, not to the path's first segment");
        assert_eq!(GraphId::parse(&first).as_ref(), Ok(g));
    }
    let Route::Proxy(p) = &route else { return };
    for b in [&p.branch, &p.target, &p.from].into_iter().flatten() {
        assert!(BranchName::parse(b.as_str()).is_ok(), "{path}: invalid branch {b} reached Cedar");
    }
    let wp = &p.worker_path;
    assert!(wp.starts_with('/') && !wp.contains("//"), "{wp}");
    assert!(
        wp.bytes().all(|c| c.is_ascii_alphanumeric() || b"-_.~%/?&=".contains(&c)),
        "{path}: worker path {wp:?} holds a raw reserved character"
    );
    let (wpath, wquery) = match wp.split_once('?') {
        Some((a, b)) => (a, Some(b)),
        None => (wp.as_str(), None),
    };
    for seg in wpath[1..].split('/') {
        let d = decode(seg).expect("the worker path is UTF-8");
        assert!(d != "." && d != "..", "{wp}: dot segment forwarded");
    }
    let again = route::parse(method, &format!("/graphs/{}{wpath}", p.graph), wquery)
        .unwrap_or_else(|e| panic!("{method} {path}?{query:?} forwards {wp}, which does not route again: {e}"));
    assert_eq!(again, route, "{method} {path}?{query:?}: re-routing the forwarded path changed the route");
}

fn report(name: &str, n: &AtomicU64, t: Instant) {
    eprintln!("fuzz {name}: {} executions in {:.1} s", n.load(Ordering::Relaxed), t.elapsed().as_secs_f64());
}

/// Arbitrary bytes: a method byte, then path and query split at the first `?`.
#[test]
fn route_bytes() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_test_time(SHORT).for_each(|bytes: &[u8]| {
        n.fetch_add(1, Ordering::Relaxed);
        let Some((m, rest)) = bytes.split_first() else { return };
        let line = String::from_utf8_lossy(rest);
        let method = METHODS[*m as usize % METHODS.len()];
        match line.split_once('?') {
            Some((p, q)) => one(method, p, Some(q)),
            None => one(method, &line, None),
        }
    });
    report("route_bytes", &n, t);
}

const SEGMENTS: &[&str] = &[
    "graphs", "graphs", "graphs", "alpha", "beta", "a", "0", "read", "change", "ingest", "export", "snapshot", "schema", "apply", "branches",
    "merge", "commits", "01ABC", "healthz", "readyz", "metrics", "policies", "reload", "dev", "main", "..", ".", "%2e%2e", "%2E", ".%2e", "%2F",
    "%2f", "%5c", "%5C", "%00", "", "a%2Fb", "alpha%2Fbeta", "%61lpha", "Alpha", "ALPHA", "é", "%C3%A9", "%ff", "%", "%2", "a b", "a+b", "~",
    "feature", "x%20y", "-a", "openapi.json",
];
const KEYS: &[&str] = &["branch", "target", "from", "commit", "if_commit", "dry_run", "allow_data_loss", "purge", "brnach", "", "branch%00"];
const VALUES: &[&str] = &[
    "main", "dev", "feature/x", "feature%2Fx", "a..b", "a/./b", "main/", "a//b", "", "%2e%2e", "true", "false", "x y", "x+y", "%ff", "ü",
    "01%41B", "A_b", ".hidden", "-x", "v1.2", "a%26b%3Dc",
];

/// Structure-aware: paths built from route words and nasty segments, and
/// queries from the keys the routes take plus junk.
#[test]
fn route_structured() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_type::<(u8, Vec<u8>, Vec<(u8, u8)>, bool)>().with_test_time(SHORT).for_each(|(m, segs, pairs, slash): &(u8, Vec<u8>, Vec<(u8, u8)>, bool)| {
        n.fetch_add(1, Ordering::Relaxed);
        let mut path: String = segs.iter().map(|s| format!("/{}", SEGMENTS[*s as usize % SEGMENTS.len()])).collect();
        if path.is_empty() || *slash {
            path.push('/');
        }
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", KEYS[*k as usize % KEYS.len()], VALUES[*v as usize % VALUES.len()])).collect();
        let query = query.join("&");
        one(METHODS[*m as usize % METHODS.len()], &path, (!query.is_empty()).then_some(query.as_str()));
    });
    report("route_structured", &n, t);
}

/// Inputs that sit on an edge of the router, pinned by name.
#[test]
fn regression_route_edges() {
    for (m, p, q) in [
        ("POST", "/graphs/alpha/%2e%2e/beta/read", None),
        ("POST", "/graphs/%61lpha/read", None),
        ("GET", "/graphs/alpha/commits/%2e", None),
        ("GET", "/graphs/alpha/commits/.%2e", None),
        ("DELETE", "/graphs/alpha/branches/%2E%2E", None),
        ("DELETE", "/graphs/alpha/branches/feature%2Fx", None),
        ("POST", "/graphs/alpha/read", Some("branch=feature%2Fx&commit=%2e%2e")),
        ("POST", "/graphs/alpha/read", Some("&&branch=dev&&")),
        ("POST", "/graphs/alpha/read", Some("branch")),
        ("GET", "/graphs/alpha", Some("purge=true")),
        ("DELETE", "/graphs/alpha", Some("purge=maybe")),
        ("GET", "/graphs/alpha/commits/x%2By", Some("branch=a+b")),
        ("POST", "/graphs/alpha/branches", Some("branch=dev&from=%2e%2e")),
        ("GET", "", None),
        ("GET", "//", None),
    ] {
        one(m, p, q);
    }
}
