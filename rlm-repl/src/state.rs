//! Run-wide state shared by the loop and the REPL: budgets, the stop reason, cancellation and
//! the observers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rlm_core::{
    CancellationToken, CompletionRequest, CostBudget, LlmError, ModelUsage, Prices, Reservation,
    Usage, UsageTracker,
};

use crate::{Event, Observer, RunPlace, StopReason};

/// Locks a mutex, ignoring poisoning: every value guarded in this crate stays consistent
/// between statements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Delivers the events of one run to every observer, one event at a time, with the run's
/// place in the tree.
#[derive(Clone, Default)]
pub(crate) struct Emitter {
    observers: Arc<[Arc<dyn Observer>]>,
    order: Arc<Mutex<()>>,
    place: RunPlace,
}

impl Emitter {
    pub(crate) fn new(observers: Vec<Arc<dyn Observer>>) -> Self {
        Self {
            observers: observers.into(),
            order: Arc::default(),
            place: RunPlace::default(),
        }
    }

    /// The same observers, for the run at `place` (events of the whole tree stay in one
    /// order).
    pub(crate) fn at(&self, place: RunPlace) -> Self {
        Self {
            observers: Arc::clone(&self.observers),
            order: Arc::clone(&self.order),
            place,
        }
    }

    /// The place of the run whose events this emits.
    pub(crate) fn place(&self) -> &RunPlace {
        &self.place
    }

    /// Whether anyone listens: event payloads are only built when this is true.
    pub(crate) fn active(&self) -> bool {
        !self.observers.is_empty()
    }

    /// Builds the event (only when someone listens) and delivers it.
    pub(crate) fn emit_with(&self, event: impl FnOnce() -> Event) {
        if self.active() {
            self.emit(&event());
        }
    }

    pub(crate) fn emit(&self, event: &Event) {
        if self.observers.is_empty() {
            return;
        }
        // Serialize deliveries so that observers never see two events interleaved, even when
        // a custom batch executor reports items from several threads.
        let _order = lock(&self.order);
        for observer in self.observers.iter() {
            observer.on_run_event(&self.place, event);
        }
    }
}

/// What every run of one recursion tree shares: the budgets (reserved atomically before each
/// call, so concurrent children can never overspend), the stop reason, the cancellation of
/// the whole tree, usage per model and per depth, and what went wrong in sub-calls.
pub(crate) struct Ledger {
    /// Cancelled when the whole tree must stop at once: the caller cancelled, the time ran
    /// out, or the sub model cannot be used.
    pub(crate) cancel: CancellationToken,
    stop: Mutex<Option<StopReason>>,
    sub_calls: AtomicU64,
    /// Sub-calls a budget refused before they were sent.
    refused: AtomicU64,
    max_sub_calls: Option<u64>,
    tokens: AtomicU64,
    max_tokens: Option<u64>,
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
    /// Child runs started.
    pub(crate) child_runs: AtomicU64,
    /// The deepest run started (0: no child).
    pub(crate) max_depth_reached: AtomicUsize,
    /// Warnings of child runs, for the top-level result.
    pub(crate) child_warnings: Mutex<Vec<String>>,
    /// The cost budget (issue 12), if any.
    cost: Option<CostMeter>,
}

/// `max_cost` (issue 12): the prices and the budget in USD, for the whole tree.
struct CostMeter {
    prices: Arc<Prices>,
    budget: CostBudget,
}

impl Ledger {
    pub(crate) fn new(
        cancel: CancellationToken,
        max_sub_calls: Option<u64>,
        max_tokens: Option<u64>,
    ) -> Self {
        Self {
            cancel,
            stop: Mutex::new(None),
            sub_calls: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            max_sub_calls,
            tokens: AtomicU64::new(0),
            max_tokens,
            usage: UsageTracker::new(),
            by_depth: Mutex::new(Vec::new()),
            fatal: Mutex::new(None),
            cut_sub_calls: AtomicU64::new(0),
            empty_sub_calls: AtomicU64::new(0),
            failed_sub_calls: AtomicU64::new(0),
            cancelled_sub_calls: AtomicU64::new(0),
            child_runs: AtomicU64::new(0),
            max_depth_reached: AtomicUsize::new(0),
            child_warnings: Mutex::new(Vec::new()),
            cost: None,
        }
    }

    /// Calls made below the top-level root so far.
    pub(crate) fn sub_calls(&self) -> u64 {
        self.sub_calls.load(Ordering::SeqCst)
    }

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
}

