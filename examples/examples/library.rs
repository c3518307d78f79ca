//! The library API from Rust: an OpenAI-compatible backend, the cache decorator, usage
//! metering, an `Rlm` with observers, and what a run returns.
//!
//! ```text
//! cargo run -p rlm-examples --example library                      # offline
//! OPENAI_API_KEY=sk-... cargo run -p rlm-examples --example library  # a real endpoint
//! ```
//!
//! With `OPENAI_API_KEY` set it talks to `OPENAI_BASE_URL` (default: the OpenAI API) with
//! `RLM_MODEL` (default `gpt-4o-mini`) as root model and `RLM_SUB_MODEL` (default: the same)
//! for sub-calls. Without a key it starts a loopback OpenAI-compatible server on 127.0.0.1
//! whose root model is scripted, so the whole HTTP stack runs offline.

use std::sync::Arc;
use std::time::Duration;

use rlm_cache::CachedBackend;
use rlm_core::usage::{Metered, UsageTracker};
use rlm_core::{BatchExecutor, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig, RateLimit};
use rlm_repl::{Context, Event, Rlm};
use rlm_tests::{MockServer, rlm_handler};

const QUERY: &str = "Which products do customers complain about?";

/// The offline root model's replies, turn by turn.
const SCRIPT: [&str; 2] = [
    r#"I will ask the sub model about each review at once.

```repl
let verdicts = llm_batch(context.map(|r| "Is this review a complaint? Answer yes or no.\n\n" + r));
let products = [];
for (verdict, i) in verdicts {
    if verdict == "yes" {
        let product = context[i].split(":")[0];
        if !products.contains(product) { products.push(product); }
    }
}
let answer = "Complaints about: " + products.reduce(|sum, p| if sum == "" { p } else { sum + ", " + p }, "");
print(answer);
```"#,
    "FINAL_VAR(answer)",
];

fn reviews() -> Vec<String> {
    [
        "kettle: Arrived broken, the lid does not close.",
        "toaster: Works great, toasts evenly.",
        "kettle: Arrived broken, the lid does not close.", // a duplicate: the cache sends it once
        "blender: Loud, and it stopped working after a week. I want a refund.",
        "lamp: Lovely light.",
    ]
    .map(str::to_owned)
    .to_vec()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A real endpoint when a key is set, else a loopback server with a scripted root model.
    let (config, root_model, sub_model, _server) =
        if std::env::var("OPENAI_API_KEY").is_ok_and(|k| !k.is_empty()) {
            let root = std::env::var("RLM_MODEL").unwrap_or_else(|_| "gpt-4o-mini".to_owned());
            let sub = std::env::var("RLM_SUB_MODEL").unwrap_or_else(|_| root.clone());
            (OpenAiConfig::from_env(), root, sub, None)
        } else {
            let replies = SCRIPT.map(str::to_owned).to_vec();
            let server = MockServer::builder()
                .latency(Duration::from_millis(50))
                .start(rlm_handler("offline-root", replies, |prompt| {
                    let complaint = prompt.contains("broken") || prompt.contains("refund");
                    if complaint { "yes" } else { "no" }.to_owned()
                }))
                .await?;
            println!(
                "no OPENAI_API_KEY: using a loopback server at {}",
                server.base_url()
            );
            let config = OpenAiConfig::new().with_base_url(server.base_url());
            (
                config,
                "offline-root".to_owned(),
                "offline-sub".to_owned(),
                Some(server),
            )
        };

    // The provider: pooled HTTP, 500 requests a minute per model, 3 retries.
    let provider = OpenAiBackend::new(
        config
            .with_rate_limit(RateLimit::new(500, 0))
            .with_max_retries(3)
            .with_request_timeout(Duration::from_secs(120)),
    )?;
    // Meter what reaches the provider, and deduplicate sub-calls above it.
    let tracker = UsageTracker::new();
    let metered = Metered::new(provider, tracker.clone());
    let cache = Arc::new(CachedBackend::new(metered.clone()));
    let root: Arc<dyn LlmBackend> = Arc::new(metered);
    let sub: Arc<dyn BatchExecutor> = cache.clone();

    // Observers see every event; here, a line per turn and per batch.
    let log = |event: &Event| match event {
        Event::TurnStart { turn } => println!("turn {turn} ..."),
        Event::BatchEnd {
            total,
            failed,
            elapsed_ms,
            ..
        } => println!("  llm_batch: {total} prompts, {failed} failed, {elapsed_ms} ms"),
        Event::CodeBlock { error: Some(e), .. } => println!("  code error: {e}"),
        _ => {}
    };

    let rlm = Rlm::builder(root)
        .root_model(&root_model)
        .sub_backend(sub)
        .sub_model(&sub_model)
        .max_iterations(8)
        .max_concurrent(8)
        .max_time(Duration::from_secs(300))
        .observer(Arc::new(log))
        .build()?;

    let result = rlm.run(QUERY, Context::Documents(reviews())).await?;

    println!("\nanswer: {}", result.answer);
    println!(
        "stopped: {}, {} turns, {} sub-calls, {} ms",
        result.stopped,
        result.iterations,
        result.sub_calls,
        result.elapsed.as_millis()
    );
    for (model, usage) in tracker.snapshot() {
        println!(
            "sent to {model}: {} calls, {} prompt + {} completion tokens",
            usage.calls, usage.prompt_tokens, usage.completion_tokens
        );
    }
    let stats = cache.stats();
    println!(
        "cache: {} hits, {} duplicates shared, {} upstream calls",
        stats.hits, stats.coalesced, stats.upstream_calls
    );
    for turn in &result.trajectory {
        for block in &turn.blocks {
            println!("--- turn {} code ---\n{}", turn.turn, block.code.trim());
        }
    }
    Ok(())
}
