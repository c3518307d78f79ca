//! `rlm_rs.Result`: what a run returns.

use pyo3::prelude::*;
use pyo3::types::PyDict;
use rlm_host::RunResult;
use rlm_host::results::JobResult;
use serde_json::Value;

use crate::convert::to_py;

/// The outcome of a run: the answer, why the run stopped, and what it used.
///
/// `answer` is empty when the run stopped without one (a budget ran out and the final ask
/// got no marked answer); `stopped` then says which budget, and `warnings` why.
#[pyclass(module = "rlm_rs", name = "Result", frozen)]
pub(crate) struct PyResult_ {
    /// The final answer ("" when the run stopped without one).
    #[pyo3(get)]
    answer: String,
    /// For a run with `output_schema=`: the accepted answer as JSON-like values, or an
    /// instance of the Pydantic model given (None without a schema, or without an answer
    /// that conformed: then `stopped` is "invalid_output" or a budget).
    #[pyo3(get)]
    parsed: Py<PyAny>,
    /// Why the run stopped: "final", "max_iterations", "max_sub_calls", "max_tokens",
    /// "max_time", "max_cost", "invalid_output" (no answer met `output_schema`) or
    /// "cancelled".
    #[pyo3(get)]
    stopped: String,
    /// Root turns taken.
    #[pyo3(get)]
    iterations: usize,
    /// Wall time of the run in milliseconds.
    #[pyo3(get)]
    elapsed_ms: u64,
    /// Calls below the top-level root (`llm_query`, `llm_batch` items, child runs' calls).
    #[pyo3(get)]
    sub_calls: u64,
    /// Sub-calls that failed (errors, cut or empty replies).
    #[pyo3(get)]
    failed_sub_calls: u64,
    /// Sub-calls cut short by cancellation or the time budget.
    #[pyo3(get)]
    cancelled_sub_calls: u64,
    /// Sub-calls a budget refused before sending.
    #[pyo3(get)]
    refused_sub_calls: u64,
    /// Calls of the `tools=` functions from the REPL.
    #[pyo3(get)]
    tool_calls: u64,
    /// Child runs started by `rlm_query` / `rlm_batch`.
    #[pyo3(get)]
    child_runs: u64,
    /// The deepest child run (0: none).
    #[pyo3(get)]
    max_depth_reached: usize,
    /// Why the answer may not be trusted as it is, one sentence each (empty: a clean run).
    #[pyo3(get)]
    warnings: Vec<String>,
    /// The job's id (`RLM.batch`; None for `completion`).
    #[pyo3(get)]
    id: Option<String>,
    /// Why a batch job has no result, in one line (None: it ran; `completion` raises
    /// instead). `answer` is then "" and `stopped` is "error".
    #[pyo3(get)]
    error: Option<String>,
    /// The failure's kind, as the `--json` error kinds: "usage", "input", "server",
    /// "auth", "budget" or "internal" (None without `error`).
    #[pyo3(get)]
    error_kind: Option<String>,
    /// For a batch job with `expected`: whether the answer, trimmed, equals it (None
    /// otherwise).
    #[pyo3(get)]
    correct: Option<bool>,
    usage: Value,
    cost_usd: Value,
    /// The accepted answer as JSON, for `to_dict` (plain values, whatever `parsed` is).
    json: Option<Value>,
}

impl PyResult_ {
    /// From the engine's result; `warnings` (the context's, the cache tiers') go first;
    /// `parsed` is the typed answer (see [`crate::rlm::Schema::parse`]).
    pub(crate) fn new(result: RunResult, mut warnings: Vec<String>, parsed: Py<PyAny>) -> Self {
        warnings.extend(result.warnings);
        Self {
            answer: result.answer,
            parsed,
            stopped: result.stopped.as_str().to_owned(),
            iterations: result.iterations,
            elapsed_ms: u64::try_from(result.elapsed.as_millis()).unwrap_or(u64::MAX),
            sub_calls: result.sub_calls,
            failed_sub_calls: result.failed_sub_calls,
            cancelled_sub_calls: result.cancelled_sub_calls,
            refused_sub_calls: result.refused_sub_calls,
            tool_calls: result.tool_calls,
            child_runs: result.child_runs,
            max_depth_reached: result.max_depth_reached,
            warnings,
            id: None,
            error: None,
            error_kind: None,
            correct: None,
            json: result.json,
            usage: serde_json::to_value(&result.usage).unwrap_or(Value::Null),
            cost_usd: serde_json::to_value(&result.cost).unwrap_or(Value::Null),
        }
    }

