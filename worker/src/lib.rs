//! `omnigraph-worker`: one typed property graph on Lance, served over HTTP.
//!
//! The wire contract it shares with the gateway lives in its own crate,
//! `omnigraph-contract`, re-exported here as `contract`.

pub use omnigraph_contract as contract;

pub mod change;
pub mod export;
pub mod http;
pub mod ingest;
pub mod limits;
pub mod maintenance;
pub mod memory;
pub mod merge;
pub mod query;
pub mod schema_change;
pub mod serve;
pub mod store;
