//! Run-wide state shared by the loop and the REPL: budgets, the stop reason, cancellation and
//! the observers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rlm_core::{CancellationToken, UsageTracker};

use crate::{Event, Observer, StopReason};

/// Locks a mutex, ignoring poisoning: every value guarded in this crate stays consistent
/// between statements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Delivers events to every observer, one event at a time.
#[derive(Clone, Default)]
pub(crate) struct Emitter {
    observers: Arc<[Arc<dyn Observer>]>,
    order: Arc<Mutex<()>>,
}

impl Emitter {
    pub(crate) fn new(observers: Vec<Arc<dyn Observer>>) -> Self {
        Self {
            observers: observers.into(),
            order: Arc::default(),
        }
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
            observer.on_event(event);
        }
    }
}

/// Budgets and the stop reason of one run (or of one standalone [`Repl`](crate::Repl)).
pub(crate) struct RunState {
    /// Cancelled when the run must stop at once: the caller cancelled, or the time ran out.
    pub(crate) cancel: CancellationToken,
    stop: Mutex<Option<StopReason>>,
    sub_calls: AtomicU64,
    /// Sub-calls a budget refused before they were sent.
    refused: AtomicU64,
    max_sub_calls: Option<u64>,
    tokens: AtomicU64,
    max_tokens: Option<u64>,
    /// Calls and tokens per model.
    pub(crate) usage: UsageTracker,
    /// The turn being run, for events.
    pub(crate) turn: AtomicUsize,
    /// Observers of the run.
    pub(crate) emitter: Emitter,
}

impl RunState {
    pub(crate) fn new(
        cancel: CancellationToken,
        max_sub_calls: Option<u64>,
        max_tokens: Option<u64>,
        emitter: Emitter,
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
            turn: AtomicUsize::new(0),
            emitter,
        }
    }

    /// Records why the run must stop (the first reason wins). Time and cancellation also
    /// cancel everything in flight.
    pub(crate) fn stop(&self, reason: StopReason) {
        {
            let mut stop = lock(&self.stop);
            if stop.is_none() {
                *stop = Some(reason);
            }
        }
        if matches!(reason, StopReason::MaxTime | StopReason::Cancelled) {
            self.cancel.cancel();
        }
    }

    /// Why the run must stop, if it must. A cancelled token without a recorded reason means
    /// the caller cancelled.
    pub(crate) fn stopped(&self) -> Option<StopReason> {
        let reason = *lock(&self.stop);
        match reason {
            Some(reason) => Some(reason),
            None if self.cancel.is_cancelled() => {
                self.stop(StopReason::Cancelled);
                *lock(&self.stop)
            }
            None => None,
        }
    }

    /// Takes up to `wanted` sub-calls from the budget; returns how many may be sent. When the
    /// budget cannot cover them all, the run is marked [`StopReason::MaxSubCalls`].
    pub(crate) fn reserve_sub_calls(&self, wanted: u64) -> u64 {
        if let Some(reason) = self.budget_exhausted() {
            self.stop(reason);
            self.refused.fetch_add(wanted, Ordering::SeqCst);
            return 0;
        }
        let Some(max) = self.max_sub_calls else {
            self.sub_calls.fetch_add(wanted, Ordering::SeqCst);
            return wanted;
        };
        let mut granted = 0;
        let _ = self
            .sub_calls
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                granted = wanted.min(max.saturating_sub(used));
                Some(used + granted)
            });
        if granted < wanted {
            self.refused.fetch_add(wanted - granted, Ordering::SeqCst);
            self.stop(StopReason::MaxSubCalls);
        }
        granted
    }

    /// Sub-calls a budget refused before they were sent.
    pub(crate) fn refused_sub_calls(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Sub-calls sent so far.
    pub(crate) fn sub_calls(&self) -> u64 {
        self.sub_calls.load(Ordering::SeqCst)
    }

    /// Gives back sub-calls that were reserved but never sent.
    pub(crate) fn release_sub_calls(&self, unused: u64) {
        if unused > 0 {
            self.sub_calls.fetch_sub(unused, Ordering::SeqCst);
        }
    }

    /// Adds tokens to the run's total; marks [`StopReason::MaxTokens`] when the budget is
    /// spent. Returns whether the budget is now spent.
    pub(crate) fn add_tokens(&self, tokens: u64) -> bool {
        let total = self.tokens.fetch_add(tokens, Ordering::SeqCst) + tokens;
        let spent = self.max_tokens.is_some_and(|max| total >= max);
        if spent {
            self.stop(StopReason::MaxTokens);
        }
        spent
    }

    /// The budget that forbids further sub-calls, if any.
    pub(crate) fn budget_exhausted(&self) -> Option<StopReason> {
        if self
            .max_tokens
            .is_some_and(|max| self.tokens.load(Ordering::SeqCst) >= max)
        {
            return Some(StopReason::MaxTokens);
        }
        if self
            .max_sub_calls
            .is_some_and(|max| self.sub_calls.load(Ordering::SeqCst) >= max)
        {
            return Some(StopReason::MaxSubCalls);
        }
        None
    }

    /// The text a refused or cancelled sub-call returns to the script.
    pub(crate) fn refusal(&self) -> String {
        match self.stopped().or_else(|| self.budget_exhausted()) {
            Some(StopReason::MaxSubCalls) => format!(
                "Error: sub-call budget exhausted (at most {} sub-calls per run); no more \
                 sub-calls will be made: give your final answer with what you have",
                self.max_sub_calls.unwrap_or_default()
            ),
            Some(StopReason::MaxTokens) => format!(
                "Error: token budget exhausted (at most {} tokens per run); no more sub-calls \
                 will be made: give your final answer with what you have",
                self.max_tokens.unwrap_or_default()
            ),
            Some(StopReason::MaxTime) => "Error: the run's time budget ran out".to_owned(),
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
