//! The RLM loop with scripted mock models: answers, budgets, cancellation, malformed replies,
//! events and runtimes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{BuildOk, Events, builder, fence, needle_finder, run_ok, seen};
use rlm_core::mock::MockBackend;
use rlm_core::{CancellationToken, LlmError};
use rlm_repl::{Context, Event, RlmError, StopReason};
use rlm_tests::fixtures::haystack;

const SEARCH: &str = r#"let chunks = chunk(context, 100000);
let prompts = chunks.map(|c| "Find the secret number. Answer NONE if it is not here.\n\n" + c);
let answers = llm_batch(prompts);
let found = answers.filter(|a| a != "NONE");
print(`${chunks.len()} chunks, found: ${found}`);"#;

fn needle_context() -> Context {
    Context::from(haystack(20_000, 13_579, "the secret number is 4217", 11))
}

#[tokio::test]
async fn finds_the_needle_with_llm_batch_and_final_in_code() {
    let root = MockBackend::scripted([fence(SEARCH), fence("FINAL(found[0]);")]);
    let sub = needle_finder();
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "What is the secret number?", needle_context()).await;
    assert_eq!(result.answer, "4217");
    assert_eq!(result.stopped, StopReason::Final);
    assert_eq!(result.iterations, 2);
    let chunks = 20_000 * 81 / 100_000 + 1;
    assert_eq!(result.sub_calls, chunks as u64);
    assert_eq!(sub.calls(), chunks);
    // The root saw the printed findings.
    assert!(seen(&root, 1).contains(&format!("{chunks} chunks, found: [\"4217\"]")));
    // Usage of both models, and the trajectory's sub-call records.
    assert_eq!(result.usage["root"].calls, 2);
    assert_eq!(result.usage["sub"].calls, chunks as u64);
    let records = &result.trajectory[0].sub_calls;
    assert_eq!(records.len(), chunks);
    let mut ids: Vec<u64> = records.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=chunks as u64).collect::<Vec<_>>());
    assert!(
        records
            .iter()
            .all(|r| r.ok && r.batch == Some(1) && r.usage.total() > 0)
    );
    assert_eq!(result.trajectory[0].blocks.len(), 1);
    assert!(result.trajectory[1].sub_calls.is_empty());
    // The context never reached the root model.
    assert!(root.requests().iter().all(|r| r.prompt_chars() < 20_000));
}

#[tokio::test]
async fn final_var_in_text_after_the_code_runs_and_variables_persist() {
    let root = MockBackend::scripted([
        fence("let base = 40;\nfn add(a, b) { a + b }"),
        format!(
            "{}\nThe answer is ready.\nFINAL_VAR(answer)",
            fence("let answer = llm_query(`add: ${add(base, 2)}`);")
        ),
    ]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "echo: add: 42");
    assert_eq!(result.stopped, StopReason::Final);
    assert_eq!(result.iterations, 2);
}

#[tokio::test]
async fn final_var_of_an_unknown_variable_is_an_error_the_model_sees() {
    let root =
        MockBackend::scripted(["FINAL_VAR(nothing_here)".to_owned(), "FINAL(ok)".to_owned()]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "ok");
    assert_eq!(result.iterations, 2);
    assert!(seen(&root, 1).contains("no variable named `nothing_here`"));
}

#[tokio::test]
async fn batch_concurrency_order_and_failures() {
    let code = r#"let prompts = range(24).map(|i| `p${i}`);
let a = llm_batch(prompts);
let b = llm_batch(prompts, 3);
print(a == b);
print(a[0]); print(a[5]); print(a[23]);
FINAL(a.len());"#;
    let root = MockBackend::scripted([fence(code)]);
    let sub = MockBackend::echo()
        .with_latency(Duration::from_millis(20))
        .fail_when(
            |r| r.last_user_message() == Some("p5"),
            LlmError::other("boom"),
        );
    let events = Arc::new(Events::default());
    let rlm = builder(&root, &sub)
        .max_concurrent(4)
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "24");
    let output = &result.trajectory[0].blocks[0].output;
    assert_eq!(output, "true\necho: p0\nError: boom\necho: p23\n");
    // The peak over both batches is the larger limit; each batch's own limit is checked
    // through the events below.
    assert_eq!(sub.peak_in_flight(), 4);
    let starts: Vec<usize> = events
        .all()
        .iter()
        .filter_map(|e| match e {
            Event::BatchStart {
                max_concurrent,
                total,
                ..
            } => {
                assert_eq!(*total, 24);
                Some(*max_concurrent)
            }
            _ => None,
        })
        .collect();
    assert_eq!(starts, [4, 3]);
    // In flight at most `max_concurrent` per batch, measured from the events.
    for (batch, limit) in [(1, 4), (2, 3)] {
        let mut in_flight = 0i64;
        let mut peak = 0;
        for event in events.all() {
            match event {
                Event::SubCallStart { batch: Some(b), .. } if b == batch => in_flight += 1,
                Event::SubCallEnd { batch: Some(b), .. } if b == batch => in_flight -= 1,
                _ => {}
            }
            peak = peak.max(in_flight);
        }
        assert_eq!(peak, limit, "batch {batch}");
    }
    let failed: Vec<_> = result.trajectory[0]
        .sub_calls
        .iter()
        .filter(|r| !r.ok)
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().all(|r| r.index == Some(5)));
}

