//! Serving Recursive Language Models to other programs.
//!
//! - [`Runner`]: what every run of a server shares — the root and sub backends (so rate
//!   limits, retries, the cache and single-flight are shared by all concurrent requests) and
//!   the run settings. Each request gets its own [`Rlm`](rlm_repl::Rlm), observer and
//!   cancellation token.
//! - [`serve`] (feature `serve`): an OpenAI-compatible HTTP server (`GET /v1/models`,
//!   `POST /v1/chat/completions` with and without streaming, `GET /health`), on axum.
//! - [`mcp`] (feature `mcp`): a Model Context Protocol server over stdio with the tool
//!   `rlm_answer`, on the official Rust SDK `rmcp`.
//! - [`trajectory`]: the short text lines a client is shown while a run works.
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

use std::sync::Arc;

use rlm_core::{BatchExecutor, CancellationToken, LlmBackend, LlmError};
use rlm_repl::{Context, Observer, Rlm, RlmConfig, RlmError, RunResult};

#[cfg(feature = "mcp")]
pub mod mcp;
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
}

/// What every run of a server shares: the backends and the run settings.
///
/// Cloning is cheap (two `Arc`s and the settings); every clone uses the same backends.
#[derive(Clone)]
pub struct Runner {
    root: Arc<dyn LlmBackend>,
    sub: Arc<dyn BatchExecutor>,
    config: RlmConfig,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What one run adds to the shared [`Runner`].
#[derive(Default)]
pub struct RunOptions {
    /// Extra instructions for the root model (an OpenAI request's system messages), added
    /// after the system prompt.
    pub instructions: Option<String>,
    /// Receives the run's events.
    pub observer: Option<Arc<dyn Observer>>,
    /// Cancelling it stops the run: running code and in-flight sub-calls.
    pub cancel: CancellationToken,
}

impl Runner {
    /// A runner whose root calls go to `root` and sub-calls to `sub`, with `config`'s models,
    /// budgets and limits for every run.
    pub fn new(root: Arc<dyn LlmBackend>, sub: Arc<dyn BatchExecutor>, config: RlmConfig) -> Self {
        Self { root, sub, config }
    }

    /// The settings of every run.
    pub fn config(&self) -> &RlmConfig {
        &self.config
    }

    /// Answers `query` over `context`.
    ///
    /// # Errors
    /// As [`Rlm::run`]: the root model could not be asked, the sub model cannot be used, or
    /// an internal failure. Budgets and cancellation are not errors: the result says why the
    /// run stopped.
    pub async fn run(
        &self,
        query: String,
        context: Context,
        options: RunOptions,
    ) -> Result<RunResult, RlmError> {
        let mut config = self.config.clone();
        if let Some(extra) = options.instructions.filter(|s| !s.trim().is_empty()) {
            let base = rlm_repl::prompt::system_prompt(&config);
            config.system_prompt = Some(format!(
                "{base}\n\nInstructions from the caller (follow them in your final answer):\n{extra}"
            ));
        }
        let mut builder = Rlm::builder(self.root.clone())
            .sub_backend(self.sub.clone())
            .config(config)
            .cancel_token(options.cancel);
        if let Some(observer) = options.observer {
            builder = builder.observer(observer);
        }
        builder.build()?.run(query, context).await
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

/// Prompt and completion tokens of a run, over every model.
pub fn total_tokens(result: &RunResult) -> (u64, u64) {
    result.usage.values().fold((0, 0), |(p, c), u| {
        (p + u.prompt_tokens, c + u.completion_tokens)
    })
}
