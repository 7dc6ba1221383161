//! Who is calling: the identity the gateway resolves from a bearer token.

use std::sync::Arc;

/// Where an actor's identity came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuthSource {
    Static,
    Jwt { issuer: Arc<str> },
}

impl AuthSource {
    /// The value Cedar sees as `principal.source`.
    pub fn as_str(&self) -> &str {
        match self {
            AuthSource::Static => "static",
            AuthSource::Jwt { .. } => "jwt",
        }
    }
}

/// A scope string such as `graph:read`, as granted by a token.
pub type Scope = Arc<str>;

/// The caller, after authentication. Built once per token and cached.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResolvedActor {
    pub actor_id: Arc<str>,
    pub tenant_id: Option<Arc<str>>,
    pub groups: Vec<Arc<str>>,
    pub scopes: Vec<Scope>,
    pub source: AuthSource,
}
