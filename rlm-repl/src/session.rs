//! Sessions: follow-up questions over one context that keep the REPL's variables and the
//! conversation, and their file format.
//!
//! A [`Session`] answers its first question like [`Rlm::run`]; every later question runs in
//! the same REPL scope (`context` is not loaded again, every variable and function is still
//! there) and the root model is told the earlier questions and answers (the latest ones, within
//! a bound) and the variables defined. What the variables hold counts against the sandbox's
//! memory budget ([`SandboxLimits::max_memory`](crate::SandboxLimits::max_memory)) at every
//! question, as in a single run.
//!
//! A session saves to a JSON file ([`SessionFile`], `{"format": "rlm-session", "version": 1,
//! ...}`) and resumes from it on any machine: the file holds the variables whose values have a
//! JSON form, lists the ones that do not ([`Skipped`]: functions, function pointers, ...),
//! holds the history, and identifies the context by a SHA-256 fingerprint rather than holding
//! it (a context may be gigabytes). The context is given again on resume; a different one is
//! refused, since the variables were computed from the first.

use std::fmt::Write as _;
use std::path::Path;

use rhai::{Dynamic, FLOAT, INT, ImmutableString, Map};
use rlm_core::CancellationToken;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::context::SharedContext;
use crate::repl::Kept;
use crate::repl::output::truncate_middle;
use crate::run::{Source, Tree, run_keeping};
use crate::{Context, ContextInfo, Rlm, RlmError, RunResult, StopReason};

/// The `format` of a session file.
pub const SESSION_FORMAT: &str = "rlm-session";
/// The `version` of the session files this build writes and reads.
pub const SESSION_VERSION: u64 = 1;

/// Exchanges a session keeps (the oldest are dropped first; [`Session::history_dropped`]
/// counts them).
const MAX_HISTORY: usize = 100;
/// Characters of the history shown to the root model with a follow-up question.
const HISTORY_PROMPT_CHARS: usize = 12_000;
/// Characters of one earlier query shown (head and tail kept).
const QUERY_CHARS: usize = 1_000;
/// Characters of one earlier answer shown (head and tail kept).
const ANSWER_CHARS: usize = 2_000;
/// Deepest nesting saved (serde_json reads at most 128 levels back).
const MAX_SAVED_DEPTH: usize = 100;

/// One question of a session and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Exchange {
    /// The question.
    pub query: String,
    /// The answer (empty when the run gave none).
    pub answer: String,
    /// Why the run stopped.
    pub stopped: StopReason,
}

/// A variable (or function) that a session file does not hold, and why: it is listed, never
/// silently lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skipped {
    /// The variable's name, or a function's signature (`f(a, b)`).
    pub name: String,
    /// `"variable"` or `"function"`.
    pub kind: String,
    /// Why it was not saved (or not restored).
    pub why: String,
}

/// Which context a session was made over: its fingerprint and, for people, its shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContextStamp {
    /// SHA-256 of the context as the REPL holds it (types, lengths and bytes), hex.
    pub sha256: String,
    /// Its kind, as the root model is told (`"string"`, `"array of strings"`, ...).
    pub kind: String,
    /// Its characters.
    pub chars: usize,
}

/// A saved variable: its name, whether it is a constant, its type and its value in JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedVariable {
    /// The name.
    pub name: String,
    /// Defined with `const`.
    #[serde(default)]
    pub constant: bool,
    /// `"unit"`, `"bool"`, `"int"`, `"float"`, `"string"`, `"array"` or `"map"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The value: `null` for unit; JSON integers are ints and JSON numbers with a fraction or
    /// an exponent are floats, inside arrays and maps too.
    pub value: Value,
}

/// A saved session, as written to a file (version 1). See the README's "Session files".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionFile {
    /// Always `"rlm-session"`.
    pub format: String,
    /// Always 1 for this layout.
    pub version: u64,
    /// What wrote it (`"rlm 0.1.0"`); informative.
    #[serde(default)]
    pub saved_by: String,
    /// The context the variables were computed from.
    pub context: ContextStamp,
    /// The variables, in the order they were defined.
    #[serde(default)]
    pub variables: Vec<SavedVariable>,
    /// What the file does not hold.
    #[serde(default)]
    pub skipped: Vec<Skipped>,
    /// The questions and answers, oldest first.
    #[serde(default)]
    pub history: Vec<Exchange>,
    /// Older exchanges dropped from `history` (it keeps the latest 100).
    #[serde(default)]
    pub history_dropped: usize,
}

