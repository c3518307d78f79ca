//! The parameters of a chat-completions request other than `model`, `messages` and
//! `stream`: each is honoured, mapped, accepted without effect (and named back to the
//! client), or refused with 400 `unsupported_parameter` naming it. None is dropped
//! silently.
//!
//! | parameter | what rlm does |
//! |---|---|
//! | `stop` | honoured: the answer ends before the first stop sequence |
//! | `max_tokens`, `max_completion_tokens` | mapped: the root model is asked to keep its answer within it; a longer answer is cut at 4 bytes a token, `finish_reason: "length"` and a warning |
//! | `n` | 1 only |
//! | `tools`, `functions` | refused unless empty (a run cannot call the client's functions) |
//! | `tool_choice`, `function_call` | `"none"` and `"auto"` accepted (no tools: no effect); others refused |
//! | `logprobs`, `top_logprobs` | refused when asked for (`true`, a number above 0) |
//! | `logit_bias` | refused unless empty |
//! | `audio`, `prediction`, `web_search_options` | refused |
//! | `modalities` | `["text"]` only |
//! | `response_format` | left to the structured-output handling |
//! | anything else (`temperature`, `top_p`, `seed`, `user`, `metadata`, unknown keys, ...) | accepted without effect, named in the reply's `rlm.ignored_parameters` |
//!
//! A parameter whose value is `null` is taken as absent.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde_json::Value;

use crate::ServeError;

/// Parameters with a meaning here, taken from the body.
const HANDLED: &[&str] = &["model", "messages", "stream", "response_format"];

/// Parameters of OpenAI's API that change nothing for a run (the server's models keep their
/// own settings) and are accepted; they are named back to the client.
const NO_EFFECT: &[&str] = &[
    "temperature",
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "seed",
    "user",
    "metadata",
    "store",
    "service_tier",
    "reasoning_effort",
    "verbosity",
    "prompt_cache_key",
    "safety_identifier",
    "parallel_tool_calls",
];

/// Bytes per token when `max_tokens` is counted on the answer.
pub const BYTES_PER_TOKEN: usize = 4;

/// What a request's parameters ask of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Params {
    /// The answer ends before the first of these.
    pub stop: Vec<String>,
    /// The answer's most tokens (`max_tokens` / `max_completion_tokens`, the smaller).
    pub max_tokens: Option<u64>,
    /// Whether the client asked for usage at the end of a stream.
    pub include_usage: bool,
    /// Parameters given that have no effect (sorted), for `rlm.ignored_parameters`.
    pub ignored: Vec<String>,
}

