//! Errors of the local engine, as BigQuery reports them (`reason`, HTTP status).
//!
//! Every error the engine returns to a client carries one of BigQuery's reasons so that the
//! official clients raise the exception they would raise against BigQuery.

/// What went wrong, in BigQuery's words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400 `invalidQuery`: the query is wrong or uses what the engine does not support.
    Invalid,
    /// 404 `notFound`: a table, dataset, job or project the source does not have.
    NotFound,
    /// 403 `accessDenied`: writes (the engine is read-only).
    ReadOnly,
    /// 400 `invalid`: a malformed request (not the query).
    BadRequest,
    /// 500 `internalError`: the engine itself failed.
    Internal,
}

/// An error with the message the client sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct EngineError {
    pub kind: ErrorKind,
    pub message: String,
}

impl EngineError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }
    pub fn read_only(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ReadOnly, message)
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::BadRequest, message)
    }
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, message)
    }
    fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        EngineError {
            kind,
            message: message.into(),
        }
    }

    /// BigQuery's `reason`.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            ErrorKind::Invalid => "invalidQuery",
            ErrorKind::NotFound => "notFound",
            ErrorKind::ReadOnly => "accessDenied",
            ErrorKind::BadRequest => "invalid",
            ErrorKind::Internal => "internalError",
        }
    }

    /// The HTTP status BigQuery answers with.
    pub fn status(&self) -> u16 {
        match self.kind {
            ErrorKind::Invalid | ErrorKind::BadRequest => 400,
            ErrorKind::NotFound => 404,
            ErrorKind::ReadOnly => 403,
            ErrorKind::Internal => 500,
        }
    }

    /// The error as a job's `errorResult`.
    pub fn error_proto(&self) -> serde_json::Value {
        serde_json::json!({
            "reason": self.reason(),
            "location": "query",
            "message": self.message,
        })
    }

    /// BigQuery's error envelope (`{"error": {...}}`).
    pub fn envelope(&self) -> serde_json::Value {
        let status = match self.status() {
            400 => "INVALID_ARGUMENT",
            403 => "PERMISSION_DENIED",
            404 => "NOT_FOUND",
            _ => "INTERNAL",
        };
        serde_json::json!({
            "error": {
                "code": self.status(),
                "message": self.message,
                "errors": [{"message": self.message, "domain": "global", "reason": self.reason()}],
                "status": status,
            }
        })
    }
}
