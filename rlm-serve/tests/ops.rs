//! What clients send and what operators expect of `rlm serve`, over real HTTP on 127.0.0.1:
//! long messages moved into the context, request parameters honoured or refused by name,
//! `GET /v1/models/{id}`, draining at shutdown, the access log and `GET /metrics`.
//! Replies are held at the mock server until a test releases them, so nothing depends on
//! timing.
#![cfg(feature = "serve")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rlm_cache::CachedBackend;
use rlm_core::{BatchExecutor, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_repl::RlmConfig;
use rlm_serve::Runner;
use rlm_serve::access_log::{AccessLog, LogFormat};
use rlm_serve::serve::{ServeOptions, serve};
use rlm_tests::{Handler, Hold, MockServer, ServerRequest, scripted_turn};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const ROOT: &str = "root";
const UPSTREAM_KEY: &str = "sk-upstream-never-show-me";
const SERVER_KEY: &str = "server-key-never-log-me";

fn code(code: &str) -> String {
    format!("Running some code.\n\n```repl\n{code}\n```")
}

/// A root model that answers with the context's length in characters.
fn counting_root(request: &ServerRequest) -> rlm_tests::Reply {
    scripted_turn(request, &[code(r#"FINAL("chars: " + context.len());"#)])
}

fn runner(mock: &MockServer) -> Runner {
    let config = OpenAiConfig::new()
        .with_base_url(mock.base_url())
        .with_api_key(UPSTREAM_KEY)
        .with_retry_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .with_max_retries(0)
        .with_concurrency(64);
    let backend = OpenAiBackend::new(config).unwrap_or_else(|e| panic!("backend: {e}"));
    let root: Arc<dyn LlmBackend> = Arc::new(backend.clone());
    let sub: Arc<dyn BatchExecutor> = Arc::new(CachedBackend::new(backend));
    let config = RlmConfig {
        root_model: ROOT.into(),
        sub_model: Some("sub".into()),
        max_iterations: 3,
        ..RlmConfig::default()
    };
    Runner::new(root, sub, config)
}

/// A server that stops when `stop` is sent; its base URL and the task serving it.
struct Server {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(mock: &MockServer, options: ServeOptions) -> Server {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, runner(mock), options, async move {
        let _ = stopped.await;
    }));
    Server {
        base: format!("http://{addr}"),
        stop: Some(stop),
        task,
    }
}

async fn mock(handler: impl Handler) -> MockServer {
    MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"))
}

async fn post(base: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(SERVER_KEY)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert!(!text.contains(UPSTREAM_KEY), "{text}");
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, value)
}

fn ask(content: &str) -> Value {
    json!({"model": "rlm", "messages": [{"role": "user", "content": content}]})
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pasted_document_becomes_the_context_and_the_root_prompt_stays_small() {
    // Before: the whole document was the query, in every root prompt (about 50,000 tokens
    // for 200 KB); the context was empty.
    let mut document = String::new();
    let mut line = 0;
    while document.len() < 200_000 {
        line += 1;
        document.push_str(&format!(
            "Line {line}: the quarterly figures for region {line}.\n"
        ));
    }
    let message = format!("{document}\nHow many characters does this document have?");
    let chars = message.chars().count();

    let mock = mock(counting_root).await;
    let server = start(&mock, ServeOptions::default()).await;
    let (status, body) = post(&server.base, &ask(&message)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        format!("chars: {chars}")
    );
    assert_eq!(body["rlm"]["moved_to_context"], 1);
    let tokens = largest_root_prompt(&mock);
    assert!(tokens < 4_000, "root prompt of {tokens} tokens");
    // The root saw the question (the message's tail) and where the rest is.
    let first = mock
        .requests()
        .into_iter()
        .find(|r| r.model() == ROOT)
        .map(|r| r.body.to_string())
        .unwrap_or_default();
    assert!(first.contains("How many characters does this document have?"));
    assert!(first.contains("the whole message is `context`"));

    // With no limit the document is the prompt again: the same request costs over ten
    // times as much and the context is empty.
    let mock = mock_again().await;
    let server = start(
        &mock,
        ServeOptions {
            inline_max_bytes: 0,
            ..ServeOptions::default()
        },
    )
    .await;
    let (status, body) = post(&server.base, &ask(&message)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "chars: 0");
    assert!(largest_root_prompt(&mock) > 40_000);
}

async fn mock_again() -> MockServer {
    mock(counting_root).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_parameters_are_400s_naming_them_and_start_no_run() {
    let mock = mock(counting_root).await;
    let server = start(&mock, ServeOptions::default()).await;
    let tool = json!([{"type": "function", "function": {"name": "Answer", "parameters": {}}}]);
    for (param, value) in [
        ("tools", tool.clone()),
        (
            "tool_choice",
            json!({"type": "function", "function": {"name": "Answer"}}),
        ),
        ("functions", json!([{"name": "Answer", "parameters": {}}])),
        ("function_call", json!({"name": "Answer"})),
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(2)),
        ("logit_bias", json!({"1234": 5})),
        ("audio", json!({"voice": "alloy", "format": "wav"})),
        ("modalities", json!(["text", "audio"])),
        ("prediction", json!({"type": "content", "content": "x"})),
        ("web_search_options", json!({})),
    ] {
        let mut body = ask("q");
        body[param] = value;
        let (status, reply) = post(&server.base, &body).await;
        assert_eq!(status, 400, "{param}: {reply}");
        assert_eq!(reply["error"]["code"], "unsupported_parameter", "{reply}");
        assert_eq!(reply["error"]["param"], param, "{reply}");
        let message = reply["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("`{param}`")), "{message}");
    }
    // LangChain's with_structured_output by function calling sends both.
    let mut body = ask("q");
    body["tools"] = tool;
    body["tool_choice"] = json!({"type": "function", "function": {"name": "Answer"}});
    let (status, reply) = post(&server.base, &body).await;
    assert_eq!(
        (status, reply["error"]["param"].clone()),
        (400, json!("tools"))
    );
    assert_eq!(mock.request_count(), 0, "a refused request started a run");

    // Harmless parameters are accepted and named back.
    let mut body = ask("q");
    for (key, value) in [
        ("temperature", json!(0.1)),
        ("seed", json!(3)),
        ("user", json!("u-1")),
        ("top_k", json!(40)),
        ("n", json!(1)),
    ] {
        body[key] = value;
    }
    let (status, reply) = post(&server.base, &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["rlm"]["ignored_parameters"],
        json!(["seed", "temperature", "top_k", "user"])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_max_tokens_shape_the_answer() {
    let mock = mock(|request: &ServerRequest| {
        scripted_turn(
            request,
            &["FINAL(alpha beta gamma delta epsilon zeta eta theta)".to_owned()],
        )
    })
    .await;
    let server = start(&mock, ServeOptions::default()).await;
    let mut body = ask("q");
    body["stop"] = json!(["gamma"]);
    let (status, reply) = post(&server.base, &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["choices"][0]["message"]["content"], "alpha beta ");
    assert_eq!(reply["choices"][0]["finish_reason"], "stop");

    let mut body = ask("q");
    body["max_tokens"] = json!(3);
    let (status, reply) = post(&server.base, &body).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["choices"][0]["message"]["content"], "alpha beta g");
    assert_eq!(reply["choices"][0]["finish_reason"], "length");
    assert!(
        reply["rlm"]["warnings"].to_string().contains("max_tokens"),
        "{reply}"
    );
    // The root model was told the bound.
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.body.to_string().contains("within about 3 tokens"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_model_can_be_retrieved() {
    let mock = mock(counting_root).await;
    let server = start(&mock, ServeOptions::default()).await;
    for id in ["rlm", "gpt-4o"] {
        let model: Value = reqwest::get(format!("{}/v1/models/{id}", server.base))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(model["id"], id);
        assert_eq!(model["object"], "model");
    }
}

/// Whether a new connection to `base` is refused.
async fn refused(base: &str) -> bool {
    let addr = base.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr).await.is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_drains_eight_runs_in_flight_and_refuses_new_connections() {
    let hold = Hold::new();
    let held = hold.clone();
    let mock = mock(move |request: &ServerRequest| {
        scripted_turn(request, &["FINAL(drained)".to_owned()]).held(&held)
    })
    .await;
    let mut server = start(
        &mock,
        ServeOptions {
            shutdown_grace: Duration::from_secs(600),
            ..ServeOptions::default()
        },
    )
    .await;
    let requests: Vec<_> = (0..8)
        .map(|i| {
            let base = server.base.clone();
            tokio::spawn(async move { post(&base, &ask(&format!("question {i}"))).await })
        })
        .collect();
    assert!(
        hold.until_waiting(8, Duration::from_secs(60)).await,
        "8 runs in flight"
    );
    let _ = server.stop.take().map(|stop| stop.send(()));
    let mut closed = false;
    for _ in 0..500 {
        if refused(&server.base).await {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "new connections are refused while draining");
    assert!(!server.task.is_finished(), "the server waits for its runs");
    hold.release();
    for request in requests {
        let (status, body) = request.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "drained");
    }
    let outcome = tokio::time::timeout(Duration::from_secs(60), server.task)
        .await
        .expect("the server returns once its runs are answered (safety bound)")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_still_going_after_the_grace_are_cancelled_with_an_error() {
    let hold = Hold::new();
    let held = hold.clone();
    let mock = mock(move |request: &ServerRequest| {
        scripted_turn(request, &["FINAL(too late)".to_owned()]).held(&held)
    })
    .await;
    let mut server = start(
        &mock,
        ServeOptions {
            shutdown_grace: Duration::from_millis(50),
            ..ServeOptions::default()
        },
    )
    .await;
    let base = server.base.clone();
    let plain = tokio::spawn(async move { post(&base, &ask("plain")).await });
    let base = server.base.clone();
    let streamed = tokio::spawn(async move {
        let mut body = ask("streamed");
        body["stream"] = json!(true);
        let response = reqwest::Client::new()
            .post(format!("{base}/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        (
            response.status().as_u16(),
            response.text().await.unwrap_or_default(),
        )
    });
    assert!(hold.until_waiting(2, Duration::from_secs(60)).await);
    let _ = server.stop.take().map(|stop| stop.send(()));
    let (status, body) = plain.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "shutting_down", "{body}");
    let (status, text) = streamed.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200);
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let error: Value = events
        .iter()
        .rev()
        .nth(1)
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or_default();
    assert_eq!(error["error"]["code"], "shutting_down", "{text}");
    let outcome = tokio::time::timeout(Duration::from_secs(60), server.task)
        .await
        .expect("the server returns after cancelling (safety bound)")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(outcome.is_ok());
    hold.release();
}

/// A server behind [`SERVER_KEY`] whose JSON access-log lines are collected in the returned
/// list, over a mock answering with [`counting_root`].
async fn logging_server() -> (MockServer, Server, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = Arc::clone(&lines);
    let mock = mock(counting_root).await;
    let server = start(
        &mock,
        ServeOptions {
            server_key: Some(SERVER_KEY.into()),
            access_log: Some(AccessLog::to(LogFormat::Json, move |line| {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(line.to_owned());
            })),
            ..ServeOptions::default()
        },
    )
    .await;
    (mock, server, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_json_log_line_without_keys_and_metrics_count_them() {
    let (_mock, server, lines) = logging_server().await;
    let client = reqwest::Client::new();
    // 1: answered.
    let (status, _) = post(&server.base, &ask("q")).await;
    assert_eq!(status, 200);
    // 2: refused parameter.
    let mut body = ask("q");
    body["n"] = json!(3);
    assert_eq!(post(&server.base, &body).await.0, 400);
    // 3: wrong key.
    let wrong = client
        .post(format!("{}/v1/chat/completions", server.base))
        .bearer_auth("not-the-key")
        .json(&ask("q"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(wrong.status().as_u16(), 401);
    // 4: a path with a line break and a query string (escaped; the query is not logged).
    let odd = client
        .get(format!("{}/v1/no%0Asuch?key={SERVER_KEY}", server.base))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(odd.status().as_u16(), 404);
    // 5: metrics, behind the key.
    let unauthorized = client
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unauthorized.status().as_u16(), 401);
    let metrics = client
        .get(format!("{}/metrics", server.base))
        .bearer_auth(SERVER_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(
        metrics
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/openmetrics-text"))
    );
    let text = metrics.text().await.unwrap_or_default();
    for expected in [
        "rlm_http_requests_total{code=\"200\"} 1",
        "rlm_http_requests_total{code=\"400\"} 1",
        "rlm_http_requests_total{code=\"401\"} 2",
        "rlm_http_requests_total{code=\"404\"} 1",
        "rlm_runs_total{outcome=\"final\"} 1",
        "rlm_runs_running 0",
        "rlm_runs_queued 0",
        "rlm_model_calls_total{model=\"root\"} 1",
    ] {
        assert!(text.lines().any(|l| l == expected), "{expected}\n{text}");
    }
    assert!(text.contains("rlm_tokens_total{model=\"root\",kind=\"prompt\"}"));
    assert!(text.contains("rlm_run_duration_seconds_bucket"));

    // Six requests, six lines (the last one is written once its body is sent).
    let mut logged = Vec::new();
    for _ in 0..500 {
        logged = lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if logged.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(logged.len(), 6, "{logged:#?}");
    let parsed: Vec<Value> = logged
        .iter()
        .map(|line| {
            assert!(
                !line.contains(SERVER_KEY) && !line.contains(UPSTREAM_KEY),
                "{line}"
            );
            assert!(!line.contains('\n'), "{line}");
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
        })
        .collect();
    // Lines are written as responses end: find each by its status.
    let with_status = |status: u16| {
        parsed
            .iter()
            .filter(|l| l["status"] == status)
            .cloned()
            .collect::<Vec<_>>()
    };
    let answered = &with_status(200)[0];
    assert_eq!(answered["path"], "/v1/chat/completions");
    assert_eq!(answered["method"], "POST");
    assert_eq!(answered["outcome"], "final");
    assert!(
        answered["run_id"]
            .as_str()
            .is_some_and(|id| id.starts_with("chatcmpl-rlm-"))
    );
    assert!(answered["prompt_tokens"].as_u64().is_some_and(|t| t > 0));
    assert!(answered["cost_usd"].is_number());
    assert_eq!(with_status(400)[0]["outcome"], "unsupported_parameter");
    let unauthorized = with_status(401);
    assert_eq!(unauthorized.len(), 2);
    assert!(
        unauthorized
            .iter()
            .all(|l| l["outcome"] == "invalid_api_key")
    );
    assert_eq!(with_status(404)[0]["path"], "/v1/no%0Asuch");
    assert_eq!(with_status(200).len(), 2, "the answer and the metrics");
}

/// A Responses API request's access-log line names its run, tokens and cost too (the hook
/// was only in chat completions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responses_request_logs_its_run_id_tokens_and_cost() {
    let (_mock, server, lines) = logging_server().await;
    let response = reqwest::Client::new()
        .post(format!("{}/v1/responses", server.base))
        .bearer_auth(SERVER_KEY)
        .json(&json!({"model": "rlm", "input": "q"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 200);
    let body: Value = response.json().await.unwrap_or_default();
    let mut logged = Vec::new();
    // Written once the response has ended: wait for it (a bound, not a timing assertion).
    for _ in 0..3000 {
        logged = lines.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if !logged.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(logged.len(), 1, "{logged:#?}");
    let line: Value = serde_json::from_str(&logged[0]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(line["path"], "/v1/responses", "{line}");
    assert_eq!(line["run_id"], body["id"], "{line}");
    assert_eq!(line["outcome"], "final", "{line}");
    assert!(
        line["prompt_tokens"].as_u64().is_some_and(|t| t > 0),
        "{line}"
    );
    assert!(line["cost_usd"].is_number(), "{line}");
}
