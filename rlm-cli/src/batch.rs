//! `rlm batch` and `rlm worker`: flags to the host layer's job runner
//! ([`rlm_host::batch`]), result file ([`rlm_host::results`]) and queue, with a progress bar
//! and the summary.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use rlm_host::CancellationToken;
use rlm_host::batch::{BatchConfig, BatchReport, JobRunner};
use rlm_host::jobs;
use rlm_host::results::{JobResult, ResultsFile, Score, Summary};

use crate::cli::{BatchArgs, ProgressMode, RunArgs, ScoreMode, WorkerArgs};
use crate::error::{CliError, exit};
use crate::human::{count, dollars, human_duration, thousands};
use crate::settings;

impl From<ScoreMode> for Score {
    fn from(mode: ScoreMode) -> Self {
        match mode {
            ScoreMode::Exact => Score::Exact,
            ScoreMode::Contains => Score::Contains,
            ScoreMode::Json => Score::Json,
            ScoreMode::None => Score::None,
        }
    }
}

/// Refuses the flags of `rlm run` that a batch has no use for.
fn refuse_run_only(args: &RunArgs, command: &str) -> Result<(), CliError> {
    let mut given = Vec::new();
    if args.query.is_some() || args.query_file.is_some() {
        given.push("--query/--query-file (each job has its query)");
    }
    if args.context.is_some() {
        given.push("--context (each job has its context or context_path)");
    }
    if args.trace.is_some() {
        given.push("--trace (use --trace-dir: one trace per job)");
    }
    if args.session.is_some() {
        given.push("--session (each job is a run of its own)");
    }
    match given.as_slice() {
        [] => Ok(()),
        _ => Err(CliError::Usage(format!(
            "rlm {command} does not take {}",
            given.join(", ")
        ))),
    }
}

/// The job runner of `rlm batch` and `rlm worker`.
fn job_runner(
    run: &RunArgs,
    max_runs: u32,
    score: Score,
    trace_dir: Option<&Path>,
    total_max_cost: Option<f64>,
) -> Result<JobRunner, CliError> {
    let mut warnings = Vec::new();
    let system_prompt = settings::system_prompt(run, &mut warnings)?;
    if !run.quiet {
        for warning in &warnings {
            eprintln!("warning: {warning}");
        }
    }
    if let Some(dir) = trace_dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::Input(format!("cannot create --trace-dir {}: {e}", dir.display()))
        })?;
    }
    let config = BatchConfig {
        max_runs: max_runs as usize,
        score,
        trace_dir: trace_dir.map(Path::to_path_buf),
        load: settings::load_options(run),
        system_prompt,
    };
    let mut settings = settings::settings(run);
    // `--output-schema`: every job's schema, unless the job gives its own.
    settings.output_schema = settings::output_schema(run)?;
    Ok(JobRunner::build(&settings, config, total_max_cost, None)?)
}

