//! The user's context, as the REPL holds it.

use std::fmt;

use rhai::{Dynamic, ImmutableString};
use serde::Serialize;
use serde_json::Value;

use crate::words::count_of;

/// The data a run is about. It lives in the REPL as the variable `context` and is never
/// pasted into the root model's prompt; the root model only sees its [`ContextInfo`].
#[derive(Debug, Clone, PartialEq)]
pub enum Context {
    /// One string (a book, a log file).
    Text(String),
    /// A list of documents (a directory: one item per file).
    Documents(Vec<String>),
    /// Structured data (a map or array from JSON).
    Json(Value),
    /// A context loaded once and shared by many runs (a server's `--context`): every run's
    /// REPL holds the same string bytes, never a copy.
    Shared(SharedContext),
}

/// A [`Context`] converted once into the REPL's form, for many runs.
///
/// Cloning it, or building a REPL over it, copies no string data: strings are shared
/// (reference-counted) and only the array or map skeleton is cloned (one pointer per item).
#[derive(Clone)]
pub struct SharedContext {
    value: Dynamic,
    info: ContextInfo,
    /// Identity: clones of one shared context are equal.
    id: std::sync::Arc<()>,
}

impl SharedContext {
    /// Converts `context` (one pass over it; its strings move, they are not copied).
    pub fn new(context: Context) -> Self {
        match context {
            Context::Shared(shared) => shared,
            context => Self {
                info: context.info(),
                value: context.into_value(),
                id: std::sync::Arc::new(()),
            },
        }
    }

    /// What the root model is told about it (computed once).
    pub fn info(&self) -> &ContextInfo {
        &self.info
    }

    /// The value a REPL holds as `context`.
    pub(crate) fn value(&self) -> Dynamic {
        self.value.clone()
    }
}

impl fmt::Debug for SharedContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedContext")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Clones of one shared context are equal; two made separately are not (comparing the data
/// would take a pass over it).
impl PartialEq for SharedContext {
    fn eq(&self, other: &Self) -> bool {
        std::sync::Arc::ptr_eq(&self.id, &other.id)
    }
}

impl From<SharedContext> for Context {
    fn from(shared: SharedContext) -> Self {
        Context::Shared(shared)
    }
}

impl Context {
    /// The context as the REPL holds it, a Rhai value (one pass over it): strings move into
    /// shared immutable strings, never copied again; JSON becomes maps and arrays.
    pub(crate) fn into_value(self) -> Dynamic {
        match self {
            Context::Shared(shared) => shared.value(),
            Context::Text(text) => Dynamic::from(ImmutableString::from(text)),
            Context::Documents(documents) => Dynamic::from_array(
                documents
                    .into_iter()
                    .map(|d| Dynamic::from(ImmutableString::from(d)))
                    .collect(),
            ),
            Context::Json(value) => {
                rhai::serde::to_dynamic(&value).unwrap_or_else(|_| Dynamic::from(value.to_string()))
            }
        }
    }