impl SessionFile {
    /// Reads a session file's text. Anything but a whole file of a known version is refused
    /// with an error saying what is wrong.
    pub fn parse(text: &str) -> Result<Self, RlmError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let why = if e.is_eof() {
                "it ends too soon (truncated?)"
            } else {
                "it is not valid JSON"
            };
            RlmError::Session(format!("not a readable session file: {why}: {e}"))
        })?;
        let format = value.get("format").and_then(Value::as_str);
        if format != Some(SESSION_FORMAT) {
            return Err(RlmError::Session(format!(
                "not a session file: its \"format\" is {}, not \"{SESSION_FORMAT}\"",
                value
                    .get("format")
                    .map_or_else(|| "missing".to_owned(), Value::to_string)
            )));
        }
        match value.get("version").and_then(Value::as_u64) {
            Some(SESSION_VERSION) => {}
            Some(other) => {
                return Err(RlmError::Session(format!(
                    "session file version {other} is not supported: this rlm reads version \
                     {SESSION_VERSION} (a newer rlm wrote it?)"
                )));
            }
            None => {
                return Err(RlmError::Session(format!(
                    "the session file's \"version\" is {}, not a version number",
                    value
                        .get("version")
                        .map_or_else(|| "missing".to_owned(), Value::to_string)
                )));
            }
        }
        serde_json::from_value(value)
            .map_err(|e| RlmError::Session(format!("the session file is malformed: {e}")))
    }

    /// The file's text: pretty JSON, ending with a newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).unwrap_or_default();
        text.push('\n');
        text
    }
}

/// Questions over one context, one after another, that share a REPL and a conversation.
///
/// ```
/// use std::sync::Arc;
/// use rlm_core::mock::MockBackend;
/// use rlm_repl::{Context, Rlm};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), rlm_repl::RlmError> {
/// let root = MockBackend::scripted([
///     "```repl\nlet n = lines(context).len();\nFINAL(n)\n```",
///     // The second question reads the variable the first one set.
///     "```repl\nFINAL(n * 2)\n```",
/// ]);
/// let rlm = Rlm::builder(Arc::new(root)).root_model("root").build()?;
/// let mut session = rlm.session(Context::from("a\nb\nc"));
/// assert_eq!(session.ask("How many lines?").await?.answer, "3");
/// assert_eq!(session.ask("And twice that?").await?.answer, "6");
/// assert_eq!(session.history().len(), 2);
/// # Ok(())
/// # }
/// ```
pub struct Session {
    rlm: Rlm,
    context: SharedContext,
    kept: Option<Kept>,
    history: Vec<Exchange>,
    history_dropped: usize,
    /// What the file it was restored from did not hold (listed again when it is saved).
    skipped: Vec<Skipped>,
    /// The REPL of the last question was lost (its thread failed): the next result says so.
    lost: bool,
    /// The context's fingerprint, computed once (a pass over the context).
    fingerprint: std::sync::OnceLock<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("context", self.context.info())
            .field("kept", &self.kept)
            .field("questions", &self.history.len())
            .finish_non_exhaustive()
    }
}

impl Rlm {
    /// A session over `context`: see [`Session`].
    pub fn session(&self, context: impl Into<Context>) -> Session {
        Session::new(self.clone(), context)
    }
}

impl Session {
    /// A new session over `context` (converted once, as a run loads it; not loaded again by
    /// later questions).
    pub fn new(rlm: Rlm, context: impl Into<Context>) -> Self {
        Self {
            rlm,
            context: SharedContext::new(context.into()),
            kept: None,
            history: Vec::new(),
            history_dropped: 0,
            skipped: Vec::new(),
            lost: false,
            fingerprint: std::sync::OnceLock::new(),
        }
    }

    /// The `Rlm` that answers the questions.
    pub fn rlm(&self) -> &Rlm {
        &self.rlm
    }

    /// Answers the next questions with `rlm` (the same backends with another observer,
    /// cancellation token or instructions, say); the REPL and the history stay.
    pub fn set_rlm(&mut self, rlm: Rlm) {
        self.rlm = rlm;
    }

