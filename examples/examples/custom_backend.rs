//! Bringing your own provider: a backend is one `LlmBackend` impl, and an `Rlm` runs on it.
//!
//! ```text
//! cargo run -p rlm-examples --example custom_backend
//! ```
//!
//! Three backends in a few lines each, all offline:
//! - `Rules`: a "sub model" that answers by rule (a stand-in for any provider SDK you wrap);
//! - `Scripted`: a "root model" that replies with fixed code, turn by turn;
//! - `Router`: picks a backend by model-name prefix, so one `Rlm` talks to several
//!   providers, and swapping one is a one-line change.
//!
//! `rlm_openai::OpenAiBackend` and `rlm_cache::CachedBackend` implement the same trait, so
//! they slot into the router (or replace it) without touching the rest.

use std::sync::Arc;

use rlm_core::async_trait;
use rlm_core::{
    BatchExecutor, Completion, CompletionRequest, LlmBackend, LlmError, Role, Usage,
    estimate_tokens,
};
use rlm_repl::{Context, Event, Rlm};

/// A provider that classifies support tickets by keyword.
struct Rules;

#[async_trait]
impl LlmBackend for Rules {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let prompt = request
            .last_user_message()
            .unwrap_or_default()
            .to_lowercase();
        let label = if prompt.contains("refund") || prompt.contains("broken") {
            "complaint"
        } else if prompt.contains('?') {
            "question"
        } else {
            "other"
        };
        let usage = Usage::new(request.estimated_prompt_tokens(), estimate_tokens(label));
        Ok(Completion::new(&request.model, label).with_usage(usage))
    }
}

// The generic bounded batch executor, for free: `llm_batch` runs many calls at once.
impl BatchExecutor for Rules {}

/// A root model that plays back a script: reply `n` for turn `n`.
struct Scripted(Vec<&'static str>);

#[async_trait]
impl LlmBackend for Scripted {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let turn = request
            .messages
            .iter()
            .filter(|m| m.role == Role::Assistant)
            .count();
        let reply = self
            .0
            .get(turn)
            .ok_or_else(|| LlmError::invalid_response("the script has no more turns"))?;
        Ok(Completion::new(&request.model, *reply))
    }
}

/// Sends each request to the first backend whose prefix starts its model name, and strips
/// the prefix: `rules/tickets` goes to the `rules/` backend as model `tickets`.
struct Router(Vec<(&'static str, Arc<dyn LlmBackend>)>);

#[async_trait]
impl LlmBackend for Router {
    async fn complete(&self, mut request: CompletionRequest) -> Result<Completion, LlmError> {
        for (prefix, backend) in &self.0 {
            if let Some(model) = request.model.strip_prefix(prefix) {
                request.model = model.to_owned();
                return backend.complete(request).await;
            }
        }
        Err(LlmError::BadRequest {
            status: 404,
            message: format!("no backend serves {:?}", request.model),
            code: Some("model_not_found".to_owned()),
        })
    }
}

impl BatchExecutor for Router {}

const TURN_1: &str = r#"Classify every ticket in one batch.

```repl
let labels = llm_batch(context.map(|t| "Label this ticket: complaint, question or other.\n\n" + t));
let complaints = [];
for (label, i) in labels {
    if label == "complaint" { complaints.push(i + 1); }
}
print("complaints: " + complaints);
```"#;

const TURN_2: &str = r#"FINAL_VAR(complaints)"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let router = Arc::new(Router(vec![
        ("script/", Arc::new(Scripted(vec![TURN_1, TURN_2]))),
        ("rules/", Arc::new(Rules)),
        // Swap a provider by changing one line, e.g.
        // ("openai/", Arc::new(rlm_openai::OpenAiBackend::from_env()?)),
    ]));

    let tickets = [
        "The blender arrived broken.",
        "Do you ship to Norway?",
        "Thanks, all good.",
        "I want a refund for order 1182.",
        "How do I reset my password?",
    ]
    .map(str::to_owned)
    .to_vec();

    let rlm = Rlm::builder(router.clone())
        .root_model("script/root")
        .sub_backend(router)
        .sub_model("rules/tickets")
        .max_concurrent(4)
        .observer(Arc::new(|event: &Event| {
            if let Event::CodeBlock { output, .. } = event {
                print!("code output: {output}");
            }
        }))
        .build()?;

    let result = rlm
        .run("Which tickets are complaints?", Context::Documents(tickets))
        .await?;
    println!("answer: {} (stopped: {})", result.answer, result.stopped);
    println!(
        "{} root turns, {} sub-calls",
        result.iterations, result.sub_calls
    );
    for (model, usage) in &result.usage {
        println!(
            "  {model}: {} calls, {} prompt + {} completion tokens",
            usage.calls, usage.prompt_tokens, usage.completion_tokens
        );
    }
    Ok(())
}
