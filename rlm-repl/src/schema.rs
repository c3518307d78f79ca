//! Typed answers: an output schema (JSON Schema, draft 2020-12 or 7) that a run's final
//! answer, or a sub-call's reply, must conform to.
//!
//! [`OutputSchema::new`] compiles a schema once (with the `jsonschema` crate, without any
//! network retrieval: a `$ref` to another document is an error); [`OutputSchema::accept`]
//! turns an answer's text into the JSON value it means and validates it, or says what is
//! wrong (the first errors, each with its instance path); [`OutputSchema::describe`] is the
//! compact description the root model is shown, not the raw schema.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::RlmError;

/// The largest schema taken, as compact JSON (256 KiB).
pub const MAX_SCHEMA_BYTES: usize = 256 << 10;
/// Validation errors shown at most (the rest are counted).
const SHOWN_ERRORS: usize = 5;
/// Characters of one validation error's message kept (a message may quote a huge value).
const ERROR_CHARS: usize = 200;
/// Characters of a schema's description for the root model.
const DESCRIPTION_CHARS: usize = 3_000;
/// Levels of nesting the description shows.
const DESCRIPTION_DEPTH: usize = 10;

/// How `llm_query_json` / `llm_batch_json` ask a sub-model for JSON of a schema
/// (`--structured-output`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StructuredOutput {
    /// The provider's own constraint first (OpenAI's `response_format` `json_schema`,
    /// strict); for a model whose server refuses it, the schema in the prompt for the rest of
    /// the run (one warning). A schema strict mode cannot take goes in the prompt.
    #[default]
    Auto,
    /// Always the provider's constraint: a refusal is an `Error: ...` item. A schema strict
    /// mode cannot take goes in the prompt, with a warning.
    Native,
    /// Always the schema in the prompt.
    Prompt,
}

impl StructuredOutput {
    /// The flag's value: `auto`, `native` or `prompt`.
    pub fn as_str(self) -> &'static str {
        match self {
            StructuredOutput::Auto => "auto",
            StructuredOutput::Native => "native",
            StructuredOutput::Prompt => "prompt",
        }
    }
}

impl std::str::FromStr for StructuredOutput {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "auto" => Ok(StructuredOutput::Auto),
            "native" => Ok(StructuredOutput::Native),
            "prompt" => Ok(StructuredOutput::Prompt),
            other => Err(format!(
                "unknown structured output mode `{other}` (expected auto, native or prompt)"
            )),
        }
    }
}

/// A compiled JSON Schema for typed answers. Cheap to clone (shared).
///
/// ```
/// use rlm_repl::schema::OutputSchema;
/// use serde_json::json;
///
/// let schema = OutputSchema::new(json!({
///     "type": "object",
///     "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
///     "required": ["city", "population"],
/// }))?;
/// assert_eq!(
///     schema.accept(r#"{"city": "Oslo", "population": 709000}"#)?,
///     json!({"city": "Oslo", "population": 709000})
/// );
/// let refused = schema.accept(r#"{"city": "Oslo"}"#).unwrap_err();
/// assert!(refused.contains("\"population\" is a required property"), "{refused}");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct OutputSchema {
    inner: Arc<Inner>,
}

struct Inner {
    schema: Value,
    validator: jsonschema::Validator,
    description: String,
}

impl fmt::Debug for OutputSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutputSchema")
            .field("schema", &self.inner.schema)
            .finish_non_exhaustive()
    }
}

impl PartialEq for OutputSchema {
    fn eq(&self, other: &Self) -> bool {
        self.inner.schema == other.inner.schema
    }
}

