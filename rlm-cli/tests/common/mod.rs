//! What the end-to-end tests of the `rlm` binary share: running it, the mock server, scratch
//! directories.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use rlm_tests::{MockServer, ServerRequest, rlm_handler};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// A dummy key: it must never show up in any output.
pub const KEY: &str = "sk-test-4f1c9a7e-never-print-me";
pub const ROOT: &str = "root-model";
pub const SUB: &str = "sub-model";

/// What one `rlm` process did.
#[derive(Debug)]
pub struct Outcome {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// The one JSON object on stdout.
    pub fn json(&self) -> Value {
        assert_eq!(self.stdout.lines().count(), 1, "{self:#?}");
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("{e}: {self:#?}"))
    }

    pub fn assert_clean_error(&self, code: i32) {
        assert_eq!(self.code, Some(code), "{self:#?}");
        assert!(self.stdout.is_empty(), "{self:#?}");
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line on stderr: {self:#?}");
        assert!(lines[0].starts_with("error: "), "{self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        assert!(!self.stderr.contains(KEY), "{self:#?}");
    }
}

/// `rlm args...` with a clean environment and the dummy key.
pub fn command(args: &[&str]) -> tokio::process::Command {
    command_for(env!("CARGO_BIN_EXE_rlm"), args)
}

/// `program args...` (`rlm`, or a wrapper such as `prlimit`) with a clean environment, the
/// dummy key, and stdout and stderr captured.
pub fn command_for(program: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    for var in [
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        "RLM_MODEL",
        "RLM_SUB_MODEL",
        "RUST_LOG",
        "RUST_BACKTRACE",
    ] {
        command.env_remove(var);
    }
    command
        .env("OPENAI_API_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `command` with `stdin` (none: an empty stdin) and waits for it.
pub async fn finish(mut command: tokio::process::Command, stdin: Option<&[u8]>) -> Outcome {
    command.stdin(Stdio::piped());
    let mut child = command.spawn().expect("the program starts");
    let mut pipe = child.stdin.take().expect("stdin is piped");
    if let Some(data) = stdin {
        // The program may stop reading early (that is the point of some tests).
        let _ = pipe.write_all(data).await;
    }
    drop(pipe);
    let output = tokio::time::timeout(Duration::from_secs(300), child.wait_with_output())
        .await
        .expect("the program finished (safety bound, not a timing assertion)")
        .expect("its output could be read");
    Outcome {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs `rlm args...` with `stdin` (none: an empty stdin).
pub async fn rlm(args: &[&str], stdin: Option<&[u8]>) -> Outcome {
    let out = finish(command(args), stdin).await;
    // Whatever a test checks, the key never shows and nothing panics.
    assert!(
        !out.stderr.contains(KEY) && !out.stdout.contains(KEY),
        "{out:#?}"
    );
    assert!(!out.stderr.contains("panicked"), "{out:#?}");
    out
}

/// `rlm run` against `server` with the root and sub models, plus `extra` flags.
pub async fn run(server: &MockServer, extra: &[&str], stdin: Option<&[u8]>) -> Outcome {
    run_at(&server.base_url(), extra, stdin).await
}

/// `rlm run` against the server at `base_url`, plus `extra` flags.
pub async fn run_at(base_url: &str, extra: &[&str], stdin: Option<&[u8]>) -> Outcome {
    rlm(&run_args(base_url, extra), stdin).await
}

/// The arguments of `rlm run` against `base_url` with the root and sub models, no retries,
/// and `extra`.
pub fn run_args<'a>(base_url: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "run",
        "--base-url",
        base_url,
        "--model",
        ROOT,
        "--sub-model",
        SUB,
        "--max-retries",
        "0",
    ];
    args.extend_from_slice(extra);
    args
}

/// A root reply that runs `code` in one block.
pub fn code(code: &str) -> String {
    format!("Running some code.\n\n```repl\n{code}\n```")
}

pub async fn server(replies: Vec<String>, sub: fn(&str) -> String) -> MockServer {
    MockServer::start(rlm_handler(ROOT, replies, sub))
        .await
        .expect("the mock server starts")
}

pub fn upper(prompt: &str) -> String {
    prompt.to_uppercase()
}

pub fn requests_for(server: &MockServer, model: &str) -> Vec<ServerRequest> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.model() == model)
        .collect()
}

/// A scratch directory under the target dir's temp area, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rlm-cli-e2e-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }

    pub fn write(&self, relative: &str, bytes: &[u8]) {
        let path = self.path(relative);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new("."))).expect("mkdir");
        std::fs::write(path, bytes).expect("write");
    }

    pub fn str(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
