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

/// The root model: answers with the context's length in characters.
fn counting_root(request: &ServerRequest) -> Reply {
    Reply::completion_for(
        request,
        "```repl\nFINAL(`chars=${context.len()}`)\n```".to_owned(),
    )
}

/// Estimated prompt tokens of the root model's requests (four bytes a token), the largest.
fn largest_root_prompt(mock: &MockServer) -> usize {
    mock.requests()
        .iter()
        .filter(|r| r.model() == ROOT)
        .map(|r| {
            r.messages()
                .iter()
                .map(|m| m["content"].as_str().unwrap_or_default().len().div_ceil(4) + 4)
                .sum::<usize>()
        })
        .max()
        .unwrap_or(0)
}

/// About 200 KB of numbered lines.
fn document() -> String {
    let mut document = String::new();
    let mut line = 0;
    while document.len() < 200_000 {
        line += 1;
        document.push_str(&format!(
            "Line {line}: the figure for region {line} is {line}.\n"
        ));
    }
    document
}

fn first_root_request(mock: &MockServer) -> String {
    mock.requests()
        .into_iter()
        .find(|r| r.model() == ROOT)
        .map(|r| r.body.to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_pasted_with_the_question_becomes_the_context() {
    // Before: the whole one-string input was the query, in every root prompt (about 50,000
    // tokens for 200 KB), and the context was empty.
    let message = format!("{}\nWhat is the total?", document());
    let chars = message.chars().count();
    let mock = MockServer::start(counting_root)
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let base = start(&mock, ServeOptions::default()).await;
    let client = reqwest::Client::new();
    let (status, body) = post(
        &client,
        &format!("{base}/responses"),
        json!({"input": message}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        format!("chars={chars}")
    );
    assert_eq!(body["rlm"]["moved_to_context"], 1);
    let tokens = largest_root_prompt(&mock);
    assert!(tokens < 4_000, "root prompt of {tokens} tokens");
    let first = first_root_request(&mock);
    assert!(first.contains("What is the total?"), "{first}");
    assert!(first.contains("the whole message is `context`"), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_instructions_become_the_context_too() {
    let instructions = format!("Use these figures.\n{}", document());
    let chars = instructions.chars().count();
    let mock = MockServer::start(counting_root)
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let base = start(&mock, ServeOptions::default()).await;
    let client = reqwest::Client::new();
    let (status, body) = post(
        &client,
        &format!("{base}/responses"),
        json!({"instructions": instructions, "input": "What is the total?"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["output"][0]["content"][0]["text"],
        format!("chars={chars}")
    );
    assert_eq!(body["rlm"]["moved_to_context"], 1);
    // The response echoes the instructions as sent.
    assert_eq!(body["instructions"], json!(instructions));
    let tokens = largest_root_prompt(&mock);
    assert!(tokens < 4_000, "root prompt of {tokens} tokens");
    let first = first_root_request(&mock);
    assert!(first.contains("Use these figures."), "{first}");
    assert!(first.contains("the whole message is `context`"), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_follow_up_message_is_refused_and_the_session_goes_on() {
    let mock = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let base = start(&mock, ServeOptions::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/responses");
    let (status, first) = post(
        &client,
        &url,
        json!({"input": [{"role": "user", "content": "abcd"}, {"role": "user", "content": "set"}]}),
    )
    .await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["output"][0]["content"][0]["text"], "n=4");
    // Before: the 200 KB follow-up reached the root model's prompt whole.
    let long = format!("{}\ndouble", document());
    for body in [
        json!({"input": long, "previous_response_id": first["id"]}),
        json!({"input": "double", "instructions": long, "previous_response_id": first["id"]}),
    ] {
        let (status, refused) = post(&client, &url, body).await;
        assert_eq!(status, 400, "{refused}");
        assert_eq!(refused["error"]["code"], "message_too_long");
        let message = refused["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("--inline-max-bytes (16384)"), "{message}");
    }
    // Nothing was claimed: the session continues from the same response.
    let (status, second) = post(
        &client,
        &url,
        json!({"input": "double", "previous_response_id": first["id"]}),
    )
    .await;
    assert_eq!(status, 200, "{second}");
    assert_eq!(second["output"][0]["content"][0]["text"], "twice=8");
    // The refused requests reached no model: 1 + 1 root calls only.
    assert_eq!(mock.requests().len(), 2);
    assert!(largest_root_prompt(&mock) < 4_000);
}
