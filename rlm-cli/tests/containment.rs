//! Containment, end to end: inputs that cannot exhaust memory, scripts that cannot hang a run
//! or abort it, and outputs that stay whole. The built `rlm` binary runs against the loopback
//! mock server; the memory cases run it under an address-space cap (`prlimit`, Linux), where
//! a script that used to abort the process now ends with an answer.

mod common;

use common::{Outcome, ROOT, code, command_for, finish, run_args};
use rlm_tests::{MockServer, rlm_handler};
use serde_json::Value;

/// `program args...` with a clean environment and `key` (default: the dummy key).
async fn spawn(
    program: &str,
    args: &[&str],
    key: Option<std::ffi::OsString>,
    stdin: Option<&[u8]>,
) -> Outcome {
    let mut command = command_for(program, args);
    if let Some(key) = key {
        command.env("OPENAI_API_KEY", key);
    }
    finish(command, stdin).await
}

async fn run(server: &MockServer, extra: &[&str], stdin: Option<&[u8]>) -> Outcome {
    let base_url = server.base_url();
    spawn(
        env!("CARGO_BIN_EXE_rlm"),
        &run_args(&base_url, extra),
        None,
        stdin,
    )
    .await
}

async fn server(replies: Vec<String>) -> MockServer {
    MockServer::start(rlm_handler(ROOT, replies, |p: &str| p.to_uppercase()))
        .await
        .expect("the mock server starts")
}

