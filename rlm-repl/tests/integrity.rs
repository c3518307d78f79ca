//! Answer integrity: the run never returns a wrong answer silently. Each test is an input
//! that used to end a run with a wrong, cut or premature answer (README, "When an
//! answer is accepted").

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{BuildOk, builder, fence, run_ok, seen};
use rlm_core::mock::MockBackend;
use rlm_core::{Completion, FinishReason, LlmError};
use rlm_repl::{Context, Event, RlmError, StopReason, TurnVerdict};

/// A root model whose replies marked `[cut]` come back cut at the token limit (the marker
/// itself removed), as `finish_reason: "length"`.
fn root_with_cuts<const N: usize>(replies: [&str; N]) -> MockBackend {
    MockBackend::scripted(replies.map(str::to_owned)).with_shape(|_, completion| {
        match completion.text.strip_suffix("[cut]") {
            Some(text) => Completion::new(completion.model.clone(), text)
                .with_usage(completion.usage)
                .with_finish_reason(Some(FinishReason::Length)),
            None => completion,
        }
    })
}

#[tokio::test]
async fn a_multi_line_final_is_kept_whole() {
    let answer = "The three duels (in story order):\n1. Tybalt and Mercutio\n\
                  2. Romeo and Tybalt\n3. Romeo and Paris, though it never happened";
    let root = MockBackend::scripted([format!("FINAL({answer})")]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, answer);
    assert_eq!(result.stopped, StopReason::Final);
}

#[tokio::test]
async fn tilde_fences_run_and_their_final_is_code() {
    let root = MockBackend::scripted(["~~~repl\nlet x = \"the real value\";\nFINAL(x)\n~~~"]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "the real value");
}

#[tokio::test]
async fn a_marker_in_inline_code_does_not_end_the_run() {
    let root = MockBackend::scripted([
        fence("let answer = \"draft\";"),
        "`FINAL_VAR(answer)` is what I will call once the count is verified.\n```repl\n\
         answer = \"verified\";\nprint(answer);\n```"
            .to_owned(),
        "FINAL_VAR(answer)".to_owned(),
    ]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "verified");
    assert_eq!(result.iterations, 3);
}

#[tokio::test]
async fn a_final_written_before_the_output_is_not_accepted() {
    let context = "Some text. The magic number is 4242. More text.";
    for first in [
        "```repl\nlet hits = regex_find_all(context, \"magic number is \\\\d+\");\nprint(hits);\n```\n\
         Output: [\"magic number is 999\"]\nFINAL(999)",
        "```repl\ncontext.no_such_method();\n```\nFINAL(777)",
    ] {
        let root = MockBackend::scripted([first, "FINAL(4242)"]);
        let rlm = builder(&root, &MockBackend::echo()).build_ok();
        let result = run_ok(&rlm, "What is the magic number?", Context::from(context)).await;
        assert_eq!(result.answer, "4242", "{first}");
        assert_eq!(result.iterations, 2);
        let shown = seen(&root, 1);
        assert!(shown.contains("before you saw the output"), "{shown}");
    }
}

#[tokio::test]
async fn blocks_after_a_failed_block_do_not_run() {
    let root = MockBackend::scripted([
        "```repl\nprint(\"first\");\n```\n```repl\nlet y = undefined_thing + 1;\n```\n\
         ```repl\nprint(\"third\");\n```\nFINAL_VAR(y)",
        "FINAL(done)",
    ]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "done");
    assert_eq!(result.trajectory[0].blocks.len(), 2);
    let shown = seen(&root, 1);
    assert!(shown.contains("Block 2 failed:"), "{shown}");
    assert!(
        shown.contains("Block 2 failed, so the block after it did not run"),
        "{shown}"
    );
    assert!(!shown.contains("third"), "{shown}");
    assert!(shown.contains("FINAL_VAR(y) was not accepted"), "{shown}");
}

#[tokio::test]
async fn a_text_final_var_with_code_is_accepted_when_every_block_ran() {
    let root = MockBackend::scripted([
        "```repl\nlet total = 40 + 2;\nprint(total);\n```\nFINAL_VAR(total)",
    ]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "42");
    assert_eq!(result.iterations, 1);
}

