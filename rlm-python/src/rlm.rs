//! `rlm_rs.RLM`: settings and a backend stack, shared by every run it makes.

use std::sync::Arc;
use std::time::Instant;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};
use rlm_host::supervise::{CANCEL_GRACE, Supervised, supervise};
use rlm_host::{CancellationToken, Context, Prices, RlmBuilder, RunResult, Settings, Stack};

use crate::backend::PyBackend;
use crate::errors::{Failure, UsageError};
use crate::options::{Extras, apply};
use crate::result::PyResult_;
use crate::tools::PyTool;
use crate::wait;

/// What every run of one `RLM` shares.
pub(crate) struct Engine {
    pub(crate) settings: Settings,
    pub(crate) extras: Extras,
    pub(crate) stack: Arc<Stack>,
    pub(crate) prices: Prices,
    pub(crate) tools: Vec<PyTool>,
}

/// A Recursive Language Model: `RLM(model).completion(context, query)` answers `query` over
/// `context`, which the root model explores with code in a sandboxed REPL, calling sub-models
/// on the parts (`llm_query`, `llm_batch`) and child RLMs (`rlm_query`).
///
/// `RLM(model, sub_model=None, *, base_url=None, api_key=None, tools=None, backend=None,
/// **limits)`: `base_url` defaults to `OPENAI_BASE_URL`, else the OpenAI API; `api_key` to
/// the variable `api_key_env` names (default `OPENAI_API_KEY`). `limits` are `rlm run`'s
/// flags with underscores (`max_iterations=10`, `max_concurrent=32`, `max_depth=1`,
/// `rpm=500`, `max_cost=0.5`, `max_time=120`, `cache_dir="..."`, `prices="prices.json"`,
/// `system_prompt="..."`, `trace="run.jsonl"`, ...); seconds are numbers. `tools` is a dict
/// of Python functions (sync or async) the REPL may call by name with one JSON-like value;
/// `backend` a callable (sync or async) `(messages, model) -> str` that answers instead of
/// an HTTP server.
///
/// One RLM may run many queries, one after another, at once from threads, or concurrently
/// with `acompletion`: they share its pacing, retries and sub-call cache.
#[pyclass(module = "rlm_rs._rlm_rs", name = "_RLM", frozen, subclass)]
pub(crate) struct PyRlm {
    engine: Arc<Engine>,
}

#[pymethods]
impl PyRlm {
    #[new]
    #[allow(clippy::too_many_arguments)] // the Python signature
    #[pyo3(signature = (model, sub_model=None, *, base_url=None, api_key=None, tools=None, backend=None, **limits))]
    fn new(
        py: Python<'_>,
        model: String,
        sub_model: Option<String>,
        base_url: Option<String>,
        api_key: Option<String>,
        tools: Option<&Bound<'_, PyDict>>,
        backend: Option<Py<PyAny>>,
        limits: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        let mut settings = base_settings(model, sub_model, base_url);
        let mut extras = Extras::default();
        apply(&mut settings, &mut extras, limits)?;
        let tools = crate::tools::from_dict(tools)?;
        let engine = py
            .detach(|| build(settings, extras, api_key, backend, tools))
            .map_err(|e| e.into_pyerr(""))?;
        Ok(Self {
            engine: Arc::new(engine),
        })
    }

