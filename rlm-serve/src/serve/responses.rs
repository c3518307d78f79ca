//! OpenAI's Responses API on `rlm serve`: `POST /v1/responses` (streaming and not),
//! `GET` and `DELETE /v1/responses/{id}`, and sessions continued with `previous_response_id`.
//!
//! - `input` is a string (the query) or message items (`role` and `content`, a string or
//!   `input_text` / `output_text` parts); the query is the last user message. The context is
//!   the server's `--context` when it has one, else the text of the items before the query
//!   (system and developer items are instructions, as `instructions` is). A session's first
//!   question is made into a run by [`crate::inline::run_input`], the chat completions' rule:
//!   a query or instruction over `--inline-max-bytes` becomes a document of the context and
//!   the root model sees its head and tail.
//! - A response starts a session (an [`rlm_repl::Session`]); `previous_response_id` naming the
//!   latest response of a session asks the next question in it: the REPL's variables and the
//!   conversation are kept, the context is not loaded again. Such a request's `input` holds
//!   the new question only (and instructions); `instructions` are not carried over, as in
//!   OpenAI's API. The context cannot grow: a follow-up's question or instruction over
//!   `--inline-max-bytes` is refused with 400 `message_too_long`.
//! - The store keeps at most `max_sessions` sessions (the least recently used is evicted),
//!   each for `session_ttl` after its last use, and the last [`KEPT_RESPONSES`] responses of
//!   each. An unknown, expired or evicted id is 404 `session_not_found`. `store: false`
//!   keeps nothing (the response cannot be retrieved or continued).
//! - Parameters this server cannot honour are refused with 400 `unsupported_parameter`
//!   naming them. `text.format` `json_schema` / `json_object` is the run's output schema: the
//!   output text is the conforming JSON, or the response fails with 422 `schema_not_met`.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex as StdMutex;
use std::time::{Duration, Instant};

use axum::extract::Path;
use serde_json::Map;

use super::*;

/// Responses kept per session for `GET` (the latest ones).
pub(super) const KEPT_RESPONSES: usize = 16;

/// Parameters accepted as they are (beyond those read below): they change nothing here.
const NEUTRAL: &[&str] = &["model", "user", "metadata", "parallel_tool_calls", "stream"];

/// The sessions of the Responses API and the responses they gave.
pub(super) struct Store {
    inner: StdMutex<Inner>,
    ttl: Duration,
    max_sessions: usize,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<u64, Entry>,
    /// Response id -> its session and its JSON.
    responses: HashMap<String, Stored>,
    next_session: u64,
}

struct Entry {
    session: Arc<tokio::sync::Mutex<Session>>,
    last_used: Instant,
    /// The session's responses, oldest first (the last is the one to continue).
    responses: VecDeque<String>,
}

struct Stored {
    session: u64,
    body: Value,
}

use rlm_repl::Session;

