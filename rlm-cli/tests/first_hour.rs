//! What a new user trips over, end to end against the loopback mock server: errors that
//! explain themselves, `--json` on failure, cancelled sub-calls, counts, `--progress lines`,
//! cache figures and the trace's `run_start`.

mod common;

use std::time::Duration;

use common::{KEY, ROOT, SUB, code, rlm, run_at};

use rlm_tests::{MockServer, Reply, ServerRequest, rlm_handler};
use serde_json::Value;

async fn scripted(replies: Vec<String>) -> MockServer {
    MockServer::start(rlm_handler(ROOT, replies, |p: &str| p.to_uppercase()))
        .await
        .expect("the mock server starts")
}

fn free_port_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    format!("http://127.0.0.1:{port}/v1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_failures_print_one_object_with_kind_and_exit_code() {
    // server (5): nothing listens.
    let url = free_port_url();
    let out = run_at(&url, &["--query", "q", "--json"], None).await;
    assert_eq!(out.code, Some(5), "{out:#?}");
    let json = out.json();
    assert_eq!(json["error"]["kind"], "server");
    assert_eq!(json["exit_code"], 5);
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(&url)),
        "{json}"
    );
    assert!(json["elapsed_ms"].is_u64(), "partial figures: {json}");
    assert!(json["usage"].is_object(), "partial figures: {json}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");

    // usage (2): a bad flag, even one clap rejects.
    let out = run_at(&url, &["--query", "q", "--json", "--bogus"], None).await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    let json = out.json();
    assert_eq!(json["error"]["kind"], "usage");
    assert_eq!(json["exit_code"], 2);
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("--bogus")),
        "{json}"
    );

    // input (4): a context that does not exist.
    let out = run_at(
        &url,
        &["--query", "q", "--json", "--context", "/no/such/path/here"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(4), "{out:#?}");
    assert_eq!(out.json()["error"]["kind"], "input");

    // Without --json, stdout stays empty.
    let out = run_at(&url, &["--query", "q"], None).await;
    assert_eq!(out.code, Some(5));
    assert!(out.stdout.is_empty(), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_after_answers_does_not_ask_if_the_server_runs() {
    let server = MockServer::start(|request: &ServerRequest| {
        if request.assistant_turns() == 0 {
            Reply::completion_for(request, code(r#"print("looking");"#))
        } else {
            Reply::drop_connection()
        }
    })
    .await
    .expect("server");
    let out = run_at(&server.base_url(), &["--query", "q", "--json"], None).await;
    assert_eq!(out.code, Some(5), "{out:#?}");
    assert!(!out.stderr.contains("running?"), "{out:#?}");
    assert!(out.stderr.contains("answered earlier turns"), "{out:#?}");
    let json = out.json();
    assert_eq!(json["error"]["kind"], "server");
    // The turn that worked is counted.
    assert!(
        json["usage"][ROOT]["calls"]
            .as_u64()
            .is_some_and(|c| c >= 1),
        "{json}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_without_v1_is_pointed_out() {
    // A web server's plain 404, as when --base-url misses /v1.
    let server = MockServer::start(|_: &ServerRequest| Reply::raw(404, "404 page not found"))
        .await
        .expect("server");
    let out = run_at(&server.base_url(), &["--query", "q"], None).await;
    assert_eq!(out.code, Some(5), "{out:#?}");
    assert!(
        out.stderr.contains("should end at the API version"),
        "{out:#?}"
    );
    assert!(
        out.stderr.contains("/chat/completions"),
        "names the URL: {out:#?}"
    );
    assert!(
        !out.stderr.contains("a model this server serves"),
        "{out:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_base_url_is_a_usage_error_not_the_openai_api() {
    let args = ["run", "--model", "m", "--query", "q"];
    for empty in ["", "  "] {
        // The flag...
        let mut with_flag = args.to_vec();
        with_flag.extend(["--base-url", empty]);
        let out = rlm(&with_flag, None).await;
        out.assert_clean_error(2);
        assert!(out.stderr.contains("--base-url is empty"), "{out:#?}");
        // ...and the variable (with the key set, so no "no API key" can hide it).
        let mut command = common::command(&args);
        command.env("OPENAI_BASE_URL", empty);
        let out = common::finish(command, None).await;
        out.assert_clean_error(2);
        assert!(out.stderr.contains("OPENAI_BASE_URL"), "{out:#?}");
    }
    let out = rlm(
        &[
            "run",
            "--model",
            "m",
            "--query",
            "q",
            "--base-url",
            "",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    assert_eq!(out.json()["error"]["kind"], "usage", "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_calls_cut_by_max_time_are_cancelled_not_failed() {
    let scratch = std::env::temp_dir().join(format!("rlm-first-hour-{}.jsonl", std::process::id()));
    let server = MockServer::start(|request: &ServerRequest| {
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
    let trace = scratch.to_str().expect("utf-8 path");
    let out = run_at(
        &server.base_url(),
        &[
            "--query",
            "q",
            "--json",
            "--max-time",
            "1",
            "--trace",
            trace,
        ],
        None,
    )
    .await;
    let text = std::fs::read_to_string(&scratch).unwrap_or_default();
    let _ = std::fs::remove_file(&scratch);
    assert_eq!(out.code, Some(3), "{out:#?}");
    let json = out.json();
    assert_eq!(json["cancelled_sub_calls"], 3, "{json}");
    assert_eq!(json["failed_sub_calls"], 0, "{json}");
    let summary = out
        .stderr
        .lines()
        .find(|l| l.starts_with("rlm: "))
        .unwrap_or_default();
    assert!(summary.contains("3 sub-calls (3 cancelled)"), "{out:#?}");
    assert!(!summary.contains("failed"), "{out:#?}");
    let ends: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["event"] == "sub_call_end")
        .collect();
    assert_eq!(ends.len(), 3, "{text}");
    assert!(ends.iter().all(|e| e["cancelled"] == true), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_read_as_english() {
    let server = scripted(vec![code(r#"let a = llm_query("x"); FINAL(a);"#)]).await;
    let out = run_at(&server.base_url(), &["--query", "q"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let summary = out
        .stderr
        .lines()
        .find(|l| l.starts_with("rlm: "))
        .unwrap_or_default();
    assert!(summary.contains("after 1 turn in"), "{summary}");
    assert!(summary.contains("; 1 sub-call"), "{summary}");
    assert!(
        summary.contains("cache: 0 hits, 0 duplicates shared"),
        "{summary}"
    );
    assert!(
        !summary.contains("1 sub-calls") && !summary.contains("1 turns"),
        "{summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_show_turns_batches_and_retries_with_timestamps() {
    let failed_once = std::sync::atomic::AtomicBool::new(false);
    let server = MockServer::start(move |request: &ServerRequest| {
        if request.model() == ROOT {
            rlm_tests::scripted_turn(
                request,
                &[code(
                    r#"let r = llm_batch(["a", "b"]); FINAL(r[0] + r[1]);"#,
                )],
            )
        } else if !failed_once.swap(true, std::sync::atomic::Ordering::SeqCst) {
            Reply::error(500, "server_error", "boom", "injected")
        } else {
            Reply::completion_for(request, request.last_user().to_uppercase())
        }
    })
    .await
    .expect("server");
    let url = server.base_url();
    let out = rlm(
        &[
            "run",
            "--base-url",
            &url,
            "--model",
            ROOT,
            "--sub-model",
            SUB,
            "--query",
            "q",
            "--max-retries",
            "2",
            "--progress",
            "lines",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "AB\n");
    let stamped: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| {
            let b = l.as_bytes();
            b.len() > 14 && b[2] == b':' && b[5] == b':' && b[8] == b'.' && b[12] == b'Z'
        })
        .collect();
    let has = |needle: &str| stamped.iter().any(|l| l.contains(needle));
    assert!(has("turn 1: asking root-model"), "{stamped:#?}");
    assert!(
        has("llm_batch #1: 2 prompts, "),
        "batch start: {stamped:#?}"
    );
    assert!(has("llm_batch #1: 2 prompts in"), "batch end: {stamped:#?}");
    assert!(has("retrying in"), "retry wait: {stamped:#?}");
    assert!(has("turn 1: root replied"), "{stamped:#?}");

    // auto is none when stderr is not a terminal.
    let server = scripted(vec!["FINAL(x)".to_owned()]).await;
    let out = run_at(&server.base_url(), &["--query", "q"], None).await;
    assert!(!out.stderr.contains("asking root-model"), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_entries_equal_the_answers_stored() {
    let server = scripted(vec![code(
        r#"let r = llm_batch(["same", "same", "other", "third"]); FINAL(r[0]);"#,
    )])
    .await;
    let out = run_at(&server.base_url(), &["--query", "q", "--json"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let json = out.json();
    assert_eq!(json["cache"]["entries"], 3, "{json}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_start_carries_settings_prompt_and_first_message() {
    let path = std::env::temp_dir().join(format!("rlm-run-start-{}.jsonl", std::process::id()));
    let server = scripted(vec!["FINAL(x)".to_owned()]).await;
    let url = server
        .base_url()
        .replace("http://", "http://user:pa55word-secret@");
    let trace = path.to_str().expect("utf-8");
    let out = run_at(
        &url,
        &[
            "--query",
            "what is it",
            "--trace",
            trace,
            "--max-sub-calls",
            "7",
            "--rpm",
            "600",
        ],
        None,
    )
    .await;
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(!text.contains("pa55word") && !text.contains(KEY), "{text}");
    let start: Value = text
        .lines()
        .next()
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_default();
    assert_eq!(start["event"], "run_start");
    assert_eq!(start["root_model"], ROOT);
    assert_eq!(start["settings"]["base_url"], server.base_url(), "{start}");
    assert_eq!(start["settings"]["max_sub_calls"], 7, "{start}");
    assert_eq!(start["settings"]["rpm"], 600, "{start}");
    assert!(start["settings"]["max_iterations"].is_u64(), "{start}");
    assert!(start["started_at_unix_ms"].is_u64(), "{start}");
    assert!(
        start["system_prompt"]
            .as_str()
            .is_some_and(|s| s.contains("FINAL")),
        "{start}"
    );
    assert!(
        start["first_message"]
            .as_str()
            .is_some_and(|s| s.contains("what is it")),
        "{start}"
    );
    let turn_end: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "turn_end")
        .unwrap_or_default();
    assert_eq!(turn_end["turn"], 1, "{text}");
    assert!(
        turn_end.get("reply").is_none(),
        "turn_end repeats nothing: {turn_end}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn help_lists_every_trace_event_the_readme_lists() {
    let out = rlm(&["run", "--help"], None).await;
    assert_eq!(out.code, Some(0));
    let readme = include_str!("../../README.md");
    let list = readme
        .split("Trace events, in short")
        .nth(1)
        .and_then(|s| s.split("\n\n").next())
        .unwrap_or_default();
    let events: Vec<&str> = list.split('`').skip(1).step_by(2).collect();
    // The README's trace paragraph describes every event of the list.
    let paragraph = readme
        .split("`--trace FILE` writes")
        .nth(1)
        .and_then(|s| s.split("\n\n").next())
        .unwrap_or_default();
    for event in &events {
        assert!(
            paragraph.contains(&format!("`{event}`")),
            "README paragraph lacks {event}"
        );
    }
    assert!(events.len() >= 12, "{events:?}");
    for event in events {
        assert!(out.stdout.contains(event), "--help lacks {event}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_lines_show_rate_limit_waits() {
    // At 60 requests a minute the sub model gets about one request a second: the third
    // item of the batch waits about two seconds for its turn.
    let server = scripted(vec![code(
        r#"let r = llm_batch(["a", "b", "c"]); FINAL(r[0] + r[1] + r[2]);"#,
    )])
    .await;
    let out = run_at(
        &server.base_url(),
        &["--query", "q", "--sub-rpm", "60", "--progress", "lines"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "ABC\n");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("sub-model: waiting for the rate limit")),
        "{out:#?}"
    );
}
