//! The budgets of a tree of runs, and the one way calls spend them.
//!
//! Every model call below the top-level root counts against `max_sub_calls`; every call's
//! tokens count against `max_total_tokens`; every call's estimated cost is reserved against
//! `max_cost` before it is sent and replaced by its real cost after. All of it is one step:
//! [`Budget::reserve`] takes what a call needs, or refuses it, and hands back a [`Reserved`]
//! guard. The call is then marked [`sent`](Reserved::sent) and, once back,
//! [`settled`](Reserved::settle) with its usage. A guard dropped before its call was sent
//! gives everything back; one dropped after gives back the cost estimate, and the call stays
//! counted (it went out, even if it was cut short).
//!
//! The budget also says why the tree must stop ([`Budget::stop`], [`Budget::stopped`]): a
//! spent budget, the time running out, or cancellation.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rlm_core::cost::{CostBudget, Prices, Reservation};
use rlm_core::{CancellationToken, CompletionRequest, Usage};

use crate::StopReason;
use crate::sync::lock;
use crate::words::count_of;

/// What a tree of runs may still spend, shared by all its runs: reserved atomically before
/// each call, so concurrent children can never overspend.
pub(crate) struct Budget {
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
    /// The cost budget, if any.
    cost: Option<CostMeter>,
    /// USD charged per model at their estimate for calls cut short in flight (no usage came
    /// back), so not in the usage the cost report prices.
    unmetered: Mutex<std::collections::BTreeMap<String, f64>>,
}

/// `max_cost`: the prices and the budget in USD, for the whole tree.
struct CostMeter {
    prices: Arc<Prices>,
    budget: CostBudget,
}

/// What a call is charged to, besides its tokens (always counted).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Charge {
    /// It is a call below the top-level root: counted against the sub-call budget.
    pub(crate) sub_call: bool,
    /// Its estimated cost is reserved before it is sent; without, the call is made even when
    /// the money is spent (the final ask), and its real cost is still charged after.
    pub(crate) reserve_cost: bool,
}

impl Charge {
    /// A call below the top-level root whose cost is reserved first: `llm_query` and
    /// `llm_batch` items, and the turns of a child run.
    pub(crate) const SUB_CALL: Self = Self {
        sub_call: true,
        reserve_cost: true,
    };
}

