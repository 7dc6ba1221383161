//! `omnigraph-worker`: one typed property graph on Lance, served over HTTP.
//!
//! `contract` is the pure wire contract the gateway shares. Everything else
//! does I/O and sits behind the default `storage` feature.

pub mod contract;

#[cfg(feature = "storage")]
pub mod change;
#[cfg(feature = "storage")]
pub mod http;
#[cfg(feature = "storage")]
pub mod limits;
#[cfg(feature = "storage")]
pub mod query;
#[cfg(feature = "storage")]
pub mod serve;
#[cfg(feature = "storage")]
pub mod store;
