//! Behaviour of `CachedBackend` against rlm-core's `MockBackend` (no network).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::join_all;
use rlm_cache::{CacheConfig, CacheStats, CachedBackend, Capacity};
use rlm_core::mock::MockBackend;
use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, CancellationToken, Completion,
    CompletionRequest, LlmBackend, LlmError, execute_bounded,
};
use serde_json::json;

fn prompt(text: &str) -> CompletionRequest {
    CompletionRequest::prompt("sub", text)
}

fn text(result: &BatchResult) -> Result<&str, &LlmError> {
    result.as_ref().map(|c| c.text.as_str())
}

fn stats(hits: u64, misses: u64, coalesced: u64, upstream_calls: u64) -> (u64, u64, u64, u64) {
    (hits, misses, coalesced, upstream_calls)
}

fn counts(s: CacheStats) -> (u64, u64, u64, u64) {
    (s.hits, s.misses, s.coalesced, s.upstream_calls)
}

/// Records every `complete_batch` call (its size and concurrency) and forwards it.
struct BatchSpy<B> {
    inner: B,
    batches: Mutex<Vec<(usize, usize)>>,
}

impl<B> BatchSpy<B> {
    fn new(inner: B) -> Self {
        Self {
            inner,
            batches: Mutex::new(Vec::new()),
        }
    }

    fn batches(&self) -> Vec<(usize, usize)> {
        self.batches.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl<B: LlmBackend> LlmBackend for BatchSpy<B> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        self.inner.complete(request).await
    }
}

#[async_trait]
impl<B: BatchExecutor> BatchExecutor for BatchSpy<B> {
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        if let Ok(mut batches) = self.batches.lock() {
            batches.push((requests.len(), options.max_concurrent));
        }
        self.inner.complete_batch(requests, options).await
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Event {
    Started(usize),
    Finished(usize, Result<String, LlmError>),
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Event>>);

impl Recorder {
    fn events(&self) -> Vec<Event> {
        self.0.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Checks that every index in `expected` has exactly one started then one finished, that
    /// nothing else has events, and that each finished result is the returned one.
    fn assert_paired(&self, results: &[BatchResult], expected: impl Iterator<Item = usize>) {
        let events = self.events();
        let expected: Vec<usize> = expected.collect();
        for (i, result) in results.iter().enumerate() {
            let started: Vec<usize> = events
                .iter()
                .enumerate()
                .filter(|(_, e)| **e == Event::Started(i))
                .map(|(at, _)| at)
                .collect();
            let finished: Vec<(usize, &Result<String, LlmError>)> = events
                .iter()
                .enumerate()
                .filter_map(|(at, e)| match e {
                    Event::Finished(j, r) if *j == i => Some((at, r)),
                    _ => None,
                })
                .collect();
            if expected.contains(&i) {
                assert_eq!(started.len(), 1, "index {i} started once: {events:?}");
                assert_eq!(finished.len(), 1, "index {i} finished once: {events:?}");
                assert!(started[0] < finished[0].0, "index {i} started first");
                assert_eq!(
                    finished[0].1,
                    &result
                        .as_ref()
                        .map(|c| c.text.clone())
                        .map_err(Clone::clone),
                    "index {i} finished with its result"
                );
            } else {
                assert!(
                    started.is_empty() && finished.is_empty(),
                    "index {i}: no events"
                );
            }
        }
    }
}

impl BatchObserver for Recorder {
    fn started(&self, index: usize, _request: &CompletionRequest) {
        if let Ok(mut events) = self.0.lock() {
            events.push(Event::Started(index));
        }
    }

    fn finished(&self, index: usize, result: &BatchResult, _elapsed: Duration) {
        if let Ok(mut events) = self.0.lock() {
            events.push(Event::Finished(
                index,
                result
                    .as_ref()
                    .map(|c| c.text.clone())
                    .map_err(Clone::clone),
            ));
        }
    }
}

#[tokio::test(start_paused = true)]
async fn concurrent_identical_calls_make_one_upstream_call() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(50));
    let cache = CachedBackend::new(mock.clone());
    let results = join_all((0..50).map(|_| cache.complete(prompt("same")))).await;
    assert_eq!(mock.calls(), 1);
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().map(|c| c.text.as_str()) == Ok("echo: same"))
    );
    assert_eq!(counts(cache.stats()), stats(0, 1, 49, 1));

    let again = cache.complete(prompt("same")).await;
    assert_eq!(again.map(|c| c.text), Ok("echo: same".to_owned()));
    assert_eq!(mock.calls(), 1);
    cache.run_pending_tasks().await;
    let s = cache.stats();
    assert_eq!(counts(s), stats(1, 1, 49, 1));
    assert_eq!(s.entries, 1);
}

