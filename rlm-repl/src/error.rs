//! The crate's error type.

use rlm_core::LlmError;

/// Why a run could not be carried out.
///
/// Budgets running out, code that fails and sub-calls that fail are not errors: the run goes
/// on or stops with a [`StopReason`](crate::StopReason). An `RlmError` means there is no
/// answer to give.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RlmError {
    /// The builder was given settings that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// An output schema that cannot be used: not a JSON Schema, invalid for its draft,
    /// too large, or with a `$ref` outside the document.
    #[error("invalid output schema: {0}")]
    Schema(String),
    /// The answer could not be read as the type asked for
    /// ([`RunResult::parse`](crate::RunResult::parse)).
    #[error("the answer is not of the type asked for: {0}")]
    Answer(String),
    /// The root model could not be reached or refused (after the backend's retries).
    #[error("root model call failed on turn {turn}: {source}")]
    Root {
        /// The turn whose call failed.
        turn: usize,
        /// What the backend reported.
        #[source]
        source: LlmError,
    },
    /// The sub model refused a call for a reason that every other call shares (credentials,
    /// quota, an unknown model): the run stopped at once rather than answer from failures.
    #[error("the sub model ({model}) cannot be used: {source}")]
    SubModel {
        /// The model of `llm_query` / `llm_batch`.
        model: String,
        /// What the backend reported.
        #[source]
        source: LlmError,
    },
    /// A session file that cannot be read, written or resumed (unknown version, malformed,
    /// another context); the message says which and why.
    #[error("session: {0}")]
    Session(String),
    /// A bug in rlm (e.g. the REPL thread panicked). Please report it.
    #[error("internal error: {0}")]
    Internal(String),
}
