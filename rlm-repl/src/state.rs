//! One run of a tree: its place, its cancellation, its turn and its observers, over the
//! tree's shared [`Ledger`] and [`Budget`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use rlm_core::{CancellationToken, LlmError};

use crate::RunPlace;
use crate::budget::Budget;
use crate::emitter::Emitter;
use crate::ledger::Ledger;

/// One run of the tree (the top-level run, or a child started by `rlm_query`), or one
/// standalone [`Repl`](crate::Repl).
pub(crate) struct RunState {
    /// What the tree's calls used and how they went.
    pub(crate) ledger: Arc<Ledger>,
    /// What the tree may still spend, and why it must stop.
    pub(crate) budget: Arc<Budget>,
    /// Cancelled when this run must stop at once (a child of the parent run's token).
    pub(crate) cancel: CancellationToken,
    /// The turn being run, for events.
    pub(crate) turn: AtomicUsize,
    /// Observers of the run.
    pub(crate) emitter: Emitter,
    /// Children started so far (their ids are `{id}.{n}`, from 1).
    next_child: AtomicU64,
}

impl RunState {
    /// The top-level run of a new tree with `budget`, cancelled with the tree.
    pub(crate) fn new(budget: Budget, emitter: Emitter) -> Self {
        let cancel = budget.cancel.clone();
        Self::in_tree(Arc::default(), Arc::new(budget), cancel, emitter)
    }

    /// A run over an existing tree's books and budget.
    fn in_tree(
        ledger: Arc<Ledger>,
        budget: Arc<Budget>,
        cancel: CancellationToken,
        emitter: Emitter,
    ) -> Self {
        Self {
            ledger,
            budget,
            cancel,
            turn: AtomicUsize::new(0),
            emitter,
            next_child: AtomicU64::new(0),
        }
    }

    /// The state of a new child run of this one, one level deeper.
    pub(crate) fn child(&self) -> Self {
        let n = self.next_child.fetch_add(1, Ordering::SeqCst) + 1;
        let place = self.emitter.place();
        let id = format!("{}.{n}", place.run);
        let depth = place.depth + 1;
        self.ledger.child_runs.fetch_add(1, Ordering::SeqCst);
        self.ledger
            .max_depth_reached
            .fetch_max(depth, Ordering::SeqCst);
        Self::in_tree(
            Arc::clone(&self.ledger),
            Arc::clone(&self.budget),
            self.cancel.child_token(),
            self.emitter.at(RunPlace { depth, run: id }),
        )
    }

    /// Records a sub-call failure that no retry can fix and that every other sub-call would
    /// share, and stops the whole tree at once (the first such failure wins).
    pub(crate) fn fail(&self, error: &LlmError) {
        self.ledger.record_fatal(error);
        self.budget.cancel.cancel();
    }

    /// The failure that stopped the tree, if one did.
    pub(crate) fn fatal(&self) -> Option<LlmError> {
        self.ledger.fatal()
    }

    /// The text a refused or cancelled sub-call returns to the script.
    pub(crate) fn refusal(&self) -> String {
        if let Some(error) = self.fatal() {
            return format!("Error: the run is stopping, no sub-call can succeed: {error}");
        }
        self.budget.refusal()
    }

    /// What this run's variables may hold: the tree's memory budget (`max_memory`, 0: none)
    /// less what the other runs of the tree hold.
    pub(crate) fn scope_budget(&self, max_memory: usize) -> usize {
        self.ledger
            .scope_budget(&self.emitter.place().run, max_memory)
    }

    /// This run's variables now hold `bytes` (an estimate, the context excepted).
    pub(crate) fn hold_scope(&self, bytes: usize) {
        self.ledger.hold_scope(&self.emitter.place().run, bytes);
    }

    /// This run ended: its variables no longer count against the tree's memory budget.
    pub(crate) fn release_scope(&self) {
        self.ledger.release_scope(&self.emitter.place().run);
    }

    pub(crate) fn turn(&self) -> usize {
        self.turn.load(Ordering::SeqCst)
    }
}

impl Default for RunState {
    fn default() -> Self {
        Self::new(
            Budget::new(CancellationToken::new(), None, None),
            Emitter::default(),
        )
    }
}
