//! Fuzz target: the `Authorization` header and JWT parsing (`authn`).
//!
//! Short form: `cargo test -p omnigraph-gateway --test fuzz_authn`. Long
//! form: `cargo bolero test -p omnigraph-gateway --test fuzz_authn <target> --profile dev -T 60s`.
//!
//! The authenticator under test is the gateway's own: the dev static tokens
//! of `config/tokens.yaml` and one JWT issuer with the test JWKS
//! (`tests/fixtures/jwks.json`: an RSA key `rsa-1` and an HMAC key `hs-1`).
//!
//! Properties:
//! - `authorization_header` and `authenticate` never panic, whatever the
//!   header bytes (and however many `Authorization` headers there are);
//! - soundness: an accepted header is `Bearer` plus a listed static token,
//!   or a JWT that an independent check with `jsonwebtoken` accepts for the
//!   configured issuer, audience and keys, whose `sub` is the actor id; the
//!   actor id is always one the gateway may hand to a worker;
//! - completeness (structured target): a token signed with the right key and
//!   an allowed algorithm, with good `iss`, `aud`, `exp`, `nbf` and `sub`, is
//!   accepted as that `sub`; `alg: none` and foreign keys never are.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bolero::check;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};
use omnigraph_gateway::authn::jwt::KeySource;
use omnigraph_gateway::authn::{authorization_header, now_unix, valid_actor_id, Authenticator, JwtVerifier, StaticTokens};
use omnigraph_gateway::config::{ClaimMap, JwksSource, JwtIssuer};
use serde_json::{json, Value};

const SHORT: Duration = Duration::from_millis(2500);
const ISSUER: &str = "https://idp.test";
const AUDIENCE: &str = "omnigraph";
const LEEWAY: u64 = 30;
/// The dev tokens listed (as hashes) in config/tokens.yaml.
const STATIC: &[(&str, &str)] = &[("dev-admin-token", "alice"), ("dev-team-token", "tom"), ("dev-reader-token", "rita")];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures").join(name)).expect("fixture")
}

fn authenticator() -> &'static Authenticator {
    static A: OnceLock<Authenticator> = OnceLock::new();
    A.get_or_init(|| {
        let statics = StaticTokens::load(&root().join("config/tokens.yaml")).expect("config/tokens.yaml");
        let cfg = JwtIssuer {
            issuer: ISSUER.into(),
            audiences: vec![AUDIENCE.into()],
            algorithms: vec!["RS256".into(), "HS256".into(), "ES256".into()],
            jwks: JwksSource { file: Some("jwks.json".into()), url: None, refresh_s: 3600 },
            leeway_s: LEEWAY,
            claims: ClaimMap::default(),
        };
        let jwt = JwtVerifier::new(&cfg, KeySource::File(root().join("tests/fixtures/jwks.json"))).expect("verifier");
        Authenticator::new(statics, vec![jwt])
    })
}

/// An independent check of a token: the algorithms and keys configured,
/// `iss`, `aud`, `exp` (required) and `nbf` with leeway. Returns the claims.
fn independently_valid(token: &str) -> Option<serde_json::Map<String, Value>> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let key = match header.alg {
        Algorithm::HS256 => DecodingKey::from_secret(&fixture("hs-secret.txt")),
        Algorithm::RS256 => DecodingKey::from_rsa_pem(&fixture("jwt-rsa.pub.pem")).ok()?,
        _ => return None,
    };
    if header.kid.as_deref().is_some_and(|k| k != if header.alg == Algorithm::HS256 { "hs-1" } else { "rsa-1" }) {
        return None;
    }
    let mut v = Validation::new(header.alg);
    v.leeway = LEEWAY;
    v.validate_nbf = true;
    v.set_issuer(&[ISSUER]);
    v.set_audience(&[AUDIENCE]);
    v.set_required_spec_claims(&["exp", "iss", "aud"]);
    jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &v).ok().map(|d| d.claims)
}