    /// From a batch job's result: `typed` when the job had an `output_schema` (its answer
    /// is then the JSON value, `parsed` too); `warnings` (the stack's) go last.
    pub(crate) fn from_job(
        py: Python<'_>,
        job: JobResult,
        typed: bool,
        warnings: Vec<String>,
    ) -> PyResult<Self> {
        let (answer, json) = match job.answer {
            Value::Null => (String::new(), None),
            Value::String(text) if !typed => (text, None),
            other => (other.to_string(), Some(other)),
        };
        let parsed = match &json {
            Some(json) => to_py(py, json)?.unbind(),
            None => py.None(),
        };
        let mut all = job.warnings;
        all.extend(warnings);
        Ok(Self {
            answer,
            parsed,
            stopped: job.stopped.unwrap_or_else(|| "error".to_owned()),
            iterations: usize::try_from(job.iterations).unwrap_or(usize::MAX),
            elapsed_ms: job.elapsed_ms,
            sub_calls: job.sub_calls,
            failed_sub_calls: job.failed_sub_calls,
            cancelled_sub_calls: 0,
            refused_sub_calls: 0,
            tool_calls: 0,
            child_runs: 0,
            max_depth_reached: 0,
            warnings: all,
            id: Some(job.id),
            error_kind: job.error.as_ref().map(|e| e.kind.clone()),
            error: job.error.map(|e| e.message),
            correct: job.correct,
            json,
            usage: serde_json::to_value(&job.usage).unwrap_or(Value::Null),
            cost_usd: serde_json::to_value(&job.cost_usd).unwrap_or(Value::Null),
        })
    }
}

#[pymethods]
impl PyResult_ {
    /// Calls and tokens per model: `{model: {"calls", "prompt_tokens", "completion_tokens"}}`.
    #[getter]
    fn usage<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.usage)
    }

    /// What the run cost in USD: `{"total", "by_model", "unpriced"}`.
    #[getter]
    fn cost_usd<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_py(py, &self.cost_usd)
    }

    /// Every field as a dict of plain values (JSON-ready, as `rlm run --json` prints;
    /// `parsed` is the answer's JSON value, not a model instance).
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        dict.set_item("answer", &self.answer)?;
        match &self.json {
            Some(json) => dict.set_item("parsed", to_py(py, json)?)?,
            None => dict.set_item("parsed", py.None())?,
        }
        dict.set_item("stopped", &self.stopped)?;
        dict.set_item("iterations", self.iterations)?;
        dict.set_item("elapsed_ms", self.elapsed_ms)?;
        dict.set_item("usage", to_py(py, &self.usage)?)?;
        dict.set_item("cost_usd", to_py(py, &self.cost_usd)?)?;
        dict.set_item("sub_calls", self.sub_calls)?;
        dict.set_item("failed_sub_calls", self.failed_sub_calls)?;
        dict.set_item("cancelled_sub_calls", self.cancelled_sub_calls)?;
        dict.set_item("refused_sub_calls", self.refused_sub_calls)?;
        dict.set_item("tool_calls", self.tool_calls)?;
        dict.set_item("child_runs", self.child_runs)?;
        dict.set_item("max_depth_reached", self.max_depth_reached)?;
        dict.set_item("warnings", &self.warnings)?;
        dict.set_item("id", &self.id)?;
        dict.set_item("error", &self.error)?;
        dict.set_item("error_kind", &self.error_kind)?;
        dict.set_item("correct", self.correct)?;
        Ok(dict)
    }

    fn __repr__(&self) -> String {
        let mut answer: String = self.answer.chars().take(60).collect();
        if answer.len() < self.answer.len() {
            answer.push_str("...");
        }
        let error = match &self.error {
            Some(error) => format!(", error={error:?}"),
            None => String::new(),
        };
        format!(
            "Result(answer={answer:?}, stopped={:?}, iterations={}, sub_calls={}{error})",
            self.stopped, self.iterations, self.sub_calls
        )
    }
}
