//! Request and response types shared by every backend.

use std::fmt;
use std::ops::{Add, AddAssign};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Text;

/// Who wrote a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The caller's turn.
    User,
    /// The model's turn.
    Assistant,
}

impl Role {
    /// The wire name (`"system"`, `"user"`, `"assistant"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One chat message: a role and its text.
///
/// The text is a shared [`Text`]: cloning a message (or a request) does not copy it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// What was written.
    pub content: Text,
}

impl Message {
    /// A message with the given role. A `String` or [`Text`] is taken without copying.
    pub fn new(role: Role, content: impl Into<Text>) -> Self {
        Self {
            role,
            content: content.into(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<Text>) -> Self {
        Self::new(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<Text>) -> Self {
        Self::new(Role::User, content)
    }

    /// An assistant message.
    pub fn assistant(content: impl Into<Text>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// A chat completion request, independent of any provider.
///
/// Sampling parameters left as `None` (or empty) are not sent, so the provider's defaults
/// apply. [`extra`](Self::extra) carries provider-specific fields (for example
/// `max_completion_tokens`, `response_format` or `top_k`) that a backend merges into its
/// request body verbatim.
///
/// ```
/// use rlm_core::CompletionRequest;
///
/// let request = CompletionRequest::new("gpt-4o-mini")
///     .with_system("Answer in one word.")
///     .with_user("Capital of France?")
///     .with_temperature(0.0)
///     .with_max_tokens(5);
/// assert_eq!(request.messages.len(), 2);
/// ```
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CompletionRequest {
    /// Model name as the provider knows it.
    pub model: String,
    /// The conversation so far.
    pub messages: Vec<Message>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Nucleus sampling mass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f32>,
    /// Upper bound on generated tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Stop sequences.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop: Vec<String>,
    /// Seed for providers that support deterministic sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The shape the reply must take (OpenAI's `response_format`), for providers that
    /// constrain their output; `None`: free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_format: Option<ResponseFormat>,
    /// Provider-specific fields merged into the request body as they are.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// The shape a reply must take, as OpenAI's chat completions `response_format` names it:
/// serialized as `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
/// {"name", "schema", "strict"}}`. A provider that cannot constrain its output refuses the
/// request (see [`LlmError::refuses_response_format`](crate::LlmError::refuses_response_format)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Any JSON object.
    JsonObject,
    /// JSON conforming to a JSON Schema.
    JsonSchema {
        /// The schema and how strictly it is enforced.
        json_schema: JsonSchemaFormat,
    },
}

impl ResponseFormat {
    /// A strict `json_schema` format named `name`.
    pub fn json_schema(name: impl Into<String>, schema: Value) -> Self {
        ResponseFormat::JsonSchema {
            json_schema: JsonSchemaFormat {
                name: name.into(),
                schema,
                strict: true,
            },
        }
    }
}

/// The `json_schema` member of a [`ResponseFormat::JsonSchema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaFormat {
    /// A name for the schema (`[a-zA-Z0-9_-]`, at most 64 characters).
    pub name: String,
    /// The JSON Schema.
    pub schema: Value,
    /// Whether the provider must follow the schema exactly (OpenAI's strict mode, which takes
    /// a subset of JSON Schema).
    #[serde(default)]
    pub strict: bool,
}

impl CompletionRequest {
    /// An empty request for `model`.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            ..Self::default()
        }
    }

    /// A request holding one user message: the shape of every `llm_query` sub-call.
    pub fn prompt(model: impl Into<String>, prompt: impl Into<Text>) -> Self {
        Self::new(model).with_user(prompt)
    }

    /// Appends a message.
    pub fn with_message(mut self, message: Message) -> Self {
        self.messages.push(message);
        self
    }

    /// Appends a system message.
    pub fn with_system(self, content: impl Into<Text>) -> Self {
        self.with_message(Message::system(content))
    }

    /// Appends a user message.
    pub fn with_user(self, content: impl Into<Text>) -> Self {
        self.with_message(Message::user(content))
    }

    /// Appends an assistant message.
    pub fn with_assistant(self, content: impl Into<Text>) -> Self {
        self.with_message(Message::assistant(content))
    }

    /// Sets the temperature.
    pub fn with_temperature(mut self, temperature: f32) -> Self {
        self.temperature = Some(temperature);
        self
    }

    /// Sets the nucleus sampling mass.
    pub fn with_top_p(mut self, top_p: f32) -> Self {
        self.top_p = Some(top_p);
        self
    }

    /// Sets the token limit of the reply.
    pub fn with_max_tokens(mut self, max_tokens: u32) -> Self {
        self.max_tokens = Some(max_tokens);
        self
    }

    /// Adds a stop sequence.
    pub fn with_stop(mut self, stop: impl Into<String>) -> Self {
        self.stop.push(stop.into());
        self
    }

    /// Sets the sampling seed.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Asks for a reply of this shape (see [`ResponseFormat`]).
    pub fn with_response_format(mut self, format: ResponseFormat) -> Self {
        self.response_format = Some(format);
        self
    }

    /// Sets a provider-specific body field.
    pub fn with_extra(mut self, key: impl Into<String>, value: Value) -> Self {
        self.extra.insert(key.into(), value);
        self
    }

    /// The text of the last user message, if any.
    pub fn last_user_message(&self) -> Option<&str> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::User)
            .map(|m| m.content.as_str())
    }

