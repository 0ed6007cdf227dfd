//! The one error type of the HTTP edge, rendered as the contract's JSON shape:
//! `{"error": {"code": "snake_case", "message": "…", "field": "path" | null}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kizuna_core::ValidationErrors;
use kizuna_store::StoreError;
use serde_json::{Value, json};

/// An error answered to an HTTP client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable snake_case code.
    pub code: &'static str,
    /// Human sentence.
    pub message: String,
    /// The offending field's path, if one.
    pub field: Option<String>,
    /// Further details (every validation problem, every bad row of an import).
    pub details: Option<Value>,
}

impl ApiError {
    /// A new error.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            details: None,
        }
    }

    /// Names the offending field.
    pub fn field(mut self, f: impl Into<String>) -> Self {
        self.field = Some(f.into());
        self
    }

    /// Attaches details.
    pub fn details(mut self, d: Value) -> Self {
        self.details = Some(d);
        self
    }

    /// 400 Bad Request.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 Not Found.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} not found"),
        )
    }

    /// 422 from validation problems (the first is the headline; all are in details).
    pub fn invalid(errs: ValidationErrors) -> Self {
        let first = errs.first().cloned();
        let details = serde_json::to_value(&errs.0).unwrap_or(Value::Null);
        match first {
            Some(f) => Self::new(StatusCode::UNPROCESSABLE_ENTITY, f.code, f.message)
                .field(f.field)
                .details(details),
            None => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "invalid input"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::Conflict { field, message } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message).field(field)
            }
            StoreError::Invalid(errs) => ApiError::invalid(errs),
            other => {
                // Details go to the log, not to the client.
                tracing::error!(error = %other, "store error");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal_error",
                    "something went wrong on our side; it has been logged",
                )
            }
        }
    }
}

impl From<kizuna_engine::EngineError> for ApiError {
    fn from(e: kizuna_engine::EngineError) -> Self {
        use kizuna_engine::EngineError as E;
        match e {
            E::Store(s) => s.into(),
            E::Invalid(errs) => ApiError::invalid(errs),
            E::NotFound(what) => ApiError::not_found(what),
            E::Conflict { field, message } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", message).field(field)
            }
            other => {
                tracing::error!(error = %other, "engine error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "engine_unavailable",
                    "the engine cannot do this right now; try again",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut err = json!({"code": self.code, "message": self.message, "field": self.field});
        if let Some(d) = self.details {
            err["details"] = d;
        }
        (self.status, Json(json!({ "error": err }))).into_response()
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
