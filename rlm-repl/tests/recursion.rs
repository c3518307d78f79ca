//! Recursion: `rlm_query` / `rlm_batch` start child runs, and one ledger covers the tree
//! (README, "Recursion").

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BuildOk, builder, fence, run_ok};
use rlm_core::mock::MockBackend;
use rlm_core::{CancellationToken, CompletionRequest};
use rlm_repl::prompt::RECURSION_PROMPT;
use rlm_repl::{Context, Event, Observer, RunPlace, StopReason};

/// The query a run was given (from its first user message) and its turn (from 0).
fn query_and_turn(request: &CompletionRequest) -> (String, usize) {
    let first = request
        .messages
        .iter()
        .find(|m| m.role == rlm_core::Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default();
    let query = first
        .strip_prefix("Query: ")
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_default()
        .to_owned();
    let turn = request
        .messages
        .iter()
        .filter(|m| m.role == rlm_core::Role::Assistant)
        .count();
    (query, turn)
}

/// Root models of every run of the tree (the top-level root and the children's), scripted
/// by query and turn.
fn models(script: impl Fn(&str, usize) -> String + Send + Sync + 'static) -> MockBackend {
    MockBackend::from_fn(move |request| {
        let (query, turn) = query_and_turn(request);
        Ok(script(&query, turn))
    })
}

/// Every event with its place in the tree.
#[derive(Default)]
struct Placed(Mutex<Vec<(RunPlace, Event)>>);

impl Observer for Placed {
    fn on_event(&self, _: &Event) {}

    fn on_run_event(&self, place: &RunPlace, event: &Event) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((place.clone(), event.clone()));
    }
}

impl Placed {
    fn all(&self) -> Vec<(RunPlace, Event)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[tokio::test]
async fn a_three_level_tree_answers_through_its_children() {
    let root = models(|query, _| match query {
        "top" => fence("let a = rlm_query(\"middle\", \"piece one\");\nFINAL(a);"),
        "middle" => {
            fence("let b = rlm_query(\"leaf\", context + \"!\");\nFINAL(\"child got \" + b);")
        }
        "leaf" => fence("let c = rlm_query(\"ask\", context);\nFINAL(\"grandchild got \" + c);"),
        other => format!("unexpected query {other:?}"),
    });
    let sub = MockBackend::echo();
    let events = Arc::new(Placed::default());
    let rlm = builder(&root, &sub)
        .max_depth(3)
        .child_model("child")
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "top", Context::from("the whole context")).await;
    assert_eq!(
        result.answer,
        "child got grandchild got echo: ask\n\npiece one!"
    );
    assert_eq!(result.max_depth_reached, 2);
    assert_eq!(result.child_runs, 2);
    // Calls below the top-level root: two children's root turns and the leaf's sub-call.
    assert_eq!(result.sub_calls, 3);
    // The deepest run was told that its rlm_query is a plain sub-call.
    let requests = root.requests();
    let leaf = requests
        .iter()
        .find(|r| query_and_turn(r).0 == "leaf")
        .map(|r| r.messages[0].content.clone())
        .unwrap_or_default();
    assert!(leaf.contains("the deepest level"), "{leaf}");
    let middle = requests
        .iter()
        .find(|r| query_and_turn(r).0 == "middle")
        .map(|r| r.model.clone());
    assert_eq!(middle.as_deref(), Some("child"));
    // Every run has its place; each child's run_start names its parent.
    let starts: Vec<(usize, String, Option<String>)> = events
        .all()
        .into_iter()
        .filter_map(|(place, event)| match event {
            Event::RunStart { parent, .. } => Some((place.depth, place.run.clone(), parent)),
            _ => None,
        })
        .collect();
    assert_eq!(
        starts,
        [
            (0, "0".to_owned(), None),
            (1, "0.1".to_owned(), Some("0".to_owned())),
            (2, "0.1.1".to_owned(), Some("0.1".to_owned())),
        ]
    );
    // Usage per depth sums to the whole and matches what the backends counted.
    let by_depth = &result.usage_by_depth;
    assert_eq!(by_depth[0]["root"].calls, 1);
    assert_eq!(by_depth[1]["child"].calls, 1);
    assert_eq!(by_depth[2]["child"].calls, 1);
    assert_eq!(by_depth[2]["sub"].calls, 1);
    let calls = |model: &str| -> u64 {
        by_depth
            .iter()
            .filter_map(|usage| usage.get(model))
            .map(|u| u.calls)
            .sum()
    };
    assert_eq!(calls("root") + calls("child"), root.calls() as u64);
    assert_eq!(calls("sub"), sub.calls() as u64);
    assert_eq!(result.usage["child"].calls, 2);
}