/// Holds every upstream call until opened, counting arrivals.
struct Gated {
    inner: MockBackend,
    arrived: AtomicUsize,
    open: tokio::sync::watch::Receiver<bool>,
}

#[async_trait]
impl LlmBackend for Gated {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.clone();
        let _ = open.wait_for(|open| *open).await;
        self.inner.complete(request).await
    }
}

impl BatchExecutor for Gated {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_calls_across_threads_make_one_upstream_call() {
    let mock = MockBackend::echo();
    let (opener, open) = tokio::sync::watch::channel(false);
    let gated = Gated {
        inner: mock.clone(),
        arrived: AtomicUsize::new(0),
        open,
    };
    let cache = Arc::new(CachedBackend::new(gated));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move { cache.complete(prompt("same")).await })
        })
        .collect();
    // Let the leader reach the provider and the others pile up behind it. A task that
    // arrives after the gate opens finds the cached value instead: still one call.
    for _ in 0..5000 {
        if cache.inner().arrived.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let _ = opener.send(true);
    for task in tasks {
        let result = task.await.map_err(|e| LlmError::other(e.to_string()));
        assert_eq!(
            result.and_then(|r| r).map(|c| c.text),
            Ok("echo: same".into())
        );
    }
    assert_eq!(mock.calls(), 1);
    let s = cache.stats();
    assert_eq!((s.misses, s.upstream_calls), (1, 1));
    assert_eq!(s.hits + s.coalesced, 49);
}

#[tokio::test(start_paused = true)]
async fn batch_duplicates_go_upstream_once_through_the_inner_batch() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(10));
    let cache = CachedBackend::new(BatchSpy::new(mock.clone()));
    let requests: Vec<_> = (0..60).map(|i| prompt(&format!("p{}", i % 20))).collect();
    let results = cache
        .complete_batch(requests.clone(), &BatchOptions::new(4))
        .await;

    assert_eq!(results.len(), 60);
    for (i, result) in results.iter().enumerate() {
        assert_eq!(text(result), Ok(format!("echo: p{}", i % 20).as_str()));
    }
    assert_eq!(mock.calls(), 20);
    assert_eq!(
        mock.peak_in_flight(),
        4,
        "the caller's max_concurrent is kept"
    );
    assert_eq!(cache.inner().batches(), vec![(20, 4)], "one inner batch");
    // Sent in order of first appearance.
    let sent: Vec<_> = mock
        .requests()
        .iter()
        .map(|r| r.last_user_message().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(sent, (0..20).map(|i| format!("p{i}")).collect::<Vec<_>>());
    assert_eq!(counts(cache.stats()), stats(0, 20, 40, 20));

    // The same batch again: all hits, no upstream batch at all.
    let again = cache.complete_batch(requests, &BatchOptions::new(4)).await;
    assert_eq!(again, results);
    assert_eq!(mock.calls(), 20);
    assert_eq!(cache.inner().batches().len(), 1);
    assert_eq!(counts(cache.stats()), stats(60, 20, 40, 20));
}

#[tokio::test(start_paused = true)]
async fn errors_are_shared_with_waiters_but_never_cached() {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&failing);
    let mock = MockBackend::echo()
        .with_latency(Duration::from_millis(10))
        .fail_when(
            move |_| flag.load(Ordering::SeqCst),
            LlmError::Server {
                status: 503,
                message: "overloaded".into(),
                retry_after: None,
            },
        );
    let cache = CachedBackend::new(mock.clone());

    let results = join_all((0..10).map(|_| cache.complete(prompt("q")))).await;
    assert_eq!(mock.calls(), 1, "waiters share the one failing call");
    assert!(
        results
            .iter()
            .all(|r| r.as_ref().err().and_then(LlmError::status) == Some(503))
    );

    failing.store(false, Ordering::SeqCst);
    let later = cache.complete(prompt("q")).await;
    assert_eq!(later.map(|c| c.text), Ok("echo: q".into()));
    assert_eq!(mock.calls(), 2, "the later request went upstream");
    let cached = cache.complete(prompt("q")).await;
    assert!(cached.is_ok());
    assert_eq!(mock.calls(), 2);
    assert_eq!(counts(cache.stats()), stats(1, 2, 9, 2));
}

