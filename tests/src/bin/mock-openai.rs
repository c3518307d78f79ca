//! A standalone loopback OpenAI-compatible server, for benchmarks that drive other programs
//! (the `rlm` binary, Python clients) against the same scripted models.
//!
//! ```text
//! mock-openai [--port N] [--latency-ms N] [--root-latency-ms N]
//!             [--root MODEL=FILE]... [--sub-find TEXT]
//! ```
//!
//! - `--root MODEL=FILE`: requests for MODEL are a root model's turns; FILE is a JSON array
//!   of replies, the reply for a request being the entry at the number of assistant messages
//!   in its conversation. May be given more than once.
//! - Every other request is a sub-call: with `--sub-find TEXT` it gets the first line of its
//!   prompt that contains TEXT (or `none`), otherwise `ok (N chars)`.
//! - `--latency-ms` delays sub-call replies, `--root-latency-ms` root replies.
//!
//! It prints `listening on http://127.0.0.1:PORT/v1` on stdout, then reads commands on stdin:
//! `stats` prints `{"requests": N, "peak_in_flight": N, "connections": N}`, `reset` forgets
//! the peak, `quit` stops the server. End of input (stdin closed, `&` in a shell, `nohup`)
//! does not stop it; SIGINT (Ctrl-C) and SIGTERM do.

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use rlm_tests::{MockServer, Reply, ServerRequest, scripted_turn};
use tokio::io::{AsyncBufReadExt, BufReader};

const HELP: &str = "\
mock-openai: a loopback OpenAI-compatible server with scripted models (no key, no network)

usage: mock-openai [--port N] [--latency-ms N] [--root-latency-ms N]
                   [--root MODEL=FILE]... [--sub-find TEXT]

  --port N             listen on 127.0.0.1:N (default: a free port)
  --root MODEL=FILE    requests for MODEL are root turns: FILE is a JSON array of
                       replies, reply i answering the conversation with i assistant turns
  --sub-find TEXT      other requests (sub-calls) get the first line of their prompt
                       containing TEXT, or `none` (default: `ok (N chars)`)
  --latency-ms N       delay of sub-call replies
  --root-latency-ms N  delay of root replies

Prints `listening on http://127.0.0.1:PORT/v1`, then reads commands on stdin: stats,
reset, quit. Runs until quit, SIGINT (Ctrl-C) or SIGTERM; a closed stdin does not stop it.";

struct Args {
    port: u16,
    latency: Duration,
    root_latency: Duration,
    roots: HashMap<String, Vec<String>>,
    sub_find: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        port: 0,
        latency: Duration::ZERO,
        root_latency: Duration::ZERO,
        roots: HashMap::new(),
        sub_find: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let millis = |v: String| {
            v.parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| format!("bad milliseconds {v:?}: {e}"))
        };
        match flag.as_str() {
            "--port" => args.port = value()?.parse().map_err(|e| format!("bad port: {e}"))?,
            "--latency-ms" => args.latency = millis(value()?)?,
            "--root-latency-ms" => args.root_latency = millis(value()?)?,
            "--sub-find" => args.sub_find = Some(value()?),
            "--root" => {
                let spec = value()?;
                let (model, file) = spec
                    .split_once('=')
                    .ok_or_else(|| format!("--root wants MODEL=FILE, got {spec:?}"))?;
                let text = std::fs::read_to_string(file)
                    .map_err(|e| format!("cannot read {file}: {e}"))?;
                let replies: Vec<String> = serde_json::from_str(&text)
                    .map_err(|e| format!("{file} is not a JSON array of strings: {e}"))?;
                args.roots.insert(model.to_owned(), replies);
            }
            "-h" | "--help" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(args)
}

fn reply(args: &Args, request: &ServerRequest) -> Reply {
    if let Some(script) = args.roots.get(request.model()) {
        return scripted_turn(request, script).after(args.root_latency);
    }
    let prompt = request.last_user();
    let text = match &args.sub_find {
        Some(needle) => prompt
            .lines()
            .find(|line| line.contains(needle.as_str()))
            .unwrap_or("none")
            .to_owned(),
        None => format!("ok ({} chars)", prompt.chars().count()),
    };
    Reply::completion_for(request, text).after(args.latency)
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("mock-openai: {message}");
            std::process::exit(2);
        }
    };
    let port = args.port;
    let server = match MockServer::builder()
        .port(port)
        .record(false)
        .start(move |request: &ServerRequest| reply(&args, request))
        .await
    {
        Ok(server) => server,
        Err(e) => {
            eprintln!("mock-openai: cannot listen on 127.0.0.1:{port}: {e}");
            std::process::exit(1);
        }
    };
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on {}", server.base_url());
    let _ = stdout.flush();

    tokio::select! {
        () = commands(&server) => {}
        () = stop_signal() => {}
    }
    // At once: a thread blocked reading a terminal's stdin would hold up the runtime's
    // shutdown.
    drop(server);
    std::process::exit(0);
}

/// Serves stdin's commands until `quit`; at end of input, waits forever (the server keeps
/// running when stdin is closed or the process is in the background).
async fn commands(server: &MockServer) {
    let mut stdout = std::io::stdout();
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match line.trim() {
            "stats" => {
                let stats = serde_json::json!({
                    "requests": server.request_count(),
                    "peak_in_flight": server.peak_in_flight(),
                    "connections": server.connections(),
                });
                let _ = writeln!(stdout, "{stats}");
                let _ = stdout.flush();
            }
            "reset" => server.reset(),
            "quit" => return,
            "" => {}
            other => {
                eprintln!("mock-openai: unknown command {other:?} (try: stats, reset, quit)");
            }
        }
    }
    std::future::pending::<()>().await;
}

/// SIGINT or SIGTERM (Ctrl-C only, where there is no SIGTERM).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
