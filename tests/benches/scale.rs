//! Scale over the whole library stack (OpenAI backend with its pool, cache, REPL, loop)
//! against the in-process loopback mock server.
//!
//! 1. Throughput: one `llm_batch` of 10,000 distinct prompts at zero latency, cache on, at
//!    C = 16, 100 and 500: calls per second over the whole run, and TCP connections opened.
//! 2. Copies: a 100 MB context cut into 1,000 prompts of 100 KB sent at C = 500, zero latency,
//!    the chunks as they are and made into prompts by `map`: how far the peak resident memory
//!    rises above the memory held before the run (context included).
//! 3. The moonshot (opt-in, `RLM_BENCH_MOONSHOT=1`; about 3 GB of memory, no disk): a
//!    generated 1 GB text context cut into 10,000 sub-calls of 100 KB, each made into a
//!    prompt (`chunk(context, 100000).map(...)`), C = 500, 1 s per
//!    sub-call at the server (root turns answer at once). Prints wall / ideal, where the
//!    ideal is 20 s of sub-calls plus the time to load the context into the REPL, the peak
//!    resident memory of the process (server included) and the connections opened.
//!
//! `cargo bench -p rlm-tests --bench scale` (`RLM_BENCH_MOONSHOT=1` for 3).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_cache::CachedBackend;
use rlm_core::{BatchExecutor, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_repl::{Context, Rlm, SharedContext};
use rlm_tests::{MockServer, Reply, ServerRequest, scripted_turn};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;

/// Resident and peak resident bytes of this process (`/proc/self/status`; 0 elsewhere).
fn memory() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<usize>()
                    .ok()
            })
            .map_or(0, |kib| kib * KIB)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Resets the peak resident memory to the current one (Linux: `clear_refs` 5).
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Text of about `bytes` bytes in numbered lines of about 100 bytes.
fn text(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + 128);
    let mut line = 0usize;
    while text.len() < bytes {
        use std::fmt::Write;
        let _ = writeln!(
            text,
            "line {line:>9}: the quick brown fox jumps over the lazy dog while the logs roll by"
        );
        line += 1;
    }
    text
}

async fn server(sub_latency: Duration, root: Vec<String>) -> MockServer {
    MockServer::builder()
        .record(false)
        .start(move |request: &ServerRequest| match request.model() {
            "root" => scripted_turn(request, &root),
            _ => Reply::completion_for(request, "ok").after(sub_latency),
        })
        .await
        .unwrap_or_else(|e| panic!("server: {e}"))
}

/// The stack the CLI builds: the pool sized to the batch, the cache over the backend.
fn rlm(server: &MockServer, max_concurrent: usize) -> Rlm {
    let config = OpenAiConfig::new()
        .with_base_url(server.base_url())
        .with_api_key("sk-bench")
        .with_max_retries(0)
        .with_request_timeout(Duration::from_secs(600))
        .with_concurrency(max_concurrent + 1);
    let backend = Arc::new(CachedBackend::new(
        OpenAiBackend::new(config).unwrap_or_else(|e| panic!("backend: {e}")),
    ));
    let root: Arc<dyn LlmBackend> = backend.clone();
    let sub: Arc<dyn BatchExecutor> = backend;
    Rlm::builder(root)
        .root_model("root")
        .sub_backend(sub)
        .sub_model("sub")
        .max_concurrent(max_concurrent)
        .max_iterations(4)
        .build()
        .unwrap_or_else(|e| panic!("rlm: {e}"))
}

fn block(code: &str) -> String {
    format!("```repl\n{code}\n```")
}

