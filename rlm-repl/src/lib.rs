//! The sandboxed Rhai REPL and the Recursive Language Model loop of **rlm**.
//!
//! A Recursive Language Model answers a query over a context far larger than any model's
//! window. The context is never pasted into a prompt: it lives in a persistent, sandboxed
//! [Rhai](https://rhai.rs) REPL as the variable `context`, the root model writes code in
//! ```` ```repl ```` blocks to explore it, and that code hands pieces of it to a sub-model with
//! `llm_query(prompt)` or, concurrently, `llm_batch(prompts)`.
//!
//! - [`Rlm`] (built with [`Rlm::builder`]) runs the loop: it asks the root model, runs every
//!   code block of the reply, feeds the output back, and stops at `FINAL(...)` /
//!   `FINAL_VAR(...)` or when a budget runs out ([`StopReason`]). [`RunResult`] carries the
//!   answer, usage per model and the whole trajectory; [`Observer`]s see every [`Event`]
//!   (the CLI's `--trace` lines).
//! - [`Repl`] is the environment on its own: the REPL functions, native helpers for huge
//!   strings (`chunk`, `lines`, `grep`, `regex_*`, `parse_json`, `join`, ...), Python names
//!   models reach for, errors with line, column and hints, and [`SandboxLimits`].
//! - [`Session`] (from [`Rlm::session`]) answers follow-up questions in one REPL: variables
//!   and the conversation are kept, the context is not loaded again; it saves to and resumes
//!   from a versioned JSON file ([`SessionFile`]).
//! - [`prompt`] holds the system prompt that teaches this Rhai dialect.
//! - [`schema`]: typed answers. [`RlmBuilder::output_schema`] (a JSON Schema) makes the run's
//!   final answer conform to it: a `FINAL` value that does not is refused with its first
//!   errors, and [`RunResult::json`] holds the accepted value ([`StopReason::InvalidOutput`]
//!   when the retries ran out). In the REPL, `llm_query_json` / `llm_batch_json` return
//!   parsed, validated values ([`StructuredOutput`] says how the sub-model is asked). With the
//!   feature `schemars`, [`RlmBuilder::output_type`] derives the schema from a Rust type and
//!   [`RunResult::parse`] gives it back.
//!
//! Sub-calls go through an [`rlm_core::BatchExecutor`], so any backend works, and rate
//! limits or caches compose as decorators. Each REPL evaluation runs on a thread of its own
//! and never blocks a runtime worker; [`Rlm::run`] works in multi-thread and current-thread
//! tokio runtimes, and [`Rlm::run_blocking`] without one.
//!
//! ```
//! use std::sync::Arc;
//! use rlm_core::mock::MockBackend;
//! use rlm_repl::{Context, Rlm, StopReason};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), rlm_repl::RlmError> {
//! // The root model: a script of replies. Its code asks the sub-model about every chunk.
//! let root = MockBackend::scripted([
//!     "```repl\nlet answers = llm_batch(chunk(context, 20));\nprint(answers);\n```",
//!     "```repl\nlet hits = answers.filter(|a| a != \"no\");\nFINAL(hits[0]);\n```",
//! ]);
//! // The sub-model: says where the needle is.
//! let sub = MockBackend::from_fn(|request| {
//!     let prompt = request.last_user_message().unwrap_or_default();
//!     Ok(if prompt.contains("needle") { "found it".into() } else { "no".into() })
//! });
//! let rlm = Rlm::builder(Arc::new(root))
//!     .root_model("root")
//!     .sub_backend(Arc::new(sub))
//!     .sub_model("sub")
//!     .build()?;
//! let text = format!("{}needle{}", "hay ".repeat(20), " hay".repeat(20));
//! let result = rlm.run("Where is the needle?", Context::from(text)).await?;
//! assert_eq!(result.answer, "found it");
//! assert_eq!(result.stopped, StopReason::Final);
//! assert_eq!(result.iterations, 2);
//! assert_eq!(result.usage["sub"].calls, result.sub_calls);
//! # Ok(())
//! # }
//! ```

mod budget;
mod config;
mod context;
mod emitter;
mod error;
mod events;
mod ledger;
mod parse;
pub mod prompt;
mod repl;
mod result;
mod rlm;
mod run;
pub mod schema;
mod session;
mod state;
mod sync;
pub mod tool;
pub mod trace;
mod words;

pub use config::{DEFAULT_MAX_MEMORY, DEFAULT_OUTPUT_SCHEMA_RETRIES, RlmConfig, SandboxLimits};
pub use context::{Context, ContextInfo, SharedContext, TextBuilder, parse_json_exact};
pub use error::RlmError;
pub use events::{Event, Observer, RunPlace, RunSettings, TurnVerdict};
pub use repl::{BlockOutcome, Repl, ReplBuilder};
pub use result::{BlockRecord, RunResult, StopReason, SubCallRecord, Turn};
pub use rlm::{Rlm, RlmBuilder};
pub use schema::{OutputSchema, StructuredOutput};
pub use session::{
    ContextStamp, Exchange, SESSION_FORMAT, SESSION_VERSION, SavedVariable, Session, SessionFile,
    Skipped,
};
pub use tool::{Tool, ToolFuture};

/// Whether a root reply holds a text `FINAL(...)` / `FINAL_VAR(...)` marker, found as the loop
/// finds one (at the start of a line, Markdown decoration allowed, outside code): for tools
/// that read traces written before turns carried their verdict.
pub fn has_text_final(reply: &str) -> bool {
    parse::parse_reply(reply).final_marker.is_some()
}

#[cfg(test)]
mod tests {
    use super::has_text_final;

    #[test]
    fn text_final_markers_are_found_at_line_starts_only() {
        assert!(has_text_final("done\n**FINAL(42)**"));
        assert!(has_text_final("> FINAL_VAR(x)"));
        assert!(!has_text_final("call `FINAL(x)` when done"));
        assert!(!has_text_final("```repl\nFINAL(x)\n```"));
        assert!(!has_text_final("~~~~\n```\nFINAL(x)\n~~~~~\n"));
        assert!(has_text_final("```repl\nprint(1);\n```\nFINAL(1)"));
    }
}
