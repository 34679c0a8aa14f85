//! DynamoDB errors: the `__type` names and messages SDKs match on.

use serde_json::{json, Value as Json};

/// Result with a [`DdbError`].
pub type Result<T, E = DdbError> = std::result::Result<T, E>;

/// An error as DynamoDB reports it: a type name, a message and sometimes extra fields
/// (`CancellationReasons`, `Item`).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct DdbError {
    /// The short error name (`ValidationException`, …).
    pub kind: &'static str,
    /// Human-readable message.
    pub message: String,
    /// HTTP status (400 for client errors, 500 for internal ones).
    pub status: u16,
    /// Extra top-level fields of the error body.
    pub extra: Option<Json>,
}

impl DdbError {
    /// An error of a given kind with status 400.
    pub fn new(kind: &'static str, message: impl Into<String>) -> DdbError {
        DdbError {
            kind,
            message: message.into(),
            status: 400,
            extra: None,
        }
    }

    /// `ValidationException`.
    pub fn validation(message: impl Into<String>) -> DdbError {
        DdbError::new("ValidationException", message)
    }

    /// `SerializationException` (malformed JSON shapes).
    pub fn serialization(message: impl Into<String>) -> DdbError {
        DdbError::new("SerializationException", message)
    }

    /// `ValidationException` for a required member left out; `path` names it as DynamoDB's
    /// messages do (`tableName`, `requestItems.keys`).
    pub(crate) fn missing_member(path: &str) -> DdbError {
        DdbError::validation(format!(
            "1 validation error detected: Value null at '{path}' failed to satisfy constraint: Member must not be null"
        ))
    }

    /// `ValidationException` for a value outside the set a member allows.
    pub(crate) fn not_in_enum(value: &str, path: &str, allowed: &[&str]) -> DdbError {
        DdbError::validation(format!(
            "1 validation error detected: Value '{value}' at '{path}' failed to satisfy constraint: Member must satisfy enum value set: [{}]",
            allowed.join(", ")
        ))
    }

    /// `ResourceNotFoundException`.
    pub fn not_found(message: impl Into<String>) -> DdbError {
        DdbError::new("ResourceNotFoundException", message)
    }

    /// `ResourceNotFoundException` for a table.
    pub fn table_not_found() -> DdbError {
        DdbError::not_found("Requested resource not found")
    }

    /// `ResourceInUseException`.
    pub fn in_use(message: impl Into<String>) -> DdbError {
        DdbError::new("ResourceInUseException", message)
    }

    /// `ConditionalCheckFailedException`.
    pub fn conditional_failed() -> DdbError {
        DdbError::new(
            "ConditionalCheckFailedException",
            "The conditional request failed",
        )
    }

    /// `InternalServerError` (status 500).
    pub fn internal(message: impl Into<String>) -> DdbError {
        DdbError {
            kind: "InternalServerError",
            message: message.into(),
            status: 500,
            extra: None,
        }
    }

    /// Attaches extra body fields.
    pub fn with_extra(mut self, extra: Json) -> DdbError {
        self.extra = Some(extra);
        self
    }

    /// The JSON body of the error response.
    pub fn body(&self) -> Json {
        let mut body = json!({
            "__type": format!("com.amazonaws.dynamodb.v20120810#{}", self.kind),
            "message": self.message,
        });
        // Protocol-level errors come from the service framework, not from DynamoDB itself.
        const CORAL: [&str; 7] = [
            "SerializationException",
            "UnrecognizedClientException",
            "MissingAuthenticationTokenException",
            "InvalidSignatureException",
            "IncompleteSignatureException",
            "UnknownOperationException",
            "RequestEntityTooLarge",
        ];
        if CORAL.contains(&self.kind) {
            body["__type"] = json!(format!("com.amazon.coral.service#{}", self.kind));
        }
        if let Some(Json::Object(extra)) = &self.extra {
            for (k, v) in extra {
                body[k] = v.clone();
            }
        }
        body
    }
}

impl From<rusqlite::Error> for DdbError {
    fn from(e: rusqlite::Error) -> DdbError {
        // A table dropped by a concurrent DeleteTable after the request looked it up.
        if e.to_string().contains("no such table") {
            return DdbError::table_not_found();
        }
        tracing::error!(error = %e, "storage error");
        DdbError::internal(format!("Internal server error: storage: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_messages_read_as_dynamodb_writes_them() {
        let e = DdbError::missing_member("tableName");
        assert_eq!(e.kind, "ValidationException");
        assert_eq!(
            e.message,
            "1 validation error detected: Value null at 'tableName' failed to satisfy constraint: Member must not be null"
        );
        let e = DdbError::not_in_enum("X", "billingMode", &["PROVISIONED", "PAY_PER_REQUEST"]);
        assert_eq!(e.kind, "ValidationException");
        assert_eq!(
            e.message,
            "1 validation error detected: Value 'X' at 'billingMode' failed to satisfy constraint: Member must satisfy enum value set: [PROVISIONED, PAY_PER_REQUEST]"
        );
    }
}
