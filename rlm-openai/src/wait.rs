//! Waits a caller may want to show: retries and rate-limit holds, reported as they begin.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A wait of the backend, reported to the [`WaitObserver`] of its config as it begins.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Wait {
    /// An attempt failed and will be retried after `wait`.
    Retry {
        /// The model asked.
        model: String,
        /// The attempt that failed, from 1.
        attempt: u32,
        /// How long until the next attempt.
        wait: Duration,
        /// Why the attempt failed (no credentials in it).
        error: String,
        /// Whether the server asked for this wait (`Retry-After`) rather than the backoff.
        server_asked: bool,
    },
    /// A request is held by the model's rate limits (`--rpm` / `--tpm`) or by a pause a
    /// server asked for; reported once it has waited [`RATE_LIMIT_NOTICE_AFTER`].
    RateLimit {
        /// The model asked.
        model: String,
        /// How long it has waited so far.
        waited: Duration,
    },
}

/// How long a request waits for its rate limit before the wait is reported.
pub const RATE_LIMIT_NOTICE_AFTER: Duration = Duration::from_secs(1);

/// Receives the backend's [`Wait`]s (for progress displays and logs). Called from the
/// request's task: keep it quick.
#[derive(Clone)]
pub struct WaitObserver(Arc<dyn Fn(&Wait) + Send + Sync>);

impl WaitObserver {
    /// An observer calling `f` for each wait.
    pub fn new(f: impl Fn(&Wait) + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }

    /// Reports `wait`.
    pub(crate) fn notify(&self, wait: &Wait) {
        (self.0)(wait);
    }
}

impl fmt::Debug for WaitObserver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WaitObserver")
    }
}
