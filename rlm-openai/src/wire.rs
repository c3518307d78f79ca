//! The chat-completions wire format: request bodies, replies and error bodies, parsed with
//! the tolerance OpenAI-compatible servers need.

use std::borrow::Cow;
use std::time::Duration;

use rlm_core::{Completion, CompletionRequest, FinishReason, LlmError, Usage};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

/// Longest excerpt of a body quoted in an error message, in bytes.
const EXCERPT_BYTES: usize = 200;

/// Writes the JSON body of `POST /chat/completions` for `request`, sent to `model`, into
/// `out`.
///
/// Sampling fields are written only when set; `extra` is merged in verbatim and wins over a
/// field of the same name. The bytes are serde_json's for [`ChatBody`] (a test holds the
/// two equal), but strings are scanned eight bytes at a time ([`write_str`]): a prompt of
/// 100 KB is nearly all bytes that need no escape, which serde_json looks at one by one
/// (a gigabyte of prompts took a second of CPU).
///
/// # Errors
/// None in practice: a sampling field or an `extra` value serde_json cannot write.
pub(crate) fn write_chat_body(
    out: &mut Vec<u8>,
    model: &str,
    request: &CompletionRequest,
) -> Result<(), serde_json::Error> {
    let r = request;
    let extra = &r.extra;
    let own = |key: &str| !extra.contains_key(key);
    let mut fields = Fields { out, first: true };
    if own("model") {
        fields.key("model");
        write_str(fields.out, model);
    }
    if own("messages") {
        fields.key("messages");
        let out = &mut *fields.out;
        out.push(b'[');
        for (i, message) in r.messages.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"role\":");
            write_str(out, message.role.as_str());
            out.extend_from_slice(b",\"content\":");
            write_str(out, message.content.as_str());
            out.push(b'}');
        }
        out.push(b']');
    }
    if let Some(t) = r.temperature.filter(|_| own("temperature")) {
        fields.value("temperature", &t)?;
    }
    if let Some(p) = r.top_p.filter(|_| own("top_p")) {
        fields.value("top_p", &p)?;
    }
    if let Some(m) = r.max_tokens.filter(|_| own("max_tokens")) {
        fields.value("max_tokens", &m)?;
    }
    if !r.stop.is_empty() && own("stop") {
        fields.value("stop", &r.stop)?;
    }
    if let Some(s) = r.seed.filter(|_| own("seed")) {
        fields.value("seed", &s)?;
    }
    if let Some(format) = r
        .response_format
        .as_ref()
        .filter(|_| own("response_format"))
    {
        fields.value("response_format", format)?;
    }
    for (key, value) in extra {
        fields.value(key, value)?;
    }
    fields.end();
    Ok(())
}

/// The fields of a JSON object being written: commas between them, braces around.
struct Fields<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl Fields<'_> {
    fn key(&mut self, key: &str) {
        self.out.push(if self.first { b'{' } else { b',' });
        self.first = false;
        write_str(self.out, key);
        self.out.push(b':');
    }

    fn value(&mut self, key: &str, value: &impl serde::Serialize) -> Result<(), serde_json::Error> {
        self.key(key);
        serde_json::to_writer(&mut *self.out, value)
    }

    fn end(self) {
        if self.first {
            self.out.push(b'{');
        }
        self.out.push(b'}');
    }
}

/// What a byte becomes in a JSON string, as serde_json writes it: 0 for itself, `u` for
/// `\u00XX`, else the letter after the backslash.
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0;
    while byte < 0x20 {
        table[byte] = b'u';
        byte += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0A] = b'n';
    table[0x0C] = b'f';
    table[0x0D] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// The bytes of `word` that need an escape in a JSON string (a control character below
/// 0x20, a quote, a backslash), as the high bit of each: 0 when none does. Each test is the
/// classic "has a byte below n" bit trick; a borrow can mark a byte above a real match too,
/// but the lowest marked byte is always a real one.
#[inline]
fn escape_mask(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let below = |w: u64, n: u64| w.wrapping_sub(ONES * n) & !w & HIGH;
    let quote = word ^ (ONES * u64::from(b'"'));
    let backslash = word ^ (ONES * u64::from(b'\\'));
    below(word, 0x20) | below(quote, 1) | below(backslash, 1)
}