    /// What the root model is told about the context.
    pub fn info(&self) -> ContextInfo {
        const SHOWN_ITEMS: usize = 10;
        match self {
            Context::Shared(shared) => shared.info.clone(),
            Context::Text(text) => ContextInfo {
                kind: "string",
                total_chars: text.chars().count(),
                lines: Some(count_lines(text)),
                items: None,
                first_item_chars: Vec::new(),
                keys: Vec::new(),
                preview: preview(text),
            },
            Context::Documents(documents) => ContextInfo {
                kind: "array of strings",
                total_chars: documents.iter().map(|d| d.chars().count()).sum(),
                lines: None,
                items: Some(documents.len()),
                first_item_chars: documents
                    .iter()
                    .take(SHOWN_ITEMS)
                    .map(|d| d.chars().count())
                    .collect(),
                keys: Vec::new(),
                preview: items_preview(documents.iter().map(|d| Value::String(d.clone()))),
            },
            Context::Json(value) => {
                let (kind, items, first_item_chars, keys) = match value {
                    Value::Array(items) => (
                        "array (from JSON)",
                        Some(items.len()),
                        items.iter().take(SHOWN_ITEMS).map(json_chars).collect(),
                        match items.first() {
                            Some(Value::Object(first)) => describe_keys(first),
                            _ => Vec::new(),
                        },
                    ),
                    Value::Object(map) => (
                        "map (from JSON)",
                        Some(map.len()),
                        map.values().take(SHOWN_ITEMS).map(json_chars).collect(),
                        describe_keys(map),
                    ),
                    _ => ("value (from JSON)", None, Vec::new(), Vec::new()),
                };
                let preview = match value {
                    Value::Array(items) => items_preview(items.iter().cloned()),
                    Value::String(text) => preview(text),
                    other => preview(&other.to_string()),
                };
                ContextInfo {
                    kind,
                    total_chars: json_chars(value),
                    lines: None,
                    items,
                    first_item_chars,
                    keys,
                    preview,
                }
            }
        }
    }
}

/// What a child run's root model is told about its context, a value of its parent's scope
/// (only the first items are converted for the preview and the keys).
pub(crate) fn value_info(value: &rhai::Dynamic) -> ContextInfo {
    const SHOWN_ITEMS: usize = 10;
    let json = |item: &rhai::Dynamic| {
        rhai::serde::from_dynamic::<Value>(item).unwrap_or_else(|_| Value::String(item.to_string()))
    };
    let chars = |item: &rhai::Dynamic| match item.as_immutable_string_ref() {
        Ok(text) => text.chars().count(),
        Err(_) => json_chars(&json(item)),
    };
    let mut info = ContextInfo {
        kind: "value",
        total_chars: 0,
        lines: None,
        items: None,
        first_item_chars: Vec::new(),
        keys: Vec::new(),
        preview: String::new(),
    };
    if let Ok(text) = value.as_immutable_string_ref() {
        info.kind = "string";
        info.total_chars = text.chars().count();
        info.lines = Some(count_lines(&text));
        info.preview = preview(&text);
    } else if let Ok(items) = value.as_array_ref() {
        info.kind = if items.iter().all(rhai::Dynamic::is_string) {
            "array of strings"
        } else {
            "array"
        };
        info.total_chars = items.iter().map(chars).sum();
        info.items = Some(items.len());
        info.first_item_chars = items.iter().take(SHOWN_ITEMS).map(chars).collect();
        info.preview = items_preview(items.iter().take(SHOWN_ITEMS).map(json));
    } else if let Ok(map) = value.as_map_ref() {
        let first: serde_json::Map<String, Value> = map
            .iter()
            .take(SHOWN_KEYS)
            .map(|(key, item)| (key.to_string(), json(item)))
            .collect();
        info.kind = "map";
        info.total_chars = chars(value);
        info.items = Some(map.len());
        info.first_item_chars = map.values().take(SHOWN_ITEMS).map(chars).collect();
        info.keys = describe_keys(&first);
        if map.len() > SHOWN_KEYS {
            info.keys
                .push(format!("... {} more", map.len() - SHOWN_KEYS));
        }
    } else {
        info.total_chars = chars(value);
        info.preview = preview(&value.to_string());
    }
    info
}

/// Lines of `text` (a last line without a line break counts).
fn count_lines(text: &str) -> usize {
    let breaks = text.bytes().filter(|&b| b == b'\n').count();
    breaks + usize::from(!text.is_empty() && !text.ends_with('\n'))
}

/// Characters of the context shown to the root model as a preview.
pub(crate) const PREVIEW_CHARS: usize = 200;

/// Keys described in the first message (a map with more says how many more).
const SHOWN_KEYS: usize = 20;