    /// Answers `query` over `context` and returns a `Result`.
    ///
    /// `context`: a str; a list of str (documents); a dict or list (JSON-like); or a
    /// `pathlib.Path` to a file or directory, loaded as `rlm run --context` loads it. The
    /// GIL is released while the engine works; Ctrl-C (KeyboardInterrupt) cancels the run
    /// and its in-flight sub-calls. Safe to call from threads and inside a running event
    /// loop (it blocks that loop's thread until the answer; use `acompletion` there).
    ///
    /// Raises `UsageError`, `InputError`, `ServerError`, `AuthError`, `BudgetError` (all
    /// `RlmError`s), or KeyboardInterrupt.
    #[pyo3(signature = (context, query, *, output_schema=None))]
    fn completion(
        &self,
        py: Python<'_>,
        context: &Bound<'_, PyAny>,
        query: String,
        output_schema: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyResult_>> {
        let schema = Schema::of(output_schema)?;
        let (context, warnings) = read_context(py, context, &self.engine)?;
        let cancel = CancellationToken::new();
        let run = start(
            &self.engine,
            query,
            context,
            cancel.clone(),
            schema.as_ref(),
        )?;
        let outcome = wait::block_on(py, run, &cancel)?;
        finish(py, &self.engine, outcome, warnings, schema.as_ref())
    }

    /// `await rlm.acompletion(context, query)`: `completion` as an awaitable of the running
    /// event loop (asyncio; Jupyter's too). The loop goes on while the engine works;
    /// cancelling the awaiting task cancels the run and its in-flight sub-calls.
    #[pyo3(signature = (context, query, *, output_schema=None))]
    fn acompletion<'py>(
        &self,
        py: Python<'py>,
        context: &Bound<'py, PyAny>,
        query: String,
        output_schema: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let schema = Schema::of(output_schema)?;
        let (context, warnings) = read_context(py, context, &self.engine)?;
        let cancel = CancellationToken::new();
        let run = start(
            &self.engine,
            query,
            context,
            cancel.clone(),
            schema.as_ref(),
        )?;
        let engine = Arc::clone(&self.engine);
        wait::future(py, run, cancel, move |py, outcome| {
            finish(py, &engine, outcome, warnings, schema.as_ref()).map(Py::into_any)
        })
    }

    /// A conversation over `context` (as for `completion`): `session.ask(query)` answers
    /// follow-up questions in one REPL scope, with the earlier questions and answers.
    #[pyo3(signature = (context, *, output_schema=None))]
    fn session(
        &self,
        py: Python<'_>,
        context: &Bound<'_, PyAny>,
        output_schema: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<crate::session::PySession> {
        let schema = Schema::of(output_schema)?;
        let (context, warnings) = read_context(py, context, &self.engine)?;
        crate::session::PySession::new(Arc::clone(&self.engine), context, warnings, schema)
            .map_err(|e| e.into_pyerr(self.engine.stack.model()))
    }

    /// Runs `jobs` (dicts as in `JOBS.jsonl`: `id`, `query`, and optionally `context`,
    /// `context_path`, `expected`, `output_schema`, `model`, `sub_model`), `max_runs` at
    /// once, on this RLM's stack, key, backend and tools, each with its run budgets. Returns
    /// one `Result` per job, in the order of `jobs`.
    ///
    /// A job that fails (a context that cannot be read, a model that fails, a budget with no
    /// answer) is a `Result` with `error` (and `error_kind`; `stopped` is "error"); the
    /// others are kept. The GIL is released while the jobs run; Ctrl-C cancels them all
    /// (KeyboardInterrupt).
    ///
    /// Raises `UsageError` naming the job's index for a job that is not such a dict, before
    /// anything runs.
    #[pyo3(signature = (jobs, *, max_runs=rlm_host::batch::DEFAULT_MAX_RUNS))]
    fn batch(
        &self,
        py: Python<'_>,
        jobs: &Bound<'_, PyAny>,
        max_runs: usize,
    ) -> PyResult<Vec<PyResult_>> {
        let batch = crate::jobs::Batch::new(py, &self.engine, jobs, max_runs)?;
        let cancel = CancellationToken::new();
        let slots = wait::block_on(py, batch.run(cancel.clone()), &cancel)?;
        crate::jobs::finish(py, &self.engine, slots)
    }

    /// `await rlm.abatch(jobs, max_runs=8)`: `batch` as an awaitable of the running event
    /// loop. Cancelling the awaiting task cancels every job.
    #[pyo3(signature = (jobs, *, max_runs=rlm_host::batch::DEFAULT_MAX_RUNS))]
    fn abatch<'py>(
        &self,
        py: Python<'py>,
        jobs: &Bound<'py, PyAny>,
        max_runs: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        let batch = crate::jobs::Batch::new(py, &self.engine, jobs, max_runs)?;
        let cancel = CancellationToken::new();
        let engine = Arc::clone(&self.engine);
        wait::future(py, batch.run(cancel.clone()), cancel, move |py, slots| {
            let results = crate::jobs::finish(py, &engine, slots)?;
            Ok(results.into_pyobject(py)?.into_any().unbind())
        })
    }

    /// The root model.
    #[getter]
    fn model(&self) -> String {
        self.engine.stack.model().to_owned()
    }

