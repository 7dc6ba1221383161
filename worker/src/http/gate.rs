//! The worker key and the actor, checked once for every request by one axum
//! middleware layer, so no handler can forget it (DESIGN.md section 1).
//!
//! - Started with `OMNIGRAPH_WORKER_KEY`, the worker answers 401
//!   `unauthorized` to any request whose `x-omnigraph-worker-key` does not
//!   match (compared in constant time); only `GET /healthz` is open, so the
//!   supervisor can probe it. A keyed request must name its actor in
//!   `x-omnigraph-actor`; a missing or malformed one is 400, never a silent
//!   `local`, because a commit's actor is an audit record.
//! - Started without a key (a developer's direct run), every request is
//!   actor `local` and identity headers are ignored: nothing vouches for them.
//!
//! The request id (`x-request-id`) travels with the actor as the request's
//! [`Author`], so every row a write appends records both. The gateway always
//! sends a well-formed one; a request without one, or with a malformed one
//! or several, records none (`null`), never refused and never invented here:
//! an id that the caller did not send would match nothing in its logs.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;
use crate::contract::headers::{request_id_well_formed, ACTOR_HEADER, LOCAL_ACTOR, REQUEST_ID_HEADER, WORKER_KEY_HEADER};
use crate::contract::ErrorCode;
use crate::store::Author;

/// The longest actor id a worker records, in bytes.
pub const MAX_ACTOR_LEN: usize = 256;

