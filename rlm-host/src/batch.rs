//! Running many jobs on one backend stack: [`JobRunner`] runs one [`Job`] into one
//! [`JobResult`], and [`JobRunner::run_all`] runs a stream of them, `max_runs` at once,
//! handing each result to a sink as it finishes (`rlm batch` writes it to `RESULTS.jsonl`;
//! the Python package collects them).
//!
//! A bad job never sinks the batch: a context that cannot be read, a model that fails, a
//! budget that runs out are each a result with `error`, and the others go on. Only the
//! batch's own end stops it: the total cost budget (no further job starts), a sink that
//! cannot write, or cancellation (jobs in flight are stopped and give no result, so a rerun
//! runs them).
//!
//! ```no_run
//! use std::sync::Arc;
//! use rlm_host::batch::{BatchConfig, JobRunner};
//! use rlm_host::jobs::Job;
//! use rlm_host::{CancellationToken, Settings};
//!
//! # async fn demo() -> Result<(), rlm_host::HostError> {
//! let settings = Settings::new("gpt-4o-mini");
//! let runner = Arc::new(JobRunner::build(&settings, BatchConfig::default(), None, None)?);
//! let jobs = vec![Job::new("q1", "What is 2 + 2?")];
//! let mut results = Vec::new();
//! let report = runner
//!     .run_all(jobs.into_iter().map(Ok), |r| { results.push(r.clone()); Ok(()) }, &CancellationToken::new())
//!     .await?;
//! assert_eq!(report.ran, 1);
//! # Ok(())
//! # }
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use rlm_core::CancellationToken;
use rlm_core::cost::Prices;
use rlm_core::usage::ModelUsage;
use rlm_openai::WaitObserver;
use rlm_repl::trace::TraceWriter;
use rlm_repl::{Context, Event, Observer, RlmBuilder, RlmError, RunPlace, RunResult, StopReason};
use serde_json::Value;
use tokio::task::JoinSet;

use crate::context::{self, LoadOptions};
use crate::jobs::Job;
use crate::results::{JobFailure, JobResult, LineCost, LineUsage, Score};
use crate::supervise::{CANCEL_GRACE, Supervised, supervise};
use crate::total::{TOTAL_REFUSAL, TotalCost};
use crate::{HostError, LlmError, Settings, Stack};

/// The default of `--max-runs`.
pub const DEFAULT_MAX_RUNS: usize = 8;

/// How a batch runs, beside the run settings.
#[derive(Debug, Clone)]
pub struct BatchConfig {
    /// Jobs at once.
    pub max_runs: usize,
    /// How answers are scored against `expected` (`Score::None`: not at all).
    pub score: Score,
    /// One trace per job, `ID.jsonl`, in this directory.
    pub trace_dir: Option<PathBuf>,
    /// How a job's `context_path` is read.
    pub load: LoadOptions,
    /// Replaces the built-in system prompt.
    pub system_prompt: Option<String>,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_runs: DEFAULT_MAX_RUNS,
            score: Score::Exact,
            trace_dir: None,
            load: LoadOptions::default(),
            system_prompt: None,
        }
    }
}

/// What [`JobRunner::run_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Results handed to the sink.
    pub ran: u64,
    /// Jobs not started because the total cost budget was spent.
    pub not_started: u64,
    /// Jobs stopped by cancellation, or never started after it (no result for them).
    pub interrupted: u64,
    /// Whether the total cost budget stopped the batch.
    pub total_spent: bool,
}

/// Runs jobs on one backend stack: one HTTP client, one cache, one rate limiter, one price
/// table for all of them; each job with its own run budgets.
pub struct JobRunner {
    stack: Arc<Stack>,
    settings: Settings,
    prices: Prices,
    config: BatchConfig,
    total: Option<Arc<TotalCost>>,
    observer: Option<Arc<dyn Observer>>,
    setup: Option<BuilderSetup>,
}

/// What a front end adds to every job's run builder (its own tools, say).
pub type BuilderSetup = Arc<dyn Fn(RlmBuilder) -> RlmBuilder + Send + Sync>;

