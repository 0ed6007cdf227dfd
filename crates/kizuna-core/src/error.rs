//! Validation errors that name the offending field, so that the edge (HTTP, CLI) can tell the
//! user exactly what to fix.

use serde::Serialize;

/// One thing wrong with an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Path of the offending value, e.g. `email` or `custom.budget`.
    pub field: String,
    /// A stable snake_case code, e.g. `invalid_email`.
    pub code: &'static str,
    /// A human sentence.
    pub message: String,
}

impl ValidationError {
    /// Builds an error for `field`.
    pub fn new(field: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code,
            message: message.into(),
        }
    }
}

/// Every problem found in one input (validation does not stop at the first one).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{}", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    /// Records a problem.
    pub fn push(&mut self, e: ValidationError) {
        self.0.push(e);
    }

    /// `Ok(value)` when nothing was recorded, the errors otherwise.
    pub fn into_result<T>(self, value: T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Whether no problem was recorded.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first problem, if any.
    pub fn first(&self) -> Option<&ValidationError> {
        self.0.first()
    }
}

impl From<ValidationError> for ValidationErrors {
    fn from(e: ValidationError) -> Self {
        Self(vec![e])
    }
}
