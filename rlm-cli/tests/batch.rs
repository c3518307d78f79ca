//! `rlm batch` and `rlm worker` end to end: `rlm` processes against the loopback mock server
//! and, for the queue, a real `redis-server` on a loopback port. What reached the server is
//! counted there; nothing here asserts how long anything took.
//!
//! The harness is `rlm_tests::harness::Suite` (see `main`): without `redis-server` the
//! queue tests show as ignored, not as passed; under `CI=true` they run and fail loudly.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{KEY, ROOT, SUB, Scratch, code, command, finish, rlm, upper};
use rlm_tests::{MockServer, RedisServer, Reply, ServerRequest, scripted_turn};
use serde_json::{Value, json};

/// A root model that asks the sub model about its context once and answers with what it
/// said: the answer of job `i` (context `word i`) is `WORD I`.
fn root_script() -> Vec<String> {
    vec![code("let a = llm_query(context);\nFINAL(a);")]
}

async fn mock(latency: Duration) -> MockServer {
    let replies = root_script();
    MockServer::start(move |request: &ServerRequest| {
        if request.model() == ROOT {
            scripted_turn(request, &replies)
        } else {
            Reply::completion_for(request, upper(request.last_user())).after(latency)
        }
    })
    .await
    .expect("the mock server starts")
}

/// `n` jobs, `question <qI>` over `word I`, expecting `WORD I` (every third one wrong).
fn jobs(n: usize) -> String {
    (0..n)
        .map(|i| {
            let expected = if i.is_multiple_of(3) {
                format!("nope {i}")
            } else {
                format!("WORD {i}")
            };
            format!(
                "{}\n",
                json!({"id": format!("q{i}"), "query": format!("question <q{i}>"),
                       "context": format!("word {i}"), "expected": expected})
            )
        })
        .collect()
}

/// The ids each root request asked about (`<qI>` in its query).
fn asked(server: &MockServer) -> Vec<String> {
    server
        .requests()
        .into_iter()
        .filter(|r| r.model() == ROOT)
        .filter_map(|r| {
            let body = r.body.to_string();
            let start = body.find("question <")? + "question <".len();
            let end = body[start..].find('>')?;
            Some(body[start..start + end].to_owned())
        })
        .collect()
}

fn batch_args<'a>(
    base_url: &'a str,
    jobs: &'a str,
    output: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "batch",
        jobs,
        "--output",
        output,
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

/// The lines of a results file, each parsed (a line that does not parse fails the test).
fn lines(path: &std::path::Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "a torn line: {text:?}"
    );
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect()
}

fn ids_once(lines: &[Value]) -> HashSet<String> {
    let mut ids = HashSet::new();
    for line in lines {
        let id = line["id"].as_str().expect("an id").to_owned();
        assert!(ids.insert(id.clone()), "{id} has two lines");
    }
    ids
}

const PRICES: &str =
    r#"{"root-model": {"input": 1.0, "output": 2.0}, "sub-model": {"input": 0.5, "output": 1.0}}"#;