#[tokio::test]
async fn answers_from_warned_blocks_and_error_strings_are_held_once() {
    // A raw `\n` inside backticks: a silent trap the lint warns about.
    let root = MockBackend::scripted([fence("let s = `a\\nb`;\nFINAL(s);"), fence("FINAL(s);")]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.iterations, 2);
    assert_eq!(result.answer, "a\\nb");
    assert!(seen(&root, 1).contains("not accepted yet"));
    assert!(
        result.warnings.iter().any(|w| w.contains("held")),
        "{:?}",
        result.warnings
    );

    let root = MockBackend::scripted([
        fence("let r = llm_query(\"x\");\nFINAL(r);"),
        fence("FINAL(r);"),
    ]);
    let sub = MockBackend::echo().fail_when(|_| true, LlmError::other("boom"));
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.iterations, 2);
    assert_eq!(result.answer, "Error: boom");
    assert!(seen(&root, 1).contains("Error: ...\" string"));
    assert!(
        result
            .warnings
            .iter()
            .any(|w| w.contains("is an \"Error: ...\" string")),
        "{:?}",
        result.warnings
    );
}

#[tokio::test]
async fn a_cut_root_reply_never_ends_the_run() {
    let root = root_with_cuts([
        "FINAL(The answer is a long list: one, two, thr[cut]",
        "```repl\nlet a = \"whole\";\nFINAL(a);\n```\nmore text that was cut[cut]",
        "FINAL(one, two, three)",
    ]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "one, two, three");
    assert_eq!(result.iterations, 3);
    for turn in [1, 2] {
        let shown = seen(&root, turn);
        assert!(shown.contains("cut at the token limit"), "{shown}");
    }
}

#[tokio::test]
async fn cut_and_empty_sub_calls_are_failed_items() {
    let sub =
        MockBackend::echo().with_shape(|request, completion| match request.last_user_message() {
            Some("thinks") => Completion::new(completion.model.clone(), "")
                .with_reasoning("Let me think step by step..."),
            Some("tools") => Completion::new(completion.model.clone(), "")
                .with_finish_reason(Some(FinishReason::ToolCalls)),
            Some("long") => Completion::new(completion.model.clone(), "The answer is half a sen")
                .with_finish_reason(Some(FinishReason::Length)),
            _ => completion,
        });
    let root = MockBackend::scripted([
        fence(
            "let r = llm_batch([\"thinks\", \"tools\", \"long\", \"fine\"]);\nfor x in r { print(x); }",
        ),
        fence("let one = llm_query(\"long\");\nprint(one);"),
        "FINAL(done)".to_owned(),
    ]);
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    let shown = seen(&root, 1);
    let lines: Vec<&str> = shown.lines().skip(1).collect();
    assert!(
        lines[0].starts_with("Error: the sub-model gave no answer text (it held only reasoning"),
        "{shown}"
    );
    assert!(lines[1].contains("only tool calls"), "{shown}");
    assert!(
        lines[2].starts_with("Error: the sub-model's reply was cut at its token limit")
            && lines[2].ends_with("Partial text: The answer is half a sen"),
        "{shown}"
    );
    assert_eq!(lines[3], "echo: fine");
    assert!(seen(&root, 2).contains("cut at its token limit"));
    let records: Vec<_> = result
        .trajectory
        .iter()
        .flat_map(|t| &t.sub_calls)
        .collect();
    assert_eq!(records.iter().filter(|r| !r.ok).count(), 4);
    let warnings = result.warnings.join("\n");
    assert!(
        warnings.contains("2 sub-calls were cut at the token limit"),
        "{warnings}"
    );
    assert!(
        warnings.contains("2 sub-calls had no answer text"),
        "{warnings}"
    );
    assert!(
        warnings.contains("after 4 of 5 sub-calls failed"),
        "{warnings}"
    );
}

#[tokio::test]
async fn a_sub_model_that_cannot_work_stops_the_run() {
    let root = MockBackend::scripted([
        fence("let r = llm_batch(range(84).map(|i| `chunk ${i}`));\nprint(r[0]);"),
        "FINAL(made of errors)".to_owned(),
    ]);
    let sub = MockBackend::echo()
        .with_latency(std::time::Duration::from_millis(5))
        .fail_when(
            |_| true,
            LlmError::from_http_status(
                404,
                "The model `gpt-typo` does not exist",
                None,
                Some("model_not_found"),
                None,
            ),
        );
    let rlm = builder(&root, &sub).max_concurrent(4).build_ok();
    let error = rlm
        .run("q", Context::from("x"))
        .await
        .err()
        .unwrap_or_else(|| panic!("the run must fail"));
    match &error {
        RlmError::SubModel { model, source } => {
            assert_eq!(model, "sub");
            assert_eq!(source.status(), Some(404));
        }
        other => panic!("{other}"),
    }
    assert!(error.to_string().contains("does not exist"), "{error}");
    // Stopped at once: one wave at most, not 84 calls.
    assert!(sub.calls() <= 4, "{} calls", sub.calls());
    assert_eq!(root.calls(), 1);
}