    /// The sub-calls' model.
    #[getter]
    fn sub_model(&self) -> String {
        self.engine.stack.sub_model().to_owned()
    }

    fn __repr__(&self) -> String {
        format!(
            "RLM(model={:?}, sub_model={:?}, base_url={:?})",
            self.engine.stack.model(),
            self.engine.stack.sub_model(),
            self.engine.stack.shown_url()
        )
    }
}

/// Settings for `model` with the environment's defaults a front end applies (`OPENAI_BASE_URL`).
pub(crate) fn base_settings(
    model: String,
    sub_model: Option<String>,
    base_url: Option<String>,
) -> Settings {
    let mut settings = Settings::new(model);
    settings.sub_model = sub_model;
    settings.base_url = base_url
        .or_else(|| std::env::var("OPENAI_BASE_URL").ok())
        .unwrap_or(settings.base_url);
    settings
}

/// The stack (HTTP, or the Python backend) and prices for `settings`.
fn build(
    settings: Settings,
    extras: Extras,
    api_key: Option<String>,
    backend: Option<Py<PyAny>>,
    tools: Vec<PyTool>,
) -> Result<Engine, Failure> {
    let prices = settings.load_prices()?;
    let stack = match backend {
        Some(backend) => Stack::with_backend(&settings, Arc::new(PyBackend::new(backend)))?,
        None => match &api_key {
            Some(key) => Stack::build_with_api_key(&settings, key, None, 1)?,
            None => Stack::build(&settings, None, 1)?,
        },
    };
    Ok(Engine {
        settings,
        extras,
        stack: Arc::new(stack),
        prices,
        tools,
    })
}

/// `context` as the engine's, with what loading it warned of.
fn read_context(
    py: Python<'_>,
    context: &Bound<'_, PyAny>,
    engine: &Engine,
) -> PyResult<(Context, Vec<String>)> {
    if let Ok(text) = context.cast::<PyString>() {
        return Ok((Context::Text(text.to_cow()?.into_owned()), Vec::new()));
    }
    let pathlike = py.import("os")?.getattr("PathLike")?;
    if context.is_instance(&pathlike)? {
        let path: std::path::PathBuf = context.extract()?;
        let mut options = rlm_host::context::LoadOptions::default();
        if let Some(max) = engine.extras.max_context_bytes {
            options.max_bytes = max;
        }
        let loaded = py
            .detach(|| rlm_host::context::load(Some(&path), &options, std::io::empty()))
            .map_err(|e| Failure::from(e).into_pyerr(""))?;
        return Ok((loaded.context, loaded.warnings));
    }
    if let Ok(list) = context.cast::<PyList>()
        && list.iter().all(|item| item.is_instance_of::<PyString>())
        && !list.is_empty()
    {
        let documents = list
            .iter()
            .map(|item| item.extract::<String>())
            .collect::<PyResult<Vec<_>>>()?;
        return Ok((Context::Documents(documents), Vec::new()));
    }
    match crate::convert::to_json(context) {
        Ok(value) => Ok((Context::Json(value), Vec::new())),
        Err(e) => Err(UsageError::new_err(format!(
            "context must be a str, a list of str, a dict or list (JSON-like) or a \
             pathlib.Path: {}",
            e.value(py)
        ))),
    }
}

/// A run's builder on the engine's stack with its prices, prompt, trace and tools.
pub(crate) fn builder(engine: &Engine, cancel: CancellationToken) -> Result<RlmBuilder, Failure> {
    let mut builder = engine
        .stack
        .rlm_builder(&engine.settings)?
        .prices(engine.prices.clone())
        .cancel_token(cancel);
    if let Some(prompt) = &engine.extras.system_prompt {
        builder = builder.system_prompt(prompt.clone());
    }
    if let Some(path) = &engine.extras.trace {
        let writer = rlm_host::trace::TraceWriter::create(path, Instant::now())
            .map_err(|e| {
                Failure::Host(rlm_host::HostError::Input(format!(
                    "cannot write the trace {}: {e}",
                    path.display()
                )))
            })?
            .with_settings(engine.settings.trace_settings());
        builder = builder.observer(Arc::new(writer));
    }
    for tool in &engine.tools {
        builder = tool.register(builder);
    }
    Ok(builder)
}

