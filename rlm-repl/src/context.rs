//! The user's context, as the REPL holds it.

use std::fmt;

use rhai::{Dynamic, ImmutableString};
use serde::Serialize;
use serde_json::Value;

use crate::words::count_of;

/// The data a run is about. It lives in the REPL as the variable `context` and is never
/// pasted into the root model's prompt; the root model only sees its [`ContextInfo`].
///
/// Two contexts are equal when they hold equal data of one kind; a [`SharedContext`] equals
/// its own clones, and a shared text (see [`TextBuilder`]) also equals a [`Context::Text`] of
/// the same characters.
#[derive(Debug, Clone)]
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

    /// This context followed by `documents`, as one array: an array context gets them as
    /// more items, any other context becomes the first item of a new array. Returns the
    /// combined context and the index of the first added document. No string data is
    /// copied (the shared strings are reference-counted); for an array, its skeleton is
    /// (one pointer per item).
    pub fn followed_by(&self, documents: Vec<String>) -> (SharedContext, usize) {
        let added: Vec<Dynamic> = documents
            .iter()
            .map(|d| Dynamic::from(ImmutableString::from(d.as_str())))
            .collect();
        let added_chars: usize = documents.iter().map(|d| d.chars().count()).sum();
        let (mut items, mut first_item_chars, first) = match self.value.as_array_ref() {
            Ok(items) => (
                items.iter().cloned().collect::<Vec<_>>(),
                self.info.first_item_chars.clone(),
                items.len(),
            ),
            Err(_) => (vec![self.value.clone()], vec![self.info.total_chars], 1),
        };
        const SHOWN_ITEMS: usize = 10;
        for document in &documents {
            if first_item_chars.len() < SHOWN_ITEMS {
                first_item_chars.push(document.chars().count());
            }
        }
        items.extend(added);
        let all_strings = items.iter().all(Dynamic::is_string);
        let preview = if first == 1 && !self.value.is_array() {
            format!("[0] {}", self.info.preview)
        } else {
            self.info.preview.clone()
        };
        let info = ContextInfo {
            kind: if all_strings {
                "array of strings"
            } else {
                "array"
            },
            total_chars: self.info.total_chars + added_chars,
            lines: None,
            items: Some(items.len()),
            first_item_chars,
            keys: Vec::new(),
            preview,
            notes: self.info.notes.clone(),
        };
        let combined = SharedContext {
            value: Dynamic::from_array(items),
            info,
            id: std::sync::Arc::new(()),
        };
        (combined, first)
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

impl PartialEq for Context {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Context::Text(a), Context::Text(b)) => a == b,
            (Context::Documents(a), Context::Documents(b)) => a == b,
            (Context::Json(a), Context::Json(b)) => a == b,
            (Context::Shared(a), Context::Shared(b)) => a == b,
            (Context::Text(text), Context::Shared(shared))
            | (Context::Shared(shared), Context::Text(text)) => shared
                .value
                .as_immutable_string_ref()
                .is_ok_and(|shared| shared.as_str() == text),
            _ => false,
        }
    }
}

/// A text context read piece by piece straight into the string the REPL holds.
///
/// A [`Context::Text`] is a `String`, which the REPL copies once into its own string type:
/// for a gigabyte of text that is a second gigabyte for a moment, and a pass over fresh
/// memory. Text pushed here lands in the REPL's string as it comes (one copy from the
/// reader's buffer, while it is in the processor's cache), and what the root model is told
/// (characters, lines, the preview) is counted on the way, so [`finish`](Self::finish) makes
/// no further pass over it.
///
/// ```
/// use rlm_repl::{Context, TextBuilder};
///
/// let mut text = TextBuilder::new();
/// text.push_str("first line\n");
/// text.push_str("second line");
/// let context = text.finish();
/// assert_eq!(context, Context::Text("first line\nsecond line".into()));
/// assert_eq!(context.info().lines, Some(2));
/// ```
#[derive(Default)]
pub struct TextBuilder {
    text: ImmutableString,
    chars: usize,
    line_breaks: usize,
}