impl OutputSchema {
    /// Compiles `schema`. Errors ([`RlmError::Schema`]): not an object or boolean, larger than
    /// [`MAX_SCHEMA_BYTES`], not a valid schema of its draft (`$schema`, default 2020-12), or
    /// a `$ref` that cannot be resolved within the document.
    pub fn new(schema: Value) -> Result<Self, RlmError> {
        if !schema.is_object() && !schema.is_boolean() {
            return Err(RlmError::Schema(
                "a JSON Schema is an object (or a boolean), not a JSON ".to_owned() + kind(&schema),
            ));
        }
        let size = serde_json::to_string(&schema).map_or(usize::MAX, |text| text.len());
        if size > MAX_SCHEMA_BYTES {
            return Err(RlmError::Schema(format!(
                "the schema is {size} bytes as compact JSON, over the limit of \
                 {MAX_SCHEMA_BYTES} bytes"
            )));
        }
        let validator = jsonschema::validator_for(&schema).map_err(|e| {
            let at = e.instance_path().as_str();
            let at = if at.is_empty() {
                String::new()
            } else {
                format!(" at {at}")
            };
            RlmError::Schema(format!(
                "not a valid JSON Schema{at}: {}",
                clip(&e.to_string())
            ))
        })?;
        let description = describe(&schema);
        Ok(Self {
            inner: Arc::new(Inner {
                schema,
                validator,
                description,
            }),
        })
    }

    /// The schema of the type `T`, derived by `schemars` (draft 2020-12).
    #[cfg(feature = "schemars")]
    pub fn for_type<T: schemars::JsonSchema>() -> Result<Self, RlmError> {
        Self::new(schemars::schema_for!(T).to_value())
    }

    /// The schema as given.
    pub fn schema(&self) -> &Value {
        &self.inner.schema
    }

    /// A compact, TypeScript-like description of the schema for a model's prompt (a few
    /// lines, not the raw schema): types, required and optional keys, enums, bounds,
    /// formats, descriptions, and named definitions once each.
    pub fn describe(&self) -> &str {
        &self.inner.description
    }

    /// Whether `value` conforms; else its first errors, one per line (`at /items/0: "x" is
    /// not of type "number"`), and how many more there were.
    pub fn validate(&self, value: &Value) -> Result<(), String> {
        let mut errors = self.inner.validator.iter_errors(value);
        let Some(first) = errors.next() else {
            return Ok(());
        };
        let mut lines = vec![error_line(&first)];
        let mut more = 0usize;
        for error in errors {
            if lines.len() < SHOWN_ERRORS {
                lines.push(error_line(&error));
            } else {
                more += 1;
            }
        }
        if more > 0 {
            lines.push(format!("(and {more} more)"));
        }
        Err(lines.join("\n"))
    }

    /// Whether `value` conforms (no error text built).
    pub fn is_valid(&self, value: &Value) -> bool {
        self.inner.validator.is_valid(value)
    }

    /// The JSON value an answer's text means, if it conforms: the text parsed as JSON (also
    /// inside one ```` ```json ```` fence), or else the text itself as a JSON string (so
    /// `FINAL("42")` fits `{"type": "string"}`). Otherwise the first errors, for the model.
    pub fn accept(&self, text: &str) -> Result<Value, String> {
        let parsed = parse_json_text(text, false);
        if let Some(value) = &parsed {
            if self.is_valid(value) {
                return Ok(parsed.unwrap_or_default());
            }
        }
        let as_string = Value::String(text.to_owned());
        if self.is_valid(&as_string) {
            return Ok(as_string);
        }
        match parsed {
            Some(value) => Err(self.validate(&value).err().unwrap_or_default()),
            None => Err(format!(
                "the answer is not JSON ({}); taken as a string: {}",
                json_error(text),
                self.validate(&as_string).err().unwrap_or_default()
            )),
        }
    }

    /// [`accept`](Self::accept) for a sub-model's reply: also takes the JSON out of prose
    /// around it (the first `{` or `[` to the last `}` or `]`).
    pub fn accept_reply(&self, text: &str) -> Result<Value, String> {
        match parse_json_text(text, true) {
            Some(value) => match self.validate(&value) {
                Ok(()) => Ok(value),
                Err(errors) => {
                    let as_string = Value::String(text.to_owned());
                    if self.is_valid(&as_string) {
                        Ok(as_string)
                    } else {
                        Err(errors)
                    }
                }
            },
            None => self.accept(text),
        }
    }

