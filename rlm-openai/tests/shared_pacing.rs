//! Rate limits shared through Redis, against a real `redis-server` on a loopback port. The
//! books are checked over simulated minutes: the pacer reads a test clock instead of
//! Redis's `TIME`, and the test advances it by the waits the pacer asks for.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rlm_openai::{RateLimit, RedisPacer, SharedPacer};
use rlm_tests::RedisServer;

/// Simulated microseconds, one clock per test.
static CLOCK_A: AtomicU64 = AtomicU64::new(1_000_000_000_000);
static CLOCK_B: AtomicU64 = AtomicU64::new(1_000_000_000_000);
static CLOCK_C: AtomicU64 = AtomicU64::new(1_000_000_000_000);

fn clock_a() -> u64 {
    CLOCK_A.load(Ordering::SeqCst)
}
fn clock_b() -> u64 {
    CLOCK_B.load(Ordering::SeqCst)
}
fn clock_c() -> u64 {
    CLOCK_C.load(Ordering::SeqCst)
}

/// The largest total cost admitted within any window of `window` microseconds.
fn max_in_window(admitted: &[(u64, u64)], window: u64) -> u64 {
    let mut best = 0;
    let mut total = 0;
    let mut start = 0;
    for &(at, cost) in admitted {
        total += cost;
        while admitted[start].0 + window <= at {
            total -= admitted[start].1;
            start += 1;
        }
        best = best.max(total);
    }
    best
}

/// `processes` pacers on one Redis each try to send `calls` requests of the given token
/// cost as fast as they are let, on the simulated `clock`; returns the admissions (time in
/// µs, cost), in time order.
async fn simulate(
    redis: &RedisServer,
    prefix: &str,
    (clock, read): (&'static AtomicU64, fn() -> u64),
    limit: RateLimit,
    processes: usize,
    calls: usize,
    cost: impl Fn(usize) -> u64,
) -> Vec<(u64, u64)> {
    let pacers: Vec<RedisPacer> = (0..processes)
        .map(|_| {
            RedisPacer::new(&redis.url(), prefix)
                .expect("a pacer")
                .with_clock(read)
        })
        .collect();
    let start = clock.load(Ordering::SeqCst);
    // (next try time, process)
    let mut queue: BinaryHeap<Reverse<(u64, usize)>> =
        (0..processes).map(|p| Reverse((start, p))).collect();
    let mut admitted = Vec::new();
    while admitted.len() < calls {
        let Some(Reverse((at, p))) = queue.pop() else {
            break;
        };
        clock.store(at, Ordering::SeqCst);
        let this = cost(admitted.len());
        let wait = pacers[p]
            .admit("model", limit, this)
            .await
            .expect("Redis answers");
        if wait.is_zero() {
            admitted.push((at, this));
            queue.push(Reverse((at, p)));
        } else {
            let wait = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
            queue.push(Reverse((at + wait.max(1), p)));
        }
    }
    admitted
}

const SECOND: u64 = 1_000_000;
const MINUTE: u64 = 60 * SECOND;

async fn four_processes_share_one_budget_paced_smoothly() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 600 a minute: a burst of 10, then 10 a second, over 2.5 simulated minutes.
    let limit = RateLimit::new(600, 0);
    let admitted = simulate(&redis, "four", (&CLOCK_A, clock_a), limit, 4, 1_500, |_| 1).await;
    assert_eq!(admitted.len(), 1_500);
    let most = max_in_window(&admitted, MINUTE);
    assert!(most <= 600, "{most} requests within a minute");
    let most = max_in_window(&admitted, SECOND);
    assert!(most <= 20, "{most} requests within a second");
    // And not slower than the budget allows: 1,500 at 600 a minute is 150 s (less the burst).
    let span = admitted[1_499].0 - admitted[0].0;
    assert!(span <= 152 * SECOND, "{span} µs for 1,500 requests");
}

async fn token_budgets_hold_across_processes_even_for_large_requests() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 6,000 tokens a minute (a burst of 100) and 120 requests; costs from 1 to 1,500.
    let limit = RateLimit::new(120, 6_000);
    let admitted = simulate(&redis, "tokens", (&CLOCK_B, clock_b), limit, 3, 200, |i| {
        1 + (i as u64 * 7_919) % 1_500
    })
    .await;
    let most = max_in_window(&admitted, MINUTE);
    assert!(most <= 6_000, "{most} tokens within a minute");
    let requests: Vec<(u64, u64)> = admitted.iter().map(|(at, _)| (*at, 1)).collect();
    assert!(max_in_window(&requests, MINUTE) <= 120);
}

async fn a_servers_pause_holds_every_process() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let a = RedisPacer::new(&redis.url(), "pause")
        .expect("a pacer")
        .with_clock(clock_c);
    let b = RedisPacer::new(&redis.url(), "pause")
        .expect("a pacer")
        .with_clock(clock_c);
    let limit = RateLimit::new(6_000, 0);
    assert_eq!(b.admit("m", limit, 1).await, Some(Duration::ZERO));
    a.pause("m", Duration::from_secs(10)).await;
    // A shorter pause never shortens it.
    a.pause("m", Duration::from_secs(1)).await;
    let wait = b.admit("m", limit, 1).await.expect("Redis answers");
    assert!(wait > Duration::from_millis(9_900), "{wait:?}");
    // Other models are not held.
    assert_eq!(b.admit("other", limit, 1).await, Some(Duration::ZERO));
    CLOCK_C.fetch_add(10 * SECOND, Ordering::SeqCst);
    assert_eq!(b.admit("m", limit, 1).await, Some(Duration::ZERO));
}