#[tokio::test]
async fn default_concurrency_comes_from_the_config() {
    let root = MockBackend::scripted([fence(
        "let a = llm_batch(range(40).map(|i| `q${i}`)); FINAL(a[39]);",
    )]);
    let sub = MockBackend::echo().with_latency(Duration::from_millis(20));
    let rlm = builder(&root, &sub).max_concurrent(5).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "echo: q39");
    assert_eq!(sub.peak_in_flight(), 5);
}

#[tokio::test]
async fn max_iterations_asks_for_the_best_answer_once() {
    let root = MockBackend::from_fn(|request| {
        let last = request.last_user_message().unwrap_or_default();
        Ok(if last.contains("No more code will run") {
            "My best guess.\nFINAL(best guess)".to_owned()
        } else {
            fence("print(\"still looking\");")
        })
    });
    let rlm = builder(&root, &MockBackend::echo())
        .max_iterations(3)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxIterations);
    assert_eq!(result.answer, "best guess");
    assert_eq!(root.calls(), 4);
    assert_eq!(result.iterations, 4);
    let ask = seen(&root, 3);
    assert!(ask.starts_with("Output:\nstill looking"), "{ask}");
    assert!(ask.contains("You have used all your turns."));
    assert!(seen(&root, 1).contains("2 turns left"));
}

#[tokio::test]
async fn a_final_answer_written_as_code_counts_when_the_turns_run_out() {
    // Asked for its best answer, the model writes FINAL in a code block out of habit.
    let root = MockBackend::from_fn(|request| {
        let last = request.last_user_message().unwrap_or_default();
        Ok(if last.contains("No more code will run") {
            format!("Here it is.\n{}", fence("FINAL_VAR(\"best\")"))
        } else {
            fence("let best = \"forty-two\";")
        })
    });
    let rlm = builder(&root, &MockBackend::echo())
        .max_iterations(1)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxIterations);
    assert_eq!(result.answer, "forty-two");
    assert_eq!(result.iterations, 2);
    assert_eq!(result.trajectory[1].blocks.len(), 1);
}

#[tokio::test]
async fn the_sub_call_budget_stops_the_run_after_the_block() {
    let root = MockBackend::scripted([
        fence("let a = llm_batch([\"1\", \"2\", \"3\", \"4\", \"5\"]);\nprint(a);"),
        "FINAL(with what I have)".to_owned(),
    ]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub).max_sub_calls(3).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxSubCalls);
    assert_eq!(result.answer, "with what I have");
    assert_eq!(sub.calls(), 3);
    assert_eq!(result.sub_calls, 3);
    let ask = seen(&root, 1);
    assert_eq!(
        ask.matches("budget exhausted: the sub-call budget").count(),
        2,
        "{ask}"
    );
    assert!(ask.contains("echo: 3"));
    assert!(ask.contains("The sub-call budget of this run is spent."));
}

#[tokio::test]
async fn the_token_budget_stops_sub_calls_and_the_run() {
    let root = MockBackend::scripted([
        fence("let a = llm_batch(range(20).map(|i| `prompt ${i}`), 1);\nprint(a);"),
        fence("print(\"never runs\");"),
    ]);
    let sub = MockBackend::from_fn(|_| Ok("x".repeat(400)));
    let rlm = builder(&root, &sub).max_total_tokens(3_000).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxTokens);
    assert_eq!(result.iterations, 1);
    assert!(sub.calls() < 20, "sub-calls stopped early: {}", sub.calls());
    let output = &result.trajectory[0].blocks[0].output;
    assert!(
        output.contains("budget exhausted: the token budget"),
        "{output}"
    );
    let total: u64 = result.usage.values().map(|u| u.total_tokens()).sum();
    assert!(total >= 3_000);
}

