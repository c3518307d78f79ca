//! Where script evaluations run: each on a thread of its own, never on one of tokio's.
//!
//! An evaluation may wait for a long time on sub-calls and on child runs, whose own blocks are
//! evaluations too. On tokio's blocking pool (bounded: 512 threads by default) a tree wide and
//! deep enough fills the pool with parents waiting for children that can no longer get a
//! thread, and the whole process stops. A thread per evaluation cannot run out that way; how
//! many evaluations run at once is already bounded by the run's concurrency, depth and
//! budgets.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use crate::RlmError;
use crate::sync::lock;

/// Runs `f` (a script evaluation, or work that waits on one) on a new thread, and waits for
/// it without blocking the runtime. When no thread can be started, it falls back to tokio's
/// blocking pool rather than fail. A panic in `f` is an [`RlmError::Internal`].
pub(crate) async fn spawn_evaluation<T, F>(f: F) -> Result<T, RlmError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    // Kept where the fallback can take it back if the thread never starts.
    let job = Arc::new(Mutex::new(Some(f)));
    let span = tracing::Span::current();
    let taken = Arc::clone(&job);
    let spawned = std::thread::Builder::new()
        .name("rlm-repl-eval".into())
        .spawn(move || {
            let _entered = span.enter();
            let Some(f) = lock(&taken).take() else {
                return;
            };
            let _ = sender.send(catch_unwind(AssertUnwindSafe(f)));
        });
    if spawned.is_err() {
        let Some(f) = lock(&job).take() else {
            return Err(lost("the REPL thread could not start"));
        };
        return tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| lost(&format!("the REPL thread failed: {e}")));
    }
    match receiver.await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(panic)) => Err(lost(&format!(
            "the REPL thread panicked: {}",
            panic_text(panic.as_ref())
        ))),
        Err(_) => Err(lost("the REPL thread ended without a result")),
    }
}

fn lost(why: &str) -> RlmError {
    RlmError::Internal(why.to_owned())
}

/// The message of a panic payload (empty when it is not text).
pub(crate) fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_value_comes_back_and_a_panic_is_an_error() {
        let value = spawn_evaluation(|| 6 * 7).await;
        assert_eq!(value.ok(), Some(42));
        let failed = spawn_evaluation(|| -> u8 { panic!("boom") }).await;
        let message = failed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("boom"), "{message}");
    }
}
