//! Asking a run's root model: one call, reserved from the budget first and settled after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_core::{Completion, CompletionRequest, LlmBackend, LlmError, Message, Usage};
use tracing::Instrument;

use crate::budget::{Charge, Reserved};
use crate::repl::subcall::millis;
use crate::state::RunState;
use crate::{Event, RlmError};

/// The pause before the one retry of an unreadable root reply.
pub(super) const INVALID_REPLY_PAUSE: Duration = Duration::from_millis(500);

/// Asks a run's root model.
pub(super) struct RootAsker {
    pub(super) root: Arc<dyn LlmBackend>,
    pub(super) model: String,
    pub(super) run: Arc<RunState>,
    /// A child's root turns are reserved from the sub-call budget.
    pub(super) reserve: bool,
}

impl RootAsker {
    /// One root call. `None` when the run was cancelled (or ran out of time, or, for a
    /// child, out of budget) meanwhile, or, when `budgeted`, when the cost budget cannot
    /// cover it.
    pub(super) async fn ask(
        &self,
        messages: &[Message],
        turn: usize,
        budgeted: bool,
    ) -> Result<Option<(Completion, Duration)>, RlmError> {
        if self.reserve && self.run.cancel.is_cancelled() {
            return Ok(None);
        }
        let request = CompletionRequest {
            model: self.model.clone(),
            messages: messages.to_vec(),
            ..CompletionRequest::default()
        };
        let charge = Charge {
            sub_call: self.reserve,
            reserve_cost: budgeted,
        };
        let Some(budget) = self.run.budget.reserve_one(&request, charge) else {
            return Ok(None);
        };
        ask_root(&self.root, request, turn, &self.run, budget).await
    }
}

/// One root call, settled with `budget`. `None` when the run was cancelled (or ran out of
/// time) meanwhile.
pub(super) async fn ask_root(
    root: &Arc<dyn LlmBackend>,
    request: CompletionRequest,
    turn: usize,
    run: &RunState,
    mut budget: Reserved,
) -> Result<Option<(Completion, Duration)>, RlmError> {
    let span = tracing::info_span!(
        "rlm_turn",
        turn,
        model = %request.model,
        prompt_tokens = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
    );
    let started = Instant::now();
    budget.sent();
    let mut result = tokio::select! {
        biased;
        () = run.cancel.cancelled() => return Ok(None),
        result = root.complete(request.clone()).instrument(span.clone()) => result,
    };
    // A 200 reply holding an error object or a body that is not JSON: proxies send
    // transient upstream failures this way. One more try, after a pause.
    if let Err(LlmError::InvalidResponse { .. }) = &result {
        tracing::warn!(turn, "the root reply was unreadable; trying once more");
        result = tokio::select! {
            biased;
            () = run.cancel.cancelled() => return Ok(None),
            result = async {
                tokio::time::sleep(INVALID_REPLY_PAUSE).await;
                root.complete(request).await
            }.instrument(span.clone()) => result,
        };
    }
    let latency = started.elapsed();
    match result {
        Ok(reply) => {
            span.record("prompt_tokens", reply.usage.prompt_tokens);
            span.record("completion_tokens", reply.usage.completion_tokens);
            budget.settle(&reply.usage);
            run.emitter.emit_with(|| Event::RootReply {
                turn,
                text: reply.text.clone(),
                usage: reply.usage,
                elapsed_ms: millis(latency),
            });
            Ok(Some((reply, latency)))
        }
        Err(source) => {
            budget.settle(&Usage::default());
            if run.cancel.is_cancelled() {
                return Ok(None);
            }
            run.emitter.emit_with(|| Event::RunError {
                turn,
                error: source.to_string(),
            });
            Err(RlmError::Root { turn, source })
        }
    }
}
