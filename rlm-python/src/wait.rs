//! The process's tokio runtime, and the two ways Python waits for it: blocking with the GIL
//! released (watching for Ctrl-C), or as an `asyncio` future of the caller's running loop.

use std::future::Future;
use std::sync::OnceLock;
use std::sync::mpsc::{RecvTimeoutError, sync_channel};
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyCFunction;
use rlm_host::CancellationToken;
use rlm_host::supervise::CANCEL_GRACE;

use crate::errors::RlmError;

/// How often a blocked call looks for a signal (Ctrl-C) to handle.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The runtime every run, batch and Python callback of the process runs on.
pub(crate) fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("rlm_rs")
            .build()
            .unwrap_or_else(|e| panic!("rlm_rs cannot start its tokio runtime: {e}"))
    })
}

/// Runs `work` on the runtime and waits for it with the GIL released, so other Python
/// threads, tools and backends run meanwhile. Every [`SIGNAL_POLL`] it handles pending
/// signals: a `KeyboardInterrupt` (or any exception a signal handler raises) cancels
/// `cancel`, waits up to [`CANCEL_GRACE`] for `work` to wind down, and is raised.
pub(crate) fn block_on<T, F>(py: Python<'_>, work: F, cancel: &CancellationToken) -> PyResult<T>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
{
    let (tx, rx) = sync_channel(1);
    // Shared with the closures that wait without the GIL (a receiver alone is not `Sync`).
    let rx = std::sync::Mutex::new(rx);
    let recv = |timeout| {
        rx.lock()
            .map_err(|_| RecvTimeoutError::Disconnected)
            .and_then(|rx| rx.recv_timeout(timeout))
    };
    runtime().spawn(async move {
        let _ = tx.send(work.await);
    });
    loop {
        match py.detach(|| recv(SIGNAL_POLL)) {
            Ok(value) => return Ok(value),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(signal) = py.check_signals() {
                    cancel.cancel();
                    // The run stops its code and drops its in-flight calls; what it returns
                    // is not wanted any more.
                    let _ = py.detach(|| recv(CANCEL_GRACE));
                    return Err(signal);
                }
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(RlmError::new_err(
                    "internal error (a bug in rlm): the run's task ended without a result",
                ));
            }
        }
    }
}

/// Runs `work` on the runtime and returns an `asyncio.Future` of the running loop that
/// `finish` resolves with its output (under the GIL). Cancelling the future (a cancelled
/// task) cancels `cancel`.
///
/// # Errors
/// `RuntimeError` when no event loop is running in this thread.
pub(crate) fn future<'py, T, F, R>(
    py: Python<'py>,
    work: F,
    cancel: CancellationToken,
    finish: R,
) -> PyResult<Bound<'py, PyAny>>
where
    T: Send + 'static,
    F: Future<Output = T> + Send + 'static,
    R: FnOnce(Python<'_>, T) -> PyResult<Py<PyAny>> + Send + 'static,
{
    let asyncio = py.import("asyncio")?;
    let event_loop = asyncio.call_method0("get_running_loop")?;
    let fut = event_loop.call_method0("create_future")?;
    let on_done = PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
        let cancelled = args
            .get_item(0)
            .and_then(|f| f.call_method0("cancelled"))
            .and_then(|c| c.is_truthy())
            .unwrap_or(false);
        if cancelled {
            cancel.cancel();
        }
    })?;
    fut.call_method1("add_done_callback", (on_done,))?;
    let event_loop = event_loop.unbind();
    let target = fut.clone().unbind();
    runtime().spawn(async move {
        let output = work.await;
        Python::attach(|py| {
            let outcome = finish(py, output);
            let setter = PyCFunction::new_closure(py, None, None, move |args, _kwargs| {
                let py = args.py();
                let fut = target.bind(py);
                if fut.call_method0("done")?.is_truthy()? {
                    return Ok::<(), PyErr>(());
                }
                match &outcome {
                    Ok(value) => fut.call_method1("set_result", (value.bind(py),))?,
                    Err(error) => fut.call_method1("set_exception", (error.value(py),))?,
                };
                Ok(())
            });
            // A loop closed meanwhile has nobody waiting.
            if let Ok(setter) = setter {
                let _ = event_loop
                    .bind(py)
                    .call_method1("call_soon_threadsafe", (setter,));
            }
        });
    });
    Ok(fut)
}
