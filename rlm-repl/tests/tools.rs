//! Host functions (`RlmBuilder::tool`): called from the REPL with JSON values, listed in the
//! first message, counted and traced; a failing tool is an `Error: ...` string; bad names
//! are refused.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::{BuildOk, Events, builder, fence, run_ok, seen};
use rlm_core::mock::MockBackend;
use rlm_repl::{Context, Event, RlmError, StopReason};
use serde_json::{Value, json};

#[tokio::test]
async fn a_tool_gets_json_and_its_result_or_error_comes_back() {
    let root = MockBackend::scripted([
        fence(
            r#"let p = population(#{city: "Paris", year: 2020});
let none = ping();
let bad = population(#{city: "Atlantis"});
print(`${p.city}: ${p.people} ${none} | ${bad}`);"#,
        ),
        fence("FINAL(p.people);"),
    ]);
    let sub = MockBackend::echo();
    let seen_args = Arc::new(std::sync::Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let events = Arc::new(Events::default());
    let (args, count) = (Arc::clone(&seen_args), Arc::clone(&calls));
    let rlm = builder(&root, &sub)
        .tool(
            "population",
            "the population of a city: population(#{city: NAME})",
            move |argument: Value| {
                args.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(argument.clone());
                count.fetch_add(1, Ordering::SeqCst);
                async move {
                    match argument["city"].as_str() {
                        Some("Paris") => Ok(json!({"city": "Paris", "people": 2_102_650})),
                        Some(other) => Err(format!("no such city: {other}")),
                        None => Err("no city given".to_owned()),
                    }
                }
            },
        )
        .tool("ping", "", |argument: Value| async move {
            Ok::<_, String>(json!(format!("pong {argument}")))
        })
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "How many people live in Paris?", Context::from("x")).await;
    assert_eq!(result.answer, "2102650");
    assert_eq!(result.stopped, StopReason::Final);
    assert_eq!(result.tool_calls, 3);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        *seen_args.lock().unwrap_or_else(|e| e.into_inner()),
        vec![
            json!({"city": "Paris", "year": 2020}),
            json!({"city": "Atlantis"})
        ]
    );
    // The model saw the values, `()` for no argument, and the failure as an Error string.
    assert!(
        seen(&root, 1).contains("Paris: 2102650 pong null | Error: no such city: Atlantis"),
        "{}",
        seen(&root, 1)
    );
    // The first message lists the tools with their descriptions.
    let first = seen(&root, 0);
    assert!(
        first.contains("- population(value): the population of a city: population(#{city: NAME})"),
        "{first}"
    );
    assert!(first.contains("- ping(value)\n"), "{first}");
    // Each call is traced, the failure with its error.
    let events = events.0.lock().unwrap_or_else(|e| e.into_inner());
    let tool_events: Vec<(&str, Option<&str>)> = events
        .iter()
        .filter_map(|e| match e {
            Event::ToolCall { name, error, .. } => Some((name.as_str(), error.as_deref())),
            _ => None,
        })
        .collect();
    assert_eq!(
        tool_events,
        vec![
            ("population", None),
            ("ping", None),
            ("population", Some("no such city: Atlantis"))
        ]
    );
}

#[tokio::test]
async fn tool_names_must_be_identifiers_unique_and_not_the_repls_own() {
    let root = MockBackend::scripted([fence("FINAL(1);")]);
    let sub = MockBackend::echo();
    let noop = |_: Value| async { Ok::<_, String>(Value::Null) };
    for (names, says) in [
        (&["llm_query"][..], "REPL's own"),
        (&["two words"][..], "not an identifier"),
        (&["1st"][..], "not an identifier"),
        (&["f", "f"][..], "twice"),
    ] {
        let mut b = builder(&root, &sub);
        for name in names {
            b = b.tool(*name, "", noop);
        }
        match b.build() {
            Err(RlmError::Config(message)) => assert!(message.contains(says), "{message}"),
            other => panic!("{names:?}: {other:?}"),
        }
    }
}
