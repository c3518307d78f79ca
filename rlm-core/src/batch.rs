//! Running many requests at once: bounded, in order, one result per item, cancellable.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio_util::sync::CancellationToken;

use crate::{Completion, CompletionRequest, LlmBackend, LlmError};

/// Concurrency used when a caller does not choose one.
pub const DEFAULT_MAX_CONCURRENT: usize = 16;

/// The outcome of one item of a batch.
pub type BatchResult = Result<Completion, LlmError>;

/// Sees each item of a batch start and finish, for progress bars, traces and metrics.
///
/// Called from the task that drives the batch; keep the callbacks short.
pub trait BatchObserver: Send + Sync {
    /// Item `index` is about to be sent.
    fn started(&self, index: usize, request: &CompletionRequest) {
        let _ = (index, request);
    }

    /// Item `index` finished (including with [`LlmError::Cancelled`] when the batch was
    /// cancelled while it was in flight) after `elapsed`.
    fn finished(&self, index: usize, result: &BatchResult, elapsed: Duration) {
        let _ = (index, result, elapsed);
    }
}

/// How a batch runs.
#[derive(Clone)]
pub struct BatchOptions {
    /// At most this many requests in flight at once (0 is treated as 1).
    pub max_concurrent: usize,
    /// Cancelling it stops the batch: items in flight are dropped and every unfinished item
    /// reports [`LlmError::Cancelled`]. Finished items are kept.
    pub cancel: CancellationToken,
    /// Told about every item that starts and finishes.
    pub observer: Option<Arc<dyn BatchObserver>>,
}

impl BatchOptions {
    /// Options with the given concurrency, no cancellation and no observer.
    pub fn new(max_concurrent: usize) -> Self {
        Self {
            max_concurrent,
            cancel: CancellationToken::new(),
            observer: None,
        }
    }

    /// Sets the cancellation token.
    pub fn with_cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }

    /// Sets the observer.
    pub fn with_observer(mut self, observer: Arc<dyn BatchObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// The effective concurrency limit (at least 1).
    pub fn limit(&self) -> usize {
        self.max_concurrent.max(1)
    }
}

impl Default for BatchOptions {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CONCURRENT)
    }
}

impl fmt::Debug for BatchOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchOptions")
            .field("max_concurrent", &self.max_concurrent)
            .field("cancelled", &self.cancel.is_cancelled())
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Runs many requests with bounded concurrency.
///
/// The contract every implementation keeps:
/// - the result has one entry per request, in input order;
/// - at most [`BatchOptions::max_concurrent`] requests are in flight at any moment, and
///   requests start in input order;
/// - a failure is reported in its own slot and never drops or fails the others;
/// - after [`BatchOptions::cancel`] fires, nothing new starts, in-flight requests are dropped,
///   and every unfinished slot holds [`LlmError::Cancelled`].
///
/// Every backend gets a correct implementation for free (`impl BatchExecutor for MyBackend {}`
/// uses [`execute_bounded`]); a backend overrides it when it can do better, for example to
/// share a rate limiter or deduplicate prompts. For a backend that does not implement it,
/// wrap it in [`ConcurrentExecutor`].
#[async_trait]
pub trait BatchExecutor: LlmBackend {
    /// Completes every request; see the trait documentation for the contract.
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        execute_bounded(requests, options, |request| self.complete(request)).await
    }
}

#[async_trait]
impl<T: BatchExecutor + ?Sized> BatchExecutor for Arc<T> {
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        (**self).complete_batch(requests, options).await
    }
}

#[async_trait]
impl<T: BatchExecutor + ?Sized> BatchExecutor for Box<T> {
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        (**self).complete_batch(requests, options).await
    }
}

/// Gives any [`LlmBackend`] the generic bounded [`BatchExecutor`].
///
/// ```
/// # use std::sync::Arc;
/// # use rlm_core::{BatchExecutor, ConcurrentExecutor, LlmBackend};
/// fn executor_for(backend: Arc<dyn LlmBackend>) -> Arc<dyn BatchExecutor> {
///     Arc::new(ConcurrentExecutor::new(backend))
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct ConcurrentExecutor<B> {
    backend: B,
}

