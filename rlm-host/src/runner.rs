//! A [`Runner`]: the backends and settings many runs share, each run with its own
//! [`Rlm`], observer and cancellation token.

use std::sync::Arc;

use rlm_core::{BatchExecutor, CancellationToken, LlmBackend};
use rlm_repl::{Context, Observer, Rlm, RlmConfig, RlmError, RunResult};

/// What many runs share: the root and sub backends (so rate limits, retries, the cache and
/// single-flight are shared by all of them) and the run settings.
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
    /// The schema this run's answer must conform to, instead of the runner's (an OpenAI
    /// request's `response_format`, an MCP call's `output_schema`).
    pub output_schema: Option<rlm_repl::OutputSchema>,
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
        self.rlm(options)?.run(query, context).await
    }

    /// The [`Rlm`] of one run (or one question of a session): the shared backends and
    /// settings, with `options`' instructions, observer and cancellation.
    ///
    /// # Errors
    /// The settings cannot work ([`RlmError::Config`]).
    pub fn rlm(&self, options: RunOptions) -> Result<Rlm, RlmError> {
        let mut config = self.config.clone();
        if let Some(schema) = options.output_schema {
            config.output_schema = Some(schema);
        }
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
        builder.build()
    }
}
