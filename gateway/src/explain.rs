//! `policy explain` and the engine behind `policy test`: decisions computed
//! from the config on disk by the gateway's own decision function
//! ([`crate::decision::decide_with`]), with the policies that determined them.

use std::collections::HashMap;
use std::sync::Arc;

use omnigraph_contract::{AuthSource, BranchName, ResolvedActor};

use crate::app::{load_engine, load_policies, StartupError};
use crate::authn::StaticTokens;
use crate::authz::{ActionSets, Engine};
use crate::config::{GraphSection, Loaded};
use crate::decision::{decide_with, defaults_to_main, Branches, GraphPolicies, Verdict};
use crate::route::Action;

/// Every policy of a config, compiled once: the server's, and each graph's
/// (the server's plus its own) with the graph's settings.
pub struct PolicyBook {
    engine: Engine,
    server: ActionSets,
    graphs: HashMap<String, (ActionSets, GraphSection)>,
    tokens: Option<StaticTokens>,
}

/// One question: may this actor do this, here?
pub struct Question<'a> {
    pub action: &'a str,
    pub graph: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub target: Option<&'a str>,
    pub from: Option<&'a str>,
}

/// What an actor given on the command line or in a test case looks like.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSpec {
    pub id: String,
    #[serde(default)]
    pub groups: Vec<String>,
    pub tenant: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// A JWT actor's issuer; absent for a static-token actor.
    pub issuer: Option<String>,
}

impl PolicyBook {
    pub fn load(cfg: &Loaded) -> Result<PolicyBook, StartupError> {
        let engine = load_engine(cfg)?;
        let (server, own) = load_policies(&engine, cfg)?;
        let mut graphs = HashMap::new();
        for (id, section) in &cfg.config.graphs {
            let mine = own.iter().find(|(g, _)| g == id).map(|(_, p)| p.as_slice()).unwrap_or_default();
            graphs.insert(id.clone(), (engine.slice(server.iter().chain(mine))?, section.clone()));
        }
        let tokens = match &cfg.config.auth.static_tokens {
            Some(f) => Some(StaticTokens::load(&cfg.resolve(&f.file)).map_err(|e| StartupError::Auth(e.to_string()))?),
            None => None,
        };
        Ok(PolicyBook { server: engine.slice(&server)?, engine, graphs, tokens })
    }

    /// The actor `spec` describes. Groups, tenant and scopes that `spec`
    /// leaves empty come from the static tokens file when it knows the id.
    pub fn actor(&self, spec: &ActorSpec) -> ResolvedActor {
        let known = self.tokens.as_ref().and_then(|t| t.by_actor(&spec.id));
        let arcs = |v: &[String]| v.iter().map(|s| Arc::from(s.as_str())).collect::<Vec<_>>();
        ResolvedActor {
            actor_id: Arc::from(spec.id.as_str()),
            tenant_id: spec.tenant.as_deref().map(Arc::from).or_else(|| known.as_ref().and_then(|k| k.tenant_id.clone())),
            groups: if spec.groups.is_empty() { known.as_ref().map(|k| k.groups.clone()).unwrap_or_default() } else { arcs(&spec.groups) },
            scopes: if spec.scopes.is_empty() { known.as_ref().map(|k| k.scopes.clone()).unwrap_or_default() } else { arcs(&spec.scopes) },
            source: spec.issuer.as_deref().map_or(AuthSource::Static, |i| AuthSource::Jwt { issuer: Arc::from(i) }),
        }
    }

    /// Decides `q` as a live request with the same action, graph and
    /// branches would be decided: branches default as the routes default them.
    pub fn decide(&self, actor: &ResolvedActor, q: &Question<'_>) -> Result<Verdict, StartupError> {
        let action = Action::from_name(q.action).ok_or_else(|| StartupError::Other(format!("unknown action {:?}", q.action)))?;
        let parse = |b: Option<&str>| b.map(BranchName::parse).transpose().map_err(|e| StartupError::Other(e.to_string()));
        let (branch, target, from) = (parse(q.branch)?, parse(q.target)?, parse(q.from)?);
        if action.is_server_action() {
            return Ok(decide_with(&self.engine, &self.server, None, None, actor, action, Branches::default(), &Default::default()));
        }
        let gid = q.graph.ok_or_else(|| StartupError::Other(format!("{} is a graph action: name the graph", action.name())))?;
        let (sets, section) = self.graphs.get(gid).ok_or_else(|| StartupError::Other(format!("graph {gid:?} is not in the config")))?;
        let protected = |b: &BranchName| section.protected_branches.iter().any(|p| p == b.as_str());
        let main = BranchName::main();
        let branches = Branches {
            branch: branch.as_ref().or_else(|| defaults_to_main(action).then_some(&main)),
            target: target.as_ref(),
            from: (action == Action::BranchCreate).then(|| from.as_ref().unwrap_or(&main)),
        };
        let graph = GraphPolicies { id: gid, tenant: section.tenant.as_deref(), sets, protected: &protected };
        Ok(decide_with(&self.engine, &self.server, Some(&graph), Some(gid), actor, action, branches, &Default::default()))
    }
}

pub struct Explained {
    pub allowed: bool,
    pub text: String,
}

/// `policy explain`: one decision, in words.
pub fn explain(cfg: &Loaded, spec: &ActorSpec, q: Question<'_>) -> Result<Explained, StartupError> {
    let book = PolicyBook::load(cfg)?;
    let actor = book.actor(spec);
    let v = book.decide(&actor, &q)?;
    let d = &v.decision;
    let groups: Vec<&str> = actor.groups.iter().map(|g| &**g).collect();
    let mut text = format!(
        "{}: actor {:?} (groups: {}; tenant: {}) {} {} on {}\n",
        if d.allowed { "ALLOW" } else { "DENY" },
        &*actor.actor_id,
        if groups.is_empty() { "none".to_string() } else { groups.join(", ") },
        actor.tenant_id.as_deref().unwrap_or("none"),
        if d.allowed { "may" } else { "may not" },
        q.action,
        q.graph.map_or("Omnigraph::Server::\"root\"".to_string(), |g| format!("Omnigraph::Graph::{g:?}")),
    );
    if let Some(b) = &v.copied {
        text.push_str(&format!("denied because it copies branch {:?}, which the actor may not read\n", b.as_str()));
    }
    text.push_str(&describe_policies(d));
    text.push('\n');
    for e in &d.errors {
        text.push_str(&format!("error (counts as deny): {e}\n"));
    }
    Ok(Explained { allowed: d.allowed, text })
}

/// The determining policies of a decision, as one line.
pub fn describe_policies(d: &crate::authz::Decision) -> String {
    if d.policies.is_empty() {
        "determining policies: none (no permit applies: denied by default)".to_string()
    } else {
        format!("determining policies: {}", d.policies.join(", "))
    }
}
