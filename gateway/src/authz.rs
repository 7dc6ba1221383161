//! Authorization with Cedar: the schema, the policy files, the per-action
//! policy sets, and `decide()`.
//!
//! Policies are parsed, renamed by origin (`server.cedar#3`, or their `@id`)
//! and strictly validated once, when loaded. They are then sliced by action:
//! a policy whose action scope cannot match a request is a no-op for it, so
//! evaluating only the slice gives Cedar's decision at a fraction of the cost
//! (a unit test below checks the slice against the full set). Anything that
//! goes wrong while deciding is a deny.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::{Duration, Instant};

use cedar_policy::{
    PrincipalConstraint, ActionConstraint, Authorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use std::sync::Arc;

use dashmap::DashMap;
use smallvec::SmallVec;

use crate::hashed_cache::HashedCache;
use miette::Diagnostic;
use omnigraph_contract::{AuthSource, ResolvedActor};

use crate::route::Action;

/// The vocabulary shipped with the gateway; `server.cedar_schema` overrides it.
pub const BUILTIN_SCHEMA: &str = include_str!("../../policies/omnigraph.cedarschema");

/// A policy or schema error at a file, line and column, rendered with a caret.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{rendered}")]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub col: usize,
    pub message: String,
    pub rendered: String,
}

impl PolicyError {
    /// An error about policy files as a whole (a folder, a missing file), not a place in one.
    pub fn plain(message: String) -> PolicyError {
        PolicyError { file: String::new(), line: 0, col: 0, rendered: message.clone(), message }
    }

    fn at(file: &str, src: &str, offset: Option<usize>, message: String) -> PolicyError {
        let (line, col) = offset.map_or((1, 1), |o| line_col(src, o));
        let rendered = omnigraph_contract::diagnostic::render(file, src, line, col, &message);
        PolicyError { file: file.to_string(), line, col, message, rendered }
    }

    /// `file:line:col: message` with every quoted fragment of the file's
    /// text masked: for a file the client named but does not own, whose
    /// contents must never come back in a response.
    pub fn without_source(&self) -> String {
        let mut out = String::with_capacity(self.message.len());
        let mut open: Option<char> = None;
        for c in self.message.chars() {
            match open {
                None if c == '`' || c == '"' => {
                    out.push(c);
                    out.push('…');
                    open = Some(c);
                }
                None => out.push(c),
                Some(q) if c == q => {
                    out.push(c);
                    open = None;
                }
                Some(_) => {}
            }
        }
        format!("{}:{}:{}: {out}", self.file, self.line, self.col)
    }

    fn from_diag(file: &str, src: &str, d: &dyn Diagnostic) -> PolicyError {
        let offset = d.labels().and_then(|mut l| l.next()).map(|l| l.offset());
        let mut message = d.to_string();
        if let Some(help) = d.help() {
            message.push_str(&format!(" (help: {help})"));
        }
        PolicyError::at(file, src, offset, message)
    }
}

use omnigraph_contract::diagnostic::line_col;

/// The resource of a request.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    Server,
    Graph { id: &'a str, tenant: Option<&'a str> },
}

impl Resource<'_> {
    pub fn describe(&self) -> String {
        match self {
            Resource::Server => "Omnigraph::Server::\"root\"".into(),
            Resource::Graph { id, .. } => format!("Omnigraph::Graph::{id:?}"),
        }
    }
}

/// The request context Cedar sees; branch names are validated before this.
#[derive(Debug, Clone, Default, Hash)]
pub struct RequestContext<'a> {
    pub branch: Option<&'a str>,
    pub branch_protected: Option<bool>,
    pub target_branch: Option<&'a str>,
    pub target_protected: Option<bool>,
    /// The base of `branch_create` (`?from=`).
    pub from_branch: Option<&'a str>,
    pub from_protected: Option<bool>,
    /// The id a `graph_create` asks for, as sent (before validation).
    pub requested_graph: Option<&'a str>,
    /// The tenant a `graph_create` asks for.
    pub requested_tenant: Option<&'a str>,
}

