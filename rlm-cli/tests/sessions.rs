//! Sessions from the command line: `rlm run --session FILE` (a file that moves to another
//! directory and resumes, unknown versions and broken files refused) and `rlm chat` driven
//! through a pseudo-terminal; and the Responses API of `rlm serve` driven by the official
//! `openai` Python package (`previous_response_id`, streaming, GET/DELETE, eviction).
//!
//! The harness is `rlm_tests::harness::Suite`: the tests that need Python show as ignored
//! without it, and fail under `CI=true`.

mod common;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use rlm_tests::harness::Suite;
use rlm_tests::{MockServer, Reply, ServerRequest};
use serde_json::Value;

use common::{ROOT, Scratch, code, rlm, run_args};

/// Root replies by question: a request's query (`Query: ...` in its first user message)
/// picks the script, and the turn within that question picks the reply.
const SCRIPT: &[(&str, &[&str])] = &[
    (
        "count words",
        &["let words = context.split(\" \");\nFINAL(\"count=\" + words.len())"],
    ),
    ("second word", &["FINAL(\"second=\" + words[1])"]),
    ("last word", &["FINAL(\"last=\" + words[words.len() - 1])"]),
    ("slow one", &["let partial = 1;\nsleep(600);"]),
];

/// The query of a root request (from `Query: ` in its first user message).
fn query_of(request: &ServerRequest) -> String {
    let first = request
        .messages()
        .iter()
        .filter(|m| m["role"] == "user")
        .find_map(|m| m["content"].as_str())
        .unwrap_or_default();
    first
        .lines()
        .find_map(|line| line.strip_prefix("Query: "))
        .unwrap_or_default()
        .to_owned()
}

fn handler(request: &ServerRequest) -> Reply {
    if request.model() != ROOT {
        return Reply::completion_for(request, request.last_user().to_uppercase());
    }
    let query = query_of(request);
    let turn = request.assistant_turns();
    match SCRIPT.iter().find(|(q, _)| query == *q) {
        Some((_, replies)) if turn < replies.len() => {
            Reply::completion_for(request, code(replies[turn]))
        }
        _ => Reply::error(
            400,
            "invalid_request_error",
            "script_exhausted",
            &format!("no scripted reply for {query:?} turn {}", turn + 1),
        ),
    }
}

/// The first user message of each root request, in order.
fn first_messages(server: &MockServer) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.model() == ROOT)
        .map(|r| {
            r.messages()
                .iter()
                .filter(|m| m["role"] == "user")
                .find_map(|m| m["content"].as_str().map(str::to_owned))
                .unwrap_or_default()
        })
        .collect()
}

