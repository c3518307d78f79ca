//! Serving Recursive Language Models to other programs.
//!
//! - [`Runner`] (the host layer's, re-exported): what every run of a server shares — the
//!   root and sub backends (so rate limits, retries, the cache and single-flight are shared
//!   by all concurrent requests) and the run settings. Each request gets its own
//!   [`Rlm`](rlm_repl::Rlm), observer and cancellation token.
//! - [`serve`] (feature `serve`): an OpenAI-compatible HTTP server (`GET /v1/models`,
//!   `POST /v1/chat/completions` with and without streaming, `GET /health`), on axum.
//! - [`mcp`] (feature `mcp`): a Model Context Protocol server over stdio with the tool
//!   `rlm_answer`, on the official Rust SDK `rmcp`.
//! - [`trajectory`]: the short text lines a client is shown while a run works.
//! - [`inline`]: a conversation made into a run's query, instructions and context, long
//!   messages moved into the context ([`inline::run_input`]).
//! - [`params`]: the chat-completions parameters honoured, mapped or refused by name.
//! - [`access_log`], [`metrics`], [`drain`] (feature `serve`): one line per request,
//!   `GET /metrics`, and draining at shutdown.
//!
//! ```no_run
//! # #[cfg(feature = "serve")]
//! # async fn demo(backend: std::sync::Arc<dyn rlm_core::BatchExecutor>) -> std::io::Result<()> {
//! use rlm_serve::{Runner, serve::{ServeOptions, serve}};
//! let config = rlm_repl::RlmConfig { root_model: "gpt-4o".into(), ..Default::default() };
//! let runner = Runner::new(backend.clone(), backend, config);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! serve(listener, runner, ServeOptions::default(), std::future::pending()).await
//! # }
//! ```

use rlm_core::LlmError;
use rlm_repl::{RlmError, RunResult};

pub use rlm_host::{RunOptions, Runner};

#[cfg(feature = "serve")]
pub mod access_log;
#[cfg(feature = "serve")]
pub mod drain;
pub mod inline;
#[cfg(feature = "mcp")]
pub mod mcp;
#[cfg(feature = "serve")]
pub mod metrics;
pub mod params;
pub mod schema;
#[cfg(feature = "serve")]
pub mod serve;
pub mod trajectory;

/// Why a server could not start or a request could not be served.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Settings that cannot work (e.g. listening beyond loopback without a server key).
    #[error("{0}")]
    Config(String),
    /// A path a client asked for is not allowed or cannot be read.
    #[error("{0}")]
    Path(String),
    /// The listener or the transport failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A request that cannot be served as it is (HTTP 400): a code (`no_user_message`,
    /// `unsupported_parameter`, ...), the request parameter it is about, and one sentence.
    #[error("{message}")]
    BadRequest {
        /// The error code a client gets.
        code: &'static str,
        /// The request parameter at fault, if one is.
        param: Option<String>,
        /// What is wrong.
        message: String,
    },
}

impl ServeError {
    /// A [`ServeError::BadRequest`] about no one parameter.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            param: None,
            message: message.into(),
        }
    }
}

/// How a failed run is reported to a client: a category and one sentence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The server's settings are wrong.
    Config,
    /// The upstream model server refused the credentials or is out of quota.
    UpstreamAuth,
    /// The upstream model server failed otherwise (unreachable, timed out, rejected).
    Upstream,
    /// The run was cancelled.
    Cancelled,
    /// A bug.
    Internal,
}

/// The kind and message of a run's error, for a client. Never holds the upstream key (the
/// backends keep it out of their errors).
pub fn describe_error(error: &RlmError, root_model: &str) -> (FailureKind, String) {
    let kind_of = |source: &LlmError| match source {
        LlmError::Auth { .. } | LlmError::QuotaExhausted { .. } => FailureKind::UpstreamAuth,
        LlmError::Cancelled => FailureKind::Cancelled,
        _ => FailureKind::Upstream,
    };
    match error {
        RlmError::Config(message) => (FailureKind::Config, format!("server settings: {message}")),
        RlmError::Root { turn, source } => (
            kind_of(source),
            format!("the root model ({root_model}) failed on turn {turn}: {source}"),
        ),
        RlmError::SubModel { model, source } => (
            kind_of(source),
            format!("the sub model ({model}) cannot be used, so the run stopped: {source}"),
        ),
        other => (
            FailureKind::Internal,
            format!("internal error (a bug in rlm): {other}"),
        ),
    }
}

/// The kind and message of a run's error for a client of a network server: what it needs
/// to react (which side failed, the status class), never the upstream's URL, model names or
/// messages. The full error belongs in the server's log ([`describe_error`] has it).
pub fn describe_error_for_client(error: &RlmError) -> (FailureKind, String) {
    let (kind, message) = describe_error(error, "");
    let source = match error {
        RlmError::Root { source, .. } | RlmError::SubModel { source, .. } => source,
        _ => return (kind, message),
    };
    let which = if matches!(error, RlmError::Root { .. }) {
        "the root model's upstream server"
    } else {
        "the sub model's upstream server"
    };
    let what = match source {
        LlmError::Cancelled => return (kind, "the run was cancelled".to_owned()),
        LlmError::Timeout { .. } => "did not answer in time".to_owned(),
        LlmError::Connection { .. } => "could not be reached".to_owned(),
        LlmError::InvalidResponse { .. } => "sent a reply rlm cannot read".to_owned(),
        LlmError::Auth { .. } | LlmError::QuotaExhausted { .. } => format!(
            "refused the server's credentials or quota{}",
            status_class(source)
        ),
        LlmError::RateLimited { .. } => format!("is rate limiting{}", status_class(source)),
        LlmError::BadRequest { .. } => format!("rejected a request{}", status_class(source)),
        _ => format!("failed{}", status_class(source)),
    };
    (
        kind,
        format!("{which} {what}; the server's log has the details"),
    )
}

/// ` (HTTP 5xx)` for an error that carries a status, else nothing.
fn status_class(error: &LlmError) -> String {
    error
        .status()
        .map(|status| format!(" (HTTP {}xx)", status / 100))
        .unwrap_or_default()
}

/// Prompt and completion tokens of a run, over every model.
pub fn total_tokens(result: &RunResult) -> (u64, u64) {
    result.usage.values().fold((0, 0), |(p, c), u| {
        (p + u.prompt_tokens, c + u.completion_tokens)
    })
}