/// Writes `text` as a JSON string, quotes included, byte for byte as serde_json does.
pub(crate) fn write_str(out: &mut Vec<u8>, text: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = text.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    // `start..at`: bytes that need no escape, not written yet.
    let (mut start, mut at) = (0, 0);
    while at < bytes.len() {
        // Eight bytes at a time to the next one that may need an escape.
        if let Some(chunk) = bytes.get(at..at + 8) {
            let mask = escape_mask(u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8])));
            if mask == 0 {
                at += 8;
                continue;
            }
            at += (mask.trailing_zeros() / 8) as usize;
        }
        let byte = bytes[at];
        let escape = ESCAPE[usize::from(byte)];
        at += 1;
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..at - 1]);
        start = at;
        if escape == b'u' {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(byte >> 4)]);
            out.push(HEX[usize::from(byte & 0xF)]);
        } else {
            out.push(b'\\');
            out.push(escape);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The JSON body of `POST /chat/completions` for `request`, sent to `model`, through serde:
/// what [`write_chat_body`] must write, byte for byte.
#[cfg(test)]
pub(crate) struct ChatBody<'a> {
    pub(crate) model: &'a str,
    pub(crate) request: &'a CompletionRequest,
}

#[cfg(test)]
impl serde::Serialize for ChatBody<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.request;
        use serde::ser::SerializeMap;
        let extra = &r.extra;
        let mut map = serializer.serialize_map(None)?;
        let own = |key: &str| !extra.contains_key(key);
        if own("model") {
            map.serialize_entry("model", self.model)?;
        }
        if own("messages") {
            map.serialize_entry("messages", &r.messages)?;
        }
        if let Some(t) = r.temperature.filter(|_| own("temperature")) {
            map.serialize_entry("temperature", &t)?;
        }
        if let Some(p) = r.top_p.filter(|_| own("top_p")) {
            map.serialize_entry("top_p", &p)?;
        }
        if let Some(m) = r.max_tokens.filter(|_| own("max_tokens")) {
            map.serialize_entry("max_tokens", &m)?;
        }
        if !r.stop.is_empty() && own("stop") {
            map.serialize_entry("stop", &r.stop)?;
        }
        if let Some(s) = r.seed.filter(|_| own("seed")) {
            map.serialize_entry("seed", &s)?;
        }
        if let Some(format) = r
            .response_format
            .as_ref()
            .filter(|_| own("response_format"))
        {
            map.serialize_entry("response_format", format)?;
        }
        for (key, value) in extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

/// A chat completion as OpenAI-compatible servers send it. Unknown fields are ignored and
/// nearly everything may be missing or `null`; metadata of an unexpected type is ignored
/// too (it must never cost the answer).
#[derive(Deserialize)]
struct WireCompletion {
    #[serde(default, deserialize_with = "lenient")]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<WireChoice>>,
    #[serde(default, deserialize_with = "lenient")]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Deserialize)]
struct WireChoice {
    #[serde(default)]
    message: Option<WireMessage>,
    /// Legacy completions and some proxies put the text here.
    #[serde(default, deserialize_with = "lenient")]
    text: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default, deserialize_with = "content")]
    content: String,
    /// DeepSeek, vLLM and others: the reasoning, apart from the answer.
    #[serde(default, deserialize_with = "lenient")]
    reasoning_content: Option<String>,
    /// OpenRouter's spelling of the same.
    #[serde(default, deserialize_with = "lenient")]
    reasoning: Option<String>,
    /// Whether `tool_calls` is a non-empty array.
    #[serde(default, rename = "tool_calls", deserialize_with = "some_tool_calls")]
    has_tool_calls: bool,
}

/// `tool_calls` (read leniently) holds at least one call.
fn some_tool_calls<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    let calls: Option<Vec<Value>> = lenient(deserializer)?;
    Ok(calls.is_some_and(|calls| !calls.is_empty()))
}

#[derive(Deserialize)]
struct WireUsage {
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    completion_tokens: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    prompt_tokens_details: Option<WirePromptDetails>,
}

#[derive(Deserialize)]
struct WirePromptDetails {
    #[serde(default, deserialize_with = "lenient")]
    cached_tokens: Option<u64>,
}

/// The usual reply, every field of the type it should have, read straight into its values
/// (no intermediate [`Value`]s). A reply that does not fit (a field of another type, content
/// in parts, no choice) is read again as a [`WireCompletion`], whose lenient reading gives the
/// same values whenever this strict one succeeds.
#[derive(Deserialize)]
struct StrictCompletion {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    choices: Option<Vec<StrictChoice>>,
    #[serde(default)]
    usage: Option<StrictUsage>,
}