#[tokio::test(start_paused = true)]
async fn batch_errors_stay_in_their_slots_and_are_retried_later() {
    let failing = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&failing);
    let mock = MockBackend::echo().fail_when(
        move |r| flag.load(Ordering::SeqCst) && r.last_user_message() == Some("bad"),
        LlmError::other("injected"),
    );
    let cache = CachedBackend::new(mock.clone());
    let batch = || ["a", "bad", "b", "bad"].map(prompt).to_vec();
    let results = cache.complete_batch(batch(), &BatchOptions::new(2)).await;
    assert_eq!(text(&results[0]), Ok("echo: a"));
    assert_eq!(results[1], Err(LlmError::other("injected")));
    assert_eq!(results[3], Err(LlmError::other("injected")));
    assert_eq!(text(&results[2]), Ok("echo: b"));
    assert_eq!(mock.calls(), 3);

    failing.store(false, Ordering::SeqCst);
    let results = cache.complete_batch(batch(), &BatchOptions::new(2)).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(
        mock.calls(),
        4,
        "only the failed prompt went upstream again"
    );
}

#[tokio::test]
async fn entry_bound_evicts() {
    let mock = MockBackend::echo();
    let cache =
        CachedBackend::with_config(mock.clone(), CacheConfig::default().with_max_entries(10));
    assert_eq!(cache.config().capacity, Capacity::Entries(10));
    for i in 0..50 {
        assert!(cache.complete(prompt(&format!("p{i}"))).await.is_ok());
    }
    cache.run_pending_tasks().await;
    assert!(cache.stats().entries <= 10, "{:?}", cache.stats());
    for i in 0..50 {
        assert!(cache.complete(prompt(&format!("p{i}"))).await.is_ok());
    }
    assert!(
        mock.calls() >= 90,
        "at most 10 of 50 were kept: {}",
        mock.calls()
    );
}

#[tokio::test]
async fn byte_bound_evicts() {
    let mock = MockBackend::echo();
    let cache =
        CachedBackend::with_config(mock.clone(), CacheConfig::default().with_max_bytes(100_000));
    let big = |i: usize| prompt(&format!("{i:05}{}", "x".repeat(25_000)));
    for i in 0..20 {
        assert!(cache.complete(big(i)).await.is_ok());
    }
    cache.run_pending_tasks().await;
    // Each entry weighs more than 50 KB (prompt plus echoed reply): at most one fits.
    let entries = cache.stats().entries;
    assert!(entries <= 1, "{entries} entries in 100 KB");
    for i in 0..20 {
        assert!(cache.complete(big(i)).await.is_ok());
    }
    assert!(mock.calls() >= 39, "{}", mock.calls());

    // An entry larger than the whole bound is not kept.
    let tiny =
        CachedBackend::with_config(mock.clone(), CacheConfig::default().with_max_bytes(10_000));
    let before = mock.calls();
    assert!(tiny.complete(big(0)).await.is_ok());
    tiny.run_pending_tasks().await;
    assert_eq!(tiny.stats().entries, 0);
    assert!(tiny.complete(big(0)).await.is_ok());
    assert_eq!(mock.calls(), before + 2);
}

#[tokio::test]
async fn small_entries_fit_the_byte_bound() {
    let mock = MockBackend::echo();
    let cache = CachedBackend::with_config(
        mock.clone(),
        CacheConfig::default().with_max_bytes(1_000_000),
    );
    for i in 0..100 {
        assert!(cache.complete(prompt(&format!("p{i}"))).await.is_ok());
    }
    cache.run_pending_tasks().await;
    assert_eq!(cache.stats().entries, 100);
    for i in 0..100 {
        assert!(cache.complete(prompt(&format!("p{i}"))).await.is_ok());
    }
    assert_eq!(mock.calls(), 100);
}

