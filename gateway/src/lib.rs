//! `omnigraph-gateway`: a policy-first authorization gateway in front of
//! graph workers. The request path reads top to bottom: `route`, `authn`,
//! `authz`, `proxy`, `audit`.

pub mod app;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod cli_graphs;
pub mod config;
pub mod config_store;
pub mod containment;
pub mod drain;
pub mod explain;
pub mod lifecycle;
pub mod metrics;
pub mod proxy;
pub mod registry;
pub mod respond;
pub mod route;
pub mod serve;
pub mod supervisor;

/// The OpenAPI description served at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");