impl TextBuilder {
    /// An empty text.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `piece`.
    pub fn push_str(&mut self, piece: &str) {
        self.chars += piece.chars().count();
        self.line_breaks += count_line_breaks(piece);
        self.text += piece;
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether nothing was pushed yet.
    pub fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// The text so far.
    pub fn as_str(&self) -> &str {
        self.text.as_str()
    }

    /// The context: a [`SharedContext`] holding the text (equal to a [`Context::Text`] of the
    /// same characters).
    pub fn finish(mut self) -> Context {
        // Growing by doubling leaves unused room (address space, never touched): given back.
        self.text.make_mut().shrink_to_fit();
        let text = self.text;
        let info = ContextInfo {
            kind: "string",
            total_chars: self.chars,
            lines: Some(self.line_breaks + usize::from(!text.is_empty() && !text.ends_with('\n'))),
            items: None,
            first_item_chars: Vec::new(),
            keys: Vec::new(),
            preview: preview(&text),
            notes: Vec::new(),
        };
        Context::Shared(SharedContext {
            value: Dynamic::from(text),
            info,
            id: std::sync::Arc::new(()),
        })
    }
}

impl fmt::Debug for TextBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TextBuilder")
            .field("bytes", &self.text.len())
            .finish_non_exhaustive()
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
            Context::Json(value) => json_to_dynamic(value),
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
                notes: Vec::new(),
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
                notes: Vec::new(),
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
                let big = big_integers(value);
                let notes = if big > 0 {
                    vec![format!(
                        "{} too large for 64 bits {} kept exact as {} of {} digits (never \
                         rounded to a float): compare such values as strings",
                        count_of(big, "integer"),
                        if big == 1 { "is" } else { "are" },
                        if big == 1 { "a string" } else { "strings" },
                        if big == 1 { "its" } else { "their" },
                    )]
                } else {
                    Vec::new()
                };
                ContextInfo {
                    kind,
                    total_chars: json_chars(value),
                    lines: None,
                    items,
                    first_item_chars,
                    keys,
                    preview,
                    notes,
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
        notes: Vec::new(),
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
    count_line_breaks(text) + usize::from(!text.is_empty() && !text.ends_with('\n'))
}

/// `\n` bytes in `text`, counted 64 bytes at a time (a form the compiler vectorizes: a
/// byte-by-byte filter took 0.4 s over a gigabyte).
fn count_line_breaks(text: &str) -> usize {
    let mut blocks = text.as_bytes().chunks_exact(64);
    let mut count: usize = blocks
        .by_ref()
        .map(|block| usize::from(block.iter().map(|&b| u8::from(b == b'\n')).sum::<u8>()))
        .sum();
    count += blocks.remainder().iter().filter(|&&b| b == b'\n').count();
    count
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

/// Parses JSON text keeping every value exact: an integer beyond 64 bits (which a JSON
/// parser rounds to the nearest float, so that `123456789012345678901234567890` and
/// `123456789012345678901234567891` become equal) is kept as a string of its digits instead.
/// Integers up to `u64::MAX` stay numbers here (they are exact in a [`Value`]); the REPL
/// holds the ones past `i64::MAX` as strings too. A leading byte order mark is skipped.
/// Errors are serde_json's, at the positions of `text`.
///
/// ```
/// let value = rlm_repl::parse_json_exact(
///     "\u{feff}[123456789012345678901234567890, 123456789012345678901234567891, 7]",
/// )
/// .unwrap_or_default();
/// assert_eq!(
///     value,
///     serde_json::json!(["123456789012345678901234567890", "123456789012345678901234567891", 7])
/// );
/// ```
///
/// # Errors
/// The text is not JSON.
pub fn parse_json_exact(text: &str) -> Result<Value, serde_json::Error> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let big = big_integer_spans(text);
    if big.is_empty() {
        return serde_json::from_str(text);
    }
    let mut quoted = String::with_capacity(text.len() + 2 * big.len());
    let mut last = 0;
    for (start, end) in big {
        quoted.push_str(&text[last..start]);
        quoted.push('"');
        quoted.push_str(&text[start..end]);
        quoted.push('"');
        last = end;
    }
    quoted.push_str(&text[last..]);
    // Quoting a number token never makes invalid JSON valid; an error is reported where the
    // original text has it.
    serde_json::from_str(&quoted).map_err(|_| match serde_json::from_str::<Value>(text) {
        Err(e) => e,
        Ok(_) => serde::de::Error::custom("the JSON could not be read exactly"),
    })
}

/// The byte ranges of integer literals outside strings that do not fit in 64 bits (signed
/// or unsigned), in order.
fn big_integer_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut in_string = false;
    // The last byte outside strings that was not white space.
    let mut before = b'[';
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => {
                    in_string = false;
                    before = b'"';
                }
                _ => {}
            }
            i += 1;
            continue;
        }
        match b {
            b'"' => in_string = true,
            b' ' | b'\t' | b'\n' | b'\r' => {}
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len()
                    && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = &text[start..i];
                let value_position = matches!(before, b'[' | b',' | b':');
                if value_position && is_big_integer(token) {
                    spans.push((start, i));
                }
                before = b'0';
                continue;
            }
            other => before = other,
        }
        i += 1;
    }
    spans
}

/// Whether `token` is a JSON integer literal that does not fit in an `i64` or a `u64`.
fn is_big_integer(token: &str) -> bool {
    let digits = token.strip_prefix('-').unwrap_or(token);
    let well_formed = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    well_formed && token.parse::<i64>().is_err() && token.parse::<u64>().is_err()
}

