//! A whole run's trace, written by the library's trace writer, reads back as the events the
//! run reported: the viewer and any other reader use the same types.

use std::sync::Arc;
use std::time::Instant;

use rlm_core::mock::MockBackend;
use rlm_repl::trace::{TraceLine, TraceWriter};
use rlm_repl::{Context, Event, Observer, Rlm};

mod common;

#[tokio::test]
async fn every_line_of_a_recursive_runs_trace_reads_back_as_its_event() {
    let path =
        std::env::temp_dir().join(format!("rlm-trace-roundtrip-{}.jsonl", std::process::id()));
    let writer =
        Arc::new(TraceWriter::create(&path, Instant::now()).unwrap_or_else(|e| panic!("{e}")));
    let events = Arc::new(common::Events::default());
    // The root model: a batch and a child run, then the answer. A child's root calls go to
    // the same backend under the child model's name: it answers at once.
    let root = MockBackend::from_fn(|request| {
        let turn = request
            .messages
            .iter()
            .filter(|m| m.role == rlm_core::Role::Assistant)
            .count();
        Ok(match (request.model.as_str(), turn) {
            ("sub", _) => "FINAL(3)".to_owned(),
            (_, 0) => "```repl\nlet a = llm_batch([\"x\", \"y\"]);\nlet c = rlm_query(\"sum\", \"1 2\");\nprint(a);\nprint(c);\n```".to_owned(),
            _ => "FINAL(done)".to_owned(),
        })
    });
    let sub = MockBackend::from_fn(|request| {
        Ok(format!(
            "seen {}",
            request.last_user_message().unwrap_or_default().len()
        ))
    });
    let rlm = Rlm::builder(Arc::new(root))
        .root_model("root")
        .sub_backend(Arc::new(sub))
        .sub_model("sub")
        .max_depth(2)
        .observer(writer.clone() as Arc<dyn Observer>)
        .observer(events.clone())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let result = rlm
        .run("q", Context::from("ctx"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.answer, "done");
    assert!(writer.error().is_none());
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let _ = std::fs::remove_file(&path);
    let lines: Vec<TraceLine> = text
        .lines()
        .map(|line| TraceLine::parse(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    assert!(
        lines.iter().any(|l| l.depth == 1),
        "the child's events are in the trace"
    );
    // Every run's events, children's included, in the order they were reported.
    let read: Vec<Event> = lines
        .into_iter()
        .map(|l| l.event)
        .map(|event| match event {
            // What the root model is told of the context is not read back (its kind is one of
            // the engine's own names); the rest is.
            Event::RunStart { .. } => Event::TurnStart { turn: 0 },
            other => other,
        })
        .collect();
    let reported: Vec<Event> = events
        .all()
        .into_iter()
        .map(|event| match event {
            Event::RunStart { .. } => Event::TurnStart { turn: 0 },
            other => other,
        })
        .collect();
    assert_eq!(read, reported);
}

/// `run_start`'s settings name every budget the run works under, the memory and cost budgets
/// included (they were missing, so a trace could not show why a run stopped for them).
#[tokio::test]
async fn run_start_names_the_memory_and_cost_budgets() {
    let events = Arc::new(common::Events::default());
    let root = MockBackend::from_fn(|_| Ok("FINAL(ok)".to_owned()));
    let prices = rlm_core::cost::Prices::builtin();
    let rlm = Rlm::builder(Arc::new(root))
        .root_model("gpt-4o")
        .max_cost(0.5)
        .prices(prices)
        .sandbox(rlm_repl::SandboxLimits {
            max_memory: 64 << 20,
            ..Default::default()
        })
        .observer(events.clone())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    rlm.run("q", Context::from("ctx"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let settings = events
        .all()
        .into_iter()
        .find_map(|event| match event {
            Event::RunStart { settings, .. } => Some(settings),
            _ => None,
        })
        .expect("a run_start");
    assert_eq!(settings.max_memory, 64 << 20);
    assert_eq!(settings.max_cost_usd, Some(0.5));
}