#[tokio::test]
async fn zero_capacity_stores_nothing_but_still_coalesces() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(20));
    let cache =
        CachedBackend::with_config(mock.clone(), CacheConfig::default().with_max_entries(0));
    let results = join_all((0..10).map(|_| cache.complete(prompt("z")))).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(mock.calls(), 1);
    cache.run_pending_tasks().await;
    assert!(cache.complete(prompt("z")).await.is_ok());
    assert_eq!(mock.calls(), 2);
}

// moka's clock is the real one, so expiry takes real (short) sleeps.
#[tokio::test]
async fn entries_expire_after_their_time_to_live() {
    let mock = MockBackend::echo();
    let long = CachedBackend::with_config(
        mock.clone(),
        CacheConfig::default().with_time_to_live(Duration::from_secs(600)),
    );
    assert!(long.complete(prompt("t")).await.is_ok());
    assert!(long.complete(prompt("t")).await.is_ok());
    assert_eq!(mock.calls(), 1);

    let short = CachedBackend::with_config(
        mock.clone(),
        CacheConfig::default().with_time_to_live(Duration::from_millis(40)),
    );
    assert!(short.complete(prompt("t")).await.is_ok());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(short.complete(prompt("t")).await.is_ok());
    assert_eq!(mock.calls(), 3, "expired entries go upstream again");
}

#[tokio::test]
async fn idle_entries_expire() {
    let mock = MockBackend::echo();
    let cache = CachedBackend::with_config(
        mock.clone(),
        CacheConfig::default().with_time_to_idle(Duration::from_millis(40)),
    );
    assert!(cache.complete(prompt("i")).await.is_ok());
    tokio::time::sleep(Duration::from_millis(120)).await;
    assert!(cache.complete(prompt("i")).await.is_ok());
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn huge_durations_mean_never() {
    let mock = MockBackend::echo();
    let forever = Duration::from_secs(u64::MAX);
    let cache = CachedBackend::with_config(
        mock.clone(),
        CacheConfig::default()
            .with_time_to_live(forever)
            .with_time_to_idle(forever),
    );
    assert!(cache.complete(prompt("f")).await.is_ok());
    assert!(cache.complete(prompt("f")).await.is_ok());
    assert_eq!(mock.calls(), 1);
}

/// Requests that differ in one field each (and a few tricky equalities).
fn variants() -> Vec<CompletionRequest> {
    let base = || CompletionRequest::prompt("m", "p");
    vec![
        base(),
        CompletionRequest::prompt("m2", "p"),
        CompletionRequest::prompt("m", "p "),
        base().with_temperature(0.0),
        base().with_temperature(-0.0),
        base().with_temperature(0.7),
        base().with_temperature(0.700_000_05),
        base().with_top_p(0.9),
        base().with_max_tokens(10),
        base().with_max_tokens(11),
        base().with_stop("\n"),
        base().with_stop("\n").with_stop("END"),
        base().with_seed(1),
        base().with_seed(2),
        base().with_extra("n", json!(1)),
        base().with_extra("n", json!(1.0)),
        base().with_extra("n", json!("1")),
        base().with_extra("n", json!({"a": [1, 2]})),
        base().with_extra("n", json!({"a": [2, 1]})),
        base().with_extra("m", json!(1)),
        CompletionRequest::new("m").with_system("p"),
        CompletionRequest::new("m").with_user("p").with_user(""),
        CompletionRequest::new("m").with_system("x").with_user("p"),
        CompletionRequest::new("m").with_user("ab"),
        CompletionRequest::new("m").with_user("a").with_user("b"),
    ]
}

fn describe(request: &CompletionRequest) -> String {
    serde_json::to_string(request).unwrap_or_default()
}

#[tokio::test]
async fn distinct_requests_never_collide() {
    let mock = MockBackend::from_fn(|r| Ok(describe(r)));
    let cache = CachedBackend::new(mock.clone());
    let requests = variants();
    let n = requests.len();

    let batch = cache
        .complete_batch(requests.clone(), &BatchOptions::new(4))
        .await;
    for (request, result) in requests.iter().zip(&batch) {
        assert_eq!(text(result), Ok(describe(request).as_str()));
    }
    assert_eq!(mock.calls(), n, "every variant is its own request");

    for request in &requests {
        let single = cache.complete(request.clone()).await;
        assert_eq!(single.map(|c| c.text), Ok(describe(request)));
    }
    assert_eq!(mock.calls(), n, "and each is a hit for itself");
    assert_eq!(cache.stats().hits, n as u64);

    // Equal requests built differently are one request.
    let mut forward = CompletionRequest::prompt("m", "p").with_extra("x", json!(1));
    forward = forward.with_extra("y", json!(2));
    let mut backward = CompletionRequest::prompt("m", "p").with_extra("y", json!(2));
    backward = backward.with_extra("x", json!(1));
    assert!(cache.complete(forward).await.is_ok());
    assert!(cache.complete(backward).await.is_ok());
    assert_eq!(mock.calls(), n + 1);
}

#[tokio::test(start_paused = true)]
async fn observer_sees_each_original_index_once() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(100));
    let cache = CachedBackend::new(mock.clone());
    assert!(cache.complete(prompt("warm")).await.is_ok());

    let recorder = Arc::new(Recorder::default());
    let options = BatchOptions::new(2).with_observer(recorder.clone());
    let batch = ["warm", "a", "a", "x", "b", "x", "warm"]
        .map(prompt)
        .to_vec();
    // A single call leads "x" first; the batch follows it.
    let (single, results) = tokio::join!(cache.complete(prompt("x")), async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        cache.complete_batch(batch, &options).await
    });
    assert_eq!(single.map(|c| c.text), Ok("echo: x".into()));
    let expected = ["warm", "a", "a", "x", "b", "x", "warm"].map(|p| format!("echo: {p}"));
    for (result, want) in results.iter().zip(&expected) {
        assert_eq!(text(result), Ok(want.as_str()));
    }
    recorder.assert_paired(&results, 0..7);
    // Hits are reported before anything is sent.
    let events = recorder.events();
    assert_eq!(events[0], Event::Started(0));
    assert_eq!(events[1], Event::Finished(0, Ok("echo: warm".into())));
    assert_eq!(mock.calls(), 4, "warm, x, a, b");
    // warm: 1 miss then 2 hits; x: 1 miss, 2 coalesced; a: 1 miss, 1 coalesced; b: 1 miss.
    assert_eq!(counts(cache.stats()), stats(2, 4, 3, 4));
}