impl Store {
    pub(super) fn new(ttl: Duration, max_sessions: usize) -> Self {
        Self {
            inner: StdMutex::new(Inner::default()),
            ttl,
            max_sessions: max_sessions.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets the sessions unused for longer than the TTL, and their responses.
    fn expire(&self, inner: &mut Inner) {
        let now = Instant::now();
        let expired: Vec<u64> = inner
            .sessions
            .iter()
            .filter(|(_, entry)| now.duration_since(entry.last_used) >= self.ttl)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            remove_session(inner, id);
        }
    }

    /// The session whose latest response is `id`, marked used, with `next` (its body when it
    /// is stored) claimed as its latest response at once: another request continuing `id`
    /// meanwhile is refused, not run on top of this one.
    fn continue_from(
        &self,
        id: &str,
        next: &str,
        body: Option<Value>,
    ) -> Result<(u64, Arc<tokio::sync::Mutex<Session>>), ApiError> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        let Some(session_id) = inner.responses.get(id).map(|s| s.session) else {
            return Err(not_found(id));
        };
        let Some(entry) = inner.sessions.get_mut(&session_id) else {
            return Err(not_found(id));
        };
        if entry.responses.back().map(String::as_str) != Some(id) {
            let latest = entry.responses.back().cloned().unwrap_or_default();
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "invalid_request_error",
                "session_moved_on",
                format!(
                    "response {id} is not the latest of its session ({latest} is): a session \
                     keeps one REPL, so only its latest response can be continued"
                ),
            ));
        }
        entry.last_used = Instant::now();
        let session = Arc::clone(&entry.session);
        push_response(&mut inner, session_id, next, body);
        Ok((session_id, session))
    }

    /// Takes back a claimed response that never ran (the queue was full): `previous` is the
    /// session's latest again.
    fn unclaim(&self, session: u64, id: &str) {
        let mut inner = self.lock();
        inner.responses.remove(id);
        if let Some(entry) = inner.sessions.get_mut(&session) {
            entry.responses.retain(|r| r != id);
        }
    }

    /// Keeps a new session; evicts the least recently used one beyond the bound.
    fn insert(&self, session: Arc<tokio::sync::Mutex<Session>>) -> u64 {
        let mut inner = self.lock();
        self.expire(&mut inner);
        while inner.sessions.len() >= self.max_sessions {
            let Some(oldest) = inner
                .sessions
                .iter()
                .min_by_key(|(_, entry)| entry.last_used)
                .map(|(id, _)| *id)
            else {
                break;
            };
            remove_session(&mut inner, oldest);
        }
        inner.next_session += 1;
        let id = inner.next_session;
        inner.sessions.insert(
            id,
            Entry {
                session,
                last_used: Instant::now(),
                responses: VecDeque::new(),
            },
        );
        id
    }

    /// Records `body` as the response `id` of session `session` (its latest). Returns false
    /// when the session is gone (evicted or expired meanwhile): the response is not kept.
    fn record(&self, session: u64, id: &str, body: Value) -> bool {
        push_response(&mut self.lock(), session, id, Some(body))
    }

    /// Ends a session (a `store: false` turn, or a failed first turn).
    fn end(&self, session: u64) {
        remove_session(&mut self.lock(), session);
    }

    fn get(&self, id: &str) -> Option<Value> {
        let mut inner = self.lock();
        self.expire(&mut inner);
        inner.responses.get(id).map(|s| s.body.clone())
    }

    /// Deletes a response; deleting a session's latest response ends the session.
    fn delete(&self, id: &str) -> bool {
        let mut inner = self.lock();
        self.expire(&mut inner);
        let Some(stored) = inner.responses.remove(id) else {
            return false;
        };
        let latest = inner
            .sessions
            .get(&stored.session)
            .and_then(|entry| entry.responses.back())
            .is_some_and(|latest| latest == id);
        if latest {
            remove_session(&mut inner, stored.session);
        } else if let Some(entry) = inner.sessions.get_mut(&stored.session) {
            entry.responses.retain(|r| r != id);
        }
        true
    }
}

/// Makes `id` the latest response of `session` (if it is not already), keeps its `body` if
/// given, and forgets the responses beyond the last [`KEPT_RESPONSES`]. False when the session
/// is gone.
fn push_response(inner: &mut Inner, session: u64, id: &str, body: Option<Value>) -> bool {
    let Some(entry) = inner.sessions.get_mut(&session) else {
        return false;
    };
    entry.last_used = Instant::now();
    if entry.responses.back().map(String::as_str) != Some(id) {
        entry.responses.push_back(id.to_owned());
    }
    let dropped: Vec<String> = if entry.responses.len() > KEPT_RESPONSES {
        let extra = entry.responses.len() - KEPT_RESPONSES;
        entry.responses.drain(..extra).collect()
    } else {
        Vec::new()
    };
    for old in dropped {
        inner.responses.remove(&old);
    }
    if let Some(body) = body {
        inner
            .responses
            .insert(id.to_owned(), Stored { session, body });
    }
    true
}

fn remove_session(inner: &mut Inner, id: u64) {
    if let Some(entry) = inner.sessions.remove(&id) {
        for response in entry.responses {
            inner.responses.remove(&response);
        }
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "invalid_request_error",
        "session_not_found",
        format!(
            "no response {id}: it is unknown, or its session expired (--session-ttl), was \
             evicted (--max-sessions) or was deleted"
        ),
    )
}