impl<'a> RequestContext<'a> {
    /// Every field, strings then flags: what the context cache compares.
    fn parts(&self) -> ([Option<&'a str>; 5], [Option<bool>; 3]) {
        (
            [self.branch, self.target_branch, self.from_branch, self.requested_graph, self.requested_tenant],
            [self.branch_protected, self.target_protected, self.from_protected],
        )
    }
}

#[derive(Debug, Clone)]
pub struct Decision {
    pub allowed: bool,
    /// Ids of the policies that determined the decision.
    pub policies: Vec<String>,
    /// Errors met while deciding; any error makes the decision a deny.
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

/// The policies of one action, bucketed by principal scope. A policy scoped
/// to `principal in Group::"g"` can only apply to members of `g`, and one
/// scoped to `principal == Actor::"a"` only to `a`; a request is decided with
/// the general policies plus the buckets its actor belongs to. (Groups have
/// no parents in the built-in schema, so membership is exactly the token's
/// group list; with a custom schema bucketing is off.)
struct ActionSlice {
    general: Vec<Policy>,
    general_set: Arc<PolicySet>,
    by_group: HashMap<String, Vec<Policy>>,
    by_actor: HashMap<String, Vec<Policy>>,
    /// Composed sets per bucket combination, built on first use. They live
    /// and die with this `ActionSets`, so a reload never sees stale ones.
    composed: HashedCache<Vec<Bucket>, Arc<PolicySet>>,
}

/// Which principal bucket a policy was filed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum BucketKind {
    Group,
    Actor,
}

/// One bucket of a composed set's key: a group or an actor id.
type Bucket = (BucketKind, String);

/// More distinct bucket combinations than this and the composed cache starts over.
const MAX_COMPOSED: usize = 4096;

impl ActionSlice {
    fn new(general: Vec<Policy>, by_group: HashMap<String, Vec<Policy>>, by_actor: HashMap<String, Vec<Policy>>) -> Result<ActionSlice, String> {
        let general_set = Arc::new(PolicySet::from_policies(general.iter().cloned()).map_err(|e| e.to_string())?);
        Ok(ActionSlice { general, general_set, by_group, by_actor, composed: HashedCache::new(MAX_COMPOSED) })
    }

    fn for_actor(&self, actor: &ResolvedActor) -> Result<Arc<PolicySet>, String> {
        if self.by_group.is_empty() && self.by_actor.is_empty() {
            return Ok(self.general_set.clone());
        }
        // The actor's buckets, sorted and without repeats: on the stack for
        // up to eight, so a cached combination costs no allocation to find.
        let mut key: SmallVec<[(BucketKind, &str); 8]> = SmallVec::new();
        key.extend(actor.groups.iter().filter(|g| self.by_group.contains_key(&***g)).map(|g| (BucketKind::Group, &**g)));
        if self.by_actor.contains_key(&*actor.actor_id) {
            key.push((BucketKind::Actor, &*actor.actor_id));
        }
        if key.is_empty() {
            return Ok(self.general_set.clone());
        }
        key.sort_unstable();
        key.dedup();
        let same = |owned: &Vec<Bucket>| owned.len() == key.len() && owned.iter().zip(&key).all(|(o, k)| o.0 == k.0 && o.1 == k.1);
        self.composed.get_or_build(&key[..], same, || {
            let mut policies = self.general.clone();
            for (kind, name) in &key {
                let bucket = match kind {
                    BucketKind::Group => self.by_group.get(*name),
                    BucketKind::Actor => self.by_actor.get(*name),
                };
                policies.extend(bucket.into_iter().flatten().cloned());
            }
            let set = Arc::new(PolicySet::from_policies(policies).map_err(|e| e.to_string())?);
            Ok((key.iter().map(|(k, n)| (*k, n.to_string())).collect(), set))
        })
    }
}

/// The compiled policies of one graph (or of the server), sliced by action
/// and bucketed by principal.
pub struct ActionSets {
    slices: Vec<ActionSlice>,
    /// How many policies went in, for `policy validate` and metrics.
    pub policy_count: usize,
}

impl std::fmt::Debug for ActionSets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ActionSets({} policies)", self.policy_count)
    }
}

impl ActionSets {
    /// The policy set that decides `action` for `actor`.
    pub fn for_request(&self, action: Action, actor: &ResolvedActor) -> Result<Arc<PolicySet>, String> {
        self.slices[action as usize].for_actor(actor)
    }

    /// Every policy in every action's set: the unsliced baseline that slicing
    /// is measured and tested against.
    pub fn unsliced<'p>(policies: impl IntoIterator<Item = &'p Policy>) -> Result<ActionSets, PolicyError> {
        let all: Vec<Policy> = policies.into_iter().cloned().collect();
        let policy_count = all.len();
        let slices = Action::ALL
            .iter()
            .map(|_| ActionSlice::new(all.clone(), HashMap::new(), HashMap::new()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PolicyError::at("policies", "", None, e))?;
        Ok(ActionSets { slices, policy_count })
    }
}

/// What the Cedar entities of a request depend on: the whole actor and the resource.
#[derive(Clone, PartialEq, Eq, Hash)]
struct EntityKey {
    actor: ResolvedActor,
    graph: Option<(String, Option<String>)>,
}

/// A request's principal, resource and entities, built once per distinct key.
struct RequestEntities {
    principal: EntityUid,
    resource: EntityUid,
    entities: Entities,
}

/// More distinct (actor, resource) pairs than this and the entity cache starts over.
const MAX_CACHED_ENTITIES: usize = 100_000;

