//! Typed answers for the servers: an OpenAI `response_format` (or an MCP `output_schema`) as
//! the run's output schema, and what a client is told when the run gave no conforming
//! answer.
//!
//! - `{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}`: `schema` is the
//!   output schema (`strict` is accepted and always holds: a non-conforming answer is never
//!   sent).
//! - `{"type": "json_object"}`: the answer must be a JSON object (`{"type": "object"}`).
//! - `{"type": "text"}` or none: free text.
//!
//! The Responses API's `text.format` (`{"type": "json_schema", "name", "schema", "strict"}`,
//! not nested) is taken too.

use rlm_repl::{OutputSchema, RunResult};
use serde_json::{Value, json};

/// The output schema a request's `response_format` asks for (`None`: free text), or why it
/// cannot be used (a 400).
pub fn from_response_format(format: Option<&Value>) -> Result<Option<OutputSchema>, String> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let kind = format.get("type").and_then(Value::as_str);
    match kind {
        Some("text") => Ok(None),
        Some("json_object") => OutputSchema::new(json!({"type": "object"}))
            .map(Some)
            .map_err(|e| e.to_string()),
        Some("json_schema") => {
            // Chat completions nest it under `json_schema`; the Responses API's `text.format`
            // has it at the top.
            let schema = format
                .get("json_schema")
                .and_then(|spec| spec.get("schema"))
                .or_else(|| format.get("schema"))
                .ok_or_else(|| {
                    "response_format json_schema needs json_schema.schema (a JSON Schema)"
                        .to_owned()
                })?;
            from_value(schema).map(Some)
        }
        _ => Err(format!(
            "response_format type {} is not supported (text, json_object or json_schema)",
            kind.map_or_else(|| "(missing)".to_owned(), |k| format!("{k:?}"))
        )),
    }
}

/// A schema a client sent as JSON, compiled; the error says what is wrong with it.
pub fn from_value(schema: &Value) -> Result<OutputSchema, String> {
    OutputSchema::new(schema.clone()).map_err(|e| format!("response_format: {e}"))
}

/// Why a run with an output schema has no conforming answer to send, or `None` when it has
/// one (or had no schema: `typed` false).
pub fn schema_not_met(result: &RunResult, typed: bool) -> Option<String> {
    if !typed || result.json.is_some() {
        return None;
    }
    let why = result
        .warnings
        .iter()
        .find(|w| w.starts_with("no answer:"))
        .map_or_else(
            || format!("the run stopped ({}) without an answer", result.stopped),
            |w| w.trim_start_matches("no answer: ").to_owned(),
        );
    Some(format!(
        "no answer conforming to the response format's schema (stopped: {}): {why}",
        result.stopped
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_formats_map_to_schemas() {
        assert!(matches!(from_response_format(None), Ok(None)));
        assert!(matches!(
            from_response_format(Some(&json!({"type": "text"}))),
            Ok(None)
        ));
        let object = from_response_format(Some(&json!({"type": "json_object"})))
            .ok()
            .flatten();
        assert_eq!(
            object.map(|s| s.schema().clone()),
            Some(json!({"type": "object"}))
        );
        let schema = json!({"type": "object", "properties": {"a": {"type": "integer"}}});
        let given = from_response_format(Some(&json!({
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": schema, "strict": true}
        })))
        .ok()
        .flatten();
        assert_eq!(given.map(|s| s.schema().clone()), Some(schema.clone()));
        let flat = from_response_format(Some(&json!({
            "type": "json_schema", "name": "x", "schema": schema, "strict": true
        })))
        .ok()
        .flatten();
        assert!(flat.is_some());
        for bad in [
            json!({"type": "json_schema", "json_schema": {"name": "x"}}),
            json!({"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}),
            json!({"type": "xml"}),
        ] {
            assert!(from_response_format(Some(&bad)).is_err(), "{bad}");
        }
    }
}
