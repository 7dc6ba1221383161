//! What Cedar is asked for a request: the resource, the context and the
//! policy set. One function builds the context for live requests and for
//! `policy explain`, so the two can never disagree.

use omnigraph_contract::routes::{BranchFrom, WORKER_ROUTES};
use omnigraph_contract::{BranchName, ResolvedActor};

use crate::app::AppState;
use crate::authz::{Decision, RequestContext, Resource};
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

/// Decides a route for `actor`. A graph action on a graph that does not
/// exist is decided by the server policies alone, so a caller learns that a
/// graph is missing only if they would be allowed to use it.
pub fn decide(st: &AppState, actor: &ResolvedActor, action: Action, route: &Route, entry: Option<&GraphEntry>, requested: &Requested) -> Decision {
    let graph = match route.graph() {
        Some(g) if !action.is_server_action() => g,
        _ => return st.engine.decide(&st.server_sets.load(), actor, action, Resource::Server, &server_context(requested)),
    };
    let ctx = graph_context(Branches::of(route), |b| entry.is_some_and(|e| e.is_protected(b)));
    match entry {
        Some(e) => decide_on(st, actor, action, e, &ctx),
        None => st.engine.decide(&st.server_sets.load(), actor, action, Resource::Graph { id: graph.as_str(), tenant: None }, &ctx),
    }
}

/// The branch whose data a route copies into another: the `from` of a
/// `branch_create`, the source of a `branch_merge`. Copying a branch is
/// reading it, so such a request also needs `read` on that branch
/// (see [`decide_source_read`]); otherwise a caller could branch from or
/// merge out of a branch they may not read and then read the copy.
pub fn copied_branch(action: Action, route: &Route) -> Option<&BranchName> {
    let Route::Proxy(p) = route else { return None };
    match action {
        Action::BranchCreate => p.from.as_ref(),
        Action::BranchMerge => p.branch.as_ref(),
        _ => None,
    }
}

/// `read` on the branch a request copies, decided like any read of it.
pub fn decide_source_read(st: &AppState, actor: &ResolvedActor, source: &BranchName, entry: Option<&GraphEntry>, graph: &omnigraph_contract::GraphId) -> Decision {
    let b = Branches { branch: Some(source), ..Branches::default() };
    let ctx = graph_context(b, |b| entry.is_some_and(|e| e.is_protected(b)));
    match entry {
        Some(e) => decide_on(st, actor, Action::Read, e, &ctx),
        None => st.engine.decide(&st.server_sets.load(), actor, Action::Read, Resource::Graph { id: graph.as_str(), tenant: None }, &ctx),
    }
}

/// Decides a graph action on a graph that exists, with its own policies.
pub fn decide_on(st: &AppState, actor: &ResolvedActor, action: Action, e: &GraphEntry, ctx: &RequestContext<'_>) -> Decision {
    st.engine.decide(&e.policies.load(), actor, action, Resource::Graph { id: e.id.as_str(), tenant: e.tenant.as_deref() }, ctx)
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
        let create = route("POST", "/graphs/g/branches", "branch=x&from=secret");
        assert_eq!(copied_branch(Action::BranchCreate, &create).map(BranchName::as_str), Some("secret"));
        let create_main = route("POST", "/graphs/g/branches", "branch=x");
        assert_eq!(copied_branch(Action::BranchCreate, &create_main).map(BranchName::as_str), Some("main"));
        let merge = route("POST", "/graphs/g/branches/merge", "branch=secret&target=main");
        assert_eq!(copied_branch(Action::BranchMerge, &merge).map(BranchName::as_str), Some("secret"));
        let change = route("POST", "/graphs/g/change", "branch=dev");
        assert_eq!(copied_branch(Action::Change, &change), None);
    }
}
