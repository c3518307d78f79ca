//! The cost of typed answers: compiling a realistic output schema, validating a final answer
//! (parse + validate), refusing a wrong one (with its error text), validating one
//! `llm_batch_json` item, and a 1,000-item `llm_batch_json` against `llm_batch` through the
//! REPL with a zero-latency mock (the engine's whole overhead per item).
//!
//! Run with `cargo bench -p rlm-repl --bench typed`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_core::mock::MockBackend;
use rlm_repl::schema::OutputSchema;
use rlm_repl::{Context, Repl};
use serde_json::{Value, json};

/// An invoice extraction schema: nested objects, an array of line items through `$defs`,
/// enums, bounds, a date format and a pattern (about 1.3 KB).
fn invoice_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "properties": {
            "invoice_number": {"type": "string", "pattern": "^INV-[0-9]{4,}$"},
            "issued": {"type": "string", "format": "date"},
            "vendor": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "vat_id": {"type": ["string", "null"]},
                    "country": {"type": "string", "minLength": 2, "maxLength": 2}
                },
                "required": ["name", "vat_id", "country"],
                "additionalProperties": false
            },
            "currency": {"enum": ["EUR", "USD", "GBP", "NOK"]},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}, "minItems": 1},
            "total": {"type": "number", "minimum": 0},
            "paid": {"type": "boolean"},
            "notes": {"type": "array", "items": {"type": "string"}, "maxItems": 10}
        },
        "required": ["invoice_number", "issued", "vendor", "currency", "lines", "total", "paid"],
        "additionalProperties": false,
        "$defs": {
            "line": {
                "type": "object",
                "properties": {
                    "description": {"type": "string"},
                    "quantity": {"type": "integer", "minimum": 1},
                    "unit_price": {"type": "number", "minimum": 0},
                    "vat_rate": {"enum": [0, 0.06, 0.12, 0.25]}
                },
                "required": ["description", "quantity", "unit_price", "vat_rate"],
                "additionalProperties": false
            }
        }
    })
}

fn invoice_answer(lines: usize, wrong: bool) -> String {
    let items: Vec<Value> = (0..lines)
        .map(|i| {
            json!({
                "description": format!("item number {i} of the order"),
                "quantity": if wrong && i == lines - 1 { json!("3") } else { json!(i + 1) },
                "unit_price": 12.5 + i as f64,
                "vat_rate": 0.25
            })
        })
        .collect();
    json!({
        "invoice_number": "INV-20931",
        "issued": "2026-11-30",
        "vendor": {"name": "ACME Tools AS", "vat_id": "NO123456789MVA", "country": "NO"},
        "currency": if wrong { "SEK" } else { "NOK" },
        "lines": items,
        "total": 1234.5,
        "paid": false,
        "notes": ["net 30"]
    })
    .to_string()
}

/// Median time of `f` over `runs` runs of `per_run` calls, per call.
fn per_call(runs: usize, per_run: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..per_run {
                f();
            }
            started.elapsed() / per_run as u32
        })
        .collect();
    times.sort();
    times[runs / 2]
}

fn report(label: &str, each: Duration) {
    println!("{label:<64} {:>9.2} µs", each.as_secs_f64() * 1e6);
}

fn main() {
    let schema_value = invoice_schema();
    println!(
        "schema: {} bytes as compact JSON",
        schema_value.to_string().len()
    );
    report(
        "compile the schema (OutputSchema::new)",
        per_call(11, 200, || {
            black_box(OutputSchema::new(black_box(schema_value.clone())).ok());
        }),
    );
    let schema = OutputSchema::new(schema_value).unwrap_or_else(|e| panic!("{e}"));
    for lines in [3, 50] {
        let good = invoice_answer(lines, false);
        let bad = invoice_answer(lines, true);
        assert!(schema.accept(&good).is_ok());
        assert!(schema.accept(&bad).is_err());
        report(
            &format!(
                "accept a conforming answer ({lines} lines, {} B)",
                good.len()
            ),
            per_call(11, 2_000, || {
                black_box(schema.accept(black_box(&good)).ok());
            }),
        );
        report(
            &format!("refuse a wrong answer, errors formatted ({lines} lines)"),
            per_call(11, 2_000, || {
                black_box(schema.accept(black_box(&bad)).err());
            }),
        );
    }

    // One llm_batch_json item: a small object.
    let item_schema = OutputSchema::new(json!({
        "type": "object",
        "properties": {"n": {"type": "integer"}, "label": {"type": "string"}},
        "required": ["n", "label"],
        "additionalProperties": false
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    let reply = r#"{"n": 42, "label": "the answer"}"#;
    report(
        "validate one llm_batch_json item (accept_reply, small object)",
        per_call(11, 20_000, || {
            black_box(item_schema.accept_reply(black_box(reply)).ok());
        }),
    );

    // Through the REPL: 1,000 items, llm_batch vs llm_batch_json (prompt mode), zero latency.
    let sub = MockBackend::from_fn(|_| Ok(r#"{"n": 42, "label": "the answer"}"#.to_owned()));
    let mut repl = Repl::builder(Context::from(""))
        .sub_backend(Arc::new(sub), "sub")
        .max_concurrent(64)
        .structured_output(rlm_repl::StructuredOutput::Prompt)
        .build();
    let setup = repl.execute(
        "let prompts = range(1000).map(|i| `item ${i}`);\n\
         let schema = #{type: \"object\", properties: #{n: #{type: \"integer\"}, label: #{type: \"string\"}}, required: [\"n\", \"label\"], additionalProperties: false};",
    );
    assert_eq!(setup.error, None, "{}", setup.output);
    for (label, code) in [
        (
            "llm_batch of 1,000 (per item)",
            "let a = llm_batch(prompts);",
        ),
        (
            "llm_batch_json of 1,000 (per item)",
            "let b = llm_batch_json(prompts, schema);",
        ),
    ] {
        let each = per_call(5, 1, || {
            let outcome = repl.execute(code);
            assert_eq!(outcome.error, None, "{}", outcome.output);
        }) / 1_000;
        report(label, each);
    }
}
