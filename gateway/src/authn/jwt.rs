//! JWT verification for one configured issuer: keys from a JWKS file chosen
//! by `kid`, an algorithm allow-list (never `none`; a key is only used with
//! its own algorithm family), `iss`, `aud`, `exp` (required) and `nbf` checked
//! with leeway, and claims mapped onto the actor.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use omnigraph_worker::contract::{AuthSource, ResolvedActor};
use serde_json::{Map, Value};

use super::AuthnError;
use crate::config::{ClaimMap, JwtIssuer};

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("cannot read JWKS {0}: {1}")]
    Read(String, std::io::Error),
    #[error("JWKS {0}: {1}")]
    Parse(String, String),
    #[error("issuer {0}: unknown or unsupported algorithm {1:?} (use RS256/384/512, PS256/384/512, ES256/384, EdDSA or HS256/384/512)")]
    Algorithm(String, String),
}

struct Key {
    kid: Option<String>,
    /// The algorithm family the key can verify, from its type.
    family: Family,
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Rsa,
    Ec,
    Okp,
    Hmac,
}

/// The key family an algorithm needs; `None` for algorithms we do not know,
/// which therefore match no key.
fn family_of(alg: Algorithm) -> Option<Family> {
    use Algorithm::*;
    Some(match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Okp,
        _ => return None,
    })
}

pub struct JwtVerifier {
    issuer: String,
    /// One validation per allowed algorithm: jsonwebtoken refuses a
    /// validation whose algorithms span key families.
    validations: Vec<(Algorithm, Validation)>,
    claims: ClaimMap,
    jwks_file: PathBuf,
    keys: ArcSwap<Vec<Key>>,
    refresh_every: Duration,
    last_refresh: Mutex<Instant>,
}

fn load_keys(path: &PathBuf) -> Result<Vec<Key>, JwksError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| JwksError::Read(name.clone(), e))?;
    let set: JwkSet = serde_json::from_str(&text).map_err(|e| JwksError::Parse(name.clone(), e.to_string()))?;
    let mut keys = Vec::new();
    for jwk in &set.keys {
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Okp,
            AlgorithmParameters::OctetKey(_) => Family::Hmac,
            _ => return Err(JwksError::Parse(name.clone(), format!("key {:?} has an unsupported type", jwk.common.key_id))),
        };
        let alg = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok());
        let key = DecodingKey::from_jwk(jwk).map_err(|e| JwksError::Parse(name.clone(), format!("key {:?}: {e}", jwk.common.key_id)))?;
        keys.push(Key { kid: jwk.common.key_id.clone(), family, alg, key });
    }
    Ok(keys)
}

impl JwtVerifier {
    pub fn new(cfg: &JwtIssuer, jwks_file: PathBuf) -> Result<JwtVerifier, JwksError> {
        let mut algorithms = Vec::new();
        for a in &cfg.algorithms {
            let alg: Algorithm = a.parse().map_err(|_| JwksError::Algorithm(cfg.issuer.clone(), a.clone()))?;
            algorithms.push(alg);
        }
        if algorithms.is_empty() {
            return Err(JwksError::Algorithm(cfg.issuer.clone(), String::new()));
        }
        let validations = algorithms
            .into_iter()
            .map(|alg| {
                let mut v = Validation::new(alg);
                v.leeway = cfg.leeway_s;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.set_issuer(&[&cfg.issuer]);
                v.set_audience(&cfg.audiences);
                v.set_required_spec_claims(&["exp", "iss", "aud"]);
                (alg, v)
            })
            .collect();
        let keys = load_keys(&jwks_file)?;
        Ok(JwtVerifier {
            issuer: cfg.issuer.clone(),
            validations,
            claims: cfg.claims.clone(),
            jwks_file,
            keys: ArcSwap::from_pointee(keys),
            refresh_every: Duration::from_secs(cfg.jwks.refresh_s.max(1)),
            last_refresh: Mutex::new(Instant::now()),
        })
    }

    /// Re-reads the JWKS file, at most once per `refresh_s`, when a token
    /// names a `kid` we do not hold (keys rotate).
    fn refresh(&self) -> bool {
        let Ok(mut last) = self.last_refresh.lock() else { return false };
        if last.elapsed() < self.refresh_every {
            return false;
        }
        *last = Instant::now();
        match load_keys(&self.jwks_file) {
            Ok(keys) => {
                self.keys.store(Arc::new(keys));
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refresh failed; keeping the old keys");
                false
            }
        }
    }