#[tokio::test]
async fn fifty_children_racing_for_twenty_calls_send_exactly_twenty() {
    let root = models(|query, _| {
        if query == "top" {
            fence(
                "let r = rlm_batch(range(50).map(|i| `task ${i}`), range(50).map(|i| `piece ${i}`));\n\
                 print(r.filter(|x| x.starts_with(\"Error: budget\")).len());\nFINAL(\"done\");",
            )
        } else {
            fence("let x = llm_query(\"look at \" + context);\nFINAL(x);")
        }
    })
    .with_latency(Duration::from_millis(2));
    let sub = MockBackend::echo().with_latency(Duration::from_millis(2));
    let rlm = builder(&root, &sub)
        .child_model("child")
        .max_concurrent(16)
        .max_sub_calls(20)
        .build_ok();
    let result = run_ok(&rlm, "top", Context::from("x")).await;
    let child_calls = root
        .requests()
        .iter()
        .filter(|r| r.model == "child")
        .count();
    assert_eq!(
        child_calls + sub.calls(),
        20,
        "exactly the budget, below the root"
    );
    assert_eq!(result.sub_calls, 20);
    assert!(result.child_runs >= 10, "{}", result.child_runs);
    let shown = &result.trajectory[0].blocks[0].output;
    let refused: usize = shown
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0);
    assert!(refused >= 30, "children past the budget say so: {shown}");
}

#[tokio::test]
async fn cancellation_reaches_grandchildren() {
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    let root = models(|query, _| match query {
        "top" => fence("let a = rlm_query(\"middle\", context);\nFINAL(a);"),
        "middle" => {
            fence("let b = rlm_batch([\"leaf\", \"leaf\"], [context, context]);\nFINAL(b);")
        }
        _ => fence("let c = llm_query(\"slow\");\nFINAL(c);"),
    });
    let sub = MockBackend::echo().with_latency(Duration::from_secs(3600));
    let rlm = builder(&root, &sub)
        .max_depth(3)
        .cancel_token(cancel)
        .observer(Arc::new(move |_: &Event| {}))
        .observer(Arc::new(CancelAtDepth(2, trigger)))
        .build_ok();
    let result = tokio::time::timeout(
        Duration::from_secs(60),
        run_ok(&rlm, "top", Context::from("x")),
    )
    .await
    .unwrap_or_else(|_| panic!("the tree did not stop (safety bound, not a timing check)"));
    assert_eq!(result.stopped, StopReason::Cancelled);
    assert_eq!(result.answer, "");
    // Nothing is left running below.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(sub.in_flight(), 0);
}

/// Cancels `token` at the first sub-call of a run at `depth`.
struct CancelAtDepth(usize, CancellationToken);

impl Observer for CancelAtDepth {
    fn on_event(&self, _: &Event) {}

    fn on_run_event(&self, place: &RunPlace, event: &Event) {
        if place.depth == self.0 && matches!(event, Event::SubCallStart { .. }) {
            self.1.cancel();
        }
    }
}

#[tokio::test]
async fn children_run_concurrently_within_the_ceiling() {
    let root = models(|query, _| {
        if query == "top" {
            fence("let r = rlm_batch(range(8).map(|i| `child ${i}`), 100);\nFINAL(r.len());")
        } else {
            format!("FINAL(answer of {query})")
        }
    })
    // The children's calls wait until four of them are in progress together: the test sees
    // the overlap without depending on how fast a loaded machine starts them (no overlap
    // would hang it, hence the timeout), and the peak shows whether the ceiling held.
    .with_gate(|request| query_and_turn(request).0.starts_with("child "), 4);
    let rlm = builder(&root, &MockBackend::echo())
        .max_concurrent(4)
        .build_ok();
    let result = tokio::time::timeout(
        Duration::from_secs(120),
        run_ok(&rlm, "top", Context::from("x")),
    )
    .await
    .expect("four children run at once");
    assert_eq!(result.answer, "8");
    assert_eq!(root.peak_in_flight(), 4);
    assert_eq!(result.child_runs, 8);
}

#[tokio::test]
async fn answers_keep_their_order_and_failures_stay_per_item() {
    let root = models(|query, _| match query {
        "top" => fence(
            "let r = rlm_batch([\"one\", \"two\", \"three\"]);\nprint(r);\nFINAL(join(r, \"|\"));",
        ),
        // The second child never gives an answer.
        "two" => fence("print(1);"),
        other => format!("FINAL({other}!)"),
    });
    let rlm = builder(&root, &MockBackend::echo())
        .child_max_iterations(1)
        .build_ok();
    let result = run_ok(&rlm, "top", Context::from("x")).await;
    let parts: Vec<&str> = result.answer.split('|').collect();
    assert_eq!(parts[0], "one!");
    assert!(parts[1].starts_with("Error: "), "{parts:?}");
    assert_eq!(parts[2], "three!");
}

#[tokio::test]
async fn an_oversized_sub_call_prompt_fails_before_it_is_sent() {
    let root = MockBackend::scripted([fence(
        "let big = \"\";\nbig.pad(40000, \"x\");\nlet r = llm_batch([\"small\", big]);\nprint(r[1]);\nFINAL(r[0]);",
    )]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub).sub_max_prompt_tokens(1000).build_ok();
    let result = run_ok(&rlm, "q", Context::from("x")).await;
    assert_eq!(result.answer, "echo: small");
    assert_eq!(sub.calls(), 1);
    let shown = &result.trajectory[0].blocks[0].output;
    assert!(
        shown.contains("tokens (40000 characters)") && shown.contains("limit of 1000 tokens"),
        "{shown}"
    );
}