impl Params {
    /// Reads and judges the parameters of a chat-completions body (a JSON object).
    ///
    /// # Errors
    /// [`ServeError::BadRequest`]: `unsupported_parameter` for one rlm cannot honour,
    /// `invalid_parameter` for a value of the wrong shape, `invalid_body` when the body is
    /// not a JSON object.
    pub fn from_body(body: &[u8]) -> Result<Self, ServeError> {
        // The keys first (the values skipped: a body may hold megabytes of messages), then
        // the values of the parameters.
        let keys: BTreeMap<String, IgnoredAny> = serde_json::from_slice(body).map_err(|e| {
            ServeError::bad_request(
                "invalid_body",
                format!("the body is not a chat-completions request: {e}"),
            )
        })?;
        let values: BTreeMap<String, Value> = {
            #[derive(serde::Deserialize)]
            struct Only(#[serde(with = "only_params")] BTreeMap<String, Value>);
            serde_json::from_slice::<Only>(body)
                .map(|o| o.0)
                .map_err(|e| ServeError::bad_request("invalid_body", e.to_string()))?
        };
        let mut params = Params::default();
        // The tools first: a request for function calling is refused for `tools` (the
        // `tool_choice` beside it would say less).
        let mut keys: Vec<&String> = keys.keys().collect();
        keys.sort_by_key(|k| !matches!(k.as_str(), "tools" | "functions"));
        for key in keys {
            let value = values.get(key).unwrap_or(&Value::Null);
            if value.is_null() || HANDLED.contains(&key.as_str()) {
                continue;
            }
            params.judge(key, value)?;
        }
        Ok(params)
    }

    fn judge(&mut self, key: &str, value: &Value) -> Result<(), ServeError> {
        let refuse = |why: &str| Err(unsupported(key, why));
        match key {
            "stop" => {
                self.stop = match value {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_owned))
                        .collect::<Option<Vec<_>>>()
                        .ok_or_else(|| invalid(key, "a string or an array of strings"))?,
                    _ => return Err(invalid(key, "a string or an array of strings")),
                };
                self.stop.retain(|s| !s.is_empty());
            }
            "max_tokens" | "max_completion_tokens" => {
                let n = value
                    .as_u64()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| invalid(key, "a whole number above 0"))?;
                self.max_tokens = Some(self.max_tokens.map_or(n, |m| m.min(n)));
            }
            "stream_options" => {
                let Value::Object(options) = value else {
                    return Err(invalid(key, "an object"));
                };
                self.include_usage = options
                    .get("include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            }
            "n" => {
                if value.as_u64() != Some(1) {
                    return refuse(
                        "rlm gives one answer per request: n must be 1 (send several \
                         requests for several answers)",
                    );
                }
            }
            "tools" | "functions" => {
                if value.as_array().is_none_or(|a| !a.is_empty()) {
                    return refuse(
                        "rlm answers with text and cannot call the client's tools or \
                         functions (for structured output, use response_format)",
                    );
                }
                self.ignore(key);
            }
            "tool_choice" | "function_call" => {
                if !matches!(value.as_str(), Some("none" | "auto")) {
                    return refuse(
                        "rlm answers with text and cannot call the client's tools or \
                         functions (for structured output, use response_format)",
                    );
                }
                self.ignore(key);
            }
            "logprobs" => {
                if value.as_bool() != Some(false) {
                    return refuse("a run's answer has no token log probabilities");
                }
                self.ignore(key);
            }
            "top_logprobs" => {
                if value.as_u64() != Some(0) {
                    return refuse("a run's answer has no token log probabilities");
                }
                self.ignore(key);
            }
            "logit_bias" => {
                if value.as_object().is_none_or(|m| !m.is_empty()) {
                    return refuse("the run's models keep the server's settings");
                }
                self.ignore(key);
            }
            "audio" => return refuse("rlm answers with text only"),
            "modalities" => {
                let text_only = value
                    .as_array()
                    .is_some_and(|m| m.iter().all(|m| m == "text"));
                if !text_only {
                    return refuse("rlm answers with text only: modalities must be [\"text\"]");
                }
                self.ignore(key);
            }
            "prediction" => return refuse("predicted outputs do not apply to a run"),
            "web_search_options" => {
                return refuse("rlm does not search the web: give the documents as context");
            }
            _ => self.ignore(key),
        }
        Ok(())
    }

    fn ignore(&mut self, key: &str) {
        if !self.ignored.iter().any(|k| k == key) {
            self.ignored.push(key.to_owned());
            self.ignored.sort();
        }
    }

    /// Whether `key` is a parameter of OpenAI's API accepted without effect.
    pub fn has_no_effect(key: &str) -> bool {
        NO_EFFECT.contains(&key)
    }

    /// What the root model is asked, for these parameters (`None`: nothing).
    pub fn instructions(&self) -> Option<String> {
        self.max_tokens.map(|n| {
            format!(
                "Keep your final answer within about {n} tokens (about {} characters): the \
                 caller cuts a longer answer there.",
                n.saturating_mul(BYTES_PER_TOKEN as u64)
            )
        })
    }