#[tokio::test(start_paused = true)]
async fn cancellation_keeps_finished_items_and_caches_nothing_else() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(10));
    let cache = CachedBackend::new(mock.clone());
    let recorder = Arc::new(Recorder::default());
    let cancel = CancellationToken::new();
    let options = BatchOptions::new(2)
        .with_cancel(cancel.clone())
        .with_observer(recorder.clone());
    // 20 distinct prompts, each twice: p0..p19 then p0..p19.
    let requests: Vec<_> = (0..40).map(|i| prompt(&format!("p{}", i % 20))).collect();
    let (results, ()) = tokio::join!(cache.complete_batch(requests.clone(), &options), async {
        // Two waves of two finish in 20 ms; the third wave is in flight at 25 ms.
        tokio::time::sleep(Duration::from_millis(25)).await;
        cancel.cancel();
    });
    assert_eq!(results.len(), 40);
    for (i, result) in results.iter().enumerate() {
        if i % 20 < 4 {
            assert_eq!(text(result), Ok(format!("echo: p{}", i % 20).as_str()));
        } else {
            assert_eq!(*result, Err(LlmError::Cancelled), "index {i}");
        }
    }
    // Finished items and the third wave (started, then cancelled) have events; the
    // duplicates share their leader's events.
    recorder.assert_paired(&results, (0..40).filter(|i| i % 20 < 6));
    assert_eq!(mock.calls(), 6);
    let s = cache.stats();
    assert_eq!((s.misses, s.coalesced, s.hits), (4, 4, 0));

    // Only the finished prompts were cached.
    let results = cache.complete_batch(requests, &BatchOptions::new(2)).await;
    assert!(results.iter().all(Result::is_ok));
    assert_eq!(mock.calls(), 6 + 16);
    assert_eq!(cache.stats().hits, 8);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_leader_does_not_cancel_its_followers() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(100));
    let cache = CachedBackend::new(mock.clone());
    let cancel = CancellationToken::new();
    let options = BatchOptions::new(4).with_cancel(cancel.clone());
    let (batch, single, ()) = tokio::join!(
        cache.complete_batch(vec![prompt("z")], &options),
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cache.complete(prompt("z")).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(30)).await;
            cancel.cancel();
        }
    );
    assert_eq!(batch, vec![Err(LlmError::Cancelled)]);
    assert_eq!(single.map(|c| c.text), Ok("echo: z".into()));
    assert_eq!(mock.calls(), 2, "the follower sent it itself");
    let s = cache.stats();
    assert_eq!((s.misses, s.coalesced, s.upstream_calls), (1, 0, 2));
}