    /// What the root model is told about the context.
    pub fn context_info(&self) -> &ContextInfo {
        self.context.info()
    }

    /// The questions asked so far and their answers, oldest first (the latest 100).
    pub fn history(&self) -> &[Exchange] {
        &self.history
    }

    /// Exchanges dropped from [`history`](Self::history) (it keeps the latest 100).
    pub fn history_dropped(&self) -> usize {
        self.history_dropped
    }

    /// The names of the variables the REPL holds now (`context` excepted), in the order they
    /// were defined.
    pub fn variable_names(&self) -> Vec<String> {
        self.kept.as_ref().map_or_else(Vec::new, |kept| {
            kept.variables()
                .into_iter()
                .map(|(name, _, _)| name.to_owned())
                .collect()
        })
    }

    /// What the file this session was restored from did not hold.
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// Answers `query` in the session: the REPL keeps its variables, and the root model is
    /// told the earlier questions and answers. Errors are those of [`Rlm::run`].
    pub async fn ask(&mut self, query: impl Into<String>) -> Result<RunResult, RlmError> {
        self.ask_with(query.into(), None).await
    }

    /// [`ask`](Self::ask), stopped by `cancel` (the run ends with
    /// [`StopReason::Cancelled`]; the variables set so far are kept). Dropping the future
    /// instead also stops the run, but the session then loses its REPL (the next question
    /// starts from the context again and its result says so).
    pub async fn ask_cancellable(
        &mut self,
        query: impl Into<String>,
        cancel: &CancellationToken,
    ) -> Result<RunResult, RlmError> {
        self.ask_with(query.into(), Some(cancel)).await
    }

    async fn ask_with(
        &mut self,
        query: String,
        cancel: Option<&CancellationToken>,
    ) -> Result<RunResult, RlmError> {
        let run_cancel = self.rlm.cancel.child_token();
        // The run's token is a child of the Rlm's; the caller's token is forwarded to it.
        let forward = cancel.map(|cancel| {
            let (outer, inner) = (cancel.clone(), run_cancel.clone());
            AbortOnDrop(tokio::spawn(async move {
                outer.cancelled().await;
                inner.cancel();
            }))
        });
        let source = match self.kept.take() {
            Some(kept) => Source::Kept(kept, self.history_note()),
            None => Source::Context(Context::Shared(self.context.clone())),
        };
        let tree = Tree::new(
            std::sync::Arc::clone(&self.rlm.root),
            std::sync::Arc::clone(&self.rlm.sub),
            self.rlm.config.clone(),
        );
        let (result, kept) = run_keeping(
            tree,
            self.rlm.observers.clone(),
            run_cancel,
            query.clone(),
            source,
        )
        .await;
        drop(forward);
        let was_lost = std::mem::replace(&mut self.lost, kept.is_none());
        self.kept = kept;
        let mut result = result?;
        if was_lost {
            result.warnings.push(
                "the session's REPL was lost after the previous question (an internal error): \
                 this question started from the context again, without the earlier variables"
                    .to_owned(),
            );
        }
        self.history.push(Exchange {
            query,
            answer: result.answer.clone(),
            stopped: result.stopped,
        });
        if self.history.len() > MAX_HISTORY {
            let extra = self.history.len() - MAX_HISTORY;
            self.history.drain(..extra);
            self.history_dropped += extra;
        }
        Ok(result)
    }

    /// [`ask`](Self::ask) for callers without an async runtime.
    pub fn ask_blocking(&mut self, query: impl Into<String>) -> Result<RunResult, RlmError> {
        let mut owned = self.take();
        let query = query.into();
        let (owned, result) = rlm_core::blocking::block_on(async move {
            let result = owned.ask(query).await;
            (owned, result)
        });
        *self = owned;
        result
    }

    /// Moves the session's state out, leaving an empty session over the same context.
    fn take(&mut self) -> Self {
        Self {
            rlm: self.rlm.clone(),
            context: self.context.clone(),
            kept: self.kept.take(),
            history: std::mem::take(&mut self.history),
            history_dropped: self.history_dropped,
            skipped: std::mem::take(&mut self.skipped),
            lost: self.lost,
            fingerprint: self.fingerprint.clone(),
        }
    }

