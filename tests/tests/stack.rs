//! The whole library stack, as the CLI assembles it, against a real HTTP server on 127.0.0.1:
//! `OpenAiBackend` -> `CachedBackend` -> `Rlm`, with a scripted root model and faults injected
//! at the server. These are the failures peers get wrong: unbounded fan-out, a 429 that turns
//! into an empty answer, a refused call that silently becomes an empty string.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rlm_cache::CachedBackend;
use rlm_core::{BatchExecutor, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_repl::{Context, Rlm, RunResult, StopReason};
use rlm_tests::{MockServer, Reply, ServerRequest, fixtures, rlm_handler};

const NEEDLE: &str = "the vault code is 4217";

/// The root model's program: chunk, ask every chunk in one batch, report what it found,
/// including any item that failed.
fn root_script(max_concurrent: usize) -> Vec<String> {
    vec![
        format!(
            "```repl\nlet chunks = chunk(context, 20000);\n\
             let prompts = chunks.map(|c| \"Quote the line with the vault code, or say none.\\n\" + c);\n\
             let answers = llm_batch(prompts + prompts, {max_concurrent});\n\
             let failed = answers.filter(|a| a.starts_with(\"Error:\"));\n\
             let found = answers.filter(|a| a.contains(\"vault code\"));\n\
             print(`${{chunks.len()}} chunks, ${{failed.len()}} failed`);\n\
             if failed.len() > 0 {{ print(failed[0]); }}\n\
             let answer = if found.len() > 0 {{ found[0] }} else {{ \"not found\" }};\n```"
        ),
        "FINAL_VAR(answer)".to_owned(),
    ]
}

/// A sub model that reads its chunk: the needle's line, or "none".
fn reader(prompt: &str) -> String {
    prompt
        .lines()
        .find(|line| line.contains("vault code is"))
        .unwrap_or("none")
        .to_owned()
}

fn backend(server: &MockServer) -> Arc<CachedBackend<OpenAiBackend>> {
    let config = OpenAiConfig::new()
        .with_base_url(server.base_url())
        .with_api_key("sk-stack-test")
        .with_retry_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .with_max_retries(3);
    let provider = OpenAiBackend::new(config).unwrap_or_else(|e| panic!("backend: {e}"));
    Arc::new(CachedBackend::new(provider))
}

async fn run(server: &MockServer) -> RunResult {
    let backend = backend(server);
    let root: Arc<dyn LlmBackend> = backend.clone();
    let sub: Arc<dyn BatchExecutor> = backend;
    let rlm = Rlm::builder(root)
        .root_model("root")
        .sub_backend(sub)
        .sub_model("sub")
        .build()
        .unwrap_or_else(|e| panic!("rlm: {e}"));
    let context = fixtures::haystack(4_000, 3_210, NEEDLE, 11);
    rlm.run("What is the vault code?", Context::from(context))
        .await
        .unwrap_or_else(|e| panic!("run: {e}"))
}

fn sub_requests(server: &MockServer) -> Vec<ServerRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.model() == "sub")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_bounded_deduplicated_and_answers() {
    let server = MockServer::builder()
        .latency(Duration::from_millis(20))
        .start(rlm_handler("root", root_script(6), reader))
        .await
        .unwrap_or_else(|e| panic!("server: {e}"));
    let result = run(&server).await;

    assert_eq!(result.stopped, StopReason::Final);
    assert_eq!(result.answer, NEEDLE);
    let subs = sub_requests(&server);
    // 4,000 lines of ~81 bytes in 20,000-character chunks: 17 distinct prompts, each sent
    // twice by the script, reach the server once each.
    assert_eq!(subs.len(), 17, "duplicates are sent once");
    assert_eq!(result.sub_calls, 34);
    assert_eq!(
        server.peak_in_flight(),
        6,
        "bounded at the batch's limit, and reaching it"
    );
    assert!(
        result.trajectory[0].blocks[0]
            .output
            .contains("17 chunks, 0 failed")
    );
}

