//! What a run reports while it runs: progress bars, logs and traces are observers.

use std::sync::Arc;

use rlm_core::Usage;
use rlm_core::cost::CostReport;
use rlm_core::usage::ModelUsage;
use serde::{Deserialize, Serialize};

use crate::{ContextInfo, StopReason, Turn};

/// Something that happened during a run.
///
/// Serialized with an `"event"` tag in snake case, each event is one line of the CLI's
/// `--trace` JSON Lines file, for example
/// `{"event":"sub_call_end","turn":1,"id":7,"batch":2,"index":5,...}` (see
/// [`trace`](crate::trace)). Read back, a field a line lacks (an older trace) is its type's
/// default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// The run began.
    RunStart {
        /// The user's query.
        #[serde(default)]
        query: String,
        /// The root model.
        #[serde(default)]
        root_model: String,
        /// The model of `llm_query` / `llm_batch`.
        #[serde(default)]
        sub_model: String,
        /// What the root model is told about the context.
        #[serde(default)]
        context: ContextInfo,
        /// The id of the run that started this one (`None` for the top-level run).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parent: Option<String>,
        /// The limits and budgets this run works under (boxed: the event stays small).
        #[serde(default)]
        settings: Box<RunSettings>,
        /// Wall-clock start, in milliseconds since the Unix epoch (UTC).
        #[serde(default)]
        started_at_unix_ms: u64,
        /// The system prompt the root model is given.
        #[serde(default)]
        system_prompt: String,
        /// The first user message the root model is given (the query and the context's
        /// description).
        #[serde(default)]
        first_message: String,
    },
    /// A root turn began: the root model is about to be asked.
    TurnStart {
        /// Turn number, from 1.
        #[serde(default)]
        turn: usize,
    },
    /// The root model replied.
    RootReply {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// The reply, as the model wrote it.
        #[serde(default)]
        text: String,
        /// Tokens of this root call.
        #[serde(default)]
        usage: Usage,
        /// Latency of the root call in milliseconds.
        #[serde(default)]
        elapsed_ms: u64,
    },
    /// The root reply held reasoning in its text (`<think>...</think>`, `<thinking>`,
    /// `<reasoning>`): it was taken out before the reply was read, so no code and no final
    /// answer in it counted. One event per reply that had any.
    RootReasoning {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// The reasoning sections, without their tags, joined by blank lines.
        #[serde(default)]
        text: String,
        /// A section was opened and never closed: the rest of the reply was reasoning.
        #[serde(default)]
        unclosed: bool,
    },
    /// A code block of the reply ran.
    CodeBlock {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// Position of the block in the reply, from 0.
        #[serde(default)]
        block: usize,
        /// The code.
        #[serde(default)]
        code: String,
        /// What the root model is shown: printed output and any error, truncated.
        #[serde(default)]
        output: String,
        /// The error, if the block failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Run time in milliseconds.
        #[serde(default)]
        elapsed_ms: u64,
    },
    /// A sub-call was sent.
    SubCallStart {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// Run-wide sub-call number, from 1.
        #[serde(default)]
        id: u64,
        /// The batch it belongs to (`None` for `llm_query`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<u64>,
        /// Its position in the batch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<usize>,
        /// The model asked.
        #[serde(default)]
        model: String,
        /// The prompt (for long prompts, the start of it; see `prompt_chars`).
        #[serde(default)]
        prompt: String,
        /// Length of the full prompt in characters.
        #[serde(default)]
        prompt_chars: usize,
    },
    /// A sub-call finished.
    SubCallEnd {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// Run-wide sub-call number (matches the start event).
        #[serde(default)]
        id: u64,
        /// The batch it belongs to (`None` for `llm_query`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        batch: Option<u64>,
        /// Its position in the batch.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        index: Option<usize>,
        /// The model asked.
        #[serde(default)]
        model: String,
        /// The reply text, when it succeeded.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        response: Option<String>,
        /// The error, when it failed (`"cancelled"` when it was cut short).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Whether it was cut short by cancellation (Ctrl-C, the time budget) rather than
        /// failing; such calls are not counted as failed.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        cancelled: bool,
        /// Tokens of this call.
        #[serde(default)]
        usage: Usage,
        /// Latency in milliseconds.
        #[serde(default)]
        latency_ms: u64,
    },
    /// A host function ([`RlmBuilder::tool`](crate::RlmBuilder::tool)) was called and
    /// returned.
    ToolCall {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// The tool's name.
        #[serde(default)]
        name: String,
        /// The start of its argument as JSON (at most 500 characters).
        #[serde(default)]
        argument: String,
        /// The error, when it failed (its result was an `Error: ...` string).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// How long it took, in milliseconds.
        #[serde(default)]
        elapsed_ms: u64,
    },
    /// An `llm_batch` began.
    BatchStart {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// Run-wide batch number, from 1.
        #[serde(default)]
        batch: u64,
        /// Number of prompts.
        #[serde(default)]
        total: usize,
        /// Concurrency limit of this batch.
        #[serde(default)]
        max_concurrent: usize,
    },
    /// One more item of a batch finished.
    BatchProgress {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// Batch number.
        #[serde(default)]
        batch: u64,
        /// Items finished so far.
        #[serde(default)]
        done: usize,
        /// Items that failed so far (cancelled items not counted).
        #[serde(default)]
        failed: usize,
        /// Items in the batch.
        #[serde(default)]
        total: usize,
    },
    /// An `llm_batch` finished.
    BatchEnd {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// Batch number.
        #[serde(default)]
        batch: u64,
        /// Items in the batch.
        #[serde(default)]
        total: usize,
        /// Items that failed.
        #[serde(default)]
        failed: usize,
        /// Wall time in milliseconds.
        #[serde(default)]
        elapsed_ms: u64,
    },
    /// A root turn ended: what it came to. The reply is in [`RootReply`](Self::RootReply),
    /// the code and outputs in [`CodeBlock`](Self::CodeBlock), the sub-calls in
    /// [`SubCallEnd`](Self::SubCallEnd); the whole turn is in
    /// [`RunResult::trajectory`](crate::RunResult::trajectory).
    TurnEnd {
        /// Turn number.
        #[serde(default)]
        turn: usize,
        /// Tokens of the root call.
        #[serde(default)]
        usage: Usage,
        /// Latency of the root call in milliseconds.
        #[serde(default)]
        root_latency_ms: u64,
        /// Code blocks that ran.
        #[serde(default)]
        blocks: usize,
        /// Code blocks that failed.
        #[serde(default)]
        failed_blocks: usize,
        /// Sub-calls the blocks made.
        #[serde(default)]
        sub_calls: usize,
        /// Sub-calls that failed (cancelled ones not counted).
        #[serde(default)]
        failed_sub_calls: usize,
        /// Sub-calls cut short by cancellation.
        #[serde(default)]
        cancelled_sub_calls: usize,
        /// What the loop made of the turn's answer: `"accepted"` (the run ends with it),
        /// `"held"` (held once for the model to confirm), `"refused"` (not accepted; the model
        /// was told why) or `"no_answer"` (the reply gave none). Read back from a trace
        /// written before verdicts were recorded, it is [`TurnVerdict::Unrecorded`].
        #[serde(default)]
        verdict: TurnVerdict,
    },
    /// The run failed without an answer: the root model could not be reached or refused
    /// (the run returns [`RlmError::Root`](crate::RlmError::Root)). No `Final` follows.
    RunError {
        /// The turn whose root call failed.
        #[serde(default)]
        turn: usize,
        /// What the backend reported.
        #[serde(default)]
        error: String,
    },
    /// A final answer did not conform to the run's output schema and was refused.
    OutputRefused {
        /// The turn that gave it.
        #[serde(default)]
        turn: usize,
        /// Its first validation errors (instance path and message), one per line.
        #[serde(default)]
        errors: String,
        /// Answers refused so far in this run, this one included.
        #[serde(default)]
        refusals: usize,
        /// Whether this refusal ended the run (`stopped: "invalid_output"`).
        #[serde(default)]
        last: bool,
    },
    /// The run ended.
    Final {
        /// The answer.
        #[serde(default)]
        answer: String,
        /// Why the run stopped.
        stopped: StopReason,
        /// Root turns taken.
        #[serde(default)]
        iterations: usize,
        /// Wall time in milliseconds.
        #[serde(default)]
        elapsed_ms: u64,
        /// Calls and tokens per model.
        #[serde(default)]
        usage: std::collections::BTreeMap<String, ModelUsage>,
        /// Why the answer may not be trusted as it is (see
        /// [`RunResult::warnings`](crate::RunResult::warnings)).
        #[serde(default)]
        warnings: Vec<String>,
        /// What the run cost in USD: `{"total", "by_model", "unpriced"}`.
        #[serde(default)]
        cost_usd: CostReport,
    },
}

