//! The backend against a real HTTP server on 127.0.0.1: request shape, reply parsing,
//! retries, error classification, key hygiene and batches.

mod recorder;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, CancellationToken, CompletionRequest,
    FinishReason, LlmBackend, LlmError, Usage,
};
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_tests::{MockServer, Reply, ServerRequest};
use serde_json::json;

const KEY: &str = "sk-test-0123456789abcdefSECRET";

async fn server(handler: impl Fn(&ServerRequest) -> Reply + Send + Sync + 'static) -> MockServer {
    MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("cannot start the mock server: {e}"))
}

/// A config for `server` with the test key and fast retries.
fn config(server: &MockServer) -> OpenAiConfig {
    OpenAiConfig::new()
        .with_base_url(server.base_url())
        .with_api_key(KEY)
        .with_retry_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .with_max_retries(2)
}

fn backend(config: OpenAiConfig) -> OpenAiBackend {
    OpenAiBackend::new(config).unwrap_or_else(|e| panic!("cannot build the backend: {e}"))
}

fn echo(request: &ServerRequest) -> Reply {
    Reply::completion_for(request, format!("echo: {}", request.last_user()))
}

fn prompt(text: &str) -> CompletionRequest {
    CompletionRequest::prompt("test-model", text)
}

fn unwrap_ok(result: BatchResult) -> rlm_core::Completion {
    result.unwrap_or_else(|e| panic!("expected a completion, got: {e}"))
}

