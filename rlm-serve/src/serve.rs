//! `rlm serve`: an OpenAI-compatible HTTP server for Recursive Language Models.
//!
//! Endpoints: `GET /v1/models` (lists `rlm`), `GET /v1/models/{id}` (any id),
//! `POST /v1/chat/completions` (with `stream: false`, or `stream: true` as server-sent events
//! ending `data: [DONE]`, with `stream_options.include_usage`), `GET /health`, `GET /metrics`
//! ([`crate::metrics`]). Errors have OpenAI's shape, `{"error": {"message", "type", "code"}}`.
//!
//! - Messages become a run by [`crate::inline::run_input`] (a message over
//!   [`ServeOptions::inline_max_bytes`] becomes part of the context); the other parameters
//!   are judged by [`crate::params::Params`] (honoured, mapped, or 400
//!   `unsupported_parameter`).
//! - Draining at shutdown: [`crate::drain`]; the access log: [`crate::access_log`].
//! - The query is the last user message. The context is the server's shared context when it
//!   has one, else the text of the messages before the last user message (one document
//!   each; a single document is a string); system (and developer) messages are extra
//!   instructions to the root model, never context.
//! - At most [`ServeOptions::max_runs`] runs at once; the rest wait in arrival order, and
//!   beyond [`ServeOptions::max_queue`] waiting requests a request gets 429 with
//!   `Retry-After`.
//! - A client that disconnects cancels its run (running code stops, in-flight sub-calls are
//!   dropped).
//! - With [`ServeOptions::server_key`], `/v1/*` needs `Authorization: Bearer KEY` (compared in
//!   constant time); `/health` stays open.
//! - Web pages are kept out: without a key, `Host` must be a loopback name or the listen
//!   address (421); a browser `Origin` must be the server's own or one of
//!   [`ServeOptions::cors_origins`] (403), which also get CORS; a `POST` must be JSON (415).
//! - Connections, their pace and the request bytes held at once are bounded
//!   ([`ServeOptions::max_connections`], `header_timeout`, `body_timeout`,
//!   `max_body_bytes_in_flight`).

use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::Stream;
use rlm_repl::{Context, Event, Observer, RlmError, RunResult, SharedContext, StopReason};
use serde::Deserialize;
use serde_json::{Value, json};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::DropGuard;

use crate::access_log::{AccessLog, ErrorCode, RunNote, Telemetry};
use crate::drain::Lifecycle;
use crate::inline::{self, ChatMessage};
use crate::params::Params;
use crate::{FailureKind, RunOptions, Runner, ServeError, describe_error_for_client, trajectory};

mod responses;

/// Where `rlm serve` listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8000";
/// The largest request body by default: 256 MiB.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 256 << 20;
/// Runs at once by default.
pub const DEFAULT_MAX_RUNS: usize = 8;
/// Requests that may wait for a run by default.
pub const DEFAULT_MAX_QUEUE: usize = 64;
/// How long a Responses API session is kept after its last use, by default.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(3600);
/// Responses API sessions kept at once, by default.
pub const DEFAULT_MAX_SESSIONS: usize = 256;
/// The one model `/v1/models` lists.
pub const MODEL_ID: &str = "rlm";
/// Characters of the answer per streamed `delta.content` chunk.
const ANSWER_CHUNK_CHARS: usize = 1_000;
/// Stream events a client may be behind by: past it, trajectory lines are left out (and the
/// client is told how many) instead of piling up; the answer always waits for the client.
const STREAM_QUEUE: usize = 1_024;
/// Connections at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// The longest wait for a request's headers (and between requests on a kept-alive
/// connection) by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The longest wait for a whole request body by default.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Bytes of request bodies held at once (being read, parsed or waiting for a run) by
/// default: 1 GiB.
pub const DEFAULT_MAX_BODY_BYTES_IN_FLIGHT: usize = 1 << 30;
/// Request body bytes are counted in these units (a semaphore counts in `u32`).
const BODY_UNIT: usize = 1024;
/// Seconds between keep-alive comments on a stream (they also reveal a gone client).
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// Settings of the HTTP server.
#[derive(Clone)]
pub struct ServeOptions {
    /// Runs at once (at least 1).
    pub max_runs: usize,
    /// Requests that may wait for a run; one more is answered 429.
    pub max_queue: usize,
    /// The bearer token `/v1/*` requires (`None`: none).
    pub server_key: Option<String>,
    /// The largest request body in bytes; a larger one is answered 413.
    pub max_request_bytes: usize,
    /// The context of every request (`None`: each request's earlier messages).
    pub context: Option<SharedContext>,
    /// Connections at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// The longest wait for a request's headers, and for the next request on a kept-alive
    /// connection: a slow or idle connection is closed after it.
    pub header_timeout: Duration,
    /// The longest wait for a whole request body (408 after it).
    pub body_timeout: Duration,
    /// Bytes of request bodies held at once, by every request together (at least
    /// `max_request_bytes`); a body that does not fit is answered 503 with `Retry-After`.
    pub max_body_bytes_in_flight: usize,
    /// Browser origins (`https://app.example`) allowed to call the server cross-site: their
    /// CORS preflights are answered and their responses carry
    /// `Access-Control-Allow-Origin`. Any other cross-site browser request is refused.
    pub cors_origins: Vec<String>,
    /// How long a Responses API session is kept after its last use.
    pub session_ttl: Duration,
    /// Responses API sessions kept at once (the least recently used is evicted).
    pub max_sessions: usize,
    /// The longest message shown whole to the root model; a longer one becomes part of the
    /// context (see [`crate::inline`]). 0: no limit.
    pub inline_max_bytes: usize,
    /// How long runs in flight may take to finish once the server drains (see
    /// [`crate::drain`]); then they are cancelled.
    pub shutdown_grace: Duration,
    /// One line per request (`None`: none). See [`crate::access_log`].
    pub access_log: Option<AccessLog>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            max_runs: DEFAULT_MAX_RUNS,
            max_queue: DEFAULT_MAX_QUEUE,
            server_key: None,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            context: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_body_bytes_in_flight: DEFAULT_MAX_BODY_BYTES_IN_FLIGHT,
            cors_origins: Vec::new(),
            session_ttl: DEFAULT_SESSION_TTL,
            max_sessions: DEFAULT_MAX_SESSIONS,
            inline_max_bytes: crate::inline::DEFAULT_INLINE_MAX_BYTES,
            shutdown_grace: crate::drain::DEFAULT_SHUTDOWN_GRACE,
            access_log: None,
        }
    }
}

