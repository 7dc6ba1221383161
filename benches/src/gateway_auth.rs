//! The gateway's per-request identity and policy work, in-process, without I/O:
//! - authn (static token) + authz (Cedar) with 100 policies in the graph's set,
//! - a cached JWT, and an uncached RS256 JWT (every token new).
//!
//! Run with `cargo bench --bench gateway_auth` (release). Timings are per
//! call, sampled individually; p50 and p99 are reported.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use omnigraph_e2e::{percentile, sha256_hex, write_file};
use omnigraph_gateway::authn::jwt::KeySource;
use omnigraph_gateway::authn::{Authenticator, JwtVerifier, StaticTokens};
use omnigraph_contract::{BranchName, ResolvedActor};
use omnigraph_gateway::authz::{ActionSets, Engine, RequestContext, Resource, BUILTIN_SCHEMA};
use omnigraph_gateway::decision::{decide_with, Branches, GraphPolicies};
use omnigraph_gateway::lifecycle::Requested;
use omnigraph_gateway::config::{ClaimMap, JwksSource, JwtIssuer};
use omnigraph_gateway::route::Action;
use serde_json::json;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");

fn report(name: &str, samples: &mut [Duration], target: &str) {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!("| {name} | {} | {:.2} | {:.2} | {target} |", samples.len(), us(percentile(samples, 50.0)), us(percentile(samples, 99.0)));
}

fn main() {
    let tmp = tempfile::tempdir().expect("tempdir");
    // 100 static tokens; the one we use is the last.
    let mut tokens = String::from("tokens:\n");
    for i in 0..100 {
        tokens.push_str(&format!("  - actor_id: user{i}\n    sha256: {}\n    groups: [team{}]\n    tenant: acme\n", sha256_hex(&format!("token-{i}")), i % 10));
    }
    let tokens_path = write_file(tmp.path(), "tokens.yaml", &tokens);
    let jwt_cfg = JwtIssuer {
        issuer: "https://idp.test".into(),
        audiences: vec!["omnigraph".into()],
        algorithms: vec!["RS256".into()],
        jwks: JwksSource { file: Some("jwks.json".into()), url: None, refresh_s: 300 },
        leeway_s: 30,
        claims: ClaimMap::default(),
    };
    let authn = Authenticator::new(
        StaticTokens::load(&tokens_path).expect("tokens"),
        vec![JwtVerifier::new(&jwt_cfg, KeySource::File(Path::new(FIXTURES).join("jwks.json"))).expect("jwks")],
    );

    // 100 policies: server (admins, tenant forbid) + 98 graph policies over groups and actions.
    let engine = Engine::new("omnigraph.cedarschema", BUILTIN_SCHEMA).expect("schema");
    let server = engine
        .parse_file(
            "server.cedar",
            "permit (principal in Omnigraph::Group::\"admins\", action, resource);\n\
             forbid (principal, action, resource is Omnigraph::Graph) when { principal has tenant && resource has tenant && principal.tenant != resource.tenant };\n",
        )
        .expect("server policies");
    let actions = ["read", "change", "export", "schema_apply", "branch_create", "branch_delete", "branch_merge"];
    let mut graph_src = String::new();
    for i in 0..98 {
        let a = actions[i % actions.len()];
        graph_src.push_str(&format!(
            "permit (principal in Omnigraph::Group::\"team{}\", action == Omnigraph::Action::\"{a}\", resource) when {{ context has branch_protected && !context.branch_protected }};\n",
            i % 10
        ));
    }
    let graph = engine.parse_file("alpha.cedar", &graph_src).expect("graph policies");
    let sets = engine.slice(server.iter().chain(&graph)).expect("slice");
    assert_eq!(sets.policy_count, 100);
    let ctx = RequestContext { branch: Some("dev"), branch_protected: Some(false), ..Default::default() };
    let resource = Resource::Graph { id: "alpha", tenant: Some("acme") };

    println!("## gateway identity and policy work (release, in-process)\n");
    println!("| measurement | samples | p50 µs | p99 µs | target |");
    println!("|---|---|---|---|---|");

    let header = b"Bearer token-99".to_vec();
    let mut s = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let actor = authn.authenticate(Some(&header)).expect("static token");
        let d = engine.decide(&sets, &actor, Action::Change, resource, &ctx);
        s.push(t.elapsed());
        assert!(d.allowed);
    }
    report("static token + Cedar decision, 100 policies", &mut s, "p50 <= 10");

    let mut s = Vec::with_capacity(20_000);
    let actor = authn.authenticate(Some(&header)).expect("static token");
    for _ in 0..20_000 {
        let t = Instant::now();
        let d = engine.decide(&sets, &actor, Action::Change, resource, &ctx);
        s.push(t.elapsed());
        assert!(d.allowed);
    }
    report("Cedar decision alone, 100 policies", &mut s, "-");

    let empty = engine.slice(std::iter::empty()).expect("empty");
    let mut s = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let d = engine.decide(&empty, &actor, Action::Change, resource, &ctx);
        s.push(t.elapsed());
        assert!(!d.allowed);
    }
    report("Cedar request and entities only (empty policy set)", &mut s, "-");

    let full = cedar_full_set(&server, &graph);
    let mut s = Vec::with_capacity(5_000);
    for _ in 0..5_000 {
        let t = Instant::now();
        let d = engine.decide(&full, &actor, Action::Change, resource, &ctx);
        s.push(t.elapsed());
        assert!(d.allowed);
    }
    report("Cedar decision, 100 policies, NOT sliced (for comparison)", &mut s, "-");

    shadow_cost(&engine, &server, &graph_src, &sets, &actor);

    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(Path::new(FIXTURES).join("jwt-rsa.pem")).expect("pem")).expect("key");
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("rsa-1".into());
    let exp = omnigraph_gateway::authn::now_unix() + 3600;
    let make = |jti: usize| {
        let claims = json!({"sub": "jane", "iss": "https://idp.test", "aud": "omnigraph", "exp": exp, "jti": jti, "groups": ["team1"]});
        format!("Bearer {}", jsonwebtoken::encode(&h, &claims, &key).expect("encode"))
    };
    let cached = make(0);
    authn.authenticate(Some(cached.as_bytes())).expect("jwt");
    let mut s = Vec::with_capacity(20_000);
    for _ in 0..20_000 {
        let t = Instant::now();
        let a = authn.authenticate(Some(cached.as_bytes())).expect("jwt");
        s.push(t.elapsed());
        std::hint::black_box(a);
    }
    report("JWT, cached", &mut s, "p50 <= 5");

    let fresh: Vec<String> = (1..=2_000).map(make).collect();
    let mut s = Vec::with_capacity(fresh.len());
    for tok in &fresh {
        let t = Instant::now();
        let a = authn.authenticate(Some(tok.as_bytes())).expect("jwt");
        s.push(t.elapsed());
        std::hint::black_box(Arc::clone(&a));
    }
    report("JWT RS256, uncached (verify + cache insert)", &mut s, "p50 <= 100");
}