fn assert_input_error(out: &Outcome, mentions: &str) {
    assert_eq!(out.code, Some(4), "{out:#?}");
    assert!(out.stdout.is_empty(), "{out:#?}");
    assert!(out.stderr.starts_with("error: "), "{out:#?}");
    assert!(out.stderr.contains(mentions), "{out:#?}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_input_is_read_within_max_context_bytes() {
    let server = server(vec!["FINAL(x)".to_owned()]).await;
    // Before: each of these was read until an allocation failed.
    let bound = ["--max-context-bytes", "1M"];
    let cases: [&[&str]; 3] = [
        &["--query", "q", "--context", "/dev/zero"],
        &["--query-file", "/dev/zero"],
        &["--query", "q", "--system-prompt-file", "/dev/urandom"],
    ];
    for flags in cases {
        let mut extra = flags.to_vec();
        extra.extend_from_slice(&bound);
        let out = run(&server, &extra, None).await;
        assert_input_error(&out, "--max-context-bytes");
    }
    let big = vec![b'x'; 2 << 20];
    let out = run(
        &server,
        &[
            "--query",
            "q",
            "--context",
            "-",
            "--max-context-bytes",
            "1M",
        ],
        Some(&big),
    )
    .await;
    assert_input_error(&out, "stdin");
    let out = run(
        &server,
        &["--query", "-", "--max-context-bytes", "1M"],
        Some(&big),
    )
    .await;
    assert_input_error(&out, "stdin");
    assert!(server.requests().is_empty(), "nothing was sent");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_that_cannot_be_written_is_exit_4_after_the_answer() {
    let server = server(vec!["FINAL(the answer)".to_owned()]).await;
    // Before: exit 0 with a warning, though the README says exit 4.
    let out = run(&server, &["--query", "q", "--trace", "/dev/full"], None).await;
    assert_eq!(out.code, Some(4), "{out:#?}");
    assert_eq!(out.stdout, "the answer\n");
    assert!(
        out.stderr
            .contains("error: the trace file /dev/full is incomplete"),
        "{out:#?}"
    );
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_that_is_not_utf8_is_reported_as_such() {
    use std::os::unix::ffi::OsStringExt;
    let server = server(vec!["FINAL(x)".to_owned()]).await;
    let base_url = server.base_url();
    let key = std::ffi::OsString::from_vec(b"sk-\xff\xfe-bad".to_vec());
    let out = spawn(
        env!("CARGO_BIN_EXE_rlm"),
        &run_args(&base_url, &["--query", "q"]),
        Some(key),
        None,
    )
    .await;
    // Before: treated as unset (and a local server was called without a key).
    assert_eq!(out.code, Some(6), "{out:#?}");
    assert!(out.stderr.contains("not valid UTF-8"), "{out:#?}");
    assert!(server.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tpm_smaller_than_one_request_is_announced_at_once() {
    let server = server(vec!["FINAL(x)".to_owned()]).await;
    // Before: the first call waited about 21 hours without a word.
    let out = run(
        &server,
        &["--query", "q", "--tpm", "1", "--max-time", "1"],
        None,
    )
    .await;
    assert!(
        out.stderr.contains("--tpm 1 is smaller than one request"),
        "{out:#?}"
    );
    assert!(out.stderr.contains("will wait about"), "{out:#?}");
    assert_eq!(out.code, Some(3), "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sub_calls_are_counted() {
    let server = server(vec![code(
        r#"let r = llm_batch(["a", "b", "c", "d", "e"]); FINAL(r[0]);"#,
    )])
    .await;
    let out = run(
        &server,
        &["--query", "q", "--max-sub-calls", "2", "--json", "--quiet"],
        None,
    )
    .await;
    let json: Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    // Before: the three refused items were counted nowhere.
    assert_eq!(json["refused_sub_calls"], 3, "{out:#?}");
    assert_eq!(json["sub_calls"], 2, "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_block_is_stopped_and_the_run_goes_on() {
    let server = server(vec![code("sleep(100000);"), "FINAL(woke up)".to_owned()]).await;
    // Before: the run hung until Ctrl-C, whatever the budgets.
    let out = run(&server, &["--query", "q", "--block-timeout", "0.5"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "woke up\n");
    let out = run(&server, &["--query", "q", "--max-time", "1"], None).await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    assert!(!out.stderr.contains("panicked"), "{out:#?}");
}

/// Runs `rlm` under `prlimit --as=BYTES` (an address-space cap: allocations past it fail and
/// abort the process); `None` where prlimit is missing.
async fn capped(server: &MockServer, cap: &str, extra: &[&str]) -> Option<Outcome> {
    let prlimit = ["/usr/bin/prlimit", "/bin/prlimit"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())?;
    let base_url = server.base_url();
    let limit = format!("--as={cap}");
    let mut args = vec![limit.as_str(), env!("CARGO_BIN_EXE_rlm")];
    args.extend(run_args(&base_url, extra));
    Some(spawn(prlimit, &args, None, None).await)
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_that_used_to_abort_a_capped_process_end_with_an_answer() {
    const CAP: &str = "2147483648"; // 2 GiB of address space
    let cases = [
        // 80 variables of 32 MB in one block (before: about 2.6 GB, an abort).
        "let s = \"\"; s.pad(32000000, \"x\"); let all = []; \
         for i in 0..80 { all.push(s + i); } print(all.len());",
        // A map grown by index assignment (before: past every limit).
        "let m = #{}; let i = 0; loop { m[`key number ${i}`] = i; i += 1; }",
        // A big string split into characters (before: gigabytes built before any check).
        "let s = \"\"; s.pad(64000000, \"ab\"); let c = s.split(\"\"); print(c.len());",
        // One big variable kept per block, many blocks (before: growth without bound).
        "let s = \"\"; s.pad(200000000, \"x\"); let keep1 = s + \"1\"; let keep2 = s + \"2\"; \
         let keep3 = s + \"3\"; let keep4 = s + \"4\"; let keep5 = s + \"5\"; \
         let keep6 = s + \"6\"; let keep7 = s + \"7\"; let keep8 = s + \"8\";",
    ];
    for script in cases {
        let server = server(vec![code(script), "FINAL(still here)".to_owned()]).await;
        let trace = std::env::temp_dir().join(format!(
            "rlm-containment-{}-{}.jsonl",
            std::process::id(),
            script.len()
        ));
        let trace_path = trace.to_str().unwrap_or_default().to_owned();
        let Some(out) = capped(
            &server,
            CAP,
            // Memory and sizes are under test, not time: the block time limit is out of the
            // way, so a slow or loaded machine cannot stop these loops first.
            &[
                "--query",
                "q",
                "--max-memory",
                "256M",
                "--block-timeout",
                "3600",
                "--trace",
                &trace_path,
            ],
        )
        .await
        else {
            println!("prlimit is missing: skipped");
            return;
        };
        let events = std::fs::read_to_string(&trace).unwrap_or_default();
        let _ = std::fs::remove_file(&trace);
        assert_eq!(out.code, Some(0), "{script}: {out:#?}");
        assert_eq!(out.stdout, "still here\n", "{script}");
        // The model saw an error about memory or sizes, and the trace is whole.
        let shown: Vec<Value> = events
            .lines()
            .map(|l| serde_json::from_str(l).expect("whole JSON lines"))
            .collect();
        let block = shown
            .iter()
            .find(|e| e["event"] == "code_block")
            .map(|e| e["output"].as_str().unwrap_or_default().to_owned())
            .unwrap_or_default();
        assert!(
            block.contains("memory") || block.contains("too large"),
            "{script}: {block}"
        );
    }
}

/// Runs `script` as the root model's one block (then `FINAL(done)`) with `extra` flags; the
/// outcome and the block's output (printed lines, then its error) as the trace shows it.
async fn block_output(script: &str, extra: &[&str], name: &str) -> (Outcome, String) {
    let server = server(vec![code(script), "FINAL(done)".to_owned()]).await;
    let trace = std::env::temp_dir().join(format!(
        "rlm-containment-{name}-{}.jsonl",
        std::process::id()
    ));
    let trace_path = trace.to_str().unwrap_or_default().to_owned();
    let mut args = vec!["--query", "q", "--trace", trace_path.as_str()];
    args.extend_from_slice(extra);
    let out = run(&server, &args, None).await;
    let events = std::fs::read_to_string(&trace).unwrap_or_default();
    let _ = std::fs::remove_file(&trace);
    let block = events
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "code_block")
        .map(|e| e["output"].as_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    (out, block)
}

/// `--max-memory` holds both ways when memory crosses threads, in the binary (its counting
/// allocator, its runtime, its cache). The mock's sub-model answers each prompt uppercased.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_budget_holds_both_ways_across_sub_calls() {
    let budget = ["--max-memory", "64M", "--block-timeout", "3600"];
    // Answers received and dropped (cached after the first): before, their bytes were taken
    // off the block's growth when the script freed them, and the block could then grow past
    // its budget unstopped (here: to 150 MB against 64 MB).
    // Each step of the growth pauses for the watchdog's look (10 ms), on a loaded machine too.
    let (out, block) = block_output(
        "let line = \"\"; line.pad(1000000, \"x\"); \
         for r in 0..300 { let a = llm_query(line); } \
         let s = \"\"; for i in 0..150 { s += line; sleep(0.01); } print(`grew to ${s.len()}`);",
        &budget,
        "answers",
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(block.contains("memory budget"), "{block}");
    assert!(!block.contains("grew to 150000000"), "{block}");

    // Rounds of large prompts, each round's dropped while the cache keeps them: before,
    // the block stayed charged with every prompt it had sent, and was stopped after a few
    // rounds holding about 1 MB.
    let (out, block) = block_output(
        "let big = \"\"; big.pad(200000, \"x\"); let refused = 0; \
         for r in 0..20 { let ps = []; for i in 0..50 { ps.push(big + \" \" + r + \" \" + i) } \
         refused += llm_batch(ps).filter(|a| a.starts_with(\"Error:\")).len(); } \
         print(`rounds done, ${refused} refused`);",
        &budget,
        "prompts",
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(block.contains("rounds done, 0 refused"), "{block}");
    assert!(!block.contains("memory budget"), "{block}");
}