impl fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServeOptions")
            .field("max_runs", &self.max_runs)
            .field("max_queue", &self.max_queue)
            .field("server_key", &self.server_key.as_ref().map(|_| "<set>"))
            .field("max_request_bytes", &self.max_request_bytes)
            .field("context", &self.context)
            .field("max_connections", &self.max_connections)
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .field("max_body_bytes_in_flight", &self.max_body_bytes_in_flight)
            .field("cors_origins", &self.cors_origins)
            .field("session_ttl", &self.session_ttl)
            .field("max_sessions", &self.max_sessions)
            .field("inline_max_bytes", &self.inline_max_bytes)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("access_log", &self.access_log)
            .finish()
    }
}

/// Refuses to listen beyond loopback without a server key.
///
/// # Errors
/// [`ServeError::Config`] when `addr` is not a loopback address and `has_key` is false.
pub fn check_exposure(addr: &SocketAddr, has_key: bool) -> Result<(), ServeError> {
    if addr.ip().is_loopback() || has_key {
        Ok(())
    } else {
        Err(ServeError::Config(format!(
            "listening on {addr} (beyond loopback) needs a server key: set one in an \
             environment variable and name it with --server-key-env"
        )))
    }
}

/// Serves until `shutdown` completes.
///
/// # Errors
/// The listener failed.
pub async fn serve(
    listener: TcpListener,
    runner: Runner,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let local = listener.local_addr().ok();
    let max_connections = options.max_connections.max(1);
    let header_timeout = options.header_timeout;
    let grace = options.shutdown_grace;
    let lifecycle = Arc::new(Lifecycle::default());
    let app = routes(runner, options, local, Arc::clone(&lifecycle));
    let connections = Arc::new(Semaphore::new(max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of descriptors, or a connection reset before it was accepted:
                    // wait a little rather than spin, and go on.
                    tracing::warn!(%error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            tokio::spawn(refuse_connection(stream, max_connections));
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(header_timeout);
        let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(permit);
        });
    }
    crate::drain::drain(listener, graceful, &lifecycle, grace).await;
    Ok(())
}

/// Answers a connection over the cap with a 503 and closes it.
async fn refuse_connection(mut stream: tokio::net::TcpStream, max_connections: usize) {
    use tokio::io::AsyncWriteExt;
    let body = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "server_error",
        "too_many_connections",
        format!("the server holds its most connections ({max_connections}); try again"),
    )
    .body()
    .to_string();
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         retry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// The server's routes, for [`axum::serve()`] or a test. Without a server key, a request's
/// `Host` must be a loopback name or address (see [`serve`] for the listen address too).
pub fn router(runner: Runner, options: ServeOptions) -> Router {
    routes(runner, options, None, Arc::new(Lifecycle::default()))
}

fn routes(
    runner: Runner,
    options: ServeOptions,
    local: Option<SocketAddr>,
    lifecycle: Arc<Lifecycle>,
) -> Router {
    let limit = options.max_request_bytes;
    let max_body_units = options
        .max_body_bytes_in_flight
        .max(options.max_request_bytes)
        .div_ceil(BODY_UNIT)
        .min(Semaphore::MAX_PERMITS);
    let telemetry = Arc::new(Telemetry {
        log: options.access_log.clone(),
        ..Telemetry::default()
    });
    let state = Arc::new(AppState {
        telemetry: Arc::clone(&telemetry),
        lifecycle: Arc::clone(&lifecycle),
        gate: Gate::new(options.max_runs, options.max_queue),
        responses: responses::Store::new(options.session_ttl, options.max_sessions),
        runner,
        options,
        local,
        body_units: Arc::new(Semaphore::new(max_body_units)),
        max_body_units,
        next_id: AtomicU64::new(1),
        average_run_ms: AtomicU64::new(1_000),
    });
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/metrics", get(metrics))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::retrieve).delete(responses::delete),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), bounded_body))
        .layer(middleware::from_fn_with_state(state.clone(), browser_guard))
        .layer(middleware::from_fn_with_state(
            lifecycle,
            crate::drain::refuse_while_draining,
        ))
        .layer(middleware::from_fn_with_state(
            telemetry,
            crate::access_log::observe,
        ))
        .with_state(state)
}

