//! What every rlm front end shares: the `rlm` command, `rlm serve`, `rlm mcp`, and next
//! `rlm batch`, `rlm worker` and the Python package.
//!
//! - [`context`]: loading a context (a file, a directory of documents, JSON, JSON Lines,
//!   stdin) within a byte bound, with the symlink and dot-file rules, and
//!   [`AllowedRoots`](context::AllowedRoots) for a server that reads paths its clients name.
//! - [`Settings`]: plain data, one field per model, server, limit, budget, sandbox and cache
//!   flag of `rlm run` (no command-line types: a front end converts its own options).
//! - [`Stack`]: settings to the backend stack every run of a process shares: the
//!   OpenAI-compatible HTTP backend with its pacing and retries, usage metering, and the
//!   tiers of the sub-call cache (memory; disk with feature `disk`; Redis, with shared
//!   pacing, with feature `redis`). [`Stack::rlm_builder`] sets up a run on it. A tier that
//!   cannot be used (a corrupt or read-only cache file, a Redis URL this build cannot use)
//!   is left out with a warning, never a failed start: [`Stack::warnings`].
//! - [`prices`]: a prices file over the built-in table.
//! - [`output_schema`]: `--output-schema FILE` read and compiled (a file that is not JSON, not
//!   a valid schema or too big is a usage error naming the problem); [`Settings`] carries it
//!   with `output_schema_retries` and `structured_output`, and [`RunOptions::output_schema`]
//!   sets one run's schema (a server request's `response_format`).
//! - [`Runner`]: the stack and run settings shared by many runs (a server's requests).
//! - [`session`]: sessions for front ends: open or resume a session file, save it
//!   atomically, and the question loop of `rlm chat` over any [`LineReader`](session::LineReader).
//! - [`jobs`], [`batch`], [`results`]: many jobs on one stack (`rlm batch`): job files
//!   checked whole then streamed, [`batch::JobRunner`] running them `max_runs` at once
//!   (per-job budgets, a [`TotalCost`] budget across them), result files written a whole
//!   line at a time and resumed after a kill, scoring and the summary.
//! - `queue` (feature `redis`): the same jobs across machines on Redis Streams (`rlm batch
//!   --queue`, `rlm worker`).
//! - [`supervise`]: the grace a cancelled run gets to wind down, and the time budget that
//!   ends a run whatever its code does.
//!
//! The main types of the crates below are re-exported, so a front end can depend on this
//! crate alone (as `tower` stands beside `tower-service`).
//!
//! ```no_run
//! use rlm_host::{Context, Settings, Stack, context};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Settings {
//!     base_url: "http://localhost:11434/v1".into(),
//!     ..Settings::new("llama3.1")
//! };
//! let loaded = context::load(Some("notes.txt"), &context::LoadOptions::default(), std::io::empty())?;
//! let stack = Stack::build(&settings, None, 1)?;
//! let rlm = stack
//!     .rlm_builder(&settings)?
//!     .prices(settings.load_prices()?)
//!     .build()?;
//! let result = rlm.run("What do these notes decide?", loaded.context).await?;
//! println!("{} ({:?})", result.answer, stack.usage());
//! # Ok(())
//! # }
//! ```
//!
//! Features: `disk` (a persistent cache on SQLite) and `redis` (a shared cache tier and
//! shared pacing); without them, settings that ask for either are refused with a usage
//! error.

pub mod batch;
pub mod context;
mod error;
pub mod jobs;
pub mod output_schema;
pub mod prices;
#[cfg(feature = "redis")]
pub mod queue;
pub mod results;
mod runner;
mod sent;
pub mod session;
mod settings;
mod stack;
mod state;
pub mod supervise;
mod total;
mod url;

pub use error::HostError;
pub use runner::{RunOptions, Runner};
pub use settings::Settings;
pub use stack::{Stack, pool_size};
pub use total::{TOTAL_REFUSAL, TotalCost};
pub use url::display_url;

pub use rlm_cache::{CacheStats, CachedBackend};
pub use rlm_core::cost::{CostReport, Prices};
pub use rlm_core::usage::{ModelUsage, UsageTracker};
pub use rlm_core::{BatchExecutor, CancellationToken, LlmBackend, LlmError};
pub use rlm_openai::{OpenAiBackend, OpenAiConfig, Wait, WaitObserver};
pub use rlm_repl::trace;
pub use rlm_repl::{
    Context, DEFAULT_OUTPUT_SCHEMA_RETRIES, Event, Observer, OutputSchema, Rlm, RlmBuilder,
    RlmConfig, RlmError, RunPlace, RunResult, SandboxLimits, Session, SessionFile, SharedContext,
    StopReason, StructuredOutput, Tool,
};