    /// Applies `stop` and `max_tokens` to `answer`; returns a warning when the answer was
    /// cut at `max_tokens` (its finish reason is then `length`).
    pub fn shape_answer(&self, answer: &mut String) -> Option<String> {
        if let Some(end) = self
            .stop
            .iter()
            .filter_map(|s| answer.find(s.as_str()))
            .min()
        {
            answer.truncate(end);
        }
        let max = self.max_tokens?;
        let limit = usize::try_from(max)
            .unwrap_or(usize::MAX)
            .saturating_mul(BYTES_PER_TOKEN);
        if answer.len() <= limit {
            return None;
        }
        let mut end = limit;
        while !answer.is_char_boundary(end) {
            end -= 1;
        }
        let was = answer.len();
        answer.truncate(end);
        Some(format!(
            "the answer was cut at max_tokens ({max} tokens, counted as {BYTES_PER_TOKEN} \
             bytes each): {end} of its {was} bytes are kept"
        ))
    }
}

impl Params {
    /// Shapes a run's answer ([`Params::shape_answer`]); a cut answer gets a warning.
    /// With an output schema the answer is JSON, which `stop` or `max_tokens` would cut into
    /// JSON that no longer conforms: both are refused then.
    ///
    /// # Errors
    /// [`ServeError::BadRequest`] `unsupported_parameter` naming the one given.
    pub fn for_typed_answer(&self) -> Result<(), ServeError> {
        const WHY: &str = "an answer typed by response_format (or the server's \
                           --output-schema) is never cut";
        if !self.stop.is_empty() {
            return Err(unsupported("stop", WHY));
        }
        if self.max_tokens.is_some() {
            return Err(unsupported("max_tokens", WHY));
        }
        Ok(())
    }

    /// Returns whether the answer was cut at `max_tokens`.
    pub fn apply(&self, result: &mut rlm_repl::RunResult) -> bool {
        match self.shape_answer(&mut result.answer) {
            Some(warning) => {
                result.warnings.push(warning);
                true
            }
            None => false,
        }
    }

    /// Adds to a chat completion (or its last chunk) what the request's handling did:
    /// `rlm.ignored_parameters`, `rlm.moved_to_context` (messages moved into the context
    /// for their length), and `finish_reason: "length"` when the answer was `cut`.
    pub fn annotate(&self, completion: &mut Value, moved: usize, cut: bool) {
        if let Some(rlm) = completion.get_mut("rlm").and_then(Value::as_object_mut) {
            rlm.insert("ignored_parameters".into(), self.ignored.clone().into());
            rlm.insert("moved_to_context".into(), moved.into());
        }
        if cut
            && let Some(choice) = completion
                .get_mut("choices")
                .and_then(|c| c.get_mut(0))
                .and_then(Value::as_object_mut)
        {
            choice.insert("finish_reason".into(), "length".into());
        }
    }
}

fn unsupported(key: &str, why: &str) -> ServeError {
    ServeError::BadRequest {
        code: "unsupported_parameter",
        param: Some(key.to_owned()),
        message: format!("unsupported parameter `{key}`: {why}"),
    }
}

fn invalid(key: &str, what: &str) -> ServeError {
    ServeError::BadRequest {
        code: "invalid_parameter",
        param: Some(key.to_owned()),
        message: format!("`{key}` must be {what}"),
    }
}

/// Reads a JSON object's values, except `messages` (skipped: it is read elsewhere).
mod only_params {
    use std::collections::BTreeMap;
    use std::fmt;

