//! [`TotalCost`]: a cost budget shared by every run of a process (`rlm batch
//! --total-max-cost`), kept by a decorator just above the HTTP backend.
//!
//! Each call reserves its estimated cost before it is sent and settles its real cost when
//! it returns, exactly as a run's own `--max-cost` does, so the sum of all jobs never passes
//! the total by more than the calls in flight when it ran out. Cache hits never reach the
//! decorator: they cost nothing. A call that does not fit fails with an error saying so
//! (a sub-call becomes an `Error: ...` item, a root call ends its job).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use rlm_core::cost::{CostBudget, Prices, Reservation};
use rlm_core::{BatchExecutor, Completion, CompletionRequest, LlmBackend, LlmError};

/// The words every refusal starts with (how a job's error is recognised as a budget stop).
pub const TOTAL_REFUSAL: &str = "the batch's total cost budget";

/// A budget in USD over every call of a process.
#[derive(Debug)]
pub struct TotalCost {
    budget: CostBudget,
    prices: Prices,
    refused: AtomicU64,
}

impl TotalCost {
    /// A budget of `max_usd`, calls priced by `prices`.
    pub fn new(max_usd: f64, prices: Prices) -> Self {
        Self {
            budget: CostBudget::new(max_usd),
            prices,
            refused: AtomicU64::new(0),
        }
    }

    /// The limit.
    pub fn max_usd(&self) -> f64 {
        self.budget.max_usd()
    }

    /// What settled calls cost so far.
    pub fn spent_usd(&self) -> f64 {
        self.budget.spent_usd()
    }

    /// Calls refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Whether a call was refused or the money is all spent: no further job should start.
    pub fn stopped(&self) -> bool {
        self.refused() > 0 || self.budget.exhausted()
    }

    fn refusal(&self) -> LlmError {
        self.refused.fetch_add(1, Ordering::SeqCst);
        LlmError::other(format!(
            "{TOTAL_REFUSAL} (--total-max-cost ${}) is spent (${:.6} settled): the call was \
             not sent",
            self.max_usd(),
            self.spent_usd()
        ))
    }
}

/// Settles a reservation; dropped unsettled (the call was cut short in flight), it stays
/// charged at its estimate.
struct Held<'a> {
    total: &'a TotalCost,
    reservation: Option<Reservation>,
}

impl Held<'_> {
    fn settle(mut self, model: &str, completion: Option<&Completion>) {
        if let Some(reservation) = self.reservation.take() {
            let actual = completion
                .and_then(|c| self.total.prices.call_cost(model, &c.usage))
                .unwrap_or(0.0);
            self.total.budget.settle(reservation, actual);
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if let Some(reservation) = self.reservation.take() {
            let estimate = reservation.usd();
            self.total.budget.settle(reservation, estimate);
        }
    }
}

/// A backend whose calls are charged to a [`TotalCost`].
pub(crate) struct Capped<B> {
    inner: B,
    total: Arc<TotalCost>,
}

impl<B> Capped<B> {
    pub(crate) fn new(inner: B, total: Arc<TotalCost>) -> Self {
        Self { inner, total }
    }
}

#[async_trait]
impl<B: LlmBackend> LlmBackend for Capped<B> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let estimate = self.total.prices.estimate(&request);
        let Some(reservation) = self.total.budget.reserve(estimate) else {
            return Err(self.total.refusal());
        };
        let held = Held {
            total: &self.total,
            reservation: Some(reservation),
        };
        let model = request.model.clone();
        let outcome = self.inner.complete(request).await;
        held.settle(&model, outcome.as_ref().ok());
        outcome
    }

    fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint()
    }
}

/// Items go through [`Capped::complete`] one by one (each reserved as it starts).
impl<B: LlmBackend> BatchExecutor for Capped<B> {}

#[cfg(test)]
mod tests {
    use rlm_core::cost::Price;
    use rlm_core::mock::MockBackend;

    use super::*;

    #[tokio::test]
    async fn calls_past_the_total_are_refused_and_the_sum_stays_within_it() {
        let mut prices = Prices::default();
        // $1 per million prompt tokens and per million completion tokens.
        prices.insert("m", Price::new(1.0, 1.0, 1.0));
        let total = Arc::new(TotalCost::new(0.01, prices));
        let backend = Capped::new(MockBackend::echo(), Arc::clone(&total));
        let mut sent = 0;
        for _ in 0..1000 {
            let request = CompletionRequest::prompt("m", "x".repeat(4000));
            match backend.complete(request).await {
                Ok(_) => sent += 1,
                Err(e) => {
                    assert!(e.to_string().contains(TOTAL_REFUSAL), "{e}");
                    break;
                }
            }
        }
        assert!(sent > 0 && sent < 1000, "{sent}");
        assert!(total.stopped());
        assert!(total.spent_usd() <= 0.01, "{}", total.spent_usd());
    }
}
