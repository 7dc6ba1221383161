//! `x-request-id`: one id per request, taken from the client when it is
//! well formed (so a caller can follow its own id through the logs) and
//! generated otherwise. It is set on the request before anything else, so
//! the worker receives it, every answer carries it back, and the audit line
//! records it.

use pingora::http::RequestHeader;

pub const HEADER: &str = "x-request-id";

/// 1 to 128 characters of `A-Z a-z 0-9 - _ . :`: safe in a log line and a
/// header, and long enough for a UUID, a ULID or a trace id.
pub fn well_formed(v: &[u8]) -> bool {
    (1..=128).contains(&v.len()) && v.iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// 128 random bits as 32 hex digits.
pub fn generate() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

/// The request's id: the client's single well-formed `x-request-id`, or a
/// new one. The request header is left holding exactly that id.
pub fn assign(req: &mut RequestHeader) -> String {
    let mut given = req.headers.get_all(HEADER).iter();
    let id = match (given.next(), given.next()) {
        (Some(v), None) if well_formed(v.as_bytes()) => String::from_utf8_lossy(v.as_bytes()).into_owned(),
        _ => generate(),
    };
    // Cannot fail: the id is ASCII without control characters.
    let _ = req.insert_header(HEADER, id.as_str());
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ids: &[&str]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/graphs", None).unwrap();
        for id in ids {
            r.append_header(HEADER, *id).unwrap();
        }
        r
    }

    #[test]
    fn a_well_formed_client_id_is_kept() {
        let mut r = req(&["01J9ZK5V3T-trace.1:a_b"]);
        assert_eq!(assign(&mut r), "01J9ZK5V3T-trace.1:a_b");
        assert_eq!(r.headers.get_all(HEADER).iter().count(), 1);
    }

    #[test]
    fn anything_else_gets_a_new_id() {
        for bad in [vec![], vec!["has space"], vec!["a\"b"], vec!["x"; 2], vec![&*"a".repeat(129)]] {
            let mut r = req(&bad);
            let id = assign(&mut r);
            assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{bad:?} -> {id}");
            assert_eq!(r.headers.get_all(HEADER).iter().map(|v| v.to_str().unwrap()).collect::<Vec<_>>(), [id.as_str()]);
        }
        assert_ne!(generate(), generate());
    }
}
