//! What `rlm run` prints on stdout: the answer alone, or with `--json` one object (and, for a
//! failed run, the figures it got to for `--json`'s error object).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use rlm_host::{CacheStats, CostReport, ModelUsage, RunResult};
use serde::Serialize;

use crate::error::CliError;

/// What a failed run counted before it failed, for `--json`'s error object (with the cache
/// tiers' warnings, when there were any).
pub(crate) fn partial_figures(
    elapsed: Duration,
    usage: &BTreeMap<String, ModelUsage>,
    cache: Option<CacheStats>,
    warnings: &[String],
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
    if !warnings.is_empty() {
        figures.insert("warnings".to_owned(), warnings.into());
    }
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

/// `--json`'s `answer`: the text; with an output schema the JSON value itself (`null` when
/// there is none).
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Answer<'a> {
    Text(&'a str),
    Json(Option<&'a serde_json::Value>),
}

/// The `--json` object.
#[derive(Debug, Serialize)]
struct JsonOutput<'a> {
    answer: Answer<'a>,
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
    warnings: Vec<&'a str>,
    cost_usd: &'a CostReport,
    cache: Option<CacheStats>,
}

pub(crate) fn print_result(
    result: &RunResult,
    usage: &BTreeMap<String, ModelUsage>,
    cost: &CostReport,
    cache: Option<CacheStats>,
    tier_warnings: &[String],
    json: bool,
    typed: bool,
) -> Result<(), CliError> {
    let text = if json {
        let output = JsonOutput {
            answer: if typed {
                Answer::Json(result.json.as_ref())
            } else {
                Answer::Text(&result.answer)
            },
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
            warnings: result
                .warnings
                .iter()
                .chain(tier_warnings)
                .map(String::as_str)
                .collect(),
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
