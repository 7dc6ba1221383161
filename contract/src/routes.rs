//! The one route table (DESIGN.md sections 4 and 5): every worker route once,
//! with its method, path, Cedar action, the query keys it takes and where its
//! branch comes from; and the gateway's own management routes. The gateway's
//! router, the worker's router and `openapi.json` are all derived from it, so
//! a route added here is authorized, served and documented together.

/// Every Cedar action, named as in `policies/omnigraph.cedarschema`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    GraphList,
    GraphCreate,
    PolicyReload,
    MetricsRead,
    GraphRead,
    GraphDelete,
    Read,
    Export,
    Change,
    SchemaApply,
    BranchCreate,
    BranchDelete,
    BranchMerge,
    Maintain,
}

impl Action {
    pub const ALL: [Action; 14] = [
        Action::GraphList,
        Action::GraphCreate,
        Action::PolicyReload,
        Action::MetricsRead,
        Action::GraphRead,
        Action::GraphDelete,
        Action::Read,
        Action::Export,
        Action::Change,
        Action::SchemaApply,
        Action::BranchCreate,
        Action::BranchDelete,
        Action::BranchMerge,
        Action::Maintain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Action::GraphList => "graph_list",
            Action::GraphCreate => "graph_create",
            Action::PolicyReload => "policy_reload",
            Action::MetricsRead => "metrics_read",
            Action::GraphRead => "graph_read",
            Action::GraphDelete => "graph_delete",
            Action::Read => "read",
            Action::Export => "export",
            Action::Change => "change",
            Action::SchemaApply => "schema_apply",
            Action::BranchCreate => "branch_create",
            Action::BranchDelete => "branch_delete",
            Action::BranchMerge => "branch_merge",
            Action::Maintain => "maintain",
        }
    }

    pub fn from_name(s: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == s)
    }

    /// Server actions apply to `Server::"root"` and are decided by the server policies alone.
    pub fn is_server_action(self) -> bool {
        matches!(self, Action::GraphList | Action::GraphCreate | Action::PolicyReload | Action::MetricsRead)
    }
}

/// Where a worker route's branch comes from, for Cedar and for the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchFrom {
    /// `?branch=`, defaulting to `main`.
    Query,
    /// `?branch=` is required (the new branch, the merge source).
    QueryRequired,
    /// The last path segment (`DELETE /branches/{name}`).
    Path,
    /// The route acts on no branch.
    None,
}

/// What a request or response body holds, for `openapi.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Json,
    /// `.pg` schema text.
    Text,
    /// Newline-delimited JSON.
    Ndjson,
}

impl Body {
    pub fn media_type(self) -> Option<&'static str> {
        match self {
            Body::None => None,
            Body::Json => Some("application/json"),
            Body::Text => Some("text/plain"),
            Body::Ndjson => Some("application/x-ndjson"),
        }
    }
}

/// Names a worker route, so each binary can attach its own handling with an
/// exhaustive `match`: a route added to the table does not compile until
/// the worker serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RouteId {
    Healthz,
    Schema,
    SchemaApply,
    Snapshot,
    Read,
    Change,
    Ingest,
    Export,
    ListBranches,
    MergeBranches,
    CreateBranch,
    DeleteBranch,
    ListCommits,
    GetCommit,
    Maintenance,
}

/// One worker route.
#[derive(Debug, Clone, Copy)]
pub struct WorkerRoute {
    pub id: RouteId,
    pub method: &'static str,
    /// The path as axum writes it: `/branches/{name}`.
    pub pattern: &'static str,
    pub action: Action,
    pub branch: BranchFrom,
    /// Every query key the route takes; any other is 400 at both processes.
    pub params: &'static [&'static str],
    /// A short, bounded label for logs and metrics: `POST /read`.
    pub label: &'static str,
    pub summary: &'static str,
    pub request: Body,
    pub response: Body,
}

impl WorkerRoute {
    /// The path's segments; a `{name}` segment matches any one segment.
    pub fn segments(&self) -> impl Iterator<Item = &'static str> {
        self.pattern.trim_start_matches('/').split('/')
    }

    /// True when `segs` (a decoded path) fits this route's pattern.
    pub fn matches(&self, segs: &[&str]) -> bool {
        let mut n = 0;
        for (p, s) in self.segments().zip(segs) {
            if !(p.starts_with('{') || p == *s) {
                return false;
            }
            n += 1;
        }
        n == segs.len() && n == self.segments().count()
    }

    pub fn takes(&self, key: &str) -> bool {
        self.params.contains(&key)
    }
}