/// The limits and budgets of a run, as [`Event::RunStart`] reports them. Budgets without a
/// limit are `None` (`null` in the trace); times are in milliseconds. Read back from a trace,
/// a setting the trace lacks is its type's default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RunSettings {
    /// Root turns before the model is asked for its best answer (a child's own limit).
    pub max_iterations: usize,
    /// Sub-calls allowed over the whole tree.
    pub max_sub_calls: Option<u64>,
    /// Tokens allowed over the whole tree.
    pub max_total_tokens: Option<u64>,
    /// Wall time allowed for the whole tree, in milliseconds.
    pub max_time_ms: Option<u64>,
    /// Default concurrency of `llm_batch`.
    pub max_concurrent: usize,
    /// Levels of runs (1: no recursion).
    pub max_depth: usize,
    /// The root model of child runs.
    pub child_model: String,
    /// Root turns of a child run.
    pub child_max_iterations: usize,
    /// The largest sub-call prompt, in estimated tokens.
    pub sub_max_prompt_tokens: Option<u64>,
    /// Characters of a block's output the root model is shown.
    pub max_output_chars: usize,
    /// Wall-clock script time per code block, in milliseconds.
    pub block_timeout_ms: u64,
    /// Longest string a script may build, in bytes.
    pub max_string_bytes: usize,
    /// Rhai operations per code block.
    pub max_operations: u64,
    /// Bytes the sandbox's values may hold over the whole tree.
    pub max_memory: usize,
    /// Dollars the whole tree may spend.
    pub max_cost_usd: Option<f64>,
}

