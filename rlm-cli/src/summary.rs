//! The usage summary `rlm run` prints on stderr: how the run ended, turns, time, sub-calls,
//! the cache, and each model's calls, tokens and cost.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use rlm_host::{
    CacheStats, CostReport, Event, ModelUsage, Observer, RunPlace, RunResult, StopReason,
};

use crate::human::{count, dollars, human_duration, thousands};

/// Counts the sub-calls code made (`llm_query` and `llm_batch` items), in every run of the
/// tree: the calls a trace has `sub_call_start` events for, which `rlm view` counts.
#[derive(Debug, Default)]
pub(crate) struct CodeSubCalls(AtomicU64);

impl CodeSubCalls {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Observer for CodeSubCalls {
    fn on_run_event(&self, _place: &RunPlace, event: &Event) {
        self.on_event(event);
    }

    fn on_event(&self, event: &Event) {
        if matches!(event, Event::SubCallStart { .. }) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The calls below the top-level root: `sub_calls` (as `--max-sub-calls` and `--json` count
/// them), and, when child runs made some of them with their own root turns, the two parts.
fn calls_below_the_root(result: &RunResult, from_code: u64) -> String {
    let child_turns = result.sub_calls.saturating_sub(from_code);
    let total = count(result.sub_calls, "sub-call");
    if result.child_runs == 0 || child_turns == 0 {
        return total;
    }
    format!(
        "{total} ({} from code, {} of child runs)",
        thousands(from_code),
        count(child_turns, "root turn")
    )
}

/// The usage summary for stderr. `from_code`: the sub-calls code made ([`CodeSubCalls`]).
pub(crate) fn summary(
    result: &RunResult,
    usage: &BTreeMap<String, ModelUsage>,
    cost: &CostReport,
    cache: Option<CacheStats>,
    from_code: u64,
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
        calls_below_the_root(result, from_code),
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
