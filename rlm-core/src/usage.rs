//! Usage accounting per model, correct under concurrency.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{
    BatchExecutor, BatchOptions, BatchResult, Completion, CompletionRequest, LlmBackend, LlmError,
    Usage,
};

/// What one model consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ModelUsage {
    /// Calls that returned a completion.
    pub calls: u64,
    /// Prompt tokens over those calls.
    pub prompt_tokens: u64,
    /// Completion tokens over those calls.
    pub completion_tokens: u64,
    /// Calls that failed (not counted in `calls`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub failed: u64,
    /// Of `prompt_tokens`, those served from the provider's prompt cache.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ModelUsage {
    /// Prompt plus completion tokens.
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// Adds `other`, saturating: token counts come from providers, and an absurd one must
    /// not overflow.
    fn add(&mut self, other: &ModelUsage) {
        self.calls = self.calls.saturating_add(other.calls);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.failed = self.failed.saturating_add(other.failed);
        self.cached_tokens = self.cached_tokens.saturating_add(other.cached_tokens);
    }
}

/// Per-model totals, shared by every clone.
///
/// Cloning is cheap and every clone adds to the same totals, so one tracker can be handed to
/// every concurrent call of a batch.
#[derive(Debug, Clone, Default)]
pub struct UsageTracker {
    models: Arc<Mutex<BTreeMap<String, ModelUsage>>>,
}

impl UsageTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, ModelUsage>> {
        // A panic elsewhere while holding the lock cannot leave the counters inconsistent
        // (each update is a few additions), so a poisoned lock is still usable.
        self.models.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a successful call of `model`.
    pub fn record(&self, model: &str, usage: Usage) {
        self.record_usage(
            model,
            &ModelUsage {
                calls: 1,
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                failed: 0,
                cached_tokens: usage.cached_tokens,
            },
        );
    }

    /// Records a failed call of `model`.
    pub fn record_failure(&self, model: &str) {
        self.record_usage(
            model,
            &ModelUsage {
                failed: 1,
                ..ModelUsage::default()
            },
        );
    }

    /// Adds `usage` to `model`'s totals.
    pub fn record_usage(&self, model: &str, usage: &ModelUsage) {
        let mut models = self.lock();
        match models.get_mut(model) {
            Some(entry) => entry.add(usage),
            None => {
                models.insert(model.to_owned(), *usage);
            }
        }
    }

    /// Records the outcome of one call.
    pub fn record_result(&self, model: &str, result: &BatchResult) {
        match result {
            Ok(completion) => self.record(model, completion.usage),
            Err(_) => self.record_failure(model),
        }
    }

    /// The totals so far, by model name.
    pub fn snapshot(&self) -> BTreeMap<String, ModelUsage> {
        self.lock().clone()
    }

    /// The totals of one model.
    pub fn model(&self, model: &str) -> ModelUsage {
        self.lock().get(model).copied().unwrap_or_default()
    }

    /// The sum over every model.
    pub fn total(&self) -> ModelUsage {
        let mut total = ModelUsage::default();
        for usage in self.lock().values() {
            total.add(usage);
        }
        total
    }
}

/// A decorator that records every call of the wrapped backend in a [`UsageTracker`], under
/// the model name of the request.
///
/// ```
/// # use rlm_core::{ConcurrentExecutor, LlmBackend};
/// # use rlm_core::usage::{Metered, UsageTracker};
/// # fn wrap(backend: impl LlmBackend) {
/// let tracker = UsageTracker::new();
/// let metered = Metered::new(ConcurrentExecutor::new(backend), tracker.clone());
/// // ... use `metered`, then read `tracker.snapshot()`.
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Metered<B> {
    inner: B,
    tracker: UsageTracker,
}

impl<B> Metered<B> {
    /// Wraps `inner`, recording into `tracker`.
    pub fn new(inner: B, tracker: UsageTracker) -> Self {
        Self { inner, tracker }
    }

    /// The tracker calls are recorded in.
    pub fn tracker(&self) -> &UsageTracker {
        &self.tracker
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }
}

#[async_trait]
impl<B: LlmBackend> LlmBackend for Metered<B> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let model = request.model.clone();
        let result = self.inner.complete(request).await;
        self.tracker.record_result(&model, &result);
        result
    }

    fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint()
    }
}

#[async_trait]
impl<B: BatchExecutor> BatchExecutor for Metered<B> {
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        let models: Vec<String> = requests.iter().map(|r| r.model.clone()).collect();
        let results = self.inner.complete_batch(requests, options).await;
        for (model, result) in models.iter().zip(&results) {
            // A cancelled item has no outcome to account: it never started, or it was
            // dropped before its answer arrived (so its tokens, if any, are unknown).
            if !matches!(result, Err(LlmError::Cancelled)) {
                self.tracker.record_result(model, result);
            }
        }
        results
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_records_add_up() {
        let tracker = UsageTracker::new();
        std::thread::scope(|scope| {
            for t in 0..8 {
                let tracker = tracker.clone();
                scope.spawn(move || {
                    for _ in 0..1000 {
                        tracker.record(if t % 2 == 0 { "a" } else { "b" }, Usage::new(3, 1));
                    }
                    tracker.record_failure("a");
                });
            }
        });
        let a = tracker.model("a");
        assert_eq!(
            (a.calls, a.prompt_tokens, a.completion_tokens, a.failed),
            (4000, 12000, 4000, 8)
        );
        assert_eq!(tracker.total().calls, 8000);
        assert_eq!(tracker.total().total_tokens(), 32000);
    }

    #[test]
    fn absurd_usage_saturates_instead_of_overflowing() {
        let tracker = UsageTracker::new();
        for _ in 0..2 {
            tracker.record("m", Usage::new(u64::MAX, u64::MAX));
        }
        let usage = tracker.model("m");
        assert_eq!((usage.calls, usage.prompt_tokens), (2, u64::MAX));
        assert_eq!(usage.total_tokens(), u64::MAX);
        tracker.record("n", Usage::new(1, 1));
        assert_eq!(tracker.total().prompt_tokens, u64::MAX);
    }

    #[test]
    fn serializes_the_cli_shape() {
        let usage = ModelUsage {
            calls: 2,
            prompt_tokens: 10,
            completion_tokens: 4,
            failed: 0,
            cached_tokens: 0,
        };
        assert_eq!(
            serde_json::to_value(usage).unwrap_or_default(),
            serde_json::json!({"calls": 2, "prompt_tokens": 10, "completion_tokens": 4})
        );
    }
}
