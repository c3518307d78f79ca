//! `rlm serve` and `rlm mcp` driven by the official Python clients (`openai`, `mcp`) that
//! nobody here wrote, against the loopback mock model server.
//!
//! The Python interpreter is `RLM_TEST_PYTHON`, else the virtual environment at
//! `target/venv-ci` (made on first use by `rlm_tests::python::venv`). The harness is `rlm_tests::harness::Suite` (see `main`):
//! without that Python the client tests show as ignored in the summary line, not as passed;
//! under `CI=true` they run, and a missing interpreter or package fails them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rlm_tests::{Hold, MockServer, Reply, ServerRequest, scripted_turn};
use tokio::io::{AsyncBufReadExt, BufReader};

const ROOT: &str = "root-model";
const KEY: &str = "sk-upstream-4f1c9a7e-never-print-me";
const SERVER_KEY: &str = "server-key-for-the-sdk";

fn handler(request: &ServerRequest) -> Reply {
    if request.model() == ROOT {
        scripted_turn(
            request,
            &[
                "Running some code.\n\n```repl\nFINAL(llm_query(\"echo: \" + context));\n```"
                    .to_owned(),
            ],
        )
    } else {
        Reply::completion_for(request, request.last_user().to_uppercase())
    }
}

/// The Python interpreter the clients run on: `RLM_TEST_PYTHON`, else the test venv (made
/// when missing or stale).
fn python_path() -> PathBuf {
    rlm_tests::python::venv().unwrap_or_else(|| rlm_tests::python::venv_dir().join("bin/python"))
}

