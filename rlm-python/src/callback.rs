//! Calling the user's Python callables (tools, a backend) from the engine: each call on a
//! blocking thread of the runtime with the GIL held only while Python runs; an async
//! callable's coroutine runs on rlm_rs's own event-loop thread (`rlm_rs._aio`), so a caller
//! blocked in `completion` (even inside a running loop, as in Jupyter) never deadlocks.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// A Python callable, shareable across threads without the GIL.
#[derive(Clone)]
pub(crate) struct Callable {
    func: Arc<Py<PyAny>>,
    /// What the callable is, for messages (`backend`, `tool "lookup"`).
    what: Arc<str>,
}

impl Callable {
    pub(crate) fn new(func: Py<PyAny>, what: impl Into<Arc<str>>) -> Self {
        Self {
            func: Arc::new(func),
            what: what.into(),
        }
    }

    /// Calls it with the arguments `args` makes, awaiting a coroutine it returns, and reads
    /// the outcome with `read`. An exception (raised, or from `read`) is its text:
    /// `the Python tool "name" raised TypeName: message`.
    pub(crate) async fn call<T, A, R>(&self, args: A, read: R) -> Result<T, String>
    where
        T: Send + 'static,
        A: for<'py> FnOnce(Python<'py>) -> PyResult<Bound<'py, PyTuple>> + Send + 'static,
        R: for<'py> FnOnce(&Bound<'py, PyAny>) -> PyResult<T> + Send + 'static,
    {
        let func = Arc::clone(&self.func);
        let what = Arc::clone(&self.what);
        let joined = tokio::task::spawn_blocking(move || {
            Python::attach(|py| {
                let outcome = (|| {
                    let helper = py.import("rlm_rs._aio")?.getattr("call")?;
                    let value = helper.call1((func.bind(py), args(py)?))?;
                    read(&value)
                })();
                outcome
                    .map_err(|error| format!("the Python {what} raised {}", describe(py, &error)))
            })
        })
        .await;
        match joined {
            Ok(outcome) => outcome,
            Err(e) => Err(format!("the Python call did not finish: {e}")),
        }
    }
}

/// `TypeName: message` of a Python exception.
pub(crate) fn describe(py: Python<'_>, error: &PyErr) -> String {
    let name = error
        .get_type(py)
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "Exception".to_owned());
    let message = error.value(py).to_string();
    if message.is_empty() {
        name
    } else {
        format!("{name}: {message}")
    }
}
