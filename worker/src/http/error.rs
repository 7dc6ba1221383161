//! `ApiError`: every failure leaves the worker as the contract's JSON error
//! body (`{"error", "code", "details"?}`), with one status per code.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::contract::{ErrorBody, ErrorCode};
use crate::limits::{LimitExceeded, Limits};
use crate::query::QueryError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), details: None }
    }

    pub fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(ErrorCode::BadRequest, message)
    }

    /// The request body, or 413 naming `limits.max_body_bytes` when it is too
    /// large. Handlers call this rather than a `From`, because the message
    /// needs the limit this worker runs with.
    pub fn body(limits: &Limits, body: Result<axum::body::Bytes, BytesRejection>) -> Result<axum::body::Bytes, ApiError> {
        body.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                let e = limits.body_too_large();
                ApiError { code: ErrorCode::PayloadTooLarge, message: e.to_string(), details: Some(e.details()) }
            } else {
                ApiError::bad(r.body_text())
            }
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if self.code == ErrorCode::Internal {
            tracing::error!(code = self.code.as_str(), error = %self.message, "request failed");
        }
        let body = ErrorBody { error: self.message, code: self.code, details: self.details };
        (status, Json(body)).into_response()
    }
}

/// A limit other than the body size is a 400 with the limit in `details`.
impl From<LimitExceeded> for ApiError {
    fn from(e: LimitExceeded) -> ApiError {
        ApiError { code: ErrorCode::BadRequest, details: Some(e.details()), message: e.message }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        let code = match &e {
            StoreError::NotOnBranch { .. } => ErrorCode::NotFound,
            StoreError::Poisoned => ErrorCode::WorkerUnavailable,
            _ => ErrorCode::Internal,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        match e {
            QueryError::BadRequest(m) => ApiError::bad(m),
            QueryError::Limit(l) => l.into(),
            QueryError::Store(s) => s.into(),
        }
    }
}
