//! `omnigraph-gateway`: a policy-first authorization gateway in front of
//! graph workers. The request path reads top to bottom in `proxy`: `route`,
//! `authn`, `authz` (via `decision`), then `admin` or `upstream`, and `audit`
//! with `metrics` after the response.

pub mod admin;
pub mod app;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod catalog;
pub mod catalog_sync;
pub mod cli_graphs;
pub mod config;
pub mod config_store;
pub mod containment;
pub mod decision;
pub mod drain;
pub mod etcd_catalog;
pub mod explain;
pub mod fairness;
pub mod framing;
pub mod hashed_cache;
pub mod header_clock;
pub mod lifecycle;
pub mod metrics;
pub mod object_storage;
pub mod policy_test;
pub mod proxy;
pub mod registry;
pub mod request_id;
pub mod respond;
pub mod route;
pub mod serve;
pub mod shadow;
pub mod supervisor;
pub mod tls;
pub mod upstream;

/// The OpenAPI description served at `/openapi.json`, generated once from
/// the contract's route table (the same text as `docs/openapi.json`).
pub fn openapi() -> &'static str {
    static DOC: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DOC.get_or_init(|| omnigraph_contract::openapi::render(env!("CARGO_PKG_VERSION")))
}