    /// Why OpenAI's strict mode (`"strict": true`) cannot take this schema, if it cannot: the
    /// root must be an object, and every object must list all its properties in `required`
    /// and set `"additionalProperties": false`.
    pub fn strict_problem(&self) -> Option<String> {
        let schema = self.schema();
        if schema.get("type").and_then(Value::as_str) != Some("object") {
            return Some("the top level is not {\"type\": \"object\"}".to_owned());
        }
        strict_problem_at(schema, "#", 0)
    }
}

/// The JSON type name of a value, for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn clip(text: &str) -> String {
    if text.chars().count() <= ERROR_CHARS {
        return text.to_owned();
    }
    let head: String = text.chars().take(ERROR_CHARS).collect();
    format!("{head}...")
}

fn error_line(error: &jsonschema::ValidationError<'_>) -> String {
    let path = error.instance_path().as_str();
    let at = if path.is_empty() {
        "/ (the top level)"
    } else {
        path
    };
    format!("at {at}: {}", clip(&error.to_string()))
}

/// Why `text` is not JSON, as serde_json says it.
fn json_error(text: &str) -> String {
    match serde_json::from_str::<Value>(text.trim()) {
        Ok(_) => "it is JSON".to_owned(),
        Err(e) => format!("line {} column {}: {e}", e.line(), e.column()),
    }
}

/// The JSON value in `text`: all of it (trimmed), or the body of a fenced block
/// (```` ```json ````); with `lenient`, also the span from the first `{` or `[` to the last
/// `}` or `]`.
pub(crate) fn parse_json_text(text: &str, lenient: bool) -> Option<Value> {
    let trimmed = text.trim();
    if let Ok(value) = serde_json::from_str(trimmed) {
        return Some(value);
    }
    if let Some(body) = fenced(trimmed) {
        if let Ok(value) = serde_json::from_str(body.trim()) {
            return Some(value);
        }
    }
    if lenient {
        let start = trimmed.find(['{', '['])?;
        let end = trimmed.rfind(['}', ']'])?;
        if end > start {
            return serde_json::from_str(&trimmed[start..=end]).ok();
        }
    }
    None
}

/// The body of the first fenced block of `text` (```` ``` ```` or `~~~`, any info string).
fn fenced(text: &str) -> Option<&str> {
    let fence = if text.contains("```") { "```" } else { "~~~" };
    let open = text.find(fence)?;
    let after = &text[open + fence.len()..];
    let body_start = after.find('\n')? + 1;
    let body = &after[body_start..];
    let close = body.find(fence)?;
    Some(&body[..close])
}

fn strict_problem_at(schema: &Value, at: &str, depth: usize) -> Option<String> {
    if depth > 32 {
        return None;
    }
    let object = schema.as_object()?;
    let is_object = object.get("type").and_then(Value::as_str) == Some("object")
        || object.contains_key("properties");
    if is_object {
        if object.get("additionalProperties") != Some(&Value::Bool(false)) {
            return Some(format!(
                "the object at {at} does not set \"additionalProperties\": false"
            ));
        }
        let properties = object.get("properties").and_then(Value::as_object);
        let required: BTreeSet<&str> = object
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(missing) = properties
            .into_iter()
            .flat_map(Map::keys)
            .find(|key| !required.contains(key.as_str()))
        {
            return Some(format!(
                "the object at {at} does not list \"{missing}\" in \"required\""
            ));
        }
    }
    for (key, value) in object {
        let children: Vec<(String, &Value)> = match key.as_str() {
            "properties" | "$defs" | "definitions" => value
                .as_object()
                .into_iter()
                .flatten()
                .map(|(name, sub)| (format!("{at}/{key}/{name}"), sub))
                .collect(),
            "items" | "additionalProperties" | "not" => vec![(format!("{at}/{key}"), value)],
            "anyOf" | "oneOf" | "allOf" | "prefixItems" => value
                .as_array()
                .into_iter()
                .flatten()
                .enumerate()
                .map(|(i, sub)| (format!("{at}/{key}/{i}"), sub))
                .collect(),
            _ => Vec::new(),
        };
        for (path, sub) in children {
            if let Some(problem) = strict_problem_at(sub, &path, depth + 1) {
                return Some(problem);
            }
        }
    }
    None
}

