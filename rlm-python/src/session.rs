//! `RLM.session(context)`: follow-up questions in one REPL scope, with the conversation
//! (the library's [`rlm_host::Session`]).

use std::sync::Arc;

use pyo3::prelude::*;
use rlm_host::supervise::{CANCEL_GRACE, Supervised, supervise};
use rlm_host::{CancellationToken, Context};

use crate::errors::Failure;
use crate::result::PyResult_;
use crate::rlm::{Engine, Schema, finish};
use crate::wait;

/// A conversation over one context: each `ask` is a run that keeps the REPL's variables of
/// the earlier questions, and the root model is told the earlier questions and answers.
/// Questions of one session run one at a time (a second waits for the first).
#[pyclass(module = "rlm_rs._rlm_rs", name = "_Session", frozen)]
pub(crate) struct PySession {
    engine: Arc<Engine>,
    session: Arc<tokio::sync::Mutex<rlm_host::Session>>,
    /// What loading the context warned of (told with the first answer).
    warnings: std::sync::Mutex<Vec<String>>,
    schema: Option<Schema>,
}

impl PySession {
    pub(crate) fn new(
        engine: Arc<Engine>,
        context: Context,
        warnings: Vec<String>,
        schema: Option<Schema>,
    ) -> Result<Self, Failure> {
        let mut builder = crate::rlm::builder(&engine, CancellationToken::new())?;
        if let Some(schema) = &schema {
            builder = builder.output_schema(schema.json().clone());
        }
        let rlm = builder.build()?;
        Ok(Self {
            session: Arc::new(tokio::sync::Mutex::new(rlm.session(context))),
            engine,
            warnings: std::sync::Mutex::new(warnings),
            schema,
        })
    }

    fn ask_future(
        &self,
        query: String,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = Result<rlm_host::RunResult, Failure>> + Send + 'static
    {
        let session = Arc::clone(&self.session);
        let max_time = self.engine.settings.max_time;
        async move {
            let mut session = session.lock().await;
            match supervise(session.ask_cancellable(query, &cancel), &cancel, max_time).await {
                Supervised::Returned(outcome) => outcome.map_err(Failure::from),
                Supervised::Abandoned => Err(Failure::Rlm(rlm_host::RlmError::Root {
                    turn: 0,
                    source: rlm_host::LlmError::Cancelled,
                })),
                Supervised::TimedOut => Err(Failure::Budget(format!(
                    "the question's time ran out (max_time) and its code did not stop within \
                     {} s; no answer",
                    CANCEL_GRACE.as_secs_f64()
                ))),
            }
        }
    }

    fn take_warnings(&self) -> Vec<String> {
        std::mem::take(
            &mut *self
                .warnings
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

#[pymethods]
impl PySession {
    /// Answers `query` in the session and returns a `Result`; blocks as `RLM.completion`
    /// does (GIL released, Ctrl-C cancels the question; the variables set so far are kept).
    fn ask(&self, py: Python<'_>, query: String) -> PyResult<Py<PyResult_>> {
        let cancel = CancellationToken::new();
        let outcome = wait::block_on(py, self.ask_future(query, cancel.clone()), &cancel)?;
        finish(
            py,
            &self.engine,
            outcome,
            self.take_warnings(),
            self.schema.as_ref(),
        )
    }

    /// `ask` as an awaitable of the running event loop.
    fn aask<'py>(&self, py: Python<'py>, query: String) -> PyResult<Bound<'py, PyAny>> {
        let cancel = CancellationToken::new();
        let run = self.ask_future(query, cancel.clone());
        let engine = Arc::clone(&self.engine);
        let warnings = self.take_warnings();
        let schema = self.schema.as_ref().map(Schema::clone_ref);
        wait::future(py, run, cancel, move |py, outcome| {
            finish(py, &engine, outcome, warnings, schema.as_ref()).map(Py::into_any)
        })
    }

    /// The names of the variables the REPL holds after the last question.
    #[getter]
    fn variables(&self) -> Vec<String> {
        self.session
            .try_lock()
            .map(|s| s.variable_names())
            .unwrap_or_default()
    }

    /// The questions so far and their answers: a list of `(query, answer)`.
    #[getter]
    fn history(&self) -> Vec<(String, String)> {
        self.session
            .try_lock()
            .map(|s| {
                s.history()
                    .iter()
                    .map(|e| (e.query.clone(), e.answer.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}