struct AppState {
    /// Metrics and the access log.
    telemetry: Arc<Telemetry>,
    /// Draining and cancelling at shutdown.
    lifecycle: Arc<Lifecycle>,
    runner: Runner,
    options: ServeOptions,
    /// The address the server listens on, when known.
    local: Option<SocketAddr>,
    /// Request body bytes that may be held at once, in [`BODY_UNIT`]s.
    body_units: Arc<Semaphore>,
    /// All of `body_units`.
    max_body_units: usize,
    gate: Gate,
    /// The Responses API's sessions.
    responses: responses::Store,
    next_id: AtomicU64,
    /// A moving average of run times, for `Retry-After`.
    average_run_ms: AtomicU64,
}

impl AppState {
    /// Whether the run of `request` must give a JSON answer of a schema (its
    /// `response_format`, or the server's `--output-schema`).
    fn typed(&self, request: &ChatRequest) -> bool {
        request.output_schema.is_some() || self.runner.config().output_schema.is_some()
    }

    fn record_run(&self, elapsed: Duration) {
        let ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
        let old = self.average_run_ms.load(Ordering::Relaxed);
        self.average_run_ms
            .store(old - old / 4 + ms / 4, Ordering::Relaxed);
    }

    /// Seconds a refused client should wait: about the time for the queue to move.
    fn retry_after(&self) -> u64 {
        let average = self.average_run_ms.load(Ordering::Relaxed).max(1);
        let waiting = self.gate.queued.load(Ordering::Relaxed) as u64 + 1;
        let runs = self.gate.max_runs.max(1) as u64;
        (average * waiting).div_ceil(runs * 1000).max(1)
    }
}

/// At most `max_runs` runs at once, waiting in arrival order (tokio's semaphore is fair).
struct Gate {
    permits: Arc<Semaphore>,
    max_runs: usize,
    queued: AtomicUsize,
    max_queue: usize,
}

impl Gate {
    fn new(max_runs: usize, max_queue: usize) -> Self {
        let max_runs = max_runs.max(1);
        Self {
            permits: Arc::new(Semaphore::new(max_runs)),
            max_runs,
            queued: AtomicUsize::new(0),
            max_queue,
        }
    }

    fn running(&self) -> usize {
        self.max_runs - self.permits.available_permits()
    }

    /// A run slot, after waiting in line; `None` when the line is full.
    async fn enter(&self) -> Option<OwnedSemaphorePermit> {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            return Some(permit);
        }
        let ahead = self.queued.fetch_add(1, Ordering::SeqCst);
        let _leave = Leave(&self.queued);
        if ahead >= self.max_queue {
            return None;
        }
        self.permits.clone().acquire_owned().await.ok()
    }
}

/// Leaves the line, however the wait ends (a gone client drops it).
struct Leave<'a>(&'a AtomicUsize);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An error in OpenAI's shape.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    code: &'static str,
    retry_after: Option<u64>,
    /// The request parameter at fault.
    param: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        Self {
            status,
            message,
            kind,
            code,
            retry_after: None,
            param: None,
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            code,
            message.into(),
        )
    }

    /// 422: the run gave no answer that conforms to the request's schema.
    fn schema_not_met(message: String) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_output",
            "schema_not_met",
            message,
        )
    }

    fn body(&self) -> Value {
        json!({"error": {
            "message": self.message,
            "type": self.kind,
            "code": self.code,
            "param": self.param,
        }})
    }

    /// The error a client is told: which side failed and the status class, never the
    /// upstream's URL, model names or messages (the server's log has them).
    fn from_run(error: &RlmError) -> Self {
        let (kind, message) = describe_error_for_client(error);
        match kind {
            FailureKind::UpstreamAuth => Self::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_auth",
                message,
            ),
            FailureKind::Upstream => Self::new(
                StatusCode::BAD_GATEWAY,
                "upstream_error",
                "upstream_error",
                message,
            ),
            FailureKind::Cancelled => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "cancelled",
                message,
            ),
            FailureKind::Config => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "server_config",
                message,
            ),
            FailureKind::Internal => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                message,
            ),
        }
    }
}

