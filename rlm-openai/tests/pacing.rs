//! Rate limits observed where the backend decides them: each request is recorded when the
//! limiter lets it through (by a shared pacer that only listens, the last gate before a
//! request is sent), on a paused tokio clock. Virtual time moves only from one timer to the
//! next, so the times are exactly the limiter's, whatever the machine's load: assertions
//! bound counts from above ("no more than X in any window") and spreads from below, and none
//! of them depends on how quickly the machine runs.

mod recorder;

use std::time::Duration;

use recorder::backend;
use rlm_core::{BatchExecutor, BatchOptions, CompletionRequest, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig, RateLimit};
use rlm_tests::{MockServer, Reply, ServerRequest};
use tokio::time::Instant;

fn echo(request: &ServerRequest) -> Reply {
    Reply::completion_for(request, "ok")
}

async fn server() -> MockServer {
    MockServer::start(echo)
        .await
        .unwrap_or_else(|e| panic!("cannot start the mock server: {e}"))
}

/// The largest total weight of requests let through within any window of length `window`
/// (measured from each request's admission).
fn max_in_window(arrivals: &[(Instant, u64)], window: Duration) -> u64 {
    let mut sorted = arrivals.to_vec();
    sorted.sort_by_key(|(at, _)| *at);
    let mut best = 0;
    for (i, (start, _)) in sorted.iter().enumerate() {
        let total: u64 = sorted[i..]
            .iter()
            .take_while(|(at, _)| at.duration_since(*start) < window)
            .map(|(_, weight)| weight)
            .sum();
        best = best.max(total);
    }
    best
}

fn spread(arrivals: &[(Instant, u64)]) -> Duration {
    let first = arrivals.iter().map(|(at, _)| *at).min();
    let last = arrivals.iter().map(|(at, _)| *at).max();
    match (first, last) {
        (Some(first), Some(last)) => last.duration_since(first),
        _ => Duration::ZERO,
    }
}