#[tokio::test(start_paused = true)]
async fn a_dropped_single_leader_hands_over() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(100));
    let cache = CachedBackend::new(mock.clone());
    let (first, second) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(30), cache.complete(prompt("d"))),
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cache.complete(prompt("d")).await
        }
    );
    assert!(first.is_err(), "timed out");
    assert_eq!(second.map(|c| c.text), Ok("echo: d".into()));
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_batch_following_a_dropped_leader_sends_it_itself() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(100));
    let cache = CachedBackend::new(BatchSpy::new(mock.clone()));
    let recorder = Arc::new(Recorder::default());
    let options = BatchOptions::new(4).with_observer(recorder.clone());
    let (first, results) = tokio::join!(
        tokio::time::timeout(Duration::from_millis(30), cache.complete(prompt("d"))),
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            cache
                .complete_batch(vec![prompt("e"), prompt("d"), prompt("d")], &options)
                .await
        }
    );
    assert!(first.is_err(), "timed out");
    assert_eq!(text(&results[1]), Ok("echo: d"));
    assert_eq!(text(&results[2]), Ok("echo: d"));
    assert_eq!(text(&results[0]), Ok("echo: e"));
    assert_eq!(mock.calls(), 3);
    assert_eq!(
        cache.inner().batches(),
        vec![(1, 4), (1, 4)],
        "e, then d in a second round"
    );
    recorder.assert_paired(&results, 0..3);
}

#[tokio::test]
async fn an_already_cancelled_batch_does_nothing() {
    let mock = MockBackend::echo();
    let cache = CachedBackend::new(mock.clone());
    assert!(cache.complete(prompt("a")).await.is_ok());
    let cancel = CancellationToken::new();
    cancel.cancel();
    let recorder = Arc::new(Recorder::default());
    let options = BatchOptions::new(2)
        .with_cancel(cancel)
        .with_observer(recorder.clone());
    let results = cache
        .complete_batch(vec![prompt("a"), prompt("b")], &options)
        .await;
    assert_eq!(
        results,
        vec![Err(LlmError::Cancelled), Err(LlmError::Cancelled)]
    );
    assert!(recorder.events().is_empty());
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn an_empty_batch_is_empty() {
    let cache = CachedBackend::new(BatchSpy::new(MockBackend::echo()));
    assert!(
        cache
            .complete_batch(Vec::new(), &BatchOptions::default())
            .await
            .is_empty()
    );
    assert!(cache.inner().batches().is_empty());
}

/// A batch executor that ignores its observer and can drop results.
struct Careless {
    inner: MockBackend,
    drop_last: bool,
}

#[async_trait]
impl LlmBackend for Careless {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        self.inner.complete(request).await
    }
}

#[async_trait]
impl BatchExecutor for Careless {
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        let bare = BatchOptions::new(options.max_concurrent).with_cancel(options.cancel.clone());
        let mut results = execute_bounded(requests, &bare, |r| self.inner.complete(r)).await;
        if self.drop_last {
            results.pop();
        }
        results
    }
}

