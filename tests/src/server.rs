//! A real HTTP/1.1 server on 127.0.0.1 that speaks the OpenAI chat-completions protocol and
//! injects faults on demand.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// One request as the server received it.
#[derive(Debug, Clone)]
pub struct ServerRequest {
    /// Arrival order, from 0.
    pub seq: usize,
    /// When it arrived.
    pub at: Instant,
    /// HTTP method.
    pub method: String,
    /// Request path (e.g. `/v1/chat/completions`).
    pub path: String,
    /// Headers, names lowercased.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Value::Null` when it was not JSON).
    pub body: Value,
}

impl ServerRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The requested model.
    pub fn model(&self) -> &str {
        self.body["model"].as_str().unwrap_or_default()
    }

    /// The messages of the request.
    pub fn messages(&self) -> &[Value] {
        self.body["messages"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
    }

    /// The content of the last user message (empty if none).
    pub fn last_user(&self) -> &str {
        self.messages()
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
    }

    /// How many assistant messages the conversation holds: the turn a root model is on.
    pub fn assistant_turns(&self) -> usize {
        self.messages()
            .iter()
            .filter(|m| m["role"] == "assistant")
            .count()
    }
}

#[derive(Debug, Clone)]
enum Body {
    Bytes(Bytes),
    /// Close the connection without answering.
    Drop,
}

/// What the server answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Body,
    delay: Option<Duration>,
    hold: Option<Hold>,
}

/// A gate that holds replies until released: a test that must have requests in flight at a
/// known moment holds them here ([`Reply::held`]), waits for [`Hold::waiting`] to reach the
/// count it needs, acts, and releases them; nothing depends on timing.
#[derive(Debug, Clone, Default)]
pub struct Hold {
    inner: Arc<HoldInner>,
}

#[derive(Debug, Default)]
struct HoldInner {
    released: std::sync::atomic::AtomicBool,
    waiting: AtomicUsize,
    notify: tokio::sync::Notify,
}

impl Hold {
    /// A closed gate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets every held reply go, and every later one through at once.
    pub fn release(&self) {
        self.inner.released.store(true, Ordering::SeqCst);
        self.inner.notify.notify_waiters();
    }