impl<B> ConcurrentExecutor<B> {
    /// Wraps `backend`.
    pub fn new(backend: B) -> Self {
        Self { backend }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.backend
    }
}

#[async_trait]
impl<B: LlmBackend> LlmBackend for ConcurrentExecutor<B> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        self.backend.complete(request).await
    }

    fn endpoint(&self) -> Option<&str> {
        self.backend.endpoint()
    }
}

impl<B: LlmBackend> BatchExecutor for ConcurrentExecutor<B> {}

/// The generic bounded executor: runs `call` on every request, at most
/// `options.max_concurrent` at a time, and keeps the [`BatchExecutor`] contract.
///
/// It polls every call from the current task (nothing is spawned), so it needs no `'static`
/// bounds and works in any runtime flavour, including `#[tokio::test]`'s current-thread
/// runtime. Decorators that override [`BatchExecutor::complete_batch`] use it with their own
/// per-item call.
pub async fn execute_bounded<F, Fut>(
    requests: Vec<CompletionRequest>,
    options: &BatchOptions,
    call: F,
) -> Vec<BatchResult>
where
    F: Fn(CompletionRequest) -> Fut,
    Fut: Future<Output = BatchResult>,
{
    let total = requests.len();
    let limit = options.limit();
    let observer = options.observer.as_deref();
    let mut results: Vec<Option<BatchResult>> = (0..total).map(|_| None).collect();
    let mut pending = requests.into_iter().enumerate();
    let mut in_flight = FuturesUnordered::new();
    // Started items, so that a cancellation can report each of them as finished.
    let mut started: Vec<(usize, Instant)> = Vec::new();

    loop {
        if options.cancel.is_cancelled() {
            break;
        }
        // Checked per item: an observer (or another thread) may cancel while a wave starts.
        while in_flight.len() < limit && !options.cancel.is_cancelled() {
            let Some((index, request)) = pending.next() else {
                break;
            };
            if let Some(observer) = observer {
                observer.started(index, &request);
            }
            let at = Instant::now();
            if observer.is_some() {
                started.push((index, at));
            }
            let call = call(request);
            in_flight.push(async move { (index, call.await, at.elapsed()) });
        }
        let next = tokio::select! {
            biased;
            () = options.cancel.cancelled() => break,
            next = in_flight.next() => next,
        };
        let Some((index, result, elapsed)) = next else {
            break;
        };
        if let Some(observer) = observer {
            observer.finished(index, &result, elapsed);
        }
        results[index] = Some(result);
    }

    drop(in_flight);
    if let Some(observer) = observer {
        for (index, at) in started {
            if results[index].is_none() {
                observer.finished(index, &Err(LlmError::Cancelled), at.elapsed());
            }
        }
    }
    results
        .into_iter()
        .map(|result| result.unwrap_or(Err(LlmError::Cancelled)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts peak concurrency and fails prompts that start with "fail".
    #[derive(Default)]
    struct Probe {
        in_flight: AtomicUsize,
        peak: AtomicUsize,
    }

    #[async_trait]
    impl LlmBackend for Probe {
        async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(10)).await;
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let prompt = request.last_user_message().unwrap_or_default().to_owned();
            if prompt.starts_with("fail") {
                Err(LlmError::other(prompt))
            } else {
                Ok(Completion::new("probe", prompt))
            }
        }
    }

    impl BatchExecutor for Probe {}

    fn prompts(n: usize) -> Vec<CompletionRequest> {
        (0..n)
            .map(|i| {
                let text = if i % 7 == 3 {
                    format!("fail {i}")
                } else {
                    format!("p{i}")
                };
                CompletionRequest::prompt("m", text)
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn keeps_order_bounds_concurrency_and_isolates_failures() {
        let probe = Probe::default();
        let results = probe
            .complete_batch(prompts(50), &BatchOptions::new(8))
            .await;
        assert_eq!(results.len(), 50);
        for (i, result) in results.iter().enumerate() {
            match result {
                Ok(c) => assert_eq!(c.text, format!("p{i}")),
                Err(e) => {
                    assert_eq!(i % 7, 3);
                    assert_eq!(e.to_string(), format!("fail {i}"));
                }
            }
        }
        assert_eq!(probe.peak.load(Ordering::SeqCst), 8);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_concurrency_means_one_and_empty_batch_is_empty() {
        let probe = Probe::default();
        let results = probe
            .complete_batch(prompts(5), &BatchOptions::new(0))
            .await;
        assert_eq!(results.len(), 5);
        assert_eq!(probe.peak.load(Ordering::SeqCst), 1);
        assert!(
            probe
                .complete_batch(Vec::new(), &BatchOptions::default())
                .await
                .is_empty()
        );
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(usize, bool)>>);

    impl BatchObserver for Recorder {
        fn started(&self, index: usize, _: &CompletionRequest) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((index, false));
        }
        fn finished(&self, index: usize, _: &BatchResult, _: Duration) {
            self.0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((index, true));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancellation_keeps_finished_items_and_reports_the_rest() {
        let probe = Arc::new(Probe::default());
        let recorder = Arc::new(Recorder::default());
        let cancel = CancellationToken::new();
        let options = BatchOptions::new(4)
            .with_cancel(cancel.clone())
            .with_observer(recorder.clone());
        let canceller = tokio::spawn(async move {
            // Items take 10 ms each: after 25 ms two waves of four are done.
            tokio::time::sleep(Duration::from_millis(25)).await;
            cancel.cancel();
        });
        let requests = (0..40)
            .map(|i| CompletionRequest::prompt("m", format!("p{i}")))
            .collect();
        let results = probe.complete_batch(requests, &options).await;
        canceller.await.unwrap_or_default();
        assert_eq!(results.len(), 40);
        let done = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(done, 8);
        assert!(results[..8].iter().all(Result::is_ok));
        assert!(results[8..].iter().all(|r| *r == Err(LlmError::Cancelled)));
        let events = recorder.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let starts = events.iter().filter(|(_, end)| !end).count();
        let ends = events.iter().filter(|(_, end)| *end).count();
        assert_eq!(starts, 12, "three waves started");
        assert_eq!(starts, ends, "every started item is reported finished");
    }

    /// Cancels the batch from inside the observer when item `at` starts.
    struct CancelAt {
        at: usize,
        cancel: CancellationToken,
        recorder: Recorder,
    }

    impl BatchObserver for CancelAt {
        fn started(&self, index: usize, request: &CompletionRequest) {
            self.recorder.started(index, request);
            if index == self.at {
                self.cancel.cancel();
            }
        }
        fn finished(&self, index: usize, result: &BatchResult, elapsed: Duration) {
            self.recorder.finished(index, result, elapsed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_starts_after_cancellation_even_within_one_wave() {
        let cancel = CancellationToken::new();
        let observer = Arc::new(CancelAt {
            at: 2,
            cancel: cancel.clone(),
            recorder: Recorder::default(),
        });
        let options = BatchOptions::new(8)
            .with_cancel(cancel)
            .with_observer(observer.clone());
        let results = Probe::default().complete_batch(prompts(8), &options).await;
        assert!(results.iter().all(|r| *r == Err(LlmError::Cancelled)));
        let events = observer
            .recorder
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let started: Vec<usize> = events.iter().filter(|e| !e.1).map(|e| e.0).collect();
        assert_eq!(started, [0, 1, 2], "started after the cancellation");
        assert_eq!(
            events.iter().filter(|e| e.1).count(),
            3,
            "each finished once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_executor_wraps_trait_objects() {
        let backend: Arc<dyn LlmBackend> = Arc::new(Probe::default());
        let executor: Arc<dyn BatchExecutor> = Arc::new(ConcurrentExecutor::new(backend));
        let results = executor
            .complete_batch(prompts(3), &BatchOptions::default())
            .await;
        assert_eq!(results.len(), 3);
    }
}
