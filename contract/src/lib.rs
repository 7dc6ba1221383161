//! The wire contract shared by `omnigraph-worker` and `omnigraph-gateway`.
//!
//! Everything here is pure: no I/O, no Lance, no async. Both binaries depend
//! on this crate and never on each other, so a change here is a change to
//! both at once. See DESIGN.md sections 1, 4, 5 and 7.

pub mod actor;
pub mod diagnostic;
pub mod error;
pub mod headers;
pub mod ids;
pub mod limits;
pub mod object_uri;
pub mod paths;
pub mod schema;

pub use actor::{AuthSource, ResolvedActor, Scope};
pub use error::{ErrorBody, ErrorCode};
pub use ids::{BranchName, GraphId, IdError};
pub use schema::{EdgeType, GraphSchema, NodeType, PropType, Property, SchemaError};
pub mod openapi;
pub mod routes;

pub use routes::{Action, BranchFrom, RouteId, WorkerRoute};
