//! The RLM loop and its builder.

use std::sync::Arc;
use std::time::Duration;

use rlm_core::{BatchExecutor, CancellationToken, ConcurrentExecutor, LlmBackend};

use crate::run::Tree;
use crate::{Context, Observer, RlmConfig, RlmError, RunResult, SandboxLimits};

/// A configured Recursive Language Model: a root backend, a sub-call backend and settings.
///
/// One `Rlm` can run many queries, one after another or at the same time; each run has its
/// own REPL scope, budgets and usage.
#[derive(Clone)]
pub struct Rlm {
    pub(crate) root: Arc<dyn LlmBackend>,
    pub(crate) sub: Arc<dyn BatchExecutor>,
    pub(crate) config: RlmConfig,
    pub(crate) observers: Vec<Arc<dyn Observer>>,
    pub(crate) cancel: CancellationToken,
}

impl std::fmt::Debug for Rlm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rlm")
            .field("config", &self.config)
            .field("observers", &self.observers.len())
            .finish_non_exhaustive()
    }
}

impl Rlm {
    /// Starts building an `Rlm` whose root model is served by `root`.
    pub fn builder(root: Arc<dyn LlmBackend>) -> RlmBuilder {
        RlmBuilder {
            root,
            sub: None,
            config: RlmConfig::default(),
            observers: Vec::new(),
            cancel: None,
            schema: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &RlmConfig {
        &self.config
    }

    /// Answers `query` over `context`.
    ///
    /// Works inside any tokio runtime (multi-thread or current-thread); code blocks run on a
    /// thread of their own (neither a runtime worker nor one of tokio's bounded blocking
    /// pool, which a wide tree of waiting blocks could fill). Budgets running out, failing code and
    /// failing sub-calls are not errors: the result says why the run stopped. An error means
    /// the root model could not be asked (after the backend's own retries) or an internal
    /// failure.
    pub async fn run(
        &self,
        query: impl Into<String>,
        context: Context,
    ) -> Result<RunResult, RlmError> {
        let tree = Tree::new(
            Arc::clone(&self.root),
            Arc::clone(&self.sub),
            self.config.clone(),
        );
        let cancel = self.cancel.child_token();
        // Boxed: the run's state machine is large, and a caller's future that held it inline
        // was copied whole each time it moved (into a spawned task, a select, a box).
        Box::pin(crate::run::run(
            tree,
            self.observers.clone(),
            cancel,
            query.into(),
            context,
        ))
        .await
    }

    /// [`run`](Self::run) for callers without an async runtime.
    pub fn run_blocking(
        &self,
        query: impl Into<String>,
        context: Context,
    ) -> Result<RunResult, RlmError> {
        let this = self.clone();
        let query = query.into();
        rlm_core::blocking::block_on(async move { this.run(query, context).await })
    }
}

/// Builds an [`Rlm`]. Only the root model's name is required.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use rlm_repl::{Context, Rlm};
/// # async fn demo(backend: Arc<dyn rlm_core::BatchExecutor>) -> Result<(), rlm_repl::RlmError> {
/// let rlm = Rlm::builder(backend.clone())
///     .root_model("gpt-4o")
///     .sub_backend(backend)
///     .sub_model("gpt-4o-mini")
///     .max_iterations(10)
///     .max_concurrent(32)
///     .build()?;
/// let result = rlm.run("Which chapter mentions the lighthouse?", Context::from("...")).await?;
/// println!("{}", result.answer);
/// # Ok(())
/// # }
/// ```
pub struct RlmBuilder {
    root: Arc<dyn LlmBackend>,
    sub: Option<Arc<dyn BatchExecutor>>,
    config: RlmConfig,
    observers: Vec<Arc<dyn Observer>>,
    cancel: Option<CancellationToken>,
    /// An output schema given as JSON, compiled by `build`.
    schema: Option<serde_json::Value>,
}

impl RlmBuilder {
    /// The JSON Schema (draft 2020-12 or 7) the final answer must conform to. The root model
    /// is told the schema; a `FINAL` value is converted to JSON (a map or array as it is, a
    /// string holding JSON parsed, a number or boolean as such) and validated; a value that
    /// does not conform is refused with its first errors, and the model tries again, up to
    /// [`output_schema_retries`](Self::output_schema_retries) times; then the run ends with
    /// [`StopReason::InvalidOutput`](crate::StopReason::InvalidOutput) and no answer. The
    /// accepted value is [`RunResult::json`](crate::RunResult::json) (and
    /// [`RunResult::answer`](crate::RunResult::answer) its compact JSON text). An invalid
    /// schema is an [`RlmError::Schema`] from [`build`](Self::build).
    pub fn output_schema(mut self, schema: serde_json::Value) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The output schema of the Rust type `T` (derived by `schemars`); read the answer back
    /// with [`RunResult::parse`](crate::RunResult::parse).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use rlm_core::mock::MockBackend;
    /// # use rlm_repl::{Context, Rlm};
    /// #[derive(serde::Deserialize, schemars::JsonSchema)]
    /// struct City {
    ///     name: String,
    ///     population: u64,
    /// }
    /// # fn main() -> Result<(), rlm_repl::RlmError> {
    /// let root = MockBackend::scripted([
    ///     "```repl\nFINAL(#{name: \"Oslo\", population: 709000});\n```",
    /// ]);
    /// let rlm = Rlm::builder(Arc::new(root)).root_model("m").output_type::<City>().build()?;
    /// let city: City = rlm.run_blocking("Largest city?", Context::from("..."))?.parse()?;
    /// assert_eq!((city.name.as_str(), city.population), ("Oslo", 709000));
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "schemars")]
    pub fn output_type<T: schemars::JsonSchema>(self) -> Self {
        self.output_schema(schemars::schema_for!(T).to_value())
    }

