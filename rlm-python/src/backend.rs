//! `backend=`: a Python callable `(messages, model) -> str` (or an async one) as an
//! [`LlmBackend`], used for root and sub-calls instead of HTTP.

use async_trait::async_trait;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple};
use rlm_core::{BatchExecutor, Completion, CompletionRequest, LlmBackend, LlmError};

use crate::callback::Callable;

/// A Python callable that answers chat requests.
pub(crate) struct PyBackend {
    func: Callable,
}

impl PyBackend {
    pub(crate) fn new(func: Py<PyAny>) -> Self {
        Self {
            func: Callable::new(func, "backend"),
        }
    }
}

#[async_trait]
impl LlmBackend for PyBackend {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let model = request.model.clone();
        let messages: Vec<(&'static str, String)> = request
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.to_string()))
            .collect();
        let asked = model.clone();
        let text = self
            .func
            .call(
                move |py| {
                    let list = PyList::empty(py);
                    for (role, content) in &messages {
                        let message = PyDict::new(py);
                        message.set_item("role", role)?;
                        message.set_item("content", content)?;
                        list.append(message)?;
                    }
                    PyTuple::new(py, [list.into_any(), asked.into_pyobject(py)?.into_any()])
                },
                |value| {
                    value.extract::<String>().map_err(|_| {
                        pyo3::exceptions::PyTypeError::new_err(format!(
                            "the backend must return a str, not {}",
                            crate::convert::type_name(value)
                        ))
                    })
                },
            )
            .await
            .map_err(|message| LlmError::Other { message })?;
        Ok(Completion::new(model, text))
    }
}

impl BatchExecutor for PyBackend {}
