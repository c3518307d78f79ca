//! What a run returns: the answer, why it stopped, usage and the whole trajectory.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use rlm_core::Usage;
use rlm_core::cost::CostReport;
use rlm_core::usage::ModelUsage;
use serde::{Serialize, Serializer};

use crate::RlmError;

/// Why a run stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    /// The root model gave `FINAL(...)` or `FINAL_VAR(...)`.
    Final,
    /// The turn budget ran out; the answer is the root model's best final answer when asked.
    MaxIterations,
    /// The sub-call budget ran out.
    MaxSubCalls,
    /// The token budget ran out.
    MaxTokens,
    /// The wall-time budget ran out.
    MaxTime,
    /// The run was cancelled (e.g. Ctrl-C).
    Cancelled,
    /// The cost budget (`max_cost`) ran out.
    MaxCost,
    /// The output schema's retries ran out: every final answer given did not conform, and
    /// there is no answer.
    InvalidOutput,
}

impl StopReason {
    /// The snake-case name used in `--json` output and traces.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Final => "final",
            StopReason::MaxIterations => "max_iterations",
            StopReason::MaxSubCalls => "max_sub_calls",
            StopReason::MaxTokens => "max_tokens",
            StopReason::MaxTime => "max_time",
            StopReason::Cancelled => "cancelled",
            StopReason::MaxCost => "max_cost",
            StopReason::InvalidOutput => "invalid_output",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn as_millis<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_u64(duration.as_millis().try_into().unwrap_or(u64::MAX))
}

/// The outcome of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunResult {
    /// The final answer (empty when the run stopped without one). With an output schema, the
    /// accepted value as compact JSON on one line.
    pub answer: String,
    /// With an output schema: the accepted answer as a JSON value, conforming to the schema
    /// (`None` when the run stopped without one, or had no schema).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub json: Option<serde_json::Value>,
    /// Root turns taken.
    pub iterations: usize,
    /// Why the run stopped.
    pub stopped: StopReason,
    /// Wall time of the run.
    #[serde(rename = "elapsed_ms", serialize_with = "as_millis")]
    pub elapsed: Duration,
    /// Calls and tokens per model (root and sub models alike).
    pub usage: BTreeMap<String, ModelUsage>,
    /// Calls made below the top-level root: `llm_query` calls, `llm_batch` items, and every
    /// call of child runs (their root turns and their sub-calls).
    pub sub_calls: u64,
    /// Sub-calls that failed (errors, replies cut at the token limit, replies without text),
    /// children's included.
    pub failed_sub_calls: u64,
    /// Sub-calls cut short by cancellation (Ctrl-C, the time budget), children's included;
    /// not counted in [`failed_sub_calls`](Self::failed_sub_calls).
    pub cancelled_sub_calls: u64,
    /// Calls of host functions ([`RlmBuilder::tool`](crate::RlmBuilder::tool)), children's
    /// included.
    pub tool_calls: u64,
    /// The deepest child run started (0: none).
    pub max_depth_reached: usize,
    /// Child runs started by `rlm_query` / `rlm_batch`, at every depth.
    pub child_runs: u64,
    /// Calls and tokens per model of the runs at each depth (index 0: the top-level run's
    /// root turns and sub-calls; 1: its children's; ...). Sums to [`usage`](Self::usage).
    pub usage_by_depth: Vec<BTreeMap<String, ModelUsage>>,
    /// Why the answer may not be trusted as it is, one sentence each: answers held for
    /// confirmation, sub-calls cut at the token limit or without text, an answer given after
    /// failed sub-calls, and (with an empty answer) why there is none. Empty for a clean run.
    pub warnings: Vec<String>,
    /// What the run cost in USD, by the run's prices (see
    /// [`RlmBuilder::prices`](crate::RlmBuilder::prices)).
    #[serde(rename = "cost_usd")]
    pub cost: CostReport,
    /// Calls a budget (`max_sub_calls`, `max_total_tokens`, `max_cost`) refused before
    /// sending, children's included: the script got an `Error: ...` string for each.
    pub refused_sub_calls: u64,
    /// USD per model charged at their cost estimate for calls cut short in flight (a batch
    /// stopped by a budget, a cancel, the clock): the server may have billed them but sent no
    /// usage, so [`usage`](Self::usage) does not hold them. Included in
    /// [`cost`](Self::cost); a caller that prices other usage adds it. Children's included.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub cut_short_cost: BTreeMap<String, f64>,
    /// Every turn, in order.
    pub trajectory: Vec<Turn>,
}

impl RunResult {
    /// The answer as a `T`: [`json`](Self::json) when the run had an output schema, else the
    /// answer's text parsed as JSON (or taken as a JSON string). An error says why it does
    /// not fit, or that there is no answer.
    pub fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, RlmError> {
        let value = match &self.json {
            Some(value) => value.clone(),
            None if self.answer.is_empty() => {
                return Err(RlmError::Answer(format!(
                    "the run stopped without an answer ({})",
                    self.stopped
                )));
            }
            None => serde_json::from_str(&self.answer)
                .unwrap_or_else(|_| serde_json::Value::String(self.answer.clone())),
        };
        serde_json::from_value(value).map_err(|e| RlmError::Answer(e.to_string()))
    }
}

/// One root turn: the reply, and what its code did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Turn {
    /// Turn number, from 1.
    pub turn: usize,
    /// The root model's reply.
    pub reply: String,
    /// Tokens of the root call.
    pub usage: Usage,
    /// Latency of the root call.
    #[serde(rename = "root_latency_ms", serialize_with = "as_millis")]
    pub root_latency: Duration,
    /// The code blocks of the reply, in order, with their outputs.
    pub blocks: Vec<BlockRecord>,
    /// The sub-calls the blocks made, in the order they finished.
    pub sub_calls: Vec<SubCallRecord>,
}

/// One executed code block.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BlockRecord {
    /// The code.
    pub code: String,
    /// What the root model was shown (printed output and error, truncated head and tail).
    pub output: String,
    /// The error, if the block failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Run time.
    #[serde(rename = "elapsed_ms", serialize_with = "as_millis")]
    pub elapsed: Duration,
}

/// One sub-call (`llm_query`, or one item of `llm_batch`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SubCallRecord {
    /// Run-wide sub-call number, from 1.
    pub id: u64,
    /// The batch it belonged to (`None` for `llm_query`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<u64>,
    /// Its position in the batch.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    /// The model asked.
    pub model: String,
    /// Length of the prompt in characters.
    pub prompt_chars: usize,
    /// Whether it succeeded.
    pub ok: bool,
    /// The error, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Tokens used.
    pub usage: Usage,
    /// Latency.
    #[serde(rename = "latency_ms", serialize_with = "as_millis")]
    pub latency: Duration,
}
