//! Budgets hold, or the run says they did not: a budget that runs out mid-batch names itself
//! in `stopped` and counts every item it refused; a call cut short in flight stays charged.

mod common;

use std::time::Duration;

use common::{BuildOk, builder, fence, run_ok};
use rlm_core::cost::{Price, Prices};
use rlm_core::mock::MockBackend;
use rlm_core::{Completion, Usage};
use rlm_repl::{Context, StopReason};

#[tokio::test]
async fn a_token_budget_spent_mid_batch_names_itself_and_counts_the_refused_items() {
    // The answer comes from the block whose batch spent the budget.
    let root = MockBackend::scripted([fence(
        "let a = llm_batch(range(20).map(|i| `prompt ${i}`), 1);\nFINAL(a.len());",
    )]);
    let sub = MockBackend::from_fn(|_| Ok("x".repeat(400)));
    let rlm = builder(&root, &sub).max_total_tokens(1_000).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "20");
    assert_eq!(result.stopped, StopReason::MaxTokens);
    let sent = sub.calls() as u64;
    assert!(sent < 20, "{sent}");
    assert_eq!(result.sub_calls, sent);
    assert_eq!(result.refused_sub_calls, 20 - sent);
    let warnings = result.warnings.join("\n");
    assert!(warnings.contains("budget refused"), "{warnings}");
}

#[tokio::test]
async fn a_cost_budget_spent_mid_batch_counts_its_refusals() {
    let root = MockBackend::scripted([fence(
        "let a = llm_batch(range(212).map(|i| `p${i}`));\nFINAL(a.len());",
    )]);
    let sub = MockBackend::echo();
    // Each item is estimated at about $1.005: 22 fit in $22.5.
    let prices = Prices::from_iter([("sub", Price::new(1000.0, 1000.0, 1000.0))]);
    let rlm = builder(&root, &sub)
        .prices(prices)
        .max_cost(22.5)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxCost);
    assert_eq!(sub.calls(), 22);
    assert_eq!(result.sub_calls, 22);
    assert_eq!(result.refused_sub_calls, 212 - 22);
    assert!(
        result
            .warnings
            .iter()
            .any(|w| w.contains("refused 190 sub-calls")),
        "{:?}",
        result.warnings
    );
}

#[tokio::test]
async fn a_call_cut_short_in_flight_stays_charged_at_its_estimate() {
    // The last item answers at once and spends the budget; the others are in flight, and
    // never answer: they are dropped, but they went out.
    let root = MockBackend::scripted([fence(
        "let a = llm_batch([\"slow 1\", \"slow 2\", \"slow 3\", \"fast\"], 4);\nFINAL(a[3]);",
    )]);
    let sub = MockBackend::echo()
        .with_latency_fn(|request: &rlm_core::CompletionRequest| {
            if request.last_user_message() == Some("fast") {
                Duration::ZERO
            } else {
                Duration::from_secs(3600)
            }
        })
        .with_shape(|request, completion| {
            if request.last_user_message() == Some("fast") {
                // Far more than its estimate: the budget is spent at once.
                Completion::new(completion.model.clone(), completion.text.clone())
                    .with_usage(Usage::new(10, 100_000))
            } else {
                completion
            }
        });
    let prices = Prices::from_iter([("sub", Price::new(1000.0, 1000.0, 1000.0))]);
    let rlm = builder(&root, &sub)
        .prices(prices)
        .max_cost(10.0)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxCost);
    assert_eq!(sub.calls(), 4);
    // The fast call's real cost, plus about $1 for each call cut short.
    let fast = 100_010.0 * 1e-3;
    let charged = result.cost.by_model["sub"];
    assert!(charged > fast + 3.0, "{charged}");
    assert!((result.cost.total - charged).abs() < 1e-9);
}

#[tokio::test]
async fn a_server_without_usage_still_has_its_tokens_counted() {
    // 100 calls of about 1,500 tokens each, from a server that sends no usage.
    let root = MockBackend::scripted([fence(
        "let a = llm_batch(range(100).map(|i| `prompt ${i}`), 1);\nFINAL(a.len());",
    )]);
    let sub = MockBackend::from_fn(|_| Ok("word ".repeat(1_200))).with_shape(|_, completion| {
        Completion::new(completion.model.clone(), completion.text.clone())
    });
    let rlm = builder(&root, &sub).max_total_tokens(20_000).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxTokens);
    assert!(sub.calls() <= 14, "{} calls", sub.calls());
    assert!(result.usage["sub"].completion_tokens >= 1_500 * sub.calls() as u64);
    let warnings = result.warnings.join("\n");
    assert!(warnings.contains("no token usage"), "{warnings}");
}
