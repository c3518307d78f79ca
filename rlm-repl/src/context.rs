//! The user's context, as the REPL holds it.

use std::fmt;

use rhai::Dynamic;
use serde::Serialize;
use serde_json::Value;

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
                value: crate::repl::context_value(context),
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
    /// What the root model is told about the context.
    pub fn info(&self) -> ContextInfo {
        const SHOWN_ITEMS: usize = 10;
        match self {
            Context::Shared(shared) => shared.info.clone(),
            Context::Text(text) => ContextInfo {
                kind: "string",
                total_chars: text.chars().count(),
                items: None,
                first_item_chars: Vec::new(),
            },
            Context::Documents(documents) => ContextInfo {
                kind: "array of strings",
                total_chars: documents.iter().map(|d| d.chars().count()).sum(),
                items: Some(documents.len()),
                first_item_chars: documents
                    .iter()
                    .take(SHOWN_ITEMS)
                    .map(|d| d.chars().count())
                    .collect(),
            },
            Context::Json(value) => {
                let (kind, items, first_item_chars) = match value {
                    Value::Array(items) => (
                        "array (from JSON)",
                        Some(items.len()),
                        items.iter().take(SHOWN_ITEMS).map(json_chars).collect(),
                    ),
                    Value::Object(map) => (
                        "map (from JSON)",
                        Some(map.len()),
                        map.values().take(SHOWN_ITEMS).map(json_chars).collect(),
                    ),
                    _ => ("value (from JSON)", None, Vec::new()),
                };
                ContextInfo {
                    kind,
                    total_chars: json_chars(value),
                    items,
                    first_item_chars,
                }
            }
        }
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ContextInfo {
    /// `"string"`, `"array of strings"`, `"array (from JSON)"`, `"map (from JSON)"`, ...
    pub kind: &'static str,
    /// Characters over the whole context.
    pub total_chars: usize,
    /// Number of items, for lists and maps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub items: Option<usize>,
    /// Characters of the first few items, for lists and maps.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first_item_chars: Vec<usize>,
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
