//! The books of a tree of runs: what its calls used and how they went.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Mutex, OnceLock};

use rlm_core::LlmError;
use rlm_core::usage::{ModelUsage, UsageTracker};

use crate::sync::lock;

/// What every run of one recursion tree records: usage per model and per depth, what went
/// wrong in sub-calls, the children started and their warnings. What the tree may still
/// spend is its [`Budget`](crate::budget::Budget).
#[derive(Default)]
pub(crate) struct Ledger {
    /// Calls and tokens per model, over the whole tree.
    pub(crate) usage: UsageTracker,
    /// Calls and tokens per model of the runs at each depth (index 0: the top-level run).
    by_depth: Mutex<Vec<UsageTracker>>,
    /// A sub-call failure that every other sub-call would share (bad key, unknown model):
    /// the run stops with it.
    fatal: Mutex<Option<LlmError>>,
    /// Sub-calls whose reply was cut at the token limit.
    pub(crate) cut_sub_calls: AtomicU64,
    /// Sub-calls whose reply carried no answer text.
    pub(crate) empty_sub_calls: AtomicU64,
    /// Sub-calls that failed (errors, cut or empty replies), over the whole tree.
    pub(crate) failed_sub_calls: AtomicU64,
    /// Sub-calls cut short by cancellation (Ctrl-C, the time budget), over the whole tree;
    /// not counted in `failed_sub_calls`.
    pub(crate) cancelled_sub_calls: AtomicU64,
    /// Calls whose server sent no token usage: their usage is an estimate.
    pub(crate) estimated_usage: AtomicU64,
    /// Calls of host functions (tools), over the whole tree.
    pub(crate) tool_calls: AtomicU64,
    /// Child runs started.
    pub(crate) child_runs: AtomicU64,
    /// The deepest run started (0: no child).
    pub(crate) max_depth_reached: AtomicUsize,
    /// Warnings of child runs, for the top-level result.
    pub(crate) child_warnings: Mutex<Vec<String>>,
    /// Models whose server refused `response_format`: `llm_*_json` puts the schema in their
    /// prompt for the rest of the run (and keys of warnings given once).
    pub(crate) format_refused: Mutex<std::collections::BTreeSet<String>>,
    /// Bytes each run's variables held after its last block (an estimate), by run id: the
    /// memory budget is one budget for the tree.
    scope_bytes: Mutex<BTreeMap<String, usize>>,
    /// The tree's memory budget once fitted to the top-level run's context (see
    /// [`SandboxLimits::max_memory_fits_context`](crate::SandboxLimits)): the children
    /// share it.
    fitted_memory: OnceLock<usize>,
}

impl Ledger {
    /// The usage tracker of the runs at `depth`.
    pub(crate) fn usage_at(&self, depth: usize) -> UsageTracker {
        let mut by_depth = lock(&self.by_depth);
        while by_depth.len() <= depth {
            by_depth.push(UsageTracker::new());
        }
        by_depth[depth].clone()
    }

    /// Calls and tokens per model of the runs at each depth.
    pub(crate) fn usage_by_depth(&self) -> Vec<BTreeMap<String, ModelUsage>> {
        lock(&self.by_depth)
            .iter()
            .map(UsageTracker::snapshot)
            .collect()
    }

    /// What the variables of the run `run` may hold under the tree's memory budget of
    /// `max_memory` bytes (0: none): the budget less what the other runs hold, at least one
    /// byte (0 would mean no budget).
    pub(crate) fn scope_budget(&self, run: &str, max_memory: usize) -> usize {
        if max_memory == 0 {
            return 0;
        }
        let others = lock(&self.scope_bytes)
            .iter()
            .filter(|(id, _)| id.as_str() != run)
            .map(|(_, bytes)| *bytes)
            .fold(0, usize::saturating_add);
        max_memory.saturating_sub(others).max(1)
    }

    /// The tree's memory budget fitted to its context: computed by `fit` for the first run
    /// built (the top-level run), the same for every later run of the tree.
    pub(crate) fn fitted_memory(&self, fit: impl FnOnce() -> usize) -> usize {
        *self.fitted_memory.get_or_init(fit)
    }

    /// The variables of the run `run` now hold `bytes`.
    pub(crate) fn hold_scope(&self, run: &str, bytes: usize) {
        lock(&self.scope_bytes).insert(run.to_owned(), bytes);
    }

    /// The run `run` ended: its variables are gone.
    pub(crate) fn release_scope(&self, run: &str) {
        lock(&self.scope_bytes).remove(run);
    }

    /// Records a failure that every other sub-call would share (the first one wins).
    pub(crate) fn record_fatal(&self, error: &LlmError) {
        lock(&self.fatal).get_or_insert_with(|| error.clone());
    }

    /// The failure that stopped the tree, if one did.
    pub(crate) fn fatal(&self) -> Option<LlmError> {
        lock(&self.fatal).clone()
    }
}