async fn two_hundred_jobs_through_one_process() {
    let dir = Scratch::new("batch-200");
    dir.write("jobs.jsonl", jobs(200).as_bytes());
    dir.write("prices.json", PRICES.as_bytes());
    let server = mock(Duration::ZERO).await;
    let (jobs, output, prices) = (
        dir.path("jobs.jsonl"),
        dir.path("out.jsonl"),
        dir.path("prices.json"),
    );
    let url = server.base_url();
    let args = batch_args(
        &url,
        jobs.to_str().expect("utf-8"),
        output.to_str().expect("utf-8"),
        &[
            "--max-runs",
            "16",
            "--json",
            "--prices",
            prices.to_str().expect("utf-8"),
        ],
    );
    let out = rlm(&args, None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let summary = out.json();
    let lines = lines(&output);
    assert_eq!(lines.len(), 200);
    assert_eq!(ids_once(&lines).len(), 200);
    for line in &lines {
        assert!(line["error"].is_null(), "{line}");
        assert_eq!(line["stopped"], "final", "{line}");
        let i: usize = line["id"]
            .as_str()
            .and_then(|id| id[1..].parse().ok())
            .expect("qI");
        assert_eq!(line["answer"], format!("WORD {i}"));
        assert_eq!(line["correct"], !i.is_multiple_of(3), "{line}");
        for key in [
            "iterations",
            "elapsed_ms",
            "usage",
            "cost_usd",
            "sub_calls",
            "failed_sub_calls",
            "warnings",
        ] {
            assert!(line.get(key).is_some(), "{key} in {line}");
        }
    }
    // Each job asked its root once and its sub model once.
    assert_eq!(asked(&server).len(), 200);
    assert_eq!(server.request_count(), 400);
    // The summary is the sum of the lines.
    assert_eq!(summary["jobs"], 200);
    assert_eq!(summary["results"], 200);
    assert_eq!(summary["answered"], 200);
    assert_eq!(summary["failed"], 0);
    assert_eq!(summary["ran"], 200);
    assert_eq!(summary["skipped"], 0);
    let correct = lines.iter().filter(|l| l["correct"] == true).count();
    assert_eq!(summary["correct"], correct);
    assert_eq!(summary["scored"], 200);
    let accuracy = summary["accuracy"].as_f64().expect("accuracy");
    assert!((accuracy - correct as f64 / 200.0).abs() < 1e-12);
    for model in [ROOT, SUB] {
        for key in ["calls", "prompt_tokens", "completion_tokens"] {
            let sum: u64 = lines
                .iter()
                .map(|l| l["usage"][model][key].as_u64().unwrap_or(0))
                .sum();
            assert_eq!(summary["usage"][model][key], sum, "{model} {key}");
        }
        let usd: f64 = lines
            .iter()
            .map(|l| l["cost_usd"]["by_model"][model].as_f64().unwrap_or(0.0))
            .sum();
        let got = summary["cost_usd"]["by_model"][model]
            .as_f64()
            .expect("priced");
        assert!(
            usd > 0.0 && (got - usd).abs() < 1e-9,
            "{model}: {got} vs {usd}"
        );
    }
    let total: f64 = lines
        .iter()
        .map(|l| l["cost_usd"]["total"].as_f64().unwrap_or(0.0))
        .sum();
    assert!((summary["cost_usd"]["total"].as_f64().unwrap_or(0.0) - total).abs() < 1e-9);
    let turns: u64 = lines
        .iter()
        .map(|l| l["iterations"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(summary["mean_turns"].as_f64(), Some(turns as f64 / 200.0));
    let mut walls: Vec<u64> = lines
        .iter()
        .map(|l| l["elapsed_ms"].as_u64().unwrap_or(0))
        .collect();
    walls.sort_unstable();
    assert_eq!(summary["wall_ms"]["p50"], walls[99]);
    assert_eq!(summary["wall_ms"]["p95"], walls[189]);

    // Run again: everything is there, nothing is asked.
    server.reset();
    let out = rlm(&args, None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.json()["skipped"], 200);
    assert_eq!(server.requests().len(), 0);
    assert_eq!(lines_len(&output), 200);
}

fn lines_len(path: &std::path::Path) -> usize {
    lines(path).len()
}

async fn a_batch_killed_mid_way_resumes_without_running_a_finished_job_again() {
    let dir = Scratch::new("batch-kill");
    dir.write("jobs.jsonl", jobs(60).as_bytes());
    // Sub-calls take a while: the batch is killed with jobs in flight.
    let server = mock(Duration::from_millis(100)).await;
    let (jobs, output) = (dir.path("jobs.jsonl"), dir.path("out.jsonl"));
    let url = server.base_url();
    let args = batch_args(
        &url,
        jobs.to_str().expect("utf-8"),
        output.to_str().expect("utf-8"),
        &["--max-runs", "4"],
    );
    let mut child = command(&args)
        .stdin(Stdio::null())
        .spawn()
        .expect("rlm starts");
    wait_for("ten lines", || lines_len(&output) >= 10).await;
    child.start_kill().expect("kill -9");
    let _ = child.wait().await;
    let before = lines(&output);
    let finished = ids_once(&before);
    assert!(finished.len() < 60, "killed before the end");
    // Killed while writing a line: its start is in the file, without a newline.
    let torn = &r#"{"id":"q59","answer":"WORD 59","stopped":"final","iterations":1"#;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&output)
        .and_then(|mut f| std::io::Write::write_all(&mut f, torn.as_bytes()))
        .expect("a torn line");

    server.reset();
    let out = rlm(&args, None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.contains("cut short"), "{}", out.stderr);
    let after = lines(&output);
    assert_eq!(ids_once(&after).len(), 60, "every job has exactly one line");
    // The jobs with a line were not asked again; the others were, once each.
    let again = asked(&server);
    assert_eq!(again.len(), 60 - finished.len());
    let again: HashSet<String> = again.into_iter().collect();
    assert_eq!(again.len(), 60 - finished.len());
    assert!(again.is_disjoint(&finished), "a finished job ran again");
    // The lines of the first process are kept as they were.
    assert_eq!(&after[..before.len()], &before[..]);
}

async fn sigterm_stops_the_jobs_in_flight_without_a_line_and_a_rerun_finishes() {
    let dir = Scratch::new("batch-term");
    dir.write("jobs.jsonl", jobs(40).as_bytes());
    let server = mock(Duration::from_millis(100)).await;
    let (jobs, output) = (dir.path("jobs.jsonl"), dir.path("out.jsonl"));
    let url = server.base_url();
    let args = batch_args(
        &url,
        jobs.to_str().expect("utf-8"),
        output.to_str().expect("utf-8"),
        &["--max-runs", "4", "--json"],
    );
    let child = command(&args)
        .stdin(Stdio::null())
        .spawn()
        .expect("rlm starts");
    let pid = child.id().expect("a pid").to_string();
    wait_for("three lines", || lines_len(&output) >= 3).await;
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill runs");
    assert!(sent.success());
    let out = tokio::time::timeout(Duration::from_secs(120), child.wait_with_output())
        .await
        .expect("safety bound")
        .expect("its output");
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("the summary on stdout");
    let first = lines(&output);
    let done = ids_once(&first);
    assert!(done.len() < 40, "stopped before the end");
    assert_eq!(summary["results"], done.len());
    assert_eq!(
        summary["interrupted"].as_u64().unwrap_or(0) + done.len() as u64,
        40,
        "{summary}"
    );
    // Stopped jobs got no line (no "cancelled" answers to skip next time).
    assert!(first.iter().all(|l| l["stopped"] == "final"), "{first:?}");
    let out = rlm(&args, None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(ids_once(&lines(&output)).len(), 40);
}

async fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "waited too long for {what} (safety bound)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bad_job_files_are_refused_before_anything_runs() {
    let dir = Scratch::new("batch-bad");
    let server = mock(Duration::ZERO).await;
    let url = server.base_url();
    let good = r#"{"id": "a", "query": "q"}"#;
    let cases = [
        (
            format!("{good}\n{good}\n"),
            "line 2: duplicate id \"a\" (first on line 1)",
        ),
        (
            format!("{good}\n\n{{\"id\": \"b\", \"query\": \n"),
            "line 3: not a JSON object",
        ),
        (
            format!("{good}\n{{\"id\": \"b\", \"query\": \"q\", \"contxt\": \"x\"}}\n"),
            "line 2: unknown key \"contxt\"",
        ),
        (
            "{\"id\": \"b\"}\n".to_owned(),
            "line 1: \"query\" is missing",
        ),
    ];
    for (text, why) in cases {
        dir.write("jobs.jsonl", text.as_bytes());
        let (jobs, output) = (dir.path("jobs.jsonl"), dir.path("out.jsonl"));
        let out = rlm(
            &batch_args(
                &url,
                jobs.to_str().expect("utf-8"),
                output.to_str().expect("utf-8"),
                &[],
            ),
            None,
        )
        .await;
        out.assert_clean_error(2);
        assert!(out.stderr.contains(why), "{why}: {}", out.stderr);
        assert!(!output.exists(), "nothing written");
    }
    // An output that cannot be written: exit 4 before anything is sent.
    dir.write("jobs.jsonl", format!("{good}\n").as_bytes());
    let jobs = dir.path("jobs.jsonl");
    for output in [dir.path("missing/dir/out.jsonl"), dir.0.clone()] {
        let out = rlm(
            &batch_args(
                &url,
                jobs.to_str().expect("utf-8"),
                output.to_str().expect("utf-8"),
                &[],
            ),
            None,
        )
        .await;
        out.assert_clean_error(4);
        assert!(out.stderr.contains("output"), "{}", out.stderr);
    }
    // A job file that is not there.
    let out = rlm(
        &batch_args(&url, "/nonexistent/jobs.jsonl", "/tmp/x.jsonl", &[]),
        None,
    )
    .await;
    out.assert_clean_error(4);
    assert_eq!(server.requests().len(), 0);
}

async fn bad_jobs_are_lines_with_errors_and_the_batch_goes_on() {
    let dir = Scratch::new("batch-errors");
    dir.write("ctx.txt", b"word 1");
    let ctx = dir.path("ctx.txt");
    let text = [
        json!({"id": "ok", "query": "question <ok>", "context_path": ctx}),
        json!({"id": "missing", "query": "q", "context_path": dir.path("nope.txt")}),
        json!({"id": "dir-as-json", "query": "q", "context_path": dir.0}),
        json!({"id": "unknown-model", "query": "q", "model": "no-such-model"}),
        json!({"id": "schema", "query": "question <schema>", "context": "word 2", "output_schema": {"type": "string"}}),
        json!({"id": "fails-late", "query": "q", "context": "word 3", "model": "two-turn"}),
        json!({"id": "schema-bad", "query": "q", "context": "word 4", "output_schema": {"type": "nope"}}),
    ]
    .iter()
    .map(|j| format!("{j}\n"))
    .collect::<String>();
    dir.write("jobs.jsonl", text.as_bytes());
    let replies = root_script();
    let server = MockServer::start(move |request: &ServerRequest| match request.model() {
        ROOT => scripted_turn(request, &replies),
        // A root model that spends a turn and a sub-call, then fails (no reply for turn 2).
        "two-turn" => scripted_turn(request, &[code("print(llm_query(context));")]),
        SUB => Reply::completion_for(request, upper(request.last_user())),
        _ => Reply::error(
            404,
            "invalid_request_error",
            "model_not_found",
            "no such model",
        ),
    })
    .await
    .expect("the mock server starts");
    let (jobs, output, traces) = (
        dir.path("jobs.jsonl"),
        dir.path("out.jsonl"),
        dir.path("traces"),
    );
    let url = server.base_url();
    let out = rlm(
        &batch_args(
            &url,
            jobs.to_str().expect("utf-8"),
            output.to_str().expect("utf-8"),
            &[
                "--json",
                "--trace-dir",
                traces.to_str().expect("utf-8"),
                "--score",
                "none",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let lines = lines(&output);
    let by_id: BTreeMap<String, Value> = lines
        .iter()
        .map(|l| (l["id"].as_str().unwrap_or("").to_owned(), l.clone()))
        .collect();
    assert_eq!(by_id.len(), 7);
    // A job that fails after spending keeps what it spent in its line.
    let late = &by_id["fails-late"];
    assert_eq!(late["error"]["kind"], "server", "{late}");
    assert_eq!(late["iterations"], 1, "{late}");
    assert_eq!(late["usage"]["two-turn"]["calls"], 1, "{late}");
    assert_eq!(late["usage"][SUB]["calls"], 1, "{late}");
    assert_eq!(late["sub_calls"], 1, "{late}");
    assert_eq!(by_id["ok"]["answer"], "WORD 1");
    assert_eq!(
        by_id["missing"]["error"]["kind"], "input",
        "{}",
        by_id["missing"]
    );
    assert!(
        by_id["missing"]["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nope.txt")
    );
    assert!(by_id["missing"]["answer"].is_null());
    assert_eq!(
        by_id["unknown-model"]["error"]["kind"], "server",
        "{}",
        by_id["unknown-model"]
    );
    // The job's schema is its run's output schema: the answer is the conforming JSON value
    // (a string here); a schema that is not one fails that job alone, naming it.
    assert_eq!(by_id["schema"]["answer"], "WORD 2");
    assert_eq!(by_id["schema"]["stopped"], "final", "{}", by_id["schema"]);
    let bad = &by_id["schema-bad"];
    assert_eq!(bad["error"]["kind"], "usage", "{bad}");
    assert!(bad["answer"].is_null(), "{bad}");
    assert!(
        lines.iter().all(|l| l.get("correct").is_none()),
        "--score none"
    );
    let summary = out.json();
    assert_eq!(
        summary["failed"],
        4 + u64::from(!by_id["dir-as-json"]["error"].is_null())
    );
    // One trace per job that ran, which `rlm view` opens.
    let trace = by_id["ok"]["trace"]
        .as_str()
        .expect("a trace path")
        .to_owned();
    assert!(trace.ends_with("ok.jsonl"), "{trace}");
    let html = dir.path("ok.html");
    let view = rlm(&["view", &trace, "-o", html.to_str().expect("utf-8")], None).await;
    assert_eq!(view.code, Some(0), "{view:#?}");
    assert!(
        std::fs::read_to_string(&html)
            .unwrap_or_default()
            .contains("WORD 1")
    );
    // The failed ones run again with --retry-failed, and keep one line each.
    server.reset();
    let out = rlm(
        &batch_args(
            &url,
            jobs.to_str().expect("utf-8"),
            output.to_str().expect("utf-8"),
            &["--retry-failed", "--json"],
        ),
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.json()["ran"], out.json()["failed"]);
    assert_eq!(ids_once(&self::lines(&output)).len(), 7);
}

async fn the_total_cost_budget_stops_the_batch() {
    let dir = Scratch::new("batch-total");
    dir.write("jobs.jsonl", jobs(50).as_bytes());
    dir.write("prices.json", PRICES.as_bytes());
    let server = mock(Duration::ZERO).await;
    let (jobs, output, prices) = (
        dir.path("jobs.jsonl"),
        dir.path("out.jsonl"),
        dir.path("prices.json"),
    );
    let url = server.base_url();
    // One job costs about $0.003 (1,400 prompt tokens at $1 a million, and its sub-call);
    // each call reserves its estimate first (its prompt and 1,000 completion tokens).
    let out = rlm(
        &batch_args(
            &url,
            jobs.to_str().expect("utf-8"),
            output.to_str().expect("utf-8"),
            &[
                "--max-runs",
                "2",
                "--json",
                "--prices",
                prices.to_str().expect("utf-8"),
                "--total-max-cost",
                "0.02",
            ],
        ),
        None,
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    let summary = out.json();
    let lines = lines(&output);
    assert!(!lines.is_empty() && lines.len() < 50, "{}", lines.len());
    assert_eq!(
        summary["not_started"].as_u64().unwrap_or(0) + lines.len() as u64,
        50
    );
    let refused: Vec<&Value> = lines.iter().filter(|l| !l["error"].is_null()).collect();
    for line in &refused {
        assert_eq!(line["error"]["kind"], "budget", "{line}");
        assert!(
            line["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("--total-max-cost")
        );
    }
    // A call is only sent once its estimate (above its real cost here) is reserved: the
    // jobs' lines add up to no more than the total.
    let total: f64 = lines
        .iter()
        .map(|l| l["cost_usd"]["total"].as_f64().unwrap_or(0.0))
        .sum();
    assert!(total <= 0.02, "the jobs' lines add up to ${total}");
}

// ---- The queue (Redis Streams) -------------------------------------------------------

/// One RESP command to the Redis at `port`: the raw reply, read until it stops.
fn redis_raw(port: u16, args: &[&str]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("Redis answers");
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    stream.write_all(command.as_bytes()).expect("a request");
    stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .expect("a read timeout");
    let mut reply = Vec::new();
    let mut chunk = [0u8; 4096];
    while let Ok(n) = stream.read(&mut chunk) {
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&reply).into_owned()
}

fn worker_args<'a>(base_url: &'a str, queue: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "worker",
        "--queue",
        queue,
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

/// The collector of a queued batch: `rlm batch` over `dir`'s `jobs.jsonl` with `--queue`,
/// `--json` and `extra`; and the path of its results file.
fn queue_collector(
    url: &str,
    dir: &Scratch,
    queue: &str,
    extra: &[&str],
) -> (tokio::process::Command, std::path::PathBuf) {
    let (jobs, output) = (dir.path("jobs.jsonl"), dir.path("out.jsonl"));
    let mut flags = vec!["--queue", queue, "--json"];
    flags.extend_from_slice(extra);
    let collector = command(&batch_args(
        url,
        jobs.to_str().expect("utf-8"),
        output.to_str().expect("utf-8"),
        &flags,
    ));
    (collector, output)
}

async fn three_workers_finish_the_jobs_of_one_killed_while_holding_them() {
    let redis = RedisServer::start().expect("redis-server starts");
    let dir = Scratch::new("queue-kill");
    dir.write("jobs.jsonl", jobs(40).as_bytes());
    // Sub-calls take a while, so a worker holds its jobs when it is killed.
    let server = mock(Duration::from_millis(200)).await;
    let url = server.base_url();
    let queue = redis.url();
    let pacing = [
        "--claim-idle",
        "1",
        "--max-runs",
        "3",
        "--rpm",
        "600",
        "--redis",
        &queue,
    ];
    let mut workers: Vec<_> = (0..3)
        .map(|_| {
            command(&worker_args(&url, &queue, &pacing))
                .stdin(Stdio::null())
                .spawn()
                .expect("a worker starts")
        })
        .collect();
    let (collector, output) = queue_collector(&url, &dir, &queue, &[]);
    let collecting = tokio::spawn(finish(collector, None));
    // Kill the first worker once it holds jobs (its consumer name carries its pid).
    let victim = workers[0].id().expect("a pid");
    let pending_key = "rlm:batch:default:jobs";
    let mark = format!("worker-{victim}-");
    wait_for("the first worker to hold jobs", || {
        redis_raw(redis.port(), &["XPENDING", pending_key, "workers"]).contains(&mark)
    })
    .await;
    workers[0].start_kill().expect("kill -9");
    let _ = workers[0].wait().await;
    let out = tokio::time::timeout(Duration::from_secs(300), collecting)
        .await
        .expect("safety bound")
        .expect("joined");
    assert_eq!(out.code, Some(0), "{out:#?}");
    let lines = lines(&output);
    assert_eq!(ids_once(&lines).len(), 40, "exactly one line per id");
    assert!(lines.iter().all(|l| l["error"].is_null()), "{lines:?}");
    let summary = out.json();
    assert_eq!(summary["answered"], 40);
    assert_eq!(
        summary["scored"], 40,
        "scored by the workers, --score exact"
    );
    let correct = lines.iter().filter(|l| l["correct"] == true).count();
    assert_eq!(summary["correct"], correct);
    // Its jobs were claimed by the others: every job was asked of the root, some twice (the
    // ones the killed worker held), and none is missing.
    let asked: HashSet<String> = asked(&server).into_iter().collect();
    assert_eq!(asked.len(), 40);
    // Across all workers, never more than --rpm 600 (a burst of 10, then 10 a second) per
    // model, on the shared books (each admission dated by Redis when it was decided).
    for model in [ROOT, SUB] {
        let admitted = admissions(&redis, &format!("rlm:pace:{model}:req"));
        assert!(admitted.iter().map(|(_, n)| n).sum::<u64>() >= 40);
        assert!(most_within(&admitted, 1_000_000) <= 20, "{model}");
        assert!(most_within(&admitted, 60_000_000) <= 600, "{model}");
    }
    for mut worker in workers.into_iter().skip(1) {
        let _ = worker.start_kill();
        let _ = worker.wait().await;
    }
    // The queue's keys are gone once the batch is complete.
    assert!(redis_raw(redis.port(), &["EXISTS", pending_key]).starts_with(":0"));
}

/// A worker started before any batch waits for one in a blocking read of the job stream,
/// which Redis ends when the collector adds the first jobs: it does not sleep between looks
/// (a sleeping worker started each new batch up to half a second late).
async fn an_idle_worker_waits_for_a_batch_in_a_blocking_read() {
    let redis = RedisServer::start().expect("redis-server starts");
    let dir = Scratch::new("queue-idle");
    dir.write("jobs.jsonl", jobs(3).as_bytes());
    let server = mock(Duration::ZERO).await;
    let url = server.base_url();
    let queue = redis.url();
    let mut worker = command(&worker_args(&url, &queue, &[]))
        .stdin(Stdio::null())
        .spawn()
        .expect("a worker starts");
    wait_for("the idle worker to block on the job stream", || {
        redis_raw(redis.port(), &["INFO", "clients"]).contains("blocked_clients:1")
    })
    .await;
    // And it takes the batch that comes.
    let (collector, output) = queue_collector(&url, &dir, &queue, &[]);
    let out = tokio::time::timeout(Duration::from_secs(120), finish(collector, None))
        .await
        .expect("safety bound");
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(ids_once(&lines(&output)).len(), 3);
    let _ = worker.start_kill();
    let _ = worker.wait().await;
}

async fn a_job_whose_workers_keep_dying_gets_an_attempts_error() {
    let redis = RedisServer::start().expect("redis-server starts");
    let dir = Scratch::new("queue-attempts");
    dir.write("jobs.jsonl", jobs(3).as_bytes());
    let server = mock(Duration::ZERO).await;
    let url = server.base_url();
    let queue = redis.url();
    let (collector, output) = queue_collector(&url, &dir, &queue, &["--max-attempts", "3"]);
    let collecting = tokio::spawn(finish(collector, None));
    let key = "rlm:batch:default:jobs";
    wait_for("the jobs to be queued", || {
        redis_raw(redis.port(), &["XLEN", key]).starts_with(":3")
    })
    .await;
    // A consumer takes the three jobs and (as if handed out again and again to workers that
    // died) has been given each of them five times.
    let read = redis_raw(
        redis.port(),
        &[
            "XREADGROUP",
            "GROUP",
            "workers",
            "dead",
            "COUNT",
            "10",
            "STREAMS",
            key,
            ">",
        ],
    );
    let ids: Vec<&str> = read
        .split("\r\n")
        .filter(|part| {
            part.split_once('-').is_some_and(|(a, b)| {
                !a.is_empty()
                    && a.chars().all(|c| c.is_ascii_digit())
                    && b.chars().all(|c| c.is_ascii_digit())
            })
        })
        .collect();
    assert_eq!(ids.len(), 3, "{read}");
    let mut claim = vec!["XCLAIM", key, "workers", "dead", "0"];
    claim.extend(&ids);
    claim.extend(["RETRYCOUNT", "5"]);
    redis_raw(redis.port(), &claim);
    // A live worker claims them once they are idle, and stores each with an error.
    let mut worker = command(&worker_args(&url, &queue, &["--claim-idle", "0.2"]))
        .stdin(Stdio::null())
        .spawn()
        .expect("a worker starts");
    let out = tokio::time::timeout(Duration::from_secs(300), collecting)
        .await
        .expect("safety bound")
        .expect("joined");
    let _ = worker.start_kill();
    let _ = worker.wait().await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let lines = lines(&output);
    assert_eq!(ids_once(&lines).len(), 3);
    for line in &lines {
        assert_eq!(line["error"]["kind"], "attempts", "{line}");
        assert!(
            line["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("--max-attempts 3"),
            "{line}"
        );
    }
    assert_eq!(asked(&server).len(), 0, "no job was run a sixth time");
    assert_eq!(out.json()["failed"], 3);
}

async fn a_batch_survives_redis_restarting_empty() {
    let mut redis = RedisServer::start().expect("redis-server starts");
    let dir = Scratch::new("queue-restart");
    dir.write("jobs.jsonl", jobs(30).as_bytes());
    let server = mock(Duration::from_millis(50)).await;
    let url = server.base_url();
    let queue = redis.url();
    let mut worker = command(&worker_args(
        &url,
        &queue,
        &["--max-runs", "2", "--claim-idle", "1"],
    ))
    .stdin(Stdio::null())
    .spawn()
    .expect("a worker starts");
    let (collector, output) = queue_collector(&url, &dir, &queue, &["--score", "none"]);
    let collecting = tokio::spawn(finish(collector, None));
    wait_for("five lines", || lines_len(&output) >= 5).await;
    redis.resume();
    let out = tokio::time::timeout(Duration::from_secs(300), collecting)
        .await
        .expect("safety bound")
        .expect("joined");
    assert_eq!(out.code, Some(0), "{out:#?}");
    let lines = lines(&output);
    assert_eq!(ids_once(&lines).len(), 30);
    // The worker scored as the collector asked: not at all.
    assert!(
        lines.iter().all(|l| l.get("correct").is_none()),
        "{lines:?}"
    );
    let _ = worker.start_kill();
    let _ = worker.wait().await;
}

async fn an_unreachable_queue_is_exit_5() {
    let dir = Scratch::new("queue-down");
    dir.write("jobs.jsonl", jobs(3).as_bytes());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a port");
    let queue = format!("redis://:secret-pw@127.0.0.1:{port}");
    let (jobs, output) = (dir.path("jobs.jsonl"), dir.path("out.jsonl"));
    let out = rlm(
        &batch_args(
            "http://127.0.0.1:9/v1",
            jobs.to_str().expect("utf-8"),
            output.to_str().expect("utf-8"),
            &["--queue", &queue],
        ),
        None,
    )
    .await;
    out.assert_clean_error(5);
    assert!(
        out.stderr.contains("unreachable") && out.stderr.contains(&format!("127.0.0.1:{port}")),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("secret-pw"));
    let out = rlm(&worker_args("http://127.0.0.1:9/v1", &queue, &[]), None).await;
    out.assert_clean_error(5);
    assert!(!out.stderr.contains("secret-pw") && !out.stderr.contains(KEY));
}

// ---- The library: memory holds max-runs jobs, whatever the file's length ---------------

async fn the_runner_pulls_jobs_only_as_runs_free_up() {
    use rlm_host::batch::{BatchConfig, JobRunner};
    use rlm_host::jobs::Job;
    let server = mock(Duration::from_millis(5)).await;
    let settings = rlm_host::Settings {
        base_url: server.base_url(),
        sub_model: Some(SUB.into()),
        max_retries: 0,
        ..rlm_host::Settings::new(ROOT)
    };
    let config = BatchConfig {
        max_runs: 4,
        ..BatchConfig::default()
    };
    let runner = Arc::new(JobRunner::build(&settings, config, None, None).expect("a runner"));
    let pulled = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let most_ahead = Arc::new(AtomicUsize::new(0));
    let jobs = {
        let (pulled, finished, most_ahead) = (pulled.clone(), finished.clone(), most_ahead.clone());
        (0..100).map(move |i| {
            let now = pulled.fetch_add(1, Ordering::SeqCst) + 1;
            most_ahead.fetch_max(now - finished.load(Ordering::SeqCst), Ordering::SeqCst);
            let mut job = Job::new(format!("q{i}"), format!("question <q{i}>"));
            job.context = Some(Value::from(format!("word {i}")));
            Ok(job)
        })
    };
    let mut results = Vec::new();
    let report = runner
        .run_all(
            jobs,
            |r| {
                finished.fetch_add(1, Ordering::SeqCst);
                results.push(r.id.clone());
                Ok(())
            },
            &rlm_host::CancellationToken::new(),
        )
        .await
        .expect("the batch runs");
    assert_eq!(report.ran, 100);
    assert_eq!(results.len(), 100);
    // Never more than max-runs jobs held (pulled and not yet handed to the sink), so a job
    // file of any size is held a few jobs at a time.
    assert!(
        most_ahead.load(Ordering::SeqCst) <= 4,
        "{}",
        most_ahead.load(Ordering::SeqCst)
    );
}

/// The entries of the Redis list `key` (the shared pacing books: `MICROS:COUNT`).
fn admissions(redis: &RedisServer, key: &str) -> Vec<(u64, u64)> {
    let raw = redis_raw(redis.port(), &["LRANGE", key, "0", "-1"]);
    raw.split("\r\n")
        .filter(|part| part.contains(':') && !part.starts_with('$') && !part.starts_with('*'))
        .map(|entry| {
            let (at, count) = entry.split_once(':').expect("MICROS:COUNT");
            let at: f64 = at.parse().expect("microseconds");
            let count: f64 = count.parse().expect("a count");
            (at as u64, count as u64)
        })
        .collect()
}

/// The most admissions within any window of `window` microseconds.
fn most_within(admitted: &[(u64, u64)], window: u64) -> u64 {
    let mut best = 0;
    for (i, (start, _)) in admitted.iter().enumerate() {
        let total: u64 = admitted[i..]
            .iter()
            .take_while(|(at, _)| at - start < window)
            .map(|(_, n)| n)
            .sum();
        best = best.max(total);
    }
    best
}

fn main() -> std::process::ExitCode {
    rlm_tests::harness::Suite::new()
        .tokio(
            "two_hundred_jobs_through_one_process",
            two_hundred_jobs_through_one_process,
        )
        .tokio(
            "a_batch_killed_mid_way_resumes_without_running_a_finished_job_again",
            a_batch_killed_mid_way_resumes_without_running_a_finished_job_again,
        )
        .tokio(
            "sigterm_stops_the_jobs_in_flight_without_a_line_and_a_rerun_finishes",
            sigterm_stops_the_jobs_in_flight_without_a_line_and_a_rerun_finishes,
        )
        .tokio(
            "bad_job_files_are_refused_before_anything_runs",
            bad_job_files_are_refused_before_anything_runs,
        )
        .tokio(
            "bad_jobs_are_lines_with_errors_and_the_batch_goes_on",
            bad_jobs_are_lines_with_errors_and_the_batch_goes_on,
        )
        .tokio(
            "the_total_cost_budget_stops_the_batch",
            the_total_cost_budget_stops_the_batch,
        )
        .tokio(
            "the_runner_pulls_jobs_only_as_runs_free_up",
            the_runner_pulls_jobs_only_as_runs_free_up,
        )
        .tokio(
            "an_unreachable_queue_is_exit_5",
            an_unreachable_queue_is_exit_5,
        )
        .needs("redis-server", rlm_tests::redis_server_binary().is_some())
        .tokio(
            "three_workers_finish_the_jobs_of_one_killed_while_holding_them",
            three_workers_finish_the_jobs_of_one_killed_while_holding_them,
        )
        .tokio(
            "an_idle_worker_waits_for_a_batch_in_a_blocking_read",
            an_idle_worker_waits_for_a_batch_in_a_blocking_read,
        )
        .tokio(
            "a_job_whose_workers_keep_dying_gets_an_attempts_error",
            a_job_whose_workers_keep_dying_gets_an_attempts_error,
        )
        .tokio(
            "a_batch_survives_redis_restarting_empty",
            a_batch_survives_redis_restarting_empty,
        )
        .run()
}