/// The compact description of `schema`, at most [`DESCRIPTION_CHARS`] characters.
fn describe(schema: &Value) -> String {
    let mut describer = Describer {
        root: schema,
        named: Vec::new(),
    };
    let mut out = describer.render(schema, 0);
    let mut shown = BTreeSet::new();
    let mut next = 0;
    while next < describer.named.len() {
        let name = describer.named[next].clone();
        next += 1;
        if !shown.insert(name.clone()) {
            continue;
        }
        if let Some(def) = definition(schema, &name) {
            let body = describer.render(def, 0);
            out.push_str(&format!("\n{name} = {body}"));
        }
        if out.len() > DESCRIPTION_CHARS {
            break;
        }
    }
    if out.chars().count() > DESCRIPTION_CHARS {
        let head: String = out.chars().take(DESCRIPTION_CHARS).collect();
        out = format!(
            "{head}\n... (description shortened; the whole schema is enforced: keep to the \
             types shown)"
        );
    }
    out
}

/// The definition `name` under `$defs` or `definitions`.
fn definition<'a>(root: &'a Value, name: &str) -> Option<&'a Value> {
    root.get("$defs")
        .and_then(|d| d.get(name))
        .or_else(|| root.get("definitions").and_then(|d| d.get(name)))
}

struct Describer<'a> {
    root: &'a Value,
    /// Definitions referred to, in order of first use.
    named: Vec<String>,
}

impl Describer<'_> {
    fn render(&mut self, schema: &Value, depth: usize) -> String {
        let object = match schema {
            Value::Bool(true) => return "any".to_owned(),
            Value::Bool(false) => return "never".to_owned(),
            Value::Object(object) => object,
            _ => return "any".to_owned(),
        };
        if depth > DESCRIPTION_DEPTH {
            return "...".to_owned();
        }
        let mut text = self.render_type(object, depth);
        let notes = notes(object);
        if !notes.is_empty() {
            text.push_str(&format!(" ({})", notes.join(", ")));
        }
        text
    }

    fn render_type(&mut self, object: &Map<String, Value>, depth: usize) -> String {
        if let Some(reference) = object.get("$ref").and_then(Value::as_str) {
            let name = reference
                .strip_prefix("#/$defs/")
                .or_else(|| reference.strip_prefix("#/definitions/"));
            return match name {
                Some(name) if definition(self.root, name).is_some() => {
                    self.named.push(name.to_owned());
                    name.to_owned()
                }
                _ if reference == "#" => "(the whole schema, recursively)".to_owned(),
                _ => format!("$ref {reference}"),
            };
        }
        if let Some(value) = object.get("const") {
            return value.to_string();
        }
        if let Some(values) = object.get("enum").and_then(Value::as_array) {
            return values
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join(" | ");
        }
        for (key, joiner) in [("anyOf", " | "), ("oneOf", " | "), ("allOf", " & ")] {
            if let Some(options) = object.get(key).and_then(Value::as_array) {
                let parts: Vec<String> = options
                    .iter()
                    .map(|option| self.render(option, depth + 1))
                    .collect();
                return format!("({})", parts.join(joiner));
            }
        }
        let types: Vec<&str> = match object.get("type") {
            Some(Value::String(t)) => vec![t.as_str()],
            Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
            _ if object.contains_key("properties") => vec!["object"],
            _ if object.contains_key("items") || object.contains_key("prefixItems") => {
                vec!["array"]
            }
            _ => Vec::new(),
        };
        if types.is_empty() {
            return "any".to_owned();
        }
        let parts: Vec<String> = types
            .into_iter()
            .map(|t| match t {
                "object" => self.render_object(object, depth),
                "array" => self.render_array(object, depth),
                other => other.to_owned(),
            })
            .collect();
        parts.join(" | ")
    }

    fn render_object(&mut self, object: &Map<String, Value>, depth: usize) -> String {
        let required: BTreeSet<&str> = object
            .get("required")
            .and_then(Value::as_array)
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let indent = "  ".repeat(depth + 1);
        let mut lines = Vec::new();
        if let Some(properties) = object.get("properties").and_then(Value::as_object) {
            for (name, sub) in properties {
                let optional = if required.contains(name.as_str()) {
                    ""
                } else {
                    "?"
                };
                let mut line = format!("{indent}{name}{optional}: {}", self.render(sub, depth + 1));
                if let Some(description) = sub.get("description").and_then(Value::as_str) {
                    line.push_str(&format!("  // {}", one_line(description, 80)));
                }
                lines.push(line);
            }
        }
        match object.get("additionalProperties") {
            Some(Value::Bool(false)) => {}
            Some(extra @ Value::Object(_)) => {
                lines.push(format!(
                    "{indent}[other keys]: {}",
                    self.render(extra, depth + 1)
                ));
            }
            _ if lines.is_empty() => lines.push(format!("{indent}[any keys]: any")),
            _ => {}
        }
        let close = "  ".repeat(depth);
        format!("{{\n{}\n{close}}}", lines.join(",\n"))
    }

    fn render_array(&mut self, object: &Map<String, Value>, depth: usize) -> String {
        if let Some(prefix) = object.get("prefixItems").and_then(Value::as_array) {
            let parts: Vec<String> = prefix.iter().map(|p| self.render(p, depth + 1)).collect();
            return format!("[{}]", parts.join(", "));
        }
        match object.get("items") {
            Some(Value::Array(tuple)) => {
                let parts: Vec<String> = tuple.iter().map(|p| self.render(p, depth + 1)).collect();
                format!("[{}]", parts.join(", "))
            }
            Some(items) => {
                let inner = self.render(items, depth + 1);
                if inner.contains(' ') && !inner.starts_with('{') {
                    format!("({inner})[]")
                } else {
                    format!("{inner}[]")
                }
            }
            None => "any[]".to_owned(),
        }
    }
}