#[tokio::test]
async fn max_concurrent_is_the_ceiling_of_llm_batch() {
    let root = MockBackend::scripted([fence(
        "let r = llm_batch(range(200).map(|i| `p${i}`), 100000);\nFINAL(r.len());",
    )]);
    let sub = MockBackend::echo().with_latency(std::time::Duration::from_millis(2));
    let rlm = builder(&root, &sub).max_concurrent(4).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "200");
    assert_eq!(sub.peak_in_flight(), 4);
}

#[tokio::test]
async fn no_marker_in_the_final_ask_means_no_answer() {
    let root = MockBackend::scripted([
        fence("print(context.len());"),
        "I believe the answer is probably 42, but let me check:\n```repl\nprint(1);\n```"
            .to_owned(),
    ]);
    let rlm = builder(&root, &MockBackend::echo())
        .max_iterations(1)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "");
    assert_eq!(result.stopped, StopReason::MaxIterations);
    let warning = &result.warnings[0];
    assert!(
        warning.starts_with("no answer: the turn budget"),
        "{warning}"
    );
    assert!(
        warning.contains("\"I believe the answer is probably 42"),
        "{warning}"
    );
}

/// A final ask answered with `FINAL_VAR` of a variable that does not exist: no answer, and the
/// warning says the value could not be read (not that the reply had no marker).
#[tokio::test]
async fn a_final_var_that_cannot_be_read_in_the_final_ask_is_named() {
    let root = MockBackend::scripted(["thinking".to_owned(), "FINAL_VAR(zzz)".to_owned()]);
    let rlm = builder(&root, &MockBackend::echo())
        .max_iterations(1)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "");
    let warning = &result.warnings[0];
    assert!(
        warning.starts_with("no answer: the turn budget"),
        "{warning}"
    );
    assert!(warning.contains("could not be read"), "{warning}");
    assert!(warning.contains("zzz"), "{warning}");
    assert!(!warning.contains("had no FINAL"), "{warning}");
}

#[tokio::test]
async fn empty_root_replies_are_explained_and_warned_about() {
    let root = MockBackend::scripted(["", "", "FINAL(ok)"]).with_shape(|_, completion| {
        if completion.text.is_empty() {
            completion.with_reasoning("thinking about it")
        } else {
            completion
        }
    });
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "ok");
    assert!(seen(&root, 1).contains("it held only reasoning"));
    assert_eq!(result.warnings.len(), 1, "{:?}", result.warnings);
    assert!(result.warnings[0].contains("empty replies on turns 1 and 2"));
}

#[tokio::test]
async fn an_unreadable_root_reply_is_retried_once() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let root = MockBackend::from_fn(move |_| {
        if counter.fetch_add(1, Ordering::SeqCst) == 0 {
            Err(LlmError::invalid_response(
                "the reply (HTTP 200) holds an error and no choices: upstream overloaded",
            ))
        } else {
            Ok("FINAL(fine)".to_owned())
        }
    });
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "fine");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_run_without_an_answer_always_says_why() {
    // Out of time while a sub-call hangs: no answer, and a warning says why.
    let root = MockBackend::scripted([fence("let r = llm_query(\"slow\");\nFINAL(r);")]);
    let sub = MockBackend::echo().with_latency(std::time::Duration::from_secs(3600));
    let rlm = builder(&root, &sub)
        .max_time(std::time::Duration::from_millis(200))
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.stopped, StopReason::MaxTime);
    assert_eq!(result.answer, "");
    assert!(
        result
            .warnings
            .iter()
            .any(|w| w.starts_with("no answer:") && w.contains("--max-time")),
        "{:?}",
        result.warnings
    );

    // The final ask itself fails: the warning names the failure.
    let root = MockBackend::scripted([fence("print(1);")]);
    let rlm = builder(&root, &MockBackend::echo())
        .max_iterations(1)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "");
    assert!(
        result
            .warnings
            .iter()
            .any(|w| w.contains("the final ask failed")),
        "{:?}",
        result.warnings
    );
}