/// The first [`PREVIEW_CHARS`] characters of `text`.
fn preview(text: &str) -> String {
    match text.char_indices().nth(PREVIEW_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// The first items as JSON text, one a line, within about [`PREVIEW_CHARS`] characters.
fn items_preview(items: impl Iterator<Item = Value>) -> String {
    let mut out = String::new();
    for (i, item) in items.enumerate() {
        let used = out.chars().count();
        if used >= PREVIEW_CHARS {
            break;
        }
        let line = format!("[{i}] {item}");
        out.push_str(&preview_of(&line, PREVIEW_CHARS - used));
        out.push('\n');
    }
    out.truncate(out.trim_end().len());
    out
}

fn preview_of(text: &str, chars: usize) -> String {
    match text.char_indices().nth(chars) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// `name (type)` for the first [`SHOWN_KEYS`] keys of a map, then how many more there are.
fn describe_keys(map: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = map
        .iter()
        .take(SHOWN_KEYS)
        .map(|(key, value)| format!("{key} ({})", value_type(value)))
        .collect();
    if map.len() > SHOWN_KEYS {
        keys.push(format!("... {} more", map.len() - SHOWN_KEYS));
    }
    keys
}

/// A JSON value's type as the REPL sees it.
fn value_type(value: &Value) -> String {
    match value {
        Value::Null => "()".to_owned(),
        Value::Bool(_) => "bool".to_owned(),
        Value::Number(n) if n.is_f64() => "float".to_owned(),
        Value::Number(_) => "int".to_owned(),
        Value::String(s) => format!("string, {}", count_of(s.chars().count(), "char")),
        Value::Array(items) => format!("array, {}", count_of(items.len(), "item")),
        Value::Object(map) => format!("map, {}", count_of(map.len(), "key")),
    }
}

/// The length of a JSON value as compact text (a string's own length for strings).
fn json_chars(value: &Value) -> usize {
    match value {
        Value::String(s) => s.chars().count(),
        other => other.to_string().chars().count(),
    }
}

impl From<String> for Context {
    fn from(text: String) -> Self {
        Context::Text(text)
    }
}

impl From<&str> for Context {
    fn from(text: &str) -> Self {
        Context::Text(text.to_owned())
    }
}

impl From<Vec<String>> for Context {
    fn from(documents: Vec<String>) -> Self {
        Context::Documents(documents)
    }
}

impl From<Value> for Context {
    fn from(value: Value) -> Self {
        Context::Json(value)
    }
}

/// The shape and size of a [`Context`]: what the root model is told instead of the data.
/// Read back from a trace, what the trace lacks is empty, and `kind` is not read (it is one
/// of the engine's own names).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct ContextInfo {
    /// `"string"`, `"array of strings"`, `"array (from JSON)"`, `"map (from JSON)"`, ...
    #[serde(skip_deserializing)]
    pub kind: &'static str,
    /// Characters over the whole context.
    pub total_chars: usize,
    /// Number of lines, for a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
    /// Number of items, for lists and maps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<usize>,
    /// Characters of the first few items, for lists and maps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_item_chars: Vec<usize>,
    /// `name (type)` of a map's keys (of the first item's, for an array of maps), at most 20,
    /// then `... N more`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// The start of the data (about 200 characters; the first items of an array, one a
    /// line). Shown to the root model, not written to traces.
    #[serde(skip)]
    pub preview: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_each_kind() {
        let text = Context::from("héllo").info();
        assert_eq!(
            (text.kind, text.total_chars, text.items),
            ("string", 5, None)
        );

        let docs = Context::from(vec!["ab".to_owned(), "cde".to_owned()]).info();
        assert_eq!(docs.items, Some(2));
        assert_eq!(docs.first_item_chars, vec![2, 3]);
        assert_eq!(docs.total_chars, 5);

        let json = Context::from(serde_json::json!({"a": "xyz", "b": [1, 2]})).info();
        assert_eq!(json.kind, "map (from JSON)");
        assert_eq!(json.items, Some(2));
        assert_eq!(json.first_item_chars, vec![3, 5]);
    }
}
