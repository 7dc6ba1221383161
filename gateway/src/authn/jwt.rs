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
use omnigraph_contract::{AuthSource, ResolvedActor};
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

/// Where an issuer's keys come from.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(PathBuf),
    Url(String),
}

impl KeySource {
    fn name(&self) -> String {
        match self {
            KeySource::File(p) => p.display().to_string(),
            KeySource::Url(u) => u.clone(),
        }
    }
}

/// The largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: u64 = 1 << 20;
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct JwtVerifier {
    issuer: String,
    /// One validation per allowed algorithm: jsonwebtoken refuses a
    /// validation whose algorithms span key families.
    validations: Vec<(Algorithm, Validation)>,
    claims: ClaimMap,
    source: KeySource,
    keys: Arc<ArcSwap<Vec<Key>>>,
    refresh_every: Duration,
    last_refresh: Mutex<Instant>,
}

/// Whether a JWKS URL may be fetched: `https`, or plain `http` only to a
/// loopback address (a local IdP or a test), whose traffic never leaves the host.
pub fn jwks_url_allowed(url: &str) -> bool {
    if url.starts_with("https://") {
        return true;
    }
    let Some(rest) = url.strip_prefix("http://") else { return false };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn fetch_keys(source: &KeySource) -> Result<Vec<Key>, JwksError> {
    let name = source.name();
    let text = match source {
        KeySource::File(path) => std::fs::read_to_string(path).map_err(|e| JwksError::Read(name.clone(), e))?,
        KeySource::Url(url) => {
            let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(JWKS_FETCH_TIMEOUT)).build().into();
            let mut resp = agent.get(url).call().map_err(|e| JwksError::Parse(name.clone(), format!("fetch: {e}")))?;
            resp.body_mut().with_config().limit(MAX_JWKS_BYTES).read_to_string().map_err(|e| JwksError::Parse(name.clone(), format!("read: {e}")))?
        }
    };
    // A shared secret (`oct`) is a credential: it may come from a file the
    // operator controls, never over the network.
    parse_keys(&name, &text, matches!(source, KeySource::File(_)))
}

fn parse_keys(name: &str, text: &str, allow_secrets: bool) -> Result<Vec<Key>, JwksError> {
    let name = name.to_string();
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
        if family == Family::Hmac && !allow_secrets {
            tracing::warn!(jwks = %name, kid = ?jwk.common.key_id, "ignoring an HMAC (oct) key from a JWKS URL; shared secrets are accepted only from a file");
            continue;
        }
        let alg = jwk.common.key_algorithm.and_then(|a| Algorithm::try_from(a).ok());
        let key = DecodingKey::from_jwk(jwk).map_err(|e| JwksError::Parse(name.clone(), format!("key {:?}: {e}", jwk.common.key_id)))?;
        if let Some(kid) = &jwk.common.key_id {
            if keys.iter().any(|k: &Key| k.kid.as_ref() == Some(kid) && k.family == family) {
                tracing::warn!(jwks = %name, kid = %kid, "the JWKS lists this kid twice; tokens naming it are refused until it is unique");
            }
        }
        keys.push(Key { kid: jwk.common.key_id.clone(), family, alg, key });
    }
    Ok(keys)
}

impl JwtVerifier {
    /// A file source must load now (a bad file is a config mistake). A URL
    /// that cannot be fetched at start-up leaves the issuer with no keys, so
    /// its tokens are refused, and is fetched again on the next unknown `kid`.
    pub fn new(cfg: &JwtIssuer, source: KeySource) -> Result<JwtVerifier, JwksError> {
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
        let refresh_every = Duration::from_secs(cfg.jwks.refresh_s.max(1));
        let (keys, last) = match (fetch_keys(&source), &source) {
            (Ok(keys), _) => (keys, Instant::now()),
            (Err(e), KeySource::File(_)) => return Err(e),
            (Err(e), KeySource::Url(_)) => {
                tracing::error!(issuer = %cfg.issuer, error = %e, "cannot fetch the JWKS; this issuer's tokens are refused until it loads");
                (Vec::new(), Instant::now().checked_sub(refresh_every).unwrap_or_else(Instant::now))
            }
        };
        Ok(JwtVerifier {
            issuer: cfg.issuer.clone(),
            validations,
            claims: cfg.claims.clone(),
            source,
            keys: Arc::new(ArcSwap::from_pointee(keys)),
            refresh_every,
            last_refresh: Mutex::new(last),
        })
    }