    /// Non-conforming final answers refused before the run ends without one (default 2).
    pub fn output_schema_retries(mut self, retries: usize) -> Self {
        self.config.output_schema_retries = retries;
        self
    }

    /// How `llm_query_json` / `llm_batch_json` ask for JSON (default
    /// [`StructuredOutput::Auto`](crate::schema::StructuredOutput::Auto)).
    pub fn structured_output(mut self, mode: crate::schema::StructuredOutput) -> Self {
        self.config.structured_output = mode;
        self
    }
    /// The backend of `llm_query` / `llm_batch` (default: the root backend, with the generic
    /// bounded executor).
    pub fn sub_backend(mut self, sub: Arc<dyn BatchExecutor>) -> Self {
        self.sub = Some(sub);
        self
    }

    /// The root model's name (required).
    pub fn root_model(mut self, model: impl Into<String>) -> Self {
        self.config.root_model = model.into();
        self
    }

    /// The sub-calls' model (default: the root model).
    pub fn sub_model(mut self, model: impl Into<String>) -> Self {
        self.config.sub_model = Some(model.into());
        self
    }

    /// Root turns before the root model is asked for its best final answer (default 20).
    pub fn max_iterations(mut self, turns: usize) -> Self {
        self.config.max_iterations = turns;
        self
    }

    /// Sub-calls allowed over a run (default: unlimited).
    pub fn max_sub_calls(mut self, calls: u64) -> Self {
        self.config.max_sub_calls = Some(calls);
        self
    }

    /// Tokens allowed over a run, root and sub-calls together (default: unlimited).
    pub fn max_total_tokens(mut self, tokens: u64) -> Self {
        self.config.max_total_tokens = Some(tokens);
        self
    }

    /// Wall time allowed for a run (default: unlimited).
    pub fn max_time(mut self, time: Duration) -> Self {
        self.config.max_time = Some(time);
        self
    }

    /// USD allowed over a run (default: unlimited). Every root and sub call reserves its
    /// estimated cost (see [`Prices::estimate`](rlm_core::cost::Prices::estimate)) before it is
    /// sent, and a call that does not fit is refused: the run stops with
    /// [`StopReason::MaxCost`](crate::StopReason::MaxCost). The final ask for an answer after
    /// the stop is still made, and may pass the budget by that one call.
    pub fn max_cost(mut self, usd: f64) -> Self {
        self.config.max_cost = Some(usd);
        self
    }

    /// Prices of the models, for the run's cost and [`max_cost`](Self::max_cost) (default:
    /// [`Prices::builtin`](rlm_core::cost::Prices::builtin)).
    pub fn prices(mut self, prices: rlm_core::cost::Prices) -> Self {
        self.config.prices = prices;
        self
    }

