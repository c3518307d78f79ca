//! The one error type every backend speaks.

use std::time::Duration;

/// Why a completion failed.
///
/// The variants classify failures so that callers (retry policies, the batch executor, the
/// REPL) can decide without parsing text: [`is_retryable`](Self::is_retryable) says whether
/// the same request may succeed later, [`retry_after`](Self::retry_after) carries the
/// provider's hint. Errors are `Clone` so that one failure can be handed to every waiter of a
/// shared request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The provider refused the request for now (HTTP 429, or a 503 with a retry hint).
    #[error("rate limited (HTTP {status}): {message}")]
    RateLimited {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
        /// How long the provider asked us to wait.
        retry_after: Option<Duration>,
    },
    /// The account is out of quota or credit (`insufficient_quota`): waiting will not help.
    #[error("quota exhausted (HTTP {status}): {message}")]
    QuotaExhausted {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The provider failed (5xx, 408, 409).
    #[error("server error (HTTP {status}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
        /// How long the provider asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// No complete answer arrived in time.
    #[error("timed out: {message}")]
    Timeout {
        /// What timed out.
        message: String,
    },
    /// The connection could not be made or broke before the answer was complete.
    #[error("connection failed: {message}")]
    Connection {
        /// What went wrong.
        message: String,
    },
    /// The credentials were missing, wrong, or not allowed to do this (HTTP 401/403).
    #[error("authentication failed (HTTP {status}): {message}")]
    Auth {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The provider rejected the request itself (HTTP 400, 404, 422, ...): unknown model,
    /// context too long, invalid parameter.
    #[error("bad request (HTTP {status}): {message}")]
    BadRequest {
        /// HTTP status.
        status: u16,
        /// The provider's message.
        message: String,
        /// The provider's machine-readable code (e.g. `context_length_exceeded`).
        code: Option<String>,
    },
    /// The provider answered, but not in a form we understand.
    #[error("invalid response: {message}")]
    InvalidResponse {
        /// What was wrong with it.
        message: String,
    },
    /// The request was cancelled before it finished.
    #[error("cancelled")]
    Cancelled,
    /// The reply did not fit the caller's [`ReplyBudget`](crate::ReplyBudget): the backend
    /// stopped reading it and kept nothing. Not worth retrying.
    #[error("{message}")]
    OverReplyBudget {
        /// What did not fit, and the budget.
        message: String,
    },
    /// Any other failure, for backends whose errors fit none of the above.
    #[error("{message}")]
    Other {
        /// What went wrong.
        message: String,
    },
}

impl LlmError {
    /// Classifies an HTTP error response.
    ///
    /// `error_type` and `code` are the provider's `error.type` and `error.code` fields;
    /// `retry_after` the parsed `Retry-After` / `retry-after-ms` header. A 429 whose type or
    /// code is `insufficient_quota` becomes [`LlmError::QuotaExhausted`], any other 429
    /// [`LlmError::RateLimited`].
    pub fn from_http_status(
        status: u16,
        message: impl Into<String>,
        error_type: Option<&str>,
        code: Option<&str>,
        retry_after: Option<Duration>,
    ) -> Self {
        let message = message.into();
        let is_quota = [error_type, code]
            .iter()
            .flatten()
            .any(|s| *s == "insufficient_quota");
        match status {
            429 if is_quota => LlmError::QuotaExhausted { status, message },
            429 => LlmError::RateLimited {
                status,
                message,
                retry_after,
            },
            401 | 403 => LlmError::Auth { status, message },
            408 | 409 | 500..=599 => LlmError::Server {
                status,
                message,
                retry_after,
            },
            _ => LlmError::BadRequest {
                status,
                message,
                code: code.map(str::to_owned),
            },
        }
    }

    /// Whether the same request may succeed if sent again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            LlmError::RateLimited { .. }
                | LlmError::Server { .. }
                | LlmError::Timeout { .. }
                | LlmError::Connection { .. }
        )
    }

    /// Whether every other request to the same model and server will fail the same way:
    /// credentials refused (401/403), no quota left, or a model or endpoint the server does
    /// not have (404, `model_not_found`). Sending more such requests is pointless; a run
    /// should stop and say so.
    pub fn affects_every_request(&self) -> bool {
        match self {
            LlmError::Auth { .. } | LlmError::QuotaExhausted { .. } => true,
            LlmError::BadRequest { status, code, .. } => {
                *status == 404 || code.as_deref() == Some("model_not_found")
            }
            _ => false,
        }
    }

    /// Whether the provider refused the request for its `response_format` (a 4xx whose
    /// message or code names `response_format` or `json_schema`): a server or model that
    /// cannot constrain its output. The same request without it may succeed.
    pub fn refuses_response_format(&self) -> bool {
        match self {
            LlmError::BadRequest {
                status,
                message,
                code,
            } if (400..500).contains(status) => {
                let names = |text: &str| {
                    let text = text.to_ascii_lowercase();
                    text.contains("response_format") || text.contains("json_schema")
                };
                names(message) || code.as_deref().is_some_and(names)
            }
            _ => false,
        }
    }

    /// The provider's requested wait before a retry, if it gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::RateLimited { retry_after, .. } | LlmError::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The HTTP status, for failures that had one.
    pub fn status(&self) -> Option<u16> {
        match self {
            LlmError::RateLimited { status, .. }
            | LlmError::QuotaExhausted { status, .. }
            | LlmError::Server { status, .. }
            | LlmError::Auth { status, .. }
            | LlmError::BadRequest { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// A short, stable name of the variant (`"rate_limited"`, `"timeout"`, ...), for logs,
    /// traces and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            LlmError::RateLimited { .. } => "rate_limited",
            LlmError::QuotaExhausted { .. } => "quota_exhausted",
            LlmError::Server { .. } => "server",
            LlmError::Timeout { .. } => "timeout",
            LlmError::Connection { .. } => "connection",
            LlmError::Auth { .. } => "auth",
            LlmError::BadRequest { .. } => "bad_request",
            LlmError::InvalidResponse { .. } => "invalid_response",
            LlmError::Cancelled => "cancelled",
            LlmError::OverReplyBudget { .. } => "over_reply_budget",
            LlmError::Other { .. } => "other",
        }
    }

    /// An [`LlmError::OverReplyBudget`] with the given message.
    pub fn over_reply_budget(message: impl Into<String>) -> Self {
        LlmError::OverReplyBudget {
            message: message.into(),
        }
    }

    /// An [`LlmError::Other`] with the given message.
    pub fn other(message: impl Into<String>) -> Self {
        LlmError::Other {
            message: message.into(),
        }
    }

    /// An [`LlmError::InvalidResponse`] with the given message.
    pub fn invalid_response(message: impl Into<String>) -> Self {
        LlmError::InvalidResponse {
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_http_statuses() {
        let wait = Some(Duration::from_secs(2));
        let e =
            LlmError::from_http_status(429, "slow down", None, Some("rate_limit_exceeded"), wait);
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), wait);
        assert_eq!(e.status(), Some(429));

        let e = LlmError::from_http_status(429, "pay up", Some("insufficient_quota"), None, wait);
        assert_eq!(e.kind(), "quota_exhausted");
        assert!(!e.is_retryable());

        for status in [500, 502, 503, 408, 409] {
            assert!(LlmError::from_http_status(status, "", None, None, None).is_retryable());
        }
        for status in [400, 404, 422] {
            let e = LlmError::from_http_status(status, "", None, Some("x"), None);
            assert_eq!(e.kind(), "bad_request");
            assert!(!e.is_retryable());
        }
        for status in [401, 403] {
            assert_eq!(
                LlmError::from_http_status(status, "", None, None, None).kind(),
                "auth"
            );
        }
    }

    #[test]
    fn a_refused_response_format_is_recognised() {
        let e = LlmError::from_http_status(
            400,
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported",
            None,
            None,
            None,
        );
        assert!(e.refuses_response_format());
        let e = LlmError::from_http_status(422, "bad", None, Some("unsupported_json_schema"), None);
        assert!(e.refuses_response_format());
        assert!(
            !LlmError::from_http_status(400, "context too long", None, None, None)
                .refuses_response_format()
        );
        assert!(
            !LlmError::from_http_status(500, "response_format", None, None, None)
                .refuses_response_format()
        );
    }

    #[test]
    fn display_keeps_status_and_message() {
        let e = LlmError::from_http_status(503, "overloaded", None, None, None);
        assert_eq!(e.to_string(), "server error (HTTP 503): overloaded");
    }
}
