//! `rlm run`: reads the inputs, builds the host layer's backend stack, runs under
//! supervision (Ctrl-C, `--max-time`) and hands the result to the printers.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use rlm_host::session::{open_session, save_session};
use rlm_host::supervise::{CANCEL_GRACE, Supervised, supervise};
use rlm_host::{CancellationToken, Context, Settings, Stack, StopReason, WaitObserver};

use crate::cli::RunArgs;
use crate::error::{CliError, exit};
use crate::human::human_duration;
use crate::output::{partial_figures, print_result};
use crate::progress::{self, Progress};
use crate::settings;
use crate::summary::{CodeSubCalls, summary};
use crate::trace;

/// Runs `rlm run` and returns the exit status.
pub(crate) async fn run(args: Box<RunArgs>) -> Result<u8, CliError> {
    let start = Instant::now();
    let quiet = args.quiet;
    let mut settings = settings::settings(&args);
    settings.output_schema = settings::output_schema(&args)?;

    // Input first: a bad path fails before anything is set up.
    let Inputs {
        query,
        system_prompt,
        context,
        warnings,
    } = read_inputs(&args)?;
    let prices = settings.load_prices()?;
    // What changed the input (bytes replaced, files skipped) is said even with --quiet, and
    // is in --json's `warnings`.
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }

    let progress = progress::style(args.progress, quiet)
        .map(|style| Arc::new(Progress::new(args.model.trim(), style)));
    let waits = progress.as_ref().map(|progress| {
        let progress = Arc::clone(progress);
        WaitObserver::new(move |wait| progress.on_wait(wait))
    });
    let stack = Stack::build(&settings, waits, 1)?;
    let model = stack.model().to_owned();
    let shown_url = stack.shown_url().to_owned();

    // Observers.
    let trace = match &args.trace {
        Some(path) => Some(Arc::new(
            trace::create(path, start)?.with_settings(settings.trace_settings()),
        )),
        None => None,
    };

    if !quiet && let Some(notice) = tpm_notice(&settings, system_prompt.as_deref()) {
        eprintln!("warning: {notice}");
    }

    let cancel = CancellationToken::new();
    let mut builder = stack
        .rlm_builder(&settings)?
        .prices(prices.clone())
        .cancel_token(cancel.clone());
    if let Some(prompt) = system_prompt {
        builder = builder.system_prompt(prompt);
    }
    if let Some(trace) = &trace {
        builder = builder.observer(trace.clone());
    }
    if let Some(progress) = &progress {
        builder = builder.observer(progress.clone());
    }
    let from_code = Arc::new(CodeSubCalls::default());
    builder = builder.observer(from_code.clone());
    let rlm = builder
        .build()
        .map_err(|e| CliError::from_rlm(e, &shown_url, &model))?;

    let interrupted = cancel_on_ctrl_c(&cancel, progress.clone(), quiet);

    // With --session, the run is a question of the session saved there (if any).
    let mut context = Some(context);
    let mut session = match (&args.session, context.take()) {
        (Some(path), Some(context)) => {
            let opened = open_session(rlm.clone(), context, Some(path))?;
            for warning in &opened.warnings {
                eprintln!("warning: {warning}");
            }
            if opened.resumed && !quiet {
                eprintln!(
                    "rlm: resumed the session in {} ({} earlier, {} kept)",
                    path.display(),
                    plural(opened.session.history().len(), "question"),
                    plural(opened.session.variable_names().len(), "variable")
                );
            }
            Some(opened.session)
        }
        (_, taken) => {
            context = taken;
            None
        }
    };
    // `--max-time` ends the run whatever its code does: the run stops its code and sub-calls
    // when the time is up; if it has not returned a grace period later, it is left behind
    // (and a session is not saved: its file keeps what it held before).
    let supervised = match session.as_mut() {
        Some(session) => supervise(session.ask(query), &cancel, settings.max_time).await,
        None => {
            let context = context.take().unwrap_or_else(|| Context::from(""));
            supervise(rlm.run(query, context), &cancel, settings.max_time).await
        }
    };
    // Saved whenever the run returned, even without an answer: the variables it set are kept.
    let mut save_error = None;
    if let (Some(session), Some(path), Supervised::Returned(_)) =
        (&session, &args.session, &supervised)
    {
        match save_session(session, path) {
            Ok(warnings) => warnings.iter().for_each(|w| eprintln!("warning: {w}")),
            Err(e) => save_error = Some(e.to_string()),
        }
    }
    let outcome = match supervised {
        Supervised::Returned(outcome) => Some(outcome),
        Supervised::Abandoned => None,
        Supervised::TimedOut => {
            if let Some(progress) = &progress {
                progress.finish();
            }
            return Err(CliError::Budget(format!(
                "the run's time ran out (--max-time) and its code did not stop within {} s; \
                 no answer",
                CANCEL_GRACE.as_secs_f64()
            )));
        }
    };
    if let Some(progress) = &progress {
        progress.finish();
    }
    // A trace that could not be written whole is an input/output error (exit 4), after the
    // answer is printed.
    let trace_error = trace.as_deref().and_then(trace::warning);

    // Settled first: moka counts entries in the background.
    let cache_stats = stack.cache_stats().await;
    let usage = stack.usage();
    let result = match outcome {
        Some(Ok(result)) => result,
        failed => {
            crate::error::set_partial(partial_figures(
                start.elapsed(),
                &usage,
                cache_stats,
                &warnings
                    .iter()
                    .cloned()
                    .chain(stack.warnings())
                    .collect::<Vec<_>>(),
            ));
            return Err(match failed {
                Some(Err(e)) if !interrupted.load(Ordering::SeqCst) => {
                    CliError::from_rlm(e, &shown_url, &model)
                }
                _ => CliError::Interrupted,
            });
        }
    };

    // A run whose token was cancelled already says `cancelled` (rlm-repl does not count
    // what a script made of cancelled sub-calls as a final answer).
    // Priced from what the server was really asked (cache hits cost nothing).
    let mut cost = prices.report(usage.iter().map(|(model, u)| (model.as_str(), u)));
    // Calls cut short in flight sent no usage; they stay charged at their estimate.
    for (model, usd) in &result.cut_short_cost {
        *cost.by_model.entry(model.clone()).or_default() += usd;
        cost.total += usd;
    }
    // The input's and the tiers' warnings (a cache that could not be used) are said beside
    // the run's own, in `--json` too.
    let tier_warnings: Vec<String> = warnings.iter().cloned().chain(stack.warnings()).collect();
    if args.json || result.stopped != StopReason::Cancelled {
        print_result(
            &result,
            &usage,
            &cost,
            cache_stats,
            &tier_warnings,
            args.json,
            settings.output_schema.is_some(),
        )?;
    }
    // What the engine cannot vouch for goes to stderr even with --quiet (the input's
    // warnings were said before the run).
    for warning in result
        .warnings
        .iter()
        .chain(&tier_warnings[warnings.len()..])
    {
        eprintln!("warning: {warning}");
    }
    if !quiet {
        eprint!(
            "{}",
            summary(&result, &usage, &cost, cache_stats, from_code.get())
        );
    }
    if let Some(error) = trace_error.or(save_error) {
        return Err(CliError::Input(error));
    }
    Ok(match result.stopped {
        StopReason::Final => exit::OK,
        StopReason::Cancelled => exit::INTERRUPTED,
        _ => exit::BUDGET,
    })
}