/// Runs one batch of `n` prompts over `context` in chunks of `chunk` bytes (or of `n` short
/// prompts when `chunk` is 0), the chunks sent as they are or, with `prompts`, made into
/// prompts first (the natural code: `chunk(context, size).map(|c| ...)`); returns the wall
/// time, the answer and the connections opened.
async fn batch_run(
    latency: Duration,
    max_concurrent: usize,
    context: Context,
    n: usize,
    chunk: usize,
    prompts: bool,
) -> (Duration, String, usize) {
    let code = if chunk == 0 {
        format!("let r = llm_batch(range({n}).map(|i| `prompt ${{i}}`)); print(r.len());")
    } else if prompts {
        format!(
            "let prompts = chunk(context, {chunk}).map(|c| \"Summarize this part:\\n\" + c);\n\
             let r = llm_batch(prompts); print(r.len());"
        )
    } else {
        format!("let parts = chunk(context, {chunk}); let r = llm_batch(parts); print(r.len());")
    };
    let server = server(latency, vec![block(&code), "FINAL_VAR(r)".to_owned()]).await;
    let rlm = rlm(&server, max_concurrent);
    let started = Instant::now();
    let result = rlm
        .run("q", context)
        .await
        .unwrap_or_else(|e| panic!("run: {e}"));
    let wall = started.elapsed();
    let ok = result.answer.matches("\"ok\"").count();
    assert_eq!(
        ok,
        n,
        "every sub-call answered: {}",
        &result.answer[..result.answer.len().min(300)]
    );
    (wall, format!("{ok} answers"), server.connections())
}

#[tokio::main]
async fn main() {
    let moonshot = std::env::var_os("RLM_BENCH_MOONSHOT").is_some_and(|v| v != "0");
    if !moonshot {
        // 1. Throughput.
        for c in [16, 100, 500] {
            let mut rates = Vec::new();
            let mut opened = 0;
            for _ in 0..3 {
                let (wall, _, connections) =
                    batch_run(Duration::ZERO, c, Context::from("x"), 10_000, 0, false).await;
                rates.push(10_000.0 / wall.as_secs_f64());
                opened = connections;
            }
            rates.sort_by(f64::total_cmp);
            println!(
                "whole stack, zero latency, 10,000 prompts, C = {c}: median {:.0} calls/s \
                 (min {:.0}, max {:.0}), {opened} connections opened",
                rates[1], rates[0], rates[2]
            );
        }

        // 2. Copies: the chunks sent as they are, then made into prompts first.
        let context = text(100 * MIB);
        let n = context.len().div_ceil(100_000);
        let shared = SharedContext::new(Context::from(context));
        for (prompts, what) in [(false, "the chunks"), (true, "chunk(..).map(..) prompts")] {
            let (held, _) = memory();
            reset_peak();
            let (wall, _, opened) = batch_run(
                Duration::ZERO,
                500,
                Context::from(shared.clone()),
                n,
                100_000,
                prompts,
            )
            .await;
            let (_, peak) = memory();
            println!(
                "100 MB context -> {n} prompts of 100 KB ({what}), C = 500, zero latency: \
                 {:.2} s, peak resident {} MiB above the {} MiB held before (context \
                 included), {opened} connections",
                wall.as_secs_f64(),
                peak.saturating_sub(held) / MIB,
                held / MIB
            );
        }
        return;
    }

    // 3. The moonshot.
    let latency = Duration::from_secs(1);
    let context = text(1000 * MIB);
    let n = context.len().div_ceil(100_000);
    let bytes = context.len();
    let started = Instant::now();
    let shared = SharedContext::new(Context::from(context));
    let load = started.elapsed();
    let (wall, _, opened) = batch_run(latency, 500, Context::from(shared), n, 100_000, true).await;
    let ideal = load + latency * u32::try_from(n.div_ceil(500)).unwrap_or(u32::MAX);
    let (_, peak) = memory();
    println!(
        "moonshot: {} MB context -> {n} sub-calls of 100 KB, C = 500, 1 s a sub-call: load \
         {:.2} s, run {:.2} s, wall {:.2} s = {:.3}x the ideal {:.2} s; peak resident {:.2} \
         GiB; {opened} connections opened",
        bytes / 1_000_000,
        load.as_secs_f64(),
        wall.as_secs_f64(),
        (load + wall).as_secs_f64(),
        (load + wall).as_secs_f64() / ideal.as_secs_f64(),
        ideal.as_secs_f64(),
        peak as f64 / (1u64 << 30) as f64
    );
}
