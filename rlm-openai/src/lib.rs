//! An OpenAI-compatible chat-completions backend for rlm: pooled HTTP, per-model rate
//! limits, and retries that honour the server's hints.
//!
//! [`OpenAiBackend`] implements [`rlm_core::LlmBackend`] and [`rlm_core::BatchExecutor`]
//! over `POST {base_url}/chat/completions`. It talks to the OpenAI API and to the servers
//! that copy it (vLLM, llama.cpp, Ollama, LM Studio, OpenRouter, LiteLLM). Configure it with
//! an [`OpenAiConfig`]; a bad setting is a [`ConfigError`], never a panic.
//!
//! ```no_run
//! use rlm_core::{BatchExecutor, BatchOptions, CompletionRequest, LlmBackend};
//! use rlm_openai::{OpenAiBackend, OpenAiConfig, RateLimit};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // OPENAI_BASE_URL, OPENAI_API_KEY, OPENAI_ORG_ID, OPENAI_PROJECT_ID, then overrides.
//! let config = OpenAiConfig::from_env()
//!     .with_default_model("gpt-4o-mini")
//!     .with_rate_limit(RateLimit::new(500, 200_000))
//!     .with_concurrency(32);
//! let backend = OpenAiBackend::new(config)?;
//!
//! let answer = backend
//!     .complete(CompletionRequest::prompt("", "Capital of France? One word."))
//!     .await?;
//! println!("{}", answer.text);
//!
//! let prompts = (0..1_000)
//!     .map(|i| CompletionRequest::prompt("", format!("Summarise chunk {i}")))
//!     .collect();
//! let results = backend.complete_batch(prompts, &BatchOptions::new(32)).await;
//! let failed = results.iter().filter(|r| r.is_err()).count();
//! println!("{failed} of {} failed", results.len());
//! # Ok(())
//! # }
//! ```
//!
//! # What a call does
//!
//! 1. **Waits for the model's rate limits** ([`RateLimit`]: requests and tokens per minute,
//!    a default for every model plus per-model overrides). Every clone and every concurrent
//!    call of a backend shares one budget per model. Calls are paced smoothly: at most about
//!    one second's share (`limit / 60`, at least 1) goes out at once, and no 60-second window
//!    ever holds more than the limit. Waiting callers are admitted in arrival order. A
//!    request's tokens are estimated before sending (its messages at four bytes a token plus
//!    its `max_tokens`, or [`PACING_COMPLETION_TOKENS`] without one); a request
//!    larger than a second's share still goes through, at the sustained rate, and one
//!    larger than the whole minute's budget goes alone, in a minute with nothing else. A
//!    call counts from the moment it is let through, so a wait for the other budget or for a
//!    server's pause never lets a window overfill. Retries are requests too: each attempt
//!    takes its share again. The pacing runs on tokio's clock, so it works with time
//!    paused in tests. With a [`SharedPacer`] ([`OpenAiConfig::with_shared_pacer`]; the
//!    feature `redis` brings `RedisPacer`), a request the process's own limiter lets
//!    through must also pass the books shared by every process, kept atomically in Redis
//!    by one Lua script of the same shape (a GCRA bucket per budget and a one-minute
//!    ledger), and a server's pause holds every process; while Redis is unreachable the
//!    process's own limiter alone paces it, with one warning per outage.
//! 2. **Sends one JSON body**: `model` (the request's, or the configured default when empty),
//!    `messages`, whichever of `temperature`, `top_p`, `max_tokens`, `stop` and `seed` are
//!    set, and the request's `extra` fields verbatim (an `extra` field wins over a field of
//!    the same name). The key goes in `Authorization: Bearer`, with `OpenAI-Organization` and
//!    `OpenAI-Project` when configured.
//! 3. **Reads the reply tolerantly**, up to [`DEFAULT_MAX_RESPONSE_BYTES`] (configurable;
//!    a larger successful reply is an error, not a memory spike): content as a string,
//!    `null` (empty text, finish reason kept) or an array of `{"type": "text", "text"}`
//!    parts; usage optional; unknown fields ignored. A reply without choices or with
//!    malformed JSON is [`LlmError::InvalidResponse`](rlm_core::LlmError::InvalidResponse)
//!    with a short excerpt.
//! 4. **Classifies failures** with [`LlmError::from_http_status`](rlm_core::LlmError::from_http_status)
//!    from the `{"error": {"message", "type", "code"}}` body (or the status text or a body
//!    excerpt when it is not JSON); timeouts become `Timeout`, connection and I/O failures
//!    `Connection`. The API key is scrubbed from every message, even when a server echoes it.
//!    Messages name the URL called (without credentials); an HTML page is shown by its
//!    `<title>`; a 404 whose body is not an API error says the base URL should end at the API
//!    version (`.../v1`) and carries the code [`NOT_AN_API_ENDPOINT`].
//! 5. **Retries** ([`DEFAULT_MAX_RETRIES`] times unless configured) on 429, 5xx, 408, 409,
//!    timeouts and connection failures, never on 400, 401, 403, 404, 422 or a 429 with
//!    `insufficient_quota`. The wait is the server's `retry-after-ms` or `Retry-After`
//!    (seconds, fractions allowed, or an HTTP date); without one (or with a zero one),
//!    exponential backoff from 0.5 s doubling to 16 s, each wait varied by ±25%.
//!    `x-should-retry: false` vetoes a retry and `x-should-retry: true` allows one for an
//!    unusual 4xx. A server's requested
//!    wait also pauses every other call of the same model, so a 429 does not set off a
//!    stampede. A `Retry-After` longer than [`DEFAULT_MAX_RETRY_AFTER`] (configurable) is
//!    not waited out: the error is returned at once, hint included, and its message gives the
//!    wait asked for and the cap. The final error carries the provider's status and message.
//!
//! A [`WaitObserver`] ([`OpenAiConfig::with_wait_observer`]) hears of each retry wait and each
//! rate-limit hold longer than [`RATE_LIMIT_NOTICE_AFTER`] as it begins ([`Wait`]), for
//! progress displays and logs.
//!
//! Each call runs in a `tracing` span `openai.chat` with the model, attempt, HTTP status and
//! token counts; the key is never recorded.
//!
//! TLS is rustls with the `ring` provider, installed as the process default when no provider
//! is; plain `http` works for local servers.
//!
//! # Performance
//!
//! `cargo bench -p rlm-openai --bench dispatch` runs batches against the in-process
//! loopback mock server, on a 2-core machine where client and server share both cores
//! (and other builds were running). Wall time over the ideal `ceil(N / C) * latency`:
//!
//! | N | C | server latency | wall / ideal (median of 3) | timer floor |
//! |---:|---:|---:|---:|---:|
//! | 100 | 16 | 100 ms | 1.019 | 1.012 |
//! | 1,000 | 16 | 100 ms | 1.023 | 1.014 |
//! | 1,000 | 100 | 100 ms | 1.03–1.05 over several runs | 1.013 |
//! | 10,000 | 100 | 100 ms | 1.025 | 1.012 |
//! | 10,000 | 1,000 | 100 ms | 1.10–1.15 | 1.012 |
//!
//! The timer floor is what a client costing nothing would reach: the mock server's
//! `sleep(100 ms)` really takes about 101.2 ms (tokio's timer ticks in milliseconds). With
//! no latency, 10,000 calls run at 30,000–44,000 calls/s for C = 16 to 256 and about
//! 24,000 calls/s for C = 1,000, at 40–55 µs of CPU per call for client, server and kernel
//! together. Profiling (perf) puts this crate's own work (encoding, decoding, pacing,
//! retry bookkeeping) at about 6% of that CPU; the rest is reqwest/hyper, the mock server
//! and the kernel. Spawning a task per batch item was measured and dropped: 10–20 µs more
//! CPU per call, no gain in throughput.

mod backend;
mod config;
mod limit;
mod retry;
mod shared;
mod wait;
mod wire;

pub use backend::OpenAiBackend;
pub use config::{
    ConfigError, DEFAULT_BASE_URL, DEFAULT_CONCURRENCY, DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES, DEFAULT_MAX_RETRY_AFTER, OpenAiConfig, PACING_COMPLETION_TOKENS,
    RateLimit,
};
#[cfg(feature = "redis")]
pub use shared::RedisPacer;
pub use shared::SharedPacer;
pub use wait::{RATE_LIMIT_NOTICE_AFTER, Wait, WaitObserver};
pub use wire::NOT_AN_API_ENDPOINT;