impl From<ServeError> for ApiError {
    fn from(error: ServeError) -> Self {
        match error {
            ServeError::BadRequest {
                code,
                param,
                message,
            } => Self {
                param,
                ..Self::bad_request(code, message)
            },
            other => Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                other.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(self.body())).into_response();
        response.extensions_mut().insert(ErrorCode(self.code));
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Keeps web pages out: a page a user visits must not start runs on a server that trusts
/// loopback, nor read its answers by DNS rebinding.
///
/// - Without a server key, `Host` must name loopback (`localhost`, a loopback address) or
///   the listen address: a rebound name is refused (421).
/// - A request with an `Origin` (a browser's) must come from the server's own origin or
///   one of [`ServeOptions::cors_origins`] (403). Those origins get CORS headers, and
///   their preflights (`OPTIONS`) are answered.
/// - A `POST` must say `Content-Type: application/json` (415): a form or `text/plain`
///   body is what a cross-site page can send without asking.
async fn browser_guard(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if state.options.server_key.is_none()
        && let Some(host) = host
        && !host_is_local(host, state.local)
    {
        return ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            "invalid_request_error",
            "host_not_allowed",
            format!(
                "Host {host:?} is not this server's: without a server key it answers only \
                 loopback names (localhost, 127.0.0.1, [::1])"
            ),
        )
        .into_response();
    }
    let origin = match headers.get(header::ORIGIN).map(|v| v.to_str()) {
        None => None,
        Some(Ok(origin)) => Some(origin.trim_end_matches('/').to_owned()),
        Some(Err(_)) => Some(String::new()),
    };
    let listed = origin.as_deref().is_some_and(|origin| {
        state
            .options
            .cors_origins
            .iter()
            .any(|allowed| allowed.trim_end_matches('/').eq_ignore_ascii_case(origin))
    });
    if let Some(origin) = &origin
        && !listed
        && !same_origin(origin, host)
    {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "origin_not_allowed",
            format!(
                "requests from the web page at {origin:?} are refused; the server allows a \
                 browser origin with --cors-origin ORIGIN"
            ),
        )
        .into_response();
    }
    let allow_origin = if listed {
        origin
            .as_deref()
            .and_then(|o| HeaderValue::from_str(o).ok())
    } else {
        None
    };
    if request.method() == axum::http::Method::OPTIONS
        && let Some(allow_origin) = &allow_origin
    {
        let allow_headers = request
            .headers()
            .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .cloned()
            .unwrap_or_else(|| HeaderValue::from_static("authorization, content-type"));
        let mut response = StatusCode::NO_CONTENT.into_response();
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin.clone());
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE, OPTIONS"),
        );
        out.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
        out.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from(600u32));
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
        return response;
    }
    if request.method() == axum::http::Method::POST && !is_json(request.headers()) {
        return ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            "the body must be JSON, sent with `Content-Type: application/json`".to_owned(),
        )
        .into_response();
    }
    let mut response = next.run(request).await;
    if let Some(allow_origin) = allow_origin {
        let out = response.headers_mut();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        out.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    response
}

/// Reads a request body within [`ServeOptions::body_timeout`] (408 after it) and holds its
/// bytes against [`ServeOptions::max_body_bytes_in_flight`] until the request is answered
/// (for a stream, until the run starts): a body that does not fit beside the others is
/// answered 503 with `Retry-After` before it is read, so what all requests hold at once stays
/// bounded.
async fn bounded_body(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let max = state.options.max_request_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared == Some(0) || (declared.is_none() && parts.method != axum::http::Method::POST) {
        return next.run(Request::from_parts(parts, body)).await;
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            format!(
                "the request body is larger than this server accepts ({max} bytes; see \
                 --max-request-bytes)"
            ),
        )
        .into_response()
    };
    let busy = |state: &AppState| {
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "server_busy",
            "the server holds as many request bytes as it may; try again shortly".to_owned(),
        );
        error.retry_after = Some(state.retry_after());
        error.into_response()
    };
    let units = |bytes: usize| u32::try_from(bytes.div_ceil(BODY_UNIT)).unwrap_or(u32::MAX);
    let mut held = match declared {
        Some(n) if n > max as u64 => return too_large(),
        Some(n) => match Arc::clone(&state.body_units).try_acquire_many_owned(units(n as usize)) {
            Ok(permit) => Some(permit),
            Err(_) => return busy(&state),
        },
        None => None,
    };
    let declared_units = held.as_ref().map_or(0, |p| p.num_permits());
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let deadline = tokio::time::Instant::now() + state.options.body_timeout;
    loop {
        let chunk =
            match tokio::time::timeout_at(deadline, futures_util::StreamExt::next(&mut stream))
                .await
            {
                Err(_) => {
                    return ApiError::new(
                        StatusCode::REQUEST_TIMEOUT,
                        "invalid_request_error",
                        "request_timeout",
                        format!(
                            "the request body did not arrive within {} s",
                            state.options.body_timeout.as_secs_f64()
                        ),
                    )
                    .into_response();
                }
                Ok(None) => break,
                Ok(Some(Err(_))) => {
                    return ApiError::bad_request("invalid_body", "the request body broke off")
                        .into_response();
                }
                Ok(Some(Ok(chunk))) => chunk,
            };
        if bytes.len() + chunk.len() > max {
            return too_large();
        }
        bytes.extend_from_slice(&chunk);
        // A body without a declared length takes its units as it arrives.
        let needed = units(bytes.len());
        let have = held.as_ref().map_or(0, |p| p.num_permits()) as u32;
        if needed > have.max(declared_units as u32) {
            match Arc::clone(&state.body_units).try_acquire_many_owned(needed - have) {
                Ok(more) => match &mut held {
                    Some(permit) => permit.merge(more),
                    None => held = Some(more),
                },
                Err(_) => return busy(&state),
            }
        }
    }
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    let response = next.run(request).await;
    drop(held);
    response
}

