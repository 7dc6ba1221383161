//! Writing the gateway's own responses (management routes and errors).

use bytes::Bytes;
use omnigraph_contract::{ErrorBody, ErrorCode};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Writes a complete response. When the request had a body we did not read,
/// the connection is not reused, so leftover bytes never become a request.
pub async fn send(session: &mut Session, status: u16, content_type: &str, body: Bytes, headers: &[(&'static str, String)]) -> Result<()> {
    let mut h = ResponseHeader::build(status, Some(4 + headers.len()))?;
    h.insert_header("content-type", content_type)?;
    h.insert_header("content-length", body.len().to_string())?;
    for (k, v) in headers {
        h.insert_header(*k, v.as_str())?;
    }
    if let Some(id) = session.req_header().headers.get(crate::request_id::HEADER) {
        h.insert_header(crate::request_id::HEADER, id.clone())?;
    }
    if !session.is_body_empty() && !session.is_body_done() {
        session.set_keepalive(None);
    }
    session.write_response_header(Box::new(h), false).await?;
    session.write_response_body(Some(body), true).await
}

pub async fn json(session: &mut Session, status: u16, value: &serde_json::Value) -> Result<()> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    send(session, status, "application/json", Bytes::from(body), &[]).await
}

/// An error answer in the contract's shape, with optional `details` and extra headers.
pub async fn error(session: &mut Session, code: ErrorCode, message: impl Into<String>, details: Option<serde_json::Value>, headers: &[(&'static str, String)]) -> Result<()> {
    let mut e = ErrorBody::new(code, message);
    e.details = details;
    send(session, code.status(), "application/json", Bytes::from(e.to_json_bytes()), headers).await
}