#[tokio::test]
async fn the_time_budget_cancels_calls_in_flight() {
    let root = MockBackend::scripted([fence("let a = llm_batch([\"slow\", \"slower\"]);")]);
    // An hour per call: the test only finishes if the calls are dropped.
    let sub = MockBackend::echo().with_latency(Duration::from_secs(3600));
    let rlm = builder(&root, &sub)
        .max_time(Duration::from_millis(200))
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxTime);
    assert_eq!(result.answer, "");
    assert_eq!(sub.in_flight(), 0);
    // Cut short, not failed.
    assert_eq!(result.cancelled_sub_calls, 2);
    assert_eq!(result.failed_sub_calls, 0);
}

#[tokio::test]
async fn cancellation_stops_sub_calls_and_running_code() {
    // Cancelled while sub-calls are in flight.
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    // The script would make its cancelled call's error string the answer: that is not final.
    let root = MockBackend::scripted([fence("let r = llm_query(\"wait\"); FINAL(r);")]);
    let sub = MockBackend::echo().with_latency(Duration::from_secs(3600));
    let rlm = builder(&root, &sub)
        .cancel_token(cancel)
        .observer(Arc::new(move |event: &Event| {
            if matches!(event, Event::SubCallStart { .. }) {
                trigger.cancel();
            }
        }))
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::Cancelled);
    assert_eq!(sub.in_flight(), 0);
    assert_eq!(result.cancelled_sub_calls, 1);
    assert_eq!(result.failed_sub_calls, 0);

    // Cancelled while a block loops forever (no operation limit, no block timeout).
    let cancel = CancellationToken::new();
    let root = MockBackend::scripted([fence("let n = 0; loop { n += 1; }")]);
    let rlm = builder(&root, &MockBackend::echo())
        .sandbox(rlm_repl::SandboxLimits {
            max_operations: 0,
            block_timeout: Duration::from_secs(3600),
            ..Default::default()
        })
        .cancel_token(cancel.clone())
        .build_ok();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    canceller.await.unwrap_or_default();
    assert_eq!(result.stopped, StopReason::Cancelled);
    assert!(
        result.trajectory[0].blocks[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("cancelled"))
    );
}

#[tokio::test]
async fn sub_calls_after_a_cancel_are_neither_counted_nor_reported() {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let root = MockBackend::scripted([fence(
        "let a = llm_query(\"1\"); let b = llm_query(\"2\"); let c = llm_batch([\"3\", \"4\"]); \
         print(b);",
    )]);
    let sub = MockBackend::echo().with_latency(Duration::from_secs(3600));
    let events = Arc::new(Events::default());
    let rlm = builder(&root, &sub)
        .cancel_token(cancel)
        .observer(events.clone())
        .observer(Arc::new(move |event: &Event| {
            if matches!(event, Event::SubCallStart { .. }) {
                trigger.cancel();
            }
        }))
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::Cancelled);
    // Only the first call was sent; the script went on for a few operations, but what it
    // asked for after the cancel never left.
    assert_eq!(result.sub_calls, 1);
    let starts = events
        .all()
        .iter()
        .filter(|e| matches!(e, Event::SubCallStart { .. }))
        .count();
    assert_eq!(starts, 1);
    // Either the script saw the refusal, or the watchdog stopped it first.
    assert!(
        result.trajectory[0].blocks[0].output.contains("cancelled"),
        "{:?}",
        result.trajectory[0].blocks
    );
}

#[tokio::test]
async fn malformed_replies_get_a_nudge_and_the_loop_goes_on() {
    let root = MockBackend::scripted([
        "".to_owned(),
        "Let me think about how to approach this.".to_owned(),
        "```repl\nprint(1);\n".to_owned(),
        "```python\nprint(len(context))\n```".to_owned(),
        "```\nprint(\"untagged runs\");\n```".to_owned(),
        "FINAL(done)".to_owned(),
    ]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "done");
    assert_eq!(result.iterations, 6);
    assert!(seen(&root, 1).contains("Your reply was empty: its content was empty"));
    assert!(seen(&root, 2).contains("no ```repl code block and no FINAL"));
    assert!(seen(&root, 3).contains("was not closed"));
    assert!(seen(&root, 4).contains("```python block did not run"));
    assert_eq!(seen(&root, 5), "Output:\nuntagged runs");
}

