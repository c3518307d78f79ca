//! Benchmarks of `CachedBackend`: the latency of one hit, hit throughput under many
//! concurrent tasks, and a 1,000-prompt batch with 50% duplicates, cached and uncached.
//!
//! Run with `cargo bench -p rlm-cache --bench cache` (append `-- latency`, `-- throughput` or
//! `-- batch` for one section). With `--features disk,redis`, `-- tiers` measures hits in
//! the disk tier and in Redis (a `redis-server` started on a loopback port) the same way. The backend answers at once (zero
//! latency, no recording), so the numbers are the cache's own overhead.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rlm_cache::CachedBackend;
use rlm_core::{BatchExecutor, BatchOptions, Completion, CompletionRequest, LlmBackend, LlmError};
use tokio::runtime::{Builder, Runtime};

/// Answers at once with a short reply.
struct Instant0;

#[async_trait]
impl LlmBackend for Instant0 {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        Ok(Completion::new(
            request.model,
            "A short answer of about sixty bytes, as sub-calls often give.",
        ))
    }
}

impl BatchExecutor for Instant0 {}

/// Like [`Instant0`], but encodes each request as JSON first, as an HTTP client must: the
/// least a real provider call costs locally.
struct Encoding;

#[async_trait]
impl LlmBackend for Encoding {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let body = serde_json::to_vec(&request).map_err(|e| LlmError::other(e.to_string()))?;
        black_box(body.len());
        Instant0.complete(request).await
    }
}

impl BatchExecutor for Encoding {}

