//! A scripted mock backend for tests (feature `mock`).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use std::time::Duration;
//! use rlm_core::{BatchExecutor, BatchOptions, CompletionRequest, LlmBackend, LlmError};
//! use rlm_core::mock::MockBackend;
//!
//! // Replies computed from the prompt; prompts containing "boom" fail.
//! let mock = MockBackend::from_fn(|request| {
//!     let prompt = request.last_user_message().unwrap_or_default();
//!     Ok(format!("{} chars", prompt.len()))
//! })
//! .with_latency(Duration::from_millis(5))
//! .fail_when(|request| request.last_user_message() == Some("boom"), LlmError::other("injected"));
//!
//! let requests = ["abc", "boom", "hello"].map(|p| CompletionRequest::prompt("sub", p)).to_vec();
//! let results = mock.complete_batch(requests, &BatchOptions::new(2)).await;
//! assert_eq!(results[0].as_ref().map(|c| c.text.as_str()), Ok("3 chars"));
//! assert!(results[1].is_err());
//! assert_eq!(mock.calls(), 3);
//! assert_eq!(mock.peak_in_flight(), 2);
//! # }
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    BatchExecutor, Completion, CompletionRequest, LlmBackend, LlmError, Usage, estimate_tokens,
};

type Responder = dyn Fn(&CompletionRequest) -> Result<String, LlmError> + Send + Sync;
type Predicate = dyn Fn(&CompletionRequest) -> bool + Send + Sync;
type LatencyFn = dyn Fn(&CompletionRequest) -> Duration + Send + Sync;
type ShapeFn = dyn Fn(&CompletionRequest, Completion) -> Completion + Send + Sync;

#[derive(Default)]
struct State {
    requests: Mutex<Vec<CompletionRequest>>,
    calls: AtomicUsize,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    /// Gated calls in progress now (see [`MockBackend::with_gate`]).
    gated: AtomicUsize,
    /// Whether the gate has opened (it stays open).
    gate_open: AtomicBool,
    gate_opened: tokio::sync::Notify,
}

/// A backend whose replies come from a script or a closure.
///
/// Clones share their recorded requests and counters. Usage is estimated from the text
/// (about four bytes per token), so token budgets can be tested too.
#[derive(Clone)]
pub struct MockBackend {
    responder: Arc<Responder>,
    failures: Vec<(Arc<Predicate>, LlmError)>,
    latency: Option<Arc<LatencyFn>>,
    shape: Option<Arc<ShapeFn>>,
    gate: Option<(Arc<Predicate>, usize)>,
    state: Arc<State>,
}

impl MockBackend {
    /// Replies with whatever `responder` returns for the request.
    pub fn from_fn<F>(responder: F) -> Self
    where
        F: Fn(&CompletionRequest) -> Result<String, LlmError> + Send + Sync + 'static,
    {
        Self {
            responder: Arc::new(responder),
            failures: Vec::new(),
            latency: None,
            shape: None,
            gate: None,
            state: Arc::default(),
        }
    }

    /// Replies with the given texts in order, one per call; once they run out, every call
    /// fails with [`LlmError::InvalidResponse`].
    pub fn scripted<I, S>(replies: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let replies: Mutex<VecDeque<String>> =
            Mutex::new(replies.into_iter().map(Into::into).collect());
        Self::from_fn(move |_| {
            lock(&replies)
                .pop_front()
                .ok_or_else(|| LlmError::invalid_response("the mock's script has run out"))
        })
    }

    /// Replies with the last user message, prefixed by `"echo: "`.
    pub fn echo() -> Self {
        Self::from_fn(|request| {
            Ok(format!(
                "echo: {}",
                request.last_user_message().unwrap_or_default()
            ))
        })
    }

    /// Waits `latency` before every reply.
    pub fn with_latency(self, latency: Duration) -> Self {
        self.with_latency_fn(move |_| latency)
    }

    /// Waits as long as `latency` says for each request (for example a latency that varies
    /// with the prompt, as real models do) before replying.
    pub fn with_latency_fn<F>(mut self, latency: F) -> Self
    where
        F: Fn(&CompletionRequest) -> Duration + Send + Sync + 'static,
    {
        self.latency = Some(Arc::new(latency));
        self
    }

    /// Reshapes every completion before it is returned: for example to mark a reply as cut
    /// (`finish_reason: length`) or to give it reasoning and no text, as real providers do.
    pub fn with_shape<F>(mut self, shape: F) -> Self
    where
        F: Fn(&CompletionRequest, Completion) -> Completion + Send + Sync + 'static,
    {
        self.shape = Some(Arc::new(shape));
        self
    }

