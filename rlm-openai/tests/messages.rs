//! Errors that explain themselves, and the waits a caller can show, against a real HTTP
//! server on 127.0.0.1.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rlm_core::{CompletionRequest, LlmBackend, LlmError};
use rlm_openai::{NOT_AN_API_ENDPOINT, OpenAiBackend, OpenAiConfig, Wait, WaitObserver};
use rlm_tests::{MockServer, Reply, ServerRequest};

const KEY: &str = "sk-test-0123456789abcdefSECRET";

async fn server(handler: impl Fn(&ServerRequest) -> Reply + Send + Sync + 'static) -> MockServer {
    MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("cannot start the mock server: {e}"))
}

fn config(base_url: &str) -> OpenAiConfig {
    OpenAiConfig::new()
        .with_base_url(base_url)
        .with_api_key(KEY)
        .with_retry_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .with_max_retries(2)
}

fn backend(config: OpenAiConfig) -> OpenAiBackend {
    OpenAiBackend::new(config).unwrap_or_else(|e| panic!("cannot build the backend: {e}"))
}

async fn error_of(backend: &OpenAiBackend) -> LlmError {
    match backend
        .complete(CompletionRequest::prompt("m", "hello"))
        .await
    {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn a_404_that_is_no_api_error_points_at_the_base_url_and_names_it_without_credentials() {
    let server = server(|_| Reply::raw(404, "404 page not found")).await;
    // The credentials in the URL must not appear; the URL itself must.
    let url = server
        .base_url()
        .replace("http://", "http://user:hunter2secret@");
    let e = error_of(&backend(config(&url))).await;
    let text = e.to_string();
    let shown = format!("POST {}/chat/completions", server.base_url());
    assert!(text.contains(&shown), "{text}");
    assert!(text.contains("should end at the API version"), "{text}");
    assert!(text.contains("/v1"), "{text}");
    assert!(
        !text.contains("hunter2secret") && !text.contains(KEY),
        "{text}"
    );
    assert!(
        matches!(&e, LlmError::BadRequest { status: 404, code: Some(c), .. } if c == NOT_AN_API_ENDPOINT),
        "{e:?}"
    );
    assert_eq!(server.request_count(), 1, "a 404 is not retried");
}

#[tokio::test]
async fn an_api_404_keeps_the_servers_message_and_gives_no_url_advice() {
    let server = server(|_| {
        Reply::error(
            404,
            "invalid_request_error",
            "model_not_found",
            "The model `m` does not exist",
        )
    })
    .await;
    let e = error_of(&backend(config(&server.base_url()))).await;
    let text = e.to_string();
    assert!(text.contains("The model `m` does not exist"), "{text}");
    assert!(!text.contains("API version"), "{text}");
    assert!(text.contains("(POST http://127.0.0.1:"), "{text}");
}

#[tokio::test]
async fn an_html_error_page_is_shown_by_its_title() {
    let page = "<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n\
                <body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center>\n\
                </body></html>\n";
    let server = server(move |_| Reply::raw(502, page)).await;
    let e = error_of(&backend(config(&server.base_url()).with_max_retries(0))).await;
    let text = e.to_string();
    assert!(
        text.starts_with("server error (HTTP 502): an HTML page titled \"502 Bad Gateway\""),
        "{text}"
    );
    assert!(!text.contains("<html") && !text.contains("\\n"), "{text}");
}

#[tokio::test]
async fn a_retry_after_over_the_cap_says_both() {
    let server = server(|_| Reply::rate_limited(600)).await;
    let e = error_of(&backend(
        config(&server.base_url()).with_max_retry_after(Duration::from_secs(60)),
    ))
    .await;
    let text = e.to_string();
    assert!(text.contains("asked to wait 600 s"), "{text}");
    assert!(text.contains("the 60 s cap"), "{text}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(600)));
    assert_eq!(server.request_count(), 1);
}

#[tokio::test]
async fn retries_and_rate_limit_holds_are_reported_as_they_begin() {
    let seen: Arc<Mutex<Vec<Wait>>> = Arc::default();
    let observer = {
        let seen = Arc::clone(&seen);
        WaitObserver::new(move |wait| {
            seen.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(wait.clone())
        })
    };
    // The first request is told to wait 2 s, which pauses every request of the model.
    let server = server(|request| {
        if request.last_user() == "first" && request.seq == 0 {
            Reply::rate_limited(2)
        } else {
            Reply::completion_for(request, "ok")
        }
    })
    .await;
    let backend = backend(config(&server.base_url()).with_wait_observer(observer));
    let first = {
        let backend = backend.clone();
        tokio::spawn(async move {
            backend
                .complete(CompletionRequest::prompt("m", "first"))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = backend
        .complete(CompletionRequest::prompt("m", "second"))
        .await;
    assert!(second.is_ok(), "{second:?}");
    assert!(matches!(first.await, Ok(Ok(_))));
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert!(
        seen.iter().any(|w| matches!(w, Wait::Retry { attempt: 1, wait, server_asked: true, .. } if *wait == Duration::from_secs(2))),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|w| matches!(w, Wait::RateLimit { model, .. } if model == "m")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_web_page_answering_200_is_named_and_the_url_shown() {
    let page = "<html><head><title>Welcome to nginx!</title></head><body>hi</body></html>";
    let server = server(move |_| Reply::raw(200, page)).await;
    let e = error_of(&backend(config(&server.base_url()))).await;
    let text = e.to_string();
    assert!(
        text.contains("an HTML page titled \"Welcome to nginx!\""),
        "{text}"
    );
    assert!(text.contains("ending at its version"), "{text}");
    assert!(
        text.contains(&format!("(POST {}/chat/completions)", server.base_url())),
        "{text}"
    );
    // Malformed JSON that is not a page still names the URL.
    let server2 = MockServer::start(|_: &ServerRequest| Reply::raw(200, "{not json"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let text = error_of(&backend(config(&server2.base_url())))
        .await
        .to_string();
    assert!(text.contains("malformed JSON"), "{text}");
    assert!(text.contains("(POST http://127.0.0.1:"), "{text}");
}
