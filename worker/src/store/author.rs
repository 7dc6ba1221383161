//! Who makes a write, and in which request: what every row a write appends
//! (a commit, a ref event) records about its origin.

/// The actor (from the gateway's `x-omnigraph-actor`, or `local`) and the
/// request id (`x-request-id`, when the request carried a well-formed one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Author {
    pub actor_id: String,
    pub request_id: Option<String>,
}

impl Author {
    /// `actor_id`, in no particular request (tests, `--init`).
    pub fn new(actor_id: impl Into<String>) -> Author {
        Author { actor_id: actor_id.into(), request_id: None }
    }

    pub fn with_request_id(self, request_id: Option<String>) -> Author {
        Author { request_id, ..self }
    }
}