/// A Responses API request, read.
#[derive(Debug)]
struct CreateRequest {
    model: String,
    stream: bool,
    store: bool,
    query: String,
    documents: Vec<String>,
    /// `instructions` and the system and developer items, each on its own (a long one moves
    /// into the context by itself).
    instruction_messages: Vec<String>,
    /// The same, joined: what the response object echoes.
    instructions: Option<String>,
    previous: Option<String>,
    metadata: Value,
    user: Value,
    /// The answer's schema, from `text.format` (`json_schema` / `json_object`).
    output_schema: Option<rlm_repl::OutputSchema>,
}

impl CreateRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let raw: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(
                "invalid_body",
                format!("the body is not a Responses API request (a JSON object): {e}"),
            )
        })?;
        for (name, value) in &raw {
            if value.is_null() || NEUTRAL.contains(&name.as_str()) {
                continue;
            }
            let fine = match name.as_str() {
                "input" | "instructions" | "previous_response_id" | "store" | "text" => true,
                "tools" | "include" => value.as_array().is_some_and(Vec::is_empty),
                "tool_choice" => value == "none" || value == "auto",
                "truncation" => value == "auto",
                _ => false,
            };
            if !fine {
                return Err(unsupported(format!(
                    "the parameter `{name}` is not supported by rlm serve's Responses API \
                         (see the README's Serving section)"
                )));
            }
        }
        let string = |name: &str| -> Result<Option<String>, ApiError> {
            match raw.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ApiError::bad_request(
                    "invalid_body",
                    format!("`{name}` must be a string"),
                )),
            }
        };
        // `text.format` json_schema / json_object is the run's output schema.
        let output_schema =
            crate::schema::from_response_format(raw.get("text").and_then(|t| t.get("format")))
                .map_err(|message| ApiError::bad_request("invalid_response_format", message))?;
        let mut instructions: Vec<String> = string("instructions")?.into_iter().collect();
        let mut texts: Vec<(String, String)> = Vec::new();
        match raw.get("input") {
            Some(Value::String(text)) => texts.push(("user".to_owned(), text.clone())),
            Some(Value::Array(items)) => {
                for (index, item) in items.iter().enumerate() {
                    texts.push(input_item(index, item)?);
                }
            }
            None | Some(Value::Null) => {
                return Err(ApiError::bad_request(
                    "no_user_message",
                    "`input` is required: the question (a string) or message items",
                ));
            }
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "`input` must be a string or an array of message items",
                ));
            }
        }
        let Some(last_user) = texts.iter().rposition(|(role, _)| role == "user") else {
            return Err(ApiError::bad_request(
                "no_user_message",
                "`input` has no user message: the last user message is the query",
            ));
        };
        let is_instruction = |role: &str| role == "system" || role == "developer";
        instructions.extend(
            texts
                .iter()
                .filter(|(role, text)| is_instruction(role) && !text.trim().is_empty())
                .map(|(_, text)| text.clone()),
        );
        let query = std::mem::take(&mut texts[last_user].1);
        if query.trim().is_empty() {
            return Err(ApiError::bad_request(
                "empty_query",
                "the last user message (the query) is empty",
            ));
        }
        let after = texts.split_off(last_user + 1);
        if after.iter().any(|(role, _)| !is_instruction(role)) {
            return Err(ApiError::bad_request(
                "invalid_body",
                "`input` has messages after the last user message; the query must be last",
            ));
        }
        texts.truncate(last_user);
        let documents: Vec<String> = texts
            .into_iter()
            .filter(|(role, _)| !is_instruction(role))
            .map(|(_, text)| text)
            .collect();
        let store = match raw.get("store") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(ApiError::bad_request(
                    "invalid_body",
                    "`store` must be true or false",
                ));
            }
        };
        Ok(Self {
            model: string("model")?.unwrap_or_else(|| MODEL_ID.to_owned()),
            stream: raw.get("stream").and_then(Value::as_bool).unwrap_or(false),
            store,
            query,
            documents,
            instructions: (!instructions.is_empty()).then(|| instructions.join("\n\n")),
            instruction_messages: instructions,
            previous: string("previous_response_id")?,
            metadata: raw.get("metadata").cloned().unwrap_or(Value::Null),
            user: raw.get("user").cloned().unwrap_or(Value::Null),
            output_schema,
        })
    }

    /// The first question of a session made into a run's input by [`inline::run_input`], the
    /// one rule the Chat Completions endpoint follows too: the instructions, the items before
    /// the query (the documents of the context) and the query; the server's context, if it
    /// has one, is the context, and a query or instruction longer than `inline_max_bytes`
    /// becomes a document of it.
    fn first_input(
        &mut self,
        shared: Option<&SharedContext>,
        inline_max_bytes: usize,
    ) -> Result<inline::RunInput, ApiError> {
        let mut messages: Vec<ChatMessage> = std::mem::take(&mut self.instruction_messages)
            .into_iter()
            .map(|text| ChatMessage::new("system", text))
            .collect();
        messages.extend(
            std::mem::take(&mut self.documents)
                .into_iter()
                .map(|text| ChatMessage::new("user", text)),
        );
        messages.push(ChatMessage::new("user", std::mem::take(&mut self.query)));
        Ok(inline::run_input(messages, shared, inline_max_bytes)?)
    }

    /// A follow-up's new messages must fit the prompt: the session's context is fixed once
    /// the session starts, so a message over `inline_max_bytes` cannot move into it and is
    /// refused (400 `message_too_long`), never sent whole to the root model.
    fn check_follow_up(&self, inline_max_bytes: usize) -> Result<(), ApiError> {
        if !self.documents.is_empty() {
            return Err(ApiError::bad_request(
                "invalid_body",
                "with previous_response_id the context is the session's: `input` may hold \
                 only the new question (and system or developer messages)",
            ));
        }
        if inline_max_bytes == 0 {
            return Ok(());
        }
        let long = std::iter::once(("the new question", &self.query)).chain(
            self.instruction_messages
                .iter()
                .map(|text| ("an instruction", text)),
        );
        for (what, text) in long {
            if text.len() > inline_max_bytes {
                return Err(ApiError::bad_request(
                    "message_too_long",
                    format!(
                        "{what} is {} bytes, more than --inline-max-bytes ({inline_max_bytes}); \
                         with previous_response_id the session's context is fixed, so a long \
                         document cannot join it: start a new session with the document in \
                         `input` (it becomes part of the context)",
                        text.len()
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// An `input` item: a message (`role`, `content`), as its role and text.
fn input_item(index: usize, item: &Value) -> Result<(String, String), ApiError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    if kind != "message" {
        return Err(unsupported(format!(
            "input[{index}] is a {kind:?} item; only message items are supported"
        )));
    }
    let role = item.get("role").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request("invalid_body", format!("input[{index}] has no role"))
    })?;
    let text = match item.get("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text" | "text") => {
                        text.push_str(part.get("text").and_then(Value::as_str).unwrap_or_default());
                    }
                    other => {
                        return Err(unsupported(format!(
                            "input[{index}] has a {:?} part; only text is supported",
                            other.unwrap_or("untyped")
                        )));
                    }
                }
            }
            text
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("input[{index}].content must be a string or an array of parts"),
            ));
        }
    };
    Ok((role.to_owned(), text))
}