async fn mock() -> MockServer {
    MockServer::start(handler).await.expect("mock server")
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

async fn a_session_file_moves_to_another_directory_and_resumes() {
    let server = mock().await;
    let url = server.base_url();
    let first = Scratch::new("session-first");
    first.write("ctx.txt", b"alpha beta gamma");
    let (ctx, file) = (first.path("ctx.txt"), first.path("s.json"));
    let out = rlm(
        &run_args(
            &url,
            &[
                "--context",
                path_str(&ctx),
                "--session",
                path_str(&file),
                "--query",
                "count words",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "count=3\n");
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["format"], "rlm-session");
    assert_eq!(saved["version"], 1);
    assert_eq!(saved["variables"][0]["name"], "words");
    assert_eq!(saved["variables"][0]["type"], "array");
    assert_eq!(saved["history"][0]["answer"], "count=3");
    // No temporary file is left beside it.
    assert_eq!(std::fs::read_dir(&first.0).unwrap().count(), 2);

    // Another directory (another machine): the file and the context move, paths change.
    let second = Scratch::new("session-second");
    std::fs::copy(&ctx, second.path("moved-ctx.txt")).unwrap();
    std::fs::copy(&file, second.path("moved.json")).unwrap();
    drop(first);
    let (ctx, file) = (second.path("moved-ctx.txt"), second.path("moved.json"));
    let out = rlm(
        &run_args(
            &url,
            &[
                "--context",
                path_str(&ctx),
                "--session",
                path_str(&file),
                "--query",
                "second word",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "second=beta\n");
    assert!(out.stderr.contains("resumed the session"), "{out:#?}");
    let firsts = first_messages(&server);
    assert_eq!(firsts.len(), 2);
    assert!(firsts[1].contains("continues a session"), "{}", firsts[1]);
    assert!(
        firsts[1].contains("Query 1: count words\nAnswer 1: count=3"),
        "{}",
        firsts[1]
    );
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(saved["history"].as_array().unwrap().len(), 2);

    // Another context is refused: the variables were computed from the first.
    second.write("other.txt", b"something else");
    let out = rlm(
        &run_args(
            &url,
            &[
                "--context",
                path_str(&second.path("other.txt")),
                "--session",
                path_str(&file),
                "--query",
                "second word",
            ],
        ),
        None,
    )
    .await;
    out.assert_clean_error(4);
    assert!(out.stderr.contains("different context"), "{out:#?}");
}

async fn unknown_versions_and_truncated_files_are_refused() {
    let server = mock().await;
    let url = server.base_url();
    let dir = Scratch::new("session-refused");
    dir.write("ctx.txt", b"alpha beta gamma");
    let ctx = dir.path("ctx.txt");
    let file = dir.path("s.json");
    let out = rlm(
        &run_args(
            &url,
            &[
                "--context",
                path_str(&ctx),
                "--session",
                path_str(&file),
                "--query",
                "count words",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let good = std::fs::read_to_string(&file).unwrap();
    let calls = server.requests().len();

    let mut newer: Value = serde_json::from_str(&good).unwrap();
    newer["version"] = 99.into();
    dir.write("newer.json", newer.to_string().as_bytes());
    dir.write("cut.json", &good.as_bytes()[..good.len() / 2]);
    for (name, why) in [
        ("newer.json", "version 99 is not supported"),
        ("cut.json", "truncated"),
    ] {
        let path = dir.path(name);
        let before = std::fs::read(&path).unwrap();
        let out = rlm(
            &run_args(
                &url,
                &[
                    "--context",
                    path_str(&ctx),
                    "--session",
                    path_str(&path),
                    "--query",
                    "second word",
                ],
            ),
            None,
        )
        .await;
        out.assert_clean_error(4);
        assert!(out.stderr.contains(why), "{out:#?}");
        // Refused before any call, and the file is left as it was.
        assert_eq!(server.requests().len(), calls);
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}

/// The Python interpreter of the client tests: `RLM_TEST_PYTHON`, else `.ci/run`'s venv.
fn python_path() -> PathBuf {
    std::env::var_os("RLM_TEST_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/venv-ci/bin/python")
        })
}

fn python_usable() -> bool {
    std::process::Command::new(python_path())
        .args(["-c", "import openai, pty"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn python() -> PathBuf {
    assert!(
        python_usable(),
        "{} cannot import openai: .ci/run creates that venv (or set RLM_TEST_PYTHON)",
        python_path().display()
    );
    python_path()
}

fn client_script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(name)
}

/// Runs a Python client script and returns its stdout; fails with its output if it fails.
async fn run_python(args: &[&str]) -> String {
    let output = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new(python())
            .args(args)
            .env("OPENAI_API_KEY", common::KEY)
            .env_remove("RLM_MODEL")
            .env_remove("RLM_SUB_MODEL")
            .env_remove("OPENAI_BASE_URL")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the client finished (safety bound, not a timing assertion)")
    .expect("python starts");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "client failed:\n{stdout}\n{stderr}"
    );
    assert!(!stdout.contains(common::KEY) && !stderr.contains(common::KEY));
    stdout
}

async fn rlm_chat_through_a_terminal_keeps_variables_and_cancels_with_ctrl_c() {
    let server = mock().await;
    let url = server.base_url();
    let dir = Scratch::new("chat-pty");
    dir.write("ctx.txt", b"alpha beta gamma");
    let script = client_script("chat_pty.py");
    let out = run_python(&[
        path_str(&script),
        env!("CARGO_BIN_EXE_rlm"),
        "chat",
        "--base-url",
        &url,
        "--model",
        ROOT,
        "--max-retries",
        "0",
        "--context",
        path_str(&dir.path("ctx.txt")),
    ])
    .await;
    assert!(
        out.contains("count=3") && out.contains("second=beta"),
        "{out}"
    );
    // The first and third questions reached the root model (the second did too unless the
    // Ctrl-C came before its request was sent: the client presses it as soon as the question
    // is asked, so which one depends on the machine's speed). The context was loaded once,
    // and the third question's first message shows the earlier two, the cancelled one
    // without an answer.
    let firsts = first_messages(&server);
    assert!(matches!(firsts.len(), 2 | 3), "{firsts:#?}\n{out}");
    let last = firsts.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("Query 1: count words\nAnswer 1: count=3"),
        "{last}"
    );
    assert!(
        last.contains("Query 2: slow one\nAnswer 2: (no answer"),
        "{last}"
    );
}

/// Starts `rlm serve` against `mock` with `extra` flags; returns it and its base URL.
async fn start_serve(mock: &MockServer, extra: &[&str]) -> (tokio::process::Child, String) {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let mut server = tokio::process::Command::new(env!("CARGO_BIN_EXE_rlm"))
        .args(["serve", "--listen", "127.0.0.1:0", "--model", ROOT])
        .args(["--base-url", &mock.base_url(), "--max-retries", "0"])
        .args(extra)
        .env("OPENAI_API_KEY", common::KEY)
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
        if let Some(rest) = line.split("listening on ").nth(1) {
            base = rest.split_whitespace().next().map(str::to_owned);
            break;
        }
    }
    // The rest of stderr is drained so that the server never blocks on it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (server, base.expect("rlm serve says where it listens"))
}

async fn the_openai_sdk_continues_sessions_with_previous_response_id() {
    let mock = mock().await;
    let (mut server, base) = start_serve(&mock, &["--max-sessions", "2"]).await;
    let out = run_python(&[path_str(&client_script("responses_client.py")), &base]).await;
    assert!(out.contains("\"ok\": true"), "{out}");
    let _ = server.kill().await;
    // The first three root requests are the three questions of one session: the context
    // came with the first and was never sent again; the later ones ran in the same REPL
    // (they read `words`) and were told the earlier questions.
    let firsts = first_messages(&mock);
    assert!(firsts[0].contains("Query: count words"), "{}", firsts[0]);
    assert!(firsts[0].contains("alpha beta gamma"), "{}", firsts[0]);
    assert!(!firsts[0].contains("continues a session"));
    assert!(firsts[1].contains("Query: second word"), "{}", firsts[1]);
    assert!(firsts[1].contains("continues a session"), "{}", firsts[1]);
    assert!(firsts[2].contains("Query: last word"), "{}", firsts[2]);
    assert!(
        firsts[2].contains(
            "Query 1: count words\nAnswer 1: count=3\nQuery 2: second word\nAnswer 2: second=beta"
        ),
        "{}",
        firsts[2]
    );
    let root_calls = mock
        .requests()
        .into_iter()
        .filter(|r| r.model() == ROOT)
        .count();
    // 3 questions + the raw stream + 2 sessions + 1 continued (refused requests make none).
    assert_eq!(root_calls, 7);
}

fn main() -> ExitCode {
    Suite::new()
        .tokio(
            "a_session_file_moves_to_another_directory_and_resumes",
            a_session_file_moves_to_another_directory_and_resumes,
        )
        .tokio(
            "unknown_versions_and_truncated_files_are_refused",
            unknown_versions_and_truncated_files_are_refused,
        )
        .needs("python with openai (target/venv-ci)", python_usable())
        .tokio(
            "rlm_chat_through_a_terminal_keeps_variables_and_cancels_with_ctrl_c",
            rlm_chat_through_a_terminal_keeps_variables_and_cancels_with_ctrl_c,
        )
        .tokio(
            "the_openai_sdk_continues_sessions_with_previous_response_id",
            the_openai_sdk_continues_sessions_with_previous_response_id,
        )
        .run()
}