/// What the loop made of a root turn's answer, as [`Event::TurnEnd`] reports it (snake case
/// in the trace).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum TurnVerdict {
    /// The turn gave an answer and the run ends with it.
    Accepted,
    /// The turn gave an answer that was held for confirmation (it came from a block that
    /// raised a warning, or it is an `Error: ...` string); the next `FINAL` stands.
    Held,
    /// The turn gave an answer that was not accepted (written before the output it rests
    /// on, in a reply cut at the token limit, or from code that failed); the model was told
    /// why.
    Refused,
    /// The turn gave no answer.
    NoAnswer,
    /// The turn gave an answer that does not conform to the output schema; the model was
    /// shown its first errors (or, when the retries ran out, the run ended without an
    /// answer).
    InvalidOutput,
    /// Not recorded: what a trace written before verdicts were recorded reads back as (and
    /// any verdict this version does not know). The engine never reports it.
    #[default]
    #[serde(other)]
    Unrecorded,
}

impl Event {
    /// The [`TurnEnd`](Self::TurnEnd) event of a finished turn.
    pub(crate) fn turn_end(turn: &Turn, verdict: TurnVerdict) -> Self {
        let cancelled = turn
            .sub_calls
            .iter()
            .filter(|c| c.error.as_deref() == Some(CANCELLED))
            .count();
        Event::TurnEnd {
            turn: turn.turn,
            usage: turn.usage,
            root_latency_ms: u64::try_from(turn.root_latency.as_millis()).unwrap_or(u64::MAX),
            blocks: turn.blocks.len(),
            failed_blocks: turn.blocks.iter().filter(|b| b.error.is_some()).count(),
            sub_calls: turn.sub_calls.len(),
            failed_sub_calls: turn.sub_calls.iter().filter(|c| !c.ok).count() - cancelled,
            cancelled_sub_calls: cancelled,
            verdict,
        }
    }
}

/// The error text of a cancelled sub-call.
const CANCELLED: &str = "cancelled";

impl RunSettings {
    /// The settings of a run of `config` whose turn limit is `max_iterations`.
    pub(crate) fn new(config: &crate::RlmConfig, max_iterations: usize) -> Self {
        let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            max_iterations,
            max_sub_calls: config.max_sub_calls,
            max_total_tokens: config.max_total_tokens,
            max_time_ms: config.max_time.map(ms),
            max_concurrent: config.max_concurrent,
            max_depth: config.max_depth,
            child_model: config.child_model().to_owned(),
            child_max_iterations: config.child_max_iterations,
            sub_max_prompt_tokens: config.sub_max_prompt_tokens,
            max_output_chars: config.max_output_chars,
            block_timeout_ms: ms(config.sandbox.block_timeout),
            max_string_bytes: config.sandbox.max_string_size,
            max_operations: config.sandbox.max_operations,
            max_memory: config.sandbox.max_memory,
            max_cost_usd: config.max_cost,
        }
    }
}

/// Where in the recursion tree a run is: its depth (0: the top-level run) and its id path
/// (`"0"`, `"0.3"`, `"0.3.1"`: the third child of the top-level run, and that child's first
/// child). The CLI's `--trace` writes both on every line as `depth` and `run`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RunPlace {
    /// Depth in the tree: 0 for the top-level run, 1 for its children, ...
    pub depth: usize,
    /// The id path: the parent's id, a dot, and the child's number (from 1).
    pub run: String,
}

impl Default for RunPlace {
    fn default() -> Self {
        Self {
            depth: 0,
            run: "0".to_owned(),
        }
    }
}

/// Receives every [`Event`] of a run, in order, children's events included.
///
/// Called synchronously from the run (sometimes from the REPL's blocking thread): keep it
/// quick, and never block on the run itself.
pub trait Observer: Send + Sync {
    /// Something happened.
    fn on_event(&self, event: &Event);

    /// Something happened in the run at `place` of the recursion tree (a child run started
    /// by `rlm_query` has depth 1 or more). By default, [`on_event`](Self::on_event).
    fn on_run_event(&self, place: &RunPlace, event: &Event) {
        let _ = place;
        self.on_event(event);
    }
}

impl<F: Fn(&Event) + Send + Sync> Observer for F {
    fn on_event(&self, event: &Event) {
        self(event)
    }
}

impl<T: Observer + ?Sized> Observer for Arc<T> {
    fn on_event(&self, event: &Event) {
        (**self).on_event(event)
    }

    fn on_run_event(&self, place: &RunPlace, event: &Event) {
        (**self).on_run_event(place, event)
    }
}