    fn pick<'a>(&self, keys: &'a [Key], header: &Header) -> Option<&'a Key> {
        let fits = |k: &&Key| Some(k.family) == family_of(header.alg) && k.alg.is_none_or(|a| a == header.alg);
        match &header.kid {
            Some(kid) => keys.iter().filter(|k| k.kid.as_deref() == Some(kid)).find(fits),
            None => {
                let mut it = keys.iter().filter(fits);
                let only = it.next();
                // Without a kid, only an unambiguous key is used.
                if it.next().is_some() {
                    None
                } else {
                    only
                }
            }
        }
    }

    pub fn verify(&self, token: &str, header: &Header) -> Result<(ResolvedActor, u64), AuthnError> {
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(AuthnError::Jwt(format!("algorithm {:?} is not allowed for {}", header.alg, self.issuer)));
        };
        let mut keys = self.keys.load_full();
        if self.pick(&keys, header).is_none() && header.kid.is_some() && self.refresh() {
            keys = self.keys.load_full();
        }
        let key = self
            .pick(&keys, header)
            .ok_or_else(|| AuthnError::Jwt(format!("no key for kid {:?} at {}", header.kid, self.issuer)))?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation).map_err(|e| AuthnError::Jwt(e.to_string()))?;
        let c = data.claims;
        let exp = c.get("exp").and_then(Value::as_u64).ok_or_else(|| AuthnError::Jwt("exp is not a number".into()))?;
        let actor_id = c.get(&self.claims.actor).and_then(Value::as_str).filter(|s| !s.is_empty()).ok_or_else(|| AuthnError::Jwt(format!("claim {:?} is missing", self.claims.actor)))?;
        let actor = ResolvedActor {
            actor_id: Arc::from(actor_id),
            tenant_id: c.get(&self.claims.tenant).and_then(Value::as_str).map(Arc::from),
            groups: string_list(c.get(&self.claims.groups)),
            scopes: string_list(c.get(&self.claims.scopes)),
            source: AuthSource::Jwt { issuer: Arc::from(self.issuer.as_str()) },
        };
        Ok((actor, exp))
    }
}

/// A claim as a list: a JSON array of strings, or one space-separated string (OAuth `scope`).
fn string_list(v: Option<&Value>) -> Vec<Arc<str>> {
    match v {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(Arc::from).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(Arc::from).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwksSource;
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

    fn verifier() -> JwtVerifier {
        let cfg = JwtIssuer {
            issuer: "https://idp.test".into(),
            audiences: vec!["omnigraph".into()],
            algorithms: vec!["RS256".into(), "HS256".into()],
            jwks: JwksSource { file: "jwks.json".into(), refresh_s: 300 },
            leeway_s: 5,
            claims: ClaimMap::default(),
        };
        JwtVerifier::new(&cfg, PathBuf::from(FIXTURES).join("jwks.json")).unwrap()
    }

    fn token(alg: Algorithm, kid: &str, claims: serde_json::Value) -> String {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        let key = match alg {
            Algorithm::RS256 => jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(format!("{FIXTURES}/jwt-rsa.pem")).unwrap()).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_secret(&std::fs::read(format!("{FIXTURES}/hs-secret.txt")).unwrap()),
        };
        jsonwebtoken::encode(&h, &claims, &key).unwrap()
    }

    #[test]
    fn verifies_and_maps_claims() {
        let v = verifier();
        let exp = super::super::now_unix() + 600;
        for (alg, kid) in [(Algorithm::RS256, "rsa-1"), (Algorithm::HS256, "hs-1")] {
            let t = token(alg, kid, json!({"sub": "jane", "iss": "https://idp.test", "aud": "omnigraph", "exp": exp, "tid": "acme", "groups": ["admins"], "scope": "graph:read graph:write"}));
            let header = jsonwebtoken::decode_header(&t).unwrap();
            let (actor, got_exp) = v.verify(&t, &header).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
            assert_eq!(&*actor.actor_id, "jane");
            assert_eq!(actor.tenant_id.as_deref(), Some("acme"));
            assert_eq!(actor.groups.len(), 1);
            assert_eq!(actor.scopes.len(), 2);
            assert_eq!(got_exp, exp);
        }
    }
}
