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
use omnigraph_contract::ResolvedActor;
use sha2::{Digest, Sha256};

pub use jwt::JwtVerifier;
pub use static_tokens::StaticTokens;

/// Longer `Authorization` values are refused before any work.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// The longest actor id the gateway vouches for (workers refuse longer ones).
pub const MAX_ACTOR_ID_BYTES: usize = 256;

/// An actor id the gateway can hand to a worker unchanged: 1 to
/// [`MAX_ACTOR_ID_BYTES`] bytes of UTF-8 without control characters. A token
/// that resolves to anything else is refused, never recorded as someone else.
pub fn valid_actor_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ACTOR_ID_BYTES && !id.chars().any(char::is_control)
}

/// The one `Authorization` header of a request. Two of them are refused:
/// a proxy in front and the gateway could each read a different one.
pub fn authorization_header(headers: &http::HeaderMap) -> Result<Option<&[u8]>, AuthnError> {
    let mut all = headers.get_all(http::header::AUTHORIZATION).iter();
    let first = all.next().map(http::HeaderValue::as_bytes);
    if all.next().is_some() {
        return Err(AuthnError::Malformed);
    }
    Ok(first)
}
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
    #[error("the token's actor id is empty, longer than {MAX_ACTOR_ID_BYTES} bytes or holds control characters")]
    BadActorId,
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
        if !valid_actor_id(&actor.actor_id) {
            return Err(AuthnError::BadActorId);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_ids_the_gateway_vouches_for() {
        for ok in ["alice", "josé", "svc:ci/runner-1", &"a".repeat(MAX_ACTOR_ID_BYTES)] {
            assert!(valid_actor_id(ok), "{ok}");
        }
        for bad in ["", "a\nb", "a\u{7f}", "\t", &"a".repeat(MAX_ACTOR_ID_BYTES + 1)] {
            assert!(!valid_actor_id(bad), "{bad:?}");
        }
    }

    /// A verified JWT is served from the cache until its `exp`, and never after.
    #[test]
    fn cached_tokens_expire_with_their_exp() {
        let a = Authenticator::new(StaticTokens::default(), Vec::new());
        let token = "a.b.c";
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let actor = Arc::new(ResolvedActor { actor_id: Arc::from("jane"), tenant_id: None, groups: Vec::new(), scopes: Vec::new(), source: omnigraph_contract::AuthSource::Static });
        a.cache.insert(digest, Cached { actor: actor.clone(), exp: now_unix() + 60 });
        assert_eq!(a.authenticate(Some(b"Bearer a.b.c")).unwrap(), actor, "served from the cache");
        a.cache.insert(digest, Cached { actor, exp: now_unix().saturating_sub(1) });
        assert!(a.authenticate(Some(b"Bearer a.b.c")).is_err(), "an expired entry is verified again (and this token fails)");
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let mut h = http::HeaderMap::new();
        assert_eq!(authorization_header(&h), Ok(None));
        h.append("authorization", http::HeaderValue::from_static("Bearer a"));
        assert_eq!(authorization_header(&h), Ok(Some(&b"Bearer a"[..])));
        h.append("authorization", http::HeaderValue::from_static("Bearer b"));
        assert_eq!(authorization_header(&h), Err(AuthnError::Malformed));
    }

    #[test]
    fn malformed_headers_never_authenticate() {
        let a = Authenticator::new(StaticTokens::default(), Vec::new());
        for h in [&b""[..], b"Bearer", b"Bearer ", b"Basic abc", b"Bearer \xff", b"bearer unknown"] {
            assert!(a.authenticate(Some(h)).is_err(), "{h:?}");
        }
        assert_eq!(a.authenticate(None).unwrap_err(), AuthnError::Missing);
        assert_eq!(a.authenticate(Some(&vec![b'a'; MAX_TOKEN_LEN + 1])).unwrap_err(), AuthnError::Malformed);
    }
}