/// A prompt of `size` bytes, distinct for each `seed`.
fn prompt_text(size: usize, seed: usize) -> String {
    let mut text = format!("[{seed}] Summarize the following passage. ");
    const WORDS: [&str; 8] = [
        "context ",
        "haystack ",
        "needle ",
        "document ",
        "recursive ",
        "language ",
        "model ",
        "chunk ",
    ];
    let mut i = seed;
    while text.len() < size {
        text.push_str(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    text.truncate(size);
    text
}

fn request(size: usize, seed: usize) -> CompletionRequest {
    CompletionRequest::prompt("gpt-4o-mini", prompt_text(size, seed))
        .with_system("You are a careful reader.")
        .with_temperature(0.0)
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(f64::NAN)
}

fn current_thread() -> Runtime {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn label(size: usize) -> String {
    if size >= 1000 {
        format!("{} KB", size / 1000)
    } else {
        format!("{size} B")
    }
}

/// Nanoseconds per `complete` hit in one task, and per building the request alone.
fn hit_latency(size: usize) {
    let runtime = current_thread();
    let cache = CachedBackend::new(Instant0);
    let template = request(size, 1);
    runtime.block_on(async {
        let _ = cache.complete(template.clone()).await;
    });
    let iterations = if size > 10_000 { 20_000 } else { 200_000 };

    let mut clone_only = Vec::new();
    let mut with_hit = Vec::new();
    for _ in 0..7 {
        let start = Instant::now();
        for _ in 0..iterations {
            black_box(template.clone());
        }
        clone_only.push(start.elapsed().as_nanos() as f64 / iterations as f64);

        let start = Instant::now();
        runtime.block_on(async {
            for _ in 0..iterations {
                let reply = cache.complete(template.clone()).await;
                black_box(reply.is_ok());
            }
        });
        with_hit.push(start.elapsed().as_nanos() as f64 / iterations as f64);
    }
    let (clone_ns, hit_ns) = (median(clone_only), median(with_hit));
    println!(
        "hit latency, {:>6} prompt: {:>8.0} ns per call ({:>7.0} ns building the request, {:>8.0} ns in the cache)",
        label(size),
        hit_ns,
        clone_ns,
        hit_ns - clone_ns
    );
}

/// Hits per second with `tasks` concurrent tasks on a 2-thread runtime.
fn hit_throughput(size: usize, tasks: usize) {
    let runtime = Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let cache = Arc::new(CachedBackend::new(Instant0));
    // A few distinct prompts, all cached.
    let templates: Arc<Vec<CompletionRequest>> =
        Arc::new((0..8).map(|s| request(size, s)).collect());
    runtime.block_on(async {
        for template in templates.iter() {
            let _ = cache.complete(template.clone()).await;
        }
    });
    let per_task = if size > 10_000 { 2_000 } else { 20_000 };
    let mut rates = Vec::new();
    for _ in 0..5 {
        let start = Instant::now();
        runtime.block_on(async {
            let handles: Vec<_> = (0..tasks)
                .map(|t| {
                    let cache = Arc::clone(&cache);
                    let templates = Arc::clone(&templates);
                    tokio::spawn(async move {
                        for i in 0..per_task {
                            let template = &templates[(t + i) % templates.len()];
                            let reply = cache.complete(template.clone()).await;
                            black_box(reply.is_ok());
                        }
                    })
                })
                .collect();
            for handle in handles {
                let _ = handle.await;
            }
        });
        rates.push((tasks * per_task) as f64 / start.elapsed().as_secs_f64());
    }
    let stats = cache.stats();
    assert_eq!(stats.misses, 8, "every timed call was a hit");
    println!(
        "hit throughput, {:>6} prompt, {tasks} tasks on 2 threads: {:>6.2} M hits/s (request building included)",
        label(size),
        median(rates) / 1e6
    );
}

/// 1,000 prompts, 500 distinct, each twice (in a scattered order).
fn half_duplicates(size: usize) -> Vec<CompletionRequest> {
    (0..1000).map(|i| request(size, (i * 7919) % 500)).collect()
}

fn time_batch<E: BatchExecutor>(
    runtime: &Runtime,
    executor: &E,
    requests: &[CompletionRequest],
) -> Duration {
    let batch = requests.to_vec();
    let options = BatchOptions::new(16);
    let start = Instant::now();
    let results = runtime.block_on(executor.complete_batch(batch, &options));
    let elapsed = start.elapsed();
    assert!(results.iter().all(Result::is_ok));
    elapsed
}

fn batch(size: usize) {
    let runtime = current_thread();
    let requests = half_duplicates(size);
    let mut uncached = Vec::new();
    let mut encoding = Vec::new();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for _ in 0..9 {
        uncached.push(time_batch(&runtime, &Instant0, &requests).as_secs_f64());
        encoding.push(time_batch(&runtime, &Encoding, &requests).as_secs_f64());
        let cache = CachedBackend::new(Instant0);
        cold.push(time_batch(&runtime, &cache, &requests).as_secs_f64());
        warm.push(time_batch(&runtime, &cache, &requests).as_secs_f64());
        let stats = cache.stats();
        assert_eq!(
            (stats.misses, stats.hits, stats.coalesced),
            (500, 1000, 500)
        );
    }
    println!(
        "batch of 1,000 {:>6} prompts, 50% duplicates: uncached {:>6.2} ms (1,000 calls; {:>6.2} ms if each call encodes its JSON body), cold cache {:>6.2} ms (500 calls), warm cache {:>6.2} ms (0 calls)",
        label(size),
        median(uncached) * 1e3,
        median(encoding) * 1e3,
        median(cold) * 1e3,
        median(warm) * 1e3
    );
}

/// Hit latency and throughput of a persistent or shared tier, on its own (no memory cache in
/// front, which would answer first), and a warm batch of 1,000 distinct prompts.
#[cfg(any(feature = "disk", feature = "redis"))]
fn tier<S: rlm_cache::Store + 'static>(name: &str, make: impl Fn() -> S) {
    use rlm_cache::StoredBackend;
    for size in [100, 25_000] {
        let runtime = current_thread();
        let backend = StoredBackend::new(Instant0, make());
        let templates: Vec<CompletionRequest> = (0..8).map(|s| request(size, s)).collect();
        runtime.block_on(async {
            for template in &templates {
                let _ = backend.complete(template.clone()).await;
            }
        });
        let iterations = 3_000;
        let mut latency = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            runtime.block_on(async {
                for i in 0..iterations {
                    let reply = backend.complete(templates[i % 8].clone()).await;
                    black_box(reply.is_ok());
                }
            });
            latency.push(start.elapsed().as_secs_f64() * 1e6 / iterations as f64);
        }
        assert_eq!(
            backend.hits(),
            5 * iterations as u64,
            "every timed call was a hit"
        );

        let threads = Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let backend = Arc::new(StoredBackend::new(Instant0, make()));
        let templates = Arc::new(templates);
        let per_task = 200;
        let mut rates = Vec::new();
        for _ in 0..3 {
            let start = Instant::now();
            threads.block_on(async {
                let handles: Vec<_> = (0..64)
                    .map(|t| {
                        let backend = Arc::clone(&backend);
                        let templates = Arc::clone(&templates);
                        tokio::spawn(async move {
                            for i in 0..per_task {
                                let reply = backend.complete(templates[(t + i) % 8].clone()).await;
                                black_box(reply.is_ok());
                            }
                        })
                    })
                    .collect();
                for handle in handles {
                    let _ = handle.await;
                }
            });
            rates.push((64 * per_task) as f64 / start.elapsed().as_secs_f64());
        }

        let distinct: Vec<CompletionRequest> =
            (0..1000).map(|i| request(size, 1_000 + i)).collect();
        let backend = StoredBackend::new(Instant0, make());
        let _ = time_batch(&runtime, &backend, &distinct);
        let mut warm = Vec::new();
        for _ in 0..5 {
            warm.push(time_batch(&runtime, &backend, &distinct).as_secs_f64());
        }
        let start = Instant::now();
        for i in 0..iterations {
            black_box(rlm_cache::StoreKey::of(&templates[i % 8]));
        }
        let key_us = start.elapsed().as_secs_f64() * 1e6 / iterations as f64;
        println!(
            "{name} tier, {:>6} prompt: key {key_us:>5.1} µs, hit {:>7.1} µs (one task), {:>7.0} hits/s (64 tasks on 2 threads), warm batch of 1,000 distinct {:>7.2} ms",
            label(size),
            median(latency),
            median(rates),
            median(warm) * 1e3
        );
    }
}

#[cfg(any(feature = "disk", feature = "redis"))]
fn tiers() {
    #[cfg(feature = "disk")]
    {
        let dir = std::env::temp_dir().join(format!("rlm-cache-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        tier("disk", || {
            rlm_cache::DiskStore::open(&dir, rlm_cache::DiskConfig::default())
                .expect("the disk cache opens")
        });
        let _ = std::fs::remove_dir_all(&dir);
    }
    #[cfg(feature = "redis")]
    match rlm_tests::RedisServer::start() {
        Some(redis) => tier("redis", || {
            rlm_cache::RedisStore::new(&redis.url(), "bench", None).expect("a store")
        }),
        None => println!("redis tier: skipped (no redis-server)"),
    }
}

fn main() {
    // `cargo bench -p rlm-cache --bench cache -- latency` runs only the matching sections.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted =
        |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    if wanted("latency") {
        for size in [100, 25_000] {
            hit_latency(size);
        }
    }
    if wanted("throughput") {
        for size in [100, 25_000] {
            hit_throughput(size, 64);
        }
    }
    if wanted("batch") {
        for size in [100, 25_000] {
            batch(size);
        }
    }
    #[cfg(any(feature = "disk", feature = "redis"))]
    if wanted("tiers") {
        tiers();
    }
}
