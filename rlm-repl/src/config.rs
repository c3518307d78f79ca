//! Settings of a run and of the sandbox.

use std::time::Duration;

use rlm_core::DEFAULT_MAX_CONCURRENT;
use rlm_core::cost::Prices;

use crate::schema::{OutputSchema, StructuredOutput};

/// Default of [`RlmConfig::output_schema_retries`].
pub const DEFAULT_OUTPUT_SCHEMA_RETRIES: usize = 2;

/// Default of [`SandboxLimits::max_memory`]: 1 GiB.
pub const DEFAULT_MAX_MEMORY: usize = 1 << 30;

/// Limits that stop runaway code. Each applies to one code block; a block that hits one
/// fails with an error the root model sees, and the run goes on. A limit of 0 means no limit
/// (as in Rhai). The native helpers (`chunk`, `grep`, `join`, `split`, `pad`, ...) check the
/// size limits while they build their results, not only after.
///
/// The size limits apply to each value on its own (a string's bytes, an array's items, a map's
/// entries) and are checked in O(1) whenever a variable is used and by every function that
/// grows a value, so a loop that pushes a million items stays linear. What the whole scope
/// holds is bounded by [`max_memory`](Self::max_memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxLimits {
    /// Rhai operations per block.
    pub max_operations: u64,
    /// Longest string a script may build, in bytes (raised to fit the context if needed).
    pub max_string_size: usize,
    /// Longest array a script may build.
    pub max_array_size: usize,
    /// Largest map a script may build.
    pub max_map_size: usize,
    /// Deepest function call nesting.
    pub max_call_depth: usize,
    /// Deepest expression nesting (parentheses, nested calls and blocks).
    pub max_expr_depth: usize,
    /// Wall-clock time a block may spend running script code. Time spent waiting for
    /// sub-calls does not count: a long `llm_batch` is work, not a runaway loop. `sleep`
    /// counts, and stops with the block.
    pub block_timeout: Duration,
    /// Bytes the REPL's variables may hold, the context excepted (default 1 GiB; 0: no
    /// limit). Checked after every block (an estimate of each variable's size: the
    /// variables that do not fit are removed, largest first, and the model is told which)
    /// and, on Linux, while a block runs (the process's resident memory may not grow by more
    /// than this during one block: the block is stopped). Also bounds what one `llm_batch`
    /// may send and keep.
    pub max_memory: usize,
    /// Fit [`max_memory`](Self::max_memory) to the context (the CLI's default, `--max-memory
    /// auto`): each tree of runs may hold `max_memory` plus twice its context's size (the
    /// chunks of the context and the prompts built from them), but no more than the
    /// machine's memory (or its container's limit) less the context, where it can be read,
    /// and never less than `max_memory`. Off by default in the library: `max_memory` is then
    /// the budget as given. No effect when `max_memory` is 0 (no limit).
    pub max_memory_fits_context: bool,
}

impl Default for SandboxLimits {
    fn default() -> Self {
        Self {
            max_operations: 200_000_000,
            max_string_size: 256 << 20,
            max_array_size: 10_000_000,
            max_map_size: 1_000_000,
            max_call_depth: 64,
            max_expr_depth: 64,
            block_timeout: Duration::from_secs(60),
            max_memory: DEFAULT_MAX_MEMORY,
            max_memory_fits_context: false,
        }
    }
}

/// Settings of a run. Built through [`RlmBuilder`](crate::RlmBuilder).
#[derive(Debug, Clone, PartialEq)]
pub struct RlmConfig {
    /// The root model's name.
    pub root_model: String,
    /// The model of `llm_query` / `llm_batch` (defaults to the root model).
    pub sub_model: Option<String>,
    /// Root turns before the root model is asked for its best final answer.
    pub max_iterations: usize,
    /// Sub-calls allowed over the run.
    pub max_sub_calls: Option<u64>,
    /// Tokens (root and sub, prompt and completion) allowed over the run.
    pub max_total_tokens: Option<u64>,
    /// Wall time allowed for the run.
    pub max_time: Option<Duration>,
    /// USD allowed over the run: each root and sub call reserves its estimated cost before
    /// it is sent and settles it with the reported usage.
    pub max_cost: Option<f64>,
    /// Prices of the models, for the run's cost and `max_cost` (default: the built-in table).
    pub prices: Prices,
    /// Default concurrency of `llm_batch` (a script may pass its own).
    pub max_concurrent: usize,
    /// Characters of a code block's output shown to the root model (head and tail kept).
    pub max_output_chars: usize,
    /// Replaces the built-in system prompt.
    pub system_prompt: Option<String>,
    /// Limits of the sandbox.
    pub sandbox: SandboxLimits,
    /// Levels of runs: the top-level run is depth 0, and a run at depth `max_depth - 1`
    /// gets `rlm_query` as a plain `llm_query` (default 2: the top-level run may start
    /// children; its children cannot). 1 turns recursion off.
    pub max_depth: usize,
    /// The root model of child runs (default: the sub model).
    pub child_model: Option<String>,
    /// Root turns of a child run before it is asked for its best answer (default 10).
    pub child_max_iterations: usize,
    /// The largest sub-call prompt, in estimated tokens (about four bytes each): a larger
    /// `llm_query` / `llm_batch` item fails at once with an `Error:` naming both sizes.
    pub sub_max_prompt_tokens: Option<u64>,
    /// Host functions the REPL may call by name (see [`crate::tool`]), in child runs too.
    pub tools: Vec<crate::Tool>,
    /// The schema the top-level run's final answer must conform to (`None`: any text).
    pub output_schema: Option<OutputSchema>,
    /// Non-conforming final answers refused (the model is shown why and tries again) before
    /// the run ends with [`StopReason::InvalidOutput`](crate::StopReason::InvalidOutput)
    /// (default 2).
    pub output_schema_retries: usize,
    /// How `llm_query_json` / `llm_batch_json` ask for JSON (default: auto).
    pub structured_output: StructuredOutput,
}

impl RlmConfig {
    /// The model of `llm_query` / `llm_batch`.
    pub fn sub_model(&self) -> &str {
        self.sub_model.as_deref().unwrap_or(&self.root_model)
    }

    /// The root model of child runs.
    pub fn child_model(&self) -> &str {
        self.child_model
            .as_deref()
            .unwrap_or_else(|| self.sub_model())
    }
}

impl Default for RlmConfig {
    fn default() -> Self {
        Self {
            root_model: String::new(),
            sub_model: None,
            max_iterations: 20,
            max_sub_calls: None,
            max_total_tokens: None,
            max_time: None,
            max_cost: None,
            prices: Prices::builtin(),
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_output_chars: 20_000,
            system_prompt: None,
            sandbox: SandboxLimits::default(),
            max_depth: 2,
            child_model: None,
            child_max_iterations: 10,
            sub_max_prompt_tokens: None,
            tools: Vec::new(),
            output_schema: None,
            output_schema_retries: DEFAULT_OUTPUT_SCHEMA_RETRIES,
            structured_output: StructuredOutput::Auto,
        }
    }
}