    /// Total characters over all messages.
    pub fn prompt_chars(&self) -> usize {
        self.messages.iter().map(|m| m.content.len()).sum()
    }

    /// A rough, provider-independent estimate of the prompt's tokens (see
    /// [`estimate_tokens`]), plus a few tokens of framing per message.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        self.messages
            .iter()
            .map(|m| estimate_tokens(&m.content) + 4)
            .sum()
    }
}

/// Estimates the tokens of `text` at about four bytes per token, rounding up.
///
/// Good enough to pace a tokens-per-minute budget and to give mock backends plausible usage;
/// not a tokenizer.
pub fn estimate_tokens(text: &str) -> u64 {
    (text.len() as u64).div_ceil(4)
}

/// Why the model stopped generating.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// A natural end or a stop sequence.
    Stop,
    /// The token limit was reached: the text is cut short.
    Length,
    /// The provider's content filter withheld the text.
    ContentFilter,
    /// The model called a tool instead of answering.
    ToolCalls,
    /// Any other reason, as the provider spelled it.
    Other(String),
}

impl FinishReason {
    /// The provider's spelling.
    pub fn as_str(&self) -> &str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
            FinishReason::ToolCalls => "tool_calls",
            FinishReason::Other(other) => other,
        }
    }
}

impl From<&str> for FinishReason {
    fn from(value: &str) -> Self {
        match value {
            "stop" | "eos" | "end_turn" | "stop_sequence" => FinishReason::Stop,
            "length" | "max_tokens" => FinishReason::Length,
            "content_filter" => FinishReason::ContentFilter,
            "tool_calls" | "function_call" | "tool_use" => FinishReason::ToolCalls,
            other => FinishReason::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for FinishReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for FinishReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FinishReason {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(FinishReason::from(text.as_str()))
    }
}

/// Tokens consumed by one or more calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Tokens in the prompt.
    pub prompt_tokens: u64,
    /// Tokens generated.
    pub completion_tokens: u64,
    /// Of `prompt_tokens`, those the provider served from its prompt cache (billed at the
    /// cached-input price), when it reports them (OpenAI:
    /// `usage.prompt_tokens_details.cached_tokens`). Omitted from JSON when 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cached_tokens: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Usage {
    /// Usage of `prompt_tokens` in and `completion_tokens` out (none of them cached).
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Self {
            prompt_tokens,
            completion_tokens,
            cached_tokens: 0,
        }
    }

    /// The same usage, with `cached_tokens` of the prompt served from the provider's cache
    /// (at most `prompt_tokens`).
    pub fn with_cached_tokens(mut self, cached_tokens: u64) -> Self {
        self.cached_tokens = cached_tokens.min(self.prompt_tokens);
        self
    }

    /// Prompt plus completion tokens (saturating: counts come from providers, and an absurd
    /// one must not overflow).
    pub fn total(&self) -> u64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }
}

impl Add for Usage {
    type Output = Usage;

    /// Field by field, saturating.
    fn add(self, rhs: Usage) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens.saturating_add(rhs.prompt_tokens),
            completion_tokens: self.completion_tokens.saturating_add(rhs.completion_tokens),
            cached_tokens: self.cached_tokens.saturating_add(rhs.cached_tokens),
        }
    }
}

impl AddAssign for Usage {
    fn add_assign(&mut self, rhs: Usage) {
        *self = *self + rhs;
    }
}

