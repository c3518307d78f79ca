//! Test support for rlm: a loopback OpenAI-compatible mock server and fixtures, shared by the
//! backend tests, the cross-crate integration tests in `tests/`, the CLI's end-to-end tests
//! and the benchmarks.
//!
//! - [`MockServer`]: a real HTTP/1.1 server on 127.0.0.1 (hyper) that answers chat
//!   completions through a [`Handler`], with injected latency and faults ([`Reply`]: errors
//!   with `Retry-After`, malformed bodies, dropped connections, slow answers), and counts the
//!   requests in flight so tests assert concurrency at the server.
//! - [`rlm_handler`]: a scripted root model plus a deterministic sub model, for whole RLM runs.
//! - [`fixtures`]: deterministic generated contexts (haystacks with needles).
//! - [`RedisServer`]: a real `redis-server` on a loopback port, for the shared-state tests.
//! - [`harness`]: a test harness for tests that need a component outside Rust
//!   (`redis-server`, Chromium, a Python client): a missing one is reported as ignored in
//!   the summary line, never as a silent pass, and is a failure under `CI=true`.
//! - [`python`]: the Python test environment (`target/venv-ci`, the pinned packages of
//!   `tests/python/requirements-ci.txt`), made by the first test that needs it.
//!
//! Nothing here reaches beyond loopback.

pub mod fixtures;
pub mod harness;
pub mod python;
mod redis;
mod server;

pub use redis::{RedisServer, redis_server_binary};
pub use server::{Handler, Hold, MockServer, MockServerBuilder, Reply, ServerRequest};

/// A handler for whole RLM runs against one server.
///
/// Requests for `root_model` get `root_replies[turn]`, where `turn` is the number of assistant
/// messages in the conversation, so the script replays the same way however often the run
/// is retried; past the end of the script the server answers 400 with a message saying so.
/// Requests for any other model are sub-calls and get `sub(prompt)`, where `prompt` is the
/// last user message.
pub fn rlm_handler<F>(root_model: &str, root_replies: Vec<String>, sub: F) -> impl Handler
where
    F: Fn(&str) -> String + Send + Sync + 'static,
{
    let root_model = root_model.to_owned();
    move |request: &ServerRequest| {
        if request.model() == root_model {
            scripted_turn(request, &root_replies)
        } else {
            Reply::completion_for(request, sub(request.last_user()))
        }
    }
}

/// A scripted root model's reply to `request`: `replies[turn]`, where `turn` is the number
/// of assistant messages in the conversation; past the end, a 400 saying so.
pub fn scripted_turn(request: &ServerRequest, replies: &[String]) -> Reply {
    let turn = request.assistant_turns();
    match replies.get(turn) {
        Some(reply) => Reply::completion_for(request, reply.clone()),
        None => Reply::error(
            400,
            "invalid_request_error",
            "script_exhausted",
            &format!("the mock root model has no reply for turn {}", turn + 1),
        ),
    }
}

/// The README's Rust code, compiled by `cargo test` as doctests so it stays true.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