/// `3 questions`, `1 variable`.
fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// What `rlm run` reads before anything is set up.
struct Inputs {
    query: String,
    system_prompt: Option<String>,
    context: Context,
    /// Warnings for stderr (lossy decoding, skipped files).
    warnings: Vec<String>,
}

/// Reads the query (`--query`, `--query -`, `--query-file`), the system prompt file and the
/// context, each within `--max-context-bytes`; stdin serves one of them at most.
fn read_inputs(args: &RunArgs) -> Result<Inputs, CliError> {
    let mut warnings = Vec::new();
    let query_from_stdin = args.query.as_deref() == Some("-");
    let context_from_stdin = args.context.as_deref() == Some(Path::new("-"));
    if query_from_stdin && context_from_stdin {
        return Err(CliError::Usage(
            "--query - and --context - both want stdin; pass one of them as text or a file"
                .to_owned(),
        ));
    }
    let reading_stdin = query_from_stdin || context_from_stdin;
    if reading_stdin && !args.quiet && std::io::stdin().is_terminal() {
        eprintln!(
            "rlm: reading the {} from stdin (end it with Ctrl-D)",
            if query_from_stdin { "query" } else { "context" }
        );
    }
    let query = match (&args.query, &args.query_file) {
        (Some(query), _) if query == "-" => rlm_host::context::read_text(
            std::io::stdin().lock(),
            "the query from stdin",
            args.max_context_bytes,
            &mut warnings,
        )?,
        (Some(query), _) => query.clone(),
        (None, Some(path)) => rlm_host::context::read_text_file(
            path,
            "query file",
            args.max_context_bytes,
            &mut warnings,
        )?,
        (None, None) => {
            return Err(CliError::Usage(
                "a query is required: --query TEXT".to_owned(),
            ));
        }
    };
    if query.trim().is_empty() {
        return Err(CliError::Usage("the query is empty".to_owned()));
    }
    let system_prompt = settings::system_prompt(args, &mut warnings)?;
    let loaded = rlm_host::context::load(
        args.context.as_deref(),
        &settings::load_options(args),
        std::io::stdin().lock(),
    )?;
    warnings.extend(loaded.warnings);
    Ok(Inputs {
        query,
        system_prompt,
        context: loaded.context,
        warnings,
    })
}

/// Ctrl-C cancels the run (and says so); a second one exits at once. The flag tells an
/// interrupted run from one that failed.
fn cancel_on_ctrl_c(
    cancel: &CancellationToken,
    progress: Option<Arc<Progress>>,
    quiet: bool,
) -> Arc<AtomicBool> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            flag.store(true, Ordering::SeqCst);
            cancel.cancel();
            let notice = "rlm: interrupted, stopping (Ctrl-C again to quit at once)";
            match &progress {
                Some(progress) => progress.println(notice),
                None if !quiet => eprintln!("\n{notice}"),
                None => {}
            }
            if tokio::signal::ctrl_c().await.is_ok() {
                std::process::exit(exit::INTERRUPTED.into());
            }
        }
    });
    interrupted
}

/// A notice when `--tpm` is smaller than one root request: such a request waits until the
/// budget covers it, which at a few tokens per minute is hours.
fn tpm_notice(settings: &Settings, system_prompt: Option<&str>) -> Option<String> {
    let (tokens, wait) = settings.tpm_shortfall(system_prompt)?;
    Some(format!(
        "--tpm {} is smaller than one request: the first root call (about {tokens} tokens, \
         its system prompt alone) will wait about {} before it is sent, as a request larger \
         than a minute's budget waits until the budget covers it. Use --tpm {tokens} or more.",
        settings.tpm,
        human_duration(wait)
    ))
}
