//! The one error body every process answers with: `{"error": "...", "code": "..."}`.

use serde::{Deserialize, Serialize};

/// Stable machine-readable error codes. Clients match on these, so a variant
/// is never renamed; each maps to exactly one HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    Conflict,
    PreconditionFailed,
    PayloadTooLarge,
    TooManyRequests,
    ConfigDrift,
    WorkerUnavailable,
    NotImplemented,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::Conflict => 409,
            ErrorCode::PreconditionFailed => 412,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::NotImplemented => 501,
            ErrorCode::ConfigDrift | ErrorCode::WorkerUnavailable => 503,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::ConfigDrift => "config_drift",
            ErrorCode::WorkerUnavailable => "worker_unavailable",
            ErrorCode::NotImplemented => "not_implemented",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The JSON error body. Extra context (such as the list of merge conflicts)
/// goes in `details`, which is omitted when empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: ErrorCode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, error: impl Into<String>) -> Self {
        ErrorBody { error: error.into(), code, details: None }
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising a struct of strings and a unit enum cannot fail.
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"error":"internal","code":"internal"}"#.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_serialise_as_the_contract_spells_them() {
        let body = ErrorBody::new(ErrorCode::WorkerUnavailable, "down");
        let v: serde_json::Value = serde_json::from_slice(&body.to_json_bytes()).unwrap();
        assert_eq!(v["code"], "worker_unavailable");
        assert_eq!(v["error"], "down");
        assert!(v.get("details").is_none());
        for code in [ErrorCode::BadRequest, ErrorCode::ConfigDrift, ErrorCode::PayloadTooLarge, ErrorCode::NotImplemented] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
        }
    }

    #[test]
    fn statuses() {
        assert_eq!(ErrorCode::ConfigDrift.status(), 503);
        assert_eq!(ErrorCode::Conflict.status(), 409);
        assert_eq!(ErrorCode::NotImplemented.status(), 501);
    }
}
