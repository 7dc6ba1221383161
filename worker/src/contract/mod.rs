//! The wire contract shared by `omnigraph-worker` and `omnigraph-gateway`.
//!
//! Everything here is pure: no I/O, no Lance, no async. The gateway depends on
//! this module with the worker's default features turned off, so a change here
//! is a change to both binaries at once. See DESIGN.md sections 1, 4 and 5.

pub mod actor;
pub mod error;
pub mod headers;
pub mod ids;
pub mod paths;
pub mod schema;

pub use actor::{AuthSource, ResolvedActor, Scope};
pub use error::{ErrorBody, ErrorCode};
pub use ids::{BranchName, GraphId, IdError};
pub use schema::{EdgeType, GraphSchema, NodeType, PropType, Property, SchemaError};