#[derive(Deserialize)]
struct StrictChoice {
    #[serde(default)]
    message: Option<StrictMessage>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct StrictMessage {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(Deserialize)]
struct StrictUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<StrictPromptDetails>,
}

#[derive(Deserialize)]
struct StrictPromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl StrictCompletion {
    /// `body` read strictly, as the [`WireCompletion`] the lenient reading would give;
    /// `None` when it does not fit or has no choice (then the lenient reading decides).
    fn read(body: &[u8]) -> Option<WireCompletion> {
        let strict: Self = serde_json::from_slice(body).ok()?;
        let choices: Vec<WireChoice> = strict
            .choices?
            .into_iter()
            .map(|choice| WireChoice {
                message: choice.message.map(|message| WireMessage {
                    content: message.content.unwrap_or_default(),
                    reasoning_content: message.reasoning_content,
                    reasoning: message.reasoning,
                    has_tool_calls: message.tool_calls.is_some_and(|c| !c.is_empty()),
                }),
                text: choice.text,
                finish_reason: choice.finish_reason,
            })
            .collect();
        if choices.is_empty() {
            return None;
        }
        Some(WireCompletion {
            model: strict.model,
            choices: Some(choices),
            usage: strict.usage.map(|usage| WireUsage {
                prompt_tokens: usage.prompt_tokens,
                completion_tokens: usage.completion_tokens,
                prompt_tokens_details: usage.prompt_tokens_details.map(|details| {
                    WirePromptDetails {
                        cached_tokens: details.cached_tokens,
                    }
                }),
            }),
            error: None,
        })
    }
}

/// A field read as `T` when it is one, and as missing when it is anything else.
fn lenient<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    Ok(T::deserialize(Value::deserialize(deserializer)?).ok())
}

/// `content` as a string, `null` (empty), or an array of parts whose text is joined: text
/// parts (`{"type": "text", "text": ...}`, also without a `type` or with the Assistants'
/// `{"value": ...}`) and bare strings. Parts of other types, such as images or refusals,
/// are skipped; an odd part never costs the others.
fn content<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    /// The text of one part, if it is a text part.
    fn part_text(part: Value) -> Option<String> {
        let mut part = match part {
            Value::String(text) => return Some(text),
            Value::Object(part) => part,
            _ => return None,
        };
        if let Some(Value::String(kind)) = part.get("type") {
            if !matches!(kind.as_str(), "text" | "output_text") {
                return None;
            }
        }
        match part.remove("text")? {
            Value::String(text) => Some(text),
            // {"type": "text", "text": {"value": "..."}} (the Assistants shape).
            Value::Object(mut text) => match text.remove("value")? {
                Value::String(text) => Some(text),
                _ => None,
            },
            _ => None,
        }
    }
    Ok(match Value::deserialize(deserializer)? {
        Value::String(text) => text,
        Value::Array(parts) => parts.into_iter().filter_map(part_text).collect(),
        _ => String::new(),
    })
}

/// Parses a successful (2xx) reply. `fallback_model` names the model when the reply does
/// not; `redact` scrubs the API key from any text quoted in an error, and from the reply's
/// model name and finish reason (which end up in traces and usage reports).
pub(crate) fn parse_completion(
    body: &[u8],
    status: u16,
    fallback_model: &str,
    redact: &dyn Fn(&str) -> String,
) -> Result<Completion, LlmError> {
    parse_completion_with(body, status, fallback_model, redact, true)
}

