//! Request framing checks, made before a request is routed.
//!
//! What Pingora already does, per RFC 9112, before this runs: a request with
//! both `Transfer-Encoding` and `Content-Length` is framed by the transfer
//! encoding, its `Content-Length` is dropped (so the worker can never read a
//! different length) and its connection is closed after the answer; an
//! invalid or repeated `Content-Length` and a final encoding other than
//! `chunked` are refused with 400. What it does not do is bound the header
//! by less than 1 MiB, which is this module's job.

use pingora::http::RequestHeader;

/// At most this many bytes of request line and headers (nginx's default
/// `large_client_header_buffers` is 4 × 8 KiB; Pingora alone allows 1 MiB).
pub const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Why a request's framing is refused: the message of a 400.
#[derive(Debug, PartialEq, Eq)]
pub enum FramingError {
    /// The request line and headers are larger than [`MAX_HEADER_BYTES`].
    HeadersTooLarge(usize),
}

impl std::fmt::Display for FramingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FramingError::HeadersTooLarge(n) => write!(f, "the request line and headers are {n} bytes; at most {MAX_HEADER_BYTES} are accepted"),
        }
    }
}

/// Checks the framing of a request header.
pub fn check(req: &RequestHeader) -> Result<(), FramingError> {
    // Each header line is "name: value\r\n"; the path and query stand for the request line.
    let line = req.uri.path_and_query().map_or(0, |p| p.as_str().len());
    let size = line + req.headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum::<usize>();
    if size > MAX_HEADER_BYTES {
        return Err(FramingError::HeadersTooLarge(size));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/graphs/g/read", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn ordinary_requests_pass() {
        assert_eq!(check(&req(&[("content-length", "12"), ("host", "x")])), Ok(()));
        assert_eq!(check(&req(&[])), Ok(()));
        assert_eq!(check(&req(&[("x-ok", &"a".repeat(8 * 1024))])), Ok(()));
    }

    #[test]
    fn headers_are_bounded_in_total() {
        let big = "a".repeat(MAX_HEADER_BYTES);
        assert!(matches!(check(&req(&[("x-big", &big)])), Err(FramingError::HeadersTooLarge(_))));
        let many: Vec<(String, String)> = (0..200).map(|i| (format!("x-h{i}"), "v".repeat(80))).collect();
        let r = req(&many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect::<Vec<_>>());
        assert!(matches!(check(&r), Err(FramingError::HeadersTooLarge(_))), "many small headers add up");
        let long_query = RequestHeader::build("GET", format!("/graphs/g/snapshot?branch={}", "b".repeat(MAX_HEADER_BYTES)).as_bytes(), None).unwrap();
        assert!(matches!(check(&long_query), Err(FramingError::HeadersTooLarge(_))), "the request line counts");
    }
}