    use serde::de::{IgnoredAny, MapAccess, Visitor};
    use serde_json::Value;

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<String, Value>, D::Error> {
        struct Params;
        impl<'de> Visitor<'de> for Params {
            type Value = BTreeMap<String, Value>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key == "messages" {
                        map.next_value::<IgnoredAny>()?;
                    } else {
                        out.insert(key, map.next_value::<Value>()?);
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(Params)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn judge(body: Value) -> Result<Params, ServeError> {
        Params::from_body(body.to_string().as_bytes())
    }

    fn refused(body: Value) -> (String, String) {
        match judge(body.clone()) {
            Err(ServeError::BadRequest { code, param, .. }) => {
                (code.to_owned(), param.unwrap_or_default())
            }
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn parameters_rlm_cannot_honour_are_refused_by_name() {
        // Before: every one of these was dropped silently.
        for (body, param) in [
            (json!({"tools": [{"type": "function"}]}), "tools"),
            (json!({"tool_choice": "required"}), "tool_choice"),
            (
                json!({"tool_choice": {"type": "function", "function": {"name": "f"}}}),
                "tool_choice",
            ),
            (json!({"functions": [{"name": "f"}]}), "functions"),
            (json!({"function_call": {"name": "f"}}), "function_call"),
            (json!({"n": 2}), "n"),
            (json!({"logprobs": true}), "logprobs"),
            (json!({"top_logprobs": 3}), "top_logprobs"),
            (json!({"logit_bias": {"50256": -100}}), "logit_bias"),
            (json!({"audio": {"voice": "alloy"}}), "audio"),
            (json!({"modalities": ["text", "audio"]}), "modalities"),
            (json!({"prediction": {"type": "content"}}), "prediction"),
            (json!({"web_search_options": {}}), "web_search_options"),
        ] {
            assert_eq!(
                refused(body),
                ("unsupported_parameter".to_owned(), param.to_owned())
            );
        }
        for (body, param) in [
            (json!({"max_tokens": 0}), "max_tokens"),
            (
                json!({"max_completion_tokens": "ten"}),
                "max_completion_tokens",
            ),
            (json!({"stop": 3}), "stop"),
            (json!({"stream_options": true}), "stream_options"),
        ] {
            assert_eq!(
                refused(body),
                ("invalid_parameter".to_owned(), param.to_owned())
            );
        }
    }

    #[test]
    fn harmless_parameters_are_accepted_and_named() {
        let params = judge(json!({
            "model": "m", "messages": [{"role": "user", "content": "q"}], "stream": true,
            "temperature": 0.2, "top_p": 1, "seed": 7, "user": "u", "metadata": {"a": "b"},
            "n": 1, "tools": [], "tool_choice": "auto", "logprobs": false, "top_k": 40,
            "stream_options": {"include_usage": true}, "response_format": {"type": "text"},
            "frequency_penalty": null,
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(params.include_usage);
        assert_eq!(
            params.ignored,
            [
                "logprobs",
                "metadata",
                "seed",
                "temperature",
                "tool_choice",
                "tools",
                "top_k",
                "top_p",
                "user"
            ]
        );
        assert!(Params::has_no_effect("temperature") && !Params::has_no_effect("top_k"));
    }

    #[test]
    fn stop_and_max_tokens_shape_the_answer() {
        let params = judge(json!({"stop": ["\n\n", "END"], "max_completion_tokens": 3}))
            .unwrap_or_else(|e| panic!("{e}"));
        let mut answer = "one two END three".to_owned();
        assert_eq!(params.shape_answer(&mut answer), None);
        assert_eq!(answer, "one two ");
        let mut answer = "a much longer answer".to_owned();
        let warning = params.shape_answer(&mut answer);
        assert_eq!(answer, "a much longe");
        assert!(warning.is_some_and(|w| w.contains("max_tokens (3 tokens")));
        let mut answer = "ééééééé".to_owned();
        let _ = params.shape_answer(&mut answer);
        assert_eq!(answer, "éééééé");
        assert!(
            params
                .instructions()
                .is_some_and(|i| i.contains("3 tokens"))
        );
        let both = judge(json!({"max_tokens": 10, "max_completion_tokens": 5}))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(both.max_tokens, Some(5));
    }

    #[test]
    fn a_body_that_is_not_an_object_is_invalid() {
        for body in [&b"[1]"[..], b"{not json", b"\"x\""] {
            assert!(matches!(
                Params::from_body(body),
                Err(ServeError::BadRequest {
                    code: "invalid_body",
                    ..
                })
            ));
        }
    }
}