/// One run of the tree (the top-level run, or a child started by `rlm_query`), or one
/// standalone [`Repl`](crate::Repl): its place in the tree, its cancellation, its turn and
/// its observers, over the tree's [`Ledger`].
pub(crate) struct RunState {
    /// The budgets and stop reason of the whole tree.
    pub(crate) ledger: Arc<Ledger>,
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
    pub(crate) fn new(
        cancel: CancellationToken,
        max_sub_calls: Option<u64>,
        max_tokens: Option<u64>,
        emitter: Emitter,
    ) -> Self {
        let ledger = Arc::new(Ledger::new(cancel.clone(), max_sub_calls, max_tokens));
        Self::in_tree(ledger, cancel, emitter)
    }

    /// A run over an existing ledger.
    pub(crate) fn in_tree(
        ledger: Arc<Ledger>,
        cancel: CancellationToken,
        emitter: Emitter,
    ) -> Self {
        Self {
            ledger,
            cancel,
            turn: AtomicUsize::new(0),
            emitter,
            next_child: AtomicU64::new(0),
        }
    }

    /// Adds a cost budget of `max_usd` to the tree, priced by `prices`. Only before the ledger
    /// is shared (right after [`RunState::new`]); later it changes nothing.
    pub(crate) fn with_cost_budget(mut self, prices: Arc<Prices>, max_usd: Option<f64>) -> Self {
        if let Some(ledger) = Arc::get_mut(&mut self.ledger) {
            ledger.cost = max_usd.map(|max| CostMeter {
                prices,
                budget: CostBudget::new(max),
            });
        }
        self
    }

    /// Reserves the estimated cost of `request` before it is sent; `None` (and the tree
    /// marked [`StopReason::MaxCost`]) when it does not fit.
    pub(crate) fn reserve_cost(&self, request: &CompletionRequest) -> Option<Reservation> {
        let Some(cost) = &self.ledger.cost else {
            return Some(Reservation::none());
        };
        let reservation = cost.budget.reserve(cost.prices.estimate(request));
        if reservation.is_none() {
            self.stop(StopReason::MaxCost);
        }
        reservation
    }

    /// A call of `model` ended with `usage`: settles its reservation with its real cost.
    /// Returns whether the cost budget is now spent (and marks the stop if so).
    pub(crate) fn settle_cost(&self, reservation: Reservation, model: &str, usage: &Usage) -> bool {
        let Some(cost) = &self.ledger.cost else {
            return false;
        };
        let actual = cost.prices.call_cost(model, usage).unwrap_or(0.0);
        let spent = cost.budget.settle(reservation, actual);
        if spent {
            self.stop(StopReason::MaxCost);
        }
        spent
    }

    /// Hands back the reservation of a call that was never sent.
    pub(crate) fn release_cost(&self, reservation: Reservation) {
        if let Some(cost) = &self.ledger.cost {
            cost.budget.release(reservation);
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
            self.cancel.child_token(),
            self.emitter.at(RunPlace { depth, run: id }),
        )
    }

    /// Records a sub-call failure that no retry can fix and that every other sub-call would
    /// share, and stops the whole tree at once (the first such failure wins).
    pub(crate) fn fail(&self, error: &LlmError) {
        lock(&self.ledger.fatal).get_or_insert_with(|| error.clone());
        self.ledger.cancel.cancel();
    }

    /// The failure that stopped the tree, if one did.
    pub(crate) fn fatal(&self) -> Option<LlmError> {
        lock(&self.ledger.fatal).clone()
    }

    /// Records why the tree must stop (the first reason wins). Time and cancellation also
    /// cancel everything in flight.
    pub(crate) fn stop(&self, reason: StopReason) {
        {
            let mut stop = lock(&self.ledger.stop);
            if stop.is_none() {
                *stop = Some(reason);
            }
        }
        if matches!(reason, StopReason::MaxTime | StopReason::Cancelled) {
            self.ledger.cancel.cancel();
        }
    }

    /// Why the tree must stop, if it must. A cancelled tree without a recorded reason means
    /// the caller cancelled.
    pub(crate) fn stopped(&self) -> Option<StopReason> {
        let reason = *lock(&self.ledger.stop);
        match reason {
            Some(reason) => Some(reason),
            None if self.ledger.cancel.is_cancelled() => {
                self.stop(StopReason::Cancelled);
                *lock(&self.ledger.stop)
            }
            None => None,
        }
    }

