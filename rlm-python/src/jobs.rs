//! `RLM.batch(jobs)` / `RLM.abatch(jobs)`: many queries (dicts as in `JOBS.jsonl`) on the
//! RLM's own stack, through the host layer's job runner ([`rlm_host::batch::JobRunner`]),
//! `max_runs` at once, results in the order of the jobs.

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use rlm_host::CancellationToken;
use rlm_host::batch::{BatchConfig, BuilderSetup, JobRunner};
use rlm_host::jobs::Job;
use rlm_host::results::{JobFailure, JobResult};
use tokio::task::JoinSet;

use crate::errors::UsageError;
use crate::result::PyResult_;
use crate::rlm::Engine;

/// Jobs checked and ready to run, with what the results need.
pub(crate) struct Batch {
    runner: Arc<JobRunner>,
    jobs: Vec<Job>,
    max_runs: usize,
}

/// What a batch's task returns: one slot per job (`None`: it gave no result).
pub(crate) type Slots = Vec<(String, bool, Option<JobResult>)>;

impl Batch {
    /// Reads `jobs` (a sequence of dicts) into jobs for `engine`'s runner.
    ///
    /// # Errors
    /// `UsageError` naming the job's index for anything but a dict with the keys of a
    /// `JOBS.jsonl` line, or for `max_runs` below 1.
    pub(crate) fn new(
        py: Python<'_>,
        engine: &Arc<Engine>,
        jobs: &Bound<'_, PyAny>,
        max_runs: usize,
    ) -> PyResult<Self> {
        if max_runs == 0 {
            return Err(UsageError::new_err("max_runs must be at least 1"));
        }
        if jobs.is_instance_of::<PyString>() || jobs.is_instance_of::<PyDict>() {
            return Err(UsageError::new_err(
                "jobs must be a list of dicts ({\"id\", \"query\", ...} as in JOBS.jsonl)",
            ));
        }
        let items = jobs.try_iter().map_err(|_| {
            UsageError::new_err(
                "jobs must be a list of dicts ({\"id\", \"query\", ...} as in JOBS.jsonl)",
            )
        })?;
        let runner = runner(engine);
        let mut parsed = Vec::new();
        for (index, item) in items.enumerate() {
            let item = item?;
            let job = job_of(py, &item)
                .and_then(|job| runner.check_job(&job, None).map(|()| job))
                .map_err(|e| UsageError::new_err(format!("job {index}: {e}")))?;
            parsed.push(job);
        }
        Ok(Self {
            runner: Arc::new(runner),
            jobs: parsed,
            max_runs,
        })
    }

    /// Runs every job, `max_runs` at once; each slot in the order of the jobs.
    pub(crate) async fn run(self, cancel: CancellationToken) -> Slots {
        let mut slots: Slots = self
            .jobs
            .iter()
            .map(|job| (job.id.clone(), job.output_schema.is_some(), None))
            .collect();
        let mut running = JoinSet::new();
        let mut index_of = HashMap::new();
        let mut jobs = self.jobs.into_iter().enumerate();
        loop {
            while running.len() < self.max_runs && !cancel.is_cancelled() {
                let Some((index, job)) = jobs.next() else {
                    break;
                };
                let runner = Arc::clone(&self.runner);
                let cancel = cancel.clone();
                let handle =
                    running.spawn(async move { (index, runner.run_job(job, &cancel).await) });
                index_of.insert(handle.id(), index);
            }
            let Some(joined) = running.join_next_with_id().await else {
                break;
            };
            match joined {
                Ok((_, (index, result))) => slots[index].2 = result,
                Err(e) => {
                    // A bug in one job: said in its slot, the others kept.
                    if let Some(&index) = index_of.get(&e.id()) {
                        let id = slots[index].0.clone();
                        slots[index].2 = Some(JobResult::failed(
                            &id,
                            JobFailure::new(
                                "internal",
                                format!("internal error (a bug in rlm): the job failed: {e}"),
                            ),
                            0,
                        ));
                    }
                }
            }
        }
        slots
    }
}

/// The results as Python `Result`s; `KeyboardInterrupt` when the batch was cancelled.
pub(crate) fn finish(py: Python<'_>, engine: &Engine, slots: Slots) -> PyResult<Vec<PyResult_>> {
    let stack_warnings = engine.stack.warnings();
    slots
        .into_iter()
        .map(|(id, typed, result)| {
            let result = result.ok_or_else(|| {
                pyo3::exceptions::PyKeyboardInterrupt::new_err(format!(
                    "the batch was cancelled (job {id:?} has no result)"
                ))
            })?;
            PyResult_::from_job(py, result, typed, stack_warnings.clone())
        })
        .collect()
}

/// A runner on the engine's stack, settings, prices and tools.
fn runner(engine: &Arc<Engine>) -> JobRunner {
    let mut config = BatchConfig {
        system_prompt: engine.extras.system_prompt.clone(),
        ..BatchConfig::default()
    };
    if let Some(max) = engine.extras.max_context_bytes {
        config.load.max_bytes = max;
    }
    let tools = Arc::clone(engine);
    let setup: BuilderSetup = Arc::new(move |builder| {
        tools
            .tools
            .iter()
            .fold(builder, |builder, tool| tool.register(builder))
    });
    JobRunner::with_stack(
        Arc::clone(&engine.stack),
        &engine.settings,
        engine.prices.clone(),
        config,
    )
    .with_setup(setup)
}

/// One job dict as a job (`context_path` may be a `pathlib.Path`).
fn job_of(py: Python<'_>, item: &Bound<'_, PyAny>) -> Result<Job, String> {
    let dict = item.cast::<PyDict>().map_err(|_| {
        format!(
            "a job must be a dict ({{\"id\", \"query\", ...}} as in JOBS.jsonl), not {}",
            crate::convert::type_name(item)
        )
    })?;
    let dict = dict.copy().map_err(|e| e.to_string())?;
    if let Ok(Some(path)) = dict.get_item("context_path") {
        let pathlike = py
            .import("os")
            .and_then(|os| os.getattr("PathLike"))
            .map_err(|e| e.to_string())?;
        if path.is_instance(&pathlike).unwrap_or(false) {
            let text = py
                .import("os")
                .and_then(|os| os.call_method1("fspath", (path,)))
                .map_err(|e| e.to_string())?;
            dict.set_item("context_path", text)
                .map_err(|e| e.to_string())?;
        }
    }
    let value = crate::convert::to_json(dict.as_any()).map_err(|e| e.value(py).to_string())?;
    Job::from_value(value)
}