/// A model's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The generated text (empty when the provider returned no content).
    pub text: String,
    /// The model that answered, as the provider reported it.
    pub model: String,
    /// Why generation stopped, when the provider said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<FinishReason>,
    /// Tokens consumed; zero when the provider did not report usage.
    #[serde(default)]
    pub usage: Usage,
    /// The model's reasoning, when the provider returned it apart from the answer
    /// (`reasoning_content` or `reasoning`). Never part of [`text`](Self::text); a reply with
    /// reasoning and no text is an empty answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<String>,
}

impl Completion {
    /// A completion with the given text and no usage.
    pub fn new(model: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            model: model.into(),
            finish_reason: Some(FinishReason::Stop),
            usage: Usage::default(),
            reasoning: None,
        }
    }

    /// Sets the usage.
    pub fn with_usage(mut self, usage: Usage) -> Self {
        self.usage = usage;
        self
    }

    /// Sets why generation stopped.
    pub fn with_finish_reason(mut self, reason: Option<FinishReason>) -> Self {
        self.finish_reason = reason;
        self
    }

    /// Sets the reasoning text.
    pub fn with_reasoning(mut self, reasoning: impl Into<String>) -> Self {
        self.reasoning = Some(reasoning.into());
        self
    }

    /// Whether the provider cut the reply at its token limit (`finish_reason: "length"`).
    pub fn is_cut(&self) -> bool {
        self.finish_reason == Some(FinishReason::Length)
    }

    /// Whether the reply is a whole answer: not cut at the token limit, with text, neither
    /// withheld by a content filter nor a request for tool calls. Caches keep only these, so
    /// asking again after a failed reply sends the request again.
    pub fn is_complete(&self) -> bool {
        !self.is_cut()
            && self.missing_text().is_none()
            && !matches!(
                self.finish_reason,
                Some(FinishReason::ToolCalls | FinishReason::ContentFilter)
            )
    }

    /// Why a reply carries no answer text, or `None` when it has text.
    ///
    /// An answer is missing when the text is empty or blank: the reply was cut before any
    /// text, held only reasoning, only tool calls, or nothing at all (`content: null`).
    pub fn missing_text(&self) -> Option<&'static str> {
        if !self.text.trim().is_empty() {
            return None;
        }
        Some(if self.is_cut() {
            "it was cut at the token limit before any text (finish_reason: length)"
        } else if self
            .reasoning
            .as_deref()
            .is_some_and(|r| !r.trim().is_empty())
        {
            "it held only reasoning (reasoning_content) and no answer text"
        } else if self.finish_reason == Some(FinishReason::ToolCalls) {
            "it held only tool calls and no answer text"
        } else if self.finish_reason == Some(FinishReason::ContentFilter) {
            "the provider's content filter withheld it (finish_reason: content_filter)"
        } else {
            "its content was empty (null or blank)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_serializes_only_what_is_set() {
        let request = CompletionRequest::prompt("m", "hi");
        let json = serde_json::to_value(&request).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        );
    }

    #[test]
    fn finish_reason_round_trips_unknown_values() {
        let reason: FinishReason =
            serde_json::from_str("\"eos_token\"").unwrap_or(FinishReason::Stop);
        assert_eq!(reason, FinishReason::Other("eos_token".into()));
        assert_eq!(FinishReason::from("length"), FinishReason::Length);
    }

    #[test]
    fn token_estimate_rounds_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abc"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        let request = CompletionRequest::prompt("m", "abcdefgh");
        assert_eq!(request.estimated_prompt_tokens(), 2 + 4);
    }

    #[test]
    fn usage_from_a_hostile_server_saturates_instead_of_overflowing() {
        // Token counts come from the provider's reply: absurd ones must not panic.
        let huge = Usage::new(u64::MAX, 1);
        assert_eq!(huge.total(), u64::MAX);
        let sum = huge + Usage::new(1, u64::MAX);
        assert_eq!(sum, Usage::new(u64::MAX, u64::MAX));
        let mut usage = Usage::new(u64::MAX - 1, 0);
        usage += Usage::new(5, 0);
        assert_eq!(usage.prompt_tokens, u64::MAX);
    }

    #[test]
    fn usage_adds() {
        let mut usage = Usage::new(1, 2);
        usage += Usage::new(10, 20);
        assert_eq!(usage, Usage::new(11, 22));
        assert_eq!(usage.total(), 33);
    }
}
