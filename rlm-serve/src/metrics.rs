//! `GET /metrics`: the server's counters in the Prometheus text format (OpenMetrics 1.0,
//! encoded by the `prometheus-client` crate).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `rlm_http_requests_total` | counter | `code` (HTTP status) |
//! | `rlm_http_request_duration_seconds` | histogram | |
//! | `rlm_runs_total` | counter | `outcome` (`final`, `max_iterations`, ..., `cancelled`, `error`) |
//! | `rlm_run_duration_seconds` | histogram | |
//! | `rlm_runs_running`, `rlm_runs_queued` | gauge | |
//! | `rlm_sub_calls_total`, `rlm_failed_sub_calls_total` | counter | |
//! | `rlm_model_calls_total` | counter | `model` |
//! | `rlm_tokens_total` | counter | `model`, `kind` (`prompt`, `completion`) |
//! | `rlm_cost_usd_total` | counter | `model` |
//!
//! Label values are the server's own (status codes, stop reasons, the configured models'
//! names), never a client's words, so the series stay few.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use rlm_repl::RunResult;

/// The `Content-Type` of `GET /metrics`.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Family<CodeLabel, Counter>,
    request_seconds: Histogram,
    runs: Family<OutcomeLabel, Counter>,
    run_seconds: Histogram,
    running: Gauge,
    queued: Gauge,
    sub_calls: Counter,
    failed_sub_calls: Counter,
    model_calls: Family<ModelLabel, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<ModelLabel, Counter<f64, AtomicU64>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric at zero.
    pub fn new() -> Self {
        // 50 ms to about 14 minutes.
        let seconds = || Histogram::new(exponential_buckets(0.05, 2.0, 15));
        let mut metrics = Self {
            registry: Registry::with_prefix("rlm"),
            requests: Family::default(),
            request_seconds: seconds(),
            runs: Family::default(),
            run_seconds: seconds(),
            running: Gauge::default(),
            queued: Gauge::default(),
            sub_calls: Counter::default(),
            failed_sub_calls: Counter::default(),
            model_calls: Family::default(),
            tokens: Family::default(),
            cost: Family::default(),
        };
        let r = &mut metrics.registry;
        r.register(
            "http_requests",
            "HTTP requests answered, by status",
            metrics.requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time from a request's arrival to the end of its response",
            metrics.request_seconds.clone(),
        );
        r.register(
            "runs",
            "Runs finished, by how they ended",
            metrics.runs.clone(),
        );
        r.register(
            "run_duration_seconds",
            "Wall time of runs",
            metrics.run_seconds.clone(),
        );
        r.register("runs_running", "Runs running now", metrics.running.clone());
        r.register(
            "runs_queued",
            "Requests waiting for a run slot now",
            metrics.queued.clone(),
        );
        r.register(
            "sub_calls",
            "Sub-calls made by runs (llm_query, llm_batch items, child runs' calls)",
            metrics.sub_calls.clone(),
        );
        r.register(
            "failed_sub_calls",
            "Sub-calls that failed",
            metrics.failed_sub_calls.clone(),
        );
        r.register(
            "model_calls",
            "Model calls that returned a completion, by model",
            metrics.model_calls.clone(),
        );
        r.register(
            "tokens",
            "Tokens by model and kind (prompt, completion)",
            metrics.tokens.clone(),
        );
        r.register(
            "cost_usd",
            "US dollars spent by the server's prices, by model",
            metrics.cost.clone(),
        );
        metrics
    }

    /// Counts an answered request.
    pub fn request(&self, status: u16, elapsed: Duration) {
        self.requests
            .get_or_create(&CodeLabel {
                code: status.to_string(),
            })
            .inc();
        self.request_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts a run whose client left before it ended: its request (and the run with it)
    /// was dropped, so it has no result to count.
    pub fn run_cancelled(&self, elapsed: Duration) {
        self.run_seconds.observe(elapsed.as_secs_f64());
        self.runs
            .get_or_create(&OutcomeLabel {
                outcome: "cancelled".to_owned(),
            })
            .inc();
    }

    /// Counts a finished run (`Err`: the run failed, with no result).
    pub fn run<E>(&self, result: &Result<RunResult, E>, elapsed: Duration) {
        self.run_seconds.observe(elapsed.as_secs_f64());
        let outcome = match result {
            Ok(result) => result.stopped.as_str(),
            Err(_) => "error",
        };
        self.runs
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_owned(),
            })
            .inc();
        let Ok(result) = result else {
            return;
        };
        self.sub_calls.inc_by(result.sub_calls);
        self.failed_sub_calls.inc_by(result.failed_sub_calls);
        for (model, usage) in &result.usage {
            self.model_calls
                .get_or_create(&ModelLabel {
                    model: model.clone(),
                })
                .inc_by(usage.calls);
            for (kind, tokens) in [
                ("prompt", usage.prompt_tokens),
                ("completion", usage.completion_tokens),
            ] {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: model.clone(),
                        kind: kind.to_owned(),
                    })
                    .inc_by(tokens);
            }
        }
        for (model, usd) in &result.cost.by_model {
            if usd.is_finite() && *usd > 0.0 {
                self.cost
                    .get_or_create(&ModelLabel {
                        model: model.clone(),
                    })
                    .inc_by(*usd);
            }
        }
    }

    /// The metrics as text, with the runs running and queued now.
    pub fn encode(&self, running: usize, queued: usize) -> String {
        self.running.set(i64::try_from(running).unwrap_or(i64::MAX));
        self.queued.set(i64::try_from(queued).unwrap_or(i64::MAX));
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_runs_and_gauges_are_counted() {
        let metrics = Metrics::new();
        metrics.request(200, Duration::from_millis(120));
        metrics.request(400, Duration::from_millis(3));
        metrics.request(200, Duration::from_millis(7));
        let result = RunResult {
            answer: String::new(),
            json: None,
            iterations: 1,
            stopped: rlm_repl::StopReason::Final,
            elapsed: Duration::ZERO,
            usage: [(
                "gpt-x".to_owned(),
                rlm_core::usage::ModelUsage {
                    calls: 2,
                    prompt_tokens: 100,
                    completion_tokens: 20,
                    ..Default::default()
                },
            )]
            .into(),
            sub_calls: 4,
            failed_sub_calls: 0,
            cancelled_sub_calls: 0,
            max_depth_reached: 0,
            child_runs: 0,
            tool_calls: 0,
            usage_by_depth: Vec::new(),
            warnings: Vec::new(),
            cost: rlm_core::cost::CostReport {
                total: 0.25,
                by_model: [("gpt-x".to_owned(), 0.25)].into(),
                unpriced: Vec::new(),
            },
            refused_sub_calls: 0,
            cut_short_cost: Default::default(),
            trajectory: Vec::new(),
        };
        metrics.run::<()>(&Ok(result), Duration::from_secs(2));
        metrics.run::<()>(&Err(()), Duration::from_secs(1));
        let text = metrics.encode(3, 1);
        for line in [
            "rlm_http_requests_total{code=\"200\"} 2",
            "rlm_http_requests_total{code=\"400\"} 1",
            "rlm_runs_total{outcome=\"final\"} 1",
            "rlm_runs_total{outcome=\"error\"} 1",
            "rlm_runs_running 3",
            "rlm_runs_queued 1",
            "rlm_sub_calls_total 4",
            "rlm_tokens_total{model=\"gpt-x\",kind=\"prompt\"} 100",
            "rlm_cost_usd_total{model=\"gpt-x\"} 0.25",
            "rlm_http_request_duration_seconds_count 3",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