/// Whether [`python_path`] can import `langchain_openai` (and `pydantic`).
fn langchain_usable() -> bool {
    std::process::Command::new(python_path())
        .args(["-c", "import openai, pydantic, langchain_openai"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Whether [`python_path`] can import `openai`, `mcp` and `prometheus_client`.
fn python_usable() -> bool {
    std::process::Command::new(python_path())
        .args(["-c", "import openai, mcp, prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The Python with `openai` and `mcp`. The harness runs these tests only when it is there,
/// except under `CI=true`, where a missing one fails them here.
fn python() -> PathBuf {
    let path = python_path();
    assert!(
        python_usable(),
        "{} cannot import openai, mcp and prometheus_client: the test venv could not be made \
         (see above; or set RLM_TEST_PYTHON)",
        path.display()
    );
    path
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

async fn run_python(python: &Path, args: &[&std::ffi::OsStr]) {
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(python)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client finished (safety bound, not a timing assertion)")
    .expect("python starts");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));
}

async fn the_openai_sdk_talks_to_rlm_serve() {
    // Then /metrics, read by prometheus_client, counts what the openai client sent.
    serve_and_drive(handler, &["openai_client.py", "metrics_client.py"]).await;
}

/// The root model of the typed-answer clients: by the query's first word, a conforming city
/// ("good"), a wrong shape and then a conforming one ("fix"), or a wrong shape every time
/// ("never").
fn typed_handler(request: &ServerRequest) -> Reply {
    let first = request
        .messages()
        .get(1)
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let good = "FINAL({\"city\": \"Oslo\", \"population\": 709000})".to_owned();
    let replies = if first.contains("Query: fix:") {
        vec![
            "```repl\nFINAL(#{city: \"Bergen\"});\n```".to_owned(),
            "FINAL({\"city\": \"Bergen\", \"population\": 291000})".to_owned(),
        ]
    } else if first.contains("Query: never:") {
        vec!["FINAL(Bergen)".to_owned(); 3]
    } else {
        vec![good]
    };
    scripted_turn(request, &replies)
}

async fn typed_answers_reach_the_openai_sdk_and_langchain() {
    serve_and_drive(typed_handler, &["typed_client.py"]).await;
}

/// Starts `rlm serve` against a mock model server answering with `handler`, and drives it
/// with the Python clients `clients`, one after the other.
async fn serve_and_drive(handler: fn(&ServerRequest) -> Reply, clients: &[&str]) {
    let python = python();
    let mock = MockServer::start(handler).await.expect("mock server");
    // Prices for both models, so /metrics has a cost per model.
    let prices = std::env::temp_dir().join(format!(
        "rlm-client-prices-{}-{}.json",
        std::process::id(),
        clients[0]
    ));
    std::fs::write(
        &prices,
        r#"{"root-model": {"input": 1.0, "cached_input": 0.5, "output": 2.0},
            "sub-model": {"input": 0.5, "cached_input": 0.25, "output": 1.0}}"#,
    )
    .expect("prices file");
    let prices_arg = prices.to_str().expect("a UTF-8 temp path");
    let (mut server, base, rest) = spawn_serve(
        &mock,
        &[
            "--server-key-env",
            "RLM_TEST_SERVER_KEY",
            "--prices",
            prices_arg,
        ],
    )
    .await;
    for client in clients {
        run_python(
            &python,
            &[
                script(client).as_os_str(),
                base.as_ref(),
                SERVER_KEY.as_ref(),
            ],
        )
        .await;
    }
    let _ = server.kill().await;
    let _ = std::fs::remove_file(&prices);
    let stderr = rest.await.unwrap_or_default();
    assert!(
        !stderr.contains(KEY) && !stderr.contains(SERVER_KEY),
        "{stderr}"
    );
}

async fn the_mcp_sdk_talks_to_rlm_mcp() {
    let python = python();
    let mock = MockServer::start(handler).await.expect("mock server");
    let dir = std::env::temp_dir().join(format!("rlm-mcp-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("docs")).expect("dirs");
    std::fs::write(root.join("notes.txt"), "the notes").expect("notes");
    std::fs::write(root.join("docs/a.txt"), "doc a").expect("doc");
    std::fs::write(dir.join("outside.txt"), "secret outside").expect("outside");
    #[cfg(unix)]
    {
        std::os::unix::fs::symlink(dir.join("outside.txt"), root.join("link.txt")).expect("link");
        std::os::unix::fs::symlink(dir.join("outside.txt"), root.join("docs/evil.txt"))
            .expect("link");
    }
    run_python(
        &python,
        &[
            script("mcp_client.py").as_os_str(),
            env!("CARGO_BIN_EXE_rlm").as_ref(),
            root.as_os_str(),
            mock.base_url().as_ref(),
        ],
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `rlm serve` and `rlm mcp` refuse what cannot work, before listening: status 2, one line.
async fn servers_refuse_unsafe_or_meaningless_flags() {
    for (args, says) in [
        (
            &["serve", "--listen", "0.0.0.0:0", "-m", "m"][..],
            "--server-key-env",
        ),
        (
            &["serve", "-m", "m", "--server-key-env", "RLM_TEST_UNSET_VAR"][..],
            "RLM_TEST_UNSET_VAR",
        ),
        (&["serve", "-m", "m", "--query", "q"][..], "--query"),
        (
            &["mcp", "-m", "m", "--root", "/definitely/not/here"][..],
            "--root",
        ),
        (
            &["mcp", "-m", "m", "--root", ".", "--context", "x"][..],
            "--context",
        ),
    ] {
        let output = tokio::time::timeout(
            Duration::from_secs(60),
            tokio::process::Command::new(env!("CARGO_BIN_EXE_rlm"))
                .args(args)
                .env("OPENAI_API_KEY", KEY)
                .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
                .env_remove("RLM_TEST_UNSET_VAR")
                .stdin(Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("rlm exits (safety bound)")
        .expect("rlm starts");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(says),
            "{args:?}: {stderr}"
        );
        assert!(output.stdout.is_empty());
    }
}

/// `rlm serve` on the mock with `extra` flags: the child, its base URL (`.../v1`), and a
/// task collecting the rest of its stderr.
async fn spawn_serve(
    mock: &MockServer,
    extra: &[&str],
) -> (
    tokio::process::Child,
    String,
    tokio::task::JoinHandle<String>,
) {
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_rlm"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model", ROOT])
        .args(["--sub-model", "sub-model", "--base-url", &mock.base_url()])
        .args(extra)
        .env("OPENAI_API_KEY", KEY)
        .env("RLM_TEST_SERVER_KEY", SERVER_KEY)
        .env_remove("RLM_MODEL")
        .env_remove("RLM_SUB_MODEL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("rlm serve starts");
    let mut lines = BufReader::new(server.stderr.take().expect("stderr")).lines();
    let mut base = None;
    while let Ok(Ok(Some(line))) =
        tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await
    {
        assert!(!line.contains(KEY) && !line.contains(SERVER_KEY), "{line}");
        if let Some(rest) = line.split("listening on ").nth(1) {
            base = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    let base = base.expect("rlm serve says where it listens");
    let rest = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    (server, base, rest)
}

/// One chat completion over a plain HTTP/1.1 connection to `base` (`http://ADDR/v1`):
/// the status and the JSON body.
async fn post_json(base: &str, query: &str) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").trim_end_matches("/v1");
    let body = serde_json::json!({"model": "rlm", "messages": [
        {"role": "user", "content": query}]})
    .to_string();
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("the server accepts the connection");
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .await
        .expect("an answer, not a dropped connection");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    let value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {response}"));
    (status, value)
}

/// SIGTERM while 8 runs wait at the mock: new connections are refused, all 8 are answered,
/// and `rlm serve` exits 0 (well within its grace); every request has a JSON log line.
async fn sigterm_drains_runs_in_flight_and_exits_0() {
    let hold = Hold::new();
    let held = hold.clone();
    let mock = MockServer::start(move |request: &ServerRequest| {
        if request.model() == ROOT {
            scripted_turn(request, &["FINAL(drained)".to_owned()]).held(&held)
        } else {
            Reply::completion_for(request, "sub")
        }
    })
    .await
    .expect("mock server");
    let (mut server, base, rest) =
        spawn_serve(&mock, &["--log-format", "json", "--shutdown-grace", "600"]).await;
    let requests: Vec<_> = (0..8)
        .map(|i| {
            let url = base.clone();
            tokio::spawn(async move { post_json(&url, &format!("question {i}")).await })
        })
        .collect();
    if !hold.until_waiting(8, Duration::from_secs(120)).await {
        let _ = server.kill().await;
        panic!(
            "8 runs in flight: {} held, {} requests at the mock; stderr:\n{}",
            hold.waiting(),
            mock.request_count(),
            rest.await.unwrap_or_default()
        );
    }
    let pid = server.id().expect("the server runs").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let addr = base
        .trim_start_matches("http://")
        .trim_end_matches("/v1")
        .to_owned();
    let mut closed = false;
    for _ in 0..1_000 {
        if tokio::net::TcpStream::connect(&addr).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(closed, "new connections are refused while draining");
    hold.release();
    for request in requests {
        let (status, body) = request.await.expect("the request task");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["choices"][0]["message"]["content"], "drained");
    }
    let status = tokio::time::timeout(Duration::from_secs(120), server.wait())
        .await
        .expect("rlm serve exits once its runs are answered (safety bound)")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
    let stderr = rest.await.unwrap_or_default();
    assert!(!stderr.contains(KEY), "{stderr}");
    assert!(stderr.contains("SIGTERM: draining"), "{stderr}");
    let logged: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(logged.len(), 8, "{stderr}");
    assert!(
        logged
            .iter()
            .all(|l| l["status"] == 200 && l["outcome"] == "final"),
        "{stderr}"
    );
}

/// Methods `rlm mcp` does not offer answer "method not found", without a warning each.
async fn mcp_unknown_methods_are_method_not_found_without_warnings() {
    use tokio::io::AsyncWriteExt;
    let dir = std::env::temp_dir().join(format!("rlm-mcp-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rlm"))
        .args(["mcp", "-m", "m", "--root"])
        .arg(&dir)
        .env("OPENAI_API_KEY", KEY)
        .env("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("rlm mcp starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let messages = [
        r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"probe","version":"1"}}}"#,
        r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        r#"{"jsonrpc":"2.0","id":2,"method":"resources/list"}"#,
        r#"{"jsonrpc":"2.0","id":3,"method":"prompts/list"}"#,
        r#"{"jsonrpc":"2.0","id":4,"method":"resources/templates/list"}"#,
        r#"{"jsonrpc":"2.0","id":5,"method":"no/such/method"}"#,
    ];
    for message in messages {
        stdin
            .write_all(format!("{message}\n").as_bytes())
            .await
            .expect("write");
    }
    stdin.flush().await.expect("flush");
    let mut not_found = std::collections::BTreeSet::new();
    while not_found.len() < 4 {
        let line = tokio::time::timeout(Duration::from_secs(60), stdout.next_line())
            .await
            .expect("an answer (safety bound)")
            .expect("read")
            .expect("a line");
        let reply: serde_json::Value = serde_json::from_str(&line).expect("JSON-RPC");
        if reply["id"] == 1 {
            continue;
        }
        assert_eq!(reply["error"]["code"], -32601, "{line}");
        not_found.insert(reply["id"].as_u64().unwrap_or_default());
    }
    assert_eq!(not_found.into_iter().collect::<Vec<_>>(), [2, 3, 4, 5]);
    drop(stdin);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("rlm mcp exits when stdin closes (safety bound)")
        .expect("wait");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("WARN") && !stderr.contains("-32601"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn main() -> std::process::ExitCode {
    rlm_tests::harness::Suite::new()
        .tokio(
            "servers_refuse_unsafe_or_meaningless_flags",
            servers_refuse_unsafe_or_meaningless_flags,
        )
        .tokio(
            "sigterm_drains_runs_in_flight_and_exits_0",
            sigterm_drains_runs_in_flight_and_exits_0,
        )
        .tokio(
            "mcp_unknown_methods_are_method_not_found_without_warnings",
            mcp_unknown_methods_are_method_not_found_without_warnings,
        )
        .needs(
            "a Python with the openai and mcp packages (target/venv-ci, or RLM_TEST_PYTHON)",
            python_usable(),
        )
        .tokio(
            "the_openai_sdk_talks_to_rlm_serve",
            the_openai_sdk_talks_to_rlm_serve,
        )
        .tokio("the_mcp_sdk_talks_to_rlm_mcp", the_mcp_sdk_talks_to_rlm_mcp)
        .needs(
            "a Python with the openai, pydantic and langchain-openai packages (target/venv-ci, \
             or RLM_TEST_PYTHON)",
            python_usable() && langchain_usable(),
        )
        .tokio(
            "typed_answers_reach_the_openai_sdk_and_langchain",
            typed_answers_reach_the_openai_sdk_and_langchain,
        )
        .run()
}