#[tokio::test]
async fn the_prompts_recursion_example_runs() {
    let start = RECURSION_PROMPT
        .find("```repl\n")
        .map(|i| i + 8)
        .unwrap_or_default();
    let code = &RECURSION_PROMPT[start..];
    let code = &code[..code.find("```").unwrap_or(code.len())];
    let root = models(
        move |query, turn| match (query.starts_with("How many"), turn) {
            (true, _) => "FINAL(3)".to_owned(),
            (false, 0) => format!("```repl\n{code}```"),
            (false, _) => "FINAL(done)".to_owned(),
        },
    );
    let rlm = builder(&root, &MockBackend::echo()).build_ok();
    let result = run_ok(&rlm, "count", Context::from("disk error\n".repeat(10))).await;
    assert_eq!(result.answer, "done");
    assert_eq!(result.trajectory[0].blocks[0].output.trim(), "[\"3\"]");
    // The prompt with the recursion lines stays within its budget (5,200 characters before
    // the line of llm_query_json / llm_batch_json).
    let system = &root.requests()[0].messages[0].content;
    assert!(system.contains("Child runs"));
    assert!(
        system.chars().count() <= 5_400,
        "{}",
        system.chars().count()
    );
}

#[tokio::test]
async fn the_cost_budget_covers_the_children_of_the_tree() {
    use rlm_core::cost::{Price, Prices};
    let script = |query: &str, turn: usize| match (query, turn) {
        ("top", 0) => fence("let a = rlm_batch([\"c1\", \"c2\"], [\"x\", \"y\"]);\nprint(a);"),
        ("top", _) => "FINAL(top done)".to_owned(),
        (child, _) => format!("FINAL(answer of {child})"),
    };
    // Only the child model is priced: $1,000 per million tokens.
    let prices = || Prices::from_iter([("child", Price::new(1000.0, 1000.0, 1000.0))]);

    // Enough money: both children answer, and the top-level cost includes them.
    let root = models(script);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub)
        .max_depth(2)
        .child_model("child")
        .prices(prices())
        .max_cost(100.0)
        .build_ok();
    let result = run_ok(&rlm, "top", Context::from("ctx")).await;
    assert_eq!(result.stopped, StopReason::Final);
    assert_eq!(result.answer, "top done");
    assert_eq!(
        root.requests()
            .iter()
            .filter(|r| r.model == "child")
            .count(),
        2
    );
    assert!(result.cost.by_model.get("child").copied().unwrap_or(0.0) > 0.0);
    assert_eq!(result.cost.unpriced, vec!["root".to_owned()]);

    // No money for a child's first turn: neither child reaches its model, the tree stops
    // with max_cost, and the top-level root still gets its final ask.
    let root = models(script);
    let rlm = builder(&root, &sub)
        .max_depth(2)
        .child_model("child")
        .prices(prices())
        .max_cost(0.001)
        .build_ok();
    let result = run_ok(&rlm, "top", Context::from("ctx")).await;
    assert_eq!(result.stopped, StopReason::MaxCost);
    assert!(
        root.requests().iter().all(|r| r.model != "child"),
        "a child call was sent"
    );
    assert_eq!(result.answer, "top done");
    assert_eq!(result.cost.total, 0.0);
}

#[test]
fn a_tree_wider_than_the_blocking_pool_completes() {
    // Every run's block waits on its children's blocks (the top level on four children, each
    // child on three grandchildren, each grandchild on a sub-call): eighteen evaluations
    // waiting on each other at once, on a runtime whose blocking pool holds two threads.
    // Evaluations that took their threads from that pool would wait for each other forever.
    let root = models(|query, _| match query {
        "top" => fence("let r = rlm_batch([\"a\", \"b\", \"c\", \"d\"]);\nFINAL(join(r, \",\"));"),
        "a" | "b" | "c" | "d" => fence(
            "let r = rlm_batch([context + \"1\", context + \"2\", context + \"3\"]);\n\
             FINAL(join(r, \"+\"));",
        ),
        _ => fence("let s = llm_query(\"leaf \" + context);\nFINAL(s);"),
    });
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub).max_depth(3).build_ok();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (sender, receiver) = std::sync::mpsc::channel();
    let worker = std::thread::spawn(move || {
        let result = runtime.block_on(run_ok(&rlm, "top", Context::from("x")));
        let _ = sender.send(result);
        // Dropped here, not where a hung run would keep it waiting.
        runtime.shutdown_background();
    });
    let result = receiver
        .recv_timeout(Duration::from_secs(120))
        .unwrap_or_else(|_| panic!("the tree hung (safety bound, not a timing check)"));
    let _ = worker.join();
    let expected: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|child| {
            (1..=3)
                .map(|i| format!("echo: leaf {child}{i}"))
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect();
    assert_eq!(result.answer, expected.join(","));
    assert_eq!(result.child_runs, 16);
    assert_eq!(sub.calls(), 12);
}
