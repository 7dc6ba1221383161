//! Static tokens: a file of SHA-256 hashes, never plaintext.
//!
//! ```yaml
//! tokens:
//!   - actor_id: alice
//!     sha256: 9f86d0...        # hex SHA-256 of the token
//!     groups: [admins]         # optional
//!     tenant: acme             # optional
//!     scopes: [graph:read]     # optional
//! ```

use std::path::Path;
use std::sync::Arc;

use omnigraph_contract::{AuthSource, ResolvedActor};
use serde::Deserialize;
use subtle::ConstantTimeEq;

#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: {1}")]
    Parse(String, String),
    #[error("{file}: token {index} ({actor}): {message}")]
    Entry { file: String, index: usize, actor: String, message: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    tokens: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    actor_id: String,
    sha256: String,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
}

#[derive(Default)]
pub struct StaticTokens {
    entries: Vec<([u8; 32], Arc<ResolvedActor>)>,
}

impl std::fmt::Debug for StaticTokens {
    /// Never prints hashes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StaticTokens({} entries)", self.entries.len())
    }
}

impl StaticTokens {
    pub fn load(path: &Path) -> Result<StaticTokens, TokenFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| TokenFileError::Read(name.clone(), e))?;
        let file: File = serde_yaml_ng::from_str(&text).map_err(|e| TokenFileError::Parse(name.clone(), e.to_string()))?;
        let mut entries = Vec::with_capacity(file.tokens.len());
        for (index, t) in file.tokens.into_iter().enumerate() {
            let err = |message: &str| TokenFileError::Entry { file: name.clone(), index, actor: t.actor_id.clone(), message: message.into() };
            let bytes = hex::decode(t.sha256.trim()).map_err(|_| err("sha256 must be 64 hex digits"))?;
            let hash: [u8; 32] = bytes.try_into().map_err(|_| err("sha256 must be 64 hex digits"))?;
            if !super::valid_actor_id(&t.actor_id) {
                return Err(err("actor_id must be 1-256 bytes without control characters"));
            }
            if entries.iter().any(|(h, _): &([u8; 32], _)| *h == hash) {
                return Err(err("the same token hash is listed twice"));
            }
            let actor = ResolvedActor {
                actor_id: Arc::from(t.actor_id.as_str()),
                tenant_id: t.tenant.as_deref().map(Arc::from),
                groups: t.groups.iter().map(|g| Arc::from(g.as_str())).collect(),
                scopes: t.scopes.iter().map(|s| Arc::from(s.as_str())).collect(),
                source: AuthSource::Static,
            };
            entries.push((hash, Arc::new(actor)));
        }
        Ok(StaticTokens { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first entry for `actor_id` (for `policy explain`; never for authentication).
    pub fn by_actor(&self, actor_id: &str) -> Option<Arc<ResolvedActor>> {
        self.entries.iter().find(|(_, a)| &*a.actor_id == actor_id).map(|(_, a)| a.clone())
    }

    /// Compares `digest` with every entry in constant time, without an early
    /// exit, so timing says nothing about which entry (if any) matched.
    pub fn lookup(&self, digest: &[u8; 32]) -> Option<Arc<ResolvedActor>> {
        let mut found = None;
        for (hash, actor) in &self.entries {
            if ct_eq32(hash, digest) {
                found = Some(actor.clone());
            }
        }
        found
    }
}

/// Constant-time equality of two 32-byte digests: the lanes are XORed and
/// ORed together without a branch, and only the final word is tested (with
/// `subtle`, so the compiler cannot turn it into an early exit).
fn ct_eq32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let mut diff = 0u64;
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let (mut xa, mut ya) = ([0u8; 8], [0u8; 8]);
        xa.copy_from_slice(x);
        ya.copy_from_slice(y);
        diff |= u64::from_ne_bytes(xa) ^ u64::from_ne_bytes(ya);
    }
    bool::from(diff.ct_eq(&0u64))
}

/// A new random token and the YAML entry that admits it.
pub fn new_token(actor: &str) -> (String, String) {
    use rand::RngCore;
    use sha2::{Digest, Sha256};
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let token = format!("og_{}", hex::encode(bytes));
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let entry = format!("  - actor_id: {actor}\n    sha256: {hash}\n");
    (token, entry)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn loads_and_looks_up_by_hash() {
        let dir = tempfile::tempdir().unwrap();
        let h = hex::encode(Sha256::digest(b"secret-a"));
        let p = dir.path().join("t.yaml");
        std::fs::write(&p, format!("tokens:\n  - actor_id: alice\n    sha256: {h}\n    groups: [admins]\n    tenant: acme\n")).unwrap();
        let t = StaticTokens::load(&p).unwrap();
        let a = t.lookup(&Sha256::digest(b"secret-a").into()).unwrap();
        assert_eq!(&*a.actor_id, "alice");
        assert_eq!(a.tenant_id.as_deref(), Some("acme"));
        assert!(t.lookup(&Sha256::digest(b"secret-b").into()).is_none());
    }

    #[test]
    fn rejects_plaintext_and_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t.yaml");
        std::fs::write(&p, "tokens:\n  - actor_id: alice\n    sha256: hunter2\n").unwrap();
        assert!(StaticTokens::load(&p).unwrap_err().to_string().contains("64 hex"));
        let h = hex::encode(Sha256::digest(b"x"));
        std::fs::write(&p, format!("tokens:\n  - {{actor_id: a, sha256: {h}}}\n  - {{actor_id: b, sha256: {h}}}\n")).unwrap();
        assert!(StaticTokens::load(&p).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn ct_eq32_compares_every_byte() {
        let a = [7u8; 32];
        for i in 0..32 {
            let mut b = a;
            b[i] ^= 1;
            assert!(!ct_eq32(&a, &b), "byte {i}");
        }
        assert!(ct_eq32(&a, &a.clone()));
    }

    #[test]
    fn new_tokens_hash_to_their_entry() {
        let (token, entry) = new_token("bob");
        assert!(entry.contains(&hex::encode(Sha256::digest(token.as_bytes()))));
        assert_ne!(new_token("bob").0, token);
    }
}