/// Runs `rlm batch` and returns the exit status.
pub(crate) async fn batch(args: Box<BatchArgs>) -> Result<u8, CliError> {
    let start = Instant::now();
    let run = &args.run;
    refuse_run_only(run, "batch")?;
    let runner = Arc::new(job_runner(
        run,
        args.max_runs,
        args.score.into(),
        args.trace_dir.as_deref(),
        args.total_max_cost,
    )?);
    // The whole file is checked before anything starts; only its ids are held.
    let scan = jobs::scan(&args.jobs, run.max_context_bytes, |job| {
        runner.check_job(job, args.total_max_cost)
    })?;
    let (mut results, finished) = ResultsFile::open(&args.output, args.retry_failed)?;
    if !run.quiet {
        if finished.repaired_bytes > 0 {
            eprintln!(
                "warning: {}: its last line was cut short (the process writing it was \
                 killed); removed {} bytes, that job runs again",
                args.output.display(),
                finished.repaired_bytes
            );
        }
        for warning in runner.stack().warnings() {
            eprintln!("warning: {warning}");
        }
    }
    // The queue first: an unreachable Redis is said before anything else.
    let queue = match &args.queue.queue {
        Some(url) => Some(
            rlm_host::queue::Queue::connect(url, &run.redis_prefix, &args.queue.queue_name).await?,
        ),
        None => None,
    };
    let skipped = finished.lines;
    let todo = scan.jobs.saturating_sub(skipped);
    let progress = BatchProgress::new(
        run.progress,
        run.quiet,
        todo,
        runner.stack().model(),
        &args.output,
    );
    let cancel = CancellationToken::new();
    cancel_on_ctrl_c(&cancel, progress.clone(), run.quiet);

    let report = if let Some(queue) = &queue {
        collect_from_queue(
            &args,
            queue,
            &scan,
            finished,
            &mut results,
            &progress,
            &cancel,
        )
        .await?
    } else {
        let done = finished.ids;
        let lines = jobs::JobLines::open(&args.jobs, run.max_context_bytes)?
            .filter(|job| job.as_ref().map_or(true, |job| !done.contains(&job.id)));
        let progress = progress.clone();
        runner
            .run_all(
                lines,
                |result| {
                    results.append(result)?;
                    if let Some(progress) = &progress {
                        progress.finished(result);
                    }
                    Ok(())
                },
                &cancel,
            )
            .await?
    };
    if let Some(progress) = &progress {
        progress.finish();
    }
    drop(results);
    let summary = rlm_host::results::summarize(&args.output)?;
    let elapsed = start.elapsed();
    if run.json {
        let object = summary_json(&summary, &report, scan.jobs, skipped, elapsed, &args.output);
        crate::output::write_stdout(&format!("{object}\n"))?;
    }
    if !run.quiet {
        eprint!(
            "{}",
            summary_text(&summary, &report, scan.jobs, skipped, elapsed, &args.output)
        );
    }
    Ok(if report.interrupted > 0 || cancel.is_cancelled() {
        exit::INTERRUPTED
    } else if report.not_started > 0 || report.total_spent && summary.results < scan.jobs {
        exit::BUDGET
    } else {
        exit::OK
    })
}

/// `rlm batch --queue`: enqueue, then collect what the workers store.
async fn collect_from_queue(
    args: &BatchArgs,
    queue: &rlm_host::queue::Queue,
    scan: &jobs::Scan,
    finished: rlm_host::results::Finished,
    results: &mut ResultsFile,
    progress: &Option<Arc<BatchProgress>>,
    cancel: &CancellationToken,
) -> Result<BatchReport, CliError> {
    let options = rlm_host::queue::CollectOptions {
        jobs: args.jobs.clone(),
        max_line_bytes: args.run.max_context_bytes,
        expected: scan.jobs,
        score: args.score.into(),
    };
    let report = queue
        .collect(
            &options,
            finished.ids,
            |result| {
                results.append(result)?;
                if let Some(progress) = progress {
                    progress.finished(result);
                }
                Ok(())
            },
            cancel,
        )
        .await?;
    Ok(report)
}

/// Runs `rlm worker` until Ctrl-C or SIGTERM.
pub(crate) async fn worker(args: Box<WorkerArgs>) -> Result<u8, CliError> {
    let run = &args.run;
    refuse_run_only(run, "worker")?;
    let Some(url) = &args.queue.queue else {
        return Err(CliError::Usage(
            "rlm worker needs --queue redis://HOST (the Redis server rlm batch --queue fills)"
                .to_owned(),
        ));
    };
    let runner = Arc::new(job_runner(
        run,
        args.max_runs,
        Score::Exact,
        args.trace_dir.as_deref(),
        None,
    )?);
    let queue =
        rlm_host::queue::Queue::connect(url, &run.redis_prefix, &args.queue.queue_name).await?;
    let cancel = CancellationToken::new();
    cancel_on_ctrl_c(&cancel, None, run.quiet);
    let options = rlm_host::queue::WorkOptions {
        claim_idle: args.queue.claim_idle,
        max_attempts: args.queue.max_attempts,
    };
    if !run.quiet {
        eprintln!(
            "rlm worker: taking jobs from queue {:?} ({} at once); Ctrl-C stops",
            args.queue.queue_name, args.max_runs
        );
    }
    let done = queue
        .work(&runner, &options, &cancel, |result: &JobResult| {
            if !run.quiet {
                eprintln!("{}", job_line(result));
            }
        })
        .await?;
    if !run.quiet {
        eprintln!("rlm worker: stopped after {}", count(done, "job"));
    }
    Ok(exit::OK)
}

