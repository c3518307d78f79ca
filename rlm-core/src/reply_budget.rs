//! [`ReplyBudget`]: a bound on the bytes of answers that the calls of one task may bring in.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

tokio::task_local! {
    static CURRENT: ReplyBudget;
}

/// The bytes of answers a caller can still take in, shared by every call it makes.
///
/// A caller that must not be sent more than it can hold (the REPL, whose scope has a memory
/// budget) runs its calls inside [`scope`](Self::scope); a backend charges each reply's
/// bytes to the [`current`](Self::current) budget *while they arrive*, before anything is
/// parsed, and fails that reply with [`LlmError::OverReplyBudget`](crate::LlmError::OverReplyBudget)
/// when they do not fit. So a batch of huge answers fills the
/// budget with the first ones and the rest fail one by one, each with an error, instead of
/// all of them being read into memory at once. Decorators need not forward anything: the
/// budget travels with the task.
///
/// ```
/// use rlm_core::ReplyBudget;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let budget = ReplyBudget::new(100);
/// let taken = budget
///     .clone()
///     .scope(async {
///         // What a backend does as a body arrives:
///         let current = ReplyBudget::current().expect("inside the scope");
///         (current.try_take(60), current.try_take(60))
///     })
///     .await;
/// assert_eq!(taken, (true, false));
/// assert_eq!(budget.used(), 60);
/// assert!(ReplyBudget::current().is_none());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReplyBudget {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    limit: u64,
    used: AtomicU64,
}

impl ReplyBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Self {
            inner: Arc::new(Inner {
                limit,
                used: AtomicU64::new(0),
            }),
        }
    }

    /// The bytes it allows in all.
    pub fn limit(&self) -> u64 {
        self.inner.limit
    }

    /// The bytes taken so far.
    pub fn used(&self) -> u64 {
        self.inner.used.load(Ordering::Acquire)
    }

    /// Takes `bytes` if they fit; `false` (and nothing taken) when they would pass the limit.
    pub fn try_take(&self, bytes: u64) -> bool {
        self.inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes)
                    .filter(|total| *total <= self.inner.limit)
            })
            .is_ok()
    }

    /// Gives back `bytes` taken earlier (a reply that was read and then dropped).
    pub fn give_back(&self, bytes: u64) {
        let _ = self
            .inner
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                Some(used.saturating_sub(bytes))
            });
    }

    /// Runs `future` with this budget as the task's current one.
    pub async fn scope<F: Future>(self, future: F) -> F::Output {
        CURRENT.scope(self, future).await
    }

    /// The budget of the running task, if it runs inside a [`scope`](Self::scope).
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }
}