#[tokio::test]
async fn rate_limits_are_waited_out_not_turned_into_empty_answers() {
    // Every prompt is refused with 429 the first time the server sees it.
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let handler = {
        let inner = rlm_handler("root", root_script(4), reader);
        let (seen, refused) = (Arc::clone(&seen), Arc::clone(&refused));
        move |request: &ServerRequest| {
            if request.model() == "sub" {
                let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                let count = seen.entry(request.last_user().to_owned()).or_default();
                *count += 1;
                if *count == 1 {
                    refused.fetch_add(1, Ordering::SeqCst);
                    return Reply::error(429, "requests", "rate_limit_exceeded", "slow down")
                        .header("retry-after-ms", "50");
                }
            }
            inner(request)
        }
    };
    let server = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("server: {e}"));
    let result = run(&server).await;

    assert_eq!(
        result.answer, NEEDLE,
        "the needle survives a 429 on every prompt"
    );
    assert_eq!(refused.load(Ordering::SeqCst), 17);
    assert_eq!(
        sub_requests(&server).len(),
        34,
        "each prompt: one 429, one retry"
    );
    assert!(result.trajectory[0].blocks[0].output.contains("0 failed"));
    assert!(server.peak_in_flight() <= 4);
}

#[tokio::test]
async fn a_refused_sub_call_is_an_error_the_root_model_sees() {
    // The chunk holding the needle is refused for good (a 400 no retry can fix, for this
    // prompt alone); every other item is kept. (A 401 would stop the run: every call shares
    // it.)
    let handler = {
        let inner = rlm_handler("root", root_script(8), reader);
        move |request: &ServerRequest| {
            if request.model() == "sub" && request.last_user().contains("vault code is") {
                return Reply::error(
                    400,
                    "invalid_request_error",
                    "content_policy_violation",
                    "refused by policy",
                );
            }
            inner(request)
        }
    };
    let server = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("server: {e}"));
    let result = run(&server).await;

    let output = &result.trajectory[0].blocks[0].output;
    // The refused prompt appears twice in the batch; the error is never cached, so both
    // items fail, visibly, and the other 32 answers are kept.
    assert!(output.contains("17 chunks, 2 failed"), "{output}");
    assert!(
        output.contains("Error: bad request (HTTP 400): refused by policy"),
        "{output}"
    );
    assert!(!output.contains("sk-stack-test"));
    assert_eq!(
        result.answer, "not found",
        "no invented answer, no empty answer"
    );
    let failed = result.trajectory[0]
        .sub_calls
        .iter()
        .filter(|call| !call.ok)
        .count();
    assert_eq!(failed, 2);
}

/// Connections a 10,000-item batch at `max_concurrent` opens through the cache and an
/// OpenAI backend whose pool keeps `pool` idle connections.
async fn connections_for_batch(pool: usize, max_concurrent: usize) -> usize {
    let server = MockServer::builder()
        .record(false)
        .start(|request: &ServerRequest| Reply::completion_for(request, "ok"))
        .await
        .expect("server");
    let config = OpenAiConfig::new()
        .with_base_url(server.base_url())
        .with_api_key("sk-stack-test")
        .with_max_retries(0)
        .with_concurrency(pool);
    let provider = OpenAiBackend::new(config).unwrap_or_else(|e| panic!("backend: {e}"));
    let backend = CachedBackend::new(provider);
    let requests: Vec<_> = (0..10_000)
        .map(|i| rlm_core::CompletionRequest::prompt("sub", format!("prompt {i}")))
        .collect();
    let results = backend
        .complete_batch(requests, &rlm_core::BatchOptions::new(max_concurrent))
        .await;
    assert_eq!(results.len(), 10_000);
    assert!(results.iter().all(Result::is_ok));
    server.connections()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_sized_to_the_batch_opens_one_connection_per_call_in_flight() {
    let opened = connections_for_batch(101, 100).await;
    // About one per call in flight: a few more when a new connection races a call's
    // return (the pool then keeps whichever is idle), never one a call.
    assert!(
        (50..=200).contains(&opened),
        "{opened} connections for 10,000 calls at 100 in flight"
    );
}