/// 400 `unsupported_parameter`: the message names the parameter.
fn unsupported(message: String) -> ApiError {
    ApiError::bad_request("unsupported_parameter", message)
}

/// What every event and the response object of one request repeat.
struct Head {
    id: String,
    message_id: String,
    created_at: u64,
    model: String,
    previous: Option<String>,
    instructions: Option<String>,
    metadata: Value,
    user: Value,
    store: bool,
    /// Messages moved into the context for their length (`rlm.moved_to_context`).
    moved: usize,
}

impl Head {
    /// The response object: `in_progress` without a result; then `completed`, `incomplete`
    /// (a budget ended the run) or `failed`.
    fn response(&self, outcome: Option<Result<&RunResult, &ApiError>>) -> Value {
        let mut body = json!({
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": "in_progress",
            "error": null,
            "incomplete_details": null,
            "instructions": self.instructions,
            "metadata": if self.metadata.is_null() { json!({}) } else { self.metadata.clone() },
            "model": self.model,
            "output": [],
            "parallel_tool_calls": false,
            "previous_response_id": self.previous,
            "store": self.store,
            "text": {"format": {"type": "text"}},
            "tool_choice": "none",
            "tools": [],
            "truncation": "auto",
            "usage": null,
            "user": self.user,
        });
        match outcome {
            None => {}
            Some(Ok(result)) => {
                let finished = result.stopped == StopReason::Final;
                body["status"] = json!(if finished { "completed" } else { "incomplete" });
                if !finished {
                    body["incomplete_details"] = json!({"reason": "max_output_tokens"});
                }
                body["output"] = json!([self.message(&result.answer, "completed")]);
                body["usage"] = usage(result);
                body["rlm"] = rlm_summary(result);
                if let Some(rlm) = body["rlm"].as_object_mut() {
                    rlm.insert("moved_to_context".into(), self.moved.into());
                }
            }
            Some(Err(error)) => {
                body["status"] = json!("failed");
                body["error"] = json!({"code": "server_error", "message": error.message});
            }
        }
        body
    }