impl Budget {
    /// The budgets of a new tree, stopped by `cancel`: at most `max_sub_calls` calls below
    /// the top-level root and `max_tokens` tokens (`None`: no limit).
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
            cost: None,
            unmetered: Mutex::default(),
        }
    }

    /// Adds a cost budget of `max_usd` (if any), priced by `prices`.
    pub(crate) fn with_cost(mut self, prices: Arc<Prices>, max_usd: Option<f64>) -> Self {
        self.cost = max_usd.map(|max| CostMeter {
            prices,
            budget: CostBudget::new(max),
        });
        self
    }

    /// Reserves what the calls of `requests` need, in order, for as many as the budgets
    /// allow: one guard per call granted (the first ones). The others are refused, and the
    /// tree is marked to stop with the budget that refused them.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        requests: &[CompletionRequest],
        charge: Charge,
    ) -> Vec<Reserved> {
        let wanted = requests.len() as u64;
        let calls = if charge.sub_call {
            self.take_sub_calls(wanted)
        } else {
            wanted
        };
        let mut granted = Vec::with_capacity(usize::try_from(calls).unwrap_or(0));
        for request in requests.iter().take(usize::try_from(calls).unwrap_or(0)) {
            let cost = if charge.reserve_cost {
                match self.reserve_cost(request) {
                    Some(reservation) => reservation,
                    None => break,
                }
            } else {
                Reservation::none()
            };
            granted.push(Reserved {
                budget: Arc::clone(self),
                model: request.model.clone(),
                sub_call: charge.sub_call,
                cost: Some(cost),
                sent: false,
            });
        }
        // The calls the cost budget refused give their sub-calls back, and count as refused.
        if charge.sub_call {
            let unsent = calls - granted.len() as u64;
            self.give_back_sub_calls(unsent);
            self.refused.fetch_add(unsent, Ordering::SeqCst);
        }
        granted
    }

    /// [`reserve`](Self::reserve) for one call; `None` when it is refused.
    pub(crate) fn reserve_one(
        self: &Arc<Self>,
        request: &CompletionRequest,
        charge: Charge,
    ) -> Option<Reserved> {
        self.reserve(std::slice::from_ref(request), charge).pop()
    }

    /// Records why the tree must stop (the first reason wins). Time and cancellation also
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

    /// Why the tree must stop, if it must. A cancelled tree without a recorded reason means
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

    /// The budget that forbids further calls, if any.
    pub(crate) fn exhausted(&self) -> Option<StopReason> {
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
        if self.cost.as_ref().is_some_and(|c| c.budget.exhausted()) {
            return Some(StopReason::MaxCost);
        }
        None
    }

    /// Counts `n` calls a budget refused that never reached [`reserve`](Self::reserve) (a
    /// child run that could not start).
    pub(crate) fn note_refused(&self, n: u64) {
        self.refused.fetch_add(n, Ordering::SeqCst);
    }

    /// Calls a budget refused before they were sent, over the whole tree.
    pub(crate) fn refused_sub_calls(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// USD charged per model at their estimate for calls cut short in flight, which the
    /// usage the cost report prices does not hold.
    pub(crate) fn unmetered_cost(&self) -> std::collections::BTreeMap<String, f64> {
        lock(&self.unmetered).clone()
    }

    /// Whether a budget (not the clock or a cancel) told the tree to stop.
    fn budget_stopped(&self) -> bool {
        matches!(
            *lock(&self.stop),
            Some(StopReason::MaxSubCalls | StopReason::MaxTokens | StopReason::MaxCost)
        )
    }

    /// Calls made below the top-level root so far.
    pub(crate) fn sub_calls(&self) -> u64 {
        self.sub_calls.load(Ordering::SeqCst)
    }

    /// The text a call refused by a spent budget (or cut short by the stop) returns to the
    /// script.
    pub(crate) fn refusal(&self) -> String {
        match self.stopped().or_else(|| self.exhausted()) {
            Some(StopReason::MaxSubCalls) => format!(
                "Error: budget exhausted: the sub-call budget (at most {} below the root \
                 per run) is spent; no more sub-calls will be made: give your final answer \
                 with what you have",
                count_of(
                    usize::try_from(self.max_sub_calls.unwrap_or_default()).unwrap_or(usize::MAX),
                    "call"
                )
            ),
            Some(StopReason::MaxTokens) => format!(
                "Error: budget exhausted: the token budget (at most {} per run) is \
                 spent; no more sub-calls will be made: give your final answer with what you \
                 have",
                count_of(
                    usize::try_from(self.max_tokens.unwrap_or_default()).unwrap_or(usize::MAX),
                    "token"
                )
            ),
            Some(StopReason::MaxTime) => "Error: the run's time budget ran out".to_owned(),
            Some(StopReason::MaxCost) => format!(
                "Error: budget exhausted: the cost budget (at most ${} per run) is spent; no \
                 more sub-calls will be made: give your final answer with what you have",
                self.cost
                    .as_ref()
                    .map(|c| c.budget.max_usd())
                    .unwrap_or_default()
            ),
            _ => "Error: cancelled".to_owned(),
        }
    }

    /// Takes up to `wanted` calls from the sub-call budget; returns how many may be sent.
    /// When the budget cannot cover them all, the tree is marked [`StopReason::MaxSubCalls`].
    fn take_sub_calls(&self, wanted: u64) -> u64 {
        if let Some(reason) = self.exhausted() {
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

    /// Gives back sub-calls that were reserved but never sent.
    fn give_back_sub_calls(&self, unused: u64) {
        if unused > 0 {
            self.sub_calls.fetch_sub(unused, Ordering::SeqCst);
        }
    }

    /// Adds tokens to the tree's total; marks [`StopReason::MaxTokens`] when the budget is
    /// spent. Returns whether the budget is now spent.
    fn add_tokens(&self, tokens: u64) -> bool {
        let total = self.tokens.fetch_add(tokens, Ordering::SeqCst) + tokens;
        let spent = self.max_tokens.is_some_and(|max| total >= max);
        if spent {
            self.stop(StopReason::MaxTokens);
        }
        spent
    }

    /// Reserves the estimated cost of `request` before it is sent; `None` (and the tree
    /// marked [`StopReason::MaxCost`]) when it does not fit.
    fn reserve_cost(&self, request: &CompletionRequest) -> Option<Reservation> {
        let Some(cost) = &self.cost else {
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
    fn settle_cost(&self, reservation: Reservation, model: &str, usage: &Usage) -> bool {
        let Some(cost) = &self.cost else {
            return false;
        };
        let actual = cost.prices.call_cost(model, usage).unwrap_or(0.0);
        let spent = cost.budget.settle(reservation, actual);
        if spent {
            self.stop(StopReason::MaxCost);
        }
        spent
    }

    /// Hands back the cost reservation of a call that was never sent.
    fn release_cost(&self, reservation: Reservation) {
        if let Some(cost) = &self.cost {
            cost.budget.release(reservation);
        }
    }

    /// A call of `model` went out and its cost will never be known (it was cut short in
    /// flight): it stays charged at its reservation. Returns whether the cost budget is now
    /// spent (and marks the stop if so).
    fn charge_reserved(&self, reservation: Reservation, model: &str) -> bool {
        let Some(cost) = &self.cost else {
            return false;
        };
        let estimate = reservation.usd();
        if estimate > 0.0 {
            *lock(&self.unmetered).entry(model.to_owned()).or_default() += estimate;
        }
        let spent = cost.budget.settle(reservation, estimate);
        if spent {
            self.stop(StopReason::MaxCost);
        }
        spent
    }
}

/// The budget one call holds, from [`Budget::reserve`] until it is settled or dropped.
#[must_use = "a reserved call is settled with its usage; dropping it gives the budget back"]
pub(crate) struct Reserved {
    budget: Arc<Budget>,
    model: String,
    /// One sub-call is reserved.
    sub_call: bool,
    /// The cost estimate reserved, until the call is settled.
    cost: Option<Reservation>,
    /// The call went out: it stays counted even if it is never settled.
    sent: bool,
}

impl Reserved {
    /// The call is on its way: from now on it counts as made, even if it is cut short.
    pub(crate) fn sent(&mut self) {
        self.sent = true;
    }

    /// The call ended with `usage` (zero for one that failed or was cut short): counts its
    /// tokens and replaces its cost estimate by its real cost. Returns whether the token or
    /// the cost budget is now spent (the tree is then marked to stop).
    pub(crate) fn settle(mut self, usage: &Usage) -> bool {
        self.sent = true;
        let tokens_spent = self.budget.add_tokens(usage.total());
        // No usage after a stop: the call was cut short in flight (or failed meanwhile);
        // what the server billed is unknown, so it stays charged at its estimate.
        let cut_short = usage.total() == 0 && self.budget.stopped().is_some();
        let cost_spent = match self.cost.take() {
            Some(reservation) if cut_short => self.budget.charge_reserved(reservation, &self.model),
            Some(reservation) => self.budget.settle_cost(reservation, &self.model, usage),
            None => false,
        };
        tokens_spent || cost_spent
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if let Some(reservation) = self.cost.take() {
            if self.sent {
                self.budget.charge_reserved(reservation, &self.model);
            } else {
                self.budget.release_cost(reservation);
            }
        }
        if self.sub_call && !self.sent {
            self.budget.give_back_sub_calls(1);
            // Left unsent because a budget stopped the tree: refused, like the calls
            // `reserve` refuses outright.
            if self.budget.budget_stopped() {
                self.budget.refused.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}