/// More distinct contexts than this and the context cache starts over.
const MAX_CACHED_CONTEXTS: usize = 4096;

/// A context's owned key: its five strings and three flags, in the order of
/// [`RequestContext::parts`].
struct ContextKey([Option<String>; 5], [Option<bool>; 3]);

pub struct Engine {
    schema: Schema,
    /// Entities depend only on the actor and the resource, never on the
    /// policies, so caching them is safe across reloads. Decisions are never cached.
    entity_cache: HashedCache<EntityKey, Arc<RequestEntities>>,
    /// Cedar contexts, built once per distinct context (a branch and its
    /// protection, for nearly every request); like entities, they do not
    /// depend on the policies.
    contexts: HashedCache<ContextKey, Context>,
    /// Principal bucketing is sound only when groups cannot nest (the built-in schema).
    bucket_principals: bool,
    authorizer: Authorizer,
    actor_type: EntityTypeName,
    group_type: EntityTypeName,
    graph_type: EntityTypeName,
    server_uid: EntityUid,
    actions: Vec<EntityUid>,
    /// Where each `@id` policy of each file was written (`file` → `(id,
    /// line, col)`), so a clash names both places. Replaced per file on
    /// every parse, so it holds one entry per policy file at most.
    origins: DashMap<String, Vec<(String, usize, usize)>>,
}

/// The deepest bracket nesting a policy may have.
const MAX_POLICY_NESTING: usize = 32;
/// The most operators (`&&`, `==`, `.`, `if`, `in`, ...) one policy may hold.
const MAX_POLICY_OPERATORS: usize = 256;

/// Refuses a policy file whose expressions are too deep or too long before
/// Cedar sees it: Cedar's parser, validator and evaluator recurse over the
/// expression tree, and a few hundred bytes of nested parentheses would
/// otherwise overflow a thread's stack and abort the whole gateway. The
/// limits sit far above what a policy a person writes needs.
fn check_complexity(label: &str, src: &str) -> Result<(), PolicyError> {
    let b = src.as_bytes();
    let (mut depth, mut ops, mut i) = (0usize, 0usize, 0usize);
    let too = |at: usize, m: String| Err(PolicyError::at(label, src, Some(at), m));
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' => {
                // A string literal: skip it, escapes included.
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                if depth > MAX_POLICY_NESTING {
                    return too(i, format!("expressions nest more than {MAX_POLICY_NESTING} deep"));
                }
            }
            b')' | b']' | b'}' => depth = depth.saturating_sub(1),
            b';' if depth == 0 => ops = 0,
            b'&' | b'|' | b'=' | b'!' | b'<' | b'>' | b'+' | b'-' | b'*' | b'.' => {
                ops += 1;
                // `&&`, `==`, `<=`, ... are one operator.
                if matches!(b.get(i + 1), Some(b'&' | b'|' | b'=')) {
                    i += 1;
                }
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                if matches!(&src[start..i], "if" | "in" | "has" | "like" | "is") {
                    ops += 1;
                }
                if ops > MAX_POLICY_OPERATORS {
                    return too(start, format!("one policy holds more than {MAX_POLICY_OPERATORS} operators; split it"));
                }
                continue;
            }
            _ => {}
        }
        if ops > MAX_POLICY_OPERATORS {
            return too(i, format!("one policy holds more than {MAX_POLICY_OPERATORS} operators; split it"));
        }
        i += 1;
    }
    Ok(())
}

/// Each `@id("...")` annotation in `src`, in order, with its byte offset.
/// Only the ids are read; a policy's text is never kept.
fn id_annotations(src: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = src[from..].find("@id") {
        let at = from + i;
        from = at + 3;
        let rest = src[from..].trim_start();
        let Some(rest) = rest.strip_prefix('(') else { continue };
        let Some(body) = rest.trim_start().strip_prefix('"') else { continue };
        let mut id = String::new();
        let mut chars = body.chars();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => id.extend(chars.next()),
                c => id.push(c),
            }
        }
        out.push((id, at));
    }
    out
}

fn type_name(s: &str) -> EntityTypeName {
    // The names are constants of our own schema.
    EntityTypeName::from_str(s).unwrap_or_else(|e| panic!("type name {s}: {e}"))
}

