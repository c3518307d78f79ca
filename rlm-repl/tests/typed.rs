//! Typed answers: an output schema the final answer must conform to, with scripted roots.

mod common;

use std::sync::Arc;

use common::{BuildOk, Events, builder, fence, run_ok, seen};
use rlm_core::mock::MockBackend;
use rlm_repl::{Context, Event, RlmError, StopReason, TurnVerdict};
use serde_json::json;

fn city_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "population": {"type": "integer", "minimum": 0}
        },
        "required": ["city", "population"],
        "additionalProperties": false
    })
}

fn verdicts(events: &Events) -> Vec<TurnVerdict> {
    events
        .all()
        .iter()
        .filter_map(|e| match e {
            Event::TurnEnd { verdict, .. } => Some(*verdict),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_wrong_shape_is_refused_with_its_errors_then_corrected() {
    let root = MockBackend::scripted([
        fence(r#"FINAL(#{city: "Oslo", population: "about 700k"});"#),
        fence(r#"let answer = #{city: "Oslo", population: 709000}; FINAL_VAR("answer");"#),
    ]);
    let sub = MockBackend::echo();
    let events = Arc::new(Events::default());
    let rlm = builder(&root, &sub)
        .output_schema(city_schema())
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "Largest city?", Context::from("...")).await;
    assert_eq!(result.stopped, StopReason::Final);
    assert_eq!(
        result.json,
        Some(json!({"city": "Oslo", "population": 709000}))
    );
    assert_eq!(result.answer, r#"{"city":"Oslo","population":709000}"#);
    assert_eq!(result.iterations, 2);
    // The first message told the schema compactly; the refusal quoted the error's path.
    let first = root.requests()[0].messages[1].content.to_string();
    assert!(first.contains("population: integer (>= 0)"), "{first}");
    let refusal = seen(&root, 1);
    assert!(
        refusal.contains("does not conform to the output schema"),
        "{refusal}"
    );
    assert!(refusal.contains("at /population:"), "{refusal}");
    assert_eq!(
        verdicts(&events),
        [TurnVerdict::InvalidOutput, TurnVerdict::Accepted]
    );
    assert!(events.all().iter().any(|e| matches!(
        e,
        Event::OutputRefused {
            refusals: 1,
            last: false,
            ..
        }
    )));
    #[derive(serde::Deserialize)]
    struct City {
        city: String,
        population: u64,
    }
    let city: City = result.parse().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((city.city.as_str(), city.population), ("Oslo", 709000));
}

#[tokio::test]
async fn an_answer_that_never_conforms_ends_the_run_without_one() {
    let wrong = fence(r#"FINAL("Oslo");"#);
    let root = MockBackend::scripted([wrong.clone(), wrong.clone(), wrong.clone(), wrong]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub)
        .output_schema(city_schema())
        .output_schema_retries(2)
        .build_ok();
    let result = run_ok(&rlm, "Largest city?", Context::from("...")).await;
    assert_eq!(result.stopped, StopReason::InvalidOutput);
    assert_eq!(result.stopped.as_str(), "invalid_output");
    assert_eq!(result.answer, "");
    assert_eq!(result.json, None);
    // Two refusals fed back, the third answer ended the run: no final ask.
    assert_eq!(result.iterations, 3);
    assert_eq!(root.calls(), 3);
    assert!(
        result
            .warnings
            .iter()
            .any(|w| w.starts_with("no answer: 3 final answers")
                && w.contains("at / (the top level)")),
        "{:?}",
        result.warnings
    );
    assert!(matches!(
        result.parse::<serde_json::Value>(),
        Err(RlmError::Answer(_))
    ));
}

#[tokio::test]
async fn zero_retries_ends_at_the_first_wrong_answer() {
    let root = MockBackend::scripted([fence("FINAL(42);")]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub)
        .output_schema(json!({"type": "string", "enum": ["yes", "no"]}))
        .output_schema_retries(0)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("...")).await;
    assert_eq!(result.stopped, StopReason::InvalidOutput);
    assert_eq!(root.calls(), 1);
}

#[tokio::test]
async fn scalars_and_strings_holding_json_convert() {
    let root = MockBackend::scripted(["FINAL(\"yes\")".to_owned()]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub)
        .output_schema(json!({"type": "string"}))
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("...")).await;
    assert_eq!(result.json, Some(json!("yes")));
    assert_eq!(result.answer, "\"yes\"");

    let root = MockBackend::scripted([fence(r#"let s = "{\"n\": [1, 2.5]}"; FINAL(s);"#)]);
    let rlm = builder(&root, &sub)
        .output_schema(json!({"type": "object", "properties": {"n": {"type": "array", "items": {"type": "number"}}}}))
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("...")).await;
    assert_eq!(result.json, Some(json!({"n": [1, 2.5]})));
}

#[tokio::test]
async fn the_final_ask_answer_is_validated_too() {
    let root = MockBackend::scripted([fence("let x = 1;"), "FINAL(not json)".to_owned()]);
    let sub = MockBackend::echo();
    let events = Arc::new(Events::default());
    let rlm = builder(&root, &sub)
        .output_schema(city_schema())
        .max_iterations(1)
        .observer(events.clone())
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("...")).await;
    assert_eq!(result.stopped, StopReason::InvalidOutput);
    assert_eq!(result.answer, "");
    assert!(seen(&root, 1).contains("must conform to the output schema"));
    assert_eq!(
        verdicts(&events),
        [TurnVerdict::NoAnswer, TurnVerdict::InvalidOutput]
    );

    let root = MockBackend::scripted([
        fence("let x = 1;"),
        r#"FINAL({"city": "Oslo", "population": 1})"#.to_owned(),
    ]);
    let rlm = builder(&root, &sub)
        .output_schema(city_schema())
        .max_iterations(1)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("...")).await;
    assert_eq!(result.stopped, StopReason::MaxIterations);
    assert_eq!(result.json, Some(json!({"city": "Oslo", "population": 1})));
}

#[test]
fn an_invalid_schema_is_a_build_error() {
    let root = MockBackend::echo();
    let error = builder(&root, &root)
        .output_schema(json!({"type": "object", "properties": {"a": {"type": 5}}}))
        .build()
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        error.starts_with("invalid output schema: not a valid JSON Schema"),
        "{error}"
    );
}

#[cfg(feature = "schemars")]
#[test]
fn a_rust_type_gives_the_schema_and_is_read_back() {
    #[derive(serde::Deserialize, schemars::JsonSchema, Debug, PartialEq)]
    struct Verdict {
        guilty: bool,
        reasons: Vec<String>,
    }
    let root = MockBackend::scripted([
        fence(r#"FINAL(#{guilty: "yes"});"#),
        fence(r#"FINAL(#{guilty: true, reasons: ["motive"]});"#),
    ]);
    let rlm = builder(&root, &root).output_type::<Verdict>().build_ok();
    let result = rlm
        .run_blocking("q", Context::from("..."))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        result.parse::<Verdict>().ok(),
        Some(Verdict {
            guilty: true,
            reasons: vec!["motive".into()]
        })
    );
    assert!(seen(&root, 1).contains("at /guilty:"));
}
