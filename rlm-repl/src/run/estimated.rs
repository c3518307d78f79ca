//! A decorator that fills in the token usage a server did not send.
//!
//! Some servers (local ones, some proxies) send no `usage`, or zeros. A token or cost budget
//! over such calls would count nothing and never hold. A completion that comes back with no
//! usage gets an estimate instead, as [`rlm_core::estimate_tokens`] makes it: about four
//! bytes a token, for the prompt (plus a few tokens of framing per message) and for the
//! answer and its reasoning. The calls so estimated are counted in the tree's
//! [`Ledger`](crate::ledger::Ledger), and the run's warnings say so.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, Completion, CompletionRequest,
    LlmBackend, LlmError, Usage, estimate_tokens,
};

use crate::ledger::Ledger;

/// Wraps a backend of a tree of runs (see the module documentation).
pub(super) struct EstimatedUsage<B> {
    inner: B,
    ledger: Arc<Ledger>,
}

impl<B> EstimatedUsage<B> {
    /// Wraps `inner`, counting estimated calls in `ledger`.
    pub(super) fn new(inner: B, ledger: Arc<Ledger>) -> Self {
        Self { inner, ledger }
    }
}

/// `result` with an estimated usage if it came back with none (and the estimate counted).
fn estimated(ledger: &Ledger, prompt_tokens: u64, result: BatchResult) -> BatchResult {
    result.map(|completion| fill(ledger, prompt_tokens, completion))
}

fn fill(ledger: &Ledger, prompt_tokens: u64, completion: Completion) -> Completion {
    let (completion, estimated) = with_estimate(prompt_tokens, completion);
    if estimated {
        ledger.estimated_usage.fetch_add(1, Ordering::SeqCst);
    }
    completion
}

/// `completion` with an estimated usage if it has none, and whether it had none.
fn with_estimate(prompt_tokens: u64, mut completion: Completion) -> (Completion, bool) {
    if completion.usage.total() > 0 {
        return (completion, false);
    }
    let reasoning = completion.reasoning.as_deref().map_or(0, estimate_tokens);
    completion.usage = Usage::new(prompt_tokens, estimate_tokens(&completion.text) + reasoning);
    (completion, true)
}

#[async_trait]
impl<B: LlmBackend> LlmBackend for EstimatedUsage<B> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let prompt_tokens = request.estimated_prompt_tokens();
        estimated(
            &self.ledger,
            prompt_tokens,
            self.inner.complete(request).await,
        )
    }

    fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint()
    }
}

/// Hands the batch's observer each item with its usage filled in.
struct Observer {
    inner: Arc<dyn BatchObserver>,
    prompt_tokens: Vec<u64>,
}

impl BatchObserver for Observer {
    fn started(&self, index: usize, request: &CompletionRequest) {
        self.inner.started(index, request);
    }

    fn finished(&self, index: usize, result: &BatchResult, elapsed: Duration) {
        // Counted once, with the final results below: this copy is for the observer only.
        // Copied only when there is an estimate to fill in.
        let Ok(completion) = result else {
            return self.inner.finished(index, result, elapsed);
        };
        if completion.usage.total() > 0 {
            return self.inner.finished(index, result, elapsed);
        }
        let prompt_tokens = self.prompt_tokens.get(index).copied().unwrap_or_default();
        let shown = Ok(with_estimate(prompt_tokens, completion.clone()).0);
        self.inner.finished(index, &shown, elapsed);
    }
}

#[async_trait]
impl<B: BatchExecutor> BatchExecutor for EstimatedUsage<B> {
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        let prompt_tokens: Vec<u64> = requests
            .iter()
            .map(CompletionRequest::estimated_prompt_tokens)
            .collect();
        let mut options = options.clone();
        if let Some(inner) = options.observer.take() {
            options.observer = Some(Arc::new(Observer {
                inner,
                prompt_tokens: prompt_tokens.clone(),
            }));
        }
        self.inner
            .complete_batch(requests, &options)
            .await
            .into_iter()
            .zip(prompt_tokens)
            .map(|(result, prompt)| estimated(&self.ledger, prompt, result))
            .collect()
    }
}
