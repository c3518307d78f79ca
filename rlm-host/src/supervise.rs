//! Supervising a run: a cancelled run gets a grace period to wind down, and a run with a
//! time budget is ended whatever its code does.
//!
//! The run itself stops its code and sub-calls when its token is cancelled or its time is
//! up; [`supervise`] is the backstop for code that does not stop (a REPL thread busy in a
//! native call): past the grace, the run is left behind and the caller goes on.
//!
//! ```
//! use std::time::Duration;
//! use rlm_host::supervise::{Supervised, supervise};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let cancel = rlm_host::CancellationToken::new();
//! let outcome = supervise(async { 42 }, &cancel, Some(Duration::from_secs(60))).await;
//! assert!(matches!(outcome, Supervised::Returned(42)));
//! # }
//! ```

use std::future::Future;
use std::time::Duration;

use rlm_core::CancellationToken;

/// How long a cancelled run may take to wind down before it is left behind.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How a supervised run ended.
#[derive(Debug)]
pub enum Supervised<T> {
    /// The run returned (a cancelled run that returned within the grace too).
    Returned(T),
    /// The token was cancelled and the run did not return within [`CANCEL_GRACE`].
    Abandoned,
    /// The time budget and [`CANCEL_GRACE`] ran out before the run returned: the token was
    /// cancelled and the run left behind.
    TimedOut,
}

/// Drives `run` until it returns, until [`CANCEL_GRACE`] after `cancel` is cancelled, or
/// until `max_time` plus the grace has passed (then `cancel` is cancelled).
pub async fn supervise<F: Future>(
    run: F,
    cancel: &CancellationToken,
    max_time: Option<Duration>,
) -> Supervised<F::Output> {
    let deadline = async {
        match max_time {
            Some(limit) => tokio::time::sleep(limit.saturating_add(CANCEL_GRACE)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        outcome = run => Supervised::Returned(outcome),
        () = async {
            cancel.cancelled().await;
            tokio::time::sleep(CANCEL_GRACE).await;
        } => Supervised::Abandoned,
        () = deadline => {
            cancel.cancel();
            Supervised::TimedOut
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_run_that_will_not_stop_is_left_behind() {
        let cancel = CancellationToken::new();
        let stuck = std::future::pending::<()>();
        let outcome = supervise(stuck, &cancel, Some(Duration::from_secs(1))).await;
        assert!(matches!(outcome, Supervised::TimedOut));
        assert!(cancel.is_cancelled());

        let cancel = CancellationToken::new();
        cancel.cancel();
        let outcome = supervise(std::future::pending::<()>(), &cancel, None).await;
        assert!(matches!(outcome, Supervised::Abandoned));
    }
}