/// Whether `host` (a `Host` header: name or address, maybe a port) names loopback or the
/// listen address.
fn host_is_local(host: &str, local: Option<SocketAddr>) -> bool {
    let name = match host.strip_prefix('[') {
        // A bare IPv6 address (not valid in `Host`, but unambiguous).
        None if host.parse::<std::net::Ipv6Addr>().is_ok() => host,
        // `[::1]:8000`
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.chars().all(|c| c.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    let name = name.trim_end_matches('.');
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    match name.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || local.is_some_and(|local| local.ip() == ip),
        Err(_) => false,
    }
}

/// Whether a browser's `Origin` is the server's own (`http://` + the `Host` it was sent to).
fn same_origin(origin: &str, host: Option<&str>) -> bool {
    let Some(host) = host else {
        return false;
    };
    origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// Whether the request says its body is JSON (`application/json`, any parameters).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.options.server_key {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .trim();
        if !bool::from(given.as_bytes().ct_eq(key.as_bytes())) {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "invalid_api_key",
                "missing or wrong server key: send it as `Authorization: Bearer KEY`".to_owned(),
            )
            .into_response();
        }
    }
    next.run(request).await
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "running": state.gate.running(),
        "queued": state.gate.queued.load(Ordering::SeqCst),
        "max_runs": state.gate.max_runs,
        "body_bytes_in_flight":
            (state.max_body_units - state.body_units.available_permits()) * BODY_UNIT,
    }))
    .into_response()
}

/// `GET /metrics`: see [`crate::metrics`].
async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.telemetry.metrics.encode(
        state.gate.running(),
        state.gate.queued.load(Ordering::SeqCst),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(crate::metrics::CONTENT_TYPE),
        )],
        text,
    )
        .into_response()
}

async fn models() -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "rlm"}],
    }))
    .into_response()
}

/// Any model name is accepted, so any model exists: `client.models.retrieve(NAME)` works.
async fn model(axum::extract::Path(id): axum::extract::Path<String>) -> Response {
    axum::Json(json!({"id": id, "object": "model", "created": 0, "owned_by": "rlm"}))
        .into_response()
}

async fn not_found() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "unknown_url",
        "no such endpoint: this server has GET /v1/models, GET /v1/models/{id}, POST \
         /v1/chat/completions, GET /health and GET /metrics"
            .to_owned(),
    )
    .into_response()
}

async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "invalid_request_error",
        "method_not_allowed",
        "wrong method: this server has GET /v1/models, GET /v1/models/{id}, POST \
         /v1/chat/completions, GET /health and GET /metrics"
            .to_owned(),
    )
    .into_response()
}

/// The messages and the model of a chat-completions request (the other parameters are
/// judged by [`Params`]).
#[derive(Debug, Deserialize)]
struct RawRequest {
    #[serde(default)]
    model: Option<String>,
    messages: Vec<RawMessage>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    response_format: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct RawMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

/// A request, read.
#[derive(Debug)]
struct ChatRequest {
    model: String,
    stream: bool,
    include_usage: bool,
    query: String,
    /// The run's context (taken by [`ChatRequest::context`]).
    context: Option<Context>,
    instructions: Option<String>,
    /// The answer's schema, from `response_format` (see [`crate::schema`]).
    output_schema: Option<rlm_repl::OutputSchema>,
    params: Params,
    /// Messages moved into the context for their length.
    moved: usize,
}

impl ChatRequest {
    /// Reads a request; its messages become a run's input by [`inline::run_input`] (the
    /// server's context, if any, and the inline limit).
    fn parse(
        body: &[u8],
        shared: Option<&SharedContext>,
        inline_max_bytes: usize,
    ) -> Result<Self, ApiError> {
        let raw: RawRequest = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("the body is not a chat-completions request: {e}"),
            )
        })?;
        let output_schema = crate::schema::from_response_format(raw.response_format.as_ref())
            .map_err(|message| ApiError::bad_request("invalid_response_format", message))?;
        let params = Params::from_body(body)?;
        let mut texts = Vec::with_capacity(raw.messages.len());
        for (index, message) in raw.messages.into_iter().enumerate() {
            let text = match message.content {
                None => String::new(),
                Some(Content::Text(text)) => text,
                Some(Content::Parts(parts)) => {
                    let mut text = String::new();
                    for part in parts {
                        if part.kind != "text" {
                            return Err(ApiError::bad_request(
                                "unsupported_content",
                                format!(
                                    "messages[{index}] has a {:?} part; only text is supported",
                                    part.kind
                                ),
                            ));
                        }
                        text.push_str(&part.text.unwrap_or_default());
                    }
                    text
                }
            };
            texts.push(ChatMessage::new(message.role, text));
        }
        let input = inline::run_input(texts, shared, inline_max_bytes)?;
        let instructions = match (input.instructions, params.instructions()) {
            (Some(a), Some(b)) => Some(format!("{a}\n\n{b}")),
            (a, b) => a.or(b),
        };
        Ok(Self {
            model: raw.model.unwrap_or_else(|| MODEL_ID.to_owned()),
            stream: raw.stream.unwrap_or(false),
            include_usage: params.include_usage,
            query: input.query,
            context: Some(input.context),
            instructions,
            output_schema,
            params,
            moved: input.moved,
        })
    }

    /// The run's context (an empty string once taken).
    fn context(&mut self) -> Context {
        self.context
            .take()
            .unwrap_or_else(|| Context::Text(String::new()))
    }
}

