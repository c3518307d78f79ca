//! `rlm_serve::mcp` through rmcp's own client over an in-memory pipe, with the real backend
//! stack and the loopback mock model server: the tool, its path rules, progress and
//! cancellation.
#![cfg(feature = "mcp")]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rlm_cache::CachedBackend;
use rlm_core::{BatchExecutor, LlmBackend};
use rlm_host::context::LoadOptions;
use rlm_openai::{OpenAiBackend, OpenAiConfig};
use rlm_repl::RlmConfig;
use rlm_serve::Runner;
use rlm_serve::mcp::McpServer;
use rlm_tests::{MockServer, Reply, ServerRequest, scripted_turn};
use rmcp::model::{
    CallToolRequestParams, ClientRequest, ProgressNotificationParam, Request, ServerResult,
};
use rmcp::service::{NotificationContext, PeerRequestOptions};
use rmcp::{ClientHandler, RoleClient, ServiceExt};
use serde_json::json;

const ROOT: &str = "root";

/// The root model joins the context's documents and asks the sub model to echo them; the
/// sub model upper-cases its prompt (and holds prompts saying "slow" for a minute).
fn handler(request: &ServerRequest) -> Reply {
    if request.model() == ROOT {
        let code = "let t = if type_of(context) == \"string\" { context } else { join(context, \"|\") };\n\
                    FINAL(llm_query(\"echo: \" + t));";
        scripted_turn(
            request,
            &[format!("Running some code.\n\n```repl\n{code}\n```")],
        )
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

fn runner(mock: &MockServer) -> Runner {
    let config = OpenAiConfig::new()
        .with_base_url(mock.base_url())
        .with_api_key("sk-mcp-test")
        .with_max_retries(0);
    let backend = OpenAiBackend::new(config).unwrap_or_else(|e| panic!("backend: {e}"));
    let root: Arc<dyn LlmBackend> = Arc::new(backend.clone());
    let sub: Arc<dyn BatchExecutor> = Arc::new(CachedBackend::new(backend));
    let config = RlmConfig {
        root_model: ROOT.into(),
        sub_model: Some("sub".into()),
        max_iterations: 2,
        ..RlmConfig::default()
    };
    Runner::new(root, sub, config)
}

/// The host layer's loader without file headers: a file is its text, a directory its files'
/// texts in name order.
fn loader() -> LoadOptions {
    LoadOptions {
        file_headers: false,
        ..LoadOptions::default()
    }
}

/// Two roots and a file outside them, with symlinks that lead out.
struct Tree {
    dir: PathBuf,
    a: PathBuf,
    b: PathBuf,
}

impl Tree {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rlm-serve-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b) = (dir.join("a"), dir.join("b"));
        for sub in [a.join("docs"), a.join("bad"), b.clone()] {
            std::fs::create_dir_all(sub).unwrap_or_else(|e| panic!("{e}"));
        }
        let write = |p: PathBuf, t: &str| std::fs::write(p, t).unwrap_or_else(|e| panic!("{e}"));
        write(a.join("notes.txt"), "the notes");
        write(a.join("docs/1.txt"), "one");
        write(a.join("docs/2.txt"), "two");
        write(a.join("bad/fine.txt"), "fine");
        write(b.join("other.txt"), "other root");
        write(dir.join("outside.txt"), "secret");
        #[cfg(unix)]
        {
            let link = |to: PathBuf, at: PathBuf| {
                std::os::unix::fs::symlink(to, at).unwrap_or_else(|e| panic!("{e}"))
            };
            link(dir.join("outside.txt"), a.join("link.txt"));
            link(dir.join("outside.txt"), a.join("bad/evil.txt"));
            link(b.join("other.txt"), a.join("to-b.txt"));
        }
        Self { dir, a, b }
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn paths_outside_the_roots_are_refused() {
    let mock = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tree = Tree::new("paths");
    let server = McpServer::new(runner(&mock), &[tree.a.clone(), tree.b.clone()], loader())
        .unwrap_or_else(|e| panic!("{e}"));
    for ok in ["notes.txt", "docs", "other.txt", "docs/../notes.txt"] {
        assert!(server.resolve(ok).is_ok(), "{ok}: {:?}", server.resolve(ok));
    }
    let absolute = tree.a.join("notes.txt");
    assert!(server.resolve(&absolute.to_string_lossy()).is_ok());
    #[cfg(unix)]
    assert!(
        server.resolve("to-b.txt").is_ok(),
        "a link to another root is allowed"
    );

    let outside = tree.dir.join("outside.txt");
    let mut refused = vec![
        "../outside.txt".to_owned(),
        "docs/../../outside.txt".to_owned(),
        outside.to_string_lossy().into_owned(),
        "/etc".to_owned(),
    ];
    if cfg!(unix) {
        refused.push("link.txt".to_owned());
        refused.push("bad".to_owned());
    }
    for path in &refused {
        let error = server.resolve(path).err().map(|e| e.to_string());
        let error = error.unwrap_or_else(|| panic!("{path} was allowed"));
        assert!(
            error.contains("outside the allowed roots") || error.contains("links outside"),
            "{path}: {error}"
        );
        assert!(!error.contains("secret"), "{error}");
    }
    assert!(server.resolve("missing.txt").is_err());
    assert!(McpServer::new(runner(&mock), &[], loader()).is_err());
    assert!(McpServer::new(runner(&mock), &[tree.a.join("notes.txt")], loader()).is_err());
}

/// A client that keeps the progress messages it gets.
#[derive(Clone, Default)]
struct Client {
    progress: Arc<Mutex<Vec<String>>>,
}

impl ClientHandler for Client {
    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        if let Ok(mut progress) = self.progress.lock() {
            progress.push(params.message.unwrap_or_default());
        }
    }
}

fn call(arguments: serde_json::Value) -> ClientRequest {
    let serde_json::Value::Object(arguments) = arguments else {
        panic!("arguments are an object")
    };
    ClientRequest::CallToolRequest(Request::new(
        CallToolRequestParams::new("rlm_answer").with_arguments(arguments),
    ))
}

fn texts(result: &ServerResult) -> Vec<String> {
    let ServerResult::CallToolResult(result) = result else {
        panic!("not a tool result: {result:?}")
    };
    result
        .content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

fn is_error(result: &ServerResult) -> bool {
    matches!(result, ServerResult::CallToolResult(r) if r.is_error == Some(true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tool_answers_reports_progress_and_stops_when_cancelled() {
    let mock = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tree = Tree::new("tool");
    let server = McpServer::new(runner(&mock), &[tree.a.clone(), tree.b.clone()], loader())
        .unwrap_or_else(|e| panic!("{e}"));
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(service) = server.serve(server_io).await {
            let _ = service.waiting().await;
        }
    });
    let handler = Client::default();
    let client = handler
        .clone()
        .serve(client_io)
        .await
        .unwrap_or_else(|e| panic!("client: {e}"));

    let tools = client
        .list_all_tools()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tools.len(), 1);
    assert_eq!(tools[0].name, "rlm_answer");

    // One path; progress arrives before the answer.
    let handle = client
        .send_cancellable_request(
            call(json!({"query": "what?", "paths": ["notes.txt"]})),
            PeerRequestOptions::no_options(),
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let result = handle
        .await_response()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let out = texts(&result);
    assert!(!is_error(&result), "{out:?}");
    assert_eq!(out[0], "ECHO: THE NOTES");
    assert!(out[1].contains("stopped: final after 1 turn(s)"), "{out:?}");
    let progress = handler
        .progress
        .lock()
        .map(|p| p.clone())
        .unwrap_or_default();
    assert!(
        progress.iter().any(|m| m.starts_with("Turn 1")),
        "{progress:?}"
    );
    assert!(
        progress.iter().any(|m| m.contains("```rhai")),
        "{progress:?}"
    );

    // Several paths, from both roots: an array of documents.
    let result = client
        .send_request(call(
            json!({"query": "q", "paths": ["notes.txt", "other.txt", "docs"]}),
        ))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let out = texts(&result);
    assert_eq!(
        out[0],
        "ECHO: ==> NOTES.TXT <==\nTHE NOTES|==> OTHER.TXT <==\nOTHER ROOT|ONE|TWO"
    );

    // Text, and the refusals as tool errors.
    let result = client
        .send_request(call(json!({"query": "q", "text": "inline"})))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(texts(&result)[0], "ECHO: INLINE");
    for arguments in [
        json!({"query": "q", "paths": ["../outside.txt"]}),
        json!({"query": "q", "paths": ["notes.txt"], "text": "both"}),
        json!({"query": "", "text": "x"}),
        json!({"query": "q", "pathz": ["x"]}),
    ] {
        let result = client
            .send_request(call(arguments.clone()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(is_error(&result), "{arguments}: {result:?}");
    }

    // Cancellation: the client gives up on a run whose sub-call the mock holds for a
    // minute; the run stops and drops its in-flight sub-call.
    let handle = client
        .send_cancellable_request(call(json!({"query": "q", "text": "slow text"})), {
            let mut options = PeerRequestOptions::no_options();
            options.timeout = Some(Duration::from_secs(2));
            options
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(handle.await_response().await.is_err(), "timed out");
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
    assert!(
        mock.requests()
            .iter()
            .any(|r| r.model() == "sub" && r.last_user().contains("slow")),
        "the slow sub-call was sent"
    );
    let _ = client.cancel().await;
}

/// An MCP server on the real stack, over an in-memory pipe, and its client.
async fn connect(
    mock: &MockServer,
    roots: &[PathBuf],
) -> rmcp::service::RunningService<RoleClient, Client> {
    let server = McpServer::new(runner(mock), roots, loader()).unwrap_or_else(|e| panic!("{e}"));
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        if let Ok(service) = server.serve(server_io).await {
            let _ = service.waiting().await;
        }
    });
    Client::default()
        .serve(client_io)
        .await
        .unwrap_or_else(|e| panic!("client: {e}"))
}

/// A safety bound on a hang: the calls below take milliseconds.
const HANG: Duration = Duration::from_secs(120);

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_under_a_root_is_refused_and_the_server_keeps_serving() {
    let mock = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tree = Tree::new("fifo");
    let status = std::process::Command::new("mkfifo")
        .arg(tree.a.join("pipe"))
        .arg(tree.a.join("docs/pipe"))
        .status()
        .unwrap_or_else(|e| panic!("mkfifo: {e}"));
    assert!(status.success());
    let client = connect(&mock, std::slice::from_ref(&tree.a)).await;
    // Before: each call waited forever for a writer, blocking a runtime thread; two of
    // them froze the server, `tools/list` included.
    let checks = async {
        let (first, second) = tokio::join!(
            client.send_request(call(json!({"query": "q", "paths": ["pipe"]}))),
            client.send_request(call(json!({"query": "q", "paths": ["pipe"]}))),
        );
        for result in [first, second] {
            let result = result.unwrap_or_else(|e| panic!("{e}"));
            assert!(is_error(&result), "{result:?}");
            let out = texts(&result).join(" ");
            assert!(out.contains("not a regular file"), "{out}");
        }
        let tools = client
            .list_all_tools()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tools.len(), 1);
        // In a directory the FIFO is skipped with a warning; the files are read.
        let result = client
            .send_request(call(json!({"query": "q", "paths": ["docs"]})))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let out = texts(&result);
        assert!(!is_error(&result), "{out:?}");
        assert_eq!(out[0], "ECHO: ONE|TWO");
        assert!(out[1].contains("pipe (not a regular file)"), "{out:?}");
    };
    tokio::time::timeout(HANG, checks)
        .await
        .unwrap_or_else(|_| panic!("a call on a FIFO hung the server"));
    let _ = client.cancel().await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_swapped_during_calls_never_leads_the_tool_outside_the_root() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mock = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tree = Tree::new("swap");
    let client = connect(&mock, std::slice::from_ref(&tree.a)).await;
    let inside = tree.a.join("notes.txt");
    let outside = tree.dir.join("outside.txt");
    for (link, asked) in [
        (tree.a.join("swap.txt"), "swap.txt"),
        (tree.a.join("docs/swap.txt"), "docs"),
    ] {
        std::os::unix::fs::symlink(&inside, &link).unwrap_or_else(|e| panic!("{e}"));
        let stop = Arc::new(AtomicBool::new(false));
        // Swaps the link between the file inside and the one outside, atomically (a fresh
        // link renamed over it), until told to stop; it ends pointing inside.
        let swapper = {
            let (link, inside, outside, stop) = (
                link.clone(),
                inside.clone(),
                outside.clone(),
                Arc::clone(&stop),
            );
            std::thread::spawn(move || {
                let fresh = link.with_extension("fresh");
                let point = |to: &PathBuf| {
                    let _ = std::fs::remove_file(&fresh);
                    std::os::unix::fs::symlink(to, &fresh).unwrap_or_else(|e| panic!("{e}"));
                    std::fs::rename(&fresh, &link).unwrap_or_else(|e| panic!("{e}"));
                };
                let mut out = false;
                while !stop.load(Ordering::Relaxed) {
                    point(if out { &outside } else { &inside });
                    out = !out;
                }
                point(&inside);
            })
        };
        // Before: the path was checked and then opened again by name, so some calls read
        // the file outside (29 of 150 in the report).
        let mut leaked = Vec::new();
        for _ in 0..150 {
            let result = client
                .send_request(call(json!({"query": "q", "paths": [asked]})))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let out = texts(&result).join("\n");
            if out.contains("SECRET") || out.contains("secret") {
                leaked.push(out);
            }
        }
        stop.store(true, Ordering::Relaxed);
        swapper
            .join()
            .unwrap_or_else(|_| panic!("the swapper panicked"));
        assert!(
            leaked.is_empty(),
            "{asked}: read outside the root: {leaked:?}"
        );
        let result = client
            .send_request(call(json!({"query": "q", "paths": [asked]})))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            texts(&result)[0].contains("THE NOTES"),
            "{asked}: {result:?}"
        );
        std::fs::remove_file(&link).unwrap_or_else(|e| panic!("{e}"));
    }
    let _ = client.cancel().await;
}

/// A transport the test drives: requests come from a channel, and each write waits for a
/// permit of `gate` (a client that does not read), then is kept.
struct Stalled {
    incoming:
        tokio::sync::mpsc::UnboundedReceiver<rmcp::service::RxJsonRpcMessage<rmcp::RoleServer>>,
    consumed: Arc<std::sync::atomic::AtomicUsize>,
    started: Arc<std::sync::atomic::AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
    written: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl rmcp::transport::Transport<rmcp::RoleServer> for Stalled {
    type Error = std::io::Error;

    fn send(
        &mut self,
        item: rmcp::service::TxJsonRpcMessage<rmcp::RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        self.started
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (gate, written) = (Arc::clone(&self.gate), Arc::clone(&self.written));
        async move {
            gate.acquire()
                .await
                .map_err(std::io::Error::other)?
                .forget();
            let value = serde_json::to_value(&item).map_err(std::io::Error::other)?;
            if let Ok(mut written) = written.lock() {
                written.push(value);
            }
            Ok(())
        }
    }

    async fn receive(&mut self) -> Option<rmcp::service::RxJsonRpcMessage<rmcp::RoleServer>> {
        let message = self.incoming.recv().await;
        self.consumed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        message
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_not_read_from_either() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const LIMIT: usize = 8;
    const REQUESTS: usize = 1000;
    let mock = MockServer::start(handler)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let tree = Tree::new("stalled");
    let server = McpServer::new(runner(&mock), std::slice::from_ref(&tree.a), loader())
        .unwrap_or_else(|e| panic!("{e}"));
    let (requests, incoming) = tokio::sync::mpsc::unbounded_channel();
    let message = |value: serde_json::Value| {
        serde_json::from_value(value).unwrap_or_else(|e| panic!("a client message: {e}"))
    };
    let _ = requests.send(message(
        json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                   "clientInfo": {"name": "stalled", "version": "1"}}}),
    ));
    let _ = requests.send(message(
        json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    ));
    for id in 1..=REQUESTS {
        let _ = requests.send(message(
            json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}),
        ));
    }
    let consumed = Arc::new(AtomicUsize::new(0));
    let started = Arc::new(AtomicUsize::new(0));
    // One write may go through: the reply to `initialize`.
    let gate = Arc::new(tokio::sync::Semaphore::new(1));
    let written = Arc::new(Mutex::new(Vec::new()));
    let transport = Stalled {
        incoming,
        consumed: Arc::clone(&consumed),
        started: Arc::clone(&started),
        gate: Arc::clone(&gate),
        written: Arc::clone(&written),
    };
    tokio::spawn(async move {
        // The bound on replies owed is the one reached here; writes only pile up.
        let transport = rlm_serve::mcp::Backpressure::with_limits(transport, 2 * REQUESTS, LIMIT);
        match server.serve(transport).await {
            Ok(service) => {
                let _ = service.waiting().await;
            }
            Err(e) => eprintln!("serve: {e}"),
        }
    });

    // Before: every request was read and its reply queued, however far behind the writer
    // was. Now reading stops once LIMIT replies wait to be written.
    let read = || consumed.load(Ordering::SeqCst).saturating_sub(2);
    let mut waited = 0;
    while started.load(Ordering::SeqCst) < 1 + LIMIT {
        assert!(read() <= LIMIT, "{} requests read past the bound", read());
        waited += 1;
        assert!(
            waited < 6000,
            "the replies were never written: {} read, {} writes",
            read(),
            started.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(read(), LIMIT, "requests read while {LIMIT} replies wait");

    // The client reads again: every request is answered, none lost.
    gate.add_permits(REQUESTS);
    let mut waited = 0;
    loop {
        let answered = written.lock().map(|w| w.len()).unwrap_or_default();
        if answered == 1 + REQUESTS {
            break;
        }
        waited += 1;
        assert!(waited < 6000, "only {answered} replies were written");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let written = written.lock().map(|w| w.clone()).unwrap_or_default();
    let mut ids: Vec<u64> = written.iter().filter_map(|m| m["id"].as_u64()).collect();
    ids.sort_unstable();
    assert_eq!(ids, (0..=REQUESTS as u64).collect::<Vec<_>>());
    assert!(
        written.iter().all(|m| m.get("error").is_none()),
        "{:?}",
        written.first()
    );
    drop(requests);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_in_progress_do_not_keep_further_requests_from_being_read() {
    // The sub model never answers while the test runs: every call stays in progress.
    let mock = MockServer::start(|request: &ServerRequest| {
        let reply = handler(request);
        if request.model() == ROOT {
            reply
        } else {
            reply.after(Duration::from_secs(3600))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let tree = Tree::new("in-progress");
    let server = McpServer::new(runner(&mock), std::slice::from_ref(&tree.a), loader())
        .unwrap_or_else(|e| panic!("{e}"));
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    tokio::spawn(async move {
        let (read, write) = tokio::io::split(server_io);
        let transport = rmcp::transport::async_rw::AsyncRwTransport::new_server(read, write);
        if let Ok(service) = server
            .serve(rlm_serve::mcp::Backpressure::new(transport))
            .await
        {
            let _ = service.waiting().await;
        }
    });
    let client = Client::default()
        .serve(client_io)
        .await
        .unwrap_or_else(|e| panic!("client: {e}"));
    // More slow calls than replies may wait to be written: they are in progress, not
    // queued for the client, so the server still reads and answers what comes next.
    let mut handles = Vec::new();
    for _ in 0..rlm_serve::mcp::MAX_WRITING + 6 {
        let handle = client
            .send_cancellable_request(
                call(json!({"query": "q", "text": "slow text"})),
                PeerRequestOptions::no_options(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        handles.push(handle);
    }
    // Every call is read and its run started (one root call each).
    let calls = handles.len();
    let mut waited = 0;
    while mock.requests().iter().filter(|r| r.model() == ROOT).count() < calls {
        waited += 1;
        assert!(
            waited < 6000,
            "only some calls were read: a bound on calls in progress stopped the reading"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tools = tokio::time::timeout(HANG, client.list_all_tools())
        .await
        .unwrap_or_else(|_| panic!("tools/list was not read while calls were in progress"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(tools.len(), 1);
    for handle in handles {
        let _ = handle.cancel(None).await;
    }
    let _ = client.cancel().await;
}
