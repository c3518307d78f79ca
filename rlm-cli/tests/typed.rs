//! Typed answers end to end: `--output-schema`, `--output-schema-retries`,
//! `--structured-output`, and `llm_query_json` / `llm_batch_json`, against a loopback mock
//! server.

mod common;

use common::{ROOT, SUB, Scratch, code, requests_for, run, server, upper};
use rlm_tests::{MockServer, Reply, ServerRequest, scripted_turn};
use serde_json::{Value, json};

const CITY: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "properties": {
    "city": {"type": "string"},
    "population": {"type": "integer", "minimum": 0}
  },
  "required": ["city", "population"],
  "additionalProperties": false
}"#;

fn schema_file(scratch: &Scratch, text: &str) -> String {
    scratch.write("schema.json", text.as_bytes());
    scratch.path("schema.json").to_string_lossy().into_owned()
}

#[tokio::test]
async fn a_conforming_answer_is_one_line_of_compact_json() {
    let scratch = Scratch::new("typed-ok");
    let schema = schema_file(&scratch, CITY);
    let replies = vec![code(
        "let answer = #{city: \"Oslo\", population: 709000};\nFINAL_VAR(\"answer\");",
    )];
    let server = server(replies.clone(), upper).await;
    let out = run(&server, &["--query", "q", "--output-schema", &schema], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "{\"city\":\"Oslo\",\"population\":709000}\n");
    // The root model was told the schema, compactly.
    let first = requests_for(&server, ROOT)[0].messages()[1]["content"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(first.contains("population: integer (>= 0)"), "{first}");

    let server = self::server(replies, upper).await;
    let out = run(
        &server,
        &["--query", "q", "--output-schema", &schema, "--json"],
        None,
    )
    .await;
    let json = out.json();
    assert_eq!(
        json["answer"],
        json!({"city": "Oslo", "population": 709000})
    );
    assert_eq!(json["stopped"], "final");
}

#[tokio::test]
async fn a_wrong_shape_is_refused_then_corrected() {
    let scratch = Scratch::new("typed-fix");
    let schema = schema_file(&scratch, CITY);
    let server = server(
        vec![
            code("FINAL(#{city: \"Oslo\"});"),
            "FINAL({\"city\": \"Oslo\", \"population\": 709000})".to_owned(),
        ],
        upper,
    )
    .await;
    let out = run(&server, &["--query", "q", "--output-schema", &schema], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    assert_eq!(out.stdout, "{\"city\":\"Oslo\",\"population\":709000}\n");
    let feedback = requests_for(&server, ROOT)[1].last_user().to_owned();
    assert!(
        feedback.contains("\"population\" is a required property"),
        "{feedback}"
    );
}

#[tokio::test]
async fn an_answer_that_never_conforms_is_exit_3_with_empty_stdout() {
    let scratch = Scratch::new("typed-never");
    let schema = schema_file(&scratch, CITY);
    let wrong = code("FINAL(\"Oslo, about 700k\");");
    let server = server(vec![wrong.clone(), wrong.clone()], upper).await;
    let out = run(
        &server,
        &[
            "--query",
            "q",
            "--output-schema",
            &schema,
            "--output-schema-retries",
            "1",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains("did not conform to the output schema"),
        "{out:#?}"
    );
    assert_eq!(requests_for(&server, ROOT).len(), 2);

    let server = self::server(vec![wrong.clone(), wrong], upper).await;
    let out = run(
        &server,
        &[
            "--query",
            "q",
            "--output-schema",
            &schema,
            "--output-schema-retries",
            "1",
            "--json",
        ],
        None,
    )
    .await;
    assert_eq!(out.code, Some(3), "{out:#?}");
    let json = out.json();
    assert_eq!(json["stopped"], "invalid_output");
    assert_eq!(json["answer"], Value::Null);
}

#[tokio::test]
async fn bad_schema_files_are_usage_errors_naming_the_problem() {
    let scratch = Scratch::new("typed-bad");
    let server = server(vec![code("FINAL(1);")], upper).await;
    for (text, says) in [
        ("{\"type\": \"object\",}", "not JSON (line 1 column"),
        ("{\"type\": \"strnig\"}", "not a valid JSON Schema"),
        ("[1, 2]", "not a JSON array"),
    ] {
        let schema = schema_file(&scratch, text);
        let out = run(&server, &["--query", "q", "--output-schema", &schema], None).await;
        out.assert_clean_error(2);
        assert!(out.stderr.contains("--output-schema"), "{out:#?}");
        assert!(out.stderr.contains(says), "{says}: {out:#?}");
    }
    let huge = format!("{{\"description\": \"{}\"}}", "x".repeat(2 << 20));
    let schema = schema_file(&scratch, &huge);
    let out = run(&server, &["--query", "q", "--output-schema", &schema], None).await;
    out.assert_clean_error(2);
    assert!(
        out.stderr.contains("the most a schema file may hold"),
        "{out:#?}"
    );
    // Nothing was sent.
    assert_eq!(server.request_count(), 0);
}

/// The sub-model of the JSON sub-call tests: the first message names `item N`; items 0 and 1
/// answer well, item 2 badly and then well when repaired, item 3 badly both times.
fn json_reply(request: &ServerRequest) -> String {
    let first = request.messages()[0]["content"]
        .as_str()
        .unwrap_or_default();
    let item: usize = first
        .split("item ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(99);
    let repair = request.messages().len() > 1;
    match (item, repair) {
        (0 | 1, _) => format!("{{\"n\": {item}}}"),
        (2, false) => "two, I believe".to_owned(),
        (2, true) => "{\"n\": 2}".to_owned(),
        _ => "{\"n\": \"three\"}".to_owned(),
    }
}

const BATCH: &str = "let schema = #{type: \"object\", properties: #{n: #{type: \"integer\"}}, required: [\"n\"], additionalProperties: false};\n\
let out = llm_batch_json([0, 1, 2, 3].map(|i| `item ${i}`), schema, 2);\n\
let ok = out.filter(|x| type_of(x) == \"map\").map(|x| x.n);\n\
let errors = out.filter(|x| type_of(x) == \"string\");\n\
FINAL(`${ok} ${errors.len()} ${errors[0].starts_with(\"Error:\")}`);";

async fn json_server(refuse_format: bool) -> MockServer {
    let replies = vec![code(BATCH)];
    MockServer::start(move |request: &ServerRequest| {
        if request.model() == ROOT {
            scripted_turn(request, &replies)
        } else if refuse_format && request.body.get("response_format").is_some() {
            Reply::error(
                400,
                "invalid_request_error",
                "unsupported_parameter",
                "Invalid parameter: 'response_format' of type 'json_schema' is not supported with this model.",
            )
        } else {
            Reply::completion_for(request, json_reply(request))
        }
    })
    .await
    .expect("the mock server starts")
}

#[tokio::test]
async fn llm_batch_json_repairs_once_and_keeps_the_other_items() {
    let server = json_server(false).await;
    let out = run(
        &server,
        &["--query", "q", "--json", "--structured-output", "native"],
        None,
    )
    .await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let json = out.json();
    assert_eq!(json["answer"], "[0, 1, 2] 1 true");
    // Four asks, two repairs (items 2 and 3); item 3 failed.
    let subs = requests_for(&server, SUB);
    assert_eq!(subs.len(), 6);
    assert_eq!(json["sub_calls"], 6);
    assert_eq!(json["failed_sub_calls"], 1);
    // Native: every request carried the strict schema.
    for request in &subs {
        let format = &request.body["response_format"];
        assert_eq!(format["type"], "json_schema", "{format}");
        assert_eq!(format["json_schema"]["strict"], true);
        assert_eq!(format["json_schema"]["schema"]["required"], json!(["n"]));
    }
    let repair = subs
        .iter()
        .find(|r| r.messages().len() == 3)
        .map(|r| r.last_user().to_owned())
        .unwrap_or_default();
    assert!(repair.contains("not valid for the JSON Schema"), "{repair}");
}

#[tokio::test]
async fn auto_falls_back_to_the_prompt_when_response_format_is_refused() {
    let server = json_server(true).await;
    let out = run(&server, &["--query", "q", "--json"], None).await;
    assert_eq!(out.code, Some(0), "{out:#?}");
    let json = out.json();
    assert_eq!(json["answer"], "[0, 1, 2] 1 true");
    let subs = requests_for(&server, SUB);
    // Four refused asks, four asks with the schema in the prompt, two repairs.
    let native = subs
        .iter()
        .filter(|r| r.body.get("response_format").is_some())
        .count();
    assert_eq!(native, 4);
    assert_eq!(subs.len(), 10);
    assert!(
        subs.iter()
            .filter(|r| r.body.get("response_format").is_none())
            .all(|r| r.messages()[0]["content"]
                .as_str()
                .is_some_and(|c| c.contains("conforms to this JSON Schema"))),
    );
    let warnings = json["warnings"].as_array().cloned().unwrap_or_default();
    let refused: Vec<&Value> = warnings
        .iter()
        .filter(|w| {
            w.as_str()
                .is_some_and(|w| w.contains("refused response_format"))
        })
        .collect();
    assert_eq!(refused.len(), 1, "{warnings:?}");

    // --structured-output native keeps the refusals as failed items.
    let server = json_server(true).await;
    let out = run(
        &server,
        &["--query", "q", "--json", "--structured-output", "native"],
        None,
    )
    .await;
    let json = out.json();
    assert_eq!(json["answer"], "[] 4 true");
    assert_eq!(json["failed_sub_calls"], 4);
}