    /// Default concurrency of `llm_batch` (default 16).
    pub fn max_concurrent(mut self, max_concurrent: usize) -> Self {
        self.config.max_concurrent = max_concurrent;
        self
    }

    /// Characters of a block's output shown to the root model (default 20,000).
    pub fn max_output_chars(mut self, chars: usize) -> Self {
        self.config.max_output_chars = chars;
        self
    }

    /// Replaces the built-in system prompt.
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.config.system_prompt = Some(prompt.into());
        self
    }

    /// Levels of runs (default 2): see [`RlmConfig::max_depth`].
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.config.max_depth = depth;
        self
    }

    /// The root model of child runs (default: the sub model).
    pub fn child_model(mut self, model: impl Into<String>) -> Self {
        self.config.child_model = Some(model.into());
        self
    }

    /// Root turns of a child run (default 10).
    pub fn child_max_iterations(mut self, turns: usize) -> Self {
        self.config.child_max_iterations = turns;
        self
    }

    /// The largest sub-call prompt in estimated tokens (default: no limit).
    pub fn sub_max_prompt_tokens(mut self, tokens: u64) -> Self {
        self.config.sub_max_prompt_tokens = Some(tokens);
        self
    }

    /// Registers a host function: scripts call `name(value)` (or `name()`), `f` gets the
    /// value as JSON and its result comes back as a script value; an error comes back as an
    /// `Error: ...` string. The root model's first message lists each tool with its
    /// `description`; each call is an [`Event::ToolCall`](crate::Event::ToolCall) and counts
    /// in [`RunResult::tool_calls`](crate::RunResult::tool_calls). Child runs may call it too.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use rlm_repl::Rlm;
    /// # fn demo(backend: Arc<dyn rlm_core::BatchExecutor>) -> Result<(), rlm_repl::RlmError> {
    /// let rlm = Rlm::builder(backend)
    ///     .root_model("gpt-4o")
    ///     .tool("lookup", "the population of a city: lookup(\"Paris\")", |city| async move {
    ///         match city.as_str() {
    ///             Some("Paris") => Ok(serde_json::json!(2_102_650)),
    ///             _ => Err(format!("no population for {city}")),
    ///         }
    ///     })
    ///     .build()?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn tool<F, Fut, E>(
        mut self,
        name: impl Into<String>,
        description: impl Into<String>,
        f: F,
    ) -> Self
    where
        F: Fn(serde_json::Value) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<serde_json::Value, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.config
            .tools
            .push(crate::Tool::new(name, description, f));
        self
    }

    /// Limits of the sandbox.
    pub fn sandbox(mut self, limits: SandboxLimits) -> Self {
        self.config.sandbox = limits;
        self
    }

    /// Replaces all settings at once.
    pub fn config(mut self, config: RlmConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds an observer of every run's events.
    pub fn observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Cancelling this token stops every run of the built `Rlm`: in-flight calls are dropped
    /// and the run returns with [`StopReason::Cancelled`](crate::StopReason::Cancelled).
    pub fn cancel_token(mut self, cancel: CancellationToken) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Checks the settings and builds the `Rlm`.
    pub fn build(mut self) -> Result<Rlm, RlmError> {
        if let Some(schema) = self.schema.take() {
            self.config.output_schema = Some(crate::schema::OutputSchema::new(schema)?);
        }
        if self.config.root_model.trim().is_empty() {
            return Err(RlmError::Config("a root model name is required".into()));
        }
        if self
            .config
            .max_cost
            .is_some_and(|usd| !usd.is_finite() || usd < 0.0)
        {
            return Err(RlmError::Config(
                "max_cost must be a number of dollars, at least 0".into(),
            ));
        }
        crate::tool::check(&self.config.tools).map_err(RlmError::Config)?;
        if self.config.max_iterations == 0 {
            return Err(RlmError::Config("max_iterations must be at least 1".into()));
        }
        let root = self.root;
        let sub = self
            .sub
            .unwrap_or_else(|| Arc::new(ConcurrentExecutor::new(Arc::clone(&root))));
        Ok(Rlm {
            root,
            sub,
            config: self.config,
            observers: self.observers,
            cancel: self.cancel.unwrap_or_default(),
        })
    }
}