#[tokio::test]
async fn long_output_reaches_the_model_truncated_with_its_true_length() {
    let root = MockBackend::scripted([
        fence("let a = \"\"; a.pad(5000, \"a\"); let b = \"\"; b.pad(5000, \"b\"); print(a + b);"),
        "FINAL(ok)".to_owned(),
    ]);
    let rlm = builder(&root, &MockBackend::echo())
        .max_output_chars(500)
        .build_ok();
    run_ok(&rlm, "q", Context::from("x")).await;
    let shown = seen(&root, 1);
    assert!(
        shown.contains(&format!(
            "{}\n[... output truncated: 9501 of 10001 characters",
            "a".repeat(250)
        )),
        "{shown}"
    );
    assert!(shown.ends_with(&"b".repeat(249)), "{shown}");
}

#[tokio::test]
async fn events_arrive_in_order_and_serialize_as_trace_lines() {
    let root = MockBackend::scripted([
        fence("let a = llm_batch([\"x\", \"y\"], 1);\nlet b = llm_query(\"z\");"),
        fence("FINAL(b);"),
    ]);
    let events = Arc::new(Events::default());
    let rlm = builder(&root, &MockBackend::echo())
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "echo: z");
    let names: Vec<String> = events
        .all()
        .iter()
        .map(|e| {
            serde_json::to_value(e)
                .ok()
                .and_then(|v| v["event"].as_str().map(str::to_owned))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        names,
        [
            "run_start",
            "turn_start",
            "root_reply",
            "batch_start",
            "sub_call_start",
            "sub_call_end",
            "batch_progress",
            "sub_call_start",
            "sub_call_end",
            "batch_progress",
            "batch_end",
            "sub_call_start",
            "sub_call_end",
            "code_block",
            "turn_end",
            "turn_start",
            "root_reply",
            "code_block",
            "turn_end",
            "final"
        ]
    );
    let ids: Vec<u64> = events
        .all()
        .iter()
        .filter_map(|e| match e {
            Event::SubCallEnd { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);

    // run_start carries the settings, the system prompt and the first message; turn_end
    // does not repeat the reply, the code or the sub-calls.
    let all = events.all();
    let start = serde_json::to_value(&all[0]).unwrap_or_default();
    assert_eq!(start["settings"]["max_iterations"], 20);
    assert!(
        start["settings"]["block_timeout_ms"].as_u64().is_some(),
        "{start}"
    );
    assert!(
        start["started_at_unix_ms"]
            .as_u64()
            .is_some_and(|t| t > 1_600_000_000_000)
    );
    assert!(
        start["system_prompt"]
            .as_str()
            .is_some_and(|p| p.contains("llm_batch"))
    );
    assert!(
        start["first_message"]
            .as_str()
            .is_some_and(|m| m.contains('q'))
    );
    let turn_end = all
        .iter()
        .find(|e| matches!(e, Event::TurnEnd { .. }))
        .and_then(|e| serde_json::to_value(e).ok())
        .unwrap_or_default();
    assert_eq!(turn_end["turn"], 1, "{turn_end}");
    assert_eq!(turn_end["blocks"], 1, "{turn_end}");
    assert_eq!(turn_end["sub_calls"], 3, "{turn_end}");
    assert!(turn_end.get("reply").is_none() && !turn_end.to_string().contains("llm_batch"));
}

/// A batch executor that reports its items from many threads at once, as a custom executor
/// may: every item fails, all finishing together.
struct ThreadedFailures;

#[async_trait::async_trait]
impl rlm_core::LlmBackend for ThreadedFailures {
    async fn complete(
        &self,
        _: rlm_core::CompletionRequest,
    ) -> Result<rlm_core::Completion, LlmError> {
        Err(LlmError::other("down"))
    }
}

#[async_trait::async_trait]
impl rlm_core::BatchExecutor for ThreadedFailures {
    async fn complete_batch(
        &self,
        requests: Vec<rlm_core::CompletionRequest>,
        options: &rlm_core::BatchOptions,
    ) -> Vec<rlm_core::BatchResult> {
        let observer = options.observer.clone();
        let gate = std::sync::Barrier::new(requests.len());
        std::thread::scope(|scope| {
            for (index, request) in requests.iter().enumerate() {
                let (observer, gate) = (observer.clone(), &gate);
                scope.spawn(move || {
                    if let Some(observer) = &observer {
                        observer.started(index, request);
                        gate.wait();
                        observer.finished(index, &Err(LlmError::other("down")), Duration::ZERO);
                    }
                });
            }
        });
        requests
            .iter()
            .map(|_| Err(LlmError::other("down")))
            .collect()
    }
}

#[tokio::test]
async fn batch_progress_counts_up_even_when_items_finish_on_many_threads() {
    let root = MockBackend::scripted([
        fence("for i in 0..10 { llm_batch(range(32).map(|i| `p${i}`)); }"),
        "FINAL(done)".to_owned(),
    ]);
    let events = Arc::new(Events::default());
    let rlm = rlm_repl::Rlm::builder(Arc::new(root))
        .root_model("root")
        .sub_backend(Arc::new(ThreadedFailures))
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.sub_calls, 320);
    let mut seen: std::collections::HashMap<u64, Vec<(usize, usize)>> = Default::default();
    for event in events.all() {
        if let Event::BatchProgress {
            batch,
            done,
            failed,
            ..
        } = event
        {
            seen.entry(batch).or_default().push((done, failed));
        }
    }
    assert_eq!(seen.len(), 10);
    for (batch, progress) in seen {
        // In the order observers see them: one more done each time, and all of them failed.
        let expected: Vec<(usize, usize)> = (1..=32).map(|n| (n, n)).collect();
        assert_eq!(progress, expected, "batch {batch}");
    }
}

#[tokio::test]
async fn a_failing_root_model_is_an_error() {
    let root = MockBackend::echo().fail_when(|_| true, LlmError::other("down"));
    let events = Arc::new(Events::default());
    let rlm = builder(&root, &MockBackend::echo())
        .observer(events.clone())
        .build_ok();
    let error = rlm.run("q", Context::from("x")).await.err();
    assert!(
        matches!(error, Some(RlmError::Root { turn: 1, .. })),
        "{error:?}"
    );
    // A trace of the run ends by saying why there is no answer.
    let last = events.all().pop();
    assert_eq!(
        last,
        Some(Event::RunError {
            turn: 1,
            error: "down".to_owned()
        })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_in_a_multi_thread_runtime() {
    let root = MockBackend::scripted([fence(SEARCH), fence("FINAL(found[0]);")]);
    let rlm = builder(
        &root,
        &needle_finder().with_latency(Duration::from_millis(5)),
    )
    .build_ok();
    let result = run_ok(&rlm, "q", needle_context()).await;
    assert_eq!(result.answer, "4217");
}

#[test]
fn run_blocking_works_without_a_runtime() {
    let root = MockBackend::scripted([fence(SEARCH), fence("FINAL(found[0]);")]);
    let rlm = builder(
        &root,
        &needle_finder().with_latency(Duration::from_millis(5)),
    )
    .build_ok();
    let result = rlm
        .run_blocking("q", needle_context())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.answer, "4217");
    assert_eq!(result.stopped, StopReason::Final);
}

#[tokio::test]
async fn json_and_document_contexts() {
    let root = MockBackend::scripted([fence(
        "let names = context.map(|d| parse_json(d).name); FINAL(join(names, \",\"));",
    )]);
    let docs = vec![r#"{"name": "a"}"#.to_owned(), r#"{"name": "b"}"#.to_owned()];
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from(docs)).await;
    assert_eq!(result.answer, "a,b");
    assert!(seen(&root, 0).contains("an array of strings of 26 characters, with 2 items"));

    let root = MockBackend::scripted([fence(
        "FINAL(context.orders.filter(|o| o.total > 10).len());",
    )]);
    let json = serde_json::json!({"orders": [{"total": 5}, {"total": 12}, {"total": 30}]});
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from(json)).await;
    assert_eq!(result.answer, "2");
    assert!(seen(&root, 0).contains("a map (from JSON)"));
}

#[tokio::test]
async fn the_system_prompt_examples_run() {
    let prompt = rlm_repl::prompt::SYSTEM_PROMPT;
    let blocks: Vec<String> = prompt
        .split("```repl\n")
        .skip(1) // the text before the first block
        .map(|rest| rest.split("\n```").next().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    let root = MockBackend::scripted(blocks.iter().map(|b| fence(b)));
    let sub = MockBackend::from_fn(|request| {
        let prompt = request.last_user_message().unwrap_or_default();
        Ok(if prompt.starts_with("Using these excerpts") {
            "Ada".to_owned()
        } else if prompt.contains("keeper was Ada") {
            "The lighthouse keeper was Ada.".to_owned()
        } else {
            "NONE".to_owned()
        })
    });
    let text = format!(
        "{}The lighthouse keeper was Ada.{}",
        "filler text. ".repeat(20_000),
        " more filler.".repeat(20_000)
    );
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from(text)).await;
    assert_eq!(result.answer, "Ada");
    for turn in &result.trajectory {
        for block in &turn.blocks {
            assert_eq!(block.error, None, "{}", block.code);
            assert!(!block.output.contains("warning"), "{}", block.output);
        }
    }
}

#[tokio::test]
async fn the_cost_budget_refuses_what_it_cannot_cover_and_reports_the_cost() {
    use rlm_core::cost::{Price, Prices};
    let root = MockBackend::scripted([
        fence("let a = llm_batch([\"1\", \"2\", \"3\", \"4\", \"5\"]);\nprint(a);"),
        "FINAL(with what I have)".to_owned(),
    ]);
    let sub = MockBackend::echo();
    let events = Arc::new(Events::default());
    // $1,000 per million tokens: each item is estimated at 5 prompt tokens and 1,000
    // completion tokens, $1.005; three fit in $3.20, the fourth does not.
    let prices = Prices::from_iter([("sub", Price::new(1000.0, 1000.0, 1000.0))]);
    let rlm = builder(&root, &sub)
        .prices(prices)
        .max_cost(3.2)
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxCost);
    assert_eq!(result.stopped.as_str(), "max_cost");
    assert_eq!(sub.calls(), 3);
    assert_eq!(result.sub_calls, 3);
    // The final ask was still made, and said why.
    assert_eq!(result.answer, "with what I have");
    let ask = seen(&root, 1);
    assert_eq!(
        ask.matches("the cost budget (at most $3.2 per run) is spent")
            .count(),
        2,
        "{ask}"
    );
    assert!(
        ask.contains("The cost budget of this run is spent."),
        "{ask}"
    );
    // The cost of what was really used: the sub model is priced, the root is not.
    let sub_usage = result.usage["sub"];
    let expected = (sub_usage.prompt_tokens + sub_usage.completion_tokens) as f64 * 1e-3;
    assert!(expected > 0.0);
    assert!((result.cost.by_model["sub"] - expected).abs() < 1e-6);
    assert!((result.cost.total - expected).abs() < 1e-6);
    assert_eq!(result.cost.unpriced, vec!["root".to_owned()]);
    // The trace's final event carries the same report.
    let last = events.all().pop();
    assert!(
        matches!(&last, Some(Event::Final { cost_usd, .. }) if *cost_usd == result.cost),
        "{last:?}"
    );
}