    /// Reloads the keys, at most once per `refresh_s`, when a token names a
    /// `kid` we do not hold (keys rotate). A file is re-read at once (true
    /// when new keys are in place); a URL is fetched on a background thread,
    /// so the request that noticed is refused and later ones use the new keys.
    fn refresh(&self) -> bool {
        let Ok(mut last) = self.last_refresh.lock() else { return false };
        if last.elapsed() < self.refresh_every {
            return false;
        }
        *last = Instant::now();
        let (source, keys, issuer) = (self.source.clone(), self.keys.clone(), self.issuer.clone());
        let fetch = move || match fetch_keys(&source) {
            Ok(new) => {
                keys.store(Arc::new(new));
                true
            }
            Err(e) => {
                tracing::warn!(issuer = %issuer, error = %e, "JWKS refresh failed; keeping the old keys");
                false
            }
        };
        match &self.source {
            KeySource::File(_) => fetch(),
            KeySource::Url(_) => {
                if let Err(e) = std::thread::Builder::new().name("jwks-refresh".into()).spawn(move || {
                    fetch();
                }) {
                    tracing::warn!(error = %e, "cannot start a JWKS refresh");
                }
                false
            }
        }
    }

    /// The one key that may verify a token: of the token's algorithm
    /// family (and algorithm, when the key names one) and, when the token
    /// names a `kid`, with that kid. Two such keys — a JWKS that lists a
    /// kid twice, or a kid-less token with several candidates — verify
    /// nothing: the answer must not depend on the order of a key set.
    fn pick<'a>(&self, keys: &'a [Key], header: &Header) -> Option<&'a Key> {
        let fits = |k: &&Key| Some(k.family) == family_of(header.alg) && k.alg.is_none_or(|a| a == header.alg);
        let named = |k: &&Key| header.kid.as_ref().is_none_or(|kid| k.kid.as_deref() == Some(kid.as_str()));
        let mut it = keys.iter().filter(fits).filter(named);
        match (it.next(), it.next()) {
            (Some(only), None) => Some(only),
            _ => None,
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
            .ok_or_else(|| AuthnError::Jwt(format!("no single key for kid {:?} at {}", header.kid, self.issuer)))?;
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
            jwks: JwksSource { file: Some("jwks.json".into()), url: None, refresh_s: 300 },
            leeway_s: 5,
            claims: ClaimMap::default(),
        };
        JwtVerifier::new(&cfg, KeySource::File(PathBuf::from(FIXTURES).join("jwks.json"))).unwrap()
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
    fn jwks_urls_must_be_https_or_loopback() {
        for ok in ["https://idp.example.com/jwks", "http://127.0.0.1:9/j", "http://localhost/j", "http://[::1]:8/j", "http://127.8.0.1/j"] {
            assert!(jwks_url_allowed(ok), "{ok}");
        }
        for bad in ["http://idp.example.com/jwks", "http://10.0.0.1/j", "ftp://x", "file:///etc/passwd", "http://127.0.0.1@evil.com/j", "http://localhost.evil.com/j"] {
            assert!(!jwks_url_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn hmac_keys_are_taken_only_from_files() {
        let text = std::fs::read_to_string(PathBuf::from(FIXTURES).join("jwks.json")).unwrap();
        let from_file = parse_keys("f", &text, true).unwrap();
        let from_url = parse_keys("u", &text, false).unwrap();
        assert!(from_file.iter().any(|k| k.family == Family::Hmac));
        assert!(!from_url.iter().any(|k| k.family == Family::Hmac));
        assert_eq!(from_url.len() + 1, from_file.len());
    }

    #[test]
    fn a_kid_listed_twice_verifies_nothing() {
        let text = std::fs::read_to_string(PathBuf::from(FIXTURES).join("jwks.json")).unwrap();
        let mut set: serde_json::Value = serde_json::from_str(&text).unwrap();
        let rsa = set["keys"].as_array().unwrap().iter().find(|k| k["kid"] == "rsa-1").cloned().unwrap();
        let v = verifier();
        let header = |kid: Option<&str>| {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = kid.map(str::to_string);
            h
        };
        let once = parse_keys("f", &text, true).unwrap();
        assert!(v.pick(&once, &header(Some("rsa-1"))).is_some());
        set["keys"].as_array_mut().unwrap().push(rsa);
        let twice = parse_keys("f", &set.to_string(), true).unwrap();
        assert!(v.pick(&twice, &header(Some("rsa-1"))).is_none(), "whichever copy comes first must not decide");
        assert!(v.pick(&twice, &header(None)).is_none());
        assert!(v.pick(&twice, &header(Some("hs-1"))).is_none(), "an HS256-family kid never picks an RSA key");
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
