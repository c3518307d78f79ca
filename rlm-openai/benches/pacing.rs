//! The cost of sharing rate limits through Redis ([`RedisPacer`]), against a `redis-server`
//! started on a loopback port and the in-process loopback mock server.
//!
//! ```text
//! cargo bench -p rlm-openai --features redis --bench pacing
//! ```
//!
//! 1. One `admit` round trip (Lua script, one task, no limit binding): median and p99.
//! 2. 3,000 calls at `--rpm 60000` (1,000 calls/s after a burst of 1,000), 64 at once, with
//!    the local limiter alone and with Redis pacing too: wall time, achieved rate after the
//!    burst, and CPU per call of the whole process (client, server, pacer; Redis is another
//!    process, not counted).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_core::{BatchExecutor, BatchOptions, CompletionRequest};
use rlm_openai::{OpenAiBackend, OpenAiConfig, RateLimit, RedisPacer, SharedPacer};
use rlm_tests::{MockServer, RedisServer, Reply, ServerRequest};

fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).copied().unwrap_or(f64::NAN)
}

/// Sends `calls` requests at 60,000 a minute, 64 at once, and prints what it took.
async fn batch(server: &MockServer, shared: Option<RedisPacer>, calls: usize) {
    let label = if shared.is_some() {
        "Redis pacing"
    } else {
        "local only"
    };
    let mut config = OpenAiConfig::new()
        .with_base_url(server.base_url())
        .with_concurrency(64)
        .with_rate_limit(RateLimit::new(60_000, 0));
    if let Some(pacer) = shared {
        config = config.with_shared_pacer(Arc::new(pacer));
    }
    let backend = OpenAiBackend::new(config).expect("a backend");
    let requests: Vec<CompletionRequest> = (0..calls)
        .map(|i| CompletionRequest::prompt("m", format!("call {i}")))
        .collect();
    let cpu = cpu_time();
    let start = Instant::now();
    let results = backend
        .complete_batch(requests, &BatchOptions::new(64))
        .await;
    let wall = start.elapsed();
    let cpu = match (cpu, cpu_time()) {
        (Some(before), Some(after)) => {
            format!("{:.1}", (after - before).as_secs_f64() * 1e6 / calls as f64)
        }
        _ => "-".to_owned(),
    };
    assert!(results.iter().all(Result::is_ok));
    // The first 1,000 go at once (a second's share); the rest at 1,000 a second.
    let ideal = (calls - 1_000) as f64 / 1_000.0;
    println!(
        "{label:>12}: {calls} calls in {:.2} s (ideal {ideal:.2} s), {cpu} µs CPU per call",
        wall.as_secs_f64(),
    );
}

fn main() {
    let Some(redis) = RedisServer::start() else {
        println!("pacing: skipped (no redis-server)");
        return;
    };
    let url = redis.url();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let pacer = RedisPacer::new(&url, "bench-rtt").expect("a pacer");
        let limit = RateLimit::new(u32::MAX, 0);
        for _ in 0..200 {
            let _ = pacer.admit("m", limit, 1).await;
        }
        let mut samples = Vec::new();
        for _ in 0..5_000 {
            let start = Instant::now();
            let admitted = pacer.admit("m", limit, 1).await;
            samples.push(start.elapsed().as_secs_f64() * 1e6);
            assert_eq!(admitted, Some(Duration::ZERO));
        }
        println!(
            "admit round trip (Lua script, one task): median {:.0} µs, p99 {:.0} µs",
            percentile(&mut samples, 0.5),
            percentile(&mut samples, 0.99)
        );

        let server = MockServer::builder()
            .record(false)
            .start(|request: &ServerRequest| Reply::completion_for(request, "ok"))
            .await
            .expect("a server");
        for round in 0..3 {
            batch(&server, None, 3_000).await;
            let shared = RedisPacer::new(&url, &format!("bench-{round}")).expect("a pacer");
            batch(&server, Some(shared), 3_000).await;
        }
    });
}