#[tokio::test]
async fn events_and_results_survive_a_careless_inner_executor() {
    let mock = MockBackend::echo();
    let cache = CachedBackend::new(Careless {
        inner: mock.clone(),
        drop_last: false,
    });
    let recorder = Arc::new(Recorder::default());
    let options = BatchOptions::new(2).with_observer(recorder.clone());
    let results = cache
        .complete_batch(["a", "b", "a"].map(prompt).to_vec(), &options)
        .await;
    assert!(results.iter().all(Result::is_ok));
    recorder.assert_paired(&results, 0..3);

    let cache = CachedBackend::new(Careless {
        inner: mock.clone(),
        drop_last: true,
    });
    let results = cache
        .complete_batch(["x", "y"].map(prompt).to_vec(), &BatchOptions::new(2))
        .await;
    assert_eq!(text(&results[0]), Ok("echo: x"));
    assert!(matches!(results[1], Err(LlmError::Other { .. })));
    // The missing result was not cached.
    assert!(cache.complete(prompt("y")).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_and_calls_on_many_threads_send_each_prompt_once() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(5));
    let cache: Arc<dyn BatchExecutor> = Arc::new(CachedBackend::new(mock.clone()));
    let mut tasks = Vec::new();
    for t in 0..8 {
        let batch_cache = Arc::clone(&cache);
        tasks.push(tokio::spawn(async move {
            let cache = batch_cache;
            let requests: Vec<_> = (0..50)
                .map(|i| prompt(&format!("p{}", (i * 7 + t) % 10)))
                .collect();
            let results = cache.complete_batch(requests, &BatchOptions::new(3)).await;
            results
                .iter()
                .enumerate()
                .all(|(i, r)| text(r) == Ok(format!("echo: p{}", (i * 7 + t) % 10).as_str()))
        }));
        let cache = Arc::clone(&cache);
        tasks.push(tokio::spawn(async move {
            let result = cache.complete(prompt(&format!("p{t}"))).await;
            text(&result) == Ok(format!("echo: p{t}").as_str())
        }));
    }
    for task in tasks {
        assert_eq!(task.await.ok(), Some(true));
    }
    assert_eq!(mock.calls(), 10, "each distinct prompt went upstream once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_add_up_under_concurrency() {
    let mock = MockBackend::echo().with_latency(Duration::from_millis(1));
    let cache = Arc::new(CachedBackend::new(mock.clone()));
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                for i in 0..100 {
                    let _ = cache.complete(prompt(&format!("p{}", (i + t) % 25))).await;
                }
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.is_ok());
    }
    let s = cache.stats();
    assert_eq!(s.hits + s.misses + s.coalesced, 1600);
    assert_eq!(s.misses, 25);
    assert_eq!(s.upstream_calls, 25);
    assert_eq!(mock.calls(), 25);
}

#[test]
fn usable_as_trait_objects_and_debug_hides_prompts() {
    let cache = CachedBackend::new(MockBackend::echo());
    let text = format!("{cache:?}");
    assert!(text.contains("CachedBackend") && text.contains("hits"));
    let _: Arc<dyn BatchExecutor> = Arc::new(cache);
    let _: Arc<dyn LlmBackend> = Arc::new(CachedBackend::new(MockBackend::echo()));
}

#[test]
fn works_from_blocking_code() {
    let cache = Arc::new(CachedBackend::new(MockBackend::echo()));
    let results = rlm_core::blocking::complete_batch(
        Arc::clone(&cache),
        vec![prompt("a"), prompt("a")],
        BatchOptions::new(2),
    );
    assert_eq!(results.len(), 2);
    assert_eq!(cache.stats().misses, 1);
}

#[tokio::test]
async fn the_upstream_batch_shares_the_callers_prompts() {
    let mock = MockBackend::echo();
    let cache = CachedBackend::new(mock.clone());
    let requests = vec![prompt(&"a".repeat(1000)), prompt(&"b".repeat(1000))];
    let at: Vec<*const u8> = requests
        .iter()
        .map(|r| r.messages[0].content.as_ptr())
        .collect();
    let results = cache.complete_batch(requests, &BatchOptions::new(2)).await;
    assert!(results.iter().all(Result::is_ok));
    let mut sent: Vec<*const u8> = mock
        .requests()
        .iter()
        .map(|r| r.messages[0].content.as_ptr())
        .collect();
    sent.sort();
    let mut expected = at;
    expected.sort();
    // The requests sent upstream hold the caller's prompt text, not copies of it.
    assert_eq!(sent, expected);
}
