//! Sessions for front ends: a session file opened or started (`rlm run --session FILE`), and
//! the interactive loop of `rlm chat`, over any line reader.
//!
//! The library type is [`rlm_repl::Session`]; this module adds what every front end does
//! around it: resume from a file when there is one, save after each question (atomically),
//! say what a file could not hold, and run questions one after another with a fresh
//! cancellation per question (Ctrl-C cancels the question, not the program).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rlm_core::CancellationToken;
use rlm_repl::{Context, Rlm, RlmError, RunResult, Session, Skipped};

use crate::HostError;

/// A session opened for a front end: resumed from its file, or new.
#[derive(Debug)]
pub struct Opened {
    /// The session.
    pub session: Session,
    /// It was resumed from the file (which existed).
    pub resumed: bool,
    /// What the file did not hold (functions, values without a JSON form, variables over the
    /// memory budget), as warnings.
    pub warnings: Vec<String>,
}

/// Resumes the session saved at `path` over `context`, or starts a new one when `path` is
/// `None` or no file is there. A file that cannot be read, of an unknown version, malformed,
/// or saved over another context is an input error.
pub fn open_session(rlm: Rlm, context: Context, path: Option<&Path>) -> Result<Opened, HostError> {
    let Some(path) = path.filter(|path| path.exists()) else {
        return Ok(Opened {
            session: rlm.session(context),
            resumed: false,
            warnings: Vec::new(),
        });
    };
    let session = Session::load(rlm, context, path).map_err(session_error)?;
    let warnings = skipped_warnings(session.skipped(), "the session file does not hold");
    Ok(Opened {
        session,
        resumed: true,
        warnings,
    })
}

/// Saves `session` to `path` atomically; returns warnings naming what the file could not
/// hold.
pub fn save_session(session: &Session, path: &Path) -> Result<Vec<String>, HostError> {
    let file = session.save(path).map_err(session_error)?;
    Ok(skipped_warnings(
        &file.skipped,
        "not saved in the session file",
    ))
}

/// One warning per skipped entry: `"{what} `f(a)` (function): why"`.
fn skipped_warnings(skipped: &[Skipped], what: &str) -> Vec<String> {
    skipped
        .iter()
        .map(|s| format!("{what} `{}` ({}): {}", s.name, s.kind, s.why))
        .collect()
}

fn session_error(error: RlmError) -> HostError {
    HostError::Input(error.to_string())
}

/// What a line reader gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// A line of text (a question, or blank).
    Text(String),
    /// Ctrl-C at the prompt: the line is dropped, the loop goes on.
    Interrupted,
    /// Ctrl-D, or the end of the input: the loop ends.
    End,
}

/// Where `rlm chat` reads its questions: a line editor in a terminal, or a script in tests.
/// Reading blocks; the loop calls it on a blocking thread.
pub trait LineReader: Send + 'static {
    /// Shows `prompt` and reads one line.
    fn read_line(&mut self, prompt: &str) -> Line;
    /// Adds a question to the editor's history (default: nothing).
    fn add_history(&mut self, _line: &str) {}
}

/// Cancels the question being answered: each question gets a fresh token, and
/// [`interrupt`](Self::interrupt) (the front end's Ctrl-C) cancels the current one only.
#[derive(Debug, Clone, Default)]
pub struct Interrupts {
    current: Arc<Mutex<CancellationToken>>,
}

impl Interrupts {
    /// A fresh token for the next question.
    pub fn next(&self) -> CancellationToken {
        let token = CancellationToken::new();
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = token.clone();
        token
    }

    /// Cancels the current question (if one is running; harmless otherwise).
    pub fn interrupt(&self) {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancel();
    }
}

