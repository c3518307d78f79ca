//! Core types and traits of **rlm**, a Recursive Language Model engine.
//!
//! This crate is the small, dependency-light layer every other rlm crate builds on. It has no
//! HTTP and no scripting; it defines what a language model is to the engine and how many
//! calls run at once:
//!
//! - [`CompletionRequest`], [`Message`], [`Completion`], [`Usage`]: provider-independent
//!   request and response types.
//! - [`LlmBackend`]: the provider trait (object-safe, `Arc<dyn LlmBackend>`), forwarded through
//!   `Arc`, `Box` and `&` so decorators compose.
//! - [`BatchExecutor`]: many requests at once with at most `max_concurrent` in flight,
//!   results in input order, one `Result` per item, cancellable. Any backend gets the generic
//!   [`execute_bounded`] implementation with an empty `impl`, or through
//!   [`ConcurrentExecutor`].
//! - [`LlmError`]: one error enum that classifies failures and says whether to retry.
//! - [`usage`]: [`UsageTracker`](usage::UsageTracker) and the [`Metered`](usage::Metered)
//!   decorator: calls and tokens per model.
//! - [`cost`]: [`Prices`](cost::Prices), [`CostReport`](cost::CostReport) and
//!   [`CostBudget`](cost::CostBudget): cost in dollars and the `--max-cost`
//!   budget.
//! - [`blocking`]: entry points for code without an async runtime.
//! - `mock` (feature `mock`): a scripted `mock::MockBackend` for tests.
//!
//! Bringing your own provider takes one trait implementation (`async_trait` is re-exported,
//! so it needs no dependency of its own):
//!
//! ```
//! use rlm_core::async_trait;
//! use rlm_core::{BatchExecutor, BatchOptions, Completion, CompletionRequest, LlmBackend, LlmError};
//!
//! struct Reverse;
//!
//! #[async_trait]
//! impl LlmBackend for Reverse {
//!     async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
//!         let prompt = request.last_user_message().unwrap_or_default();
//!         Ok(Completion::new(&request.model, prompt.chars().rev().collect::<String>()))
//!     }
//! }
//!
//! // The generic bounded executor, for free.
//! impl BatchExecutor for Reverse {}
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let requests = ["abc", "xyz"].map(|p| CompletionRequest::prompt("m", p)).to_vec();
//! let results = Reverse.complete_batch(requests, &BatchOptions::new(8)).await;
//! assert_eq!(results[1].as_ref().map(|c| c.text.as_str()), Ok("zyx"));
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod backend;
mod batch;
pub mod blocking;
pub mod cost;
mod error;
#[cfg(feature = "mock")]
#[cfg_attr(docsrs, doc(cfg(feature = "mock")))]
pub mod mock;
mod reply_budget;
mod text;
mod types;
pub mod url;
pub mod usage;

/// The attribute [`LlmBackend`] implementations need (re-exported from the `async-trait`
/// crate): `#[rlm_core::async_trait]` on the `impl`.
pub use async_trait::async_trait;
pub use backend::LlmBackend;
pub use batch::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, ConcurrentExecutor,
    DEFAULT_MAX_CONCURRENT, execute_bounded,
};
pub use error::LlmError;
pub use reply_budget::ReplyBudget;
pub use text::{Text, TextOwner};
pub use tokio_util::sync::CancellationToken;
pub use types::{
    Completion, CompletionRequest, FinishReason, JsonSchemaFormat, Message, ResponseFormat, Role,
    Usage, estimate_tokens,
};
