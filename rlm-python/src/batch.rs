//! `batch_completion` / `abatch_completion`: many plain prompts to one model, through the
//! same stack as a run's sub-calls (bounded, ordered, paced, retried, cached).

use std::sync::{Arc, Mutex, PoisonError};

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use rlm_core::{BatchOptions, BatchResult, CompletionRequest, FinishReason};
use rlm_host::{CancellationToken, Settings, Stack};

use crate::errors::{Failure, UsageError};
use crate::options::{Extras, apply};
use crate::rlm::base_settings;
use crate::wait;

/// The HTTP stacks of earlier batches, by settings and key (the most recent last): a
/// batch with the same settings reuses its stack, so pacing (`rpm`, `tpm`) holds across
/// calls and an answer cached by one call serves the next.
static STACKS: Mutex<Vec<KeptStack>> = Mutex::new(Vec::new());

/// A kept stack with the settings and key it was built for.
type KeptStack = (Settings, Option<String>, Arc<Stack>);

/// Stacks kept for reuse.
const KEPT_STACKS: usize = 8;

/// The HTTP stack for `settings` and `api_key`: a kept one, or a new one (then kept).
fn http_stack(settings: &Settings, api_key: Option<&String>) -> Result<Arc<Stack>, Failure> {
    let mut stacks = STACKS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(i) = stacks
        .iter()
        .position(|(s, k, _)| s == settings && k.as_ref() == api_key)
    {
        let kept = stacks.remove(i);
        let stack = Arc::clone(&kept.2);
        stacks.push(kept);
        return Ok(stack);
    }
    let stack = Arc::new(match api_key {
        Some(key) => Stack::build_with_api_key(settings, key, None, 1)?,
        None => Stack::build(settings, None, 1)?,
    });
    if stacks.len() >= KEPT_STACKS {
        stacks.remove(0);
    }
    stacks.push((settings.clone(), api_key.cloned(), Arc::clone(&stack)));
    Ok(stack)
}

/// A batch ready to run: the stack, the requests and how many at once.
struct Batch {
    stack: Arc<Stack>,
    requests: Vec<CompletionRequest>,
    max_concurrent: usize,
    model: String,
}

/// Where the calls go: `base_url=`, `api_key=` and `backend=`.
struct Endpoint {
    base_url: Option<String>,
    api_key: Option<String>,
    backend: Option<Py<PyAny>>,
}

fn prepare(
    py: Python<'_>,
    prompts: &Bound<'_, PyAny>,
    model: String,
    max_concurrent: i64,
    endpoint: Endpoint,
    limits: Option<&Bound<'_, PyDict>>,
) -> PyResult<Batch> {
    let Endpoint {
        base_url,
        api_key,
        backend,
    } = endpoint;
    if !(1..=4096).contains(&max_concurrent) {
        return Err(UsageError::new_err(format!(
            "max_concurrent={max_concurrent}: must be a whole number from 1 to 4096"
        )));
    }
    let prompts: Vec<String> = if prompts.is_instance_of::<pyo3::types::PyString>() {
        return Err(UsageError::new_err(
            "prompts must be a list of str, not one str (wrap it: [prompt])",
        ));
    } else {
        prompts
            .try_iter()
            .and_then(|items| items.map(|p| p?.extract::<String>()).collect())
            .map_err(|_| UsageError::new_err("prompts must be a list of str"))?
    };
    let mut settings = base_settings(model.clone(), None, base_url);
    let mut extras = Extras::default();
    apply(&mut settings, &mut extras, limits)?;
    settings.max_concurrent = u32::try_from(max_concurrent).unwrap_or(1);
    // Every call of a batch is a sub-call: `timeout` bounds each attempt unless
    // `sub_timeout` is given too.
    let keys = |name: &str| limits.is_some_and(|l| l.contains(name).unwrap_or(false));
    if keys("timeout") && !keys("sub_timeout") {
        settings.sub_timeout = settings.timeout;
    }
    let stack = py
        .detach(|| -> Result<Arc<Stack>, Failure> {
            Ok(match backend {
                Some(backend) => Arc::new(Stack::with_backend(
                    &settings,
                    Arc::new(crate::backend::PyBackend::new(backend)),
                )?),
                None => http_stack(&settings, api_key.as_ref())?,
            })
        })
        .map_err(|e| e.into_pyerr(&model))?;
    let model = stack.model().to_owned();
    Ok(Batch {
        requests: prompts
            .into_iter()
            .map(|prompt| CompletionRequest::prompt(model.clone(), prompt))
            .collect(),
        stack,
        max_concurrent: usize::try_from(max_concurrent).unwrap_or(1),
        model,
    })
}