/// Soundness of one answer for the header value `raw`.
fn check_answer(raw: &[u8]) {
    let Ok(actor) = authenticator().authenticate(Some(raw)) else { return };
    assert!(valid_actor_id(&actor.actor_id), "{:?}", actor.actor_id);
    let text = std::str::from_utf8(raw).expect("an accepted header is UTF-8");
    let (scheme, token) = text.split_once(' ').expect("an accepted header has a scheme");
    assert!(scheme.eq_ignore_ascii_case("bearer"), "{text:?}");
    let token = token.trim();
    if let Some((_, who)) = STATIC.iter().find(|(t, _)| *t == token) {
        assert_eq!(&*actor.actor_id, *who);
        return;
    }
    let claims = independently_valid(token).unwrap_or_else(|| panic!("accepted a token that does not verify: {token:?}"));
    assert_eq!(claims.get("sub").and_then(Value::as_str), Some(&*actor.actor_id), "{token}");
}

fn report(name: &str, n: &AtomicU64, t: Instant) {
    eprintln!("fuzz {name}: {} executions in {:.1} s", n.load(Ordering::Relaxed), t.elapsed().as_secs_f64());
}

/// Arbitrary bytes: split at NUL into one or more `Authorization` values
/// (those `http` accepts), each also authenticated on its own.
#[test]
fn authz_header_bytes() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    check!().with_test_time(SHORT).for_each(|bytes: &[u8]| {
        n.fetch_add(1, Ordering::Relaxed);
        let mut headers = http::HeaderMap::new();
        for part in bytes.split(|b| *b == 0) {
            if let Ok(v) = http::HeaderValue::from_bytes(part) {
                headers.append(http::header::AUTHORIZATION, v);
            }
        }
        match authorization_header(&headers) {
            Ok(Some(v)) => {
                assert_eq!(headers.get_all(http::header::AUTHORIZATION).iter().count(), 1);
                check_answer(v);
            }
            Ok(None) => assert!(headers.is_empty()),
            Err(_) => assert!(headers.get_all(http::header::AUTHORIZATION).iter().count() > 1),
        }
        check_answer(bytes);
    });
    report("authz_header_bytes", &n, t);
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..=c.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// A claim value chosen by the fuzzer: `None` leaves the claim out.
fn pick(choice: u8, options: &[Option<Value>]) -> Option<Value> {
    options[choice as usize % options.len()].clone()
}