    /// SHA-256 of the context (computed on first use).
    fn fingerprint(&self) -> &str {
        self.fingerprint
            .get_or_init(|| fingerprint(&self.context.value()))
    }

    /// What the root model is told of the earlier questions: the latest ones first kept, within
    /// a bound, each cut to its head and tail.
    fn history_note(&self) -> String {
        let mut shown: Vec<String> = Vec::new();
        let mut used = 0;
        let first_number = self.history_dropped + 1;
        for (index, exchange) in self.history.iter().enumerate().rev() {
            let number = first_number + index;
            let answer = if exchange.answer.is_empty() {
                format!("(no answer: the run stopped: {})", exchange.stopped)
            } else {
                truncate_middle(&exchange.answer, ANSWER_CHARS)
            };
            let text = format!(
                "Query {number}: {}\nAnswer {number}: {answer}\n",
                truncate_middle(&exchange.query, QUERY_CHARS)
            );
            let chars = text.chars().count();
            if used + chars > HISTORY_PROMPT_CHARS && !shown.is_empty() {
                break;
            }
            used += chars;
            shown.push(text);
        }
        let hidden = self.history_dropped + self.history.len() - shown.len();
        let mut note = String::new();
        if hidden > 0 {
            let _ = writeln!(
                note,
                "({} earlier {} not shown.)",
                hidden,
                if hidden == 1 {
                    "query is"
                } else {
                    "queries are"
                }
            );
        }
        for text in shown.iter().rev() {
            note.push_str(text);
        }
        note
    }

    /// The session as a file: the variables that have a JSON form, the ones that do not (and
    /// the functions) listed in `skipped`, the history, the context's fingerprint.
    pub fn snapshot(&self) -> SessionFile {
        let info = self.context.info();
        let mut variables = Vec::new();
        let mut skipped = Vec::new();
        if let Some(kept) = &self.kept {
            for (name, constant, value) in kept.variables() {
                match encode(value, 0) {
                    Ok(json) => variables.push(SavedVariable {
                        name: name.to_owned(),
                        constant,
                        kind: kind_name(value).to_owned(),
                        value: json,
                    }),
                    Err(why) => skipped.push(Skipped {
                        name: name.to_owned(),
                        kind: "variable".to_owned(),
                        why,
                    }),
                }
            }
            for function in kept.functions() {
                skipped.push(Skipped {
                    name: function,
                    kind: "function".to_owned(),
                    why: "functions are not saved (define them again)".to_owned(),
                });
            }
        }
        // What an earlier file did not hold stays listed, unless the name is defined again.
        for earlier in &self.skipped {
            let defined = variables.iter().any(|v| v.name == earlier.name)
                || skipped.iter().any(|s| s.name == earlier.name);
            if !defined {
                skipped.push(earlier.clone());
            }
        }
        SessionFile {
            format: SESSION_FORMAT.to_owned(),
            version: SESSION_VERSION,
            saved_by: format!("rlm {}", env!("CARGO_PKG_VERSION")),
            context: ContextStamp {
                sha256: self.fingerprint().to_owned(),
                kind: info.kind.to_owned(),
                chars: info.total_chars,
            },
            variables,
            skipped,
            history: self.history.clone(),
            history_dropped: self.history_dropped,
        }
    }

    /// Writes [`snapshot`](Self::snapshot) to `path` atomically (a temporary file in the same
    /// directory, then a rename: a crash never leaves half a file), and returns it.
    pub fn save(&self, path: &Path) -> Result<SessionFile, RlmError> {
        let file = self.snapshot();
        write_atomically(path, file.to_json().as_bytes()).map_err(|e| {
            RlmError::Session(format!(
                "cannot write the session file {}: {e}",
                path.display()
            ))
        })?;
        Ok(file)
    }