const fn route(
    id: RouteId,
    method: &'static str,
    pattern: &'static str,
    action: Action,
    branch: BranchFrom,
    params: &'static [&'static str],
    label: &'static str,
    summary: &'static str,
    request: Body,
    response: Body,
) -> WorkerRoute {
    WorkerRoute { id, method, pattern, action, branch, params, label, summary, request, response }
}

use Action as A;
use BranchFrom as B;
use Body as Y;

/// Every worker route (DESIGN.md section 5). A literal segment is listed
/// before a `{name}` one at the same place, and matching takes the first
/// row that fits, so `POST /branches/merge` is never `/branches/{name}`.
pub const WORKER_ROUTES: &[WorkerRoute] = &[
    route(RouteId::Healthz, "GET", "/healthz", A::GraphRead, B::None, &[], "GET /healthz", "The worker's health: {status, graph_id, version}.", Y::None, Y::Json),
    route(RouteId::Schema, "GET", "/schema", A::Read, B::Query, &["branch", "commit"], "GET /schema", "The .pg schema source of the branch head, or of ?commit= on it.", Y::None, Y::Text),
    route(RouteId::SchemaApply, "POST", "/schema/apply", A::SchemaApply, B::Query, &["branch", "dry_run", "allow_data_loss", "if_commit"], "POST /schema/apply", "Apply a new .pg schema to the branch as one commit: new types and optional properties; drops need allow_data_loss=true.", Y::Text, Y::Json),
    route(RouteId::Snapshot, "GET", "/snapshot", A::Read, B::Query, &["branch"], "GET /snapshot", "The branch head: {branch, commit_id, tables}.", Y::None, Y::Json),
    route(RouteId::Read, "POST", "/read", A::Read, B::Query, &["branch", "commit"], "POST /read", "Run a read query.", Y::Json, Y::Json),
    route(RouteId::Change, "POST", "/change", A::Change, B::Query, &["branch", "if_commit"], "POST /change", "Apply a batch of ops as one commit.", Y::Json, Y::Json),
    route(RouteId::Ingest, "POST", "/ingest", A::Change, B::Query, &["branch", "if_commit"], "POST /ingest", "Bulk-load NDJSON nodes and edges as one commit.", Y::Ndjson, Y::Json),
    route(RouteId::Export, "POST", "/export", A::Export, B::Query, &["branch", "commit"], "POST /export", "Stream every node and edge as NDJSON.", Y::None, Y::Ndjson),
    route(RouteId::ListBranches, "GET", "/branches", A::Read, B::None, &[], "GET /branches", "The branches and their heads.", Y::None, Y::Json),
    route(RouteId::MergeBranches, "POST", "/branches/merge", A::BranchMerge, B::QueryRequired, &["branch", "target", "dry_run"], "POST /branches/merge", "Merge ?branch= into ?target=.", Y::None, Y::Json),
    route(RouteId::CreateBranch, "POST", "/branches", A::BranchCreate, B::QueryRequired, &["branch", "from"], "POST /branches", "Create ?branch= from ?from= (default main).", Y::None, Y::Json),
    route(RouteId::DeleteBranch, "DELETE", "/branches/{name}", A::BranchDelete, B::Path, &[], "DELETE /branches/{name}", "Delete a branch.", Y::None, Y::Json),
    route(RouteId::ListCommits, "GET", "/commits", A::Read, B::Query, &["branch"], "GET /commits", "The branch's commits, newest first.", Y::None, Y::Json),
    route(RouteId::GetCommit, "GET", "/commits/{id}", A::Read, B::Query, &["branch"], "GET /commits/{id}", "One commit on the branch.", Y::None, Y::Json),
    route(RouteId::Maintenance, "POST", "/maintenance", A::Maintain, B::None, &[], "POST /maintenance", "Compact small fragments and remove table versions no retained commit pins, now: {compacted_fragments, removed_versions, bytes_freed}.", Y::None, Y::Json),
];

/// The table row of `id`.
pub fn worker_route(id: RouteId) -> &'static WorkerRoute {
    // Every id has exactly one row (a unit test pins it).
    WORKER_ROUTES.iter().find(|r| r.id == id).unwrap_or(&WORKER_ROUTES[0])
}

