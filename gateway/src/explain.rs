//! `policy explain`: one decision, computed exactly as the gateway would,
//! from the config on disk, with the policies that determined it.

use std::sync::Arc;

use omnigraph_contract::{AuthSource, BranchName, ResolvedActor};

use crate::app::{load_engine, load_policies, StartupError};
use crate::authn::StaticTokens;
use crate::authz::{RequestContext, Resource};
use crate::config::Loaded;
use crate::route::Action;

pub struct Explained {
    pub allowed: bool,
    pub text: String,
}

#[allow(clippy::too_many_arguments)]
pub fn explain(
    cfg: &Loaded,
    actor_id: &str,
    action: &str,
    graph: Option<&str>,
    branch: Option<&str>,
    target: Option<&str>,
    from: Option<&str>,
    groups: Vec<String>,
    tenant: Option<String>,
) -> Result<Explained, StartupError> {
    let action = Action::from_name(action).ok_or_else(|| StartupError::Other(format!("unknown action {action:?}")))?;
    let engine = load_engine(cfg)?;
    let (server, graphs) = load_policies(&engine, cfg)?;
    let known = match &cfg.config.auth.static_tokens {
        Some(f) => StaticTokens::load(&cfg.resolve(&f.file)).map_err(|e| StartupError::Auth(e.to_string()))?.by_actor(actor_id),
        None => None,
    };
    let actor = ResolvedActor {
        actor_id: Arc::from(actor_id),
        tenant_id: tenant.map(|t| Arc::from(t.as_str())).or_else(|| known.as_ref().and_then(|k| k.tenant_id.clone())),
        groups: if groups.is_empty() { known.as_ref().map(|k| k.groups.clone()).unwrap_or_default() } else { groups.iter().map(|g| Arc::from(g.as_str())).collect() },
        scopes: known.as_ref().map(|k| k.scopes.clone()).unwrap_or_default(),
        source: AuthSource::Static,
    };
    let parse_branch = |b: Option<&str>| b.map(BranchName::parse).transpose().map_err(|e| StartupError::Other(e.to_string()));
    let (branch, target, from) = (parse_branch(branch)?, parse_branch(target)?, parse_branch(from)?);
    let decision = if action.is_server_action() {
        engine.decide(&engine.slice(&server)?, &actor, action, Resource::Server, &RequestContext::default())
    } else {
        let gid = graph.ok_or_else(|| StartupError::Other(format!("{} is a graph action: pass --graph", action.name())))?;
        let section = cfg.config.graphs.get(gid).ok_or_else(|| StartupError::Other(format!("graph {gid:?} is not in the config")))?;
        let own = graphs.iter().find(|(id, _)| id == gid).map(|(_, p)| p.clone()).unwrap_or_default();
        let sets = engine.slice(server.iter().chain(&own))?;
        let protected = |b: &BranchName| section.protected_branches.iter().any(|p| p == b.as_str());
        // The branch a live request would carry: `main` when the action's routes default to it.
        let main = BranchName::main();
        let branch = branch.as_ref().or_else(|| crate::decision::defaults_to_main(action).then_some(&main));
        let from = (action == Action::BranchCreate).then(|| from.as_ref().unwrap_or(&main));
        let ctx = crate::decision::graph_context(crate::decision::Branches { branch, target: target.as_ref(), from }, protected);
        engine.decide(&sets, &actor, action, Resource::Graph { id: gid, tenant: section.tenant.as_deref() }, &ctx)
    };
    let groups: Vec<&str> = actor.groups.iter().map(|g| &**g).collect();
    let mut text = format!(
        "{}: actor {:?} (groups: {}; tenant: {}) {} {} on {}\n",
        if decision.allowed { "ALLOW" } else { "DENY" },
        actor_id,
        if groups.is_empty() { "none".to_string() } else { groups.join(", ") },
        actor.tenant_id.as_deref().unwrap_or("none"),
        if decision.allowed { "may" } else { "may not" },
        action.name(),
        graph.map_or("Omnigraph::Server::\"root\"".to_string(), |g| format!("Omnigraph::Graph::{g:?}")),
    );
    if decision.policies.is_empty() {
        text.push_str("determining policies: none (no permit applies: denied by default)\n");
    } else {
        text.push_str(&format!("determining policies: {}\n", decision.policies.join(", ")));
    }
    for e in &decision.errors {
        text.push_str(&format!("error (counts as deny): {e}\n"));
    }
    Ok(Explained { allowed: decision.allowed, text })
}
