//! The sub model as the loop uses it: a decorator over the sub-call backend that takes a
//! reasoning section written into an answer's text (`<think>...</think>` at its start) out
//! of the answer, into [`Completion::reasoning`], so that the script gets the answer alone and
//! a reply that is only reasoning is a failed item ("no answer text").

use async_trait::async_trait;
use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, Completion, CompletionRequest,
    LlmBackend, LlmError,
};
use std::sync::Arc;
use std::time::Duration;

use crate::parse::leading_reasoning;

/// Wraps the sub-call backend of a run (see the module documentation).
pub(super) struct SubModel<B> {
    inner: B,
}

impl<B> SubModel<B> {
    pub(super) fn new(inner: B) -> Self {
        Self { inner }
    }
}

/// A completion without the reasoning at the start of its text.
fn answer_only(mut completion: Completion) -> Completion {
    if let Some((reasoning, rest)) = leading_reasoning(&completion.text) {
        completion.reasoning = Some(match completion.reasoning.take() {
            Some(before) if !before.trim().is_empty() => format!("{before}\n\n{reasoning}"),
            _ => reasoning,
        });
        completion.text = rest;
    }
    completion
}

fn answer_result(result: BatchResult) -> BatchResult {
    result.map(answer_only)
}

#[async_trait]
impl<B: LlmBackend> LlmBackend for SubModel<B> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        answer_result(self.inner.complete(request).await)
    }

    fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint()
    }
}

/// Hands the batch's observer each item as the script will get it.
struct Observer {
    inner: Arc<dyn BatchObserver>,
}

impl BatchObserver for Observer {
    fn started(&self, index: usize, request: &CompletionRequest) {
        self.inner.started(index, request);
    }

    fn finished(&self, index: usize, result: &BatchResult, elapsed: Duration) {
        self.inner
            .finished(index, &answer_result(result.clone()), elapsed);
    }
}

#[async_trait]
impl<B: BatchExecutor> BatchExecutor for SubModel<B> {
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        let mut options = options.clone();
        if let Some(inner) = options.observer.take() {
            options.observer = Some(Arc::new(Observer { inner }));
        }
        self.inner
            .complete_batch(requests, &options)
            .await
            .into_iter()
            .map(answer_result)
            .collect()
    }
}