/// The first worker route that fits `method` and the decoded path `segs`:
/// `Ok`, or `Err(true)` when the path exists under another method (405),
/// `Err(false)` when it does not (404).
pub fn find_worker_route(method: &str, segs: &[&str]) -> Result<&'static WorkerRoute, bool> {
    let mut path_exists = false;
    for r in WORKER_ROUTES.iter().filter(|r| r.matches(segs)) {
        if r.method == method {
            return Ok(r);
        }
        path_exists = true;
    }
    Err(path_exists)
}

/// A route the gateway answers itself.
#[derive(Debug, Clone, Copy)]
pub struct GatewayRoute {
    pub method: &'static str,
    pub pattern: &'static str,
    /// `None` for public routes.
    pub action: Option<Action>,
    pub params: &'static [&'static str],
    pub summary: &'static str,
    pub request: Body,
    pub response: Body,
}

const fn admin(method: &'static str, pattern: &'static str, action: Option<Action>, params: &'static [&'static str], summary: &'static str, request: Body, response: Body) -> GatewayRoute {
    GatewayRoute { method, pattern, action, params, summary, request, response }
}

/// The gateway's own routes (DESIGN.md section 2).
pub const GATEWAY_ROUTES: &[GatewayRoute] = &[
    admin("GET", "/healthz", None, &[], "The gateway is alive.", Y::None, Y::Json),
    admin("GET", "/readyz", None, &[], "Every graph is up or has failed: {status}.", Y::None, Y::Json),
    admin("GET", "/metrics", Some(A::MetricsRead), &[], "Prometheus metrics.", Y::None, Y::Text),
    admin("GET", "/openapi.json", None, &[], "This description.", Y::None, Y::Json),
    admin("GET", "/graphs", Some(A::GraphList), &[], "The graphs the caller may read.", Y::None, Y::Json),
    admin("POST", "/graphs", Some(A::GraphCreate), &[], "Create a graph.", Y::Json, Y::Json),
    admin("GET", "/graphs/{graph_id}", Some(A::GraphRead), &[], "One graph and its worker's state.", Y::None, Y::Json),
    admin("DELETE", "/graphs/{graph_id}", Some(A::GraphDelete), &["purge"], "Remove a graph (and with purge=true its data).", Y::None, Y::Json),
    admin("POST", "/policies/reload", Some(A::PolicyReload), &[], "Re-validate and swap in every policy file.", Y::None, Y::Json),
    admin("POST", "/policies/promote", Some(A::PolicyReload), &[], "Make the shadow policy set live, if it validates.", Y::None, Y::Json),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_id_has_exactly_one_row() {
        let ids = [
            RouteId::Healthz,
            RouteId::Schema,
            RouteId::SchemaApply,
            RouteId::Snapshot,
            RouteId::Read,
            RouteId::Change,
            RouteId::Ingest,
            RouteId::Export,
            RouteId::ListBranches,
            RouteId::MergeBranches,
            RouteId::CreateBranch,
            RouteId::DeleteBranch,
            RouteId::ListCommits,
            RouteId::GetCommit,
            RouteId::Maintenance,
        ];
        assert_eq!(ids.len(), WORKER_ROUTES.len());
        for id in ids {
            assert_eq!(WORKER_ROUTES.iter().filter(|r| r.id == id).count(), 1, "{id:?}");
            assert_eq!(worker_route(id).id, id);
        }
    }

    #[test]
    fn literal_segments_win_and_methods_are_told_apart() {
        assert_eq!(find_worker_route("POST", &["branches", "merge"]).map(|r| r.id), Ok(RouteId::MergeBranches));
        assert_eq!(find_worker_route("DELETE", &["branches", "dev"]).map(|r| r.id), Ok(RouteId::DeleteBranch));
        assert_eq!(find_worker_route("GET", &["commits", "01A"]).map(|r| r.id), Ok(RouteId::GetCommit));
        assert_eq!(find_worker_route("GET", &["read"]).map(|r| r.id), Err(true));
        assert_eq!(find_worker_route("GET", &["nope"]).map(|r| r.id), Err(false));
        assert_eq!(find_worker_route("GET", &["commits", "a", "b"]).map(|r| r.id), Err(false));
    }

    #[test]
    fn labels_and_branch_sources_agree_with_the_rows() {
        for r in WORKER_ROUTES {
            assert_eq!(r.label, format!("{} {}", r.method, r.pattern));
            if matches!(r.branch, BranchFrom::Query | BranchFrom::QueryRequired) {
                assert!(r.takes("branch"), "{}", r.label);
            }
            assert!(r.action != Action::GraphList && !r.action.is_server_action(), "{}", r.label);
        }
    }
}
