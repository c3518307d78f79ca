//! `llm_query_json` and `llm_batch_json`: sub-calls whose replies are parsed and validated
//! against a JSON Schema, with one repair re-ask per item that quotes the validation errors.
//!
//! How the schema reaches the sub-model is [`StructuredOutput`]: OpenAI's `response_format`
//! (`json_schema`, strict) or the schema in the prompt. In `auto` mode a model whose server
//! refuses `response_format` gets the prompt form for the rest of the run (one warning); a
//! schema strict mode cannot take (an open object, an optional key) goes in the prompt.

use std::sync::atomic::Ordering;

use rhai::Dynamic;
use rlm_core::{CompletionRequest, Message, ResponseFormat, Text};
use serde_json::Value;

use super::subcall::{Sent, SubCaller};
use crate::schema::{OutputSchema, StructuredOutput};
use crate::sync::lock;

/// Characters of a bad reply quoted in an `Error: ...` item.
const QUOTED_REPLY_CHARS: usize = 200;

/// How one batch asks for JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `response_format` with the schema, strict.
    Native,
    /// The schema in the prompt.
    Prompt,
}

impl SubCaller {
    /// `llm_batch_json`: one value per prompt, in order: the parsed reply that conforms to
    /// `schema` (after at most one repair re-ask), or an `Error: ...` string.
    pub(crate) fn batch_json(
        &self,
        prompts: Vec<Text>,
        schema: &OutputSchema,
        max_concurrent: usize,
    ) -> Vec<Dynamic> {
        let form = self.form(schema);
        let requests: Vec<CompletionRequest> = prompts
            .iter()
            .map(|prompt| self.json_request(prompt, schema, form))
            .collect();
        let mut sent = self.send_requests(requests.clone(), max_concurrent);
        let mut requests = requests;
        if form == Form::Native {
            self.after_native(&prompts, schema, &mut requests, &mut sent, max_concurrent);
        }

        // Parse and validate; the replies that do not conform are asked once more.
        let mut values: Vec<Result<Value, String>> = Vec::with_capacity(sent.len());
        let mut repairs = Vec::new();
        for (index, item) in sent.iter().enumerate() {
            if !item.ok {
                values.push(Err(item.text.clone()));
                continue;
            }
            match schema.accept_reply(&item.text) {
                Ok(value) => values.push(Ok(value)),
                Err(errors) => {
                    values.push(Err(errors.clone()));
                    repairs.push((index, repair_request(&requests[index], &item.text, &errors)));
                }
            }
        }
        if !repairs.is_empty() {
            let (indices, repair_requests): (Vec<usize>, Vec<CompletionRequest>) =
                repairs.into_iter().unzip();
            let repaired = self.send_requests(repair_requests, max_concurrent);
            for (index, item) in indices.into_iter().zip(repaired) {
                values[index] = if !item.ok {
                    Err(item.text)
                } else {
                    schema.accept_reply(&item.text).map_err(|errors| {
                        self.run()
                            .ledger
                            .failed_sub_calls
                            .fetch_add(1, Ordering::SeqCst);
                        format!(
                            "Error: the sub-model's reply did not conform to the schema, even \
                             after one repair re-ask: {}; the reply began: {}",
                            errors.replace('\n', "; "),
                            quote(&item.text)
                        )
                    })
                };
            }
        }
        values
            .into_iter()
            .map(|value| match value {
                Ok(value) => crate::context::json_to_dynamic(value),
                Err(error) => Dynamic::from(error),
            })
            .collect()
    }

    /// How this batch asks for `schema`.
    fn form(&self, schema: &OutputSchema) -> Form {
        let mode = self.structured_output();
        if mode == StructuredOutput::Prompt {
            return Form::Prompt;
        }
        let ledger = &self.run().ledger;
        if mode == StructuredOutput::Auto && lock(&ledger.format_refused).contains(self.model()) {
            return Form::Prompt;
        }
        match schema.strict_problem() {
            None => Form::Native,
            Some(problem) => {
                if mode == StructuredOutput::Native {
                    self.warn_once(
                        "strict",
                        format!(
                            "--structured-output native: a schema of llm_query_json / \
                             llm_batch_json cannot be sent in strict mode ({problem}); it was \
                             put in the prompt instead"
                        ),
                    );
                }
                Form::Prompt
            }
        }
    }

    /// After a batch sent with `response_format`: in `auto` mode, the items the server
    /// refused for it are sent again with the schema in the prompt (and so is every later
    /// call to this model); in `native` mode they are failed items.
    fn after_native(
        &self,
        prompts: &[Text],
        schema: &OutputSchema,
        requests: &mut [CompletionRequest],
        sent: &mut [Sent],
        max_concurrent: usize,
    ) {
        let refused: Vec<usize> = (0..sent.len())
            .filter(|&i| sent[i].format_refused.is_some())
            .collect();
        let Some(error) = refused
            .first()
            .and_then(|&i| sent[i].format_refused.clone())
        else {
            return;
        };
        let ledger = &self.run().ledger;
        if self.structured_output() == StructuredOutput::Native {
            ledger
                .failed_sub_calls
                .fetch_add(refused.len() as u64, Ordering::SeqCst);
            return;
        }
        if lock(&ledger.format_refused).insert(self.model().to_owned()) {
            lock(&ledger.child_warnings).push(format!(
                "the server of {} refused response_format ({error}): llm_query_json / \
                 llm_batch_json put the schema in the prompt for it for the rest of the run",
                self.model()
            ));
        }
        let again: Vec<CompletionRequest> = refused
            .iter()
            .map(|&i| self.json_request(&prompts[i], schema, Form::Prompt))
            .collect();
        for (&i, request) in refused.iter().zip(&again) {
            requests[i] = request.clone();
        }
        let resent = self.send_requests(again, max_concurrent);
        for (&i, item) in refused.iter().zip(resent) {
            sent[i] = item;
        }
    }

    /// The request that asks for `prompt`'s answer as JSON of `schema`.
    fn json_request(&self, prompt: &Text, schema: &OutputSchema, form: Form) -> CompletionRequest {
        match form {
            Form::Native => CompletionRequest::prompt(
                self.model().to_owned(),
                format!("{prompt}\n\nReply with the JSON value only."),
            )
            .with_response_format(ResponseFormat::json_schema(
                "output",
                schema.schema().clone(),
            )),
            Form::Prompt => CompletionRequest::prompt(
                self.model().to_owned(),
                format!(
                    "{prompt}\n\nReply with only a JSON value (no prose, no code fence) that \
                     conforms to this JSON Schema:\n{}",
                    schema.schema()
                ),
            ),
        }
    }

    /// Records `warning` for the run once per `key`.
    fn warn_once(&self, key: &str, warning: String) {
        let ledger = &self.run().ledger;
        if lock(&ledger.format_refused).insert(format!("\u{0}{key}")) {
            lock(&ledger.child_warnings).push(warning);
        }
    }
}

/// The repair re-ask: the conversation so far, and the errors of the reply.
fn repair_request(asked: &CompletionRequest, reply: &str, errors: &str) -> CompletionRequest {
    let mut request = asked.clone();
    request.messages.push(Message::assistant(reply.to_owned()));
    request.messages.push(Message::user(format!(
        "Your reply is not valid for the JSON Schema:\n{errors}\nReply again with only the \
         corrected JSON value (no prose, no code fence)."
    )));
    request
}

/// The start of a reply, on one line.
fn quote(text: &str) -> String {
    let flat: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= QUOTED_REPLY_CHARS {
        return flat;
    }
    let head: String = flat.chars().take(QUOTED_REPLY_CHARS).collect();
    format!("{head}...")
}