async fn chat(
    State(state): State<Arc<AppState>>,
    axum::Extension(note): axum::Extension<RunNote>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match chat_inner(state, note, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn chat_inner(
    state: Arc<AppState>,
    note: RunNote,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "request_too_large"
        } else {
            "invalid_body"
        };
        let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
            format!(
                "the request body is larger than this server accepts ({} bytes; see \
                 --max-request-bytes)",
                state.options.max_request_bytes
            )
        } else {
            rejection.body_text()
        };
        ApiError::new(status, "invalid_request_error", code, message)
    })?;
    let mut request = ChatRequest::parse(
        &body,
        state.options.context.as_ref(),
        state.options.inline_max_bytes,
    )?;
    drop(body);
    if state.typed(&request) {
        request.params.for_typed_answer()?;
    }
    let context = request.context();

    let Some(permit) = state.gate.enter().await else {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "server_busy",
            format!(
                "the server is busy: {} running and {} waiting, its most; retry later",
                plural(state.gate.max_runs, "run"),
                plural(state.gate.max_queue, "request")
            ),
        );
        error.retry_after = Some(state.retry_after());
        return Err(error);
    };
    if state.lifecycle.draining() {
        return Ok(crate::drain::shutting_down(
            "the server is shutting down and starts no new runs",
        ));
    }
    let id = format!(
        "chatcmpl-rlm-{}",
        state.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let reply = Reply {
        id,
        created,
        model: std::mem::take(&mut request.model),
    };
    note.started(&reply.id);
    if request.stream {
        return Ok(stream_run(state, request, context, permit, reply, note));
    }

    // A gone client drops this future, and with it the guards: the run is cancelled, and
    // counted so.
    let cancel = state.lifecycle.run_token();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let started = Instant::now();
    let counted = CountedIfDropped {
        metrics: &state.telemetry.metrics,
        started,
        done: false,
    };
    let typed = state.typed(&request);
    let options = RunOptions {
        instructions: request.instructions,
        observer: None,
        cancel,
        output_schema: request.output_schema,
    };
    let result = state.runner.run(request.query, context, options).await;
    counted.disarm();
    state.record_run(started.elapsed());
    drop(permit);
    log_run(&reply.id, &result, started.elapsed());
    state.telemetry.metrics.run(&result, started.elapsed());
    let shut_down = state.lifecycle.cancelled_run(&result);
    note.finished(&result, shut_down.then_some("shutting_down"));
    if shut_down {
        return Ok(crate::drain::shutting_down(crate::drain::CANCELLED_MESSAGE));
    }
    let mut result = result.map_err(|e| ApiError::from_run(&e))?;
    if let Some(message) = crate::schema::schema_not_met(&result, typed) {
        return Err(ApiError::schema_not_met(message));
    }
    let cut = request.params.apply(&mut result);
    let mut body = reply.completion(&result);
    request.params.annotate(&mut body, request.moved, cut);
    Ok(axum::Json(body).into_response())
}

/// Counts a non-streaming run in the metrics as `cancelled` when its request is dropped
/// (the client left) before the run ended; a run that ends is counted with its result.
struct CountedIfDropped<'a> {
    metrics: &'a crate::metrics::Metrics,
    started: Instant,
    done: bool,
}

impl CountedIfDropped<'_> {
    fn disarm(mut self) {
        self.done = true;
    }
}

impl Drop for CountedIfDropped<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.metrics.run_cancelled(self.started.elapsed());
        }
    }
}

/// One line per finished run (`RUST_LOG=rlm_serve=info`); never the query or the answer.
/// A failed run is a warning (shown by default) with the whole error, upstream URL and
/// model included: the client is told only the kind of failure.
fn log_run(id: &str, result: &Result<RunResult, RlmError>, elapsed: Duration) {
    let elapsed_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX);
    match result {
        Ok(result) => tracing::info!(
            id,
            stopped = result.stopped.as_str(),
            iterations = result.iterations,
            sub_calls = result.sub_calls,
            elapsed_ms,
            "run finished"
        ),
        Err(error) => tracing::warn!(id, elapsed_ms, %error, "run failed"),
    }
}

/// What every chunk or reply of one request repeats.
struct Reply {
    id: String,
    created: u64,
    model: String,
}

impl Reply {
    fn completion(&self, result: &RunResult) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": result.answer},
                "finish_reason": finish_reason(result),
            }],
            "usage": usage(result),
            "rlm": rlm_summary(result),
        })
    }

    fn chunk(&self, delta: Value, finish_reason: Option<&str>) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        })
    }
}

/// `stop` for a final answer, `length` when a budget ended the run (the best answer).
fn finish_reason(result: &RunResult) -> &'static str {
    if result.stopped == StopReason::Final {
        "stop"
    } else {
        "length"
    }
}

