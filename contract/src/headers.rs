//! Header and environment names that cross the gateway → worker boundary.

/// The per-worker secret the gateway proves itself with. Sent on every proxied request.
pub const WORKER_KEY_HEADER: &str = "x-omnigraph-worker-key";
/// The actor the gateway resolved. Trusted by a worker only alongside a matching key.
pub const ACTOR_HEADER: &str = "x-omnigraph-actor";
/// A legacy identity header some clients send; the gateway strips it.
pub const LEGACY_ACTOR_HEADER: &str = "x-actor-id";
/// Every header with this prefix that a client sends is stripped by the gateway.
pub const RESERVED_HEADER_PREFIX: &str = "x-omnigraph-";
/// The environment variable that carries the worker key (never argv, which `ps` shows).
pub const WORKER_KEY_ENV: &str = "OMNIGRAPH_WORKER_KEY";
/// Set by the gateway on the workers it starts: their log lines go into the
/// gateway's log, which stamps them, so a worker then writes none of its own.
pub const LOG_BARE_ENV: &str = "OMNIGRAPH_LOG_BARE";
/// The actor recorded when no trusted gateway vouches for the caller.
pub const LOCAL_ACTOR: &str = "local";
