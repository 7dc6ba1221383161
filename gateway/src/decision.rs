//! What Cedar is asked for a request: the resource, the context and the
//! policy set. One function ([`decide_with`]) decides live requests,
//! `policy explain` and `policy test`, so they can never disagree.

use omnigraph_contract::routes::{BranchFrom, WORKER_ROUTES};
use omnigraph_contract::{BranchName, ResolvedActor};

use crate::app::AppState;
use crate::authz::{ActionSets, Decision, Engine, RequestContext, Resource};
use crate::lifecycle::Requested;
use crate::registry::GraphEntry;
use crate::route::{Action, Route};

/// The branches a graph request names, already validated and defaulted by
/// the route table (`?branch=` absent means `main` where the route takes one).
#[derive(Debug, Default, Clone, Copy)]
pub struct Branches<'a> {
    pub branch: Option<&'a BranchName>,
    pub target: Option<&'a BranchName>,
    pub from: Option<&'a BranchName>,
}

impl<'a> Branches<'a> {
    pub fn of(route: &'a Route) -> Branches<'a> {
        match route {
            Route::Proxy(p) => Branches { branch: p.branch.as_ref(), target: p.target.as_ref(), from: p.from.as_ref() },
            _ => Branches::default(),
        }
    }
}

/// The Cedar context of a graph action: each named branch and whether the
/// graph protects it.
pub fn graph_context<'a>(b: Branches<'a>, is_protected: impl Fn(&BranchName) -> bool) -> RequestContext<'a> {
    RequestContext {
        branch: b.branch.map(BranchName::as_str),
        branch_protected: b.branch.map(&is_protected),
        target_branch: b.target.map(BranchName::as_str),
        target_protected: b.target.map(&is_protected),
        from_branch: b.from.map(BranchName::as_str),
        from_protected: b.from.map(&is_protected),
        ..Default::default()
    }
}

/// The Cedar context of a server action (`graph_create` carries what it asks for).
pub fn server_context(requested: &Requested) -> RequestContext<'_> {
    RequestContext { requested_graph: requested.graph.as_deref(), requested_tenant: requested.tenant.as_deref(), ..Default::default() }
}

/// Whether an action's routes act on a branch that defaults to `main`, for
/// `policy explain`, which is given an action rather than a route.
pub fn defaults_to_main(action: Action) -> bool {
    WORKER_ROUTES.iter().any(|r| r.action == action && r.branch == BranchFrom::Query)
}

/// A graph as the policies see it: its id and tenant, its compiled policy
/// sets (the server's and its own), and which branches it protects.
pub struct GraphPolicies<'a> {
    pub id: &'a str,
    pub tenant: Option<&'a str>,
    pub sets: &'a ActionSets,
    pub protected: &'a dyn Fn(&BranchName) -> bool,
}

/// The answer to a request: the decision, and the question that decided it.
pub struct Verdict {
    pub decision: Decision,
    /// The request's own action, or `read` when the read of a copied branch denied it.
    pub action: Action,
    /// The branch whose `read` denied the request (see [`copied_branch`]).
    pub copied: Option<BranchName>,
}

/// The branch whose data a request copies into another: the `from` of a
/// `branch_create`, the source of a `branch_merge`. Copying a branch is
/// reading it, so such a request also needs `read` on that branch;
/// otherwise a caller could branch from or merge out of a branch they may
/// not read and then read the copy.
pub fn copied_branch<'a>(action: Action, b: Branches<'a>) -> Option<&'a BranchName> {
    match action {
        Action::BranchCreate => b.from,
        Action::BranchMerge => b.branch,
        _ => None,
    }
}

/// Decides a request. This is the one decision function: live requests,
/// `policy explain` and `policy test` all come here.
///
/// A server action is decided by the server policies alone. A graph action
/// on a graph that exists is decided by its `graph` policies; on one that
/// does not (`graph` is `None`), by the server policies alone, so a caller
/// learns that a graph is missing only if they would be allowed to use it.
pub fn decide_with(
    engine: &Engine,
    server: &ActionSets,
    graph: Option<&GraphPolicies<'_>>,
    graph_id: Option<&str>,
    actor: &ResolvedActor,
    action: Action,
    branches: Branches<'_>,
    requested: &Requested,
) -> Verdict {
    let Some(id) = graph_id.filter(|_| !action.is_server_action()) else {
        let decision = engine.decide(server, actor, action, Resource::Server, &server_context(requested));
        return Verdict { decision, action, copied: None };
    };
    let ask = |action: Action, branches: Branches<'_>| {
        let ctx = graph_context(branches, |b| graph.is_some_and(|g| (g.protected)(b)));
        match graph {
            Some(g) => engine.decide(g.sets, actor, action, Resource::Graph { id: g.id, tenant: g.tenant }, &ctx),
            None => engine.decide(server, actor, action, Resource::Graph { id, tenant: None }, &ctx),
        }
    };
    let decision = ask(action, branches);
    if let (true, Some(src)) = (decision.allowed, copied_branch(action, branches)) {
        let read = ask(Action::Read, Branches { branch: Some(src), ..Branches::default() });
        if !read.allowed {
            return Verdict { decision: read, action: Action::Read, copied: Some(src.clone()) };
        }
    }
    Verdict { decision, action, copied: None }
}