    /// Replies held now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Waits until `n` replies are held (polling every 10 ms, up to `bound`); returns whether
    /// they were.
    pub async fn until_waiting(&self, n: usize, bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        while self.waiting() < n {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    async fn pass(&self) {
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        loop {
            let notified = self.inner.notify.notified();
            if self.inner.released.load(Ordering::SeqCst) {
                break;
            }
            notified.await;
        }
        self.inner.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Reply {
    /// A successful chat completion whose message content is `text`, with usage estimated at
    /// four bytes per token (and 10 prompt tokens).
    pub fn text(text: impl Into<String>) -> Self {
        Self::completion("chatcmpl-mock".to_owned(), "mock", text.into(), 10)
    }

    /// A successful chat completion for `request`: the model is echoed and the prompt tokens
    /// are estimated from the request's messages.
    pub fn completion_for(request: &ServerRequest, text: impl Into<String>) -> Self {
        let prompt_tokens: usize = request
            .messages()
            .iter()
            .map(|m| m["content"].as_str().unwrap_or_default().len().div_ceil(4) + 4)
            .sum();
        let id = format!("chatcmpl-{}", request.seq);
        Self::completion(id, request.model(), text.into(), prompt_tokens)
    }

    fn completion(id: String, model: &str, text: String, prompt_tokens: usize) -> Self {
        let completion_tokens = text.len().div_ceil(4);
        Self::json(
            200,
            &json!({
                "id": id,
                "object": "chat.completion",
                "created": 0,
                "model": model,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }),
        )
    }

    /// Any JSON body with the given status.
    pub fn json(status: u16, body: &Value) -> Self {
        Self::raw(status, body.to_string()).header("content-type", "application/json")
    }

    /// An OpenAI-style error: `{"error": {"message", "type", "code"}}`.
    pub fn error(status: u16, error_type: &str, code: &str, message: &str) -> Self {
        Self::json(
            status,
            &json!({"error": {"message": message, "type": error_type, "param": null, "code": code}}),
        )
    }

    /// A 429 rate-limit error that asks the client to wait `seconds` (`Retry-After`).
    pub fn rate_limited(seconds: u64) -> Self {
        Self::error(429, "requests", "rate_limit_exceeded", "Rate limit reached")
            .header("retry-after", &seconds.to_string())
    }

    /// Any body, as it is, with the given status.
    pub fn raw(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Body::Bytes(Bytes::from(body.into())),
            delay: None,
            hold: None,
        }
    }

    /// Close the connection without sending a response.
    pub fn drop_connection() -> Self {
        Self {
            status: 0,
            headers: Vec::new(),
            body: Body::Drop,
            delay: None,
            hold: None,
        }
    }

    /// Adds a response header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Answers after `delay` instead of the server's default latency.
    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Answers once `hold` is released.
    pub fn held(mut self, hold: &Hold) -> Self {
        self.hold = Some(hold.clone());
        self
    }
}

/// Decides the reply to each request.
pub trait Handler: Fn(&ServerRequest) -> Reply + Send + Sync + 'static {}
impl<F: Fn(&ServerRequest) -> Reply + Send + Sync + 'static> Handler for F {}

struct State {
    handler: Box<dyn Fn(&ServerRequest) -> Reply + Send + Sync>,
    latency: Duration,
    seq: AtomicUsize,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    connections: AtomicUsize,
    requests: Mutex<Vec<ServerRequest>>,
    record: bool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Configures a [`MockServer`].
pub struct MockServerBuilder {
    latency: Duration,
    record: bool,
    port: u16,
}

impl MockServerBuilder {
    /// Every reply waits this long unless it sets its own delay (default: none).
    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    /// Whether to keep every request for [`MockServer::requests`] (default: yes). Benchmarks
    /// with many thousands of requests turn it off.
    pub fn record(mut self, record: bool) -> Self {
        self.record = record;
        self
    }

    /// Listens on this port (default: any free port).
    pub fn port(mut self, port: u16) -> Self {
        self.port = port;
        self
    }

    /// Binds 127.0.0.1 and starts serving on the current tokio runtime.
    pub async fn start(self, handler: impl Handler) -> std::io::Result<MockServer> {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            handler: Box::new(handler),
            latency: self.latency,
            seq: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
            record: self.record,
        });
        let (shutdown, watcher) = watch::channel(false);
        tokio::spawn(accept_loop(listener, Arc::clone(&state), watcher));
        Ok(MockServer {
            addr,
            state,
            shutdown,
        })
    }
}

/// An OpenAI-compatible server on 127.0.0.1 for tests and benchmarks.
///
/// It serves `POST /v1/chat/completions` (and `GET /v1/models`) with replies chosen by a
/// [`Handler`], counts requests in flight, and records what it received. It stops when
/// dropped.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> std::io::Result<()> {
/// use rlm_tests::{MockServer, Reply};
///
/// let server = MockServer::start(|request| {
///     if request.last_user().contains("fail") {
///         Reply::error(500, "server_error", "boom", "injected failure")
///     } else {
///         Reply::completion_for(request, format!("echo: {}", request.last_user()))
///     }
/// })
/// .await?;
/// assert!(server.base_url().starts_with("http://127.0.0.1:"));
/// # Ok(())
/// # }
/// ```
pub struct MockServer {
    addr: SocketAddr,
    state: Arc<State>,
    shutdown: watch::Sender<bool>,
}

impl MockServer {
    /// A builder for a server with latency or other settings.
    pub fn builder() -> MockServerBuilder {
        MockServerBuilder {
            latency: Duration::ZERO,
            record: true,
            port: 0,
        }
    }

    /// Starts a server with default settings.
    pub async fn start(handler: impl Handler) -> std::io::Result<MockServer> {
        Self::builder().start(handler).await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The OpenAI-style base URL, `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Every request received so far (if recording), in arrival order.
    pub fn requests(&self) -> Vec<ServerRequest> {
        lock(&self.state.requests).clone()
    }

    /// The number of requests received so far.
    pub fn request_count(&self) -> usize {
        self.state.seq.load(Ordering::SeqCst)
    }

    /// The number of requests being answered now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The most requests ever being answered at once.
    pub fn peak_in_flight(&self) -> usize {
        self.state.peak_in_flight.load(Ordering::SeqCst)
    }

    /// The number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Forgets recorded requests and resets the peak to the current number in flight.
    pub fn reset(&self) {
        lock(&self.state.requests).clear();
        self.state
            .peak_in_flight
            .store(self.in_flight(), Ordering::SeqCst);
    }
}

impl fmt::Debug for MockServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("requests", &self.request_count())
            .field("peak_in_flight", &self.peak_in_flight())
            .finish()
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.changed() => return,
        };
        let Ok((stream, _)) = accepted else {
            // Out of file descriptors or a reset before accept: keep serving the others.
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        state.connections.fetch_add(1, Ordering::SeqCst);
        let state = Arc::clone(&state);
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| serve(Arc::clone(&state), request));
            let connection = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = connection => {}
                _ = shutdown.changed() => {}
            }
        });
    }
}

/// Counts a request in flight until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The error that makes hyper close a connection without answering.
#[derive(Debug)]
struct Dropped;

impl fmt::Display for Dropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

async fn serve(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.peak_in_flight.fetch_max(now, Ordering::SeqCst);
    let _in_flight = InFlight(&state.in_flight);

    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let received = ServerRequest {
        seq: state.seq.fetch_add(1, Ordering::SeqCst),
        at: Instant::now(),
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
    };
    if state.record {
        lock(&state.requests).push(received.clone());
    }

    let reply = route(&state, &received);
    let delay = reply.delay.unwrap_or(state.latency);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(hold) = &reply.hold {
        hold.pass().await;
    }
    let bytes = match reply.body {
        Body::Bytes(bytes) => bytes,
        Body::Drop => return Err(Dropped),
    };
    let mut response = Response::new(Full::new(bytes));
    *response.status_mut() = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK);
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            hyper::header::HeaderName::from_bytes(name.as_bytes()),
            hyper::header::HeaderValue::from_str(value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

fn route(state: &State, request: &ServerRequest) -> Reply {
    match (request.method.as_str(), request.path.as_str()) {
        ("POST", path) if path.ends_with("/chat/completions") => {
            if request.body.is_null() {
                Reply::error(
                    400,
                    "invalid_request_error",
                    "invalid_json",
                    "body is not JSON",
                )
            } else {
                (state.handler)(request)
            }
        }
        ("GET", path) if path.ends_with("/models") => Reply::json(
            200,
            &json!({"object": "list", "data": [{"id": "mock", "object": "model"}]}),
        ),
        _ => Reply::error(404, "invalid_request_error", "not_found", "unknown path"),
    }
}
