//! The `mock-openai` binary as the README's offline try-out uses it: it keeps serving with
//! stdin closed (backgrounded), stops on SIGINT / SIGTERM, and `--help` exits 0.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn mock() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mock-openai"))
}

#[test]
fn help_exits_zero_with_usage_on_stdout() {
    let out = mock().arg("--help").output().expect("mock-openai runs");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("usage: mock-openai"), "{text}");
    assert!(text.contains("--root MODEL=FILE"), "{text}");
    let bad = mock().arg("--nope").output().expect("mock-openai runs");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
}

/// Starts the server with stdin closed; returns it and its `host:port`.
fn start_detached() -> (std::process::Child, String) {
    let mut child = mock()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("mock-openai starts");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout piped");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("a first line");
    let url = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    let addr = url.trim_end_matches("/v1").to_owned();
    (child, addr)
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("sh")
        .args(["-c", &format!("kill -{name} {pid}")])
        .status()
        .expect("sh runs");
    assert!(status.success());
}

/// Waits (bounded, not a timing assertion) for the process to exit.
fn wait_exit(child: &mut std::process::Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    None
}

#[test]
#[cfg(unix)]
fn keeps_serving_with_stdin_closed_and_stops_on_signals() {
    for name in ["TERM", "INT"] {
        let (mut child, addr) = start_detached();
        // stdin was closed from the start: it still accepts connections and answers.
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "exited on a closed stdin"
        );
        let mut stream = std::net::TcpStream::connect(&addr).expect("still listening");
        use std::io::{Read, Write};
        let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).expect("send");
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("ok (2 chars)"), "{reply}");

        signal(child.id(), name);
        let status = wait_exit(&mut child);
        assert!(status.is_some(), "SIG{name} did not stop it");
    }
}