fn unwrap_err(result: BatchResult) -> LlmError {
    match result {
        Ok(c) => panic!("expected an error, got the completion {c:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn sends_the_documented_request() {
    let server = server(echo).await;
    // Trailing slash on the base URL; organization and project headers.
    let backend = backend(
        config(&server)
            .with_base_url(format!("{}/", server.base_url()))
            .with_organization("org-42")
            .with_project("proj-7")
            .with_default_model("fallback-model"),
    );
    let request = prompt("hello")
        .with_system("be brief")
        .with_temperature(0.25)
        .with_top_p(0.5)
        .with_max_tokens(64)
        .with_stop("END")
        .with_seed(3)
        .with_extra("response_format", json!({"type": "text"}));
    let completion = unwrap_ok(backend.complete(request).await);
    assert_eq!(completion.text, "echo: hello");
    assert_eq!(completion.model, "test-model");
    assert_eq!(completion.finish_reason, Some(FinishReason::Stop));
    assert!(completion.usage.prompt_tokens > 0);

    // An empty model falls back to the configured default.
    unwrap_ok(backend.complete(CompletionRequest::prompt("", "x")).await);

    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let first = &requests[0];
    assert_eq!(first.method, "POST");
    assert_eq!(first.path, "/v1/chat/completions");
    assert_eq!(
        first.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(first.header("openai-organization"), Some("org-42"));
    assert_eq!(first.header("openai-project"), Some("proj-7"));
    assert_eq!(first.header("content-type"), Some("application/json"));
    assert_eq!(
        first.body,
        json!({
            "model": "test-model",
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "system", "content": "be brief"},
            ],
            "temperature": 0.25,
            "top_p": 0.5,
            "max_tokens": 64,
            "stop": ["END"],
            "seed": 3,
            "response_format": {"type": "text"},
        })
    );
    assert_eq!(requests[1].model(), "fallback-model");
}

#[tokio::test]
async fn no_key_sends_no_authorization() {
    let server = server(echo).await;
    let backend = backend(OpenAiConfig::new().with_base_url(server.base_url()));
    unwrap_ok(backend.complete(prompt("hi")).await);
    assert_eq!(server.requests()[0].header("authorization"), None);
}

#[tokio::test]
async fn tolerates_what_compatible_servers_send() {
    let server = server(|request| match request.last_user() {
        "parts" => Reply::json(
            200,
            &json!({"choices": [{"message": {"role": "assistant", "content": [
                {"type": "text", "text": "Hello, "},
                {"type": "text", "text": "world"}
            ]}, "finish_reason": "stop"}]}),
        ),
        "null" => Reply::json(
            200,
            &json!({"model": "m", "choices": [{"message": {"role": "assistant", "content": null,
                    "tool_calls": []}, "finish_reason": "tool_calls"}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 0}}),
        ),
        "extra" => Reply::json(
            200,
            &json!({"id": "x", "object": "chat.completion", "created": 1, "model": "served",
                    "system_fingerprint": "fp", "service_tier": "default",
                    "choices": [{"index": 0, "logprobs": null,
                                 "message": {"role": "assistant", "content": "ok",
                                             "reasoning_content": "hmm", "refusal": null},
                                 "finish_reason": "length"}],
                    "usage": {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9,
                              "prompt_tokens_details": {"cached_tokens": 0}},
                    "x_groq": {"id": "q"}}),
        ),
        _ => Reply::json(
            200,
            &json!({"choices": [{"message": {"content": "no usage"}}]}),
        ),
    })
    .await;
    let backend = backend(config(&server));

    let parts = unwrap_ok(backend.complete(prompt("parts")).await);
    assert_eq!(parts.text, "Hello, world");
    assert_eq!(
        parts.model, "test-model",
        "the asked model when the reply names none"
    );

    let null = unwrap_ok(backend.complete(prompt("null")).await);
    assert_eq!(null.text, "");
    assert_eq!(null.finish_reason, Some(FinishReason::ToolCalls));
    assert_eq!(null.usage, Usage::new(5, 0));

    let extra = unwrap_ok(backend.complete(prompt("extra")).await);
    assert_eq!(extra.text, "ok");
    assert_eq!(extra.model, "served");
    assert_eq!(extra.finish_reason, Some(FinishReason::Length));
    assert_eq!(extra.usage, Usage::new(7, 2));

    let bare = unwrap_ok(backend.complete(prompt("bare")).await);
    assert_eq!(bare.text, "no usage");
    assert_eq!(bare.usage, Usage::default());
    assert_eq!(bare.finish_reason, None);
}

// The waits below are checked where the backend lets each attempt through, on a paused
// clock (see `recorder`): the server's arrival times would move with the machine's load.

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_waited_out() {
    let server = server(|request| {
        if request.seq == 0 {
            Reply::rate_limited(1)
        } else {
            echo(request)
        }
    })
    .await;
    let (backend, recorder) = recorder::backend(config(&server));
    let completion = unwrap_ok(backend.complete(prompt("wait")).await);
    assert_eq!(completion.text, "echo: wait");
    assert_eq!(server.requests().len(), 2);
    let at = recorder.times();
    assert_eq!(at.len(), 2);
    let gap = at[1].duration_since(at[0]);
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[tokio::test(start_paused = true)]
async fn retry_after_ms_and_http_dates_are_honoured() {
    let server = server(|request| match request.seq {
        0 => Reply::error(429, "requests", "rate_limit_exceeded", "slow down")
            .header("retry-after-ms", "400")
            .header("retry-after", "30"),
        // An HTTP date two seconds ahead: whole seconds, so the wait is between 1 and 2 s.
        2 => Reply::error(503, "server_error", "overloaded", "try later").header(
            "retry-after",
            &httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(2)),
        ),
        _ => echo(request),
    })
    .await;
    let (backend, recorder) = recorder::backend(config(&server));
    unwrap_ok(backend.complete(prompt("ms")).await);
    unwrap_ok(backend.complete(prompt("date")).await);
    assert_eq!(server.requests().len(), 4);
    let at = recorder.times();
    assert_eq!(at.len(), 4);
    let ms_gap = at[1].duration_since(at[0]);
    assert!(ms_gap >= Duration::from_millis(400), "{ms_gap:?}");
    let date_gap = at[3].duration_since(at[2]);
    assert!(date_gap >= Duration::from_millis(900), "{date_gap:?}");
}

#[tokio::test(start_paused = true)]
async fn a_server_requested_pause_holds_other_calls_of_the_model() {
    // Item 0 is rate limited for 1 s; item 1 is slow, so its slot frees up only after the 429
    // has been seen; items 2.. must then wait for the pause like item 0's retry.
    let server = server(|request| match request.last_user() {
        "p0" if request.seq == 0 => Reply::rate_limited(1),
        "p1" => echo(request).after(Duration::from_millis(300)),
        _ => echo(request),
    })
    .await;
    let (backend, recorder) = recorder::backend(config(&server));
    let requests = (0..6).map(|i| prompt(&format!("p{i}"))).collect();
    let results = backend
        .complete_batch(requests, &BatchOptions::new(2))
        .await;
    assert!(results.into_iter().all(|r| r.is_ok()));
    // p0 and p1 at once; p0's retry and p2.. only once the pause is over.
    assert_eq!(server.requests().len(), 7);
    let at = recorder.times();
    assert_eq!(at.len(), 7);
    for (n, sent) in at.iter().enumerate().skip(2) {
        assert!(
            sent.duration_since(at[0]) >= Duration::from_secs(1),
            "attempt {n} was let through during the pause"
        );
    }
}

#[tokio::test]
async fn a_500_then_success_recovers() {
    let server = server(|request| {
        if request.seq == 0 {
            Reply::error(500, "server_error", "boom", "internal error")
        } else {
            echo(request)
        }
    })
    .await;
    let completion = unwrap_ok(backend(config(&server)).complete(prompt("x")).await);
    assert_eq!(completion.text, "echo: x");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn a_dropped_connection_then_success_recovers() {
    let server = server(|request| {
        if request.seq == 0 {
            Reply::drop_connection()
        } else {
            echo(request)
        }
    })
    .await;
    let completion = unwrap_ok(backend(config(&server)).complete(prompt("x")).await);
    assert_eq!(completion.text, "echo: x");
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn a_slow_server_times_out_then_recovers_or_fails_as_timeout() {
    let server = server(|request| match request.last_user() {
        "once" if request.seq == 0 => echo(request).after(Duration::from_secs(3)),
        "once" => echo(request),
        _ => echo(request).after(Duration::from_secs(3)),
    })
    .await;
    let backend = backend(config(&server).with_request_timeout(Duration::from_millis(200)));
    let completion = unwrap_ok(backend.complete(prompt("once")).await);
    assert_eq!(completion.text, "echo: once");

    let error = unwrap_err(backend.complete(prompt("always")).await);
    assert!(matches!(error, LlmError::Timeout { .. }), "{error}");
    // One attempt for "once" that timed out, one that worked, three for "always".
    assert_eq!(server.request_count(), 2 + 3);
}

#[tokio::test]
async fn malformed_json_fails_cleanly_without_retry() {
    let server = server(|_| Reply::raw(200, "{\"choices\": [{\"message\": ")).await;
    let error = unwrap_err(backend(config(&server)).complete(prompt("x")).await);
    assert_eq!(error.kind(), "invalid_response", "{error}");
    assert!(error.to_string().contains("choices"), "{error}");
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn client_errors_and_exhausted_quota_are_not_retried() {
    let cases: [(u16, &str, &str, &str); 6] = [
        (
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "bad_request",
        ),
        (401, "invalid_request_error", "invalid_api_key", "auth"),
        (403, "permission_denied", "forbidden", "auth"),
        (
            404,
            "invalid_request_error",
            "model_not_found",
            "bad_request",
        ),
        (422, "invalid_request_error", "unprocessable", "bad_request"),
        (
            429,
            "insufficient_quota",
            "insufficient_quota",
            "quota_exhausted",
        ),
    ];
    for (status, error_type, code, kind) in cases {
        let server = server(move |_| {
            Reply::error(status, error_type, code, "the provider's message")
                .header("x-should-retry", "true")
        })
        .await;
        let error = unwrap_err(backend(config(&server)).complete(prompt("x")).await);
        assert_eq!(error.kind(), kind, "HTTP {status}: {error}");
        assert_eq!(error.status(), Some(status));
        assert!(error.to_string().contains("the provider's message"));
        assert_eq!(server.request_count(), 1, "HTTP {status} was retried");
    }
}

#[tokio::test]
async fn max_retries_is_respected_and_the_last_error_is_the_providers() {
    for max_retries in [0, 1, 3] {
        let server =
            server(|_| Reply::error(503, "server_error", "overloaded", "come back later")).await;
        let error = unwrap_err(
            backend(config(&server).with_max_retries(max_retries))
                .complete(prompt("x"))
                .await,
        );
        assert_eq!(server.request_count(), 1 + max_retries as usize);
        assert_eq!(error.status(), Some(503));
        assert_eq!(
            error.to_string(),
            format!(
                "server error (HTTP 503): come back later (POST {}/chat/completions)",
                server.base_url()
            )
        );
    }
}

#[tokio::test]
async fn x_should_retry_false_and_absurd_retry_after_end_at_once() {
    let server = server(|request| match request.last_user() {
        "veto" => Reply::error(500, "server_error", "e", "no").header("x-should-retry", "false"),
        _ => Reply::rate_limited(86_400),
    })
    .await;
    let backend = backend(config(&server));
    let veto = unwrap_err(backend.complete(prompt("veto")).await);
    assert_eq!(veto.status(), Some(500));
    assert_eq!(server.request_count(), 1);
    let absurd = unwrap_err(backend.complete(prompt("day")).await);
    assert_eq!(absurd.retry_after(), Some(Duration::from_secs(86_400)));
    assert_eq!(server.request_count(), 2);
}

#[tokio::test]
async fn the_key_never_leaks_into_errors_or_debug() {
    // A hostile server echoes the Authorization header back in every way it can.
    let server = server(|request| {
        let auth = request
            .header("authorization")
            .unwrap_or_default()
            .to_owned();
        match request.last_user() {
            "message" => Reply::error(400, "invalid_request_error", &auth, &auth),
            "raw" => Reply::raw(502, format!("<html>bad gateway for {auth}</html>")),
            "junk" => Reply::raw(200, format!("{{not json {auth}")),
            "typed" => Reply::json(200, &json!({"choices": auth})),
            _ => Reply::json(200, &json!({"error": {"message": auth}})),
        }
    })
    .await;
    let config = config(&server).with_max_retries(0);
    let backend = backend(config.clone());
    for case in ["message", "raw", "junk", "typed", "error-in-200"] {
        let error = unwrap_err(backend.complete(prompt(case)).await);
        let text = format!("{error} {error:?}");
        assert!(!text.contains(KEY), "{case}: {text}");
        assert!(!text.contains("SECRET"), "{case}: {text}");
    }
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some(format!("Bearer {KEY}").as_str()))
    );
    assert!(!format!("{config:?}").contains(KEY));
    assert!(!format!("{backend:?}").contains(KEY));
}

#[tokio::test]
async fn the_key_never_leaks_into_a_completions_model_name() {
    // The model name of a reply goes to traces and usage reports; a server echoing the
    // Authorization header there must not put the key in them.
    let server = server(|request| {
        let auth = request.header("authorization").unwrap_or_default();
        Reply::json(
            200,
            &json!({"model": auth, "choices": [{"message": {"content": "ok"}}]}),
        )
    })
    .await;
    let completion = unwrap_ok(backend(config(&server)).complete(prompt("x")).await);
    assert_eq!(completion.text, "ok");
    assert!(!completion.model.contains(KEY), "{}", completion.model);
}

#[tokio::test]
async fn connection_refused_is_a_connection_error() {
    // Bind and drop a listener to find a port nobody listens on.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("cannot bind: {e}"));
        listener.local_addr().map(|a| a.port()).unwrap_or(1)
    };
    let backend = backend(
        OpenAiConfig::new()
            .with_base_url(format!("http://127.0.0.1:{port}/v1"))
            .with_max_retries(1)
            .with_retry_backoff(Duration::from_millis(1), Duration::from_millis(1)),
    );
    let error = unwrap_err(backend.complete(prompt("x")).await);
    assert_eq!(error.kind(), "connection", "{error}");
}

/// The prompt of batch item `i` in the mixed-failure test, and what the server does with it.
fn mixed_prompt(i: usize) -> String {
    match i % 10 {
        1 => format!("bad {i}"),
        4 => format!("fail {i}"),
        6 => format!("drop {i}"),
        8 => format!("junk {i}"),
        _ => format!("ok {i}"),
    }
}

fn mixed_handler(request: &ServerRequest) -> Reply {
    let prompt = request.last_user();
    match prompt.split(' ').next().unwrap_or_default() {
        "bad" => Reply::error(400, "invalid_request_error", "invalid_value", "bad item"),
        "fail" => Reply::error(500, "server_error", "boom", "always failing"),
        "drop" => Reply::drop_connection(),
        "junk" => Reply::raw(200, "this is not json"),
        _ => Reply::completion_for(request, format!("done {prompt}")),
    }
}

async fn mixed_failures_keep_every_other_result() {
    let server = MockServer::builder()
        .latency(Duration::from_millis(2))
        .start(mixed_handler)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(config(&server).with_max_retries(1));
    let n = 200;
    let requests = (0..n).map(|i| prompt(&mixed_prompt(i))).collect();
    let results = backend
        .complete_batch(requests, &BatchOptions::new(16))
        .await;
    assert_eq!(results.len(), n);
    for (i, result) in results.into_iter().enumerate() {
        let expected = mixed_prompt(i);
        match i % 10 {
            1 => {
                let e = unwrap_err(result);
                assert_eq!(
                    (e.kind(), e.status()),
                    ("bad_request", Some(400)),
                    "{i}: {e}"
                );
            }
            4 => {
                let e = unwrap_err(result);
                assert_eq!((e.kind(), e.status()), ("server", Some(500)), "{i}: {e}");
            }
            6 => assert_eq!(unwrap_err(result).kind(), "connection", "{i}"),
            8 => assert_eq!(unwrap_err(result).kind(), "invalid_response", "{i}"),
            _ => assert_eq!(unwrap_ok(result).text, format!("done {expected}")),
        }
    }
    // 400 and junk once each; 500 and drops twice each (one retry); the rest once.
    let per_ten = 1 + 1 + 2 + 2 + 6;
    assert_eq!(server.request_count(), n / 10 * per_ten);
    assert!(server.peak_in_flight() <= 16);
}

#[tokio::test]
async fn mixed_failures_on_a_current_thread_runtime() {
    mixed_failures_keep_every_other_result().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_failures_on_a_multi_thread_runtime() {
    mixed_failures_keep_every_other_result().await;
}

async fn concurrency_reaches_but_never_exceeds_the_limit() {
    let server = MockServer::builder()
        .latency(Duration::from_millis(30))
        .start(echo)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(config(&server).with_concurrency(16));
    let requests = (0..200).map(|i| prompt(&format!("p{i}"))).collect();
    let results = backend
        .complete_batch(requests, &BatchOptions::new(16))
        .await;
    for (i, result) in results.into_iter().enumerate() {
        assert_eq!(unwrap_ok(result).text, format!("echo: p{i}"));
    }
    assert_eq!(server.request_count(), 200);
    assert_eq!(server.peak_in_flight(), 16);
    // Connections are reused: a few more than 16 may open when a request looks in the pool
    // just before a finished exchange has put its connection back, but nowhere near 200.
    assert!(
        server.connections() < 50,
        "{} connections",
        server.connections()
    );
}

#[tokio::test]
async fn concurrency_on_a_current_thread_runtime() {
    concurrency_reaches_but_never_exceeds_the_limit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_on_a_multi_thread_runtime() {
    concurrency_reaches_but_never_exceeds_the_limit().await;
}

#[derive(Default)]
struct Events {
    started: AtomicUsize,
    finished: AtomicUsize,
    cancelled: AtomicUsize,
    order: Mutex<Vec<usize>>,
}

impl BatchObserver for Events {
    fn started(&self, index: usize, _: &CompletionRequest) {
        self.started.fetch_add(1, Ordering::SeqCst);
        self.order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(index);
    }
    fn finished(&self, _: usize, result: &BatchResult, _: Duration) {
        self.finished.fetch_add(1, Ordering::SeqCst);
        if matches!(result, Err(LlmError::Cancelled)) {
            self.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[tokio::test]
async fn batches_report_events_and_cancel_cleanly() {
    let server = MockServer::builder()
        .latency(Duration::from_millis(50))
        .start(echo)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let backend = backend(config(&server));
    let events = Arc::new(Events::default());
    let cancel = CancellationToken::new();
    let options = BatchOptions::new(4)
        .with_cancel(cancel.clone())
        .with_observer(events.clone());
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        cancel.cancel();
    });
    let requests = (0..1_000).map(|i| prompt(&format!("p{i}"))).collect();
    let results = backend.complete_batch(requests, &options).await;
    canceller.await.unwrap_or_default();
    assert_eq!(results.len(), 1_000);
    let mut done = 0;
    for (i, result) in results.iter().enumerate() {
        match result {
            Ok(c) => {
                assert_eq!(c.text, format!("echo: p{i}"));
                done += 1;
            }
            Err(e) => assert_eq!(*e, LlmError::Cancelled),
        }
    }
    assert!(
        done > 0 && done < 1_000,
        "{done} finished before cancellation"
    );
    assert!(results[..4].iter().all(Result::is_ok));
    // Started items are a prefix of at most `done + 4` (four in flight when cancelled).
    let never_started = results.get(done + 4..).unwrap_or_default();
    assert!(never_started.iter().all(Result::is_err));
    assert!(events.cancelled.load(Ordering::SeqCst) <= 4);
    assert_eq!(
        events.started.load(Ordering::SeqCst),
        events.finished.load(Ordering::SeqCst)
    );
    let order = events
        .order
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "items start in input order"
    );
    assert!(server.request_count() < 1_000);
}

#[test]
fn works_without_a_runtime_through_rlm_core_blocking() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let server = runtime.block_on(server(echo));
    let backend = Arc::new(backend(config(&server)));
    let requests = vec![prompt("a"), prompt("b")];
    let results = rlm_core::blocking::complete_batch(backend, requests, BatchOptions::new(2));
    let texts: Vec<_> = results.into_iter().map(|r| unwrap_ok(r).text).collect();
    assert_eq!(texts, ["echo: a", "echo: b"]);
}

#[tokio::test]
async fn plain_http_follows_http_redirects_but_refuses_https_ones() {
    // The target of the http redirect answers normally.
    let target = server(echo).await;
    let moved = format!("{}/chat/completions", target.base_url());
    let redirecting =
        server(move |_: &ServerRequest| Reply::raw(307, "").header("location", &moved)).await;
    let reply = backend(config(&redirecting)).complete(prompt("hi")).await;
    assert_eq!(unwrap_ok(reply).text, "echo: hi");

    // A redirect to https from a plain-http base URL is an error that says what to do.
    let to_https = server(|_: &ServerRequest| {
        Reply::raw(308, "").header("location", "https://127.0.0.1:9/v1/chat/completions")
    })
    .await;
    let error = unwrap_err(backend(config(&to_https)).complete(prompt("hi")).await);
    assert!(
        error
            .to_string()
            .contains("use the https URL as the base URL"),
        "{error}"
    );
    assert!(!error.to_string().contains(KEY));
    assert_eq!(to_https.request_count(), 1, "not retried");
}

#[tokio::test]
async fn an_oversized_reply_is_refused_not_buffered() {
    // 40 MB of reply text: beyond the default cap on a reply's size.
    let huge = "x".repeat(40 << 20);
    let server = server(move |request| Reply::completion_for(request, huge.as_str())).await;
    let result = backend(config(&server)).complete(prompt("x")).await;
    // (Only the length: a failure message must not print 40 MB.)
    let error = match result.map(|c| c.text.len()) {
        Ok(len) => panic!("a reply of {len} bytes was accepted"),
        Err(e) => e,
    };
    assert_eq!(error.kind(), "invalid_response", "{error}");
    assert!(error.to_string().contains("larger than"), "{error}");
    assert_eq!(server.request_count(), 1, "not retried");
}

/// A hostile server on 127.0.0.1 that answers every connection with `status` and a body
/// that never ends (no length, no chunking: it just keeps writing until the client leaves).
async fn endless_server(status: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("cannot bind: {e}"));
    let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = [0u8; 4096];
                let _ = socket.read(&mut request).await;
                let head = format!(
                    "HTTP/1.1 {status} Whatever\r\ncontent-type: application/json\r\n\
                     connection: close\r\n\r\n{{\"choices\": [{{\"message\": {{\"content\": \""
                );
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while socket.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    format!("http://127.0.0.1:{port}/v1")
}

#[tokio::test]
async fn an_endless_reply_stops_at_the_configured_cap() {
    let base_url = endless_server(200).await;
    let client = backend(
        OpenAiConfig::new()
            .with_base_url(&base_url)
            .with_max_response_bytes(256 * 1024),
    );
    let error = unwrap_err(client.complete(prompt("x")).await);
    assert_eq!(error.kind(), "invalid_response", "{error}");
    assert!(error.to_string().contains("262144"), "{error}");

    // An error reply is read up to the cap and still classified by its status (a 503 is
    // retried, then reported as a server error).
    let base_url = endless_server(503).await;
    let client = backend(
        OpenAiConfig::new()
            .with_base_url(&base_url)
            .with_max_response_bytes(256 * 1024)
            .with_max_retries(1)
            .with_retry_backoff(Duration::from_millis(1), Duration::from_millis(1)),
    );
    let error = unwrap_err(client.complete(prompt("x")).await);
    assert_eq!(
        (error.kind(), error.status()),
        ("server", Some(503)),
        "{error}"
    );
    assert!(error.to_string().len() < 1_000, "{error}");
}

#[tokio::test]
async fn placeholder_keys_of_local_servers_do_not_garble_messages() {
    // vLLM and Ollama are often given a dummy key such as "EMPTY": it is no secret, and
    // redacting it would mangle every message that happens to contain the word.
    let server = server(|_: &ServerRequest| {
        Reply::error(
            400,
            "invalid_request_error",
            "bad",
            "EMPTY prompt is not allowed",
        )
    })
    .await;
    let backend = backend(config(&server).with_api_key("EMPTY"));
    let error = unwrap_err(backend.complete(prompt("x")).await);
    assert!(
        error.to_string().contains("EMPTY prompt is not allowed"),
        "{error}"
    );
}

#[tokio::test]
async fn a_key_echoed_in_a_successful_reply_is_scrubbed() {
    // Before: error bodies were scrubbed, but a 200 reply carried the key to the script,
    // stdout, --json and the trace.
    let server = server(|request: &ServerRequest| {
        let auth = request
            .header("authorization")
            .unwrap_or_default()
            .to_owned();
        Reply::completion_for(request, format!("you sent {auth}, twice: {auth}"))
    })
    .await;
    let completion = backend(config(&server))
        .complete(prompt("x"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!completion.text.contains(KEY), "{}", completion.text);
    assert_eq!(
        completion.text,
        "you sent Bearer [redacted], twice: Bearer [redacted]"
    );
}

#[tokio::test]
async fn answers_past_the_reply_budget_fail_one_by_one_and_the_rest_are_kept() {
    // 20 answers of 1 MB each, under a budget of 5.5 MB (as the REPL's memory budget would
    // leave): the answers that fit are kept, the others are errors saying why, and the
    // budget never holds more than its limit. Before, every answer was read in whole.
    let server = server(|request| Reply::completion_for(request, "x".repeat(1_000_000))).await;
    let backend = backend(config(&server));
    let budget = rlm_core::ReplyBudget::new(5_500_000);
    let requests: Vec<CompletionRequest> = (0..20)
        .map(|i| CompletionRequest::prompt("m", format!("q{i}")))
        .collect();
    let results = budget
        .clone()
        .scope(backend.complete_batch(requests, &BatchOptions::new(4)))
        .await;
    let kept = results.iter().filter(|r| r.is_ok()).count();
    assert!((1..=5).contains(&kept), "{kept} kept");
    for result in &results {
        if let Err(error) = result {
            assert!(error.to_string().contains("memory budget"), "{error}");
        }
    }
    assert!(budget.used() <= budget.limit());
    assert!(budget.used() >= kept as u64 * 1_000_000);
    // Errors of that kind are not retried: one request per item.
    assert_eq!(server.request_count(), 20);
}

/// Large prompts arrive whole and in order, escapes and characters of several bytes
/// included, in a batch on either runtime flavour.
async fn large_prompts_arrive_as_sent() {
    let server = server(echo).await;
    let backend = backend(config(&server));
    let prompts: Vec<String> = (0..12)
        .map(|i| format!("{i}: {}", "line \"é\" \\ 😀\tend\n".repeat(4_000 + i * 100)))
        .collect();
    let requests = prompts.iter().map(|p| prompt(p)).collect();
    let results = backend
        .complete_batch(requests, &BatchOptions::new(4))
        .await;
    assert_eq!(results.len(), prompts.len());
    for (result, sent) in results.into_iter().zip(&prompts) {
        assert!(sent.len() > 64 << 10);
        assert!(
            unwrap_ok(result).text == format!("echo: {sent}"),
            "a prompt changed on the way"
        );
    }
}

#[tokio::test]
async fn large_prompts_arrive_as_sent_on_one_thread() {
    large_prompts_arrive_as_sent().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_prompts_arrive_as_sent_on_two_threads() {
    large_prompts_arrive_as_sent().await;
}
