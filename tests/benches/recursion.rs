//! Recursion over the whole library stack (OpenAI backend, cache, REPL, loop) against the
//! loopback mock server:
//!
//! 1. the overhead of starting a child run (its REPL scope and first turn) at zero latency;
//! 2. a tree of 1 root -> 16 children -> 16 x 10 sub-calls at 200 ms a call, C = 16: wall
//!    time against the ideal (root turn, child turn, child batch, child FINAL turn, root
//!    FINAL turn: five 200 ms steps = 1.0 s).
//!
//! `cargo bench -p rlm-tests --bench recursion`

use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_core::{BatchExecutor, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_repl::{Context, Rlm};
use rlm_tests::{MockServer, Reply, ServerRequest, scripted_turn};

const CHILDREN: usize = 16;

fn backend(server: &MockServer) -> Arc<OpenAiBackend> {
    let config = OpenAiConfig::new()
        .with_base_url(server.base_url())
        .with_api_key("sk-bench")
        .with_concurrency(256);
    Arc::new(OpenAiBackend::new(config).unwrap_or_else(|e| panic!("backend: {e}")))
}

async fn server(latency: Duration, children: usize) -> MockServer {
    let root = vec![
        format!(
            "```repl\nlet r = rlm_batch(range({children}).map(|i| `part ${{i}}`));\nprint(r.len());\n```"
        ),
        "FINAL(done)".to_owned(),
    ];
    let child = vec![
        "```repl\nlet a = llm_batch(range(10).map(|i| `q ${i} ` + context));\nprint(a.len());\n```"
            .to_owned(),
        "FINAL_VAR(a)".to_owned(),
    ];
    MockServer::builder()
        .latency(latency)
        .record(false)
        .start(move |request: &ServerRequest| match request.model() {
            "root" => scripted_turn(request, &root),
            "child" => scripted_turn(request, &child),
            _ => Reply::completion_for(request, "ok"),
        })
        .await
        .unwrap_or_else(|e| panic!("server: {e}"))
}

async fn run_tree(server: &MockServer, max_concurrent: usize) -> Duration {
    let backend = backend(server);
    let root: Arc<dyn LlmBackend> = backend.clone();
    let sub: Arc<dyn BatchExecutor> = backend;
    let rlm = Rlm::builder(root)
        .root_model("root")
        .sub_backend(sub)
        .sub_model("sub")
        .child_model("child")
        .max_concurrent(max_concurrent)
        .build()
        .unwrap_or_else(|e| panic!("rlm: {e}"));
    let started = Instant::now();
    let result = rlm
        .run("q", Context::from("x"))
        .await
        .unwrap_or_else(|e| panic!("run: {e}"));
    assert_eq!(result.answer, "done");
    started.elapsed()
}

#[tokio::main]
async fn main() {
    // 1. Child start overhead: 64 children, one at a time, zero latency.
    let fast = server(Duration::ZERO, 64).await;
    run_tree(&fast, 1).await; // warm up
    let mut per_child = Vec::new();
    for _ in 0..5 {
        let wall = run_tree(&fast, 1).await;
        per_child.push(wall.as_secs_f64() * 1000.0 / 64.0);
    }
    per_child.sort_by(f64::total_cmp);
    println!(
        "child run (scope + 2 turns + a 10-call batch), zero latency, sequential: \
         median {:.2} ms per child (min {:.2}, max {:.2})",
        per_child[2], per_child[0], per_child[4]
    );

    // 2. The tree at 200 ms per call.
    let slow = server(Duration::from_millis(200), CHILDREN).await;
    let ideal = 1.0;
    let mut ratios = Vec::new();
    for _ in 0..3 {
        let wall = run_tree(&slow, CHILDREN).await.as_secs_f64();
        ratios.push(wall / ideal);
        println!("1 root -> {CHILDREN} children -> {CHILDREN} x 10 sub-calls @ 200 ms, C = {CHILDREN}: {wall:.3} s, {:.3}x the ideal {ideal:.1} s", wall / ideal);
    }
}
