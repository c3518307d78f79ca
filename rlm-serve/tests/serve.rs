//! `rlm_serve::serve` over real HTTP on 127.0.0.1: the server in front, the real backend
//! stack (`OpenAiBackend` -> `CachedBackend`) behind it, and the loopback mock model server
//! at the far end. Assertions bound counts at the mock server, never time.
#![cfg(feature = "serve")]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_cache::CachedBackend;
use rlm_core::{BatchExecutor, LlmBackend};
use rlm_openai::{OpenAiBackend, OpenAiConfig, RateLimit};
use rlm_repl::{Context, RlmConfig, SharedContext};
use rlm_serve::Runner;
use rlm_serve::serve::{ServeOptions, serve};
use rlm_tests::{MockServer, Reply, ServerRequest, scripted_turn};
use serde_json::{Value, json};

const ROOT: &str = "root";
const UPSTREAM_KEY: &str = "sk-upstream-never-show-me";

fn code(code: &str) -> String {
    format!("Running some code.\n\n```repl\n{code}\n```")
}

/// A root model that asks the sub model about the context and answers with what it said;
/// the sub model echoes its prompt upper-cased (slowly for prompts holding "slow").
fn handler(request: &ServerRequest) -> Reply {
    if request.model() == ROOT {
        scripted_turn(request, &[code(r#"FINAL(llm_query("echo: " + context));"#)])
    } else {
        let prompt = request.last_user();
        let reply = Reply::completion_for(request, prompt.to_uppercase());
        if prompt.contains("slow") {
            reply.after(Duration::from_secs(60))
        } else {
            reply
        }
    }
}

fn runner(mock: &MockServer, rpm: u32) -> Runner {
    let config = OpenAiConfig::new()
        .with_base_url(mock.base_url())
        .with_api_key(UPSTREAM_KEY)
        .with_retry_backoff(Duration::from_millis(1), Duration::from_millis(10))
        .with_max_retries(1)
        .with_concurrency(64)
        .with_rate_limit(RateLimit::new(rpm, 0));
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

/// Starts the server; returns its base URL (`http://127.0.0.1:PORT`).
async fn start(runner: Runner, options: ServeOptions) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(serve(listener, runner, options, std::future::pending()));
    format!("http://{addr}")
}

async fn mock() -> MockServer {
    MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"))
}

fn chat(query: &str, document: &str) -> Value {
    json!({"model": "whatever", "messages": [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": document},
        {"role": "user", "content": query},
    ]})
}

async fn post(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}/v1/chat/completions"))
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

async fn health(client: &reqwest::Client, base: &str) -> Value {
    client
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("health: {e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("health json: {e}"))
}

/// Waits (bounded) until no run is running; panics with the last health otherwise.
async fn until_idle(client: &reqwest::Client, base: &str) {
    let mut last = Value::Null;
    for _ in 0..200 {
        last = health(client, base).await;
        if last["running"] == 0 && last["queued"] == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("runs still going after the client left: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_carries_the_answer_usage_and_the_rlm_object() {
    let mock = mock().await;
    let base = start(runner(&mock, 0), ServeOptions::default()).await;
    let client = reqwest::Client::new();

    let models: Value = client
        .get(format!("{base}/v1/models"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .json()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(models["data"][0]["id"], "rlm");

    let (status, body) = post(&client, &base, &chat("what does it say?", "hello there")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "whatever");
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "ECHO: HELLO THERE"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["prompt_tokens"].as_u64() > Some(0), "{body}");
    let rlm = &body["rlm"];
    assert_eq!(rlm["iterations"], 1);
    assert_eq!(rlm["stopped"], "final");
    assert_eq!(rlm["sub_calls"], 1);
    assert_eq!(rlm["failed_sub_calls"], 0);
    assert_eq!(rlm["warnings"], json!([]));
    assert!(rlm.get("cost_usd").is_some());

    // The system message reached the root model as instructions, not as context.
    let roots: Vec<_> = mock
        .requests()
        .into_iter()
        .filter(|r| r.model() == ROOT)
        .collect();
    let system = roots[0].messages()[0]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(system.contains("Be exact."), "{system}");
    // The context reaches the root model only as the first message's marked preview.
    let first = roots[0].last_user();
    let outside_preview = first
        .split("--- preview")
        .next()
        .unwrap_or_default()
        .to_owned()
        + first
            .split("--- end of preview ---")
            .nth(1)
            .unwrap_or_default();
    assert!(first.contains("--- preview"), "{first}");
    assert!(!outside_preview.contains("hello there"), "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_context_serves_every_request() {
    let mock = mock().await;
    let options = ServeOptions {
        context: Some(SharedContext::new(Context::from("the shared book"))),
        ..ServeOptions::default()
    };
    let base = start(runner(&mock, 0), options).await;
    let client = reqwest::Client::new();
    for _ in 0..2 {
        let (status, body) = post(&client, &base, &chat("q", "ignored message")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["choices"][0]["message"]["content"],
            "ECHO: THE SHARED BOOK"
        );
    }
}

/// The SSE `data:` payloads of a streamed reply.
fn sse_data(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_shows_the_work_then_the_answer_then_usage() {
    let mock = mock().await;
    let base = start(runner(&mock, 0), ServeOptions::default()).await;
    let client = reqwest::Client::new();
    let mut body = chat("what does it say?", "streamed text");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let text = response.text().await.unwrap_or_default();
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    // Order: role, reasoning..., content..., finish, usage.
    let phase = |chunk: &Value| -> u8 {
        let delta = &chunk["choices"][0]["delta"];
        if chunk["usage"].is_object() {
            4
        } else if delta.get("reasoning_content").is_some() {
            1
        } else if delta["content"].as_str().is_some_and(|c| !c.is_empty()) {
            2
        } else if chunk["choices"][0]["finish_reason"].is_string() {
            3
        } else {
            0
        }
    };
    let phases: Vec<u8> = chunks.iter().map(phase).collect();
    assert!(
        phases.windows(2).all(|w| w[0] <= w[1]),
        "{phases:?}\n{text}"
    );
    for wanted in 0..=4 {
        assert!(
            phases.contains(&wanted),
            "phase {wanted} missing: {phases:?}\n{text}"
        );
    }
    let reasoning: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["reasoning_content"].as_str())
        .collect();
    assert!(reasoning.contains("Turn 1"), "{reasoning}");
    assert!(
        reasoning.contains("llm_query(\"echo: \" + context)"),
        "{reasoning}"
    );
    let answer: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(answer, "ECHO: STREAMED TEXT");
    let finish = chunks
        .iter()
        .find(|c| phase(c) == 3)
        .cloned()
        .unwrap_or_default();
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["rlm"]["stopped"], "final");
    let usage = chunks.last().cloned().unwrap_or_default();
    assert_eq!(usage["choices"], json!([]));
    assert!(usage["usage"]["total_tokens"].as_u64() > Some(0), "{usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_openai_shape_and_fitting_statuses() {
    let mock = mock().await;
    let options = ServeOptions {
        server_key: Some("server-key-1".into()),
        max_request_bytes: 4096,
        ..ServeOptions::default()
    };
    let base = start(runner(&mock, 0), options).await;
    let client = reqwest::Client::new();
    let send = |body: String, key: Option<&'static str>| {
        let mut request = client
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move {
            let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
            (status, body)
        }
    };
    let good = chat("q", "doc").to_string();
    for (body, key, status, code) in [
        (good.clone(), None, 401, "invalid_api_key"),
        (good.clone(), Some("wrong"), 401, "invalid_api_key"),
        (
            "{not json".to_owned(),
            Some("server-key-1"),
            400,
            "invalid_body",
        ),
        (
            json!({"messages": [{"role": "system", "content": "x"}]}).to_string(),
            Some("server-key-1"),
            400,
            "no_user_message",
        ),
        (
            chat("q", &"x".repeat(10_000)).to_string(),
            Some("server-key-1"),
            413,
            "request_too_large",
        ),
    ] {
        let (got, reply) = send(body, key).await;
        assert_eq!(got, status, "{reply}");
        assert_eq!(reply["error"]["code"], code, "{reply}");
        assert!(
            reply["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(reply["error"]["type"].is_string(), "{reply}");
    }
    let (status, _) = send(good, Some("server-key-1")).await;
    assert_eq!(status, 200);
    // A wrong method and an unknown path answer in OpenAI's error shape too.
    for (method, path, status, code) in [
        (
            reqwest::Method::GET,
            "/v1/chat/completions",
            405,
            "method_not_allowed",
        ),
        (reqwest::Method::GET, "/v1/nothing", 404, "unknown_url"),
    ] {
        let response = client
            .request(method, format!("{base}{path}"))
            .bearer_auth("server-key-1")
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), status);
        let reply: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    // /health needs no key.
    assert_eq!(health(&client, &base).await["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_auth_failure_is_a_502_with_the_reason() {
    let mock = MockServer::start(|_: &ServerRequest| {
        Reply::error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided",
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let base = start(runner(&mock, 0), ServeOptions::default()).await;
    let client = reqwest::Client::new();
    let (status, body) = post(&client, &base, &chat("q", "doc")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_auth");
    // The client learns which side failed and the status class; the upstream's own
    // message stays in the server's log.
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("HTTP 4xx"), "{message}");
    assert!(!message.contains("Incorrect API key"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failures_tell_the_client_only_the_status_class() {
    let mock = MockServer::start(|_: &ServerRequest| {
        Reply::error(
            500,
            "server_error",
            "internal",
            "model root-secret-model on http://10.9.8.7:4000/v1 is down",
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let base = start(runner(&mock, 0), ServeOptions::default()).await;
    let client = reqwest::Client::new();
    let (status, body) = post(&client, &base, &chat("q", "doc")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"]["code"], "upstream_error");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("HTTP 5xx"), "{message}");
    // Before: the client saw the upstream's message, its URL and the model names.
    let upstream = mock.base_url();
    for secret in ["root-secret-model", "10.9.8.7", "(root)", upstream.as_str()] {
        assert!(!body.to_string().contains(secret), "{secret}: {body}");
    }

    // An upstream that cannot be reached: its URL stays on the server.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let gone = format!(
        "http://{}/v1",
        closed.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    drop(closed);
    let config = OpenAiConfig::new()
        .with_base_url(&gone)
        .with_api_key(UPSTREAM_KEY)
        .with_max_retries(0);
    let backend = OpenAiBackend::new(config).unwrap_or_else(|e| panic!("backend: {e}"));
    let root: Arc<dyn LlmBackend> = Arc::new(backend.clone());
    let sub: Arc<dyn BatchExecutor> = Arc::new(backend);
    let config = RlmConfig {
        root_model: "root-secret-model".into(),
        ..RlmConfig::default()
    };
    let base = start(Runner::new(root, sub, config), ServeOptions::default()).await;
    let (status, body) = post(&client, &base, &chat("q", "doc")).await;
    assert_eq!(status, 502, "{body}");
    let text = body.to_string();
    assert!(text.contains("could not be reached"), "{text}");
    for secret in ["root-secret-model", gone.as_str(), "127.0.0.1"] {
        assert!(!text.contains(secret), "{secret}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_clients_share_one_rate_limit() {
    let mock = mock().await;
    // 600 a minute: a burst of 10, then one about every 101.5 ms, for all clients together.
    let base = start(
        runner(&mock, 600),
        ServeOptions {
            max_runs: 20,
            ..ServeOptions::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    // No request of any client can be let through before this.
    let sent = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let client = client.clone();
            let base = base.clone();
            tokio::spawn(async move {
                post(
                    &client,
                    &base,
                    &chat("what is it?", &format!("document {i}")),
                )
                .await
            })
        })
        .collect();
    let mut answers = HashSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "{body}");
        answers.insert(
            body["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    // Every client got its own answer.
    assert_eq!(answers.len(), 20, "{answers:?}");
    assert_eq!(
        mock.request_count(),
        40,
        "one root call and one sub-call per client"
    );
    // The limit is per model: for each, a burst of 10, then one about every 101.5 ms. Were
    // the clients not sharing one limiter, all 20 would be let through at once.
    for model in [ROOT, "sub"] {
        let arrivals: Vec<Instant> = mock
            .requests()
            .iter()
            .filter(|r| r.model() == model)
            .map(|r| r.at)
            .collect();
        assert_eq!(arrivals.len(), 20);
        let most = max_in_window(&arrivals, Duration::from_millis(500));
        assert!(most <= 16, "{model}: {most} requests within half a second");
        // The 20th is let through at least 10 x 101.5 ms after the first, which is no earlier
        // than the requests were sent; a loaded machine only delays arrivals further.
        let last = arrivals.iter().max().copied().unwrap_or(sent);
        let spread = last.duration_since(sent);
        assert!(
            spread >= Duration::from_millis(1_000),
            "{model}: all 20 within {spread:?} of sending"
        );
    }
}

fn max_in_window(arrivals: &[Instant], window: Duration) -> usize {
    let mut sorted = arrivals.to_vec();
    sorted.sort();
    (0..sorted.len())
        .map(|i| {
            sorted[i..]
                .iter()
                .take_while(|at| at.duration_since(sorted[i]) < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_queue_in_order_and_a_full_queue_is_a_429() {
    let mock = mock().await;
    let base = start(
        runner(&mock, 0),
        ServeOptions {
            max_runs: 1,
            max_queue: 1,
            ..ServeOptions::default()
        },
    )
    .await;
    let client = reqwest::Client::new();
    // One slow run holds the only slot.
    let slow = {
        let client = client.clone();
        let base = base.clone();
        tokio::spawn(async move { post(&client, &base, &chat("q", "slow one")).await })
    };
    wait_for(&client, &base, |h| h["running"] == 1).await;
    // One waits in line...
    let queued = {
        let client = client.clone();
        let base = base.clone();
        tokio::spawn(async move { post(&client, &base, &chat("q", "second")).await })
    };
    wait_for(&client, &base, |h| h["queued"] == 1).await;
    // ...and one more finds the line full.
    let response = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&chat("q", "third"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 429);
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    assert!(retry_after.is_some_and(|s| s >= 1), "{retry_after:?}");
    let body: Value = response.json().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["error"]["code"], "server_busy");
    // Never two runs at once at the model server: the queued run has sent nothing yet.
    assert!(
        mock.requests()
            .iter()
            .all(|r| !r.last_user().contains("second"))
    );
    slow.abort();
    let (status, body) = queued.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "ECHO: SECOND");
}

async fn wait_for(client: &reqwest::Client, base: &str, done: impl Fn(&Value) -> bool) {
    let mut last = Value::Null;
    for _ in 0..400 {
        last = health(client, base).await;
        if done(&last) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never reached: {last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_run() {
    let mock = mock().await;
    let base = start(runner(&mock, 0), ServeOptions::default()).await;
    let client = reqwest::Client::new();
    for stream in [false, true] {
        let document = format!("slow document {stream}");
        let mut body = chat("q", &document);
        body["stream"] = json!(stream);
        let request = {
            let client = client.clone();
            let base = base.clone();
            tokio::spawn(async move {
                let response = client
                    .post(format!("{base}/v1/chat/completions"))
                    .json(&body)
                    .send()
                    .await;
                if let Ok(response) = response {
                    let _ = response.text().await;
                }
            })
        };
        // The run is waiting on a sub-call that the mock holds for a minute.
        for _ in 0..400 {
            let asked = mock
                .requests()
                .iter()
                .any(|r| r.model() == "sub" && r.last_user().contains(&document));
            if asked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(health(&client, &base).await["running"], 1);
        request.abort();
        // The run ends long before the sub-call would have answered, and drops it.
        until_idle(&client, &base).await;
        let mut in_flight = mock.in_flight();
        for _ in 0..200 {
            if in_flight == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            in_flight = mock.in_flight();
        }
        assert_eq!(
            in_flight, 0,
            "the cancelled run's sub-call is still in flight"
        );
    }
    // Both runs are counted, as cancelled (the non-streaming one used to go uncounted: its
    // run was dropped with the request, before it could be counted). The streaming run's
    // task counts it just after freeing its slot, so it is waited for.
    let expected = "rlm_runs_total{outcome=\"cancelled\"} 2";
    let mut metrics = String::new();
    for _ in 0..2400 {
        metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .text()
            .await
            .unwrap_or_default();
        if metrics.lines().any(|l| l == expected) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("never counted (safety bound): {expected}\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stop_is_a_200_with_length_and_the_best_answer() {
    // The root model never answers in its one turn; asked for its best answer, it gives one.
    let mock = MockServer::start(|request: &ServerRequest| {
        if request.model() == ROOT {
            scripted_turn(
                request,
                &[
                    code("let x = 1;\nprint(x);"),
                    "FINAL(best guess)".to_owned(),
                ],
            )
        } else {
            Reply::completion_for(request, "sub")
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let runner = {
        let base = runner(&mock, 0);
        let config = RlmConfig {
            max_iterations: 1,
            ..base.config().clone()
        };
        let backend = OpenAiBackend::new(
            OpenAiConfig::new()
                .with_base_url(mock.base_url())
                .with_api_key(UPSTREAM_KEY),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let root: Arc<dyn LlmBackend> = Arc::new(backend.clone());
        Runner::new(root, Arc::new(CachedBackend::new(backend)), config)
    };
    let base = start(runner, ServeOptions::default()).await;
    let client = reqwest::Client::new();
    let (status, body) = post(&client, &base, &chat("q", "doc")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    assert_eq!(body["choices"][0]["message"]["content"], "best guess");
    assert_eq!(body["rlm"]["stopped"], "max_iterations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_that_fails_while_streaming_ends_with_an_error_event() {
    let mock = MockServer::start(|_: &ServerRequest| {
        Reply::error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            "Incorrect API key provided",
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let base = start(runner(&mock, 0), ServeOptions::default()).await;
    let mut body = chat("q", "doc");
    body["stream"] = json!(true);
    let text = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(!text.contains(UPSTREAM_KEY));
    let data = sse_data(&text);
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{text}");
    let error: Value = serde_json::from_str(&data[data.len() - 2]).unwrap_or_default();
    assert_eq!(error["error"]["code"], "upstream_auth", "{text}");
    assert!(
        !data
            .iter()
            .any(|d| d.contains("\"content\":\"") && !d.contains("\"content\":\"\"")),
        "no answer content: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_pages_cannot_start_runs_or_read_answers() {
    let mock = mock().await;
    let options = ServeOptions {
        cors_origins: vec!["https://app.example".into()],
        ..ServeOptions::default()
    };
    let base = start(runner(&mock, 0), options).await;
    let port = base.rsplit(':').next().unwrap_or_default().to_owned();
    let client = reqwest::Client::new();
    let url = format!("{base}/v1/chat/completions");
    let body = chat("q", "doc").to_string();
    let send = |host: Option<String>, origin: Option<&str>, content_type: &str| {
        let mut request = client
            .post(&url)
            .header("content-type", content_type)
            .body(body.clone());
        if let Some(host) = host {
            request = request.header("host", host);
        }
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        async move {
            let response = request.send().await.unwrap_or_else(|e| panic!("{e}"));
            let status = response.status().as_u16();
            let allow = response
                .headers()
                .get("access-control-allow-origin")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body: Value = response.json().await.unwrap_or_default();
            (status, body, allow)
        }
    };
    // Before: each of these started a run (200).
    let refused = [
        // DNS rebinding: a page's own name resolved to 127.0.0.1.
        (
            Some(format!("evil.example:{port}")),
            None,
            "application/json",
            421,
        ),
        // A cross-site form or fetch without a preflight.
        (None, Some("https://evil.example"), "text/plain", 403),
        (None, Some("https://evil.example"), "application/json", 403),
        (None, Some("null"), "application/json", 403),
        // A body that is not declared JSON.
        (None, None, "text/plain", 415),
        (None, None, "application/x-www-form-urlencoded", 415),
    ];
    for (host, origin, content_type, status) in refused {
        let (got, body, allow) = send(host.clone(), origin, content_type).await;
        assert_eq!(got, status, "{host:?} {origin:?} {content_type}: {body}");
        assert!(body["error"]["code"].is_string(), "{body}");
        assert_eq!(allow, None);
    }
    assert!(
        mock.requests().is_empty(),
        "a refused request started a run"
    );

    // Loopback names, the server's own origin and a listed origin are served.
    for (host, origin) in [
        (Some(format!("localhost:{port}")), None),
        (Some(format!("[::1]:{port}")), None),
        (None, Some(format!("http://127.0.0.1:{port}"))),
        (None, Some("https://app.example".to_owned())),
    ] {
        let (status, body, allow) = send(host.clone(), origin.as_deref(), "application/json").await;
        assert_eq!(status, 200, "{host:?} {origin:?}: {body}");
        let listed = origin.as_deref() == Some("https://app.example");
        assert_eq!(allow.is_some(), listed, "{origin:?}");
    }

    // Preflights: answered for a listed origin only.
    for (origin, status) in [("https://app.example", 204), ("https://evil.example", 403)] {
        let response = client
            .request(reqwest::Method::OPTIONS, &url)
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(response.status().as_u16(), status, "{origin}");
        let allow = response.headers().get("access-control-allow-origin");
        assert_eq!(allow.is_some(), status == 204, "{origin}");
    }
}

/// A safety bound on a hang: what the tests below wait for takes well under a second.
const HANG: Duration = Duration::from_secs(60);

/// Reads until the server closes the connection; what it sent. Panics if it never does.
async fn until_closed(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let read = tokio::time::timeout(HANG, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        read.is_ok(),
        "the server kept the connection open; it sent: {seen}"
    );
    seen
}

async fn connect(base: &str) -> tokio::net::TcpStream {
    let addr = base.trim_start_matches("http://");
    tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

async fn write(stream: &mut tokio::net::TcpStream, bytes: &str) {
    use tokio::io::AsyncWriteExt;
    stream
        .write_all(bytes.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed() {
    let mock = mock().await;
    let options = ServeOptions {
        header_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let base = start(runner(&mock, 0), options).await;
    // Before: each of these connections stayed open for as long as the client liked.
    // Headers that never end.
    let mut slow_headers = connect(&base).await;
    write(
        &mut slow_headers,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n",
    )
    .await;
    until_closed(&mut slow_headers).await;
    // A kept-alive connection left idle after its request (on a machine slow enough, the
    // request itself may come too late: then nothing is answered, and that is right too).
    let mut idle = connect(&base).await;
    write(&mut idle, "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").await;
    let seen = until_closed(&mut idle).await;
    assert!(
        seen.is_empty() || seen.starts_with("HTTP/1.1 200"),
        "{seen}"
    );

    // A body that never ends (headers in time: the body's own bound ends it).
    let options = ServeOptions {
        body_timeout: Duration::from_millis(300),
        ..ServeOptions::default()
    };
    let base = start(runner(&mock, 0), options).await;
    let mut slow_body = connect(&base).await;
    write(
        &mut slow_body,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
         application/json\r\nContent-Length: 100\r\n\r\n{\"model\"",
    )
    .await;
    let seen = until_closed(&mut slow_body).await;
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
    assert!(mock.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_cap_is_refused() {
    let mock = mock().await;
    let options = ServeOptions {
        max_connections: 2,
        ..ServeOptions::default()
    };
    let base = start(runner(&mock, 0), options).await;
    let held = [connect(&base).await, connect(&base).await];
    // Before: every connection was served until descriptors ran out.
    let mut third = connect(&base).await;
    write(
        &mut third,
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    )
    .await;
    let seen = until_closed(&mut third).await;
    assert!(seen.starts_with("HTTP/1.1 503"), "{seen}");
    assert!(seen.contains("too_many_connections"), "{seen}");
    // A slot freed is served again.
    drop(held);
    let client = reqwest::Client::new();
    let mut served = false;
    for _ in 0..600 {
        if let Ok(response) = client.get(format!("{base}/health")).send().await
            && response.status() == 200
        {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        served,
        "no connection was served after the held ones closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_held_at_once_are_bounded() {
    let mock = mock().await;
    let options = ServeOptions {
        max_request_bytes: 64 << 10,
        max_body_bytes_in_flight: 64 << 10,
        ..ServeOptions::default()
    };
    let base = start(runner(&mock, 0), options).await;
    let client = reqwest::Client::new();
    // A: 60,000 bytes declared, a little sent.
    let head = chat("q", "doc").to_string();
    let padded = format!("{head}{}", " ".repeat(60_000 - head.len()));
    let mut a = connect(&base).await;
    write(
        &mut a,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: \
             application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
            padded.len(),
            &padded[..10]
        ),
    )
    .await;
    let mut holding = false;
    for _ in 0..600 {
        if health(&client, &base).await["body_bytes_in_flight"].as_u64() > Some(0) {
            holding = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(holding, "the first body was never counted");
    // B: 10,000 bytes do not fit beside A's 60,000 under 64 KiB.
    let b = format!("{head}{}", " ".repeat(10_000 - head.len()));
    let send_b = || {
        client
            .post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(b.clone())
            .send()
    };
    // Before: both bodies were read and parsed at once, whatever their size.
    let response = send_b().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap_or_default();
    assert_eq!(body["error"]["code"], "server_busy", "{body}");
    // A completes and is answered; then B fits.
    write(&mut a, &padded[10..]).await;
    let seen = until_closed(&mut a).await;
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert_eq!(health(&client, &base).await["body_bytes_in_flight"], 0);
    let response = send_b().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.status().as_u16(), 200);
}
