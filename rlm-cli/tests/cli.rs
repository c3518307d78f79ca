//! End-to-end tests of the built `rlm` binary against the loopback mock server.
//!
//! Each test starts an OpenAI-compatible server on 127.0.0.1 with a scripted root model and a
//! deterministic sub model, runs `rlm` as a subprocess pointed at it, and checks what a user
//! sees: stdout, stderr, the exit status, the trace file, and what reached the server.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use rlm_tests::{MockServer, Reply, ServerRequest, rlm_handler};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_the_answer_alone_on_stdout() {
    let server = server(
        vec![
            code(r#"let a = llm_query("hello"); print(a);"#),
            "The sub model said it.\nFINAL(the answer is 42)".to_owned(),
        ],
        upper,
    )
    .await;
    let out = run(&server, &["--query", "What is it?"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "the answer is 42\n");
    assert!(
        out.stderr.contains("final answer"),
        "summary on stderr: {out:#?}"
    );
    assert!(!out.stderr.contains(KEY));

    // The key went to the server as a bearer token, and the query reached the root model.
    let roots = requests_for(&server, ROOT);
    assert_eq!(roots.len(), 2);
    assert_eq!(
        roots[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let first = roots[0].body.to_string();
    assert!(first.contains("What is it?"), "{first}");
    let subs = requests_for(&server, SUB);
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].last_user(), "hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_has_the_pinned_shape() {
    let server = server(
        vec![code(
            r#"let r = llm_batch(["a", "b", "c"]); FINAL(r[0] + r[1] + r[2]);"#,
        )],
        upper,
    )
    .await;
    let out = run(&server, &["--query", "q", "--json", "--quiet"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.is_empty(), "--quiet: {out:#?}");
    assert_eq!(out.stdout.lines().count(), 1, "one JSON object: {out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("stdout is JSON");
    assert_eq!(json["answer"], "ABC");
    assert_eq!(json["iterations"], 1);
    assert_eq!(json["stopped"], "final");
    assert!(json["elapsed_ms"].is_u64());
    assert_eq!(json["sub_calls"], 3);
    let usage = json["usage"].as_object().expect("usage is an object");
    assert_eq!(usage.len(), 2, "{usage:?}");
    for (model, calls) in [(ROOT, 1), (SUB, 3)] {
        let entry = usage[model].as_object().expect("a model's usage");
        let mut keys: Vec<&str> = entry.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["calls", "completion_tokens", "prompt_tokens"]);
        assert_eq!(entry["calls"], calls, "{model}");
        assert!(entry["prompt_tokens"].as_u64() > Some(0), "{model}");
        // Calls counted are the calls the server received.
        assert_eq!(requests_for(&server, model).len(), calls as usize);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_file_has_one_json_event_per_line_and_no_key() {
    let scratch = Scratch::new("trace");
    let trace = scratch.path("run.jsonl");
    let server = server(
        vec![
            code(r#"let r = llm_batch(["x", "y"]); let s = llm_query("z"); print(r); print(s);"#),
            "FINAL(done)".to_owned(),
        ],
        upper,
    )
    .await;
    let trace_arg = trace.to_str().expect("utf-8 path");
    let out = run(
        &server,
        &["--query", "trace me", "--trace", trace_arg],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "done\n");

    let text = std::fs::read_to_string(&trace).expect("the trace file exists");
    assert!(!text.contains(KEY), "the key is not traced");
    let events: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).expect("each line is JSON"))
        .collect();
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().expect("each line names its event"))
        .collect();
    for expected in [
        "run_start",
        "turn_start",
        "root_reply",
        "code_block",
        "batch_start",
        "sub_call_start",
        "sub_call_end",
        "batch_end",
        "turn_end",
        "final",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    assert_eq!(names.first(), Some(&"run_start"));
    assert_eq!(names.last(), Some(&"final"));
    assert_eq!(names.iter().filter(|n| **n == "sub_call_end").count(), 3);
    // Timestamps are present and never go backwards.
    let times: Vec<u64> = events
        .iter()
        .map(|e| e["t_ms"].as_u64().expect("t_ms on every line"))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let last = events.last().expect("a final event");
    assert_eq!(last["answer"], "done");
    assert_eq!(last["stopped"], "final");
    assert_eq!(events[0]["query"], "trace me");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_and_query_come_from_stdin() {
    let server = server(vec![code(r#"FINAL("chars: " + context.len());"#)], upper).await;
    let context = "héllo wörld\n".repeat(100);
    let out = run(
        &server,
        &["--query", "count", "--context", "-"],
        Some(context.as_bytes()),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, format!("chars: {}\n", context.chars().count()));

    let server = server_with_query_echo().await;
    let out = run(&server, &["--query", "-"], Some(b"a question from stdin")).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let root = &requests_for(&server, ROOT)[0];
    assert!(root.body.to_string().contains("a question from stdin"));

    let out = run(&server, &["--query", "-", "--context", "-"], Some(b"x")).await;
    out.assert_clean_error(2);
}

async fn server_with_query_echo() -> MockServer {
    server(vec!["FINAL(ok)".to_owned()], upper).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_is_one_document_per_file_with_lossy_utf8() {
    let scratch = Scratch::new("dir");
    scratch.write("a.txt", b"first file");
    scratch.write("sub/b.txt", b"caf\xe9 latin-1");
    scratch.write("c.bin", b"\x00\x01\x02binary");
    scratch.write(".hidden", b"not read");
    let server = server(
        vec![code(
            r#"FINAL(context.len() + " | " + context[0] + " | " + context[1]);"#,
        )],
        upper,
    )
    .await;
    let out = run(&server, &["--query", "q", "--context", scratch.str()], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        out.stdout,
        "2 | ==> a.txt <==\nfirst file | ==> sub/b.txt <==\ncaf\u{fffd} latin-1\n"
    );
    assert!(
        out.stderr.contains("warning:") && out.stderr.contains("sub/b.txt"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("c.bin"),
        "binary file reported: {out:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_and_flag_errors_are_one_line() {
    // A missing context file.
    let out = rlm(
        &[
            "run",
            "--model",
            ROOT,
            "--query",
            "q",
            "--context",
            "/no/such/file.txt",
        ],
        None,
    )
    .await;
    out.assert_clean_error(4);
    assert!(out.stderr.contains("/no/such/file.txt"), "{out:#?}");

    // A missing query file; a trace file that cannot be created.
    rlm(
        &["run", "--model", ROOT, "--query-file", "/no/such/query.txt"],
        None,
    )
    .await
    .assert_clean_error(4);
    rlm(
        &[
            "run",
            "--model",
            ROOT,
            "--query",
            "q",
            "--trace",
            "/no/such/dir/t.jsonl",
        ],
        None,
    )
    .await
    .assert_clean_error(4);
    // An empty query; JSON asked of a directory.
    rlm(&["run", "--model", ROOT, "--query", "  "], None)
        .await
        .assert_clean_error(2);
    let dir = std::env::temp_dir();
    let dir = dir.to_str().expect("utf-8 temp dir");
    rlm(
        &[
            "run",
            "--model",
            ROOT,
            "--query",
            "q",
            "--context",
            dir,
            "--context-format",
            "json",
        ],
        None,
    )
    .await
    .assert_clean_error(2);

    // An unknown flag, a missing model, a bad number.
    rlm(&["run", "--model", ROOT, "--query", "q", "--jsno"], None)
        .await
        .assert_clean_error(2);
    rlm(&["run", "--query", "q"], None)
        .await
        .assert_clean_error(2);
    rlm(
        &[
            "run",
            "--model",
            ROOT,
            "--query",
            "q",
            "--max-concurrent",
            "many",
        ],
        None,
    )
    .await
    .assert_clean_error(2);
    // A base URL that is not http(s).
    rlm(
        &[
            "run",
            "--model",
            ROOT,
            "--query",
            "q",
            "--base-url",
            "ftp://x/v1",
        ],
        None,
    )
    .await
    .assert_clean_error(2);
    // No key for the OpenAI API.
    let mut command = command(&["run", "--model", ROOT, "--query", "q"]);
    command.env_remove("OPENAI_API_KEY").stdin(Stdio::null());
    let output = command.output().await.expect("rlm runs");
    assert_eq!(output.status.code(), Some(6));
    assert!(String::from_utf8_lossy(&output.stderr).contains("OPENAI_API_KEY"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_model_error() {
    // A port that was just free: nothing listens there.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let base_url = format!("http://127.0.0.1:{port}/v1");
    let out = rlm(
        &[
            "run",
            "--model",
            ROOT,
            "--query",
            "q",
            "--base-url",
            &base_url,
            "--max-retries",
            "0",
        ],
        None,
    )
    .await;
    out.assert_clean_error(5);
    assert!(out.stderr.contains(&base_url), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_is_an_auth_error_without_the_key() {
    let server = MockServer::start(|_: &ServerRequest| {
        Reply::error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            &format!("Incorrect API key provided: {KEY}"),
        )
    })
    .await
    .expect("server");
    let out = run(&server, &["--query", "q"], None).await;
    out.assert_clean_error(6);
    assert!(out.stderr.contains("401"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_line_server_message_is_reported_on_one_line() {
    let server = MockServer::start(|_: &ServerRequest| {
        Reply::error(
            400,
            "invalid_request_error",
            "context_length_exceeded",
            "This model's maximum context length is 8192 tokens.\nPlease reduce the length\r\nof the messages.",
        )
    })
    .await
    .expect("server");
    let out = run(&server, &["--query", "q"], None).await;
    out.assert_clean_error(5);
    assert!(
        out.stderr
            .contains("8192 tokens. Please reduce the length of the messages."),
        "{out:#?}"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_file_whose_name_is_not_utf8_is_read() {
    use std::os::unix::ffi::OsStrExt;
    let scratch = Scratch::new("non-utf8-name");
    let path = scratch.0.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::write(&path, "the file's text").expect("write");
    let server = server(vec![code("FINAL(context);")], upper).await;
    let base_url = server.base_url();
    let mut command = command(&[
        "run",
        "--base-url",
        &base_url,
        "--model",
        ROOT,
        "--query",
        "q",
        "--context",
    ]);
    command.arg(&path).stdin(Stdio::null());
    let output = command.output().await.expect("rlm runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "the file's text\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_never_answers_times_out() {
    let server = MockServer::start(|request: &ServerRequest| {
        Reply::completion_for(request, "too late").after(Duration::from_secs(60))
    })
    .await
    .expect("server");
    let out = run(&server, &["--query", "q", "--timeout", "0.3"], None).await;
    out.assert_clean_error(5);
    assert!(out.stderr.contains("timed out"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_sub_calls_are_sent_once_unless_no_cache() {
    let script = || {
        vec![code(
            r#"let r = llm_batch(["same", "same", "other", "same"]);
let s = llm_query("other");
FINAL(r[0] + r[1] + r[2] + r[3] + s);"#,
        )]
    };
    let cached = server(script(), upper).await;
    let out = run(&cached, &["--query", "q", "--json"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["answer"], "SAMESAMEOTHERSAMEOTHER");
    assert_eq!(json["sub_calls"], 5);
    assert_eq!(
        requests_for(&cached, SUB).len(),
        2,
        "each distinct prompt sent once"
    );
    assert_eq!(json["usage"][SUB]["calls"], 2);
    assert_eq!(
        json["cache"]["hits"].as_u64().unwrap_or(0)
            + json["cache"]["coalesced"].as_u64().unwrap_or(0),
        3
    );

    let uncached = server(script(), upper).await;
    let out = run(&uncached, &["--query", "q", "--json", "--no-cache"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["answer"], "SAMESAMEOTHERSAMEOTHER");
    assert_eq!(requests_for(&uncached, SUB).len(), 5, "every sub-call sent");
    assert_eq!(json["usage"][SUB]["calls"], 5);
    assert!(json["cache"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_stop_prints_the_best_answer_with_status_3() {
    // Turn 1 never finishes; once the turn budget is spent the root is asked for its best
    // answer, which the script gives as turn 2.
    let server = server(
        vec![
            code(r#"print("still looking");"#),
            "FINAL(best guess)".to_owned(),
        ],
        upper,
    )
    .await;
    let out = run(
        &server,
        &["--query", "q", "--max-iterations", "1", "--json"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["stopped"], "max_iterations");
    assert_eq!(json["answer"], "best guess");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_cancels_keeps_the_trace_and_exits_130() {
    let scratch = Scratch::new("sigint");
    let trace = scratch.path("run.jsonl");
    // The root model answers at once; sub-calls never come back in time, so the run is
    // stuck in llm_batch until interrupted.
    let stuck = MockServer::start(move |request: &ServerRequest| {
        if request.model() == ROOT {
            Reply::completion_for(
                request,
                code(r#"let r = llm_batch(["a", "b", "c"]); FINAL(r[0]);"#),
            )
        } else {
            Reply::completion_for(request, "late").after(Duration::from_secs(120))
        }
    })
    .await
    .expect("server");

    let base_url = stuck.base_url();
    let trace_arg = trace.to_str().expect("utf-8 path").to_owned();
    let mut command = command(&[
        "run",
        "--base-url",
        &base_url,
        "--model",
        ROOT,
        "--sub-model",
        SUB,
        "--query",
        "q",
        "--trace",
        &trace_arg,
        "--max-retries",
        "0",
    ]);
    command.stdin(Stdio::null());
    let child = command.spawn().expect("rlm starts");
    let pid = child.id().expect("a pid");

    // Wait until the batch is in flight (the trace says so), then interrupt.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&trace).unwrap_or_default();
        if text.contains("\"batch_start\"") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the batch never started: {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The shell's own `kill`, so no particular package is needed.
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .expect("sh runs");
    assert!(status.success());

    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("rlm exits after Ctrl-C")
        .expect("output");
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let text = std::fs::read_to_string(&trace).expect("trace kept");
    for line in text.lines() {
        serde_json::from_str::<Value>(line).expect("every trace line is whole JSON");
    }
    assert!(text.contains("\"batch_start\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_ctrl_c_upstream_calls_counts_only_what_was_sent() {
    // 200 distinct sub-calls, 4 at a time: the first 6 to arrive are answered at once, the
    // rest hang, so the batch stops with exactly 10 sent (6 answered, 4 in flight).
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = MockServer::start(move |request: &ServerRequest| {
        if request.model() == ROOT {
            return Reply::completion_for(
                request,
                code(
                    "let p = []; for i in 0..200 { p.push(`item ${i}`); }\n\
                     let r = llm_batch(p, 4); FINAL(r.len());",
                ),
            );
        }
        let n = answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let reply = Reply::completion_for(request, "ok");
        if n < 6 {
            reply
        } else {
            reply.after(Duration::from_secs(120))
        }
    })
    .await
    .expect("server");
    let base_url = server.base_url();
    let mut command = command(&run_args(&base_url, &["--query", "q", "--json"]));
    command.stdin(Stdio::null());
    let child = command.spawn().expect("rlm starts");
    let pid = child.id().expect("a pid");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while requests_for(&server, SUB).len() < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sub-calls never arrived (safety bound)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .expect("sh runs");
    assert!(status.success());
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("rlm exits after Ctrl-C (safety bound)")
        .expect("output");
    assert_eq!(output.status.code(), Some(130), "{output:?}");
    let json: Value = serde_json::from_slice(&output.stdout).expect("one JSON object");
    let sent = requests_for(&server, SUB).len();
    assert_eq!(sent, 10, "the server saw 6 answered and 4 in flight");
    assert_eq!(json["cache"]["upstream_calls"], 10, "{json}");
    assert_eq!(json["usage"][SUB]["calls"], 6, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_runs_offline_and_both_approaches_are_right() {
    let out = rlm(
        &[
            "demo",
            "--docs",
            "6",
            "--latency-ms",
            "1-3",
            "--max-concurrent",
            "4",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    for run in ["sequential", "batched"] {
        assert_eq!(json[run]["correct"], true, "{json}");
        assert_eq!(json[run]["sub_calls"], 6, "{json}");
    }
    assert_eq!(json["sequential"]["peak_in_flight"], 1, "{json}");
    assert_eq!(json["batched"]["peak_in_flight"], 4, "{json}");

    let out = rlm(&["demo", "--docs", "3", "--latency-ms", "0"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stdout.contains("llm_batch"), "{out:#?}");
    assert!(out.stdout.contains("faster"), "{out:#?}");
}

/// A stdout that cannot be written (a full disk: `/dev/full`) is an error, exit 4, with or
/// without `--json`; the demo used to print into it and exit 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_into_a_full_stdout_is_an_error() {
    for json in [false, true] {
        let mut args = vec!["demo", "--docs", "2", "--latency-ms", "0"];
        if json {
            args.push("--json");
        }
        let full = std::fs::File::create("/dev/full").expect("/dev/full");
        let mut command = command(&args);
        command.stdout(Stdio::from(full));
        // (`output()` would pipe stdout again.)
        let output = command
            .spawn()
            .expect("rlm starts")
            .wait_with_output()
            .await
            .expect("rlm runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(4), "json {json}: {stderr}");
        assert!(stderr.contains("cannot write to stdout"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_shows_the_code_and_what_the_repl_printed_and_writes_a_trace() {
    let scratch = Scratch::new("demo");
    let trace = scratch.path("demo.jsonl");
    let trace_arg = trace.to_str().expect("utf-8 path").to_owned();
    let out = rlm(
        &[
            "demo",
            "--docs",
            "3",
            "--latency-ms",
            "50",
            "--trace",
            &trace_arg,
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    for shown in [
        "turn 1: the model's code\n",
        "      | print(\"documents: \" + context.len());\n",
        "    the REPL printed\n      | documents: 3\n",
        "turn 2: the model's code\n",
        "      | let replies = llm_batch(prompts);\n",
    ] {
        assert!(out.stdout.contains(shown), "{shown:?} in {}", out.stdout);
    }
    // The trace of the llm_batch run, as rlm run writes one: whole JSON lines, a run tree
    // of one run, its three sub-calls and its final answer.
    let text = std::fs::read_to_string(&trace).expect("the trace");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(lines[0]["event"], "run_start", "{text}");
    assert!(lines.iter().all(|l| l["run"] == "0" && l["depth"] == 0));
    let events = |name: &str| lines.iter().filter(|l| l["event"] == name).count();
    assert_eq!(events("sub_call_start"), 3, "{text}");
    assert_eq!(events("batch_start"), 1, "{text}");
    assert_eq!(events("final"), 1, "{text}");
    // Its times count from that run's start, not from the demo's (before: every event came
    // after the whole sequential run, so the page's timeline disagreed with its wall time).
    let last = lines.last().cloned().unwrap_or_default();
    let first_t = lines[0]["t_ms"].as_u64().unwrap_or(u64::MAX);
    let elapsed = last["elapsed_ms"].as_u64().unwrap_or(0);
    assert!(
        first_t <= elapsed,
        "first event at {first_t} ms of a {elapsed} ms run"
    );
    assert!(out.stderr.contains(&trace_arg), "{out:#?}");

    // With --json, stdout is the report alone; a trace path that cannot be written is an
    // input error before anything runs.
    let out = rlm(
        &["demo", "--docs", "2", "--latency-ms", "0", "--json"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(!out.stdout.contains("the model's code"), "{out:#?}");
    let out = rlm(
        &[
            "demo",
            "--trace",
            "/nonexistent-dir/demo.jsonl",
            "--latency-ms",
            "0",
        ],
        None,
    )
    .await;
    out.assert_clean_error(4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sub_call_is_an_error_string_and_the_others_are_kept() {
    let script = code(
        r#"let r = llm_batch(["a", "bad", "c"]);
FINAL(r[0] + "|" + r[1] + "|" + r[2]);"#,
    );
    let scripted = rlm_handler(ROOT, vec![script], upper);
    let server = MockServer::start(move |request: &ServerRequest| {
        if request.model() == SUB && request.last_user() == "bad" {
            return Reply::error(
                400,
                "invalid_request_error",
                "bad_prompt",
                "this prompt is bad",
            );
        }
        scripted(request)
    })
    .await
    .expect("server");
    let out = run(&server, &["--query", "q", "--json"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let answer = json["answer"].as_str().expect("an answer");
    let parts: Vec<&str> = answer.split('|').collect();
    assert_eq!(parts.len(), 3, "{answer}");
    assert_eq!(parts[0], "A");
    assert!(parts[1].starts_with("Error:"), "{answer}");
    assert!(parts[1].contains("this prompt is bad"), "{answer}");
    assert_eq!(parts[2], "C");
    assert_eq!(json["sub_calls"], 3);
    assert_eq!(json["failed_sub_calls"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_bounds_the_requests_in_flight_at_the_server() {
    let server = MockServer::builder()
        .latency(Duration::from_millis(100))
        .start(rlm_handler(
            ROOT,
            vec![code(
                r#"let ps = [];
for i in 0..20 { ps.push("p" + i); }
let qs = [];
for i in 0..6 { qs.push("q" + i); }
let r = llm_batch(ps);
let s = llm_batch(qs, 2);
FINAL(r.len() + s.len());"#,
            )],
            upper,
        ))
        .await
        .expect("server");
    let out = run(&server, &["--query", "q", "--max-concurrent", "4"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "26\n");
    assert_eq!(requests_for(&server, SUB).len(), 26);
    let peak = server.peak_in_flight();
    assert!(peak <= 4, "at most --max-concurrent in flight, saw {peak}");
    assert!(peak >= 2, "the batch ran concurrently, saw {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpm_paces_each_model_at_the_server() {
    // 120 requests a minute: a burst of 2, then one every ~0.504 s, so the sixth sub-call is
    // sent at least 2 s after the first. The first is sent after the root's reply, so after
    // the root request arrived: measured from that arrival, a slow machine can only make the
    // spread longer (from the first sub-call's own arrival, a late one shrank it).
    let server = server(
        vec![code(
            r#"let r = llm_batch(["a", "b", "c", "d", "e", "f"]); FINAL(r.len());"#,
        )],
        upper,
    )
    .await;
    let out = run(
        &server,
        &["--query", "q", "--rpm", "120", "--no-cache"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "6\n");
    let subs = requests_for(&server, SUB);
    assert_eq!(subs.len(), 6);
    let roots = requests_for(&server, ROOT);
    let asked = roots.first().map(|r| r.at).expect("the root was asked");
    let last = subs.iter().map(|r| r.at).max().expect("arrivals");
    let spread = last - asked;
    assert!(
        spread >= Duration::from_millis(1_950),
        "six requests at 120/min cannot all arrive within {spread:?} of the root's request"
    );
}

// Answer integrity (README, "When an answer is accepted"): what used to end a run silently wrong.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_written_before_the_output_is_not_the_answer() {
    let premature = format!(
        "{}\nOutput: [\"magic number is 999\"]\nFINAL(999)",
        code(r#"let hits = regex_find_all(context, "magic number is \\d+"); print(hits);"#)
    );
    let server = server(vec![premature, "FINAL(4242)".to_owned()], upper).await;
    let out = run(
        &server,
        &["--query", "What is the magic number?", "--context", "-"],
        Some(b"Some text. The magic number is 4242. More text."),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "4242\n");
    let root = requests_for(&server, ROOT);
    assert_eq!(root.len(), 2);
    assert!(root[1].last_user().contains("[\"magic number is 4242\"]"));
    assert!(root[1].last_user().contains("before you saw the output"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_model_the_server_does_not_have_stops_the_run() {
    let script = code(r#"let r = llm_batch(range(84).map(|i| `chunk ${i}`)); print(r[0]);"#);
    let scripted = rlm_handler(
        ROOT,
        vec![script, "FINAL(built from errors)".to_owned()],
        upper,
    );
    let server = MockServer::start(move |request: &ServerRequest| {
        if request.model() == SUB {
            return Reply::error(
                404,
                "invalid_request_error",
                "model_not_found",
                "The model `sub-model` does not exist",
            );
        }
        scripted(request)
    })
    .await
    .expect("server");
    let out = run(&server, &["--query", "q", "--max-concurrent", "4"], None).await;
    out.assert_clean_error(5);
    assert!(out.stderr.contains("sub model (sub-model)"), "{out:#?}");
    assert!(out.stderr.contains("does not exist"), "{out:#?}");
    let sent = requests_for(&server, SUB).len();
    assert!(sent <= 4, "stopped at once, yet {sent} sub-calls were sent");
    assert_eq!(requests_for(&server, ROOT).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_final_in_the_reply_to_the_final_ask_is_no_answer() {
    let replies = vec![
        code("print(1);"),
        "I think it is 42.\n```repl\nprint(2);\n```".to_owned(),
    ];
    let server = server(replies, upper).await;
    let out = run(&server, &["--query", "q", "--max-iterations", "1"], None).await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    assert_eq!(out.stdout, "", "no code, fence or prose as an answer");
    assert!(
        out.stderr
            .contains("warning: no answer: the turn budget (--max-iterations) ran out"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("\"I think it is 42."), "{out:#?}");
    let out = run(
        &server,
        &["--query", "q", "--max-iterations", "1", "--json"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["answer"], "");
    assert_eq!(json["stopped"], "max_iterations");
    assert!(
        json["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("no answer:")),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_and_empty_sub_answers_are_failed_items_with_warnings() {
    let script = code(r#"let r = llm_batch(["thinks", "long", "ok"]); print(r); FINAL(r[2]);"#);
    let scripted = rlm_handler(ROOT, vec![script], upper);
    let server = MockServer::start(move |request: &ServerRequest| {
        let choice = match (request.model(), request.last_user()) {
            (SUB, "thinks") => serde_json::json!({
                "message": {"role": "assistant", "content": null,
                            "reasoning_content": "Let me think..."},
                "finish_reason": "stop"}),
            (SUB, "long") => serde_json::json!({
                "message": {"role": "assistant", "content": "The answer is half a sen"},
                "finish_reason": "length"}),
            _ => return scripted(request),
        };
        Reply::json(200, &serde_json::json!({"model": SUB, "choices": [choice]}))
    })
    .await
    .expect("server");
    let out = run(&server, &["--query", "q", "--json"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["answer"], "OK");
    assert_eq!(json["failed_sub_calls"], 2);
    let warnings = json["warnings"].to_string();
    assert!(
        warnings.contains("1 sub-call was cut at the token limit"),
        "{warnings}"
    );
    assert!(
        warnings.contains("1 sub-call had no answer text"),
        "{warnings}"
    );
    assert!(
        warnings.contains("after 2 of 3 sub-calls failed"),
        "{warnings}"
    );
    assert!(
        out.stderr.contains("warning: 1 sub-call was cut"),
        "{out:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_concurrent_is_the_ceiling_of_a_scripts_own_limit() {
    let server = MockServer::builder()
        .latency(Duration::from_millis(20))
        .start(rlm_handler(
            ROOT,
            vec![code(
                r#"let r = llm_batch(range(200).map(|i| `p${i}`), 100000); FINAL(r.len());"#,
            )],
            upper,
        ))
        .await
        .expect("server");
    let out = run(&server, &["--query", "q", "--max-concurrent", "4"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "200\n");
    let peak = server.peak_in_flight();
    assert!(peak <= 4, "at most --max-concurrent in flight, saw {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_runs_answer_over_chunks_with_one_budget_and_a_trace_tree() {
    const CHILD: &str = "child-model";
    let root = code(
        r#"let parts = chunk(context, 10);
let r = rlm_batch(parts.map(|p| "Count the letters"), parts);
FINAL(join(r, "|"));"#,
    );
    let scripted = rlm_handler(ROOT, vec![root], upper);
    let child_script = vec![
        code(r#"let r = llm_query("count: " + context); print(r);"#),
        "FINAL_VAR(r)".to_owned(),
    ];
    let server = MockServer::start(move |request: &ServerRequest| {
        if request.model() == CHILD {
            return rlm_tests::scripted_turn(request, &child_script);
        }
        scripted(request)
    })
    .await
    .expect("server");
    let scratch = Scratch::new("children");
    let trace = scratch.path("trace.jsonl");
    let trace_arg = trace.to_string_lossy().into_owned();
    let context: String = "abcdefgh"
        .chars()
        .map(|c| c.to_string().repeat(10))
        .collect();
    let out = run(
        &server,
        &[
            "--query",
            "q",
            "--context",
            "-",
            "--child-model",
            CHILD,
            "--json",
            "--trace",
            &trace_arg,
            "--progress",
            "lines",
        ],
        Some(context.as_bytes()),
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    // Progress lines show each child's start and end.
    assert!(
        out.stderr
            .contains("child run 0.1 (depth 1) started, root model child-model"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("child run 0.8 answered after 2 turns"),
        "{}",
        out.stderr
    );
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    let answer = json["answer"].as_str().expect("an answer");
    assert_eq!(answer.split('|').count(), 8, "{answer}");
    for (part, letter) in answer.split('|').zip("ABCDEFGH".chars()) {
        assert_eq!(part, format!("COUNT: {}", letter.to_string().repeat(10)));
    }
    assert_eq!(json["child_runs"], 8);
    assert_eq!(json["max_depth_reached"], 1);
    // Below the root: 8 children x 2 root turns, and their 8 sub-calls.
    assert_eq!(json["sub_calls"], 24);
    // The summary gives both parts; the sub-calls from code are what `rlm view` counts.
    assert!(
        out.stderr
            .contains("24 sub-calls (8 from code, 16 root turns of child runs)"),
        "{}",
        out.stderr
    );
    let page = scratch.path("trace.html");
    let view = rlm(
        &["view", &trace_arg, "-o", page.to_str().expect("utf-8 path")],
        None,
    )
    .await;
    assert_eq!(view.code, Some(0), "{view:#?}");
    assert!(
        view.stderr.contains(" 8 sub-calls from code, 9 runs"),
        "{view:#?}"
    );
    assert_eq!(json["usage"][CHILD]["calls"], 16);
    assert_eq!(json["usage"][SUB]["calls"], 8);
    assert_eq!(requests_for(&server, CHILD).len(), 16);
    assert_eq!(requests_for(&server, SUB).len(), 8);
    let lines: Vec<Value> = std::fs::read_to_string(&trace)
        .expect("trace")
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| l["depth"].is_u64() && l["run"].is_string())
    );
    let mut children: Vec<String> = lines
        .iter()
        .filter(|l| l["event"] == "run_start" && l["depth"] == 1)
        .map(|l| {
            assert_eq!(l["parent"], "0");
            l["run"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    children.sort();
    let expected: Vec<String> = (1..=8).map(|i| format!("0.{i}")).collect();
    assert_eq!(children, expected);
    let child_finals = lines
        .iter()
        .filter(|l| l["event"] == "final" && l["depth"] == 1)
        .count();
    assert_eq!(child_finals, 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_runs_batches_reuse_their_connections() {
    // 4 children at once, each with 10 batches of 4 in a row: up to 16 sub-calls in flight,
    // four times --max-concurrent, and all 16 connections idle at once between batches. A
    // pool keeping only --max-concurrent + 1 idle connections closed the others there and
    // opened new ones for the next batches.
    const CHILD: &str = "child-model";
    let root = code(
        r#"let r = rlm_batch(range(4).map(|i| "go"), range(4).map(|i| `c${i}`)); FINAL(r.len());"#,
    );
    let scripted = rlm_handler(ROOT, vec![root], upper);
    let child_script = vec![code(
        r#"let n = 0;
for k in 0..10 { n += llm_batch(range(4).map(|i| `${context}-${k}-${i}`)).len(); }
FINAL(n);"#,
    )];
    let server = MockServer::builder()
        .latency(Duration::from_millis(30))
        .start(move |request: &ServerRequest| {
            if request.model() == CHILD {
                return rlm_tests::scripted_turn(request, &child_script);
            }
            scripted(request)
        })
        .await
        .expect("server");
    let out = run(
        &server,
        &[
            "--query",
            "q",
            "--child-model",
            CHILD,
            "--max-concurrent",
            "4",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "4\n");
    assert_eq!(requests_for(&server, SUB).len(), 160);
    let peak = server.peak_in_flight();
    assert!(
        peak > 5,
        "the children's batches overlapped, saw {peak} in flight"
    );
    // Every connection is reused: at most one per request ever in flight at once
    // (1 + 4 + 16), against about 100 when the pool keeps 5.
    let opened = server.connections();
    assert!(opened <= 21, "{opened} connections for 165 requests");
}

/// A completion for `request` holding `text`, as a server that sends no `usage` makes it.
fn without_usage(request: &ServerRequest, text: String) -> Reply {
    Reply::json(
        200,
        &serde_json::json!({
            "id": format!("chatcmpl-{}", request.seq),
            "object": "chat.completion",
            "created": 0,
            "model": request.model(),
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }],
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_holds_against_a_server_without_usage() {
    let root = [code(
        "let a = llm_batch(range(100).map(|i| `prompt ${i}`), 1);\nFINAL(a.len());",
    )];
    let server = MockServer::start(move |request: &ServerRequest| {
        if request.model() == ROOT {
            without_usage(request, root[0].clone())
        } else {
            // About 1,500 tokens.
            without_usage(request, "word ".repeat(1_200))
        }
    })
    .await
    .expect("server");
    let out = run(
        &server,
        &["--query", "q", "--max-total-tokens", "20000", "--json"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    let json = out.json();
    assert_eq!(json["stopped"], "max_tokens", "{json}");
    let sent = requests_for(&server, SUB).len() as u64;
    assert!(sent <= 14, "{sent} sub-calls sent");
    assert_eq!(json["refused_sub_calls"], 100 - sent, "{json}");
    let warnings = json["warnings"].to_string();
    assert!(warnings.contains("no token usage"), "{warnings}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sub_model_a_proxy_refuses_with_a_400_stops_the_run() {
    // LiteLLM's answer to a mistyped --sub-model: a 400, not a 404.
    let script = code(r#"let r = llm_batch(range(84).map(|i| `chunk ${i}`)); print(r[0]);"#);
    let scripted = rlm_handler(
        ROOT,
        vec![script, "FINAL(built from errors)".to_owned()],
        upper,
    );
    let server = MockServer::start(move |request: &ServerRequest| {
        if request.model() == SUB {
            return Reply::error(
                400,
                "invalid_request_error",
                "400",
                "Invalid model name passed in model=sub-model",
            );
        }
        scripted(request)
    })
    .await
    .expect("server");
    let out = run(&server, &["--query", "q", "--max-concurrent", "4"], None).await;
    out.assert_clean_error(5);
    assert!(out.stderr.contains("sub model (sub-model)"), "{out:#?}");
    assert!(out.stderr.contains("HTTP 400"), "{out:#?}");
    assert!(out.stderr.contains("Invalid model name"), "{out:#?}");
    let sent = requests_for(&server, SUB).len();
    assert!(sent < 84, "stopped early, yet {sent} sub-calls were sent");
    assert_eq!(requests_for(&server, ROOT).len(), 1);
}