    fn message(&self, text: &str, status: &str) -> Value {
        let content = if status == "in_progress" {
            json!([])
        } else {
            json!([part(text)])
        };
        json!({
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
        })
    }
}

fn part(text: &str) -> Value {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn usage(result: &RunResult) -> Value {
    let (input, output) = crate::total_tokens(result);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input + output,
    })
}

/// `POST /v1/responses`.
pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    axum::Extension(note): axum::Extension<RunNote>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match create_inner(state, note, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn create_inner(
    state: Arc<AppState>,
    note: RunNote,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                status,
                "invalid_request_error",
                "request_too_large",
                format!(
                    "the request body is larger than this server accepts ({} bytes; see \
                     --max-request-bytes)",
                    state.options.max_request_bytes
                ),
            )
        } else {
            ApiError::new(
                status,
                "invalid_request_error",
                "invalid_body",
                rejection.body_text(),
            )
        }
    })?;
    let mut request = CreateRequest::parse(&body)?;
    drop(body);
    // A first question follows the inline rule; a follow-up's messages must fit the prompt.
    let inline_max_bytes = state.options.inline_max_bytes;
    let first = match request.previous {
        None => Some(request.first_input(state.options.context.as_ref(), inline_max_bytes)?),
        Some(_) => {
            request.check_follow_up(inline_max_bytes)?;
            None
        }
    };
    let store = &state.responses;
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let head = Arc::new(Head {
        id: format!("resp_rlm{n:016x}{:08x}", random_tail()),
        message_id: format!("msg_rlm{n:016x}"),
        created_at: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        model: std::mem::take(&mut request.model),
        previous: request.previous.clone(),
        instructions: request.instructions.clone(),
        metadata: std::mem::take(&mut request.metadata),
        user: std::mem::take(&mut request.user),
        store: request.store,
        moved: first.as_ref().map_or(0, |input| input.moved),
    });
    // Stored while it runs (`in_progress`), unless `store` is false.
    let in_progress = request.store.then(|| head.response(None));
    // The session: continued, or new over the context.
    let (session_id, session) = match (&request.previous, first) {
        (Some(previous), _) => store.continue_from(previous, &head.id, in_progress)?,
        (None, None) => {
            return Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                "internal error (a bug in rlm): a first question without its input".to_owned(),
            ));
        }
        (None, Some(input)) => {
            request.query = input.query;
            request.instructions = input.instructions;
            let context = input.context;
            let rlm = state
                .runner
                .rlm(RunOptions::default())
                .map_err(|e| ApiError::from_run(&e))?;
            let session = Arc::new(tokio::sync::Mutex::new(rlm.session(context)));
            let id = store.insert(Arc::clone(&session));
            push_response(&mut store.lock(), id, &head.id, in_progress);
            (id, session)
        }
    };

    let Some(permit) = state.gate.enter().await else {
        let mut error = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "server_busy",
            format!(
                "the server is busy: {} running and {} waiting, its most; retry later",
                plural(state.gate.max_runs, "run"),
                plural(state.gate.max_queue, "request")
            ),
        );
        error.retry_after = Some(state.retry_after());
        if request.previous.is_none() {
            store.end(session_id);
        } else {
            store.unclaim(session_id, &head.id);
        }
        return Err(error);
    };
    if state.lifecycle.draining() {
        if request.previous.is_none() {
            store.end(session_id);
        } else {
            store.unclaim(session_id, &head.id);
        }
        return Ok(crate::drain::shutting_down(
            "the server is shutting down and starts no new runs",
        ));
    }
    // Cancelled by a gone client (the guard below) or by the drain's grace running out.
    let cancel = state.lifecycle.run_token();
    let typed = request.output_schema.is_some() || state.runner.config().output_schema.is_some();
    let (tx, rx) = mpsc::channel::<Message>(STREAM_QUEUE);
    let streaming = request.stream;
    // The turn runs in a task of its own: a client that goes away cancels it (through the
    // token), and the session still gets its REPL back.
    let turn = {
        let state = Arc::clone(&state);
        let head = Arc::clone(&head);
        let cancel = cancel.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut seq = Sequence::default();
            if streaming {
                let in_progress = head.response(None);
                seq.send(&tx, "response.created", json!({"response": in_progress}))
                    .await;
                seq.send(
                    &tx,
                    "response.in_progress",
                    json!({"response": in_progress}),
                )
                .await;
            }
            let started = Instant::now();
            let options = RunOptions {
                instructions: request.instructions.take(),
                observer: None,
                cancel,
                output_schema: request.output_schema.take(),
            };
            let result = match state.runner.rlm(options) {
                Ok(rlm) => {
                    let mut session = session.lock().await;
                    session.set_rlm(rlm);
                    session.ask(request.query).await
                }
                Err(error) => Err(error),
            };
            state.record_run(started.elapsed());
            drop(permit);
            log_run(&head.id, &result, started.elapsed());
            state.telemetry.metrics.run(&result, started.elapsed());
            // The access log's line names the run, its tokens and cost, as for chat.
            note.started(&head.id);
            note.finished(&result, None);
            // With a schema, a run without a conforming answer is a 422, never wrong text.
            let outcome = result
                .map_err(|e| ApiError::from_run(&e))
                .and_then(
                    |result| match crate::schema::schema_not_met(&result, typed) {
                        Some(message) => Err(ApiError::schema_not_met(message)),
                        None => Ok(result),
                    },
                );
            if let Err(error) = &outcome {
                note.refused(error.code);
            }
            let body = head.response(Some(outcome.as_ref()));
            // Nothing can continue a response not stored, or a failed first question: the
            // session ends. (A session evicted meanwhile keeps nothing either.)
            if request.store && (outcome.is_ok() || request.previous.is_some()) {
                state.responses.record(session_id, &head.id, body.clone());
            } else {
                state.responses.end(session_id);
            }
            if streaming {
                match &outcome {
                    Ok(result) => {
                        stream_answer(&tx, &mut seq, &head, &result.answer, body.clone()).await;
                    }
                    Err(_) => {
                        seq.send(&tx, "response.failed", json!({"response": body}))
                            .await;
                    }
                }
                let _ = tx.send(Message::End).await;
            }
            outcome.map(|_| body)
        })
    };
    if streaming {
        return Ok(Sse::new(RunStream {
            rx,
            _cancel_on_drop: cancel.drop_guard(),
            ended: false,
        })
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response());
    }
    drop((tx, rx));
    let _cancel_on_drop = cancel.drop_guard();
    let outcome = turn.await.map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            format!("internal error (a bug in rlm): the run's task failed: {e}"),
        )
    })?;
    let body = outcome?;
    Ok(axum::Json(body).into_response())
}

