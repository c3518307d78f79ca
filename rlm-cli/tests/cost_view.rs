//! `--max-cost`, `--prices`, `cost_usd` and `rlm view`, end to end: the built `rlm` binary
//! against the loopback mock server.

mod common;

use std::path::PathBuf;

use common::{ROOT, SUB, code, rlm, run, upper};

use rlm_tests::{MockServer, rlm_handler};
use serde_json::Value;

async fn server(replies: Vec<String>) -> MockServer {
    MockServer::start(rlm_handler(ROOT, replies, upper))
        .await
        .expect("the mock server starts")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rlm-cli-cost-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn path_str(path: &std::path::Path) -> &str {
    path.to_str().expect("utf-8 temp path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cost_budget_refuses_sub_calls_and_stops_with_status_3() {
    let dir = scratch("budget");
    let prices = dir.join("prices.json");
    // $1,000 per million tokens: each sub-call is estimated at about $1.005 (a few prompt
    // tokens and 1,000 completion tokens), so three fit in $3.20 and the rest are refused.
    // The root model is free (a budget needs a price for every model of the run).
    std::fs::write(
        &prices,
        format!(
            r#"{{"{SUB}": {{"input": 1000, "output": 1000}}, "{ROOT}": {{"input": 0, "output": 0}}}}"#
        ),
    )
    .expect("write prices");
    let server = server(vec![
        code(r#"let r = llm_batch(["a", "b", "c", "d", "e"]); print(r);"#),
        "FINAL(what I have)".to_owned(),
    ])
    .await;
    let out = run(
        &server,
        &[
            "--query",
            "q",
            "--json",
            "--prices",
            path_str(&prices),
            "--max-cost",
            "3.2",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["stopped"], "max_cost");
    assert_eq!(json["answer"], "what I have");
    assert_eq!(json["sub_calls"], 3);
    let sub_requests = server
        .requests()
        .into_iter()
        .filter(|r| r.model() == SUB)
        .count();
    assert_eq!(sub_requests, 3, "refused calls never reach the server");
    let cost = &json["cost_usd"];
    let usage = &json["usage"][SUB];
    let tokens = usage["prompt_tokens"].as_u64().unwrap_or(0)
        + usage["completion_tokens"].as_u64().unwrap_or(0);
    let expected = tokens as f64 * 1e-3;
    assert!(
        (cost["by_model"][SUB].as_f64().unwrap_or(-1.0) - expected).abs() < 1e-6,
        "{cost}"
    );
    assert!(
        (cost["total"].as_f64().unwrap_or(-1.0) - expected).abs() < 1e-6,
        "{cost}"
    );
    assert_eq!(cost["unpriced"], serde_json::json!([]));
    // The stderr summary has the cost too.
    assert!(out.stderr.contains("cost: $"), "{}", out.stderr);
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_budget_with_a_model_without_a_price_is_refused_at_start() {
    let dir = scratch("unpriced");
    let prices = dir.join("prices.json");
    std::fs::write(
        &prices,
        format!(r#"{{"{SUB}": {{"input": 1000, "output": 1000}}}}"#),
    )
    .expect("write prices");
    let server = server(vec![
        code(r#"let r = llm_batch(["a", "b"]); print(r);"#),
        "FINAL(done)".to_owned(),
    ])
    .await;
    // The sub model has a price, the root model none: its turns would count as free.
    let out = run(
        &server,
        &[
            "--query",
            "q",
            "--prices",
            path_str(&prices),
            "--max-cost",
            "3",
        ],
        None,
    )
    .await;
    out.assert_clean_error(2);
    assert!(out.stderr.contains(&format!("{ROOT:?}")), "{out:#?}");
    assert!(out.stderr.contains("--prices"), "{out:#?}");
    assert!(!out.stderr.contains(&format!("{SUB:?}")), "{out:#?}");
    // No price file at all: both are named; the child model (here the sub model) counts too.
    let out = run(
        &server,
        &["--query", "q", "--max-cost", "3", "--json"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    let json = out.json();
    assert_eq!(json["error"]["kind"], "usage", "{json}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("{ROOT:?}")) && message.contains(&format!("{SUB:?}")),
        "{json}"
    );
    let out = run(
        &server,
        &[
            "--query",
            "q",
            "--prices",
            path_str(&prices),
            "--max-cost",
            "3",
            "--child-model",
            "child-model",
        ],
        None,
    )
    .await;
    out.assert_clean_error(2);
    assert!(out.stderr.contains("\"child-model\""), "{out:#?}");
    assert!(server.requests().is_empty(), "nothing was sent");

    // Without a budget the same run goes on and says which models had no price.
    let out = run(&server, &["--query", "q", "--json"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(
        out.json()["cost_usd"]["unpriced"],
        serde_json::json!([ROOT, SUB])
    );
    assert!(
        out.stderr.contains("no price for root-model"),
        "{}",
        out.stderr
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cost_flags_are_clean_errors() {
    let out = rlm(
        &["run", "--query", "q", "--model", "m", "--max-cost", "-1"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:#?}");
    let out = rlm(
        &[
            "run",
            "--query",
            "q",
            "--model",
            "m",
            "--base-url",
            "http://127.0.0.1:9",
            "--prices",
            "/nonexistent/prices.toml",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(4), "{out:#?}");
    assert!(
        out.stderr.starts_with("error: cannot read the prices file"),
        "{out:#?}"
    );
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trace_has_its_cost_and_becomes_a_page() {
    let dir = scratch("view");
    let trace = dir.join("run.jsonl");
    let prices = dir.join("prices.toml");
    std::fs::write(
        &prices,
        format!("[\"{ROOT}\"]\ninput = 2.0\noutput = 8.0\n[\"{SUB}\"]\ninput = 0.5\ncached_input = 0.1\noutput = 1.0\n"),
    )
    .expect("write prices");
    let server = server(vec![
        code(r#"let r = llm_batch(["x", "y", "z"]); print(r);"#),
        "FINAL(done)".to_owned(),
    ])
    .await;
    let out = run(
        &server,
        &[
            "--query",
            "trace me",
            "--trace",
            path_str(&trace),
            "--prices",
            path_str(&prices),
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert!(
        json["cost_usd"]["total"].as_f64().unwrap_or(0.0) > 0.0,
        "{json}"
    );
    assert_eq!(json["cost_usd"]["unpriced"], serde_json::json!([]));
    let text = std::fs::read_to_string(&trace).expect("trace");
    let last: Value = serde_json::from_str(text.lines().last().unwrap_or("")).expect("JSON line");
    assert_eq!(last["event"], "final");
    assert!(
        last["cost_usd"]["by_model"][SUB].as_f64().unwrap_or(0.0) > 0.0,
        "{last}"
    );

    // The page, beside the trace by default; its path on stdout.
    let out = rlm(&["view", path_str(&trace)], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let page = dir.join("run.html");
    assert_eq!(out.stdout.trim(), path_str(&page));
    let html = std::fs::read_to_string(&page).expect("the page");
    assert!(html.starts_with("<!DOCTYPE html>"));
    assert!(html.contains("trace me"));
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no network loads"
    );

    // A trace cut mid-line still renders, with a notice; -o names the page.
    let cut = dir.join("cut.jsonl");
    std::fs::write(&cut, &text[..text.len() - 20]).expect("write cut trace");
    let other = dir.join("other.html");
    let out = rlm(&["view", path_str(&cut), "-o", path_str(&other)], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert!(out.stderr.contains("cut short"), "{out:#?}");
    assert!(other.is_file());

    // Not a trace: a clean input error.
    let junk = dir.join("junk.jsonl");
    std::fs::write(&junk, "hello\n").expect("write");
    let out = rlm(&["view", path_str(&junk)], None).await;
    assert_eq!(out.code, Some(4), "{out:#?}");
    assert!(
        out.stderr.starts_with("error: ") && out.stderr.contains("no trace events"),
        "{out:#?}"
    );
    let out = rlm(&["view", path_str(&dir.join("missing.jsonl"))], None).await;
    assert_eq!(out.code, Some(4), "{out:#?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_budget_spent_mid_batch_says_so_even_with_an_answer() {
    let dir = scratch("mid-batch");
    let prices = dir.join("prices.json");
    // Each sub-call is estimated at about $1.005: 22 fit in $22.50; the root is free.
    std::fs::write(
        &prices,
        format!(
            r#"{{"{SUB}": {{"input": 1000, "output": 1000}}, "{ROOT}": {{"input": 0, "output": 0}}}}"#
        ),
    )
    .expect("write prices");
    // The answer comes from the block whose batch the budget cut.
    let server = server(vec![code(
        r#"let r = llm_batch(range(212).map(|i| `p${i}`)); FINAL(r.len());"#,
    )])
    .await;
    let out = run(
        &server,
        &[
            "--query",
            "q",
            "--json",
            "--prices",
            path_str(&prices),
            "--max-cost",
            "22.5",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    let json: Value = serde_json::from_str(&out.stdout).expect("JSON");
    assert_eq!(json["stopped"], "max_cost", "{json}");
    assert_eq!(json["answer"], "212", "{json}");
    let sent = server
        .requests()
        .into_iter()
        .filter(|r| r.model() == SUB)
        .count() as u64;
    assert_eq!(json["sub_calls"], sent, "{json}");
    assert_eq!(json["refused_sub_calls"], 212 - sent, "{json}");
    assert!(sent <= 22, "{sent}");
    let warnings = json["warnings"].to_string();
    assert!(warnings.contains("budget refused"), "{warnings}");
    let _ = std::fs::remove_dir_all(dir);
}
