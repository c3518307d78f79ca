//! The sub model as the loop uses it: a decorator over the sub-call backend of one run.
//!
//! - It takes a reasoning section written into an answer's text (`<think>...</think>` at its
//!   start) out of the answer, into [`Completion::reasoning`], so that the script gets the
//!   answer alone and a reply that is only reasoning is a failed item ("no answer text").
//! - It stops the run when the sub model cannot work: when the run's first sub-calls
//!   ([`FIRST_FAILURES`] of them, before any succeeded) all fail with the same error that no
//!   retry can fix (an HTTP 4xx other than 429: a mistyped model name that a proxy answers
//!   with `400 Invalid model name`, say), as a 401 or an unknown model's 404 does at once.

use async_trait::async_trait;
use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, Completion, CompletionRequest,
    LlmBackend, LlmError,
};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::parse::leading_reasoning;
use crate::state::RunState;
use crate::sync::lock;

/// How many of a run's first sub-calls must fail alike before the run stops.
pub(super) const FIRST_FAILURES: usize = 3;

/// Wraps the sub-call backend of a run (see the module documentation).
pub(super) struct SubModel<B> {
    inner: B,
    watch: Arc<Watch>,
}

impl<B> SubModel<B> {
    /// Wraps `inner`, the sub-call backend of the run `run`.
    pub(super) fn new(inner: B, run: Arc<RunState>) -> Self {
        Self {
            inner,
            watch: Arc::new(Watch {
                run,
                seen: Mutex::default(),
            }),
        }
    }
}

/// Follows the first sub-calls of a run, until one succeeds or they differ.
struct Watch {
    run: Arc<RunState>,
    seen: Mutex<Seen>,
}

/// What the first sub-calls came to.
#[derive(Default)]
enum Seen {
    /// No sub-call finished yet.
    #[default]
    Nothing,
    /// This many failed, all with this error.
    Same(LlmError, usize),
    /// One succeeded, or they failed differently: the watch is over.
    Done,
}

impl Watch {
    fn observe(&self, result: &BatchResult) {
        let failure = match result {
            Err(LlmError::Cancelled) => return,
            // A refused `response_format` says nothing of the model itself: the request is
            // sent again without it (`llm_*_json` in auto mode).
            Err(error) if error.refuses_response_format() => return,
            Err(error)
                if error
                    .status()
                    .is_some_and(|s| (400..500).contains(&s) && s != 429) =>
            {
                Some(error)
            }
            _ => None,
        };
        let mut seen = lock(&self.seen);
        let next = match (std::mem::take(&mut *seen), failure) {
            (Seen::Done, _) | (_, None) => Seen::Done,
            (Seen::Nothing, Some(error)) => Seen::Same(error.clone(), 1),
            (Seen::Same(first, n), Some(error)) if same(&first, error) => Seen::Same(first, n + 1),
            (Seen::Same(..), Some(_)) => Seen::Done,
        };
        if let Seen::Same(error, n) = &next
            && *n >= FIRST_FAILURES
        {
            self.run.fail(error);
        }
        *seen = next;
    }
}

/// Whether two failures are the same: the same status and the same message.
fn same(a: &LlmError, b: &LlmError) -> bool {
    a.status() == b.status() && a.to_string() == b.to_string()
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
        let result = answer_result(self.inner.complete(request).await);
        self.watch.observe(&result);
        result
    }

    fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint()
    }
}

/// Hands the batch's observer each item as the script will get it, and watches it.
struct Observer {
    inner: Option<Arc<dyn BatchObserver>>,
    watch: Arc<Watch>,
}

impl BatchObserver for Observer {
    fn started(&self, index: usize, request: &CompletionRequest) {
        if let Some(inner) = &self.inner {
            inner.started(index, request);
        }
    }

    fn finished(&self, index: usize, result: &BatchResult, elapsed: Duration) {
        // Copied only when the answer has reasoning to take out (rarely).
        let answer = match result {
            Ok(completion) if leading_reasoning(&completion.text).is_some() => {
                Some(answer_result(result.clone()))
            }
            _ => None,
        };
        let result = answer.as_ref().unwrap_or(result);
        if let Some(inner) = &self.inner {
            inner.finished(index, result, elapsed);
        }
        self.watch.observe(result);
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
        let inner = options.observer.take();
        options.observer = Some(Arc::new(Observer {
            inner,
            watch: Arc::clone(&self.watch),
        }));
        self.inner
            .complete_batch(requests, &options)
            .await
            .into_iter()
            .map(answer_result)
            .collect()
    }
}