#[tokio::test]
async fn each_turn_end_says_what_became_of_its_answer() {
    let root = MockBackend::scripted([
        fence("print(1);"),
        "```repl\nprint(2);\n```\nFINAL(999)".to_owned(),
        fence("let s = `a\\nb`;\nFINAL(s);"),
        fence("FINAL(s);"),
    ]);
    let events = Arc::new(common::Events::default());
    let rlm = builder(&root, &MockBackend::echo())
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "a\\nb");
    let verdicts: Vec<TurnVerdict> = events
        .all()
        .iter()
        .filter_map(|event| match event {
            Event::TurnEnd { verdict, .. } => Some(*verdict),
            _ => None,
        })
        .collect();
    assert_eq!(
        verdicts,
        [
            TurnVerdict::NoAnswer,
            TurnVerdict::Refused,
            TurnVerdict::Held,
            TurnVerdict::Accepted
        ]
    );
    let trace = serde_json::to_value(events.all()).unwrap_or_default();
    let written: Vec<&str> = trace
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["event"] == "turn_end")
        .filter_map(|e| e["verdict"].as_str())
        .collect();
    assert_eq!(written, ["no_answer", "refused", "held", "accepted"]);
}

#[tokio::test]
async fn the_final_ask_turn_reports_whether_it_gave_the_answer() {
    let root = MockBackend::scripted([fence("print(1);"), "FINAL(7)".to_owned()]);
    let events = Arc::new(common::Events::default());
    let rlm = builder(&root, &MockBackend::echo())
        .max_iterations(1)
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "7");
    let verdicts: Vec<TurnVerdict> = events
        .all()
        .iter()
        .filter_map(|event| match event {
            Event::TurnEnd { verdict, .. } => Some(*verdict),
            _ => None,
        })
        .collect();
    assert_eq!(verdicts, [TurnVerdict::NoAnswer, TurnVerdict::Accepted]);
}

#[tokio::test]
async fn reasoning_in_the_root_reply_holds_no_answer_and_no_code() {
    let root = MockBackend::scripted([
        "<think>\nMaybe FINAL(12)?\n```repl\nprint(\"draft\")\n```\n</think>\nFINAL(4242)",
    ]);
    let sub = MockBackend::echo();
    let events = Arc::new(common::Events::default());
    let rlm = builder(&root, &sub).observer(events.clone()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "4242");
    assert_eq!(result.stopped, StopReason::Final);
    assert!(
        result.trajectory[0].blocks.is_empty(),
        "the draft block ran"
    );
    // The reasoning is in the trace, as reasoning.
    let reasoning: Vec<_> = events
        .all()
        .into_iter()
        .filter_map(|e| match e {
            Event::RootReasoning { text, unclosed, .. } => Some((text, unclosed)),
            _ => None,
        })
        .collect();
    assert_eq!(reasoning.len(), 1);
    assert!(
        reasoning[0].0.starts_with("Maybe FINAL(12)?"),
        "{reasoning:?}"
    );
    assert!(!reasoning[0].1);
}

#[tokio::test]
async fn an_unclosed_reasoning_section_is_reasoning_and_the_model_is_told() {
    let root = MockBackend::scripted([
        "<think>\nFINAL(12)\n```repl\nprint(\"draft\")\n```\n".to_owned(),
        fence("print(\"real\");"),
        "FINAL(4242)".to_owned(),
    ]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "4242");
    assert!(result.trajectory[0].blocks.is_empty());
    let shown = seen(&root, 1);
    assert!(shown.contains("never closed"), "{shown}");
    assert!(seen(&root, 2).contains("real"));
}