impl Engine {
    pub fn new(schema_label: &str, schema_src: &str) -> Result<Engine, PolicyError> {
        let (schema, warnings) = Schema::from_cedarschema_str(schema_src).map_err(|e| PolicyError::from_diag(schema_label, schema_src, &e))?;
        for w in warnings {
            tracing::warn!(file = schema_label, "Cedar schema: {w}");
        }
        let action_type = type_name("Omnigraph::Action");
        let actions = Action::ALL.iter().map(|a| EntityUid::from_type_name_and_id(action_type.clone(), EntityId::new(a.name()))).collect();
        Ok(Engine {
            entity_cache: HashedCache::new(MAX_CACHED_ENTITIES),
            contexts: HashedCache::new(MAX_CACHED_CONTEXTS),
            bucket_principals: schema_src == BUILTIN_SCHEMA,
            schema,
            authorizer: Authorizer::new(),
            actor_type: type_name("Omnigraph::Actor"),
            group_type: type_name("Omnigraph::Group"),
            graph_type: type_name("Omnigraph::Graph"),
            server_uid: EntityUid::from_type_name_and_id(type_name("Omnigraph::Server"), EntityId::new("root")),
            actions,
            origins: DashMap::new(),
        })
    }

    /// Parses one policy file, names each policy by its origin and validates
    /// the file strictly against the schema.
    pub fn parse_file(&self, label: &str, src: &str) -> Result<Vec<Policy>, PolicyError> {
        check_complexity(label, src)?;
        let set = PolicySet::from_str(src).map_err(|e| PolicyError::from_diag(label, src, &e))?;
        if set.templates().next().is_some() {
            return Err(PolicyError::at(label, src, None, "policy templates are not supported".into()));
        }
        // `from_str` names policies policy0, policy1, ... in file order.
        let mut numbered: Vec<(usize, &Policy)> = set
            .policies()
            .map(|p| (p.id().to_string().strip_prefix("policy").and_then(|n| n.parse().ok()).unwrap_or(usize::MAX), p))
            .collect();
        numbered.sort_by_key(|(n, _)| *n);
        let mut renamed = Vec::with_capacity(numbered.len());
        let mut annotations = id_annotations(src).into_iter();
        let mut origins = Vec::new();
        for (n, p) in numbered {
            let id = match p.annotation("id") {
                Some(id) => {
                    if let Some((_, at)) = annotations.by_ref().find(|(a, _)| a == id) {
                        let (line, col) = line_col(src, at);
                        if let Some((_, l0, c0)) = origins.iter().find(|(o, _, _)| o == id) {
                            let message = format!("policy id {id:?} is used twice in this file (first at {label}:{l0}:{c0}); give each policy a unique @id");
                            return Err(PolicyError::at(label, src, Some(at), message));
                        }
                        origins.push((id.to_string(), line, col));
                    }
                    id.to_string()
                }
                None => format!("{label}#{n}"),
            };
            renamed.push(p.new_id(PolicyId::new(id)));
        }
        self.origins.insert(label.to_string(), origins);
        let checked = PolicySet::from_policies(renamed.iter().cloned()).map_err(|e| PolicyError::at(label, src, None, e.to_string()))?;
        let result = Validator::new(self.schema.clone()).validate(&checked, ValidationMode::Strict);
        if let Some(e) = result.validation_errors().next() {
            return Err(PolicyError::from_diag(label, src, e));
        }
        Ok(renamed)
    }

    pub fn parse_path(&self, path: &std::path::Path) -> Result<Vec<Policy>, PolicyError> {
        let label = path.file_name().and_then(|n| n.to_str()).unwrap_or("policy").to_string();
        let src = std::fs::read_to_string(path).map_err(|e| PolicyError::at(&path.display().to_string(), "", None, format!("cannot read: {e}")))?;
        self.parse_file(&label, &src)
    }

    /// The error for an `@id` used in two files, naming where each was written.
    fn duplicate_id(&self, id: &str) -> PolicyError {
        let mut places: Vec<(String, usize, usize)> = self
            .origins
            .iter()
            .flat_map(|e| e.value().iter().filter(|(o, _, _)| o == id).map(|(_, l, c)| (e.key().clone(), *l, *c)).collect::<Vec<_>>())
            .collect();
        places.sort();
        let listed: Vec<String> = places.iter().map(|(f, l, c)| format!("{f}:{l}:{c}")).collect();
        let message = format!("policy id {id:?} is used twice ({}); give each policy a unique @id", if listed.is_empty() { "in two files".to_string() } else { listed.join(" and ") });
        let (file, line, col) = places.pop().unwrap_or_else(|| ("policies".into(), 1, 1));
        let rendered = format!("{file}:{line}:{col}: {message}");
        PolicyError { file, line, col, message, rendered }
    }