fn all_ok(results: Vec<rlm_core::BatchResult>) {
    for result in results {
        if let Err(e) = result {
            panic!("unexpected failure: {e}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn requests_per_minute_are_paced_smoothly_across_clones() {
    // 600 a minute: a burst of 10, then one about every 101.5 ms (591 a minute after the
    // burst, so no minute ever holds more than 600).
    let server = server().await;
    let (backend, recorder) = backend(
        OpenAiConfig::new()
            .with_base_url(server.base_url())
            .with_rate_limit(RateLimit::new(600, 0)),
    );
    let clone = backend.clone();
    let batch = |b: OpenAiBackend, tag: &'static str| async move {
        let requests = (0..20)
            .map(|i| CompletionRequest::prompt("m", format!("{tag}{i}")))
            .collect();
        b.complete_batch(requests, &BatchOptions::new(20)).await
    };
    // Two clones, two concurrent batches, one budget.
    let (a, b) = tokio::join!(batch(backend, "a"), batch(clone, "b"));
    all_ok(a);
    all_ok(b);

    assert_eq!(server.requests().len(), 40);
    let arrivals = recorder.arrivals("m", 1);
    assert_eq!(arrivals.len(), 40);
    // In any second: the burst of 10, plus at most one per 101.5 ms (10), plus one for
    // timer rounding at the window's edges.
    let most = max_in_window(&arrivals, Duration::from_secs(1));
    assert!(most <= 21, "{most} requests within one second");
    // In any half second: the burst plus at most 5.
    let most = max_in_window(&arrivals, Duration::from_millis(500));
    assert!(most <= 16, "{most} requests within half a second");
    // 30 requests after the burst at 101.5 ms each: just over 3 s.
    let spread = spread(&arrivals);
    assert!(
        spread >= Duration::from_millis(2_900),
        "all 40 within {spread:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_per_minute_are_paced_by_estimated_size() {
    // 120,000 tokens a minute: a burst of 2,000, then 118,001 a minute (~1,967 a second).
    let server = server().await;
    let (backend, recorder) = backend(
        OpenAiConfig::new()
            .with_base_url(server.base_url())
            .with_rate_limit(RateLimit::new(0, 120_000)),
    );
    // Each request: 384 bytes (96 tokens) + 4 framing + max_tokens 100 = 200 tokens.
    let cost = 200;
    let requests: Vec<_> = (0..30)
        .map(|i| CompletionRequest::prompt("m", format!("{i:0>384}")).with_max_tokens(100))
        .collect();
    assert_eq!(requests[0].estimated_prompt_tokens(), 100);
    all_ok(
        backend
            .complete_batch(requests, &BatchOptions::new(30))
            .await,
    );

    assert_eq!(server.requests().len(), 30);
    let arrivals = recorder.arrivals("m", cost);
    assert_eq!(arrivals.len(), 30);
    // In any second: the burst, plus a second's refill, plus one request for rounding.
    let most = max_in_window(&arrivals, Duration::from_secs(1));
    assert!(
        most <= 2_000 + 1_967 + cost,
        "{most} tokens within one second"
    );
    // 6,000 tokens, 2,000 at once and 4,000 at ~1,967 a second: just over 2 s.
    let spread = spread(&arrivals);
    assert!(
        spread >= Duration::from_millis(1_950),
        "all within {spread:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_larger_than_the_burst_still_goes_through() {
    // 6,000 tokens a minute: a burst of 100; this request is estimated at 4 + 4 + 300 tokens.
    let server = server().await;
    let (backend, recorder) = backend(
        OpenAiConfig::new()
            .with_base_url(server.base_url())
            .with_rate_limit(RateLimit::new(0, 6_000)),
    );
    let start = Instant::now();
    let request = CompletionRequest::prompt("m", "big!").with_max_tokens(300);
    let completion = backend.complete(request).await;
    assert!(completion.is_ok(), "{completion:?}");
    // 100 at once, then 205 more at ~98 a second: about 2.08 s.
    assert_eq!(server.requests().len(), 1);
    let waited = recorder.arrivals("m", 1)[0].0.duration_since(start);
    assert!(
        waited >= Duration::from_millis(2_000),
        "sent after {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn limits_are_per_model() {
    // "slow" may send one request a second; "fast" has no limit and must not queue behind it.
    let server = server().await;
    let (backend, recorder) = backend(
        OpenAiConfig::new()
            .with_base_url(server.base_url())
            .with_model_rate_limit("slow", RateLimit::new(60, 0)),
    );
    let slow = (0..3).map(|i| CompletionRequest::prompt("slow", format!("s{i}")));
    let fast = (0..20).map(|i| CompletionRequest::prompt("fast", format!("f{i}")));
    let requests = slow.chain(fast).collect();
    all_ok(
        backend
            .complete_batch(requests, &BatchOptions::new(23))
            .await,
    );

    assert_eq!(server.requests().len(), 23);
    let slow_at: Vec<_> = recorder.arrivals("slow", 1).iter().map(|a| a.0).collect();
    assert_eq!(slow_at.len(), 3);
    for pair in slow_at.windows(2) {
        let gap = pair[1].duration_since(pair[0]);
        assert!(
            gap >= Duration::from_millis(900),
            "slow requests {gap:?} apart"
        );
    }
    let last_fast = recorder.arrivals("fast", 1).iter().map(|a| a.0).max();
    assert!(
        last_fast.is_some_and(|at| at < slow_at[1]),
        "fast requests waited for the slow model's budget"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_take_their_share_of_the_budget() {
    // 60 a minute (a burst of 1, then one a second): a 500 and its retry are two requests,
    // so the retry waits for the next cell even though the backoff is 1 ms.
    let server = MockServer::start(|request| {
        if request.seq == 0 {
            Reply::error(500, "server_error", "boom", "try again")
        } else {
            echo(request)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let (backend, recorder) = backend(
        OpenAiConfig::new()
            .with_base_url(server.base_url())
            .with_rate_limit(RateLimit::new(60, 0))
            .with_retry_backoff(Duration::from_millis(1), Duration::from_millis(1)),
    );
    let completion = backend.complete(CompletionRequest::prompt("m", "x")).await;
    assert!(completion.is_ok(), "{completion:?}");
    assert_eq!(server.requests().len(), 2);
    let at: Vec<_> = recorder.arrivals("m", 1).iter().map(|a| a.0).collect();
    assert_eq!(at.len(), 2);
    let gap = at[1].duration_since(at[0]);
    assert!(gap >= Duration::from_millis(900), "retried {gap:?} later");
}