/// The constraints of a schema worth telling a model: bounds, formats, patterns, sizes.
fn notes(object: &Map<String, Value>) -> Vec<String> {
    let mut notes = Vec::new();
    let number = |key: &str| object.get(key).filter(|v| v.is_number());
    for (key, shown) in [
        ("minimum", ">="),
        ("maximum", "<="),
        ("exclusiveMinimum", ">"),
        ("exclusiveMaximum", "<"),
        ("multipleOf", "multiple of"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("minProperties", "min keys"),
        ("maxProperties", "max keys"),
    ] {
        if let Some(value) = number(key) {
            notes.push(format!("{shown} {value}"));
        }
    }
    if object.get("uniqueItems") == Some(&Value::Bool(true)) {
        notes.push("unique items".to_owned());
    }
    if let Some(format) = object.get("format").and_then(Value::as_str) {
        notes.push(format!("format {format}"));
    }
    if let Some(pattern) = object.get("pattern").and_then(Value::as_str) {
        notes.push(format!("pattern {}", one_line(pattern, 80)));
    }
    notes
}

fn one_line(text: &str, max: usize) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let head: String = flat.chars().take(max).collect();
    format!("{head}...")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn invoice() -> Value {
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {
                "vendor": {"type": "string", "description": "Who issued it"},
                "total": {"type": "number", "minimum": 0},
                "currency": {"enum": ["EUR", "USD"]},
                "lines": {"type": "array", "items": {"$ref": "#/$defs/line"}, "minItems": 1},
                "note": {"type": ["string", "null"]}
            },
            "required": ["vendor", "total", "currency", "lines"],
            "additionalProperties": false,
            "$defs": {
                "line": {
                    "type": "object",
                    "properties": {"item": {"type": "string"}, "qty": {"type": "integer"}},
                    "required": ["item", "qty"],
                    "additionalProperties": false
                }
            }
        })
    }

    #[test]
    fn invalid_schemas_are_refused_with_the_reason() {
        let error = OutputSchema::new(json!({"type": "strnig"})).unwrap_err();
        assert!(
            error.to_string().contains("not a valid JSON Schema"),
            "{error}"
        );
        let error = OutputSchema::new(json!([1])).unwrap_err();
        assert!(error.to_string().contains("not a JSON array"), "{error}");
        let error = OutputSchema::new(json!({"$ref": "https://example.com/s.json"})).unwrap_err();
        assert!(
            error.to_string().contains("not a valid JSON Schema"),
            "{error}"
        );
        let huge: Map<String, Value> = (0..20_000)
            .map(|i| (format!("p{i}"), json!({"type": "string"})))
            .collect();
        let error = OutputSchema::new(json!({"properties": huge})).unwrap_err();
        assert!(error.to_string().contains("over the limit"), "{error}");
        let draft7 =
            json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "integer"});
        assert!(OutputSchema::new(draft7).is_ok());
    }

    #[test]
    fn answers_are_parsed_then_validated() {
        let schema = OutputSchema::new(invoice()).unwrap();
        let good = r#"{"vendor": "ACME", "total": 12.5, "currency": "EUR",
                      "lines": [{"item": "nails", "qty": 3}]}"#;
        assert_eq!(schema.accept(good).unwrap()["total"], json!(12.5));
        let fenced = format!("```json\n{good}\n```");
        assert!(schema.accept(&fenced).is_ok());
        let wrong = r#"{"vendor": "ACME", "total": -1, "currency": "GBP", "lines": [{"item": "x", "qty": "3"}]}"#;
        let errors = schema.accept(wrong).unwrap_err();
        assert!(errors.contains("at /total:"), "{errors}");
        assert!(errors.contains("at /currency:"), "{errors}");
        assert!(errors.contains("at /lines/0/qty:"), "{errors}");
        let prose = schema.accept("The vendor is ACME").unwrap_err();
        assert!(prose.contains("not JSON"), "{prose}");

        let text = OutputSchema::new(json!({"type": "string"})).unwrap();
        assert_eq!(text.accept("42").unwrap(), json!("42"));
        assert_eq!(text.accept("plain words").unwrap(), json!("plain words"));
        let number = OutputSchema::new(json!({"type": "integer"})).unwrap();
        assert_eq!(number.accept("42").unwrap(), json!(42));
        assert!(number.accept("forty-two").is_err());
    }

    #[test]
    fn replies_are_found_inside_prose() {
        let schema = OutputSchema::new(json!({"type": "object", "required": ["a"]})).unwrap();
        assert_eq!(
            schema
                .accept_reply("Sure! Here it is: {\"a\": 1} Hope it helps.")
                .unwrap(),
            json!({"a": 1})
        );
        assert!(schema.accept("Sure! Here it is: {\"a\": 1}").is_err());
    }

    #[test]
    fn the_description_is_compact_and_names_definitions_once() {
        let schema = OutputSchema::new(invoice()).unwrap();
        let text = schema.describe();
        assert!(text.contains("vendor: string  // Who issued it"), "{text}");
        assert!(text.contains("total: number (>= 0)"), "{text}");
        assert!(text.contains("currency: \"EUR\" | \"USD\""), "{text}");
        assert!(text.contains("lines: line[] (min items 1)"), "{text}");
        assert!(text.contains("note?: string | null"), "{text}");
        assert_eq!(text.matches("line = {").count(), 1, "{text}");
        assert!(text.len() < serde_json::to_string(&invoice()).unwrap().len() + 100);
    }

    #[test]
    fn strict_mode_needs_closed_objects_with_every_key_required() {
        let open = OutputSchema::new(
            json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}),
        )
        .unwrap();
        assert!(
            open.strict_problem()
                .unwrap()
                .contains("additionalProperties")
        );
        let closed = OutputSchema::new(json!({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"], "additionalProperties": false})).unwrap();
        assert_eq!(closed.strict_problem(), None);
        let optional = OutputSchema::new(invoice()).unwrap();
        assert!(optional.strict_problem().unwrap().contains("\"note\""));
        let array = OutputSchema::new(json!({"type": "array"})).unwrap();
        assert!(array.strict_problem().unwrap().contains("top level"));
    }
}