/// [`parse_completion`], trying the strict reading first or not (tests compare the two).
fn parse_completion_with(
    body: &[u8],
    status: u16,
    fallback_model: &str,
    redact: &dyn Fn(&str) -> String,
    try_strict: bool,
) -> Result<Completion, LlmError> {
    let strict = try_strict.then(|| StrictCompletion::read(body)).flatten();
    let wire: WireCompletion = match strict {
        Some(wire) => Ok(wire),
        None => serde_json::from_slice(body),
    }
    .map_err(|e| {
        if let Some(title) = html_title(body) {
            // A web page where the API should be: the base URL points at a site, not an API.
            let page = title.map_or_else(
                || "an HTML page".to_owned(),
                |t| format!("an HTML page titled {:?}", redact(&t)),
            );
            return LlmError::invalid_response(format!(
                "the reply (HTTP {status}) is {page}, not a chat completion: the base URL \
                 should be the API's, ending at its version, like http://localhost:8000/v1"
            ));
        }
        // serde_json quotes offending values in its messages: scrub them too.
        LlmError::invalid_response(format!(
            "malformed JSON in the reply (HTTP {status}): {}; the body starts: {}",
            redact(&e.to_string()),
            excerpt(body, redact)
        ))
    })?;
    let Some(choice) = wire.choices.and_then(|c| c.into_iter().next()) else {
        // Some proxies answer 200 with an error object instead of a status.
        if let Some(error) = wire.error.as_ref() {
            let detail = ErrorDetail::from_error_value(error).redacted(redact);
            let message = detail.message.as_deref().unwrap_or("unknown error");
            if let Some(status) = detail.numeric_code.filter(|s| (400..=599).contains(s)) {
                return Err(LlmError::from_http_status(
                    status,
                    message,
                    detail.error_type.as_deref(),
                    detail.code.as_deref(),
                    None,
                ));
            }
            return Err(LlmError::invalid_response(format!(
                "the reply (HTTP {status}) holds an error and no choices: {message}"
            )));
        }
        return Err(LlmError::invalid_response(format!(
            "the reply (HTTP {status}) has no choices; the body starts: {}",
            excerpt(body, redact)
        )));
    };
    let mut finish_reason = choice
        .finish_reason
        .map(|reason| FinishReason::from(redact(&reason).as_str()));
    let (text, reasoning) = match (choice.message, choice.text) {
        (Some(message), _) => {
            if finish_reason.is_none() && message.has_tool_calls {
                finish_reason = Some(FinishReason::ToolCalls);
            }
            let reasoning = message
                .reasoning_content
                .or(message.reasoning)
                .filter(|r| !r.is_empty());
            (message.content, reasoning)
        }
        (None, Some(text)) => (text, None),
        (None, None) => (String::new(), None),
    };
    let usage = wire
        .usage
        .map(|u| {
            Usage::new(
                u.prompt_tokens.unwrap_or_default(),
                u.completion_tokens.unwrap_or_default(),
            )
            .with_cached_tokens(
                u.prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .unwrap_or_default(),
            )
        })
        .unwrap_or_default();
    Ok(Completion {
        text,
        model: wire
            .model
            .filter(|m| !m.is_empty())
            .map_or_else(|| fallback_model.to_owned(), |m| redact(&m)),
        finish_reason,
        usage,
        reasoning,
    })
}

/// What an error body says, in whichever shape the server used.
#[derive(Debug, Default, PartialEq)]
struct ErrorDetail {
    message: Option<String>,
    error_type: Option<String>,
    code: Option<String>,
    /// `code` when it is a number (vLLM and some proxies put the HTTP status there).
    numeric_code: Option<u16>,
}

impl ErrorDetail {
    /// The same detail with the key scrubbed from every text a server could echo it in.
    fn redacted(self, redact: &dyn Fn(&str) -> String) -> Self {
        let scrub = |text: Option<String>| text.map(|t| redact(&t));
        Self {
            message: scrub(self.message),
            error_type: scrub(self.error_type),
            code: scrub(self.code),
            numeric_code: self.numeric_code,
        }
    }

    /// Reads `{"error": {...}}`, `{"error": "text"}` or a top-level `{"message", "type",
    /// "code"}` (vLLM's older shape).
    fn from_body(body: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(body).ok()?;
        match value.get("error") {
            Some(error) => Some(Self::from_error_value(error)),
            None if value.get("message").is_some() => Some(Self::from_error_value(&value)),
            None => None,
        }
    }

