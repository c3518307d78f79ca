//! Where script evaluations run: each on a thread of its own, never on one of tokio's.
//!
//! An evaluation may wait for a long time on sub-calls and on child runs, whose own blocks are
//! evaluations too. On tokio's blocking pool (bounded: 512 threads by default) a tree wide and
//! deep enough fills the pool with parents waiting for children that can no longer get a
//! thread, and the whole process stops. A thread per evaluation cannot run out that way; how
//! many evaluations run at once is already bounded by the run's concurrency, depth and
//! budgets.
//!
//! The threads are kept for a while once their evaluation is done, and the next evaluation
//! takes an idle one (any whose stack is large enough) rather than start a thread: starting
//! one (its stack mapped, faulted in and unmapped again, its allocator and regex caches cold)
//! cost more than a short run's whole script. An evaluation never waits for a thread: with
//! none idle, a new one starts, so the pool grows with what runs at once, as threads per
//! evaluation did, and shrinks again when idle.

use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::RlmError;
use crate::sync::lock;

/// How long an idle evaluation thread waits for another evaluation before it ends.
const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Work handed to an evaluation thread.
type Job = Box<dyn FnOnce() + Send>;

/// An idle evaluation thread: its stack size and where to send its next job.
struct Idle {
    id: u64,
    stack: usize,
    jobs: Sender<Job>,
}

/// The idle evaluation threads, the latest last.
static IDLE: Mutex<Vec<Idle>> = Mutex::new(Vec::new());
/// Ids of evaluation threads.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

thread_local! {
    /// The stack size of this thread when it is an evaluation thread (0: it is not).
    static EVALUATION_STACK: Cell<usize> = const { Cell::new(0) };
    /// Evaluations handed off from this thread (tests: which paths need a thread).
    #[cfg(test)]
    static HANDED_OFF: Cell<usize> = const { Cell::new(0) };
}

/// How many evaluations this thread has handed to evaluation threads.
#[cfg(test)]
pub(crate) fn handed_off() -> usize {
    HANDED_OFF.with(Cell::get)
}

/// The stack this thread was started with, when it is an evaluation thread (0 otherwise):
/// code that needs at most this much can run here rather than on a thread of its own.
pub(crate) fn evaluation_stack() -> usize {
    EVALUATION_STACK.with(Cell::get)
}

/// Runs `job` on an idle evaluation thread whose stack holds at least `stack` bytes, or on a
/// new one. `false` (and the job dropped) if no thread could be started.
fn run_on_thread(stack: usize, job: Job) -> bool {
    let mut job = job;
    loop {
        // The latest idle thread first: its caches are the warmest.
        let idle = {
            let mut idle = lock(&IDLE);
            idle.iter()
                .rposition(|t| t.stack >= stack)
                .map(|i| idle.remove(i))
        };
        let Some(idle) = idle else { break };
        match idle.jobs.send(job) {
            Ok(()) => return true,
            // That thread has just ended: try another.
            Err(returned) => job = returned.0,
        }
    }
    let (sender, receiver) = channel::<Job>();
    if sender.send(job).is_err() {
        return false;
    }
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::thread::Builder::new()
        .name("rlm-repl-eval".into())
        .stack_size(stack)
        .spawn(move || evaluation_thread(id, stack, sender, receiver))
        .is_ok()
}

/// An evaluation thread: runs its jobs, then waits idle for the next one, and ends after
/// [`IDLE_TIMEOUT`] without one.
fn evaluation_thread(id: u64, stack: usize, sender: Sender<Job>, jobs: Receiver<Job>) {
    EVALUATION_STACK.with(|s| s.set(stack));
    loop {
        while let Ok(job) = jobs.try_recv() {
            job();
        }
        lock(&IDLE).push(Idle {
            id,
            stack,
            jobs: sender.clone(),
        });
        match jobs.recv_timeout(IDLE_TIMEOUT) {
            Ok(job) => job(),
            Err(RecvTimeoutError::Timeout) => {
                let still_idle = {
                    let mut idle = lock(&IDLE);
                    match idle.iter().position(|t| t.id == id) {
                        Some(i) => {
                            idle.remove(i);
                            true
                        }
                        None => false,
                    }
                };
                if still_idle {
                    return;
                }
                // Someone took this thread just now: its job is on the way.
                match jobs.recv() {
                    Ok(job) => job(),
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Runs `f` (a script evaluation, or work that waits on one) on an evaluation thread with
/// `stack` bytes of stack (see the module's notes), and waits for it without blocking the
/// runtime. When no thread can be started, it falls back to tokio's blocking pool rather than
/// fail. A panic in `f` is an [`RlmError::Internal`].
pub(crate) async fn spawn_evaluation<T, F>(stack: usize, f: F) -> Result<T, RlmError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    #[cfg(test)]
    HANDED_OFF.with(|n| n.set(n.get() + 1));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    // Kept where the fallback can take it back if the thread never starts.
    let job = Arc::new(Mutex::new(Some(f)));
    let span = tracing::Span::current();
    let taken = Arc::clone(&job);
    let started = run_on_thread(
        stack,
        Box::new(move || {
            let _entered = span.enter();
            let Some(f) = lock(&taken).take() else {
                return;
            };
            let _ = sender.send(catch_unwind(AssertUnwindSafe(f)));
        }),
    );
    if !started {
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
        let value = spawn_evaluation(1 << 20, || 6 * 7).await;
        assert_eq!(value.ok(), Some(42));
        let failed = spawn_evaluation(1 << 20, || -> u8 { panic!("boom") }).await;
        let message = failed.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("boom"), "{message}");
        // The thread survived the panic, or another took its place: evaluations go on.
        let again = spawn_evaluation(1 << 20, || 7).await;
        assert_eq!(again.ok(), Some(7));
    }

    /// An idle thread is taken only if its stack is as large as asked: a block never runs
    /// on a smaller stack than its limits need.
    #[tokio::test]
    async fn an_evaluation_gets_a_stack_at_least_as_large_as_asked() {
        for stack in [1 << 20, 4 << 20, 2 << 20, 8 << 20, 1 << 20] {
            let got = spawn_evaluation(stack, evaluation_stack).await;
            assert!(got.as_ref().is_ok_and(|s| *s >= stack), "{stack}: {got:?}");
        }
        // Not an evaluation thread: a block run from here gets a thread of its own.
        assert_eq!(evaluation_stack(), 0);
    }
}