/// The events of the answer: the message item and its text part, added, the text in
/// deltas, done; then `response.completed` with the whole response.
async fn stream_answer(
    tx: &mpsc::Sender<Message>,
    seq: &mut Sequence,
    head: &Head,
    answer: &str,
    body: Value,
) {
    let item = |status| head.message(answer, status);
    let at = json!({"item_id": head.message_id, "output_index": 0, "content_index": 0});
    seq.send(
        tx,
        "response.output_item.added",
        json!({"output_index": 0, "item": item("in_progress")}),
    )
    .await;
    let mut added = at.clone();
    added["part"] = part("");
    seq.send(tx, "response.content_part.added", added).await;
    let chars: Vec<char> = answer.chars().collect();
    for piece in chars.chunks(ANSWER_CHUNK_CHARS) {
        let mut delta = at.clone();
        delta["delta"] = json!(piece.iter().collect::<String>());
        delta["logprobs"] = json!([]);
        seq.send(tx, "response.output_text.delta", delta).await;
    }
    let mut done = at.clone();
    done["text"] = json!(answer);
    done["logprobs"] = json!([]);
    seq.send(tx, "response.output_text.done", done).await;
    let mut part_done = at;
    part_done["part"] = part(answer);
    seq.send(tx, "response.content_part.done", part_done).await;
    seq.send(
        tx,
        "response.output_item.done",
        json!({"output_index": 0, "item": item("completed")}),
    )
    .await;
    let kind = if body["status"] == "completed" {
        "response.completed"
    } else {
        "response.incomplete"
    };
    seq.send(tx, kind, json!({"response": body})).await;
}

