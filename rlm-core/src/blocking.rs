//! Entry points for callers without an async runtime.
//!
//! The library's API is async and runs in any tokio runtime. Code that has no runtime (a
//! plain `main`, a synchronous callback, a test harness) uses [`block_on`]: it runs the
//! future on one process-wide runtime that lives as long as the process, so connection pools
//! built inside it stay valid from one call to the next. It may be called from anywhere,
//! including from inside another runtime's thread, where it blocks that thread (as a blocking
//! call must) instead of panicking.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::mpsc;

use tokio::runtime::{Builder, Runtime};

use crate::{BatchExecutor, BatchOptions, BatchResult, CompletionRequest};

fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        Builder::new_multi_thread()
            .enable_all()
            .thread_name("rlm-blocking")
            .build()
            // Building a runtime only fails when the OS refuses threads or a timer; nothing
            // in this library can work then.
            .unwrap_or_else(|e| panic!("rlm: cannot start the tokio runtime: {e}"))
    })
}

/// Runs `future` to completion on the process-wide runtime and returns its output.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (sender, receiver) = mpsc::sync_channel(1);
    let task = runtime().spawn(async move {
        // The receiver only goes away if the caller is gone; nothing to report then.
        let _ = sender.send(future.await);
    });
    match receiver.recv() {
        Ok(output) => output,
        // The task dropped the sender without sending: the future panicked.
        Err(_) => match runtime().block_on(task) {
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            _ => unreachable!("the task ended without an output or a panic"),
        },
    }
}

/// The blocking form of [`BatchExecutor::complete_batch`].
///
/// ```
/// use std::sync::Arc;
/// use rlm_core::{BatchOptions, CompletionRequest, ConcurrentExecutor, blocking};
/// # #[derive(Clone)] struct Upper;
/// # #[async_trait::async_trait]
/// # impl rlm_core::LlmBackend for Upper {
/// #     async fn complete(&self, r: CompletionRequest) -> Result<rlm_core::Completion, rlm_core::LlmError> {
/// #         Ok(rlm_core::Completion::new("m", r.last_user_message().unwrap_or("").to_uppercase()))
/// #     }
/// # }
///
/// let executor = Arc::new(ConcurrentExecutor::new(Upper));
/// let requests = vec![CompletionRequest::prompt("m", "a"), CompletionRequest::prompt("m", "b")];
/// let results = blocking::complete_batch(executor, requests, BatchOptions::new(4));
/// assert_eq!(results[1].as_ref().map(|c| c.text.as_str()), Ok("B"));
/// ```
pub fn complete_batch<E>(
    executor: std::sync::Arc<E>,
    requests: Vec<CompletionRequest>,
    options: BatchOptions,
) -> Vec<BatchResult>
where
    E: BatchExecutor + ?Sized + 'static,
{
    block_on(async move { executor.complete_batch(requests, &options).await })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn works_without_a_runtime() {
        assert_eq!(block_on(async { 1 + 1 }), 2);
    }

    #[tokio::test]
    async fn works_inside_a_current_thread_runtime() {
        let value = tokio::task::spawn_blocking(|| block_on(async { "inner" }))
            .await
            .unwrap_or_default();
        assert_eq!(value, "inner");
        // Even straight from the runtime's own thread it blocks rather than panics.
        assert_eq!(block_on(async { 7 }), 7);
    }

    #[test]
    fn propagates_panics() {
        let caught = std::panic::catch_unwind(|| block_on(async { panic!("boom") }));
        assert!(caught.is_err());
    }
}
