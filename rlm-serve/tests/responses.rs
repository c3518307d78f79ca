//! The Responses API of `rlm serve` over HTTP against the loopback mock model server (the
//! official `openai` client drives it too: `rlm-cli/tests/sessions.rs`).
#![cfg(feature = "serve")]

use std::sync::Arc;
use std::time::Duration;

use rlm_core::{BatchExecutor, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_repl::RlmConfig;
use rlm_serve::Runner;
use rlm_serve::serve::{ServeOptions, serve};
use rlm_tests::{MockServer, Reply, ServerRequest};
use serde_json::{Value, json};

const ROOT: &str = "root";

/// The root model: the first question sets `n`, a follow-up reads it.
fn handler(request: &ServerRequest) -> Reply {
    let first = request
        .messages()
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let code = if first.contains("Query: set") {
        "let n = context.len();\nFINAL(`n=${n}`)"
    } else {
        "FINAL(`twice=${n * 2}`)"
    };
    Reply::completion_for(request, format!("```repl\n{code}\n```"))
}

async fn start(mock: &MockServer, options: ServeOptions) -> String {
    let config = OpenAiConfig::new()
        .with_base_url(mock.base_url())
        .with_api_key("sk-test")
        .with_max_retries(0);
    let backend = OpenAiBackend::new(config).unwrap_or_else(|e| panic!("backend: {e}"));
    let root: Arc<dyn LlmBackend> = Arc::new(backend.clone());
    let sub: Arc<dyn BatchExecutor> = Arc::new(backend);
    let config = RlmConfig {
        root_model: ROOT.into(),
        max_iterations: 2,
        ..RlmConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(serve(
        listener,
        Runner::new(root, sub, config),
        options,
        std::future::pending(),
    ));
    format!("http://{addr}/v1")
}

async fn post(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = client
        .post(url)
        .json(&body)
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previous_response_id_continues_the_session_and_eviction_is_a_404() {
    let mock = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let base = start(
        &mock,
        ServeOptions {
            max_sessions: 1,
            ..ServeOptions::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    let url = format!("{base}/responses");
    let (status, first) = post(
        &client,
        &url,
        json!({"input": [{"role": "user", "content": "abcd"}, {"role": "user", "content": "set"}]}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["object"], "response");
    assert_eq!(first["status"], "completed");
    assert_eq!(first["output"][0]["content"][0]["text"], "n=4");
    let (status, second) = post(
        &client,
        &url,
        json!({"input": "double", "previous_response_id": first["id"]}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["output"][0]["content"][0]["text"], "twice=8");
    assert_eq!(second["previous_response_id"], first["id"]);

    // GET returns it; a new session evicts this one (--max-sessions 1): 404.
    let got: Value = client
        .get(format!(
            "{url}/{}",
            second["id"].as_str().unwrap_or_default()
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or(Value::Null);
    assert_eq!(got["id"], second["id"]);
    let (status, _) = post(
        &client,
        &url,
        json!({"input": [{"role": "user", "content": "xy"}, {"role": "user", "content": "set"}]}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, gone) = post(
        &client,
        &url,
        json!({"input": "double", "previous_response_id": second["id"]}),
    )
    .await;
    assert_eq!(status, 404, "{gone}");
    assert_eq!(gone["error"]["code"], "session_not_found");
    assert_eq!(gone["error"]["type"], "invalid_request_error");
    // Refused requests reach no model: 2 + 1 root calls only.
    assert_eq!(mock.requests().len(), 3);
}