/// What happened to one question of a chat, for the front end to print.
#[derive(Debug)]
pub enum Answered<'a> {
    /// The run ended (with an answer, or stopped: see the result).
    Result(&'a RunResult),
    /// The run could not be carried out (the root model could not be asked, ...). The
    /// session goes on.
    Error(RlmError),
    /// A warning for stderr (what a session file could not hold, a save that failed).
    Warning(&'a str),
}

/// `rlm chat`: reads questions from `reader` until [`Line::End`], answers each in `session`
/// (cancelled by `interrupts`), hands what happened to `answered`, and saves the session to
/// `save_to` after each question. Returns the number of questions asked.
pub async fn chat<R: LineReader>(
    session: &mut Session,
    reader: R,
    prompt: &str,
    save_to: Option<PathBuf>,
    interrupts: &Interrupts,
    mut answered: impl FnMut(Answered<'_>),
) -> Result<usize, HostError> {
    let mut reader = Some(reader);
    let mut asked = 0;
    loop {
        let mut taken = reader
            .take()
            .ok_or_else(|| HostError::Internal("the line reader was lost".to_owned()))?;
        let prompt_owned = prompt.to_owned();
        let question = interrupts.clone();
        let (back, line, cancel) = tokio::task::spawn_blocking(move || {
            let line = taken.read_line(&prompt_owned);
            // The question's token is in place as soon as its line is read: from here the
            // terminal is out of the editor's hands and Ctrl-C is a signal, which must
            // cancel this question. Set after the reader's thread handed the line back,
            // a Ctrl-C pressed right after Enter (on a loaded machine) cancelled the last
            // question's token instead, and this one ran on.
            let cancel = question.next();
            (taken, line, cancel)
        })
        .await
        .map_err(|e| HostError::Internal(format!("the line reader failed: {e}")))?;
        reader = Some(back);
        let query = match line {
            Line::End => return Ok(asked),
            Line::Interrupted => continue,
            Line::Text(text) if text.trim().is_empty() => continue,
            Line::Text(text) => text.trim().to_owned(),
        };
        if let Some(reader) = reader.as_mut() {
            reader.add_history(&query);
        }
        asked += 1;
        match session.ask_cancellable(query, &cancel).await {
            Ok(result) => answered(Answered::Result(&result)),
            Err(error) => answered(Answered::Error(error)),
        }
        if let Some(path) = &save_to {
            match save_session(session, path) {
                Ok(warnings) => warnings
                    .iter()
                    .for_each(|warning| answered(Answered::Warning(warning))),
                Err(error) => answered(Answered::Warning(&format!(
                    "the session was not saved: {error}"
                ))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use rlm_core::mock::MockBackend;

    use super::*;

    struct Script(VecDeque<Line>);

    impl LineReader for Script {
        fn read_line(&mut self, _prompt: &str) -> Line {
            self.0.pop_front().unwrap_or(Line::End)
        }
    }

    fn rlm(replies: &[&str]) -> Rlm {
        let replies: Vec<String> = replies.iter().map(|s| (*s).to_owned()).collect();
        Rlm::builder(Arc::new(MockBackend::scripted(replies)))
            .root_model("root")
            .build()
            .unwrap()
    }

    #[tokio::test]
    async fn chat_answers_each_question_in_one_session_and_saves_it() {
        let dir = std::env::temp_dir().join(format!("rlm-host-chat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chat.json");
        let _ = std::fs::remove_file(&path);
        let rlm = rlm(&[
            "```repl\nlet x = 20;\nFINAL(x)\n```",
            "```repl\nFINAL(x + 1)\n```",
        ]);
        let opened = open_session(rlm.clone(), Context::from("c"), Some(&path)).unwrap();
        assert!(!opened.resumed);
        let mut session = opened.session;
        let script = Script(VecDeque::from([
            Line::Text("first".into()),
            Line::Interrupted,
            Line::Text("   ".into()),
            Line::Text("second".into()),
            Line::End,
        ]));
        let mut answers = Vec::new();
        let asked = chat(
            &mut session,
            script,
            "> ",
            Some(path.clone()),
            &Interrupts::default(),
            |what| {
                if let Answered::Result(result) = what {
                    answers.push(result.answer.clone());
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(asked, 2);
        assert_eq!(answers, ["20", "21"]);
        let reopened = open_session(rlm, Context::from("c"), Some(&path)).unwrap();
        assert!(reopened.resumed);
        assert_eq!(reopened.session.history().len(), 2);
        assert_eq!(reopened.session.variable_names(), ["x"]);
        let other = open_session(self::rlm(&[]), Context::from("d"), Some(&path)).unwrap_err();
        assert_eq!(other.kind(), "input");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_interrupt_cancels_the_current_question_only() {
        let interrupts = Interrupts::default();
        let first = interrupts.next();
        interrupts.interrupt();
        assert!(first.is_cancelled());
        let second = interrupts.next();
        assert!(!second.is_cancelled());
    }
}