#[tokio::test]
async fn a_sub_answer_without_its_leading_reasoning() {
    let sub = MockBackend::echo().with_shape(|request, completion| {
        let text = match request.last_user_message() {
            Some("only") => "<think>\nhmm, 12?\n</think>\n".to_owned(),
            _ => "<think>\nhmm, 12?\n</think>\n\n4242".to_owned(),
        };
        Completion::new(completion.model.clone(), text).with_usage(completion.usage)
    });
    let root = MockBackend::scripted([
        fence(
            "let r = llm_batch([\"both\", \"only\"]);\nprint(r[0]);\nprint(r[1]);\nlet one = llm_query(\"both\");\nprint(one);",
        ),
        "FINAL(done)".to_owned(),
    ]);
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    let shown = seen(&root, 1);
    let lines: Vec<&str> = shown.lines().skip(1).collect();
    assert_eq!(lines[0], "4242", "{shown}");
    assert!(
        lines[1].starts_with("Error: the sub-model gave no answer text (it held only reasoning"),
        "{shown}"
    );
    assert_eq!(lines[2], "4242", "{shown}");
    assert_eq!(result.failed_sub_calls, 1);
}

#[tokio::test]
async fn different_final_answers_in_one_reply_are_refused() {
    let root = MockBackend::scripted([
        "FINAL(12)\nActually, after checking:\nFINAL(4242)",
        "FINAL(4242)\nYes: FINAL(4242)",
    ]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "4242");
    assert_eq!(result.iterations, 2);
    let shown = seen(&root, 1);
    assert!(
        shown.contains("2 different final answers (FINAL(12), FINAL(4242))"),
        "{shown}"
    );
}

#[tokio::test]
async fn first_sub_calls_failing_alike_with_a_4xx_stop_the_run() {
    let root = MockBackend::scripted([
        fence("let r = llm_batch(range(84).map(|i| `chunk ${i}`));\nprint(r[0]);"),
        "FINAL(made of errors)".to_owned(),
    ]);
    // LiteLLM's answer to a mistyped --sub-model.
    let sub = MockBackend::echo()
        .with_latency(std::time::Duration::from_millis(5))
        .fail_when(
            |_| true,
            LlmError::from_http_status(
                400,
                "Invalid model name passed in model=gpt-typo",
                None,
                None,
                None,
            ),
        );
    let rlm = builder(&root, &sub).max_concurrent(4).build_ok();
    let error = rlm
        .run("q", Context::from("x"))
        .await
        .err()
        .unwrap_or_else(|| panic!("the run must fail"));
    match &error {
        RlmError::SubModel { model, source } => {
            assert_eq!(model, "sub");
            assert_eq!(source.status(), Some(400));
        }
        other => panic!("{other}"),
    }
    let shown = error.to_string();
    assert!(
        shown.contains("400") && shown.contains("Invalid model name"),
        "{shown}"
    );
    assert!(sub.calls() < 84, "{} calls", sub.calls());
    assert_eq!(root.calls(), 1);
}

#[tokio::test]
async fn a_4xx_for_some_prompts_only_does_not_stop_the_run() {
    // One prompt works first; then prompts the server refuses (too long, say): the sub model
    // works, and the run goes on with per-item errors.
    let root = MockBackend::scripted([
        fence(
            "let ok = llm_query(\"short\");\nlet r = llm_batch(range(5).map(|i| `long ${i}`));\nprint(r[0]);",
        ),
        "FINAL(done)".to_owned(),
    ]);
    let sub = MockBackend::echo().fail_when(
        |request| {
            request
                .last_user_message()
                .is_some_and(|p| p.starts_with("long"))
        },
        LlmError::from_http_status(400, "prompt too long", None, None, None),
    );
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "done");
    assert_eq!(result.failed_sub_calls, 5);
}

#[tokio::test]
async fn final_var_of_an_expression_gives_its_value() {
    // In code, and as a text marker after code: the element, not a variable it names.
    let root = MockBackend::scripted([fence(
        "let cities = [\"Paris\", \"Rome\"];\nFINAL_VAR(cities[0]);",
    )]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "Paris");
    let root = MockBackend::scripted([
        "```repl\nlet cities = [\"Paris\", \"Rome\"];\nlet best = \"Rome\";\n```\nFINAL_VAR(cities[0])".to_owned(),
    ]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "Paris");
    // A variable whose value looks like a name is still its value.
    let root = MockBackend::scripted([fence("let best = \"Rome\";\nFINAL_VAR(best);")]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "Rome");
}

#[tokio::test]
async fn a_reply_of_reasoning_only_is_told_that_its_code_did_not_count() {
    let root = MockBackend::scripted([
        "<think>\n```repl\nFINAL(12)\n```\n</think>".to_owned(),
        "FINAL(4242)".to_owned(),
    ]);
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "4242");
    let shown = seen(&root, 1);
    assert!(shown.contains("held only reasoning"), "{shown}");
}