/// Numbers the events of one stream.
#[derive(Default)]
struct Sequence(u64);

impl Sequence {
    async fn send(&mut self, tx: &mpsc::Sender<Message>, kind: &str, mut data: Value) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.0);
        self.0 += 1;
        let event = SseEvent::default().event(kind).data(data.to_string());
        let _ = tx.send(Message::Event(event)).await;
    }
}

/// 32 bits that make ids of different server processes differ.
fn random_tail() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() as u32
}

/// `GET /v1/responses/{id}`.
pub(super) async fn retrieve(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    match state.responses.get(&id) {
        Some(body) => axum::Json(body).into_response(),
        None => not_found(&id).into_response(),
    }
}

/// `DELETE /v1/responses/{id}`.
pub(super) async fn delete(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if state.responses.delete(&id) {
        axum::Json(json!({"id": id, "object": "response.deleted", "deleted": true})).into_response()
    } else {
        not_found(&id).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<CreateRequest, ApiError> {
        CreateRequest::parse(body.to_string().as_bytes())
    }

    fn session() -> Arc<tokio::sync::Mutex<Session>> {
        let rlm = rlm_repl::Rlm::builder(Arc::new(rlm_core::mock::MockBackend::echo()))
            .root_model("root")
            .build()
            .unwrap();
        Arc::new(tokio::sync::Mutex::new(rlm.session(Context::from(""))))
    }

    #[test]
    fn input_is_a_string_or_message_items() {
        let request = parse(json!({"input": "q"})).unwrap();
        assert_eq!(request.query, "q");
        assert!(request.documents.is_empty() && request.store);
        let mut request = parse(json!({
            "instructions": "be brief",
            "input": [
                {"role": "system", "content": "in French"},
                {"role": "user", "content": [{"type": "input_text", "text": "doc"}]},
                {"type": "message", "role": "user", "content": "q"},
            ],
            "store": false,
            "tools": [],
            "metadata": {"k": "v"},
        }))
        .unwrap();
        assert_eq!(request.query, "q");
        assert_eq!(
            request.instructions.as_deref(),
            Some("be brief\n\nin French")
        );
        assert!(!request.store);
        let input = request.first_input(None, 16 << 10).unwrap();
        assert_eq!(input.context, Context::Text("doc".into()));
        assert_eq!(input.query, "q");
        assert_eq!(input.instructions.as_deref(), Some("be brief\n\nin French"));
        assert_eq!(input.moved, 0);
    }

    #[test]
    fn a_follow_up_message_over_the_limit_is_refused_unless_there_is_no_limit() {
        let long = "x".repeat(2_000);
        for body in [
            json!({"input": long, "previous_response_id": "r"}),
            json!({"input": "q", "instructions": long, "previous_response_id": "r"}),
            json!({"input": [{"role": "developer", "content": long}, {"role": "user", "content": "q"}]}),
        ] {
            let request = parse(body).unwrap();
            let error = request.check_follow_up(1_000).unwrap_err();
            assert_eq!(error.code, "message_too_long");
            assert!(error.message.contains("--inline-max-bytes (1000)"));
            assert!(request.check_follow_up(0).is_ok());
            assert!(request.check_follow_up(2_000).is_ok());
        }
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        for (body, named) in [
            (json!({"input": "q", "temperature": 0.3}), "temperature"),
            (
                json!({"input": "q", "tools": [{"type": "function"}]}),
                "tools",
            ),
            (json!({"input": "q", "background": true}), "background"),
            (
                json!({"input": [{"type": "function_call_output", "output": "x"}]}),
                "function_call_output",
            ),
        ] {
            let error = parse(body).unwrap_err();
            assert_eq!(error.code, "unsupported_parameter");
            assert!(error.message.contains(named), "{}", error.message);
        }
        assert!(parse(json!({"input": "q", "temperature": null})).is_ok());
        // text.format json_schema is the run's output schema (typed answers), not refused.
        let typed = parse(
            json!({"input": "q", "text": {"format": {"type": "json_schema",
            "name": "x", "schema": {"type": "object"}}}}),
        );
        assert!(typed.is_ok_and(|r| r.output_schema.is_some()));
        assert_eq!(
            parse(json!({"model": "rlm"})).unwrap_err().code,
            "no_user_message"
        );
        assert_eq!(
            parse(json!({"input": " "})).unwrap_err().code,
            "empty_query"
        );
        assert_eq!(
            parse(json!({"input": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}))
                .unwrap_err()
                .code,
            "invalid_body"
        );
    }

    #[test]
    fn the_store_evicts_the_least_recently_used_session() {
        let store = Store::new(Duration::from_secs(3600), 2);
        let a = store.insert(session());
        store.record(a, "ra", json!({"id": "ra"}));
        let b = store.insert(session());
        store.record(b, "rb", json!({"id": "rb"}));
        // `a` is used again: `b` is now the least recently used.
        assert!(store.continue_from("ra", "ra2", Some(json!({}))).is_ok());
        let c = store.insert(session());
        store.record(c, "rc", json!({"id": "rc"}));
        assert_eq!(
            store.continue_from("rb", "rb2", None).unwrap_err().code,
            "session_not_found"
        );
        assert!(store.get("rb").is_none());
        assert!(store.get("ra2").is_some() && store.get("rc").is_some());
    }

    #[test]
    fn only_the_latest_response_continues_and_deleting_it_ends_the_session() {
        let store = Store::new(Duration::from_secs(3600), 8);
        let a = store.insert(session());
        store.record(a, "r1", json!({"id": "r1"}));
        // Claimed at once: a second request continuing r1 is refused while r2 runs.
        assert!(
            store
                .continue_from("r1", "r2", Some(json!({"id": "r2"})))
                .is_ok()
        );
        assert_eq!(
            store.continue_from("r1", "r3", None).unwrap_err().code,
            "session_moved_on"
        );
        // A claim the queue refused is taken back.
        assert!(store.continue_from("r2", "r3", None).is_ok());
        store.unclaim(a, "r3");
        assert!(store.continue_from("r2", "r4", Some(json!({}))).is_ok());
        // Deleting an older response keeps the session.
        assert!(store.delete("r1"));
        assert!(store.continue_from("r4", "r5", Some(json!({}))).is_ok());
        assert!(store.delete("r5"));
        assert_eq!(
            store.continue_from("r5", "r6", None).unwrap_err().code,
            "session_not_found"
        );
        assert!(store.get("r4").is_none());
        assert!(!store.delete("r5"));
    }

    #[test]
    fn expired_sessions_are_gone() {
        let store = Store::new(Duration::ZERO, 8);
        let a = store.insert(session());
        store.record(a, "r", json!({"id": "r"}));
        assert!(store.get("r").is_none());
        assert_eq!(
            store.continue_from("r", "r2", None).unwrap_err().code,
            "session_not_found"
        );
    }

    #[test]
    fn a_session_keeps_its_latest_responses_only() {
        let store = Store::new(Duration::from_secs(3600), 8);
        let a = store.insert(session());
        for n in 0..(KEPT_RESPONSES + 2) {
            store.record(a, &format!("r{n}"), json!({}));
        }
        assert!(store.get("r0").is_none() && store.get("r1").is_none());
        assert!(store.get("r2").is_some());
        let latest = format!("r{}", KEPT_RESPONSES + 1);
        assert!(store.continue_from(&latest, "next", None).is_ok());
    }
}
