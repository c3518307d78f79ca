//! `response_format` through `rlm_serve::serve` over real HTTP on 127.0.0.1: the run's output
//! schema, the JSON content, 422 `schema_not_met` (and its stream form), 400 for a format
//! that cannot be used.
#![cfg(feature = "serve")]

use std::sync::Arc;
use std::time::Duration;

use rlm_core::{BatchExecutor, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_repl::RlmConfig;
use rlm_serve::Runner;
use rlm_serve::serve::{ServeOptions, serve};
use rlm_tests::{MockServer, Reply, ServerRequest, scripted_turn};
use serde_json::{Value, json};

const ROOT: &str = "root";

/// The root model answers by the query: "good" a conforming object at once, anything else
/// plain text every time.
fn handler(request: &ServerRequest) -> Reply {
    let first = request
        .messages()
        .get(1)
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let reply = if first.contains("Query: good") {
        "FINAL({\"city\": \"Oslo\", \"population\": 709000})"
    } else {
        "FINAL(Oslo, I think)"
    };
    scripted_turn(request, &vec![reply.to_owned(); 5])
}

async fn start() -> (MockServer, String) {
    let mock = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let config = OpenAiConfig::new()
        .with_base_url(mock.base_url())
        .with_api_key("sk-test")
        .with_retry_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .with_max_retries(0);
    let backend = OpenAiBackend::new(config).unwrap_or_else(|e| panic!("backend: {e}"));
    let root: Arc<dyn LlmBackend> = Arc::new(backend.clone());
    let sub: Arc<dyn BatchExecutor> = Arc::new(backend);
    let runner = Runner::new(
        root,
        sub,
        RlmConfig {
            root_model: ROOT.into(),
            max_iterations: 5,
            ..RlmConfig::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(serve(
        listener,
        runner,
        ServeOptions::default(),
        std::future::pending(),
    ));
    (mock, format!("http://{addr}"))
}

fn city_format() -> Value {
    json!({"type": "json_schema", "json_schema": {"name": "city", "strict": true, "schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": false
    }}})
}

async fn post(base: &str, body: &Value) -> (u16, String) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    let status = response.status().as_u16();
    (status, response.text().await.unwrap_or_default())
}

fn body(query: &str, format: Value) -> Value {
    json!({"model": "rlm", "messages": [{"role": "user", "content": query}],
           "response_format": format})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conforming_answer_is_the_json_content() {
    let (_mock, base) = start().await;
    for format in [city_format(), json!({"type": "json_object"})] {
        let (status, text) = post(&base, &body("good: largest city?", format)).await;
        assert_eq!(status, 200, "{text}");
        let reply: Value = serde_json::from_str(&text).unwrap_or_default();
        let content = reply["choices"][0]["message"]["content"]
            .as_str()
            .unwrap_or_default();
        assert_eq!(content, r#"{"city":"Oslo","population":709000}"#);
        assert_eq!(reply["choices"][0]["finish_reason"], "stop");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_conforming_answer_is_a_422_never_a_200() {
    let (mock, base) = start().await;
    let (status, text) = post(&base, &body("bad: largest city?", city_format())).await;
    assert_eq!(status, 422, "{text}");
    let error: Value = serde_json::from_str(&text).unwrap_or_default();
    assert_eq!(error["error"]["type"], "invalid_output", "{text}");
    assert_eq!(error["error"]["code"], "schema_not_met", "{text}");
    assert!(
        error["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("stopped: invalid_output") && m.contains("at /")),
        "{text}"
    );
    // The first answer and two retries (the default), then the run ended.
    assert_eq!(mock.request_count(), 3);

    // json_object: plain text is not an object either.
    let (status, _) = post(&base, &body("bad", json!({"type": "json_object"}))).await;
    assert_eq!(status, 422);
    // Without a format, the same text is a plain answer.
    let (status, text) = post(
        &base,
        &json!({"model": "rlm", "messages": [
        {"role": "user", "content": "bad"}]}),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_without_a_conforming_answer_ends_with_the_error_and_no_content() {
    let (_mock, base) = start().await;
    let mut request = body("bad: largest city?", city_format());
    request["stream"] = json!(true);
    let (status, text) = post(&base, &request).await;
    assert_eq!(status, 200);
    let data: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last().copied(), Some("[DONE]"), "{text}");
    let events: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_default())
        .collect();
    assert!(
        events.iter().all(|e| e["choices"][0]["delta"]["content"]
            .as_str()
            .unwrap_or("")
            .is_empty()),
        "{text}"
    );
    let last = events.last().cloned().unwrap_or_default();
    assert_eq!(last["error"]["code"], "schema_not_met", "{text}");

    let mut request = body("good: largest city?", city_format());
    request["stream"] = json!(true);
    let (_, text) = post(&base, &request).await;
    let content: String = text
        .lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|e| {
            e["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(content, r#"{"city":"Oslo","population":709000}"#);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_format_that_cannot_be_used_is_a_400() {
    let (mock, base) = start().await;
    for format in [
        json!({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}),
        json!({"type": "json_schema", "json_schema": {"name": "x"}}),
        json!({"type": "yaml"}),
    ] {
        let (status, text) = post(&base, &body("good", format)).await;
        assert_eq!(status, 400, "{text}");
        assert!(text.contains("invalid_response_format"), "{text}");
    }
    assert_eq!(mock.request_count(), 0);
}

async fn post_responses(base: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

/// The Responses API's `text.format` (the flat shape) is the run's output schema too: the
/// output text is the conforming JSON; no conforming answer is a 422, never a completed
/// response with wrong text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_responses_apis_text_format_is_the_output_schema() {
    let (mock, base) = start().await;
    let format = json!({"type": "json_schema", "name": "city", "strict": true, "schema":
        city_format()["json_schema"]["schema"].clone()});
    let (status, reply) = post_responses(
        &base,
        &json!({"model": "rlm", "input": "good: largest city?", "text": {"format": format}}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["output"][0]["content"][0]["text"], r#"{"city":"Oslo","population":709000}"#,
        "{reply}"
    );

    let before = mock.request_count();
    let (status, reply) = post_responses(
        &base,
        &json!({"model": "rlm", "input": "bad: largest city?", "text": {"format": format}}),
    )
    .await;
    assert_eq!(status, 422, "{reply}");
    assert_eq!(reply["error"]["code"], "schema_not_met", "{reply}");
    assert_eq!(
        mock.request_count() - before,
        3,
        "the answer and two retries"
    );

    let (status, reply) = post_responses(
        &base,
        &json!({"model": "rlm", "input": "good", "text": {"format": {"type": "yaml"}}}),
    )
    .await;
    assert_eq!(status, 400, "{reply}");
    assert_eq!(reply["error"]["code"], "invalid_response_format", "{reply}");
}

/// `stop` and `max_tokens` cut an answer; a typed answer cut would no longer conform, so
/// with a schema they are refused, naming the parameter, before any model call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_max_tokens_are_refused_for_a_typed_answer() {
    let (mock, base) = start().await;
    for (param, value) in [("stop", json!(["}"])), ("max_tokens", json!(5))] {
        let mut request = body("good: largest city?", city_format());
        request[param] = value;
        let (status, text) = post(&base, &request).await;
        assert_eq!(status, 400, "{text}");
        let error: Value = serde_json::from_str(&text).unwrap_or_default();
        assert_eq!(error["error"]["code"], "unsupported_parameter", "{text}");
        assert_eq!(error["error"]["param"], param, "{text}");
    }
    assert_eq!(mock.request_count(), 0);
}
