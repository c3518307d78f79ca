//! [`Sent`]: counts the sub-calls that go to the server.
//!
//! The in-memory cache counts the requests it forwards below itself, but below it the disk
//! and Redis tiers may answer some, and a cancelled batch forwards items that never start.
//! Counted just above the HTTP backend, a call is counted when it starts (each call once,
//! whatever its retries): answers from a tier and items a cancellation stopped before they
//! started are not in it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, Completion, CompletionRequest,
    LlmBackend, LlmError,
};

/// A backend that counts the calls it starts.
pub(crate) struct Sent<B> {
    inner: B,
    count: Arc<AtomicU64>,
}

impl<B> Sent<B> {
    /// Wraps `inner`, counting into `count`.
    pub(crate) fn new(inner: B, count: Arc<AtomicU64>) -> Self {
        Self { inner, count }
    }
}

#[async_trait]
impl<B: LlmBackend> LlmBackend for Sent<B> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.inner.complete(request).await
    }

    fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint()
    }
}

#[async_trait]
impl<B: BatchExecutor> BatchExecutor for Sent<B> {
    /// The inner backend's own batch, told to count each item as it starts.
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        let mut counted = options.clone();
        counted.observer = Some(Arc::new(CountStarts {
            count: Arc::clone(&self.count),
            next: options.observer.clone(),
        }));
        self.inner.complete_batch(requests, &counted).await
    }
}

/// Counts started items, then tells the caller's observer.
struct CountStarts {
    count: Arc<AtomicU64>,
    next: Option<Arc<dyn BatchObserver>>,
}

impl BatchObserver for CountStarts {
    fn started(&self, index: usize, request: &CompletionRequest) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Some(next) = &self.next {
            next.started(index, request);
        }
    }

    fn finished(&self, index: usize, result: &BatchResult, elapsed: Duration) {
        if let Some(next) = &self.next {
            next.finished(index, result, elapsed);
        }
    }
}

#[cfg(test)]
mod tests {
    use rlm_core::mock::MockBackend;
    use rlm_core::{CancellationToken, ConcurrentExecutor};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn items_a_cancellation_stops_before_they_start_are_not_counted() {
        let count = Arc::new(AtomicU64::new(0));
        // Replies take a minute: two start, and the batch is cancelled while they wait.
        let slow = MockBackend::echo().with_latency(Duration::from_secs(60));
        let sent = Sent::new(ConcurrentExecutor::new(slow.clone()), Arc::clone(&count));
        let cancel = CancellationToken::new();
        let options = BatchOptions {
            cancel: cancel.clone(),
            ..BatchOptions::new(2)
        };
        let requests = (0..100)
            .map(|i| CompletionRequest::prompt("m", format!("p{i}")))
            .collect();
        let stop = async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        };
        let (results, ()) = tokio::join!(sent.complete_batch(requests, &options), stop);
        assert_eq!(results.len(), 100);
        assert_eq!(count.load(Ordering::Relaxed), 2, "the two that started");

        // A single call counts once.
        let fast = Sent::new(MockBackend::echo(), Arc::clone(&count));
        let reply = fast.complete(CompletionRequest::prompt("m", "x")).await;
        assert!(reply.is_ok());
        assert_eq!(count.load(Ordering::Relaxed), 3);
    }
}