/// `output_schema=`: a JSON Schema dict, or a Pydantic model class (its
/// `model_json_schema()`; the accepted answer is then validated into an instance).
pub(crate) struct Schema {
    json: serde_json::Value,
    model: Option<Py<PyAny>>,
}

impl Schema {
    /// The schema `obj` gives (`None` for none).
    ///
    /// # Errors
    /// `TypeError` for anything but a dict or a Pydantic model class.
    pub(crate) fn of(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Self>> {
        let Some(obj) = obj.filter(|o| !o.is_none()) else {
            return Ok(None);
        };
        if obj.is_instance_of::<PyDict>() {
            return Ok(Some(Self {
                json: crate::convert::to_json(obj)?,
                model: None,
            }));
        }
        if obj.is_instance_of::<pyo3::types::PyType>()
            && obj.hasattr("model_json_schema")?
            && obj.hasattr("model_validate")?
        {
            let schema = obj.call_method0("model_json_schema")?;
            return Ok(Some(Self {
                json: crate::convert::to_json(&schema)?,
                model: Some(obj.clone().unbind()),
            }));
        }
        Err(pyo3::exceptions::PyTypeError::new_err(format!(
            "output_schema must be a JSON Schema dict or a Pydantic model class, not {}",
            crate::convert::type_name(obj)
        )))
    }

    /// The schema as JSON.
    pub(crate) fn json(&self) -> &serde_json::Value {
        &self.json
    }

    /// A copy sharing the model class.
    pub(crate) fn clone_ref(&self) -> Self {
        Self {
            json: self.json.clone(),
            model: self
                .model
                .as_ref()
                .map(|m| Python::attach(|py| m.clone_ref(py))),
        }
    }

    /// The accepted answer `json` as Python: the model's instance, or plain values.
    ///
    /// # Errors
    /// The model's validation error (the engine validated the answer against the model's own
    /// schema, so this is a model whose validators go beyond its schema).
    pub(crate) fn parse(&self, py: Python<'_>, json: &serde_json::Value) -> PyResult<Py<PyAny>> {
        let value = crate::convert::to_py(py, json)?;
        match &self.model {
            Some(model) => Ok(model
                .bind(py)
                .call_method1("model_validate", (value,))?
                .unbind()),
            None => Ok(value.unbind()),
        }
    }
}

/// The run, supervised: `--max-time` ends it whatever its code does.
type Outcome = Result<RunResult, Failure>;

fn start(
    engine: &Arc<Engine>,
    query: String,
    context: Context,
    cancel: CancellationToken,
    schema: Option<&Schema>,
) -> PyResult<impl std::future::Future<Output = Outcome> + Send + 'static> {
    let rlm = builder(engine, cancel.clone())
        .map(|b| match schema {
            Some(schema) => b.output_schema(schema.json.clone()),
            None => b,
        })
        .and_then(|b| b.build().map_err(Failure::from))
        .map_err(|e| e.into_pyerr(engine.stack.model()))?;
    let max_time = engine.settings.max_time;
    Ok(async move {
        match supervise(rlm.run(query, context), &cancel, max_time).await {
            Supervised::Returned(outcome) => outcome.map_err(Failure::from),
            Supervised::Abandoned => Err(Failure::Rlm(rlm_host::RlmError::Root {
                turn: 0,
                source: rlm_host::LlmError::Cancelled,
            })),
            Supervised::TimedOut => Err(Failure::Budget(format!(
                "the run's time ran out (max_time) and its code did not stop within {} s; no \
                 answer",
                CANCEL_GRACE.as_secs_f64()
            ))),
        }
    })
}

pub(crate) fn finish(
    py: Python<'_>,
    engine: &Engine,
    outcome: Outcome,
    mut warnings: Vec<String>,
    schema: Option<&Schema>,
) -> PyResult<Py<PyResult_>> {
    match outcome {
        Ok(result) => {
            if result.stopped == rlm_host::StopReason::Cancelled {
                return Err(pyo3::exceptions::PyKeyboardInterrupt::new_err(
                    "the run was cancelled",
                ));
            }
            warnings.extend(engine.stack.warnings());
            let parsed = match (schema, &result.json) {
                (Some(schema), Some(json)) => schema.parse(py, json)?,
                _ => py.None(),
            };
            Py::new(py, PyResult_::new(result, warnings, parsed))
        }
        Err(failure) => Err(failure.into_pyerr(engine.stack.model())),
    }
}
