//! Host functions: the caller's own async functions, callable from the REPL by name.
//!
//! [`RlmBuilder::tool`](crate::RlmBuilder::tool) registers one: a script calls
//! `name(value)` (or `name()`), the function gets the value as JSON and its JSON result
//! comes back as a Rhai value; an error comes back as an `Error: ...` string. Each tool is
//! listed with its description in the root model's first message, each call is a
//! [`Event::ToolCall`](crate::Event::ToolCall) and counts in
//! [`RunResult::tool_calls`](crate::RunResult::tool_calls).
//!
//! The sandbox knows nothing of runs: it calls out through [`ToolCaller`], which the loop
//! implements (accounting, events, cancellation).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

/// What a host function's call resolves to: its JSON result, or why it failed.
pub type ToolFuture = Pin<Box<dyn Future<Output = Result<Value, String>> + Send>>;

type ToolFn = dyn Fn(Value) -> ToolFuture + Send + Sync;

/// A host function: a name the REPL calls, a description for the root model, and an async
/// function from one JSON value to another.
#[derive(Clone)]
pub struct Tool {
    name: String,
    description: String,
    call: Arc<ToolFn>,
}

impl Tool {
    /// A tool named `name` (a script identifier) that runs `f`. Its error's text becomes the
    /// script's `Error: ...` string.
    pub fn new<F, Fut, E>(name: impl Into<String>, description: impl Into<String>, f: F) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Value, E>> + Send + 'static,
        E: fmt::Display,
    {
        Self {
            name: name.into(),
            description: description.into(),
            call: Arc::new(move |value| {
                let future = f(value);
                Box::pin(async move { future.await.map_err(|e| e.to_string()) })
            }),
        }
    }

    /// The name scripts call it by.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What it does, as the root model is told.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// Calls it with `argument`.
    pub fn call(&self, argument: Value) -> ToolFuture {
        (self.call)(argument)
    }
}

impl fmt::Debug for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.name)
            .field("description", &self.description)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Tool {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.description == other.description
            && Arc::ptr_eq(&self.call, &other.call)
    }
}

/// Names a tool may not take: the REPL's own functions, variables and Rhai's keywords that
/// scripts rely on.
const RESERVED: &[&str] = &[
    "context",
    "llm_query",
    "llm_batch",
    "llm_query_batched",
    "llm_query_json",
    "llm_batch_json",
    "rlm_query",
    "rlm_batch",
    "print",
    "debug",
    "FINAL",
    "FINAL_VAR",
    "SHOW_VARS",
    "len",
    "sleep",
    "eval",
    "let",
    "const",
    "fn",
    "if",
    "else",
    "for",
    "in",
    "while",
    "loop",
    "return",
    "throw",
    "try",
    "catch",
    "true",
    "false",
];

/// Checks the tools' names: identifiers, unique, none of the REPL's own.
pub(crate) fn check(tools: &[Tool]) -> Result<(), String> {
    for (i, tool) in tools.iter().enumerate() {
        let name = tool.name();
        let mut chars = name.chars();
        let identifier = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(format!(
                "tool name {name:?} is not an identifier (letters, digits and _, not starting \
                 with a digit)"
            ));
        }
        if RESERVED.contains(&name) {
            return Err(format!(
                "tool name {name:?} is one of the REPL's own names; choose another"
            ));
        }
        if tools[..i].iter().any(|t| t.name() == name) {
            return Err(format!("tool name {name:?} is given twice"));
        }
    }
    Ok(())
}

/// The first message's list of the tools (empty without tools).
pub(crate) fn listing(tools: &[Tool]) -> String {
    if tools.is_empty() {
        return String::new();
    }
    let mut text = String::from(
        "\n\nHost functions you may call from code (each takes one value: a string, number, \
         array or map, or nothing; it returns a value, or a string starting \"Error:\" when it \
         fails):\n",
    );
    for tool in tools {
        let description = tool.description().trim();
        if description.is_empty() {
            text.push_str(&format!("- {}(value)\n", tool.name()));
        } else {
            text.push_str(&format!("- {}(value): {description}\n", tool.name()));
        }
    }
    text
}

/// The seam between the sandbox and the loop: the REPL hands a call of a host function to
/// it and blocks its own thread until the result.
pub(crate) trait ToolCaller: Send + Sync {
    /// Calls the tool `name` with `argument`: its JSON result or the error's text.
    fn call(&self, name: &str, argument: Value) -> ToolFuture;
}
