//! Authentication: `Authorization: Bearer <token>` → [`ResolvedActor`].
//!
//! A token with dots is a JWT and goes to the configured issuers; any other
//! token is looked up among the static tokens by its SHA-256. Verified JWTs
//! are cached by the hash of the token until they expire. Every failure is
//! the same [`AuthnError`] to the client; the reason is only logged.

pub mod jwt;
pub mod static_tokens;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use omnigraph_worker::contract::ResolvedActor;
use sha2::{Digest, Sha256};

pub use jwt::JwtVerifier;
pub use static_tokens::StaticTokens;

/// Longer `Authorization` values are refused before any work.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// The JWT cache is cleared of expired entries (or emptied) past this size.
const MAX_CACHED_TOKENS: usize = 100_000;

/// Why authentication failed. Clients only ever see [`AuthnError::PUBLIC_MESSAGE`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no bearer token")]
    Missing,
    #[error("malformed Authorization header")]
    Malformed,
    #[error("unknown static token")]
    UnknownToken,
    #[error("JWT rejected: {0}")]
    Jwt(String),
}

impl AuthnError {
    pub const PUBLIC_MESSAGE: &'static str = "missing or invalid bearer token";
}

struct Cached {
    actor: Arc<ResolvedActor>,
    exp: u64,
}

pub struct Authenticator {
    statics: StaticTokens,
    jwts: Vec<JwtVerifier>,
    cache: DashMap<[u8; 32], Cached>,
}

pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Authenticator {
    pub fn new(statics: StaticTokens, jwts: Vec<JwtVerifier>) -> Authenticator {
        Authenticator { statics, jwts, cache: DashMap::new() }
    }

    /// True when at least one way to authenticate is configured.
    pub fn is_configured(&self) -> bool {
        !self.statics.is_empty() || !self.jwts.is_empty()
    }

    /// Resolves the `Authorization` header value.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Arc<ResolvedActor>, AuthnError> {
        let raw = header.ok_or(AuthnError::Missing)?;
        if raw.len() > MAX_TOKEN_LEN {
            return Err(AuthnError::Malformed);
        }
        let raw = std::str::from_utf8(raw).map_err(|_| AuthnError::Malformed)?;
        let (scheme, token) = raw.split_once(' ').ok_or(AuthnError::Malformed)?;
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(AuthnError::Malformed);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if !token.contains('.') {
            return self.statics.lookup(&digest).ok_or(AuthnError::UnknownToken);
        }
        let now = now_unix();
        if let Some(c) = self.cache.get(&digest) {
            if c.exp > now {
                return Ok(c.actor.clone());
            }
        }
        let (actor, exp) = self.verify_jwt(token)?;
        let actor = Arc::new(actor);
        if self.cache.len() >= MAX_CACHED_TOKENS {
            self.cache.retain(|_, c| c.exp > now);
            if self.cache.len() >= MAX_CACHED_TOKENS {
                self.cache.clear();
            }
        }
        self.cache.insert(digest, Cached { actor: actor.clone(), exp });
        Ok(actor)
    }

    fn verify_jwt(&self, token: &str) -> Result<(ResolvedActor, u64), AuthnError> {
        if self.jwts.is_empty() {
            return Err(AuthnError::Jwt("no JWT issuer is configured".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthnError::Jwt(format!("header: {e}")))?;
        let mut last = AuthnError::Jwt("no issuer holds the token's key".into());
        for v in &self.jwts {
            match v.verify(token, &header) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}