    /// A session resumed from `file` over `context`, which must be the context it was saved
    /// with (same fingerprint; where it lives does not matter). Variables that do not fit the
    /// memory budget are not restored, and are listed in [`skipped`](Self::skipped).
    pub fn restore(
        rlm: Rlm,
        context: impl Into<Context>,
        file: SessionFile,
    ) -> Result<Self, RlmError> {
        let mut session = Self::new(rlm, context);
        let given = session.fingerprint().to_owned();
        if given != file.context.sha256 {
            let info = session.context.info();
            return Err(RlmError::Session(format!(
                "the session was saved over a different context ({} of {} characters, sha256 \
                 {}); this context is {} of {} characters (sha256 {}). Give the same context \
                 (--context) to resume, or start a new session",
                file.context.kind,
                file.context.chars,
                short(&file.context.sha256),
                info.kind,
                info.total_chars,
                short(&given)
            )));
        }
        let mut variables = Vec::new();
        for saved in file.variables {
            let value = decode_variable(&saved)?;
            variables.push((saved.name, saved.constant, value));
        }
        let mut skipped = file.skipped;
        let budget = session.rlm.config.sandbox.max_memory;
        if budget > 0 {
            let sizes: Vec<usize> = variables
                .iter()
                .map(|(_, _, value)| crate::repl::estimate_bytes(value, budget.saturating_add(1)))
                .collect();
            let mut total: usize = sizes.iter().fold(0, |a, b| a.saturating_add(*b));
            let mut order: Vec<usize> = (0..variables.len()).collect();
            order.sort_by_key(|&i| std::cmp::Reverse(sizes[i]));
            let mut dropped = vec![false; variables.len()];
            for i in order {
                if total <= budget {
                    break;
                }
                dropped[i] = true;
                total -= sizes[i];
                skipped.push(Skipped {
                    name: variables[i].0.clone(),
                    kind: "variable".to_owned(),
                    why: format!(
                        "not restored: the variables are over the memory budget ({budget} \
                         bytes, --max-memory); this one holds about {} bytes",
                        sizes[i]
                    ),
                });
            }
            variables = variables
                .into_iter()
                .zip(dropped)
                .filter(|(_, dropped)| !dropped)
                .map(|(variable, _)| variable)
                .collect();
        }
        session.kept = Some(Kept::new(
            session.context.value(),
            session.context.info().clone(),
            variables,
        ));
        session.history = file.history;
        session.history_dropped = file.history_dropped;
        session.skipped = skipped;
        Ok(session)
    }

    /// [`restore`](Self::restore) from the file at `path`.
    pub fn load(rlm: Rlm, context: impl Into<Context>, path: &Path) -> Result<Self, RlmError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            RlmError::Session(format!(
                "cannot read the session file {}: {e}",
                path.display()
            ))
        })?;
        let file = SessionFile::parse(&text)
            .map_err(|e| RlmError::Session(format!("{}: {e}", path.display())))?;
        Self::restore(rlm, context, file)
    }
}

/// Aborts the wrapped task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Writes `bytes` to a temporary file beside `path`, flushes it to disk, and renames it over
/// `path`.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

/// The first 12 hex digits of a fingerprint, for messages.
fn short(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

/// SHA-256 of a value as the REPL holds it: every item's type, length and bytes, so that
/// different shapes never collide (a string and a one-item array of it differ).
pub(crate) fn fingerprint(value: &Dynamic) -> String {
    fn feed(value: &Dynamic, hash: &mut Sha256) {
        let length = |hash: &mut Sha256, n: usize| hash.update((n as u64).to_le_bytes());
        if let Ok(text) = value.as_immutable_string_ref() {
            hash.update(b"s");
            length(hash, text.len());
            hash.update(text.as_bytes());
        } else if let Ok(items) = value.as_array_ref() {
            hash.update(b"a");
            length(hash, items.len());
            items.iter().for_each(|item| feed(item, hash));
        } else if let Ok(map) = value.as_map_ref() {
            hash.update(b"m");
            length(hash, map.len());
            for (key, item) in map.iter() {
                length(hash, key.len());
                hash.update(key.as_bytes());
                feed(item, hash);
            }
        } else if let Ok(n) = value.as_int() {
            hash.update(b"i");
            hash.update(n.to_le_bytes());
        } else if let Ok(x) = value.as_float() {
            hash.update(b"f");
            hash.update(x.to_bits().to_le_bytes());
        } else if let Ok(b) = value.as_bool() {
            hash.update(if b { b"t" } else { b"n" });
        } else if value.is_unit() {
            hash.update(b"u");
        } else {
            let text = value.to_string();
            hash.update(b"o");
            length(hash, text.len());
            hash.update(text.as_bytes());
        }
    }
    let mut hash = Sha256::new();
    feed(value, &mut hash);
    hash.finalize()
        .iter()
        .fold(String::with_capacity(64), |mut out, byte| {
            let _ = write!(out, "{byte:02x}");
            out
        })
}

/// The `type` a session file gives a value.
fn kind_name(value: &Dynamic) -> &'static str {
    if value.is_unit() {
        "unit"
    } else if value.is_bool() {
        "bool"
    } else if value.is_int() {
        "int"
    } else if value.is_float() {
        "float"
    } else if value.is_string() {
        "string"
    } else if value.is_array() {
        "array"
    } else if value.is_map() {
        "map"
    } else {
        "other"
    }
}

