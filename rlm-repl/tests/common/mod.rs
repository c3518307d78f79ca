//! Helpers shared by the loop tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use rlm_core::mock::MockBackend;
use rlm_repl::{Event, Rlm, RlmBuilder};

/// A reply holding one ```repl block.
pub fn fence(code: &str) -> String {
    format!("```repl\n{code}\n```")
}

/// A builder with a scripted root and the given sub-model.
pub fn builder(root: &MockBackend, sub: &MockBackend) -> RlmBuilder {
    Rlm::builder(Arc::new(root.clone()))
        .root_model("root")
        .sub_backend(Arc::new(sub.clone()))
        .sub_model("sub")
}

/// Builds, failing the test on a configuration error.
pub trait BuildOk {
    /// The built `Rlm`.
    fn build_ok(self) -> Rlm;
}

impl BuildOk for RlmBuilder {
    fn build_ok(self) -> Rlm {
        self.build().unwrap_or_else(|e| panic!("{e}"))
    }
}

/// Runs, failing the test if the run returns an error.
pub async fn run_ok(rlm: &Rlm, query: &str, context: rlm_repl::Context) -> rlm_repl::RunResult {
    rlm.run(query, context)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The last user message of the root model's `n`-th request (from 0): what it saw.
pub fn seen(root: &MockBackend, n: usize) -> String {
    root.requests()
        .get(n)
        .and_then(|r| r.messages.last().map(|m| m.content.to_string()))
        .unwrap_or_default()
}

/// Collects every event.
#[derive(Default)]
pub struct Events(pub Mutex<Vec<Event>>);

impl rlm_repl::Observer for Events {
    fn on_event(&self, event: &Event) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}

impl Events {
    pub fn all(&self) -> Vec<Event> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A sub-model that finds "the secret number is N" in its prompt, else answers NONE.
pub fn needle_finder() -> MockBackend {
    MockBackend::from_fn(|request| {
        let prompt = request.last_user_message().unwrap_or_default();
        Ok(match prompt.find("the secret number is ") {
            Some(at) => prompt[at + 21..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect(),
            None => "NONE".to_owned(),
        })
    })
}