    fn from_error_value(error: &Value) -> Self {
        let text = |v: Option<&Value>| match v {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        match error {
            Value::String(message) => Self {
                message: Some(message.clone()),
                ..Self::default()
            },
            Value::Object(o) => Self {
                message: text(o.get("message")).or_else(|| text(o.get("detail"))),
                error_type: text(o.get("type")),
                code: text(o.get("code")),
                numeric_code: o
                    .get("code")
                    .and_then(Value::as_u64)
                    .and_then(|c| u16::try_from(c).ok()),
            },
            _ => Self::default(),
        }
    }
}

/// Classifies an error reply (status >= 400, or any non-2xx).
pub(crate) fn parse_error(
    status: u16,
    canonical_reason: Option<&str>,
    body: &[u8],
    retry_after: Option<Duration>,
    redact: &dyn Fn(&str) -> String,
    url: &str,
) -> LlmError {
    let detail = ErrorDetail::from_body(body)
        .unwrap_or_default()
        .redacted(redact);
    let from_api = detail.message.is_some();
    let mut message = match detail.message {
        Some(message) => message,
        None => match html_title(body) {
            Some(Some(title)) => format!("an HTML page titled {:?}", redact(&title)),
            Some(None) => "an HTML page without a title".to_owned(),
            None if !body.iter().all(u8::is_ascii_whitespace) => excerpt(body, redact),
            None => canonical_reason.unwrap_or("no message").to_owned(),
        },
    };
    let mut code = detail.code;
    if status == 404 && !from_api {
        // Not an API's "no such model": most likely a base URL that misses `/v1` (or has
        // one too many).
        message.push_str(
            "; this is not an OpenAI-style error, so the URL is probably wrong: the base URL \
             should end at the API version, like http://localhost:8000/v1",
        );
        code.get_or_insert_with(|| NOT_AN_API_ENDPOINT.to_owned());
    }
    if !url.is_empty() {
        message.push_str(&format!(" (POST {url})"));
    }
    LlmError::from_http_status(
        status,
        message,
        detail.error_type.as_deref(),
        code.as_deref(),
        retry_after,
    )
}

/// `error` with `(POST url)` after its message, so that a reader knows what was called.
pub(crate) fn at_url(mut error: LlmError, url: &str) -> LlmError {
    match &mut error {
        LlmError::RateLimited { message, .. }
        | LlmError::QuotaExhausted { message, .. }
        | LlmError::Server { message, .. }
        | LlmError::Auth { message, .. }
        | LlmError::BadRequest { message, .. }
        | LlmError::InvalidResponse { message }
        | LlmError::OverReplyBudget { message }
        | LlmError::Other { message }
            if !message.contains(url) =>
        {
            message.push_str(&format!(" (POST {url})"));
        }
        _ => {}
    }
    error
}

/// The `code` of a 404 whose body is not an OpenAI-style error (a web server's "not found"
/// page): the URL, not the model, is wrong.
pub const NOT_AN_API_ENDPOINT: &str = "not_an_api_endpoint";

/// `Some(title)` when `body` is an HTML page (`Some(None)` when it has no `<title>`), `None`
/// when it is not HTML. The title is unescaped and on one line.
fn html_title(body: &[u8]) -> Option<Option<String>> {
    let text = String::from_utf8_lossy(body);
    let start = text.trim_start();
    let head: String = start
        .chars()
        .take(15)
        .collect::<String>()
        .to_ascii_lowercase();
    let lower = text.to_ascii_lowercase();
    if !(head.starts_with("<!doctype html")
        || head.starts_with("<html")
        || lower.contains("<title"))
    {
        return None;
    }
    let title = lower.find("<title").and_then(|open| {
        let content = open + lower[open..].find('>')? + 1;
        let end = content + lower[content..].find("</title")?;
        // Lowercasing ASCII keeps byte offsets, so they index the original text.
        let title = text[content..end]
            .replace("&amp;", "&")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#39;", "'")
            .replace("&nbsp;", " ");
        let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
        (!title.is_empty()).then_some(title)
    });
    Some(title)
}

/// The start of `body` as text for an error message: at most [`EXCERPT_BYTES`] bytes,
/// cut on a character boundary, with the key scrubbed before cutting (so no part of it
/// survives), quoted.
pub(crate) fn excerpt(body: &[u8], redact: &dyn Fn(&str) -> String) -> String {
    // The whole body is scrubbed before cutting, so a key straddling the cut is caught too.
    // Error paths only: the cost is one pass over the body.
    let text: Cow<'_, str> = String::from_utf8_lossy(body);
    let text = redact(&text);
    let mut end = text.len().min(EXCERPT_BYTES);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = if end < text.len() { "…" } else { "" };
    format!("{:?}{cut}", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_redact(s: &str) -> String {
        s.to_owned()
    }

    fn parse(body: Value) -> Result<Completion, LlmError> {
        parse_completion(body.to_string().as_bytes(), 200, "asked", &no_redact)
    }

    /// The body [`write_chat_body`] writes, checked byte for byte against serde_json's
    /// encoding of [`ChatBody`], as JSON.
    fn body_of(model: &str, request: &CompletionRequest) -> Value {
        let mut written = Vec::new();
        write_chat_body(&mut written, model, request).unwrap_or_else(|e| panic!("{e}"));
        let reference = serde_json::to_vec(&ChatBody { model, request }).unwrap_or_default();
        assert_eq!(
            String::from_utf8_lossy(&written),
            String::from_utf8_lossy(&reference)
        );
        serde_json::from_slice(&written).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Strings are written as serde_json writes them, whatever needs an escape and wherever
    /// it falls against the eight-byte words the scan reads.
    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = vec![
            String::new(),
            "plain".to_owned(),
            "a \"quoted\" line\n".to_owned(),
            "back\\slash, tab\t, cr\r, ff\u{c}, bs\u{8}, nul\u{0}, us\u{1f}, del\u{7f}".to_owned(),
            "héllo wörld, 日本語, emoji 🦀, \u{2028}\u{2029}".to_owned(),
            (0u8..=0x7f).map(char::from).collect(),
            "line of text that goes on for a while\n".repeat(500),
        ];
        // Every special byte at every offset of a 24-byte run of plain text.
        for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', '\u{7f}', 'é', ' '] {
            for at in 0..24 {
                let mut text: String = "abcdefghijklmnopqrstuvwx".to_owned();
                text.insert(at, special);
                cases.push(text);
            }
        }
        // Pseudo-random strings over a small alphabet heavy in escapes.
        let alphabet: Vec<char> = "ab \"\\\n\t\u{1}\u{7f}é日🦀x".chars().collect();
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..200 {
            let text: String = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    alphabet[(state % alphabet.len() as u64) as usize]
                })
                .collect();
            cases.push(text);
        }
        for text in cases {
            let mut written = Vec::new();
            write_str(&mut written, &text);
            let reference = serde_json::to_string(&text).unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(&written), reference, "{text:?}");
        }
    }

    /// Every field, and `extra` replacing one, as serde_json would write them.
    #[test]
    fn a_full_body_is_written_as_serde_json_writes_it() {
        let request = CompletionRequest::new("ignored")
            .with_system("be \"brief\"")
            .with_user("line 1\nline 2\ttab")
            .with_assistant("ok")
            .with_temperature(0.7)
            .with_top_p(0.9)
            .with_max_tokens(64)
            .with_stop("END")
            .with_seed(42)
            .with_response_format(rlm_core::ResponseFormat::JsonObject)
            .with_extra("model", json!("from-extra"))
            .with_extra("logit_bias", json!({"50256": -100}))
            .with_extra("user", json!("ü\n"));
        let body = body_of("m", &request);
        assert_eq!(body["model"], "from-extra");
        assert_eq!(body["messages"][1]["content"], "line 1\nline 2\ttab");
        let nothing = CompletionRequest::new("m");
        assert_eq!(
            body_of("m", &nothing),
            json!({"model": "m", "messages": []})
        );
        let all_extra = CompletionRequest::new("m")
            .with_extra("model", json!("x"))
            .with_extra("messages", json!([]));
        assert_eq!(
            body_of("m", &all_extra),
            json!({"model": "x", "messages": []})
        );
    }

    #[test]
    fn a_response_format_is_sent_in_openai_shape() {
        let schema = json!({"type": "object", "properties": {}, "additionalProperties": false});
        let request = CompletionRequest::prompt("m", "hi").with_response_format(
            rlm_core::ResponseFormat::json_schema("answer", schema.clone()),
        );
        let body = body_of("m", &request);
        assert_eq!(
            body["response_format"],
            json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}})
        );
    }

    #[test]
    fn body_has_only_what_is_set_and_extra_wins() {
        let request = CompletionRequest::prompt("ignored", "hi")
            .with_temperature(0.5)
            .with_max_tokens(10)
            .with_stop("\n")
            .with_seed(7)
            .with_extra("max_tokens", json!(99))
            .with_extra("response_format", json!({"type": "json_object"}));
        let body = body_of("m", &request);
        assert_eq!(
            body,
            json!({
                "model": "m",
                "messages": [{"role": "user", "content": "hi"}],
                "temperature": 0.5,
                "max_tokens": 99,
                "stop": ["\n"],
                "seed": 7,
                "response_format": {"type": "json_object"},
            })
        );
        let text = body_of("m", &request).to_string();
        assert_eq!(text.matches("max_tokens").count(), 1, "{text}");
        let bare = body_of("m", &CompletionRequest::prompt("x", "hi"));
        assert_eq!(
            bare,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn parses_string_null_and_parts_content() {
        let c = parse(json!({
            "model": "gpt", "choices": [{"message": {"content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
            "system_fingerprint": "x", "something_new": [1, 2]
        }));
        let c = c.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.text.as_str(), c.model.as_str()), ("hello", "gpt"));
        assert_eq!(c.usage, Usage::new(3, 1));
        assert_eq!(c.finish_reason, Some(FinishReason::Stop));

        let c = parse(json!({
            "choices": [{"message": {"content": "x"}}],
            "usage": {"prompt_tokens": 2000, "completion_tokens": 5,
                      "prompt_tokens_details": {"cached_tokens": 1536}}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.usage, Usage::new(2000, 5).with_cached_tokens(1536));
        assert_eq!(c.usage.cached_tokens, 1536);

        let c = parse(
            json!({"choices": [{"message": {"content": null, "refusal": "no"},
                                          "finish_reason": "content_filter"}]}),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.text, "");
        assert_eq!(c.model, "asked");
        assert_eq!(c.finish_reason, Some(FinishReason::ContentFilter));
        assert_eq!(c.usage, Usage::default());

        let c = parse(json!({"choices": [{"message": {"content": [
            {"type": "text", "text": "a"},
            {"type": "image_url", "image_url": {"url": "x"}},
            {"type": "text", "text": {"value": "b"}},
            {"text": "c"}
        ]}}]}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.text, "abc");
        assert_eq!(c.finish_reason, None);

        let c = parse(json!({"choices": [{"message": {}}], "usage": {"prompt_tokens": null}}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.text, "");
        let c = parse(json!({"choices": [{"message": {"content": null,
            "reasoning_content": "thinking..."}, "finish_reason": "stop"}]}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.text, "");
        assert_eq!(c.reasoning.as_deref(), Some("thinking..."));
        assert!(
            c.missing_text()
                .is_some_and(|why| why.contains("reasoning"))
        );
        let c = parse(json!({"choices": [{"message": {"content": null,
            "tool_calls": [{"id": "1", "type": "function"}]}}]}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.finish_reason, Some(FinishReason::ToolCalls));
        assert!(
            c.missing_text()
                .is_some_and(|why| why.contains("tool calls"))
        );
        let c = parse(json!({"choices": [{"text": "legacy", "finish_reason": "length"}]}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.text, "legacy");
        assert_eq!(c.finish_reason, Some(FinishReason::Length));
    }

    #[test]
    fn the_strict_reading_gives_what_the_lenient_one_gives() {
        let bodies = [
            json!({"model": "gpt", "choices": [{"message": {"content": "hi"},
                "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 1,
                "prompt_tokens_details": {"cached_tokens": 2}}, "error": null}),
            json!({"choices": [{"message": {"content": null, "tool_calls": [{"id": "1"}]}}]}),
            json!({"choices": [{"message": {"content": "a", "tool_calls": []}}]}),
            json!({"choices": [{"message": {"content": "a", "tool_calls": {"x": 1}}}]}),
            json!({"choices": [{"message": {"content": "a", "reasoning": "r",
                "reasoning_content": ""}}]}),
            json!({"choices": [{"text": "legacy", "finish_reason": "length"}]}),
            json!({"choices": [{"message": {"content": [{"type": "text", "text": "p"}]}}]}),
            json!({"choices": [{"message": {"content": 5}}], "model": 7}),
            json!({"choices": [{"message": {"content": "a"}}], "usage": {"prompt_tokens": 1.5}}),
            json!({"choices": [{"message": {"content": "a"}}], "usage": [4, 5]}),
            json!({"choices": [{"message": {"content": "a"}}], "usage": "n/a"}),
            json!({"choices": [{"message": {"content": "a"}}], "usage": {
                "prompt_tokens_details": {"cached_tokens": "x"}}}),
            json!({"choices": [["m", "t", "stop"]]}),
            json!({"choices": [], "error": {"message": "boom", "code": 503}}),
            json!({"choices": [{"message": "not an object"}]}),
            json!({"choices": {"0": {}}}),
            json!({"model": "", "choices": [{"message": {"content": "a"}}, {"x": 1}]}),
        ];
        for body in bodies {
            let bytes = serde_json::to_vec(&body).unwrap_or_default();
            let strict = parse_completion_with(&bytes, 200, "asked", &no_redact, true);
            let lenient = parse_completion_with(&bytes, 200, "asked", &no_redact, false);
            match (strict, lenient) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{body}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{body}"),
                (a, b) => panic!("{body}: {a:?} against {b:?}"),
            }
        }
        // The usual reply is read strictly.
        assert!(StrictCompletion::read(br#"{"choices":[{"message":{"content":"x"}}]}"#).is_some());
    }

    #[test]
    fn odd_metadata_never_costs_the_answer() {
        // Metadata of an unexpected type is ignored, as if it were missing.
        let c = parse(json!({
            "model": 7,
            "choices": [{"message": {"content": "kept"}, "finish_reason": 3, "text": false}],
            "usage": {"prompt_tokens": 1.5, "completion_tokens": -2}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((c.text.as_str(), c.model.as_str()), ("kept", "asked"));
        assert_eq!(c.finish_reason, None);
        assert_eq!(c.usage, Usage::default());
        let c = parse(json!({"choices": [{"message": {"content": "kept"}}], "usage": "n/a"}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.text, "kept");
        // One odd part (a bare string, a numeric type) must not cost the other parts.
        let c = parse(json!({"choices": [{"message": {"content": [
            {"type": "text", "text": "a"},
            "b",
            {"type": 5, "text": "c"},
            {"type": "refusal", "refusal": "no"},
            7
        ]}}]}))
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.text, "abc");
    }

    #[test]
    fn no_choices_or_bad_json_is_invalid_response() {
        for body in [
            json!({"choices": []}),
            json!({"choices": null}),
            json!({}),
            json!([1]),
        ] {
            let e = parse(body).err();
            assert_eq!(e.map(|e| e.kind()), Some("invalid_response"));
        }
        let e = parse_completion(b"{\"choices\": [", 200, "m", &no_redact).err();
        let message = e.map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("malformed JSON"), "{message}");
        assert!(message.contains("{\\\"choices\\\": ["), "{message}");
        // A 200 carrying an error with an HTTP status as its code is classified.
        let e = parse(json!({"error": {"message": "slow down", "code": 429}})).err();
        assert_eq!(e.map(|e| e.kind()), Some("rate_limited"));
    }

    #[test]
    fn error_bodies_in_every_shape() {
        let e = parse_error(
            429,
            Some("Too Many Requests"),
            br#"{"error": {"message": "pay", "type": "insufficient_quota", "code": "insufficient_quota"}}"#,
            None,
            &no_redact,
            "",
        );
        assert_eq!(e.kind(), "quota_exhausted");
        assert_eq!(e.to_string(), "quota exhausted (HTTP 429): pay");

        let e = parse_error(
            404,
            None,
            br#"{"error": "model 'x' not found"}"#,
            None,
            &no_redact,
            "",
        );
        assert_eq!(e.to_string(), "bad request (HTTP 404): model 'x' not found");
        let e = parse_error(
            404,
            Some("Not Found"),
            b"404 page not found",
            None,
            &no_redact,
            "u",
        );
        let text = e.to_string();
        assert!(
            text.starts_with("bad request (HTTP 404): \"404 page not found\""),
            "{text}"
        );
        assert!(text.contains("should end at the API version"), "{text}");
        assert!(text.ends_with("(POST u)"), "{text}");
        assert!(
            matches!(e, LlmError::BadRequest { code: Some(c), .. } if c == NOT_AN_API_ENDPOINT)
        );

        let e = parse_error(
            400,
            None,
            br#"{"object": "error", "message": "too long", "type": "BadRequestError", "code": 400}"#,
            None,
            &no_redact,
            "",
        );
        assert_eq!(e.to_string(), "bad request (HTTP 400): too long");

        let e = parse_error(
            502,
            Some("Bad Gateway"),
            b"<html>nginx</html>",
            None,
            &no_redact,
            "",
        );
        assert_eq!(
            e.to_string(),
            "server error (HTTP 502): an HTML page without a title"
        );
        let page = b"<!DOCTYPE html>\n<html><head><TITLE>502 Bad Gateway &amp; co\n</TITLE></head>\
            <body><h1>502</h1></body></html>";
        let e = parse_error(
            502,
            None,
            page,
            None,
            &no_redact,
            "http://h/v1/chat/completions",
        );
        assert_eq!(
            e.to_string(),
            "server error (HTTP 502): an HTML page titled \"502 Bad Gateway & co\" \
             (POST http://h/v1/chat/completions)"
        );
        let e = parse_error(503, Some("Service Unavailable"), b"", None, &no_redact, "");
        assert_eq!(
            e.to_string(),
            "server error (HTTP 503): Service Unavailable"
        );
    }

    #[test]
    fn excerpts_are_short_and_redacted() {
        let key = "sk-0123456789";
        let redact = |s: &str| s.replace(key, "[redacted]");
        let mut body = "é".repeat(99).into_bytes();
        body.extend_from_slice(key.as_bytes());
        body.extend(std::iter::repeat_n(b'x', 1000));
        let text = excerpt(&body, &redact);
        assert!(!text.contains("sk-0123"), "{text}");
        assert!(text.ends_with('…'));
        assert!(text.len() < EXCERPT_BYTES + 10);
    }
}