/// A value's JSON form, or why it has none (a function pointer, a character, a float that is
/// not finite, a blob, data nested too deep...).
fn encode(value: &Dynamic, depth: usize) -> Result<Value, String> {
    if depth > MAX_SAVED_DEPTH {
        return Err(format!(
            "nested more than {MAX_SAVED_DEPTH} levels deep (arrays or maps inside each other)"
        ));
    }
    let value = value.flatten_clone();
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Ok(b) = value.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(n) = value.as_int() {
        return Ok(Value::from(n));
    }
    if let Ok(x) = value.as_float() {
        return serde_json::Number::from_f64(x)
            .map(Value::Number)
            .ok_or_else(|| {
                format!("holds a float that is not finite ({x}): JSON has no form for it")
            });
    }
    if let Ok(text) = value.as_immutable_string_ref() {
        return Ok(Value::String(text.as_str().to_owned()));
    }
    if let Ok(items) = value.as_array_ref() {
        return items
            .iter()
            .map(|item| encode(item, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if let Ok(map) = value.as_map_ref() {
        let mut object = serde_json::Map::new();
        for (key, item) in map.iter() {
            object.insert(key.to_string(), encode(item, depth + 1)?);
        }
        return Ok(Value::Object(object));
    }
    let what = match value.type_name() {
        "Fn" => "a function pointer (closure)".to_owned(),
        "char" => "a character (char): JSON has no form for it apart from a string".to_owned(),
        "blob" => "a blob (bytes)".to_owned(),
        other => format!("a value of type {other}"),
    };
    Err(format!("holds {what}, which a session file cannot hold"))
}

/// A saved variable's value, checked against its `type`.
fn decode_variable(saved: &SavedVariable) -> Result<Dynamic, RlmError> {
    let malformed = |why: String| {
        RlmError::Session(format!(
            "the session file is malformed: variable `{}`: {why}",
            saved.name
        ))
    };
    if !is_identifier(&saved.name) || saved.name == "context" {
        return Err(malformed("not a variable name".to_owned()));
    }
    let value = decode(&saved.value, 0).map_err(malformed)?;
    let value = match (saved.kind.as_str(), value) {
        // A hand-written float may have been written without a fraction.
        ("float", v) if v.is_int() => Dynamic::from_float(v.as_int().unwrap_or_default() as FLOAT),
        (kind, v) if kind == kind_name(&v) => v,
        (kind, v) => {
            return Err(malformed(format!(
                "its type is \"{kind}\" but its value is {}",
                kind_name(&v)
            )));
        }
    };
    Ok(value)
}

/// A JSON value as a Rhai value (integers as ints, other numbers as floats).
fn decode(value: &Value, depth: usize) -> Result<Dynamic, String> {
    if depth > MAX_SAVED_DEPTH {
        return Err(format!("nested more than {MAX_SAVED_DEPTH} levels deep"));
    }
    Ok(match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => Dynamic::from_bool(*b),
        Value::Number(n) => {
            if n.is_f64() {
                Dynamic::from_float(n.as_f64().unwrap_or_default())
            } else {
                Dynamic::from_int(
                    n.as_i64()
                        .map(|n| n as INT)
                        .ok_or_else(|| format!("the integer {n} is too large for 64 bits"))?,
                )
            }
        }
        Value::String(text) => Dynamic::from(ImmutableString::from(text.as_str())),
        Value::Array(items) => Dynamic::from_array(
            items
                .iter()
                .map(|item| decode(item, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(object) => {
            let mut map = Map::new();
            for (key, item) in object {
                map.insert(key.as_str().into(), decode(item, depth + 1)?);
            }
            Dynamic::from_map(map)
        }
    })
}

fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests;