    /// Holds every call for which `predicate` holds until `together` such calls are in
    /// progress at once; from then on the gate stays open. A test can so see concurrency
    /// without depending on timing: if the calls never overlap that much, they wait (put a
    /// timeout around the test), and [`peak_in_flight`](Self::peak_in_flight) still shows a
    /// ceiling that was passed.
    pub fn with_gate<P>(mut self, predicate: P, together: usize) -> Self
    where
        P: Fn(&CompletionRequest) -> bool + Send + Sync + 'static,
    {
        self.gate = Some((Arc::new(predicate), together));
        self
    }

    /// Fails with `error` (after the latency) whenever `predicate` holds for the request.
    /// Checked before the responder, in the order added.
    pub fn fail_when<P>(mut self, predicate: P, error: LlmError) -> Self
    where
        P: Fn(&CompletionRequest) -> bool + Send + Sync + 'static,
    {
        self.failures.push((Arc::new(predicate), error));
        self
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<CompletionRequest> {
        lock(&self.state.requests).clone()
    }

    /// The number of calls received so far.
    pub fn calls(&self) -> usize {
        self.state.calls.load(Ordering::SeqCst)
    }

    /// The number of calls in progress now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most calls ever in progress at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    /// Resets the peak to the current number in flight.
    pub fn reset_peak(&self) {
        self.state
            .peak_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }
}

impl MockBackend {
    /// Waits until `together` gated calls are in progress (or the gate opened before).
    async fn pass_gate(&self, together: usize) -> InFlight<'_> {
        let state = &*self.state;
        let now = state.gated.fetch_add(1, Ordering::SeqCst) + 1;
        let guard = InFlight(&state.gated);
        if now >= together {
            state.gate_open.store(true, Ordering::SeqCst);
            state.gate_opened.notify_waiters();
        }
        loop {
            let opened = state.gate_opened.notified();
            tokio::pin!(opened);
            opened.as_mut().enable();
            if state.gate_open.load(Ordering::SeqCst) {
                return guard;
            }
            opened.await;
        }
    }
}

impl fmt::Debug for MockBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockBackend")
            .field("latency", &self.latency.is_some())
            .field("failure_rules", &self.failures.len())
            .field("calls", &self.calls())
            .field("peak_in_flight", &self.peak_in_flight())
            .finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Decrements the in-flight count even when the call is dropped midway (cancellation).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl LlmBackend for MockBackend {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let state = &*self.state;
        state.calls.fetch_add(1, Ordering::SeqCst);
        lock(&state.requests).push(request.clone());
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        let _guard = InFlight(&state.in_flight);
        let _gated = match &self.gate {
            Some((gated, together)) if gated(&request) => Some(self.pass_gate(*together).await),
            _ => None,
        };

        let latency = self
            .latency
            .as_ref()
            .map_or(Duration::ZERO, |f| f(&request));
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some((_, error)) = self.failures.iter().find(|(when, _)| when(&request)) {
            return Err(error.clone());
        }
        let text = (self.responder)(&request)?;
        let usage = Usage::new(request.estimated_prompt_tokens(), estimate_tokens(&text));
        let completion = Completion::new(request.model.clone(), text).with_usage(usage);
        Ok(match &self.shape {
            Some(shape) => shape(&request, completion),
            None => completion,
        })
    }
}

impl BatchExecutor for MockBackend {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::BatchOptions;

    #[tokio::test]
    async fn scripted_replies_run_out_cleanly() {
        let mock = MockBackend::scripted(["one", "two"]);
        let ask = || mock.complete(CompletionRequest::prompt("root", "q"));
        assert_eq!(ask().await.map(|c| c.text), Ok("one".to_owned()));
        assert_eq!(ask().await.map(|c| c.text), Ok("two".to_owned()));
        assert_eq!(ask().await.map_err(|e| e.kind()), Err("invalid_response"));
        assert_eq!(mock.requests().len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn counts_peak_concurrency_and_estimates_usage() {
        let mock = MockBackend::echo().with_latency(Duration::from_millis(50));
        let requests = (0..20)
            .map(|i| CompletionRequest::prompt("sub", format!("prompt {i}")))
            .collect();
        let results = mock.complete_batch(requests, &BatchOptions::new(5)).await;
        assert_eq!(mock.peak_in_flight(), 5);
        assert_eq!(mock.in_flight(), 0);
        let first = results[0].as_ref().map(|c| (c.text.clone(), c.usage));
        assert_eq!(
            first,
            Ok(("echo: prompt 0".to_owned(), Usage::new(2 + 4, 4)))
        );
    }
}