/// The middleware: admits the request and puts its [`Author`] in the
/// request's extensions, or answers.
pub async fn gate(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    match admit(s.worker_key.as_deref(), req.method(), req.uri().path(), req.headers()) {
        Ok(author) => {
            req.extensions_mut().insert(author);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// The decision, without axum plumbing, so it can be tested directly.
pub fn admit(key: Option<&[u8]>, method: &Method, path: &str, headers: &HeaderMap) -> Result<Author, ApiError> {
    let author = |actor: String| Author { actor_id: actor, request_id: request_id(headers) };
    let Some(key) = key else { return Ok(author(LOCAL_ACTOR.to_string())) };
    if method == Method::GET && path == "/healthz" {
        return Ok(author(LOCAL_ACTOR.to_string()));
    }
    let presented = headers.get(WORKER_KEY_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
    if !bool::from(presented.ct_eq(key)) {
        return Err(ApiError::new(ErrorCode::Unauthorized, format!("this worker needs a valid {WORKER_KEY_HEADER} header")));
    }
    actor_header(headers).map(author)
}

/// `x-request-id`: exactly one, well formed (the gateway's rule), or none.
fn request_id(headers: &HeaderMap) -> Option<String> {
    let mut values = headers.get_all(REQUEST_ID_HEADER).iter();
    match (values.next(), values.next()) {
        (None, _) => None,
        (Some(v), None) if request_id_well_formed(v.as_bytes()) => Some(String::from_utf8_lossy(v.as_bytes()).into_owned()),
        _ => {
            tracing::debug!("{REQUEST_ID_HEADER} is malformed or repeated; the request records none");
            None
        }
    }
}

/// `x-omnigraph-actor`: exactly one, UTF-8 (an actor id from a JWT claim may
/// be any Unicode), 1 to 256 bytes, no control characters (it is logged).
fn actor_header(headers: &HeaderMap) -> Result<String, ApiError> {
    let mut values = headers.get_all(ACTOR_HEADER).iter();
    let (Some(v), None) = (values.next(), values.next()) else {
        return Err(ApiError::bad(format!("a keyed request needs exactly one {ACTOR_HEADER} header")));
    };
    // Not `HeaderValue::to_str`, which refuses every non-ASCII byte.
    let actor = std::str::from_utf8(v.as_bytes()).map_err(|_| ApiError::bad(format!("{ACTOR_HEADER} is not valid UTF-8")))?;
    if actor.is_empty() || actor.len() > MAX_ACTOR_LEN {
        return Err(ApiError::bad(format!("{ACTOR_HEADER} must be 1 to {MAX_ACTOR_LEN} bytes, got {}", actor.len())));
    }
    if actor.chars().any(char::is_control) {
        return Err(ApiError::bad(format!("{ACTOR_HEADER} contains a control character")));
    }
    Ok(actor.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_bytes(v).unwrap());
        }
        h
    }

    fn code(r: Result<Author, ApiError>) -> ErrorCode {
        r.unwrap_err().code
    }

    fn actor(r: Result<Author, ApiError>) -> String {
        r.unwrap().actor_id
    }

    const KEY: &[u8] = b"k-123";

    #[test]
    fn without_a_key_everyone_is_local() {
        let h = headers(&[(ACTOR_HEADER, b"alice"), (WORKER_KEY_HEADER, b"whatever")]);
        assert_eq!(actor(admit(None, &Method::POST, "/change", &h)), "local");
    }

    #[test]
    fn with_a_key_only_get_healthz_is_open() {
        let none = HeaderMap::new();
        assert!(admit(Some(KEY), &Method::GET, "/healthz", &none).is_ok());
        assert_eq!(code(admit(Some(KEY), &Method::POST, "/healthz", &none)), ErrorCode::Unauthorized);
        assert_eq!(code(admit(Some(KEY), &Method::GET, "/snapshot", &none)), ErrorCode::Unauthorized);
        assert_eq!(code(admit(Some(KEY), &Method::GET, "/nowhere", &none)), ErrorCode::Unauthorized);
        for wrong in [&b"k-124"[..], b"k-12", b"k-1234", b""] {
            let h = headers(&[(WORKER_KEY_HEADER, wrong), (ACTOR_HEADER, b"alice")]);
            assert_eq!(code(admit(Some(KEY), &Method::POST, "/change", &h)), ErrorCode::Unauthorized, "{wrong:?}");
        }
        let h = headers(&[(WORKER_KEY_HEADER, KEY), (ACTOR_HEADER, b"alice")]);
        assert_eq!(actor(admit(Some(KEY), &Method::POST, "/change", &h)), "alice");
    }

    #[test]
    fn a_keyed_request_needs_a_well_formed_actor() {
        let with = |actor: &[u8]| headers(&[(WORKER_KEY_HEADER, KEY), (ACTOR_HEADER, actor)]);
        let ok = |h: &HeaderMap| admit(Some(KEY), &Method::POST, "/change", h);
        assert_eq!(actor(ok(&with("zoë 🦀".as_bytes()))), "zoë 🦀", "any UTF-8");
        assert_eq!(actor(ok(&with(&[b'a'; 256]))).len(), 256);
        // (DEL and other ASCII controls but tab never get past the HTTP parser.)
        for bad in [&b""[..], &[b'a'; 257], b"\xff\xfe", b"a\tb", "a\u{85}b".as_bytes(), "a\u{9f}".as_bytes()] {
            assert_eq!(code(ok(&with(bad))), ErrorCode::BadRequest, "{bad:?}");
        }
        assert_eq!(code(ok(&headers(&[(WORKER_KEY_HEADER, KEY)]))), ErrorCode::BadRequest, "missing");
        let two = headers(&[(WORKER_KEY_HEADER, KEY), (ACTOR_HEADER, b"alice"), (ACTOR_HEADER, b"bob")]);
        assert_eq!(code(ok(&two)), ErrorCode::BadRequest, "ambiguous");
    }

    #[test]
    fn the_request_id_travels_with_the_actor_when_well_formed() {
        let rid = |pairs: &[(&'static str, &[u8])]| admit(None, &Method::POST, "/change", &headers(pairs)).unwrap().request_id;
        assert_eq!(rid(&[(REQUEST_ID_HEADER, b"my-req-1")]), Some("my-req-1".into()));
        assert_eq!(rid(&[]), None);
        for bad in [&b"has space"[..], b"", &[b'a'; 129], b"a/b"] {
            assert_eq!(rid(&[(REQUEST_ID_HEADER, bad)]), None, "{bad:?}");
        }
        assert_eq!(rid(&[(REQUEST_ID_HEADER, b"a"), (REQUEST_ID_HEADER, b"b")]), None, "ambiguous");
        let keyed = headers(&[(WORKER_KEY_HEADER, KEY), (ACTOR_HEADER, b"alice"), (REQUEST_ID_HEADER, b"0123abcd")]);
        let a = admit(Some(KEY), &Method::POST, "/change", &keyed).unwrap();
        assert_eq!((a.actor_id.as_str(), a.request_id.as_deref()), ("alice", Some("0123abcd")));
    }
}
