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
/// The request's id. The gateway keeps a client's well-formed one or makes
/// one, and sends it to the worker, which records it in the commit it writes.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A well-formed request id: 1 to 128 characters of `A-Z a-z 0-9 - _ . :`,
/// safe in a log line and a header, long enough for a UUID, a ULID or a trace id.
pub fn request_id_well_formed(v: &[u8]) -> bool {
    (1..=128).contains(&v.len()) && v.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        assert!(request_id_well_formed(b"01J9ZK5V3T-trace.1:a_b"));
        assert!(request_id_well_formed(&[b'a'; 128]));
        for bad in [&b""[..], &[b'a'; 129], b"has space", b"a\"b", b"caf\xc3\xa9", b"a/b"] {
            assert!(!request_id_well_formed(bad), "{bad:?}");
        }
    }
}

/// The exit code of `omnigraph-worker serve --init` when the location is not
/// empty: it wrote nothing there, so whoever started it must not delete
/// what is there (the gateway's undo of a failed create relies on it).
pub const EXIT_NOT_EMPTY: i32 = 17;
