//! `ApiError`: every failure leaves the worker as the contract's JSON error
//! body (`{"error", "code", "details"?}`), with one status per code.

use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;

use crate::contract::{ErrorBody, ErrorCode};
use crate::ingest::IngestError;
use crate::limits::{LimitExceeded, Limits};
use crate::query::QueryError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<Value>,
    /// Fields the contract puts beside `error` and `code` for one answer,
    /// such as a merge's `conflicts`.
    pub extra: Option<(&'static str, Value)>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into(), details: None, extra: None }
    }

    /// 409 for a merge that conflicts: `{"error", "code": "conflict", "conflicts": [...]}`.
    pub fn merge_conflicts(conflicts: &[crate::merge::Conflict]) -> ApiError {
        let mut e = ApiError::new(ErrorCode::Conflict, format!("the merge has {} conflict(s); nothing was written", conflicts.len()));
        e.extra = Some(("conflicts", serde_json::to_value(conflicts).unwrap_or_default()));
        e
    }

    /// 409 for a three-way merge whose source has a schema the target
    /// lacks: one conflict on `_schema`, the steps in `details`.
    pub fn schema_conflict(source: &str, target: &str, steps: &[crate::schema_change::Step]) -> ApiError {
        let message = format!(
            "{source} has a schema that {target} lacks, and a merge keeps {target}'s: apply {source}'s schema to {target} first \
             (GET /schema?branch={source}, then POST /schema/apply?branch={target}); nothing was written"
        );
        let conflict = crate::merge::Conflict { table: "_schema".into(), key: String::new(), kind: crate::merge::ConflictKind::DivergentUpdate };
        let mut e = ApiError::new(ErrorCode::Conflict, message);
        e.extra = Some(("conflicts", serde_json::to_value([conflict]).unwrap_or_default()));
        e.details = Some(serde_json::json!({ "steps": steps }));
        e
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
                ApiError { details: Some(e.details()), ..ApiError::new(ErrorCode::PayloadTooLarge, e.to_string()) }
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
        match self.extra {
            None => (status, Json(body)).into_response(),
            Some((key, value)) => {
                let mut v = serde_json::to_value(&body).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert(key.to_string(), value);
                }
                (status, Json(v)).into_response()
            }
        }
    }
}

/// A limit other than the body size is a 400 with the limit in `details`.
impl From<LimitExceeded> for ApiError {
    fn from(e: LimitExceeded) -> ApiError {
        ApiError { details: Some(e.details()), ..ApiError::new(ErrorCode::BadRequest, e.message) }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        if let StoreError::Expired { commit } = &e {
            // Gone, but a 404 like any commit that cannot be read (DESIGN.md's codes); `details` says why.
            let details = serde_json::json!({"reason": "expired", "commit_id": commit});
            return ApiError { details: Some(details), ..ApiError::new(ErrorCode::NotFound, e.to_string()) };
        }
        let code = match &e {
            StoreError::NotOnBranch { .. } | StoreError::NoBranch(_) => ErrorCode::NotFound,
            StoreError::BranchExists(_) => ErrorCode::Conflict,
            StoreError::BadBranch(_) | StoreError::MainIsPermanent => ErrorCode::BadRequest,
            StoreError::PreconditionFailed { .. } => ErrorCode::PreconditionFailed,
            StoreError::Poisoned | StoreError::Fenced(_) | StoreError::ForeignWrite(_) => ErrorCode::WorkerUnavailable,
            _ => ErrorCode::Internal,
        };
        if code == ErrorCode::Internal {
            // Storage errors carry paths, endpoints and, from an object
            // store, its error bodies (which may quote a request's signed
            // headers): they go to the log, and the client gets their kind.
            tracing::error!(error = %e, "internal error");
            return ApiError::new(code, "internal error; the worker's log says why");
        }
        ApiError::new(code, e.to_string())
    }
}

impl From<IngestError> for ApiError {
    fn from(e: IngestError) -> ApiError {
        match e {
            IngestError::Line(ref l) => {
                let line = l.line;
                ApiError { details: Some(serde_json::json!({"line": line})), ..ApiError::bad(e.to_string()) }
            }
            IngestError::TooLarge(l) => ApiError { details: Some(l.details()), ..ApiError::new(ErrorCode::PayloadTooLarge, l.to_string()) },
            IngestError::Body(_) => ApiError::bad(e.to_string()),
            IngestError::Store(s) => s.into(),
        }
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
