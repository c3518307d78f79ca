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

/// A sub-model for `llm_batch_json`: the prompt names an item `item N`; items 0 and 1 answer
/// well at once, item 2 answers prose first and well when repaired, item 3 is wrong both
/// times, item 4 wraps its JSON in prose (taken out of it).
fn json_sub() -> MockBackend {
    MockBackend::from_fn(|request| {
        let first = request.messages[0].content.to_string();
        let item: usize = first
            .split("item ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(99);
        let repair = request.messages.len() > 1;
        Ok(match (item, repair) {
            (0 | 1, _) => format!(r#"{{"n": {item}, "label": "item {item}"}}"#),
            (2, false) => "I think the answer is two".to_owned(),
            (2, true) => r#"{"n": 2, "label": "two"}"#.to_owned(),
            (3, _) => r#"{"n": "three"}"#.to_owned(),
            (4, _) => r#"Here you go: {"n": 4, "label": "four"} - done"#.to_owned(),
            _ => "?".to_owned(),
        })
    })
}

fn item_schema_code() -> &'static str {
    r#"let schema = #{type: "object", properties: #{n: #{type: "integer"}, label: #{type: "string"}}, required: ["n", "label"], additionalProperties: false};"#
}

#[tokio::test]
async fn llm_batch_json_repairs_once_and_keeps_the_rest() {
    let code = format!(
        "{}\nlet out = llm_batch_json([0, 1, 2, 3, 4].map(|i| `item ${{i}} please`), schema, 2);\n\
         print(out.map(|x| type_of(x)));\nlet n = out.filter(|x| type_of(x) == \"map\").map(|x| x.n);\nprint(n);\nprint(out[3]);",
        item_schema_code()
    );
    let root = MockBackend::scripted([fence(&code), "FINAL(done)".to_owned()]);
    let sub = json_sub();
    let rlm = builder(&root, &sub)
        .structured_output(rlm_repl::StructuredOutput::Prompt)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("...")).await;
    let shown = seen(&root, 1);
    assert!(
        shown.contains(r#"["map", "map", "map", "string", "map"]"#),
        "{shown}"
    );
    assert!(shown.contains("[0, 1, 2, 4]"), "{shown}");
    assert!(
        shown.contains("Error: the sub-model's reply did not conform to the schema, even after one repair re-ask:")
            && shown.contains("at /n: \"three\" is not of type \"integer\""),
        "{shown}"
    );
    // Five asks and two repairs (items 2 and 3), all counted; item 3 failed.
    assert_eq!(sub.calls(), 7);
    assert_eq!(result.sub_calls, 7);
    assert_eq!(result.failed_sub_calls, 1);
    // Prompt mode: the schema is in the prompt, no response_format is sent; the repair
    // quotes the validation error.
    let requests = sub.requests();
    assert!(requests.iter().all(|r| r.response_format.is_none()));
    assert!(
        requests[0].messages[0]
            .content
            .contains("\"required\":[\"n\",\"label\"]")
    );
    let repair = requests
        .iter()
        .find(|r| r.messages.len() == 3 && r.messages[0].content.contains("item 3"))
        .map(|r| r.messages[2].content.to_string())
        .unwrap_or_default();
    assert!(
        repair.contains("at /n:") && repair.contains("not of type"),
        "{repair}"
    );
}

#[tokio::test]
async fn auto_falls_back_to_the_prompt_when_the_server_refuses_response_format() {
    let code = format!(
        "{}\nlet a = llm_batch_json([`item 0`, `item 1`], schema);\nlet b = llm_query_json(`item 4`, schema);\nprint([a[0].n, a[1].n, b.n]);",
        item_schema_code()
    );
    let root = MockBackend::scripted([fence(&code), "FINAL(done)".to_owned()]);
    let sub = json_sub().fail_when(
        |r| r.response_format.is_some(),
        rlm_core::LlmError::from_http_status(
            400,
            "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
            Some("invalid_request_error"),
            None,
            None,
        ),
    );
    let rlm = builder(&root, &sub).build_ok();
    let result = run_ok(&rlm, "q", Context::from("...")).await;
    assert!(seen(&root, 1).contains("[0, 1, 4]"), "{}", seen(&root, 1));
    let requests = sub.requests();
    // The batch went native (refused), then in the prompt; the later query went straight to
    // the prompt.
    let native = requests
        .iter()
        .filter(|r| r.response_format.is_some())
        .count();
    assert_eq!(native, 2);
    assert_eq!(requests.len(), 5);
    assert_eq!(result.failed_sub_calls, 0);
    let warned: Vec<&String> = result
        .warnings
        .iter()
        .filter(|w| w.contains("refused response_format"))
        .collect();
    assert_eq!(warned.len(), 1, "{:?}", result.warnings);
}

#[tokio::test]
async fn native_sends_the_strict_schema_and_keeps_refusals_as_errors() {
    let code = format!(
        "{}\nlet a = llm_batch_json([`item 0`, `item 1`], schema);\nprint(a[0].n);",
        item_schema_code()
    );
    let root = MockBackend::scripted([fence(&code), "FINAL(done)".to_owned()]);
    let sub = json_sub();
    let rlm = builder(&root, &sub)
        .structured_output(rlm_repl::StructuredOutput::Native)
        .build_ok();
    run_ok(&rlm, "q", Context::from("...")).await;
    let format = serde_json::to_value(&sub.requests()[0].response_format).unwrap_or_default();
    assert_eq!(format["type"], "json_schema");
    assert_eq!(format["json_schema"]["strict"], true);
    assert_eq!(
        format["json_schema"]["schema"]["required"],
        json!(["n", "label"])
    );

    // A server that refuses it: failed items, no fallback.
    let root = MockBackend::scripted([
        fence(&code.replace("print(a[0].n)", "print(a[0])")),
        "FINAL(done)".to_owned(),
    ]);
    let refusing = json_sub().fail_when(
        |r| r.response_format.is_some(),
        rlm_core::LlmError::from_http_status(
            400,
            "response_format not supported",
            None,
            None,
            None,
        ),
    );
    let rlm = builder(&root, &refusing)
        .structured_output(rlm_repl::StructuredOutput::Native)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("...")).await;
    assert!(
        seen(&root, 1).contains("Error: bad request (HTTP 400)"),
        "{}",
        seen(&root, 1)
    );
    assert_eq!(result.failed_sub_calls, 2);
    assert_eq!(refusing.calls(), 2);

    // An open schema (no additionalProperties: false) cannot be strict: it goes in the
    // prompt, and native mode says so.
    let open = "let schema = #{type: \"object\", properties: #{n: #{type: \"integer\"}}};\nlet a = llm_query_json(`item 0`, schema);\nprint(a.n);";
    let root = MockBackend::scripted([fence(open), "FINAL(done)".to_owned()]);
    let sub = json_sub();
    let rlm = builder(&root, &sub)
        .structured_output(rlm_repl::StructuredOutput::Native)
        .build_ok();
    let result = run_ok(&rlm, "q", Context::from("...")).await;
    assert!(sub.requests()[0].response_format.is_none());
    assert!(
        result
            .warnings
            .iter()
            .any(|w| w.contains("cannot be sent in strict mode")),
        "{:?}",
        result.warnings
    );
}

#[tokio::test]
async fn a_bad_schema_is_an_error_the_model_sees() {
    let root = MockBackend::scripted([
        fence("let a = llm_query_json(\"x\", #{type: \"strnig\"});"),
        "FINAL(done)".to_owned(),
    ]);
    let sub = json_sub();
    let rlm = builder(&root, &sub).build_ok();
    run_ok(&rlm, "q", Context::from("...")).await;
    assert!(
        seen(&root, 1).contains("llm_query_json: invalid output schema: not a valid JSON Schema"),
        "{}",
        seen(&root, 1)
    );
    assert_eq!(sub.calls(), 0);
}