/// Whether `text` is the decimal form of an integer that does not fit in a Rhai integer
/// (64-bit signed): how such an integer is kept exact.
fn is_big_integer_text(text: &str) -> bool {
    let digits = text.strip_prefix('-').unwrap_or(text);
    !digits.is_empty()
        && digits.len() >= 19
        && digits.bytes().all(|b| b.is_ascii_digit())
        && text.parse::<i64>().is_err()
}

/// How many integers too large for a Rhai integer `value` holds (as numbers or as the strings
/// [`parse_json_exact`] made of them).
fn big_integers(value: &Value) -> usize {
    match value {
        Value::Number(n) => usize::from(n.is_u64() && n.as_i64().is_none()),
        Value::String(s) => usize::from(is_big_integer_text(s)),
        Value::Array(items) => items.iter().map(big_integers).sum(),
        Value::Object(map) => map.values().map(big_integers).sum(),
        _ => 0,
    }
}

/// A JSON value as a Rhai value, its strings moved, not copied. Integers that do not fit a
/// Rhai integer (64-bit signed) become strings of their digits, never a rounded float.
pub(crate) fn json_to_dynamic(value: Value) -> Dynamic {
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(b),
        Value::Number(n) => match (n.as_i64(), n.is_f64()) {
            (Some(i), _) => Dynamic::from_int(i),
            (None, true) => Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)),
            (None, false) => Dynamic::from(ImmutableString::from(n.to_string())),
        },
        Value::String(s) => Dynamic::from(ImmutableString::from(s)),
        Value::Array(items) => {
            Dynamic::from_array(items.into_iter().map(json_to_dynamic).collect())
        }
        Value::Object(map) => Dynamic::from_map(
            map.into_iter()
                .map(|(key, item)| (key.into(), json_to_dynamic(item)))
                .collect(),
        ),
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
    /// What the root model must know to read the data right (integers kept as strings).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_breaks_are_counted_in_blocks_as_one_by_one() {
        let text: String = (0..300)
            .map(|i| if i % 7 == 0 { "\n" } else { "ab\u{e9}" })
            .collect();
        for end in 0..text.len() {
            if !text.is_char_boundary(end) {
                continue;
            }
            let part = &text[..end];
            let naive = part.bytes().filter(|&b| b == b'\n').count();
            assert_eq!(count_line_breaks(part), naive, "{end}");
        }
        assert_eq!(count_line_breaks(&"\n".repeat(1000)), 1000);
    }

    #[test]
    fn a_built_text_is_the_text_context_and_tells_the_same() {
        for pieces in [
            vec![],
            vec!["one line"],
            vec!["two\n", "lines\n"],
            vec!["h\u{e9}", "llo\n\n", "", "w\u{f6}rld \u{1f600}"],
        ] {
            let whole: String = pieces.concat();
            let mut built = TextBuilder::new();
            for piece in &pieces {
                built.push_str(piece);
            }
            assert_eq!(built.len(), whole.len());
            assert_eq!(built.as_str(), whole);
            let context = built.finish();
            assert_eq!(context, Context::Text(whole.clone()));
            assert_eq!(Context::Text(whole.clone()), context);
            assert_ne!(context, Context::Text(format!("{whole}!")));
            assert_eq!(context.info(), Context::Text(whole.clone()).info());
            let value = context.clone().into_value();
            let held = value.into_immutable_string().map(|s| s.to_string());
            assert_eq!(held.ok(), Some(whole.clone()));
        }
        // A long text: the preview is cut as the text context's is.
        let mut built = TextBuilder::new();
        let long = "word ".repeat(10_000);
        built.push_str(&long);
        assert_eq!(built.finish().info(), Context::Text(long).info());
    }

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

    #[test]
    fn a_shared_context_followed_by_documents_is_one_array_sharing_its_strings() {
        let docs = SharedContext::new(Context::from(vec!["ab".to_owned(), "cde".to_owned()]));
        let (combined, first) = docs.followed_by(vec!["fghi".to_owned()]);
        assert_eq!(first, 2);
        let value = combined.value();
        let items = value.as_array_ref().map(|a| a.clone()).unwrap_or_default();
        let texts: Vec<String> = items.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["ab", "cde", "fghi"]);
        let info = combined.info();
        assert_eq!(
            (info.kind, info.items, info.total_chars),
            ("array of strings", Some(3), 9)
        );
        assert_eq!(info.first_item_chars, vec![2, 3, 4]);
        // The original is untouched.
        assert_eq!(docs.info().items, Some(2));

        let map = SharedContext::new(Context::from(serde_json::json!({"a": "xyz"})));
        let (combined, first) = map.followed_by(vec!["doc".to_owned()]);
        assert_eq!(first, 1);
        let info = combined.info();
        assert_eq!((info.kind, info.items), ("array", Some(2)));
        assert!(info.preview.starts_with("[0] "), "{}", info.preview);
        assert_ne!(combined, map);
    }
}
