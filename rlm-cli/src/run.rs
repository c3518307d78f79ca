//! `rlm run`: the backend stack, the run, and what is printed.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rlm_cache::CacheStats;
use rlm_core::{CancellationToken, CostReport, ModelUsage};
use rlm_host::Stack;
use rlm_host::supervise::{CANCEL_GRACE, Supervised, supervise};
use rlm_openai::WaitObserver;
use rlm_repl::{RunResult, StopReason};
use serde::Serialize;

use crate::cli::ProgressMode;
use crate::cli::RunArgs;
use crate::error::{CliError, exit};
use crate::progress::{Progress, Style};
use crate::settings;
use crate::trace::TraceWriter;


/// Runs `rlm run` and returns the exit status.
pub(crate) async fn run(args: Box<RunArgs>) -> Result<u8, CliError> {
    let start = Instant::now();
    let quiet = args.quiet;
    let settings = settings::settings(&args);
    let mut warnings = Vec::new();

    // Input first: a bad path fails before anything is set up.
    let query_from_stdin = args.query.as_deref() == Some("-");
    let context_from_stdin = args.context.as_deref() == Some(Path::new("-"));
    if query_from_stdin && context_from_stdin {
        return Err(CliError::Usage(
            "--query - and --context - both want stdin; pass one of them as text or a file"
                .to_owned(),
        ));
    }
    let reading_stdin = query_from_stdin || context_from_stdin;
    if reading_stdin && !quiet && std::io::stdin().is_terminal() {
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
    let system_prompt = match &args.system_prompt_file {
        Some(path) => Some(rlm_host::context::read_text_file(
            path,
            "system prompt file",
            args.max_context_bytes,
            &mut warnings,
        )?),
        None => None,
    };
    let loaded = rlm_host::context::load(
        args.context.as_deref(),
        &settings::load_options(&args),
        std::io::stdin().lock(),
    )?;
    warnings.extend(loaded.warnings);
    let prices = settings.load_prices()?;
    if !quiet {
        for warning in &warnings {
            eprintln!("warning: {warning}");
        }
    }

    let progress = progress_style(args.progress, quiet)
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
            TraceWriter::create(path, start)?.with_settings(settings.trace_settings()),
        )),
        None => None,
    };

    if !quiet && let Some(notice) = tpm_notice(args.tpm, system_prompt.as_deref(), &model) {
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
    let rlm = builder
        .build()
        .map_err(|e| CliError::from_rlm(e, &shown_url, &model))?;

    // Ctrl-C cancels the run; a second one exits at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let interrupted = interrupted.clone();
        let cancel = cancel.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                interrupted.store(true, Ordering::SeqCst);
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
    }

    // `--max-time` ends the run whatever its code does: the run stops its code and sub-calls
    // when the time is up; if it has not returned a grace period later, it is left behind.
    let run = rlm.run(query, loaded.context);
    let outcome = match supervise(run, &cancel, settings.max_time).await {
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
    let trace_error = trace.as_ref().and_then(|t| t.warning());

    // Settled first: moka counts entries in the background.
    let cache_stats = stack.cache_stats().await;
    let usage = stack.usage();
    let result = match outcome {
        Some(Ok(result)) => result,
        failed => {
            crate::error::set_partial(partial_figures(start.elapsed(), &usage, cache_stats));
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
    let cost = prices.report(usage.iter().map(|(model, u)| (model.as_str(), u)));
    if args.json || result.stopped != StopReason::Cancelled {
        print_result(&result, &usage, &cost, cache_stats, args.json)?;
    }
    // What the engine cannot vouch for goes to stderr even with --quiet.
    for warning in &result.warnings {
        eprintln!("warning: {warning}");
    }
    if !quiet {
        eprint!("{}", summary(&result, &usage, &cost, cache_stats));
    }
    if let Some(error) = trace_error {
        return Err(CliError::Input(error));
    }
    Ok(match result.stopped {
        StopReason::Final => exit::OK,
        StopReason::Cancelled => exit::INTERRUPTED,
        _ => exit::BUDGET,
    })
}

/// A notice when `--tpm` is smaller than one root request: such a request waits until the
/// budget covers it, which at a few tokens per minute is hours.
fn tpm_notice(tpm: u32, system_prompt: Option<&str>, model: &str) -> Option<String> {
    if tpm == 0 {
        return None;
    }
    let prompt = match system_prompt {
        Some(prompt) => prompt.to_owned(),
        None => rlm_repl::prompt::system_prompt(&rlm_repl::RlmConfig::default()),
    };
    let request = rlm_core::CompletionRequest::prompt(model, prompt);
    let tokens = request
        .estimated_prompt_tokens()
        .saturating_add(u64::from(rlm_openai::DEFAULT_COMPLETION_TOKEN_ESTIMATE));
    if tokens <= u64::from(tpm) {
        return None;
    }
    let wait = Duration::from_secs_f64(tokens as f64 / f64::from(tpm) * 60.0);
    Some(format!(
        "--tpm {tpm} is smaller than one request: the first root call (about {tokens} tokens, \
         its system prompt alone) will wait about {} before it is sent, as a request larger \
         than a minute's budget waits until the budget covers it. Use --tpm {tokens} or more.",
        human_duration(wait)
    ))
}

/// How `--progress` is drawn, if at all: `auto` draws bars on a terminal and nothing
/// otherwise; `--quiet` draws nothing.
fn progress_style(mode: ProgressMode, quiet: bool) -> Option<Style> {
    match mode {
        _ if quiet => None,
        ProgressMode::Auto => std::io::stderr().is_terminal().then_some(Style::Bars),
        ProgressMode::Bar => Some(Style::Bars),
        ProgressMode::Lines => Some(Style::Lines),
        ProgressMode::None => None,
    }
}

/// What a failed run counted before it failed, for `--json`'s error object.
fn partial_figures(
    elapsed: Duration,
    usage: &BTreeMap<String, ModelUsage>,
    cache: Option<CacheStats>,
) -> serde_json::Map<String, serde_json::Value> {
    let mut figures = serde_json::Map::new();
    figures.insert(
        "elapsed_ms".to_owned(),
        u64::try_from(elapsed.as_millis())
            .unwrap_or(u64::MAX)
            .into(),
    );
    figures.insert(
        "usage".to_owned(),
        serde_json::to_value(json_usage(usage)).unwrap_or_default(),
    );
    if let Some(cache) = cache {
        figures.insert(
            "cache".to_owned(),
            serde_json::to_value(cache).unwrap_or_default(),
        );
    }
    figures
}

/// `usage` as `--json` shows it.
fn json_usage(usage: &BTreeMap<String, ModelUsage>) -> BTreeMap<&str, JsonUsage> {
    usage
        .iter()
        .map(|(model, u)| {
            (
                model.as_str(),
                JsonUsage {
                    calls: u.calls,
                    prompt_tokens: u.prompt_tokens,
                    completion_tokens: u.completion_tokens,
                },
            )
        })
        .collect()
}

/// A model's line of `usage` in `--json`: exactly the three pinned keys.
#[derive(Debug, Serialize)]
struct JsonUsage {
    calls: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// The `--json` object.
#[derive(Debug, Serialize)]
struct JsonOutput<'a> {
    answer: &'a str,
    iterations: usize,
    stopped: &'static str,
    elapsed_ms: u64,
    usage: BTreeMap<&'a str, JsonUsage>,
    sub_calls: u64,
    failed_sub_calls: u64,
    refused_sub_calls: u64,
    cancelled_sub_calls: u64,
    max_depth_reached: usize,
    child_runs: u64,
    warnings: &'a [String],
    cost_usd: &'a CostReport,
    cache: Option<CacheStats>,
}

fn print_result(
    result: &RunResult,
    usage: &BTreeMap<String, ModelUsage>,
    cost: &CostReport,
    cache: Option<CacheStats>,
    json: bool,
) -> Result<(), CliError> {
    let text = if json {
        let output = JsonOutput {
            answer: &result.answer,
            iterations: result.iterations,
            stopped: result.stopped.as_str(),
            elapsed_ms: u64::try_from(result.elapsed.as_millis()).unwrap_or(u64::MAX),
            usage: json_usage(usage),
            sub_calls: result.sub_calls,
            failed_sub_calls: result.failed_sub_calls,
            refused_sub_calls: result.refused_sub_calls,
            cancelled_sub_calls: result.cancelled_sub_calls,
            max_depth_reached: result.max_depth_reached,
            child_runs: result.child_runs,
            warnings: &result.warnings,
            cost_usd: cost,
            cache,
        };
        let mut text = serde_json::to_string(&output)
            .map_err(|e| CliError::Internal(format!("cannot serialize the result: {e}")))?;
        text.push('\n');
        text
    } else if result.answer.is_empty() {
        String::new()
    } else if result.answer.ends_with('\n') {
        result.answer.clone()
    } else {
        format!("{}\n", result.answer)
    };
    write_stdout(&text)
}

/// Writes to stdout; a closed pipe (`rlm ... | head`) is not an error.
pub(crate) fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Input(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

/// The usage summary for stderr.
fn summary(
    result: &RunResult,
    usage: &BTreeMap<String, ModelUsage>,
    cost: &CostReport,
    cache: Option<CacheStats>,
) -> String {
    let how = match result.stopped {
        StopReason::Final => "final answer".to_owned(),
        StopReason::Cancelled => "cancelled".to_owned(),
        other if result.answer.is_empty() => {
            format!("stopped by the {} budget, with no answer", other.as_str())
        }
        other => format!(
            "stopped by the {} budget (best answer so far)",
            other.as_str()
        ),
    };
    let mut not_ok = Vec::new();
    if result.failed_sub_calls > 0 {
        not_ok.push(format!("{} failed", thousands(result.failed_sub_calls)));
    }
    if result.cancelled_sub_calls > 0 {
        not_ok.push(format!(
            "{} cancelled",
            thousands(result.cancelled_sub_calls)
        ));
    }
    let not_ok = if not_ok.is_empty() {
        String::new()
    } else {
        format!(" ({})", not_ok.join(", "))
    };
    let mut text = format!(
        "rlm: {how} after {} in {}; {}{not_ok}",
        count(result.iterations as u64, "turn"),
        human_duration(result.elapsed),
        count(result.sub_calls, "sub-call"),
    );
    if result.child_runs > 0 {
        text.push_str(&format!(
            "; {} (depth {})",
            count(result.child_runs, "child run"),
            result.max_depth_reached
        ));
    }
    if let Some(cache) = cache {
        text.push_str(&format!(
            "; cache: {}, {} shared",
            count(cache.hits, "hit"),
            count(cache.coalesced, "duplicate")
        ));
        if cache.disk_hits > 0 {
            text.push_str(&format!(", {} from disk", thousands(cache.disk_hits)));
        }
        if cache.redis_hits > 0 {
            text.push_str(&format!(", {} from Redis", thousands(cache.redis_hits)));
        }
    }
    text.push('\n');
    let width = usage.keys().map(|m| m.chars().count()).max().unwrap_or(0);
    let calls_width = usage
        .values()
        .map(|u| thousands(u.calls).len())
        .max()
        .unwrap_or(0);
    for (model, u) in usage {
        let failed = if u.failed > 0 {
            format!(" ({} failed)", thousands(u.failed))
        } else {
            String::new()
        };
        let price = match cost.by_model.get(model) {
            Some(usd) => format!(", {}", dollars(*usd)),
            None => ", unpriced".to_owned(),
        };
        text.push_str(&format!(
            "  {model:<width$}  {:>calls_width$} {}{failed}, {} prompt + {} completion {}{price}\n",
            thousands(u.calls),
            if u.calls == 1 { "call" } else { "calls" },
            thousands(u.prompt_tokens),
            thousands(u.completion_tokens),
            if u.prompt_tokens + u.completion_tokens == 1 {
                "token"
            } else {
                "tokens"
            },
        ));
    }
    if !usage.is_empty() {
        text.push_str(&format!("  cost: {}", dollars(cost.total)));
        if !cost.unpriced.is_empty() {
            text.push_str(&format!(
                " (no price for {}: counted as free; see --prices)",
                cost.unpriced.join(", ")
            ));
        }
        text.push('\n');
    }
    text
}

/// Dollars for people: `$0.0042`, `$12.35`.
fn dollars(usd: f64) -> String {
    if usd == 0.0 {
        "$0".to_owned()
    } else if usd < 1.0 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

/// `n` things: `1 sub-call`, `2 sub-calls`, `1,000 items` (plural by adding an `s`).
pub(crate) fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{} {what}s", thousands(n))
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration for people: `850 ms`, `4.21 s`, `3 min 05 s`.
pub(crate) fn human_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", duration.as_secs_f64())
    } else {
        let secs = duration.as_secs();
        format!("{} min {:02} s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(count(1, "sub-call"), "1 sub-call");
        assert_eq!(count(0, "item"), "0 items");
        assert_eq!(count(1200, "item"), "1,200 items");
        assert_eq!(human_duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(human_duration(Duration::from_millis(4210)), "4.21 s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3 min 05 s");
        assert_eq!(dollars(0.0), "$0");
        assert_eq!(dollars(0.00421), "$0.0042");
        assert_eq!(dollars(12.345), "$12.35");
    }
}
