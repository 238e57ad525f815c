//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with the status
//! OpenAI uses for the case.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use iapt_engine::SubmitError;
use serde_json::json;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

impl ApiError {
    /// A bad request naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), kind: "invalid_request_error", param: Some(param.into()), code: None }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into(), kind: "invalid_request_error", param: None, code: None }
    }

    pub fn unknown_model(model: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("The model `{model}` does not exist."),
            kind: "invalid_request_error",
            param: Some("model".into()),
            code: Some("model_not_found"),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into(), kind: "invalid_request_error", param: None, code: None }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self { status: StatusCode::INTERNAL_SERVER_ERROR, message: message.into(), kind: "server_error", param: None, code: None }
    }

    /// The engine's refusal of a request. `prompt_field` names where the prompt came from
    /// (`prompt` or `messages`).
    pub fn from_submit(error: SubmitError, prompt_field: &str) -> Self {
        let message = error.to_string();
        match error {
            SubmitError::EmptyPrompt => Self::invalid(prompt_field, message),
            SubmitError::NoTokens => Self::invalid("max_tokens", message),
            SubmitError::UnknownAdapter(name) => Self::unknown_model(&name),
            SubmitError::ContextExceeded { .. } => Self { code: Some("context_length_exceeded"), ..Self::invalid(prompt_field, message) },
            SubmitError::QueueFull(_) => {
                Self { status: StatusCode::TOO_MANY_REQUESTS, message, kind: "rate_limit_error", param: None, code: Some("queue_full") }
            }
            SubmitError::Stopped => Self { status: StatusCode::SERVICE_UNAVAILABLE, message, kind: "server_error", param: None, code: Some("shutting_down") },
        }
    }

    pub fn body(&self) -> serde_json::Value {
        json!({ "error": { "message": self.message, "type": self.kind, "param": self.param, "code": self.code } })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}