/// Ctrl-C or SIGTERM cancels the batch (jobs in flight stop and get no line); a second
/// Ctrl-C or SIGTERM exits at once.
fn cancel_on_ctrl_c(cancel: &CancellationToken, progress: Option<Arc<BatchProgress>>, quiet: bool) {
    let cancel = cancel.clone();
    tokio::spawn(async move {
        let mut signals = Interrupts::new();
        signals.next().await;
        cancel.cancel();
        let notice = "rlm: interrupted; stopping the jobs in flight (they get no line and run \
                      again next time; Ctrl-C again to quit at once)";
        match &progress {
            Some(progress) => progress.println(notice),
            None if !quiet => eprintln!("\n{notice}"),
            None => {}
        }
        signals.next().await;
        std::process::exit(exit::INTERRUPTED.into());
    });
}

/// Ctrl-C and SIGTERM, one after another. Each is listened for once for the process: once a
/// listener is registered the signal's default action (ending the process) is gone for good,
/// so a listener dropped after the first signal would leave every later one unheard.
struct Interrupts {
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
}

impl Interrupts {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Self {
                int: signal(SignalKind::interrupt()).ok(),
                term: signal(SignalKind::terminate()).ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    /// The next Ctrl-C or SIGTERM.
    async fn next(&mut self) {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = recv(&mut self.int) => {}
                () = recv(&mut self.term) => {}
            }
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// One line about a finished job.
fn job_line(result: &JobResult) -> String {
    let what = match (&result.error, result.stopped.as_deref()) {
        (Some(error), _) => format!("failed ({}): {}", error.kind, error.message),
        (None, Some("final")) => "answered".to_owned(),
        (None, stopped) => format!(
            "stopped ({}) without a final answer",
            stopped.unwrap_or("?")
        ),
    };
    let correct = match result.correct {
        Some(true) => ", correct",
        Some(false) => ", wrong",
        None => "",
    };
    format!(
        "job {}: {what}{correct} in {} ({}, {})",
        result.id,
        human_duration(Duration::from_millis(result.elapsed_ms)),
        count(result.iterations, "turn"),
        dollars(result.cost_usd.total)
    )
}

/// One bar for the batch (jobs done, failures, cost, ETA) on a terminal, or one line per
/// finished job.
pub(crate) struct BatchProgress {
    bar: Option<ProgressBar>,
    failed: AtomicU64,
    /// Nanodollars spent by finished jobs.
    nanos: AtomicU64,
}

impl BatchProgress {
    fn new(
        mode: ProgressMode,
        quiet: bool,
        total: u64,
        model: &str,
        output: &Path,
    ) -> Option<Arc<Self>> {
        let bars = match mode {
            _ if quiet => return None,
            ProgressMode::None => return None,
            ProgressMode::Auto if !std::io::stderr().is_terminal() => return None,
            ProgressMode::Auto => true,
            ProgressMode::Bar => true,
            ProgressMode::Lines => false,
        };
        let bar = bars.then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} [{bar:30.cyan/blue}] {pos}/{len} jobs {msg} ({elapsed}, eta {jobs_eta})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key("jobs_eta", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = w.write_str(&eta(state.elapsed(), state.pos(), state.len()));
                })
                .progress_chars("=> "),
            );
            bar.set_prefix(format!("rlm batch ({model})"));
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let progress = Arc::new(Self {
            bar,
            failed: AtomicU64::new(0),
            nanos: AtomicU64::new(0),
        });
        progress.println(format!(
            "rlm batch: {} to run, results to {}",
            count(total, "job"),
            output.display()
        ));
        Some(progress)
    }

    fn println(&self, line: impl AsRef<str>) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{} {}", crate::progress::timestamp_now(), line.as_ref()),
        }
    }

    fn finished(&self, result: &JobResult) {
        if result.error.is_some() {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        let nanos = (result.cost_usd.total.max(0.0) * 1e9) as u64;
        let spent = self.nanos.fetch_add(nanos, Ordering::Relaxed) + nanos;
        match &self.bar {
            Some(bar) => {
                bar.inc(1);
                bar.set_message(format!(
                    "{} failed, {}",
                    self.failed.load(Ordering::Relaxed),
                    dollars(spent as f64 / 1e9)
                ));
            }
            None => self.println(job_line(result)),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// The time the batch still needs at the average pace so far (`?` before the first job).
fn eta(elapsed: Duration, done: u64, total: Option<u64>) -> String {
    match total {
        Some(total) if done > 0 => {
            let left = total.saturating_sub(done) as f64;
            human_duration(Duration::from_secs_f64(
                (elapsed.as_secs_f64() / done as f64 * left).round(),
            ))
        }
        _ => "?".to_owned(),
    }
}

/// `--json`'s summary object.
fn summary_json(
    summary: &Summary,
    report: &BatchReport,
    jobs: u64,
    skipped: u64,
    elapsed: Duration,
    output: &Path,
) -> serde_json::Value {
    let mut object = serde_json::to_value(summary).unwrap_or_default();
    if let Some(map) = object.as_object_mut() {
        map.insert("jobs".into(), jobs.into());
        map.insert("ran".into(), report.ran.into());
        map.insert("skipped".into(), skipped.into());
        map.insert("not_started".into(), report.not_started.into());
        map.insert("interrupted".into(), report.interrupted.into());
        map.insert(
            "elapsed_ms".into(),
            u64::try_from(elapsed.as_millis())
                .unwrap_or(u64::MAX)
                .into(),
        );
        map.insert("output".into(), output.display().to_string().into());
    }
    object
}

/// The summary on stderr.
fn summary_text(
    s: &Summary,
    report: &BatchReport,
    jobs: u64,
    skipped: u64,
    elapsed: Duration,
    output: &Path,
) -> String {
    let mut text = format!(
        "rlm batch: {}: {} answered, {} without a final answer, {} failed; {} \
         skipped (already in {}), {} run now in {}\n",
        count(jobs, "job"),
        thousands(s.answered),
        thousands(s.unfinished),
        thousands(s.failed),
        thousands(skipped),
        output.display(),
        thousands(report.ran),
        human_duration(elapsed)
    );
    if report.not_started > 0 {
        text.push_str(&format!(
            "  {} not started: --total-max-cost is spent\n",
            count(report.not_started, "job")
        ));
    }
    if report.interrupted > 0 {
        text.push_str(&format!(
            "  {} interrupted or not started: run the same command again to finish\n",
            count(report.interrupted, "job")
        ));
    }
    if let Some(accuracy) = s.accuracy {
        text.push_str(&format!(
            "  accuracy: {}/{} ({:.1}%)\n",
            thousands(s.correct),
            thousands(s.scored),
            accuracy * 100.0
        ));
    }
    text.push_str(&format!(
        "  wall per job: p50 {}, p95 {}; mean turns {:.2}; {} ({} failed)\n",
        human_duration(Duration::from_millis(s.wall_ms.p50)),
        human_duration(Duration::from_millis(s.wall_ms.p95)),
        s.mean_turns.unwrap_or(0.0),
        count(s.sub_calls, "sub-call"),
        thousands(s.failed_sub_calls)
    ));
    for (model, usage) in &s.usage {
        let usd = s.cost_usd.by_model.get(model).copied().unwrap_or(0.0);
        text.push_str(&format!(
            "  {model}: {}, {} prompt + {} completion tokens, {}\n",
            count(usage.calls, "call"),
            thousands(usage.prompt_tokens),
            thousands(usage.completion_tokens),
            dollars(usd)
        ));
    }
    text.push_str(&format!("  cost: {}", dollars(s.cost_usd.total)));
    if !s.cost_usd.unpriced.is_empty() {
        text.push_str(&format!(
            " (no price for {}: counted as free)",
            s.cost_usd.unpriced.join(", ")
        ));
    }
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The second SIGTERM is heard as well as the first (it used to be swallowed: the first
    /// one's listener was dropped, and SIGTERM's default action does not come back).
    #[cfg(unix)]
    #[tokio::test]
    async fn a_second_sigterm_is_heard() {
        let mut signals = Interrupts::new();
        for nth in ["first", "second"] {
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &std::process::id().to_string()])
                .status()
                .expect("kill runs");
            assert!(sent.success());
            tokio::time::timeout(Duration::from_secs(60), signals.next())
                .await
                .unwrap_or_else(|_| panic!("the {nth} SIGTERM was not heard (safety bound)"));
        }
    }

    #[test]
    fn the_eta_waits_for_a_first_job() {
        assert_eq!(eta(Duration::from_secs(3), 0, Some(10)), "?");
        assert_eq!(
            eta(Duration::from_secs(10), 5, Some(10)),
            human_duration(Duration::from_secs(10))
        );
    }
}