/// Structure-aware: a JWT assembled from chosen header fields, claims,
/// signature and encoding, so most inputs get past the base64 and JSON
/// layers and exercise the checks themselves.
#[test]
fn jwt_structured() {
    let (n, t) = (AtomicU64::new(0), Instant::now());
    let now = now_unix();
    let hs = fixture("hs-secret.txt");
    let rsa = EncodingKey::from_rsa_pem(&fixture("jwt-rsa.pem")).expect("rsa key");
    check!().with_type::<([u8; 10], Vec<u8>, bool)>().with_test_time(SHORT).for_each(|(c, junk, scheme): &([u8; 10], Vec<u8>, bool)| {
        n.fetch_add(1, Ordering::Relaxed);
        let alg = pick(c[0], &[Some(json!("HS256")), Some(json!("RS256")), Some(json!("none")), Some(json!("ES256")), Some(json!("HS512")), Some(json!("")), Some(json!(7)), None]);
        let kid = pick(c[1], &[None, Some(json!("hs-1")), Some(json!("rsa-1")), Some(json!("nope")), Some(json!(1)), Some(json!(""))]);
        let sub = pick(c[2], &[Some(json!("jane")), Some(json!("")), Some(json!(5)), Some(json!("a\nb")), Some(json!("x".repeat(257))), Some(json!("zoë 🦀")), None]);
        let iss = pick(c[3], &[Some(json!(ISSUER)), Some(json!("https://evil.test")), Some(json!(1)), None]);
        let aud = pick(c[4], &[Some(json!(AUDIENCE)), Some(json!([AUDIENCE, "x"])), Some(json!(["x"])), Some(json!("x")), Some(json!(null)), None]);
        let exp = pick(c[5], &[Some(json!(now + 3600)), Some(json!(now - 3600)), Some(json!(now - 5)), Some(json!("soon")), Some(json!((now + 3600) as f64 + 0.5)), Some(json!(-1)), Some(json!(u64::MAX)), None]);
        let nbf = pick(c[6], &[None, Some(json!(now - 60)), Some(json!(now + 3600)), Some(json!("x"))]);
        let groups = pick(c[7], &[None, Some(json!(["admins", 3])), Some(json!("a b  c")), Some(json!({"x": 1}))]);
        let mut header = serde_json::Map::new();
        if let Some(a) = &alg {
            header.insert("alg".into(), a.clone());
        }
        if let Some(k) = kid {
            header.insert("kid".into(), k);
        }
        let mut claims = serde_json::Map::new();
        for (k, v) in [("sub", sub), ("iss", iss), ("aud", aud), ("exp", exp), ("nbf", nbf), ("groups", groups)] {
            if let Some(v) = v {
                claims.insert(k.into(), v);
            }
        }
        let signing_input = format!("{}.{}", b64url(Value::Object(header.clone()).to_string().as_bytes()), b64url(Value::Object(claims.clone()).to_string().as_bytes()));
        // The signature: right key, wrong key, junk, none, or the raw junk bytes as the whole token.
        let signed = match (c[8] % 5, alg.as_ref().and_then(Value::as_str)) {
            (0 | 1, Some("HS256")) => Some(jsonwebtoken::crypto::sign(signing_input.as_bytes(), &EncodingKey::from_secret(&hs), Algorithm::HS256)),
            (0 | 1, Some("RS256")) => Some(jsonwebtoken::crypto::sign(signing_input.as_bytes(), &rsa, Algorithm::RS256)),
            (2, _) => Some(jsonwebtoken::crypto::sign(signing_input.as_bytes(), &EncodingKey::from_secret(b"another secret"), Algorithm::HS256)),
            (3, _) => Some(Ok(b64url(junk))),
            _ => None,
        };
        let token = match signed {
            Some(Ok(sig)) => format!("{signing_input}.{sig}"),
            Some(Err(_)) | None => format!("{signing_input}."),
        };
        let token = match c[9] % 6 {
            0 => format!("{token}.{}", String::from_utf8_lossy(junk)),
            1 => token.replace('-', "+"),
            2 => format!(" {token} \t"),
            _ => token,
        };
        let header_value = format!("{} {token}", if *scheme { "Bearer" } else { "bEaReR" });
        check_answer(header_value.as_bytes());
        // Completeness: a clean token is accepted as its `sub`.
        let clean = c[8] % 5 <= 1
            && c[9] % 6 >= 2
            && matches!(alg.as_ref().and_then(Value::as_str), Some("HS256" | "RS256"))
            && header.get("kid").is_none_or(|k| k == if alg == Some(json!("HS256")) { "hs-1" } else { "rsa-1" })
            && claims.get("sub").and_then(Value::as_str).is_some_and(valid_actor_id)
            && claims.get("iss") == Some(&json!(ISSUER))
            && matches!(claims.get("aud"), Some(a) if *a == json!(AUDIENCE) || *a == json!([AUDIENCE, "x"]))
            && claims.get("exp").and_then(Value::as_u64).is_some_and(|e| e > now && e < u64::MAX)
            && claims.get("nbf").is_none_or(|v| v.as_u64().is_some_and(|nb| nb < now));
        if clean {
            let actor = authenticator().authenticate(Some(header_value.as_bytes())).unwrap_or_else(|e| panic!("a clean token was refused ({e}): {claims:?} {header:?}"));
            assert_eq!(Some(&*actor.actor_id), claims.get("sub").and_then(Value::as_str));
        }
        if alg == Some(json!("none")) || c[8] % 5 >= 2 {
            assert!(authenticator().authenticate(Some(header_value.as_bytes())).is_err(), "an unsigned or wrongly signed token was accepted: {token}");
        }
    });
    report("jwt_structured", &n, t);
}

/// Edges of the header grammar, pinned by name.
#[test]
fn regression_header_edges() {
    for raw in [
        &b"Bearer dev-admin-token"[..],
        b"bearer   dev-admin-token  ",
        b"Bearer\tdev-admin-token",
        b"Bearer  ",
        b"Bearer . ",
        b"Bearer ..",
        b"Bearer a.b.c",
        b"Bearer eyJhbGciOiJub25lIn0.e30.",
        b"Bearer eyJhbGciOiJIUzI1NiJ9.e30.e30",
        b"Basic ZGV2LWFkbWluLXRva2Vu",
        b"Bearer dev-admin-token\xff",
        b" Bearer dev-admin-token",
    ] {
        check_answer(raw);
    }
    assert_eq!(&*authenticator().authenticate(Some(b"bearer   dev-admin-token  ")).unwrap().actor_id, "alice");
}