fn usage(result: &RunResult) -> Value {
    let (prompt, completion) = crate::total_tokens(result);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

/// The `rlm` object: how the run went. `cost_usd` prices the run's usage as the run saw it
/// (sub-calls answered by the shared cache included) by the server's prices.
fn rlm_summary(result: &RunResult) -> Value {
    json!({
        "iterations": result.iterations,
        "stopped": result.stopped.as_str(),
        "sub_calls": result.sub_calls,
        "failed_sub_calls": result.failed_sub_calls,
        "warnings": result.warnings,
        "cost_usd": result.cost,
    })
}

fn sse(value: &Value) -> SseEvent {
    SseEvent::default().data(value.to_string())
}

/// `n` and `noun`, plural when `n` is not 1.
fn plural(n: usize, noun: &str) -> String {
    format!("{n} {noun}{}", if n == 1 { "" } else { "s" })
}

/// What the run task sends to the response stream.
enum Message {
    Event(SseEvent),
    End,
}

/// The run's trajectory lines on their way to a streaming client, bounded: a line that finds
/// the queue full is left out and counted, and the next line that fits is preceded by a note
/// saying how many were left out. So a client that reads slowly (or not at all) costs at most
/// the queue, never the whole trajectory.
struct Trajectory {
    tx: mpsc::Sender<Message>,
    left_out: AtomicU64,
}

impl Trajectory {
    /// Queues `line` (made into an event by `event`) if there is room.
    fn offer(&self, line: String, event: impl Fn(String) -> SseEvent) {
        let skipped = self.left_out.swap(0, Ordering::Relaxed);
        if skipped > 0 {
            let note = format!(
                "({skipped} progress line{} left out: the client reads slower than the run works)\n",
                if skipped == 1 { "" } else { "s" }
            );
            if self.tx.try_send(Message::Event(event(note))).is_err() {
                self.left_out.fetch_add(skipped + 1, Ordering::Relaxed);
                return;
            }
        }
        if self.tx.try_send(Message::Event(event(line))).is_err() {
            self.left_out.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn stream_run(
    state: Arc<AppState>,
    request: ChatRequest,
    context: Context,
    permit: OwnedSemaphorePermit,
    reply: Reply,
    note: RunNote,
) -> Response {
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let cancel = state.lifecycle.run_token();
    let guard = cancel.clone().drop_guard();
    let _ = tx.try_send(Message::Event(sse(
        &reply.chunk(json!({"role": "assistant", "content": ""}), None)
    )));
    let observer: Arc<dyn Observer> = {
        let trajectory = Trajectory {
            tx: tx.clone(),
            left_out: AtomicU64::new(0),
        };
        let reply_id = reply.id.clone();
        let created = reply.created;
        let model = reply.model.clone();
        Arc::new(move |event: &Event| {
            if let Some(text) = trajectory::describe(event) {
                trajectory.offer(text, |text| {
                    sse(&Reply {
                        id: reply_id.clone(),
                        created,
                        model: model.clone(),
                    }
                    .chunk(json!({"reasoning_content": text}), None))
                });
            }
        })
    };
    let typed = state.typed(&request);
    let ChatRequest {
        query,
        instructions,
        include_usage,
        output_schema,
        params,
        moved,
        ..
    } = request;
    tokio::spawn(async move {
        let started = Instant::now();
        let options = RunOptions {
            instructions,
            observer: Some(observer),
            cancel,
            output_schema,
        };
        let result = state.runner.run(query, context, options).await;
        state.record_run(started.elapsed());
        drop(permit);
        log_run(&reply.id, &result, started.elapsed());
        state.telemetry.metrics.run(&result, started.elapsed());
        let shut_down = state.lifecycle.cancelled_run(&result);
        note.finished(&result, shut_down.then_some("shutting_down"));
        // With a schema and no conforming answer, the stream ends with the 422's error
        // object instead of content (its status is already 200).
        let not_met = result
            .as_ref()
            .ok()
            .and_then(|result| crate::schema::schema_not_met(result, typed));
        match result {
            Ok(_) if shut_down => {
                let body = json!({"error": {
                    "message": crate::drain::CANCELLED_MESSAGE,
                    "type": "server_error",
                    "code": "shutting_down",
                    "param": null,
                }});
                let _ = tx.send(Message::Event(sse(&body))).await;
            }
            Ok(_) if not_met.is_some() => {
                let error = ApiError::schema_not_met(not_met.unwrap_or_default());
                note.refused(error.code);
                let _ = tx.send(Message::Event(sse(&error.body()))).await;
            }
            Ok(mut result) => {
                let cut = params.apply(&mut result);
                let chars: Vec<char> = result.answer.chars().collect();
                for piece in chars.chunks(ANSWER_CHUNK_CHARS) {
                    let text: String = piece.iter().collect();
                    let _ = tx
                        .send(Message::Event(sse(
                            &reply.chunk(json!({"content": text}), None)
                        )))
                        .await;
                }
                let mut last = reply.chunk(json!({}), Some(finish_reason(&result)));
                last["rlm"] = rlm_summary(&result);
                params.annotate(&mut last, moved, cut);
                let _ = tx.send(Message::Event(sse(&last))).await;
                if include_usage {
                    let mut chunk = reply.chunk(json!({}), None);
                    chunk["choices"] = json!([]);
                    chunk["usage"] = usage(&result);
                    let _ = tx.send(Message::Event(sse(&chunk))).await;
                }
            }
            Err(error) => {
                let error = ApiError::from_run(&error);
                note.refused(error.code);
                let _ = tx.send(Message::Event(sse(&error.body()))).await;
            }
        }
        let _ = tx
            .send(Message::Event(SseEvent::default().data("[DONE]")))
            .await;
        let _ = tx.send(Message::End).await;
    });
    Sse::new(RunStream {
        rx,
        _cancel_on_drop: guard,
        ended: false,
    })
    .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
    .into_response()
}

/// The events of one streamed run; dropping it (the client went away) cancels the run.
struct RunStream {
    rx: mpsc::Receiver<Message>,
    _cancel_on_drop: DropGuard,
    ended: bool,
}

impl Stream for RunStream {
    type Item = Result<SseEvent, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Message::Event(event))) => Poll::Ready(Some(Ok(event))),
            Poll::Ready(Some(Message::End) | None) => {
                self.ended = true;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_that_reads_slowly_gets_a_bounded_trajectory_and_a_note() {
        // Before: every trajectory line was queued for the client, however far behind.
        let (tx, mut rx) = mpsc::channel(2);
        let trajectory = Trajectory {
            tx,
            left_out: AtomicU64::new(0),
        };
        let made = std::sync::Mutex::new(Vec::new());
        let event = |text: String| {
            made.lock().unwrap_or_else(|e| e.into_inner()).push(text);
            SseEvent::default()
        };
        for line in ["a", "b", "c", "d", "e"] {
            trajectory.offer(line.to_owned(), event);
        }
        assert_eq!(trajectory.left_out.load(Ordering::Relaxed), 3);
        // The client catches up: the next line is preceded by the note.
        while rx.try_recv().is_ok() {}
        trajectory.offer("f".to_owned(), event);
        assert_eq!(trajectory.left_out.load(Ordering::Relaxed), 0);
        assert!(rx.try_recv().is_ok() && rx.try_recv().is_ok());
        let made = made.lock().unwrap_or_else(|e| e.into_inner()).clone();
        assert!(
            made.iter()
                .any(|t| t.starts_with("(3 progress lines left out")),
            "{made:?}"
        );
        assert_eq!(made.last().map(String::as_str), Some("f"));
    }

    fn parse(body: Value) -> Result<ChatRequest, ApiError> {
        ChatRequest::parse(body.to_string().as_bytes(), None, 16 << 10)
    }

    #[test]
    fn the_query_is_the_last_user_message_and_the_rest_is_context() {
        let mut request = parse(json!({
            "model": "anything",
            "messages": [
                {"role": "system", "content": "Answer in French."},
                {"role": "user", "content": "document one"},
                {"role": "assistant", "content": [{"type": "text", "text": "document two"}]},
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "What do they say?"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.2,
        }))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(request.query, "What do they say?");
        assert_eq!(request.model, "anything");
        assert!(request.stream && request.include_usage);
        assert_eq!(
            request.instructions.as_deref(),
            Some("Answer in French.\n\nBe brief.")
        );
        assert_eq!(
            request.context(),
            Context::Documents(vec!["document one".into(), "document two".into()])
        );

        let mut single = parse(json!({"messages": [
            {"role": "user", "content": "the only document"},
            {"role": "user", "content": "q"},
        ]}))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(single.context(), Context::Text("the only document".into()));
        assert_eq!(single.model, "rlm");
        assert!(!single.stream);
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        for (body, code) in [
            (json!({"messages": "hi"}), "invalid_body"),
            (json!({"model": "m"}), "invalid_body"),
            (
                json!({"messages": [{"role": "system", "content": "x"}]}),
                "no_user_message",
            ),
            (
                json!({"messages": [{"role": "user", "content": "  "}]}),
                "empty_query",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "unsupported_content",
            ),
        ] {
            let error = parse(body.clone())
                .err()
                .unwrap_or_else(|| panic!("{body}"));
            assert_eq!(error.status, StatusCode::BAD_REQUEST);
            assert_eq!(error.code, code, "{body}: {}", error.message);
        }
        let error = ChatRequest::parse(b"{not json", None, 16).err();
        assert_eq!(error.map(|e| e.code), Some("invalid_body"));
    }

    #[test]
    fn only_loopback_goes_without_a_key() {
        let local: SocketAddr = "127.0.0.1:8000".parse().unwrap_or_else(|e| panic!("{e}"));
        let any: SocketAddr = "0.0.0.0:8000".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(check_exposure(&local, false).is_ok());
        assert!(check_exposure(&any, false).is_err());
        assert!(check_exposure(&any, true).is_ok());
    }

    #[test]
    fn hosts_and_origins_are_judged_by_name_not_by_prefix() {
        let listen: SocketAddr = "192.168.1.5:8000".parse().unwrap_or_else(|e| panic!("{e}"));
        for host in [
            "localhost",
            "LOCALHOST:8000",
            "localhost.",
            "127.0.0.1:8000",
            "127.8.9.10",
            "[::1]:8000",
            "::1",
            "192.168.1.5:8000",
        ] {
            assert!(host_is_local(host, Some(listen)), "{host}");
        }
        for host in [
            "evil.example",
            "localhost.evil.example:8000",
            "127.0.0.1.evil.example",
            "192.168.1.6:8000",
            "[::2]:8000",
            "",
        ] {
            assert!(!host_is_local(host, Some(listen)), "{host}");
        }
        assert!(same_origin("http://127.0.0.1:8000", Some("127.0.0.1:8000")));
        assert!(!same_origin(
            "http://127.0.0.1:8001",
            Some("127.0.0.1:8000")
        ));
        assert!(!same_origin("null", Some("127.0.0.1:8000")));
        assert!(!same_origin("http://127.0.0.1:8000", None));
        let mut headers = axum::http::HeaderMap::new();
        assert!(!is_json(&headers));
        for (value, json) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("text/plain", false),
            ("application/jsonp", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&headers), json, "{value}");
        }
    }

    #[test]
    fn the_server_key_stays_out_of_debug() {
        let options = ServeOptions {
            server_key: Some("sekrit-123".into()),
            ..ServeOptions::default()
        };
        assert!(!format!("{options:?}").contains("sekrit"));
    }
}