impl Batch {
    fn run(self, cancel: CancellationToken) -> impl std::future::Future<Output = Vec<String>> {
        let options = BatchOptions::new(self.max_concurrent).with_cancel(cancel);
        let sub = self.stack.sub();
        async move {
            let results = sub.complete_batch(self.requests, &options).await;
            drop(self.stack);
            let _ = self.model;
            results.into_iter().map(text).collect()
        }
    }
}

/// One item's answer, or an `Error: ...` string saying why there is none.
fn text(result: BatchResult) -> String {
    match result {
        Ok(completion) => {
            if completion.finish_reason == Some(FinishReason::Length) {
                format!(
                    "Error: the reply was cut at the token limit (finish_reason \"length\"); \
                     its text so far: {}",
                    completion.text
                )
            } else if completion.text.is_empty() && completion.reasoning.is_some() {
                "Error: the reply carried no text (only reasoning)".to_owned()
            } else {
                completion.text
            }
        }
        Err(error) => format!("Error: {error}"),
    }
}

/// Sends every prompt to `model` as its own chat completion and returns the answers in
/// the same order: `max_concurrent` in flight at once, paced by `rpm`/`tpm`, retried on
/// 429/5xx/timeouts (`max_retries`), identical prompts asked once (unless `no_cache`). A
/// failed item is an `"Error: ..."` string in its place; the others are kept.
///
/// `base_url`, `api_key` and `backend` as for `RLM`; `limits` are `rlm run`'s flags with
/// underscores (`rpm`, `tpm`, `max_retries`, `timeout` (each attempt), `cache_dir`,
/// `no_cache`, ...). Calls with the same settings share one client: its pacing holds across
/// them and its cache answers prompts an earlier call asked. The GIL is released while the
/// batch runs; Ctrl-C cancels it.
#[pyfunction]
#[pyo3(signature = (prompts, model, *, max_concurrent=10, base_url=None, api_key=None, backend=None, **limits))]
#[allow(clippy::too_many_arguments)] // the Python signature
pub(crate) fn batch_completion(
    py: Python<'_>,
    prompts: &Bound<'_, PyAny>,
    model: String,
    max_concurrent: i64,
    base_url: Option<String>,
    api_key: Option<String>,
    backend: Option<Py<PyAny>>,
    limits: Option<&Bound<'_, PyDict>>,
) -> PyResult<Vec<String>> {
    let batch = prepare(
        py,
        prompts,
        model,
        max_concurrent,
        Endpoint {
            base_url,
            api_key,
            backend,
        },
        limits,
    )?;
    let cancel = CancellationToken::new();
    wait::block_on(py, batch.run(cancel.clone()), &cancel)
}

/// `await abatch_completion(prompts, model, ...)`: `batch_completion` as an awaitable of
/// the running event loop; cancelling the awaiting task cancels the batch.
#[pyfunction]
#[pyo3(signature = (prompts, model, *, max_concurrent=10, base_url=None, api_key=None, backend=None, **limits))]
#[allow(clippy::too_many_arguments)] // the Python signature
pub(crate) fn abatch_completion<'py>(
    py: Python<'py>,
    prompts: &Bound<'py, PyAny>,
    model: String,
    max_concurrent: i64,
    base_url: Option<String>,
    api_key: Option<String>,
    backend: Option<Py<PyAny>>,
    limits: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyAny>> {
    let batch = prepare(
        py,
        prompts,
        model,
        max_concurrent,
        Endpoint {
            base_url,
            api_key,
            backend,
        },
        limits,
    )?;
    let cancel = CancellationToken::new();
    wait::future(py, batch.run(cancel.clone()), cancel, |py, answers| {
        Ok(PyList::new(py, answers)?.into_any().unbind())
    })
}
