//! Shutting down without dropping work: when the server is told to stop it drains.
//!
//! 1. The listener closes: new connections are refused.
//! 2. A request that arrives on an open connection, or that was waiting for a run slot, is
//!    answered 503 `shutting_down` (`Connection: close`).
//! 3. Runs in flight finish, for up to the grace ([`ServeOptions::shutdown_grace`]); their
//!    clients get their answers as usual.
//! 4. After the grace the runs still going are cancelled, and their clients get 503
//!    `shutting_down` (a stream: that error as its last event, then `[DONE]`), never an
//!    empty reply. The server returns once those replies are sent (or after a last bound).
//!
//! [`ServeOptions::shutdown_grace`]: crate::serve::ServeOptions::shutdown_grace

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::server::graceful::GracefulShutdown;
use rlm_core::CancellationToken;
use rlm_repl::{RunResult, StopReason};
use serde_json::json;
use tokio::net::TcpListener;

/// The default grace for runs in flight: 30 seconds.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Whether the server is draining, and the token that cancels every run after the grace.
#[derive(Debug, Default)]
pub(crate) struct Lifecycle {
    draining: AtomicBool,
    cancel: CancellationToken,
}

impl Lifecycle {
    /// A run's token: cancelled by its own request going away, or by [`Lifecycle::cancel_runs`].
    pub(crate) fn run_token(&self) -> CancellationToken {
        self.cancel.child_token()
    }

    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub(crate) fn draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// The grace is over: cancels every run.
    pub(crate) fn cancel_runs(&self) {
        self.cancel.cancel();
    }

    /// Whether `result` is of a run the shutdown cancelled (a run that finished as the
    /// grace ended keeps its answer).
    pub(crate) fn cancelled_run<E>(&self, result: &Result<RunResult, E>) -> bool {
        self.cancel.is_cancelled()
            && match result {
                Ok(result) => result.stopped == StopReason::Cancelled,
                Err(_) => true,
            }
    }
}

/// How long cancelled runs may take to send their clients the error, after the grace.
const AFTER_CANCEL: Duration = Duration::from_secs(10);

/// Drains the server (see the [module](self)): closes `listener`, lets the connections
/// finish for up to `grace`, cancels the runs still going, and waits (bounded) for their
/// error replies to be sent.
pub(crate) async fn drain(
    listener: TcpListener,
    connections: GracefulShutdown,
    lifecycle: &Lifecycle,
    grace: Duration,
) {
    drop(listener);
    lifecycle.start_draining();
    let done = connections.shutdown();
    tokio::pin!(done);
    if tokio::time::timeout(grace, &mut done).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs_f64(),
            "runs still going at the end of the shutdown grace are cancelled"
        );
        lifecycle.cancel_runs();
        let _ = tokio::time::timeout(AFTER_CANCEL, &mut done).await;
    }
}

/// The answer to a request the draining server will not start.
pub(crate) fn shutting_down(message: &str) -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(json!({"error": {
            "message": message,
            "type": "server_error",
            "code": "shutting_down",
            "param": null,
        }})),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::RETRY_AFTER, HeaderValue::from(1u32));
    response
}

/// The body of the error a client gets when its run was cancelled at the end of the grace.
pub(crate) const CANCELLED_MESSAGE: &str = "the server is shutting down: the run was still going \
     at the end of its --shutdown-grace and was cancelled; send the request again";

/// The middleware: while draining, a new request is answered 503 `shutting_down`.
pub(crate) async fn refuse_while_draining(
    State(lifecycle): State<Arc<Lifecycle>>,
    request: Request,
    next: Next,
) -> Response {
    if lifecycle.draining() {
        return shutting_down("the server is shutting down and starts no new requests");
    }
    next.run(request).await
}