    /// Takes up to `wanted` calls from the sub-call budget; returns how many may be sent.
    /// When the budget cannot cover them all, the tree is marked [`StopReason::MaxSubCalls`].
    pub(crate) fn reserve_sub_calls(&self, wanted: u64) -> u64 {
        if let Some(reason) = self.budget_exhausted() {
            self.stop(reason);
            self.ledger.refused.fetch_add(wanted, Ordering::SeqCst);
            return 0;
        }
        let ledger = &*self.ledger;
        let Some(max) = ledger.max_sub_calls else {
            ledger.sub_calls.fetch_add(wanted, Ordering::SeqCst);
            return wanted;
        };
        let mut granted = 0;
        let _ = ledger
            .sub_calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                granted = wanted.min(max.saturating_sub(used));
                Some(used + granted)
            });
        if granted < wanted {
            self.ledger
                .refused
                .fetch_add(wanted - granted, Ordering::SeqCst);
            self.stop(StopReason::MaxSubCalls);
        }
        granted
    }

    /// Counts `n` calls a budget refused that never reached `reserve_sub_calls` (a child run
    /// that could not start).
    pub(crate) fn note_refused(&self, n: u64) {
        self.ledger.refused.fetch_add(n, Ordering::SeqCst);
    }

    /// Calls a budget refused before they were sent, over the whole tree.
    pub(crate) fn refused_sub_calls(&self) -> u64 {
        self.ledger.refused.load(Ordering::SeqCst)
    }

    /// Calls made below the top-level root so far.
    pub(crate) fn sub_calls(&self) -> u64 {
        self.ledger.sub_calls()
    }

    /// Gives back sub-calls that were reserved but never sent.
    pub(crate) fn release_sub_calls(&self, unused: u64) {
        if unused > 0 {
            self.ledger.sub_calls.fetch_sub(unused, Ordering::SeqCst);
        }
    }

    /// Adds tokens to the tree's total; marks [`StopReason::MaxTokens`] when the budget is
    /// spent. Returns whether the budget is now spent.
    pub(crate) fn add_tokens(&self, tokens: u64) -> bool {
        let ledger = &*self.ledger;
        let total = ledger.tokens.fetch_add(tokens, Ordering::SeqCst) + tokens;
        let spent = ledger.max_tokens.is_some_and(|max| total >= max);
        if spent {
            self.stop(StopReason::MaxTokens);
        }
        spent
    }

    /// The budget that forbids further calls, if any.
    pub(crate) fn budget_exhausted(&self) -> Option<StopReason> {
        let ledger = &*self.ledger;
        if ledger
            .max_tokens
            .is_some_and(|max| ledger.tokens.load(Ordering::SeqCst) >= max)
        {
            return Some(StopReason::MaxTokens);
        }
        if ledger
            .max_sub_calls
            .is_some_and(|max| ledger.sub_calls.load(Ordering::SeqCst) >= max)
        {
            return Some(StopReason::MaxSubCalls);
        }
        if ledger.cost.as_ref().is_some_and(|c| c.budget.exhausted()) {
            return Some(StopReason::MaxCost);
        }
        None
    }

    /// The text a refused or cancelled sub-call returns to the script.
    pub(crate) fn refusal(&self) -> String {
        if let Some(error) = self.fatal() {
            return format!("Error: the run is stopping, no sub-call can succeed: {error}");
        }
        match self.stopped().or_else(|| self.budget_exhausted()) {
            Some(StopReason::MaxSubCalls) => format!(
                "Error: budget exhausted: the sub-call budget (at most {} below the root \
                 per run) is spent; no more sub-calls will be made: give your final answer \
                 with what you have",
                crate::words::count_of(
                    usize::try_from(self.ledger.max_sub_calls.unwrap_or_default())
                        .unwrap_or(usize::MAX),
                    "call"
                )
            ),
            Some(StopReason::MaxTokens) => format!(
                "Error: budget exhausted: the token budget (at most {} per run) is \
                 spent; no more sub-calls will be made: give your final answer with what you \
                 have",
                crate::words::count_of(
                    usize::try_from(self.ledger.max_tokens.unwrap_or_default())
                        .unwrap_or(usize::MAX),
                    "token"
                )
            ),
            Some(StopReason::MaxTime) => "Error: the run's time budget ran out".to_owned(),
            Some(StopReason::MaxCost) => format!(
                "Error: budget exhausted: the cost budget (at most ${} per run) is spent; no \
                 more sub-calls will be made: give your final answer with what you have",
                self.ledger
                    .cost
                    .as_ref()
                    .map(|c| c.budget.max_usd())
                    .unwrap_or_default()
            ),
            _ => "Error: cancelled".to_owned(),
        }
    }

    pub(crate) fn turn(&self) -> usize {
        self.turn.load(Ordering::SeqCst)
    }
}

impl Default for RunState {
    fn default() -> Self {
        Self::new(CancellationToken::new(), None, None, Emitter::default())
    }
}
