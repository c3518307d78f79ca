//! Batch processing: many sub-calls at once instead of one after another.
//!
//! ```text
//! cargo run -p rlm-examples --example batch                      # offline
//! OPENAI_API_KEY=sk-... cargo run -p rlm-examples --example batch  # a real endpoint
//! ```
//!
//! Part 1 calls the backend directly: the same chunk prompts sent one by one with
//! `complete`, then together with `complete_batch` (bounded concurrency, results in input
//! order, one `Result` per item). Part 2 runs an RLM whose root model splits the context into
//! chunks and sends them all with `llm_batch`.
//!
//! With `OPENAI_API_KEY` set it uses `OPENAI_BASE_URL` (default: the OpenAI API) and
//! `RLM_MODEL` (default `gpt-4o-mini`), and a real root model writes its own code. Without a
//! key it starts a loopback OpenAI-compatible server on 127.0.0.1 that answers sub-calls
//! after 100 ms and plays a scripted root model. Times are measured on your machine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_core::{BatchExecutor, BatchOptions, CompletionRequest, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_repl::{Context, Event, Rlm};
use rlm_tests::{MockServer, Reply, ServerRequest};

/// Lines per chunk, in both parts.
const CHUNK_LINES: usize = 25;
const MAX_CONCURRENT: usize = 8;
const QUESTION: &str = "On which day is the product launch, according to the notes?";

/// The offline root model: split into chunks of 25 lines (`chunk_lines`, a native helper),
/// one `llm_batch`, keep the answers that found something.
const SCRIPT: [&str; 2] = [
    r#"I'll split the notes into chunks and ask about all of them at once.

```repl
let chunks = chunk_lines(context, 25);
let prompts = chunks.map(|c| "Quote the sentence of this text that gives the launch date, or reply NONE.\n\n" + c);
let answers = llm_batch(prompts);
let found = [];
for (a, i) in answers {
    if a.starts_with("Error:") { print("chunk " + i + " failed: " + a); }
    else if a != "NONE" { found.push(a); }
}
print(found.len() + " of " + chunks.len() + " chunks mention it");
```"#,
    "FINAL_VAR(found)",
];

/// Meeting notes with the launch date hidden in one line.
fn notes() -> String {
    let mut text = String::new();
    let topics = [
        "budget", "hiring", "roadmap", "support", "pricing", "security",
    ];
    for week in 1..=40 {
        for (k, topic) in topics.iter().enumerate() {
            if week == 29 && k == 2 {
                text.push_str("Roadmap: the product launch is on Thursday, 14 May.\n");
            } else {
                text.push_str(&format!(
                    "Week {week}, {topic}: discussed {topic} items, no decision yet; follow up next week.\n"
                ));
            }
        }
    }
    text
}

/// The offline server's answers: root turns from the script, sub-calls by reading the chunk.
fn offline_reply(request: &ServerRequest) -> Reply {
    if request.model() == "offline-root" {
        let turn = request.assistant_turns();
        let reply = SCRIPT.get(turn).copied().unwrap_or("FINAL(no more script)");
        return Reply::completion_for(request, reply).after(Duration::from_millis(20));
    }
    let prompt = request.last_user();
    let answer = prompt
        .lines()
        .find(|line| line.contains("launch is on"))
        .unwrap_or("NONE");
    Reply::completion_for(request, answer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (backend, root_model, sub_model, _server) =
        if std::env::var("OPENAI_API_KEY").is_ok_and(|k| !k.is_empty()) {
            let model = std::env::var("RLM_MODEL").unwrap_or_else(|_| "gpt-4o-mini".to_owned());
            let backend = OpenAiBackend::new(OpenAiConfig::from_env())?;
            (backend, model.clone(), model, None)
        } else {
            let server = MockServer::builder()
                .latency(Duration::from_millis(100))
                .start(offline_reply)
                .await?;
            println!(
                "no OPENAI_API_KEY: loopback server at {}, 100 ms per sub-call\n",
                server.base_url()
            );
            let backend = OpenAiBackend::new(OpenAiConfig::new().with_base_url(server.base_url()))?;
            (
                backend,
                "offline-root".to_owned(),
                "offline-sub".to_owned(),
                Some(server),
            )
        };

    let context = notes();
    let lines: Vec<&str> = context.lines().collect();
    let chunks: Vec<String> = lines.chunks(CHUNK_LINES).map(|c| c.join("\n")).collect();
    let prompt = |chunk: &str| {
        CompletionRequest::prompt(
            &sub_model,
            format!(
                "Quote the sentence of this text that gives the launch date, or reply NONE.\n\n{chunk}"
            ),
        )
    };

    // Part 1: the backend alone.
    println!("part 1: {} chunk prompts against the backend", chunks.len());
    let start = Instant::now();
    let mut sequential = Vec::new();
    for chunk in &chunks {
        sequential.push(backend.complete(prompt(chunk)).await);
    }
    let sequential_time = start.elapsed();

    let start = Instant::now();
    let requests = chunks.iter().map(|c| prompt(c)).collect();
    let batched = backend
        .complete_batch(requests, &BatchOptions::new(MAX_CONCURRENT))
        .await;
    let batch_time = start.elapsed();

    let failed = batched.iter().filter(|r| r.is_err()).count();
    println!("  one by one:         {sequential_time:>10.2?}");
    println!(
        "  complete_batch({MAX_CONCURRENT}): {batch_time:>10.2?}  ({failed} failed, results in input order)"
    );
    println!(
        "  speed-up: {:.1}x",
        sequential_time.as_secs_f64() / batch_time.as_secs_f64().max(1e-9)
    );
    let agree = sequential
        .iter()
        .zip(&batched)
        .filter(|(a, b)| matches!((a, b), (Ok(a), Ok(b)) if a.text == b.text))
        .count();
    println!(
        "  {agree} of {} answers identical in both runs\n",
        chunks.len()
    );

    // Part 2: an RLM whose code sends the chunks with llm_batch.
    println!("part 2: an RLM run over {} chars", context.len());
    let backend = Arc::new(backend);
    let rlm = Rlm::builder(backend.clone())
        .root_model(&root_model)
        .sub_backend(backend)
        .sub_model(&sub_model)
        .max_concurrent(MAX_CONCURRENT)
        .max_iterations(10)
        .observer(Arc::new(|event: &Event| match event {
            Event::BatchStart {
                total,
                max_concurrent,
                ..
            } => {
                println!("  llm_batch: {total} prompts, {max_concurrent} at once");
            }
            Event::BatchEnd {
                failed, elapsed_ms, ..
            } => {
                println!("  llm_batch done in {elapsed_ms} ms, {failed} failed");
            }
            _ => {}
        }))
        .build()?;
    let result = rlm.run(QUESTION, Context::Text(context)).await?;
    println!("  answer: {}", result.answer);
    println!(
        "  {} turns, {} sub-calls, {} ms, stopped: {}",
        result.iterations,
        result.sub_calls,
        result.elapsed.as_millis(),
        result.stopped
    );
    Ok(())
}