#[tokio::test]
async fn a_root_call_the_cost_budget_cannot_cover_stops_the_run_before_it_is_sent() {
    use rlm_core::cost::{Price, Prices};
    let root = MockBackend::scripted([
        fence("let a = llm_query(\"hi\");\nprint(a);"),
        "FINAL(done)".to_owned(),
        "FINAL(never asked)".to_owned(),
    ]);
    let sub = MockBackend::echo();
    // The root model costs $1 per thousand tokens; a budget of a nanodollar covers no turn.
    let prices = Prices::from_iter([("root", Price::new(1000.0, 1000.0, 1000.0))]);
    let rlm = builder(&root, &sub)
        .prices(prices)
        .max_cost(1e-9)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxCost);
    // No turn was affordable; only the (unbudgeted) final ask went out.
    assert_eq!(root.calls(), 1);
    assert_eq!(sub.calls(), 0);
    assert!(result.cost.total > 0.0);
}

#[tokio::test]
async fn batch_requests_share_the_scripts_strings() {
    // One script string sent twice: both requests hold its bytes, neither a copy of them.
    let root = MockBackend::scripted([fence(
        r#"let p = "prompt " + 42; let a = llm_batch([p, p, "other"]); FINAL(a[0]);"#,
    )]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "echo: prompt 42");
    let requests = sub.requests();
    let at: Vec<*const u8> = requests
        .iter()
        .filter_map(|r| r.last_user_message())
        .filter(|p| *p == "prompt 42")
        .map(str::as_ptr)
        .collect();
    assert_eq!(at.len(), 2, "{requests:?}");
    assert_eq!(at[0], at[1], "the two requests hold one buffer");
}
