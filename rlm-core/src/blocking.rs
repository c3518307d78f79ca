//! Entry points for callers without an async runtime.
//!
//! The library's API is async and runs in any tokio runtime. Code that has no runtime (a
//! plain `main`, a synchronous callback, a test harness) uses [`block_on`]: it runs the
//! future on one process-wide runtime that lives as long as the process, so connection pools
//! built inside it stay valid from one call to the next. It may be called from anywhere,
//! including from inside another runtime's thread, where it blocks that thread (as a blocking
//! call must) instead of panicking.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::sync::mpsc;

use futures_util::FutureExt;
use tokio::runtime::{Builder, Handle, Runtime, RuntimeFlavor};

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
///
/// A panic of the future resumes in the caller with its original payload. Called from a
/// worker thread of a multi-thread runtime (the process-wide one included, as when a future
/// run by `block_on` makes a blocking call of its own), the worker's other tasks are handed
/// to another thread while this one waits ([`tokio::task::block_in_place`]), so nested
/// calls cannot starve each other of workers.
pub fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let (sender, receiver) = mpsc::sync_channel(1);
    runtime().spawn(async move {
        let output = AssertUnwindSafe(future).catch_unwind().await;
        // The receiver only goes away if the caller is gone; nothing to report then.
        let _ = sender.send(output);
    });
    let on_worker = Handle::try_current()
        .is_ok_and(|handle| handle.runtime_flavor() == RuntimeFlavor::MultiThread);
    let received = if on_worker {
        tokio::task::block_in_place(|| receiver.recv())
    } else {
        receiver.recv()
    };
    match received {
        Ok(Ok(output)) => output,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        // The task was dropped unfinished: only a runtime shutting down does that, and the
        // process-wide runtime lives as long as the process.
        Err(_) => panic!("rlm: the process-wide runtime dropped a blocking call"),
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

    fn panic_message(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
        payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
    }

    #[test]
    fn propagates_panics() {
        let caught = std::panic::catch_unwind(|| block_on(async { panic!("boom") }));
        assert_eq!(
            caught.err().as_deref().and_then(panic_message),
            Some("boom")
        );
    }

    #[tokio::test]
    async fn propagates_the_original_panic_from_inside_a_runtime() {
        // Called from a runtime's own thread, the future's panic (not some other panic about
        // nested runtimes) reaches the caller.
        let caught = std::panic::catch_unwind(|| block_on(async { panic!("boom") }));
        assert_eq!(
            caught.err().as_deref().and_then(panic_message),
            Some("boom")
        );
    }

    /// Runs `f` on a thread of its own and waits at most a minute for it: a deadlock fails
    /// the test instead of hanging it.
    fn within_a_minute<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = sender.send(f());
        });
        receiver
            .recv_timeout(std::time::Duration::from_secs(60))
            .ok()
    }

    #[test]
    fn nested_calls_do_not_deadlock() {
        // A blocking call made by a future that itself runs under `block_on` (a synchronous
        // callback inside a blocking run), several levels deep: more levels than the
        // process-wide runtime has worker threads.
        let depth = std::thread::available_parallelism().map_or(2, usize::from) + 2;
        let nested = within_a_minute(move || {
            fn nest(level: usize) -> usize {
                if level == 0 {
                    0
                } else {
                    block_on(async move { nest(level - 1) + 1 })
                }
            }
            nest(depth)
        });
        assert_eq!(nested, Some(depth));
    }

    #[test]
    fn works_from_a_worker_of_a_multi_thread_runtime() {
        let value = within_a_minute(|| {
            let runtime = Builder::new_multi_thread()
                .worker_threads(1)
                .build()
                .unwrap_or_else(|e| panic!("{e}"));
            runtime.block_on(async {
                let on_worker = tokio::spawn(async { block_on(async { 3 }) });
                let on_blocking_thread = tokio::task::spawn_blocking(|| block_on(async { 4 }));
                (
                    on_worker.await.unwrap_or_default(),
                    on_blocking_thread.await.unwrap_or_default(),
                    // And from the runtime's own `block_on` thread.
                    block_on(async { 5 }),
                )
            })
        });
        assert_eq!(value, Some((3, 4, 5)));
    }
}