/// Decides a live request against the gateway's current policies.
pub fn decide(st: &AppState, actor: &ResolvedActor, action: Action, route: &Route, entry: Option<&GraphEntry>, requested: &Requested) -> Verdict {
    decide_entry(st, actor, action, route.graph().map(|g| g.as_str()), entry, Branches::of(route), requested)
}

/// The same request decided by the shadow set (shadow.rs): the graph's
/// candidate policies when the shadow set has them, the candidate server
/// policies otherwise.
pub fn decide_shadow(st: &AppState, shadow: &crate::shadow::Shadow, actor: &ResolvedActor, action: Action, route: &Route, entry: Option<&GraphEntry>, requested: &Requested) -> Verdict {
    let protected = |b: &BranchName| entry.is_some_and(|e| e.is_protected(b));
    let graph = entry.and_then(|e| shadow.graphs.get(e.id.as_str()).map(|sets| GraphPolicies { id: e.id.as_str(), tenant: e.tenant.as_deref(), sets, protected: &protected }));
    decide_with(&st.engine, &shadow.server, graph.as_ref(), route.graph().map(|g| g.as_str()), actor, action, Branches::of(route), requested)
}

/// [`decide`] for a graph named by id (`GET /graphs` asks it of each graph).
pub fn decide_entry(st: &AppState, actor: &ResolvedActor, action: Action, graph_id: Option<&str>, entry: Option<&GraphEntry>, branches: Branches<'_>, requested: &Requested) -> Verdict {
    let sets = entry.map(|e| e.policies.load());
    let protected = |b: &BranchName| entry.is_some_and(|e| e.is_protected(b));
    let graph = entry.zip(sets.as_ref()).map(|(e, sets)| GraphPolicies { id: e.id.as_str(), tenant: e.tenant.as_deref(), sets: sets.as_ref(), protected: &protected });
    decide_with(&st.engine, &st.server_sets.load(), graph.as_ref(), graph_id, actor, action, branches, requested)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_less_actions_get_no_default_branch() {
        assert!(defaults_to_main(Action::Change) && defaults_to_main(Action::Read) && defaults_to_main(Action::Export));
        assert!(!defaults_to_main(Action::GraphRead) && !defaults_to_main(Action::BranchDelete) && !defaults_to_main(Action::BranchCreate));
    }

    #[test]
    fn the_context_names_each_branch_and_its_protection() {
        let (main, dev) = (BranchName::main(), BranchName::parse("dev").unwrap());
        let ctx = graph_context(Branches { branch: Some(&dev), target: Some(&main), from: Some(&main) }, |b| b.as_str() == "main");
        assert_eq!((ctx.branch, ctx.branch_protected), (Some("dev"), Some(false)));
        assert_eq!((ctx.target_branch, ctx.target_protected), (Some("main"), Some(true)));
        assert_eq!((ctx.from_branch, ctx.from_protected), (Some("main"), Some(true)));
        let none = graph_context(Branches::default(), |_| true);
        assert!(none.branch.is_none() && none.branch_protected.is_none());
    }

    #[test]
    fn a_branch_copy_names_the_branch_it_reads() {
        let route = |m: &str, p: &str, q: &str| crate::route::parse(m, p, Some(q)).unwrap();
        let copied = |a: Action, r: &Route| copied_branch(a, Branches::of(r)).map(|b| b.as_str().to_string());
        assert_eq!(copied(Action::BranchCreate, &route("POST", "/graphs/g/branches", "branch=x&from=secret")).as_deref(), Some("secret"));
        assert_eq!(copied(Action::BranchCreate, &route("POST", "/graphs/g/branches", "branch=x")).as_deref(), Some("main"));
        assert_eq!(copied(Action::BranchMerge, &route("POST", "/graphs/g/branches/merge", "branch=secret&target=main")).as_deref(), Some("secret"));
        assert_eq!(copied(Action::Change, &route("POST", "/graphs/g/change", "branch=dev")), None);
    }
}