impl std::fmt::Debug for JobRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobRunner")
            .field("stack", &self.stack)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl JobRunner {
    /// Builds the stack for `settings` (sized for `config.max_runs` runs at once) with, when
    /// `total_max_cost` is given, a cost budget over every call of every job.
    ///
    /// # Errors
    /// As [`Stack::build`] and [`Settings::load_prices`]; [`HostError::Usage`] when a total
    /// budget is given and a model has no price.
    pub fn build(
        settings: &Settings,
        config: BatchConfig,
        total_max_cost: Option<f64>,
        waits: Option<WaitObserver>,
    ) -> Result<Self, HostError> {
        let prices = settings.load_prices()?;
        if let Some(usd) = total_max_cost {
            check_priced(&prices, &settings.models(), usd)?;
        }
        let total = total_max_cost.map(|usd| Arc::new(TotalCost::new(usd, prices.clone())));
        let stack = Stack::build_with_total(settings, waits, config.max_runs, total.clone())?;
        Ok(Self {
            stack: Arc::new(stack),
            settings: settings.clone(),
            prices,
            config,
            total,
            observer: None,
            setup: None,
        })
    }

    /// A runner on an existing `stack` (a front end's own: its API key, backend and cache),
    /// charging by `prices`, with no total cost budget. Each job still has `settings`' run
    /// budgets.
    pub fn with_stack(
        stack: Arc<Stack>,
        settings: &Settings,
        prices: Prices,
        config: BatchConfig,
    ) -> Self {
        Self {
            stack,
            settings: settings.clone(),
            prices,
            config,
            total: None,
            observer: None,
            setup: None,
        }
    }

    /// Every job's run builder goes through `setup` before the job's own settings (tools a
    /// front end registers, say).
    #[must_use]
    pub fn with_setup(mut self, setup: BuilderSetup) -> Self {
        self.setup = Some(setup);
        self
    }

    /// Every job's events also go to `observer` (a progress display).
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Jobs run at once.
    pub fn max_runs(&self) -> usize {
        self.config.max_runs.max(1)
    }

    /// The shared stack (its usage, cache statistics and warnings).
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// The total cost budget, if any.
    pub fn total(&self) -> Option<&TotalCost> {
        self.total.as_deref()
    }

    /// The prices jobs are charged by.
    pub fn prices(&self) -> &Prices {
        &self.prices
    }

    /// Refuses a job whose models cannot be priced while a budget in USD must hold (for a
    /// check of the whole job file before anything runs).
    ///
    /// # Errors
    /// Why, in words.
    pub fn check_job(&self, job: &Job, total_max_cost: Option<f64>) -> Result<(), String> {
        let Some(usd) = total_max_cost.or(self.settings.max_cost) else {
            return Ok(());
        };
        let models: Vec<&str> = [job.model.as_deref(), job.sub_model.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        check_priced(&self.prices, &models, usd).map_err(|e| e.to_string())
    }

    /// Runs one job. `None` when `cancel` stopped it (it has no result: a rerun runs it).
    pub async fn run_job(&self, job: Job, cancel: &CancellationToken) -> Option<JobResult> {
        self.run_job_scored(job, self.config.score, cancel).await
    }

    /// [`run_job`](Self::run_job), scored by `score` rather than the runner's own (a queued
    /// job carries the collector's).
    pub async fn run_job_scored(
        &self,
        job: Job,
        score: Score,
        cancel: &CancellationToken,
    ) -> Option<JobResult> {
        let start = Instant::now();
        let ms = |start: Instant| u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let id = job.id.clone();
        let fail = |failure: JobFailure| {
            let mut result = JobResult::failed(&id, failure, ms(start));
            result.correct = score.judge(None, job.expected.as_ref());
            Some(result)
        };
        if self.total.as_ref().is_some_and(|t| t.stopped()) {
            return fail(JobFailure::new(
                "budget",
                total_message(self.total.as_deref()),
            ));
        }
        // A read that never ends (a stalled network file system) must not hold up Ctrl-C:
        // the blocked thread is left behind, the job gets no line and runs again next time.
        let loaded = tokio::select! {
            biased;
            () = cancel.cancelled() => return None,
            loaded = self.load_context(&job) => loaded,
        };
        let context = match loaded {
            Ok(context) => context,
            Err(e) => return fail(JobFailure::new(e.kind(), one_line(&e.to_string()))),
        };
        let run_cancel = cancel.child_token();
        let mut builder = match self.stack.rlm_builder(&self.settings) {
            Ok(builder) => builder,
            Err(e) => return fail(JobFailure::new(e.kind(), e.to_string())),
        };
        if let Some(setup) = &self.setup {
            builder = setup(builder);
        }
        builder = builder
            .prices(self.prices.clone())
            .cancel_token(run_cancel.clone());
        if let Some(model) = &job.model {
            builder = builder.root_model(model);
        }
        if let Some(sub) = &job.sub_model {
            builder = builder.sub_model(sub);
        }
        if let Some(prompt) = &self.config.system_prompt {
            builder = builder.system_prompt(prompt);
        }
        // A job's own schema replaces the batch's (`--output-schema`); one that is not a
        // valid schema fails this job at build, naming the problem.
        if let Some(schema) = &job.output_schema {
            builder = builder.output_schema(schema.clone());
        }
        let trace = match &self.config.trace_dir {
            Some(dir) => {
                let path = dir.join(trace_file_name(&job.id));
                match TraceWriter::create(&path, start) {
                    Ok(writer) => {
                        let writer = Arc::new(writer.with_settings(self.settings.trace_settings()));
                        builder = builder.observer(writer.clone());
                        Some(writer)
                    }
                    Err(e) => {
                        return fail(JobFailure::new(
                            "input",
                            format!("cannot write the trace file {}: {e}", path.display()),
                        ));
                    }
                }
            }
            None => None,
        };
        if let Some(observer) = &self.observer {
            builder = builder.observer(observer.clone());
        }
        let tally = Arc::new(Tally::default());
        builder = builder.observer(tally.clone());
        let rlm = match builder.build() {
            Ok(rlm) => rlm,
            Err(e) => return fail(failure_of(&e)),
        };
        let outcome = supervise(
            rlm.run(job.query.clone(), context),
            &run_cancel,
            self.settings.max_time,
        )
        .await;
        let mut result = match outcome {
            _ if cancel.is_cancelled() => return None,
            Supervised::Returned(Ok(result)) => self.line(&id, &result, ms(start)),
            Supervised::Returned(Err(e)) => {
                let mut result = fail(failure_of(&e))?;
                tally.fill(&mut result, &self.prices);
                return Some(result);
            }
            Supervised::Abandoned => return None,
            Supervised::TimedOut => {
                let mut result = fail(JobFailure::new(
                    "budget",
                    format!(
                        "the job's time ran out (--max-time) and its code did not stop within \
                         {} s; no answer",
                        CANCEL_GRACE.as_secs_f64()
                    ),
                ))?;
                tally.fill(&mut result, &self.prices);
                return Some(result);
            }
        };
        result.correct = score.judge(Some(&result.answer), job.expected.as_ref());
        if let Some(trace) = trace {
            result.trace = Some(trace.path().display().to_string());
            if let Some(error) = trace.error() {
                result.warnings.push(format!(
                    "the trace file {} is incomplete: {error}",
                    trace.path().display()
                ));
            }
        }
        Some(result)
    }

    fn line(&self, id: &str, result: &RunResult, elapsed_ms: u64) -> JobResult {
        JobResult {
            id: id.to_owned(),
            // With an output schema, the answer is the JSON value itself (null when nothing
            // conformed), as `rlm run --json` gives it.
            answer: match &result.json {
                Some(value) => value.clone(),
                None if result.stopped == StopReason::InvalidOutput => Value::Null,
                None => Value::String(result.answer.clone()),
            },
            stopped: Some(result.stopped.as_str().to_owned()),
            iterations: result.iterations as u64,
            elapsed_ms,
            usage: result
                .usage
                .iter()
                .map(|(model, u)| {
                    (
                        model.clone(),
                        LineUsage {
                            calls: u.calls,
                            prompt_tokens: u.prompt_tokens,
                            completion_tokens: u.completion_tokens,
                        },
                    )
                })
                .collect(),
            cost_usd: LineCost {
                total: result.cost.total,
                by_model: result.cost.by_model.clone().into_iter().collect(),
                unpriced: result.cost.unpriced.clone(),
            },
            sub_calls: result.sub_calls,
            failed_sub_calls: result.failed_sub_calls,
            warnings: result.warnings.clone(),
            error: None,
            correct: None,
            trace: None,
        }
    }

    /// The job's context: inline, from `context_path`, or an empty string.
    async fn load_context(&self, job: &Job) -> Result<Context, HostError> {
        if let Some(path) = &job.context_path {
            // Reading a file is blocking work: off the runtime's threads.
            let (path, options) = (path.clone(), self.config.load);
            return tokio::task::spawn_blocking(move || {
                // A job names files and directories, as `rlm serve` clients do: a FIFO
                // waits for a writer that may never come, a device may never end.
                let kind = std::fs::metadata(&path).map(|m| m.file_type());
                if kind.is_ok_and(|kind| !kind.is_file() && !kind.is_dir()) {
                    return Err(HostError::Input(format!(
                        "context_path {} is not a regular file or a directory (a FIFO, \
                         socket or device); it is refused",
                        path.display()
                    )));
                }
                context::load(Some(&path), &options, std::io::empty()).map(|l| l.context)
            })
            .await
            .map_err(|e| HostError::Internal(format!("reading a context failed: {e}")))?;
        }
        Ok(match &job.context {
            None => Context::Text(String::new()),
            Some(Value::String(text)) => Context::Text(text.clone()),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => Context::Documents(
                items
                    .iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect(),
            ),
            Some(other) => Context::Json(other.clone()),
        })
    }

    /// Runs `jobs`, `max_runs` at once, and hands each result to `sink` as it finishes (one
    /// at a time, in finishing order). Jobs are pulled from the iterator only as runs free
    /// up, so memory holds `max_runs` jobs whatever the iterator's length.
    ///
    /// Stops starting jobs when the total cost budget is spent (the rest are counted in
    /// [`BatchReport::not_started`]) or `cancel` is cancelled (jobs in flight stop and give no
    /// result).
    ///
    /// # Errors
    /// The first error of the iterator (a bad job line) or of `sink` (a result that cannot be
    /// stored): jobs in flight are cancelled first.
    pub async fn run_all<I, S>(
        self: &Arc<Self>,
        jobs: I,
        mut sink: S,
        cancel: &CancellationToken,
    ) -> Result<BatchReport, HostError>
    where
        I: IntoIterator<Item = Result<Job, HostError>>,
        S: FnMut(&JobResult) -> Result<(), HostError>,
    {
        let mut jobs = jobs.into_iter();
        let mut running: JoinSet<Option<JobResult>> = JoinSet::new();
        let mut report = BatchReport::default();
        let max_runs = self.config.max_runs.max(1);
        let mut exhausted = false;
        let stop = |running: &mut JoinSet<_>, error: HostError| {
            cancel.cancel();
            running.abort_all();
            Err(error)
        };
        loop {
            while !exhausted && running.len() < max_runs {
                if cancel.is_cancelled() || self.total.as_ref().is_some_and(|t| t.stopped()) {
                    break;
                }
                match jobs.next() {
                    None => exhausted = true,
                    Some(Err(e)) => return stop(&mut running, e),
                    Some(Ok(job)) => {
                        let runner = Arc::clone(self);
                        let cancel = cancel.clone();
                        running.spawn(async move { runner.run_job(job, &cancel).await });
                    }
                }
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let result = match joined {
                Ok(Some(result)) => result,
                Ok(None) => {
                    report.interrupted += 1;
                    continue;
                }
                Err(e) if e.is_panic() => {
                    // A bug in one job: said in its place, the batch goes on. The id is
                    // lost with the task; such a job runs again next time.
                    tracing::error!(target: "rlm_host", "a job panicked (a bug in rlm): {e}");
                    continue;
                }
                Err(_) => continue,
            };
            if let Err(e) = sink(&result) {
                return stop(&mut running, e);
            }
            report.ran += 1;
        }
        if !exhausted {
            // Count what was left without running it.
            let left = jobs.filter(Result::is_ok).count() as u64;
            if cancel.is_cancelled() {
                report.interrupted += left;
            } else {
                report.not_started += left;
            }
        }
        report.total_spent = self.total.as_ref().is_some_and(|t| t.stopped());
        Ok(report)
    }
}

/// What a job's runs spent, from their events: the figures of a job that fails (the run
/// returns an error, not a result, so its usage would otherwise be lost from its line).
#[derive(Default)]
struct Tally(std::sync::Mutex<TallyState>);

#[derive(Default)]
struct TallyState {
    /// Each run's root model, by run id.
    roots: std::collections::HashMap<String, String>,
    usage: std::collections::BTreeMap<String, ModelUsage>,
    turns: u64,
    sub_calls: u64,
    failed_sub_calls: u64,
}

impl TallyState {
    fn add(&mut self, model: &str, usage: &rlm_core::Usage) {
        let total = self.usage.entry(model.to_owned()).or_default();
        total.calls += 1;
        total.prompt_tokens += usage.prompt_tokens;
        total.completion_tokens += usage.completion_tokens;
        total.cached_tokens += usage.cached_tokens;
    }
}

impl Observer for Tally {
    fn on_event(&self, event: &Event) {
        self.on_run_event(&RunPlace::default(), event);
    }

    fn on_run_event(&self, place: &RunPlace, event: &Event) {
        let mut state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match event {
            Event::RunStart { root_model, .. } => {
                state.roots.insert(place.run.clone(), root_model.clone());
            }
            Event::RootReply { usage, .. } => {
                let model = state.roots.get(&place.run).cloned().unwrap_or_default();
                state.add(&model, usage);
                if place.depth == 0 {
                    state.turns += 1;
                } else {
                    state.sub_calls += 1;
                }
            }
            Event::SubCallEnd {
                model,
                usage,
                error,
                cancelled,
                ..
            } => {
                state.sub_calls += 1;
                if error.is_none() {
                    state.add(model, usage);
                } else if !cancelled {
                    state.failed_sub_calls += 1;
                }
            }
            _ => {}
        }
    }
}

impl Tally {
    /// Fills a failed job's line with what its runs spent, priced by `prices`.
    fn fill(&self, result: &mut JobResult, prices: &Prices) {
        let state = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let cost = prices.report(state.usage.iter().map(|(m, u)| (m.as_str(), u)));
        result.iterations = state.turns;
        result.sub_calls = state.sub_calls;
        result.failed_sub_calls = state.failed_sub_calls;
        result.usage = state
            .usage
            .iter()
            .map(|(model, u)| {
                (
                    model.clone(),
                    LineUsage {
                        calls: u.calls,
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                    },
                )
            })
            .collect();
        result.cost_usd = LineCost {
            total: cost.total,
            by_model: cost.by_model.into_iter().collect(),
            unpriced: cost.unpriced,
        };
    }
}

/// The trace file of job `id`: the id itself when it is a safe file name, otherwise its
/// safe characters and a hash of the id (so two ids never share a file).
pub fn trace_file_name(id: &str) -> String {
    let safe: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    if safe == id && !id.starts_with('.') {
        return format!("{id}.jsonl");
    }
    // FNV-1a: stable across processes and builds.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{}-{hash:016x}.jsonl", safe.trim_start_matches('.'))
}

fn total_message(total: Option<&TotalCost>) -> String {
    match total {
        Some(total) => format!(
            "{TOTAL_REFUSAL} (--total-max-cost ${}) is spent (${:.6} settled); the job did \
             not start",
            total.max_usd(),
            total.spent_usd()
        ),
        None => TOTAL_REFUSAL.to_owned(),
    }
}

/// A model without a price would count as free: a budget in USD could not hold.
fn check_priced(prices: &Prices, models: &[&str], usd: f64) -> Result<(), HostError> {
    let unpriced: Vec<&str> = models
        .iter()
        .copied()
        .filter(|m| prices.get(m).is_none())
        .collect();
    if unpriced.is_empty() {
        return Ok(());
    }
    Err(HostError::Usage(format!(
        "a budget of ${usd} cannot be kept: no price for {} (its calls would count as free); \
         give prices with --prices FILE",
        unpriced
            .iter()
            .map(|m| format!("model {m:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// A run's error as a result's `error`.
fn failure_of(error: &RlmError) -> JobFailure {
    let message = one_line(&error.to_string());
    let llm = match error {
        RlmError::Config(_) | RlmError::Schema(_) => return JobFailure::new("usage", message),
        RlmError::Internal(_) => return JobFailure::new("internal", message),
        RlmError::Root { source, .. } | RlmError::SubModel { source, .. } => source,
        _ => return JobFailure::new("internal", message),
    };
    let kind = match llm {
        _ if llm.to_string().contains(TOTAL_REFUSAL) => "budget",
        LlmError::Auth { .. } | LlmError::QuotaExhausted { .. } => "auth",
        LlmError::Cancelled => "interrupted",
        _ => "server",
    };
    JobFailure::new(kind, message)
}

/// `text` on one line, at most 1,000 characters.
fn one_line(text: &str) -> String {
    let line = text
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if line.chars().count() <= 1000 {
        return line;
    }
    let kept: String = line.chars().take(1000).collect();
    format!("{kept} [...]")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runner on a caller's stack runs its jobs there, with what `with_setup` registers.
    #[tokio::test]
    async fn a_runner_on_a_callers_stack_uses_its_backend_and_setup() {
        let mock = rlm_core::mock::MockBackend::from_fn(|_| {
            Ok("```repl\nFINAL(shout(\"hi\"));\n```".to_owned())
        });
        let settings = Settings::new("root");
        let stack = Stack::with_backend(&settings, Arc::new(mock.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let setup: BuilderSetup = Arc::new(|builder: RlmBuilder| {
            builder.tool("shout", "Upper case.", |value: Value| async move {
                Ok::<_, String>(Value::String(
                    value.as_str().unwrap_or_default().to_uppercase(),
                ))
            })
        });
        let runner = JobRunner::with_stack(
            Arc::new(stack),
            &settings,
            Prices::default(),
            BatchConfig::default(),
        )
        .with_setup(setup);
        let cancel = CancellationToken::new();
        let result = runner
            .run_job(Job::new("a", "q"), &cancel)
            .await
            .unwrap_or_else(|| panic!("a result"));
        assert_eq!(result.error, None);
        assert_eq!(result.answer, Value::String("HI".into()));
        assert_eq!(mock.calls(), 1);
        // The caller's stack metered the call.
        assert_eq!(runner.stack().usage()["root"].calls, 1);
    }

    /// A job naming a FIFO (no writer: opening it would wait for ever) or a device fails
    /// with its own line at once, and the batch goes on.
    #[cfg(unix)]
    #[tokio::test]
    async fn special_files_are_refused_not_waited_on() {
        let dir = std::env::temp_dir().join(format!("rlm-host-batch-fifo-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let fifo = dir.join("pipe");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mock = rlm_core::mock::MockBackend::from_fn(|_| {
            Ok("```repl\nFINAL(\"read\");\n```".to_owned())
        });
        let settings = Settings::new("root");
        let stack = Stack::with_backend(&settings, Arc::new(mock.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        let runner = Arc::new(JobRunner::with_stack(
            Arc::new(stack),
            &settings,
            Prices::default(),
            BatchConfig::default(),
        ));
        let job = |id: &str, path: &std::path::Path| {
            let mut job = Job::new(id, "q");
            job.context_path = Some(path.to_owned());
            job
        };
        let file = dir.join("notes.txt");
        std::fs::write(&file, "notes").unwrap_or_else(|e| panic!("{e}"));
        let jobs = vec![
            Ok(job("fifo", &fifo)),
            Ok(job("device", std::path::Path::new("/dev/zero"))),
            Ok(job("file", &file)),
        ];
        let mut results = Vec::new();
        let report = runner
            .run_all(
                jobs,
                |r: &JobResult| {
                    results.push(r.clone());
                    Ok(())
                },
                &CancellationToken::new(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.ran, 3);
        results.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["device", "fifo", "file"]);
        for refused in &results[..2] {
            let error = refused
                .error
                .as_ref()
                .unwrap_or_else(|| panic!("{refused:?}"));
            assert_eq!(error.kind, "input");
            assert!(
                error.message.contains("not a regular file"),
                "{}",
                error.message
            );
        }
        assert_eq!(results[2].error, None);
        assert_eq!(results[2].answer, Value::String("read".into()));
        assert_eq!(mock.calls(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn trace_names_are_safe_and_distinct() {
        assert_eq!(trace_file_name("q-1_a.b"), "q-1_a.b.jsonl");
        let slash = trace_file_name("a/b");
        let under = trace_file_name("a_b");
        assert_ne!(slash, under);
        assert!(slash.starts_with("a_b-") && !slash.contains('/'), "{slash}");
        let dots = trace_file_name("../..");
        assert!(!dots.starts_with('.') && !dots.contains('/'), "{dots}");
        assert!(trace_file_name(&"é".repeat(300)).len() < 140);
    }
}
