//! Property tests of the gateway's router on graph ids and branch names.
//!
//! - The gateway accepts exactly the graph ids and branch names of the
//!   shared grammar (`contract/tests/prop_ids.rs`, which the worker's test
//!   checks the worker against too), in every place a request line carries
//!   one: the graph segment, `?branch=`, `?target=`, `?from=` and the path of
//!   `DELETE /branches/{name}`; and what it forwards decodes, the way the
//!   worker decodes a query (`form_urlencoded`, as axum's `Query`), to the
//!   very name Cedar saw.
//! - The router never maps a path onto a graph other than the one its first
//!   segment after `/graphs/` names, whatever follows (other ids, `..`,
//!   encoded slashes and dots).
//!
//! Cases: `PROPTEST_CASES` (default 512).

#[path = "../../contract/tests/prop_ids.rs"]
mod ids;

use ids::grammar::{self, branch_ok, graph_id_ok};
use omnigraph_gateway::route::{self, Route};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use proptest::prelude::*;

fn enc(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

/// The query of the forwarded path, decoded as the worker decodes it.
fn worker_query(worker_path: &str) -> Vec<(String, String)> {
    let q = worker_path.split_once('?').map_or("", |(_, q)| q);
    form_urlencoded::parse(q.as_bytes()).into_owned().collect()
}

fn worker_value(worker_path: &str, key: &str) -> Option<String> {
    worker_query(worker_path).into_iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn proxy(method: &str, path: &str, query: &str) -> Option<route::ProxyRoute> {
    match route::parse(method, path, Some(query)) {
        Ok(Route::Proxy(p)) => Some(p),
        Ok(other) => panic!("{method} {path}?{query}: not a proxy route: {other:?}"),
        Err(_) => None,
    }
}

/// Every place a name can sit in a request line, for one candidate `s`.
fn agree(s: &str) {
    let ok = branch_ok(s);
    // ?branch= on a read, both percent-encoded and (when it can be) raw.
    let spellings = [Some(enc(s)), (!s.contains(['%', '&', '=', '+', '#', ' ']) && s.is_ascii()).then(|| s.to_string())];
    for e in spellings.into_iter().flatten() {
        let r = proxy("GET", "/graphs/g/snapshot", &format!("branch={e}"));
        assert_eq!(r.is_some(), ok, "?branch={e} (from {s:?})");
        if let Some(p) = r {
            assert_eq!(p.branch.as_ref().map(|b| b.as_str()), Some(s));
            assert_eq!(worker_value(&p.worker_path, "branch").as_deref(), Some(s), "the worker reads another branch than Cedar saw");
        }
    }
    // ?target= of a merge and ?from= of a new branch.
    let r = proxy("POST", "/graphs/g/branches/merge", &format!("branch=dev&target={}", enc(s)));
    assert_eq!(r.is_some(), ok, "?target={s:?}");
    if let Some(p) = r {
        assert_eq!(p.target.as_ref().map(|b| b.as_str()), Some(s));
        assert_eq!(worker_value(&p.worker_path, "target").as_deref(), Some(s));
    }
    let r = proxy("POST", "/graphs/g/branches", &format!("branch=dev&from={}", enc(s)));
    assert_eq!(r.is_some(), ok, "?from={s:?}");
    if let Some(p) = r {
        assert_eq!(p.from.as_ref().map(|b| b.as_str()), Some(s));
        assert_eq!(worker_value(&p.worker_path, "from").as_deref(), Some(s));
    }
    // DELETE /branches/{name}: the name is one path segment, where an
    // encoded '/' is allowed (and re-encoded for the worker), so exactly the
    // names the query takes — the worker agrees: worker/tests/model_change.rs.
    let r = route::parse("DELETE", &format!("/graphs/g/branches/{}", enc(s)), None);
    assert_eq!(r.is_ok(), ok, "DELETE /branches/{s:?}: {r:?}");
    if let Ok(Route::Proxy(p)) = r {
        assert_eq!(p.branch.as_ref().map(|b| b.as_str()), Some(s));
        assert_eq!(p.worker_path, format!("/branches/{}", utf8_percent_encode(s, &SAFE)));
    }
    // The graph segment.
    let r = route::parse("GET", &format!("/graphs/{}/healthz", enc(s)), None);
    assert_eq!(r.is_ok(), graph_id_ok(s), "graph id {s:?}: {r:?}");
    if let Ok(r) = r {
        assert_eq!(r.graph().map(|g| g.as_str()), Some(s));
    }
    let r = route::parse("GET", &format!("/graphs/{}", enc(s)), None);
    assert_eq!(r.is_ok(), graph_id_ok(s), "GET /graphs/{s:?}");
}

/// The characters the router leaves unescaped (RFC 3986 unreserved).
const SAFE: percent_encoding::AsciiSet = NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

#[test]
fn names_on_the_edges_of_the_grammar() {
    for s in grammar::edge_cases() {
        agree(&s);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: grammar::cases(512), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn the_gateway_accepts_exactly_the_grammar(s in grammar::candidate()) {
        agree(&s);
    }

    /// `/graphs/{id}/` then anything: other graph ids, `..` and its
    /// spellings, encoded slashes, route words. Accepted or not, the route
    /// never names a graph but `id`.
    #[test]
    fn the_router_keeps_the_first_segment_graph(
        id in prop_oneof![3 => "[a-z0-9][a-z0-9-]{0,8}", 1 => grammar::candidate()],
        rest in prop::collection::vec(prop_oneof![
            Just("..".to_string()), Just("%2e%2e".to_string()), Just(".%2E".to_string()), Just(".".to_string()),
            Just("%2F".to_string()), Just("beta%2Fread".to_string()), Just("%5c".to_string()), Just(String::new()),
            Just("graphs".to_string()), Just("beta".to_string()), Just("read".to_string()), Just("branches".to_string()),
            Just("merge".to_string()), Just("commits".to_string()), Just("healthz".to_string()), "[a-z%0-9.]{1,6}",
        ], 0..5),
        method in prop::sample::select(vec!["GET", "POST", "DELETE", "PUT"]),
        encode in any::<bool>(),
    ) {
        let seg = if encode { enc(&id) } else { id.clone() };
        let path = format!("/graphs/{seg}/{}", rest.join("/"));
        if let Ok(r) = route::parse(method, &path, None) {
            let g = r.graph().expect("a route under /graphs/{id}/ names its graph");
            prop_assert_eq!(g.as_str(), id.as_str(), "{} {} routed to another graph", method, path);
            if let Route::Proxy(p) = &r {
                prop_assert!(!p.worker_path.split(['/', '?']).any(|s| s == ".." || s == "."), "{}", p.worker_path);
            }
        }
    }
}