    /// Slices `policies` by action (and buckets them by principal). Two
    /// policies with one id (for example the same `@id` in two files) are an
    /// error, never a silent rename.
    pub fn slice<'p>(&self, policies: impl IntoIterator<Item = &'p Policy>) -> Result<ActionSets, PolicyError> {
        type Buckets = (Vec<Policy>, HashMap<String, Vec<Policy>>, HashMap<String, Vec<Policy>>);
        let mut per_action: Vec<Buckets> = Action::ALL.iter().map(|_| Default::default()).collect();
        let mut seen = HashSet::new();
        let mut count = 0;
        for p in policies {
            count += 1;
            if !seen.insert(p.id().clone()) {
                return Err(self.duplicate_id(&p.id().to_string()));
            }
            let applies: Vec<usize> = match p.action_constraint() {
                ActionConstraint::Any => (0..Action::ALL.len()).collect(),
                ActionConstraint::Eq(uid) => self.actions.iter().position(|a| *a == uid).into_iter().collect(),
                ActionConstraint::In(uids) => self.actions.iter().enumerate().filter(|(_, a)| uids.contains(a)).map(|(i, _)| i).collect(),
            };
            let bucket = if self.bucket_principals { self.principal_bucket(p) } else { None };
            for i in applies {
                let (general, by_group, by_actor) = &mut per_action[i];
                match &bucket {
                    None => general.push(p.clone()),
                    Some((true, g)) => by_group.entry(g.clone()).or_default().push(p.clone()),
                    Some((false, a)) => by_actor.entry(a.clone()).or_default().push(p.clone()),
                }
            }
        }
        let slices = per_action
            .into_iter()
            .map(|(g, bg, ba)| ActionSlice::new(g, bg, ba))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| PolicyError::at("policies", "", None, e))?;
        Ok(ActionSets { slices, policy_count: count })
    }

    /// `Some((true, group))` for `principal in Group::"group"` (also with `is`),
    /// `Some((false, actor))` for `principal ==`/`in Actor::"actor"`, else `None`.
    fn principal_bucket(&self, p: &Policy) -> Option<(bool, String)> {
        let uid = match p.principal_constraint() {
            PrincipalConstraint::In(uid) | PrincipalConstraint::IsIn(_, uid) => uid,
            PrincipalConstraint::Eq(uid) if *uid.type_name() == self.actor_type => uid,
            _ => return None,
        };
        let id = uid.id().unescaped().to_string();
        if *uid.type_name() == self.group_type {
            Some((true, id))
        } else if *uid.type_name() == self.actor_type {
            Some((false, id))
        } else {
            None
        }
    }

    /// Decides one request. Deny by default; any error is a deny.
    pub fn decide(&self, sets: &ActionSets, actor: &ResolvedActor, action: Action, resource: Resource<'_>, ctx: &RequestContext<'_>) -> Decision {
        let start = Instant::now();
        let outcome = sets.for_request(action, actor).and_then(|set| self.evaluate(&set, actor, action, resource, ctx));
        let (allowed, policies, errors) = match outcome {
            Ok(r) => r,
            Err(e) => (false, Vec::new(), vec![e]),
        };
        Decision { allowed: allowed && errors.is_empty(), policies, errors, elapsed: start.elapsed() }
    }

    /// The request's entities, from the cache or built and cached.
    fn entities(&self, actor: &ResolvedActor, resource: Resource<'_>) -> Result<Arc<RequestEntities>, String> {
        let graph = match resource {
            Resource::Server => None,
            Resource::Graph { id, tenant } => Some((id, tenant)),
        };
        let same = |k: &EntityKey| k.actor == *actor && k.graph.as_ref().map(|(i, t)| (i.as_str(), t.as_deref())) == graph;
        self.entity_cache.get_or_build(&(actor, graph), same, || {
            let key = EntityKey { actor: actor.clone(), graph: graph.map(|(i, t)| (i.to_string(), t.map(str::to_string))) };
            Ok((key, Arc::new(self.build_entities(actor, resource)?)))
        })
    }

    /// The Cedar context of a request, from the cache or built and cached.
    fn context(&self, ctx: &RequestContext<'_>) -> Result<Context, String> {
        let parts = ctx.parts();
        let same = |k: &ContextKey| k.0.iter().map(Option::as_deref).eq(parts.0) && k.1 == parts.1;
        self.contexts.get_or_build(&parts, same, || Ok((ContextKey(parts.0.map(|s| s.map(str::to_string)), parts.1), Self::build_context(ctx)?)))
    }

    fn build_entities(&self, actor: &ResolvedActor, resource: Resource<'_>) -> Result<RequestEntities, String> {
        let principal = EntityUid::from_type_name_and_id(self.actor_type.clone(), EntityId::new(&*actor.actor_id));
        let mut entities = Vec::with_capacity(3 + actor.groups.len());
        let mut parents = HashSet::with_capacity(actor.groups.len());
        for g in &actor.groups {
            let uid = EntityUid::from_type_name_and_id(self.group_type.clone(), EntityId::new(&**g));
            entities.push(Entity::new_no_attrs(uid.clone(), HashSet::new()));
            parents.insert(uid);
        }
        let mut attrs = HashMap::with_capacity(3);
        attrs.insert("source".to_string(), RestrictedExpression::new_string(actor.source.as_str().to_string()));
        attrs.insert("scopes".to_string(), RestrictedExpression::new_set(actor.scopes.iter().map(|s| RestrictedExpression::new_string(s.to_string()))));
        if let Some(t) = &actor.tenant_id {
            attrs.insert("tenant".to_string(), RestrictedExpression::new_string(t.to_string()));
        }
        // Cedar sees who vouched for a JWT identity, so a policy can trust
        // one issuer's groups and not another's; static actors have none.
        if let AuthSource::Jwt { issuer } = &actor.source {
            attrs.insert("issuer".to_string(), RestrictedExpression::new_string(issuer.to_string()));
        }
        entities.push(Entity::new(principal.clone(), attrs, parents).map_err(|e| format!("actor entity: {e}"))?);
        entities.push(Entity::new_no_attrs(self.server_uid.clone(), HashSet::new()));
        let resource = match resource {
            Resource::Server => self.server_uid.clone(),
            Resource::Graph { id, tenant } => {
                let uid = EntityUid::from_type_name_and_id(self.graph_type.clone(), EntityId::new(id));
                let mut attrs = HashMap::new();
                if let Some(t) = tenant {
                    attrs.insert("tenant".to_string(), RestrictedExpression::new_string(t.to_string()));
                }
                entities.push(Entity::new(uid.clone(), attrs, HashSet::from([self.server_uid.clone()])).map_err(|e| format!("graph entity: {e}"))?);
                uid
            }
        };
        let entities = Entities::from_entities(entities, None).map_err(|e| format!("entities: {e}"))?;
        Ok(RequestEntities { principal, resource, entities })
    }

    fn build_context(ctx: &RequestContext<'_>) -> Result<Context, String> {
        let mut pairs: Vec<(String, RestrictedExpression)> = Vec::with_capacity(4);
        let strings = [
            ("branch", ctx.branch),
            ("target_branch", ctx.target_branch),
            ("from_branch", ctx.from_branch),
            ("requested_graph", ctx.requested_graph),
            ("requested_tenant", ctx.requested_tenant),
        ];
        for (name, v) in strings {
            if let Some(v) = v {
                pairs.push((name.into(), RestrictedExpression::new_string(v.to_string())));
            }
        }
        for (name, v) in [("branch_protected", ctx.branch_protected), ("target_protected", ctx.target_protected), ("from_protected", ctx.from_protected)] {
            if let Some(v) = v {
                pairs.push((name.into(), RestrictedExpression::new_bool(v)));
            }
        }
        Context::from_pairs(pairs).map_err(|e| format!("context: {e}"))
    }

    #[allow(clippy::type_complexity)]
    fn evaluate(&self, set: &PolicySet, actor: &ResolvedActor, action: Action, resource: Resource<'_>, ctx: &RequestContext<'_>) -> Result<(bool, Vec<String>, Vec<String>), String> {
        let ents = self.entities(actor, resource)?;
        let context = self.context(ctx)?;
        // No schema here: the route table fixes which action meets which
        // resource type, and the context is built by this function alone;
        // the policies themselves were validated against the schema on load.
        let request = Request::new(ents.principal.clone(), self.actions[action as usize].clone(), ents.resource.clone(), context, None).map_err(|e| format!("request: {e}"))?;
        let response = self.authorizer.is_authorized(&request, set, &ents.entities);
        let policies = response.diagnostics().reason().map(|id| id.to_string()).collect();
        let errors = response.diagnostics().errors().map(|e| e.to_string()).collect();
        Ok((response.decision() == CedarDecision::Allow, policies, errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn engine() -> Engine {
        Engine::new("omnigraph.cedarschema", BUILTIN_SCHEMA).unwrap()
    }

    fn actor(id: &str, groups: &[&str], tenant: Option<&str>) -> ResolvedActor {
        ResolvedActor {
            actor_id: Arc::from(id),
            tenant_id: tenant.map(Arc::from),
            groups: groups.iter().map(|g| Arc::from(*g)).collect(),
            scopes: vec![Arc::from("graph:read")],
            source: AuthSource::Static,
        }
    }

    const SERVER: &str = include_str!("../../policies/server.cedar");
    const SOCIAL: &str = include_str!("../../policies/social.cedar");

    #[test]
    fn shipped_policies_validate_and_compose() {
        let e = engine();
        let server = e.parse_file("server.cedar", SERVER).unwrap();
        let social = e.parse_file("social.cedar", SOCIAL).unwrap();
        let sets = e.slice(server.iter().chain(&social)).unwrap();
        let g = Resource::Graph { id: "social", tenant: Some("acme") };
        let main = RequestContext { branch: Some("main"), branch_protected: Some(true), ..Default::default() };
        let dev = RequestContext { branch: Some("dev"), branch_protected: Some(false), ..Default::default() };
        let team = actor("tom", &["team"], Some("acme"));
        assert!(e.decide(&sets, &team, Action::Change, g, &dev).allowed);
        assert!(!e.decide(&sets, &team, Action::Change, g, &main).allowed, "team cannot change a protected branch");
        let admin = actor("ann", &["admins"], Some("acme"));
        let d = e.decide(&sets, &admin, Action::Change, g, &main);
        assert!(d.allowed);
        assert_eq!(d.policies, vec!["admins-all"]);
        // Tenant isolation fails closed: no tenant never reaches a tenant's graph.
        let d = e.decide(&sets, &actor("al", &["admins"], None), Action::Read, g, &main);
        assert!(!d.allowed);
        assert_eq!(d.policies, vec!["tenant-isolation"]);
        let untenanted = Resource::Graph { id: "social", tenant: None };
        assert!(e.decide(&sets, &actor("al", &["admins"], None), Action::Read, untenanted, &main).allowed);
        // tenant-create: an actor with a tenant creates only its own tenant's graphs.
        let create = |who: &ResolvedActor, t: Option<&str>| {
            let ctx = RequestContext { requested_graph: Some("g"), requested_tenant: t, ..Default::default() };
            e.decide(&sets, who, Action::GraphCreate, Resource::Server, &ctx)
        };
        assert!(create(&admin, Some("acme")).allowed);
        assert_eq!(create(&admin, Some("globex")).policies, vec!["tenant-create"]);
        assert!(!create(&admin, None).allowed, "not even a graph without a tenant");
        assert!(create(&actor("al", &["admins"], None), Some("globex")).allowed);
        // The server-level forbid beats the graph-level permit.
        let other = actor("oz", &["team", "admins"], Some("globex"));
        let d = e.decide(&sets, &other, Action::Read, g, &main);
        assert!(!d.allowed);
        assert_eq!(d.policies, vec!["tenant-isolation"]);
        // Deny by default.
        let nobody = actor("nn", &[], Some("acme"));
        let d = e.decide(&sets, &nobody, Action::Read, g, &main);
        assert!(!d.allowed && d.policies.is_empty());
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let e = engine();
        let err = e.parse_file("bad.cedar", "permit (principal, action, resource);\npermit (principal, action == Omnigraph::Action::\"fly\", resource);\n").unwrap_err();
        assert_eq!((err.file.as_str(), err.line), ("bad.cedar", 2), "{err}");
        assert!(err.rendered.contains('^'));
        let secret = e.parse_file("s.cedar", "permit (principal, action, resource) when { principal.hunter2 == 1 };").unwrap_err();
        assert!(secret.rendered.contains("hunter2"));
        let masked = secret.without_source();
        assert!(masked.starts_with("s.cedar:1:") && !masked.contains("hunter2") && !masked.contains("permit"), "{masked}");
        let err = e.parse_file("syntax.cedar", "permit (principal, action, resource)\nwhen { principal.x == };").unwrap_err();
        assert_eq!(err.line, 2, "{err}");
        let err = e.parse_file("attr.cedar", "permit (principal, action, resource) when { principal.shoe == 1 };").unwrap_err();
        assert_eq!((err.line, err.col > 1), (1, true), "{err}");
    }

    /// Deep or long expressions are refused before Cedar recurses over them,
    /// at the place they go too far; ordinary policies are untouched.
    #[test]
    fn expressions_that_would_exhaust_the_stack_are_refused() {
        let e = engine();
        let deep = format!("permit (principal, action, resource) when {{ {}true{} }};", "(".repeat(60), ")".repeat(60));
        let err = e.parse_file("deep.cedar", &deep).unwrap_err();
        assert!(err.message.contains("nest more than 32") && err.line == 1, "{err}");
        let long = format!("permit (principal, action, resource) when {{ true{} }};", " && true".repeat(300));
        assert!(e.parse_file("long.cedar", &long).unwrap_err().message.contains("more than 256 operators"));
        let unary = format!("permit (principal, action, resource) when {{ {}true }};", "!".repeat(300));
        assert!(e.parse_file("not.cedar", &unary).is_err());
        // Many ordinary policies in one file are fine: the count is per policy.
        let many = "permit (principal, action == Omnigraph::Action::\"read\", resource) when { context has branch && context.branch == \"x(\" };\n".repeat(200);
        assert_eq!(e.parse_file("many.cedar", &many).unwrap().len(), 200);
        assert!(e.parse_file("server.cedar", SERVER).is_ok());
    }

    #[test]
    fn ids_carry_their_origin_and_collide_loudly() {
        let e = engine();
        let a = e.parse_file("a.cedar", "permit (principal, action, resource);\n@id(\"x\") permit (principal, action, resource);").unwrap();
        let ids: Vec<String> = a.iter().map(|p| p.id().to_string()).collect();
        assert_eq!(ids, vec!["a.cedar#0", "x"]);
        let b = e.parse_file("b.cedar", "// b\n\n  @id(\"x\") forbid (principal, action, resource);").unwrap();
        let err = e.slice(a.iter().chain(&b)).unwrap_err();
        assert!(err.message.contains("used twice") && err.message.contains("a.cedar:2:1") && err.message.contains("b.cedar:3:3"), "{err}");
        assert_eq!((err.file.as_str(), err.line, err.col), ("b.cedar", 3, 3));
        let same = e.parse_file("s.cedar", "@id(\"y\") permit (principal, action, resource);\n@id( \"y\" ) forbid (principal, action, resource);").unwrap_err();
        assert_eq!((same.file.as_str(), same.line, same.col), ("s.cedar", 2, 1), "{same}");
        assert!(same.message.contains("first at s.cedar:1:1"), "{same}");
        let b2 = e.parse_file("b.cedar", "permit (principal, action, resource);").unwrap();
        assert!(e.slice(a.iter().chain(&b2)).is_ok(), "file-based ids do not collide across files");
    }

    #[test]
    fn a_request_sees_only_the_policies_that_can_apply_to_it() {
        let e = engine();
        let mut src = String::from("permit (principal, action == Omnigraph::Action::\"read\", resource) when { false };\n");
        for i in 0..50 {
            src.push_str(&format!("permit (principal in Omnigraph::Group::\"g{i}\", action == Omnigraph::Action::\"read\", resource);\n"));
        }
        let sets = e.slice(&e.parse_file("b.cedar", &src).unwrap()).unwrap();
        let who = actor("u", &["g7", "g9"], None);
        assert_eq!(sets.for_request(Action::Read, &who).unwrap().policies().count(), 3);
        assert_eq!(sets.for_request(Action::Change, &who).unwrap().policies().count(), 0);
        assert_eq!(sets.for_request(Action::Read, &actor("v", &[], None)).unwrap().policies().count(), 1);
    }

    /// Slicing by action must never change a decision: random policies and
    /// requests, decided against the whole set and against the slice.
    #[test]
    fn sliced_sets_decide_exactly_like_the_full_set() {
        let e = engine();
        let mut seed = 12345u64;
        let mut rnd = |n: usize| {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as usize) % n
        };
        let actions = Action::ALL;
        let groups = ["admins", "team", "readers"];
        for _round in 0..60 {
            let mut src = String::new();
            for _ in 0..(1 + rnd(8)) {
                let effect = if rnd(4) == 0 { "forbid" } else { "permit" };
                let principal = match rnd(6) {
                    0 => "principal".to_string(),
                    1 | 2 => format!("principal in Omnigraph::Group::{:?}", groups[rnd(3)]),
                    3 => format!("principal is Omnigraph::Actor in Omnigraph::Group::{:?}", groups[rnd(3)]),
                    4 => "principal == Omnigraph::Actor::\"u1\"".to_string(),
                    _ => "principal in Omnigraph::Actor::\"u2\"".to_string(),
                };
                let action = match rnd(3) {
                    0 => "action".to_string(),
                    1 => format!("action == Omnigraph::Action::{:?}", actions[rnd(actions.len())].name()),
                    _ => format!(
                        "action in [Omnigraph::Action::{:?}, Omnigraph::Action::{:?}]",
                        actions[rnd(actions.len())].name(),
                        actions[rnd(actions.len())].name()
                    ),
                };
                let cond = match rnd(3) {
                    0 => "",
                    1 => " when { context has branch_protected && context.branch_protected }",
                    _ => " unless { principal has tenant }",
                };
                src.push_str(&format!("{effect} ({principal}, {action}, resource){cond};\n"));
            }
            let policies = e.parse_file("r.cedar", &src).unwrap();
            let sliced = e.slice(&policies).unwrap();
            let full_sets = ActionSets::unsliced(&policies).unwrap();
            for _ in 0..30 {
                let a = actions[rnd(actions.len())];
                let who = actor(["u1", "u2"][rnd(2)], &groups[..rnd(4)], if rnd(2) == 0 { Some("t") } else { None });
                let res = if a.is_server_action() { Resource::Server } else { Resource::Graph { id: "g", tenant: None } };
                let ctx = RequestContext { branch: Some("main"), branch_protected: Some(rnd(2) == 0), ..Default::default() };
                let d1 = e.decide(&full_sets, &who, a, res, &ctx);
                let d2 = e.decide(&sliced, &who, a, res, &ctx);
                assert_eq!(d1.allowed, d2.allowed, "{src}\n{a:?}");
                let (mut p1, mut p2) = (d1.policies.clone(), d2.policies.clone());
                p1.sort();
                p2.sort();
                assert_eq!(p1, p2);
            }
        }
    }
}