async fn without_redis_the_pacer_says_so_quickly_and_recovers() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let pacer = RedisPacer::new(&redis.url(), "down").expect("a pacer");
    let limit = RateLimit::new(600, 0);
    assert_eq!(pacer.admit("m", limit, 1).await, Some(Duration::ZERO));
    redis.stop();
    // On a paused clock the time spent is the pacer's own timers, whatever the machine's
    // load: the first call gives up after its 1 s operation timeout...
    tokio::time::pause();
    let start = tokio::time::Instant::now();
    assert_eq!(pacer.admit("m", limit, 1).await, None);
    let first = start.elapsed();
    // ...and while it is known down, no time is spent on it at all.
    assert_eq!(pacer.admit("m", limit, 1).await, None);
    let second = start.elapsed() - first;
    tokio::time::resume();
    assert!(first <= Duration::from_millis(1_100), "{first:?}");
    assert_eq!(second, Duration::ZERO);
    redis.resume();
    let mut back = false;
    for _ in 0..40 {
        if pacer.admit("m", limit, 1).await.is_some() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the pacer uses Redis again once it is back");
}

async fn the_books_count_the_processes_that_share_them() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pacers: Vec<RedisPacer> = (0..4)
        .map(|_| RedisPacer::new(&redis.url(), "procs").expect("a pacer"))
        .collect();
    let limit = RateLimit::new(6_000, 0);
    for pacer in &pacers {
        assert_eq!(pacer.admit("m", limit, 1).await, Some(Duration::ZERO));
    }
    // The last to ask saw all four; each one's count is the share it keeps to if Redis goes.
    assert_eq!(pacers[3].processes("m"), 4);
    assert_eq!(pacers[3].processes("other"), 1);
    // Asking again does not count a process twice.
    assert_eq!(pacers[0].admit("m", limit, 1).await, Some(Duration::ZERO));
    assert_eq!(pacers[0].processes("m"), 4);
}

/// Far-future values written into the pacing hash by something else (a bug, a clock far
/// off, a person): no process may wait on them.
async fn garbage_in_the_shared_state_never_stops_the_calls() {
    use rlm_core::{CompletionRequest, LlmBackend};
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let server = rlm_tests::MockServer::start(|request: &rlm_tests::ServerRequest| {
        rlm_tests::Reply::completion_for(request, "ok")
    })
    .await
    .expect("the mock server");
    for field in ["pause", "rtat", "ttat"] {
        let prefix = format!("garbage-{field}");
        let set = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "HSET"])
            .arg(format!("{prefix}:pace:m"))
            .args([field, "99999999999999999"])
            .output()
            .expect("redis-cli runs");
        assert!(set.status.success());
        let pacer = std::sync::Arc::new(RedisPacer::new(&redis.url(), &prefix).expect("a pacer"));
        let backend = rlm_openai::OpenAiBackend::new(
            rlm_openai::OpenAiConfig::new()
                .with_base_url(server.base_url())
                .with_api_key("sk-test")
                .with_rate_limit(RateLimit::new(6_000, 1_000_000))
                .with_shared_pacer(pacer.clone()),
        )
        .expect("a backend");
        // A safety bound only: the damaged state asked for about 3,000 years.
        let answered = tokio::time::timeout(Duration::from_secs(60), async {
            for i in 0..3 {
                let reply = backend
                    .complete(CompletionRequest::prompt("m", format!("q{i}")))
                    .await;
                assert_eq!(reply.map(|c| c.text).ok().as_deref(), Some("ok"));
            }
        })
        .await;
        assert!(answered.is_ok(), "{field}: calls waited on the garbage");
        // The state was reset, so the shared books work again for every process.
        assert_eq!(
            pacer.admit("m", RateLimit::new(6_000, 0), 1).await,
            Some(Duration::ZERO),
            "{field}"
        );
    }
}

fn a_pacer_made_outside_a_runtime_works_inside_one() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let pacer = RedisPacer::new(&redis.url(), "outside").expect("a pacer");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let admitted = runtime.block_on(pacer.admit("m", RateLimit::new(600, 0), 1));
    assert_eq!(admitted, Some(Duration::ZERO));
}

fn main() -> std::process::ExitCode {
    rlm_tests::harness::Suite::new()
        .needs("redis-server", rlm_tests::redis_server_binary().is_some())
        .tokio(
            "four_processes_share_one_budget_paced_smoothly",
            four_processes_share_one_budget_paced_smoothly,
        )
        .tokio(
            "token_budgets_hold_across_processes_even_for_large_requests",
            token_budgets_hold_across_processes_even_for_large_requests,
        )
        .tokio(
            "a_servers_pause_holds_every_process",
            a_servers_pause_holds_every_process,
        )
        .tokio(
            "without_redis_the_pacer_says_so_quickly_and_recovers",
            without_redis_the_pacer_says_so_quickly_and_recovers,
        )
        .tokio(
            "the_books_count_the_processes_that_share_them",
            the_books_count_the_processes_that_share_them,
        )
        .tokio(
            "garbage_in_the_shared_state_never_stops_the_calls",
            garbage_in_the_shared_state_never_stops_the_calls,
        )
        .test(
            "a_pacer_made_outside_a_runtime_works_inside_one",
            a_pacer_made_outside_a_runtime_works_inside_one,
        )
        .run()
}
