//! Dispatch overhead of `OpenAiBackend::complete_batch` against the in-process loopback
//! mock server.
//!
//! For each point (N requests, C concurrent, server latency L) it reports the wall time of a
//! batch (median and best of the repetitions) over the ideal `ceil(N / C) * L`, the
//! sub-calls per second (from the median), and the CPU time per call of the whole process.
//! `floor` is how long the runtime's `sleep(latency)` really takes over `latency`: the mock
//! server waits that way (tokio's timer has millisecond ticks), so it is the ratio a client
//! that cost nothing would reach.
//! Client and server share the process (and the machine's cores), so the numbers are a
//! lower bound of what the client alone can do.
//!
//! ```text
//! cargo bench -p rlm-openai --bench dispatch
//! cargo bench -p rlm-openai --bench dispatch -- 1000x100@100 10000x64@0
//! RLM_BENCH_POINTS="1000x100@100" RLM_BENCH_REPS=5 cargo bench -p rlm-openai --bench dispatch
//! ```
//!
//! A point is `NxC@LATENCY_MS`; `RLM_BENCH_REPS` (default 3) sets the repetitions per point
//! (the median is reported); `RLM_BENCH_THREADS` the runtime's worker threads (default: one
//! per core).

use std::time::{Duration, Instant};

use rlm_core::{BatchExecutor, BatchOptions, CompletionRequest};
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_tests::{MockServer, Reply};

#[derive(Debug, Clone, Copy)]
struct Point {
    n: usize,
    c: usize,
    latency: Duration,
}

impl Point {
    fn parse(text: &str) -> Option<Self> {
        let (n, rest) = text.split_once('x')?;
        let (c, latency) = rest.split_once('@')?;
        Some(Self {
            n: n.trim().parse().ok()?,
            c: c.trim().parse().ok()?,
            latency: Duration::from_millis(latency.trim().parse().ok()?),
        })
    }

    fn ideal(&self) -> Duration {
        self.latency * u32::try_from(self.n.div_ceil(self.c.max(1))).unwrap_or(u32::MAX)
    }
}

const DEFAULT_POINTS: &str = "100x16@100 1000x16@100 1000x100@100 1000x1000@100 \
                              10000x100@100 10000x1000@100 \
                              10000x16@0 10000x64@0 10000x100@0 10000x256@0 10000x1000@0";

fn points() -> Vec<Point> {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let text = if args.is_empty() {
        std::env::var("RLM_BENCH_POINTS").unwrap_or_else(|_| DEFAULT_POINTS.to_owned())
    } else {
        args.join(" ")
    };
    text.split([' ', ','])
        .filter(|t| !t.is_empty())
        .filter_map(|t| {
            let point = Point::parse(t);
            if point.is_none() {
                eprintln!("ignoring {t:?}: expected NxC@LATENCY_MS, e.g. 1000x100@100");
            }
            point
        })
        .collect()
}

/// CPU time (user + system) this process has used so far, where `/proc` tells it (Linux).
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which is in parentheses and may hold spaces).
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel reports clock ticks, 100 a second on every mainstream Linux build.
    Some(Duration::from_millis(ticks * 10))
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn requests(n: usize) -> Vec<CompletionRequest> {
    (0..n)
        .map(|i| {
            CompletionRequest::prompt(
                "bench-model",
                format!("Summarise chunk {i} of the context."),
            )
        })
        .collect()
}

/// How long `tokio::time::sleep(latency)` really takes on this runtime: the mock server
/// waits that way, so `measured / latency` is the ratio a client costing nothing would get.
async fn timer_floor(latency: Duration) -> Option<f64> {
    if latency.is_zero() {
        return None;
    }
    let rounds = 5;
    let start = Instant::now();
    for _ in 0..rounds {
        tokio::time::sleep(latency).await;
    }
    Some(start.elapsed().as_secs_f64() / rounds as f64 / latency.as_secs_f64())
}

/// What one point measured.
struct Measured {
    /// Wall time of each repetition.
    times: Vec<Duration>,
    /// CPU time of the process per call, over every repetition.
    cpu_per_call: Option<Duration>,
    /// See [`timer_floor`].
    floor: Option<f64>,
}

async fn run(point: Point, reps: usize) -> Measured {
    let server = MockServer::builder()
        .latency(point.latency)
        .record(false)
        .start(|request| Reply::completion_for(request, "a short answer"))
        .await
        .unwrap_or_else(|e| panic!("cannot start the mock server: {e}"));
    let backend = OpenAiBackend::new(
        OpenAiConfig::new()
            .with_base_url(server.base_url())
            .with_api_key("sk-bench")
            .with_concurrency(point.c),
    )
    .unwrap_or_else(|e| panic!("cannot build the backend: {e}"));
    let options = BatchOptions::new(point.c);

    // Warm-up: open the pool's connections.
    let warm = backend
        .complete_batch(requests(point.c.min(point.n)), &options)
        .await;
    assert!(warm.iter().all(Result::is_ok), "warm-up failed");

    let floor = timer_floor(point.latency).await;
    let mut times = Vec::with_capacity(reps);
    let cpu_before = cpu_time();
    for _ in 0..reps {
        let batch = requests(point.n);
        let start = Instant::now();
        let results = backend.complete_batch(batch, &options).await;
        times.push(start.elapsed());
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            let first = results.iter().find_map(|r| r.as_ref().err());
            panic!("{failed} of {} failed; first: {first:?}", point.n);
        }
    }
    let calls = u32::try_from(point.n * reps).unwrap_or(u32::MAX).max(1);
    let cpu_per_call = match (cpu_before, cpu_time()) {
        (Some(before), Some(after)) => Some(after.saturating_sub(before) / calls),
        _ => None,
    };
    Measured {
        times,
        cpu_per_call,
        floor,
    }
}

fn main() {
    let reps = env_number("RLM_BENCH_REPS", 3).max(1);
    let threads = env_number(
        "RLM_BENCH_THREADS",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"));

    println!("rlm-openai dispatch: {threads} worker threads, {reps} repetitions per point");
    println!(
        "{:>6} {:>5} {:>8} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7} {:>8} {:>12}",
        "N",
        "C",
        "latency",
        "ideal",
        "median",
        "best",
        "ratio",
        "best",
        "floor",
        "calls/s",
        "cpu µs/call"
    );
    for point in points() {
        let Measured {
            mut times,
            cpu_per_call,
            floor,
        } = runtime.block_on(run(point, reps));
        times.sort();
        let median = times[times.len() / 2];
        let best = times[0];
        let ideal = point.ideal();
        let ratio = |wall: Duration| {
            if ideal.is_zero() {
                "-".to_owned()
            } else {
                format!("{:.3}", wall.as_secs_f64() / ideal.as_secs_f64())
            }
        };
        let cpu = cpu_per_call.map_or("-".to_owned(), |c| format!("{:.1}", c.as_secs_f64() * 1e6));
        let floor = floor.map_or("-".to_owned(), |f| format!("{f:.3}"));
        println!(
            "{:>6} {:>5} {:>6}ms {:>8.3}s {:>8.3}s {:>8.3}s {:>7} {:>7} {:>7} {:>8.0} {:>12}",
            point.n,
            point.c,
            point.latency.as_millis(),
            ideal.as_secs_f64(),
            median.as_secs_f64(),
            best.as_secs_f64(),
            ratio(median),
            ratio(best),
            floor,
            point.n as f64 / median.as_secs_f64(),
            cpu,
        );
    }
}