/// What a shadow set adds to a request: the proxy decides every request by
/// the live set and then by the candidate set through the same function
/// (`decision::decide_with`), keeping the candidate's decision only when it
/// differs. The candidate here is the live graph set plus one rule that
/// forbids the benchmark actor's team its change on `dev`, so every sample
/// takes the "differs" path. Live-only and live+shadow samples alternate,
/// so both see the same machine noise.
fn shadow_cost(engine: &Engine, server: &[cedar_policy::Policy], graph_src: &str, live: &ActionSets, actor: &ResolvedActor) {
    let candidate_src = format!("{graph_src}forbid (principal in Omnigraph::Group::\"team9\", action == Omnigraph::Action::\"change\", resource) when {{ context has branch && context.branch == \"dev\" }};\n");
    let candidate = engine.parse_file("alpha.cedar", &candidate_src).expect("candidate policies");
    let shadow = engine.slice(server.iter().chain(&candidate)).expect("slice candidate");
    let dev = BranchName::parse("dev").expect("branch");
    let branches = Branches { branch: Some(&dev), ..Branches::default() };
    let protected = |b: &BranchName| b.as_str() == "main";
    let requested = Requested::default();
    let decide = |sets: &ActionSets| {
        let graph = GraphPolicies { id: "alpha", tenant: Some("acme"), sets, protected: &protected };
        decide_with(engine, sets, Some(&graph), Some("alpha"), actor, Action::Change, branches, &requested)
    };
    let (mut live_s, mut both_s) = (Vec::with_capacity(20_000), Vec::with_capacity(20_000));
    for _ in 0..20_000 {
        let t = Instant::now();
        let v = decide(live);
        live_s.push(t.elapsed());
        assert!(v.decision.allowed);

        let t = Instant::now();
        let v = decide(live);
        let differs = Some(decide(&shadow)).filter(|sv| sv.decision.allowed != v.decision.allowed);
        both_s.push(t.elapsed());
        assert!(differs.is_some_and(|sv| !sv.decision.allowed), "the candidate denies what the live set allows");
    }
    let p50 = |s: &mut [Duration]| percentile(s, 50.0).as_secs_f64() * 1e6;
    let added = p50(&mut both_s) - p50(&mut live_s);
    report("live decision as the proxy makes it (decide_with), 100 policies", &mut live_s, "-");
    report("live + shadow decision (100 + 101 policies, they differ)", &mut both_s, "-");
    println!("| what the shadow set adds, p50 | | {added:.2} | | p50 <= 10 |");
}

/// The same 100 policies with every action seeing every policy: what slicing saves.
fn cedar_full_set(server: &[cedar_policy::Policy], graph: &[cedar_policy::Policy]) -> omnigraph_gateway::authz::ActionSets {
    omnigraph_gateway::authz::ActionSets::unsliced(server.iter().chain(graph)).expect("unsliced set")
}
