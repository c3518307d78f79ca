//! A conversation made into a run: the query, the instructions and the context, with no
//! message over the inline limit reaching the root model's prompt whole.
//!
//! The rules ([`run_input`]):
//! - The query is the last user message. System and developer messages are extra
//!   instructions to the root model. Without a server context, the messages before the
//!   query are the context (one document each; a single document is a string); with one,
//!   the server's context is the context and earlier messages are not used.
//! - A query or instruction message longer than the inline limit (a document pasted with
//!   the question, a chat UI's attachment, a long system message) becomes a document of the
//!   context too, and the root model is shown only its head and tail with a note saying
//!   where the whole message is (`context`, or `context[i]`). With a server context, the
//!   context becomes an array: the server's context (its items, for an array) followed by
//!   those messages.
//!
//! The Chat Completions endpoint and any other front end that takes a conversation use this
//! one function.
//!
//! ```
//! use rlm_serve::inline::{ChatMessage, run_input};
//! let document = "word ".repeat(10_000);
//! let input = run_input(
//!     vec![ChatMessage::new("user", format!("{document}\n\nHow many words?"))],
//!     None,
//!     16 * 1024,
//! )
//! .unwrap_or_else(|e| panic!("{e}"));
//! assert!(input.query.len() < 4_000 && input.query.ends_with("How many words?"));
//! assert!(input.query.contains("`context`"));
//! assert_eq!(input.moved, 1);
//! ```

use rlm_repl::{Context, SharedContext};

use crate::ServeError;

/// The longest message that reaches the root model's prompt whole, by default: 16 KiB.
pub const DEFAULT_INLINE_MAX_BYTES: usize = 16 << 10;

/// Bytes of a long message's head, and of its tail, that the root model is shown (fewer when
/// the inline limit is small: at most a quarter of it each).
const SHOWN_BYTES: usize = 1024;

/// One message of a conversation: its role (`system`, `developer`, `user`, `assistant`,
/// `tool`, ...) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// Who said it.
    pub role: String,
    /// What it says.
    pub text: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            text: text.into(),
        }
    }
}

/// What a run is made of.
#[derive(Debug)]
pub struct RunInput {
    /// The query as the root model sees it (a long one: its head and tail and a note).
    pub query: String,
    /// Extra instructions for the root model (long ones: head, tail and a note).
    pub instructions: Option<String>,
    /// The context of the run.
    pub context: Context,
    /// Messages that were too long for the prompt and were moved into the context.
    pub moved: usize,
}

/// Makes `messages` into a run's input: see the [module](self) for the rules.
/// `inline_max_bytes` is the longest message shown whole (0: no limit); `shared` is the
/// server's own context, if it has one.
///
/// # Errors
/// [`ServeError::BadRequest`] with code `no_user_message` (no user message: the last user
/// message is the query) or `empty_query` (it is blank).
pub fn run_input(
    messages: Vec<ChatMessage>,
    shared: Option<&SharedContext>,
    inline_max_bytes: usize,
) -> Result<RunInput, ServeError> {
    let Some(last_user) = messages.iter().rposition(|m| m.role == "user") else {
        return Err(ServeError::bad_request(
            "no_user_message",
            "the request has no user message: the last user message is the query",
        ));
    };
    if messages[last_user].text.trim().is_empty() {
        return Err(ServeError::bad_request(
            "empty_query",
            "the last user message (the query) is empty",
        ));
    }
    let too_long = |text: &str| inline_max_bytes > 0 && text.len() > inline_max_bytes;
    let is_instruction = |role: &str| role == "system" || role == "developer";

    // Each message's part: shown whole, moved into the context (a placeholder for now), or
    // left out. Documents are numbered in message order.
    enum Part {
        Instruction(String),
        MovedInstruction(usize),
        Query(String),
        MovedQuery(usize),
    }
    let mut parts = Vec::new();
    let mut documents: Vec<String> = Vec::new();
    let mut moved_texts: Vec<String> = Vec::new();
    // (index among `moved_texts` or `documents`, the message's text head and tail)
    let mut moved_shown: Vec<(String, String, usize, usize)> = Vec::new();
    let mut move_text = |text: String, documents: &mut Vec<String>, moved: &mut Vec<String>| {
        let (head, tail) = head_and_tail(&text, inline_max_bytes);
        let total_chars = text.chars().count();
        let lines = text.lines().count();
        let index = if shared.is_some() {
            moved.push(text);
            moved.len() - 1
        } else {
            documents.push(text);
            documents.len() - 1
        };
        moved_shown.push((head, tail, total_chars, lines));
        index
    };
    for (index, message) in messages.into_iter().enumerate() {
        let ChatMessage { role, text } = message;
        if index == last_user {
            if too_long(&text) {
                let slot = move_text(text, &mut documents, &mut moved_texts);
                parts.push(Part::MovedQuery(slot));
            } else {
                parts.push(Part::Query(text));
            }
        } else if is_instruction(&role) {
            if text.trim().is_empty() {
                continue;
            }
            if too_long(&text) {
                let slot = move_text(text, &mut documents, &mut moved_texts);
                parts.push(Part::MovedInstruction(slot));
            } else {
                parts.push(Part::Instruction(text));
            }
        } else if index < last_user && shared.is_none() {
            documents.push(text);
        }
        // Messages after the query (an assistant prefill) and, with a server context,
        // earlier messages are not part of the run.
    }

    let moved = moved_shown.len();
    let (context, first_moved) = match shared {
        Some(shared) if moved_texts.is_empty() => (Context::Shared(shared.clone()), 0),
        Some(shared) => {
            let (combined, first) = shared.followed_by(moved_texts);
            (Context::Shared(combined), first)
        }
        None => {
            let one = documents.len() == 1;
            let context = match documents.len() {
                0 => Context::Text(String::new()),
                1 => Context::Text(documents.pop().unwrap_or_default()),
                _ => Context::Documents(documents),
            };
            (context, if one { usize::MAX } else { 0 })
        }
    };
    // Where a moved message is, as the root model can write it.
    let place = |slot: usize| {
        if first_moved == usize::MAX {
            "`context`".to_owned()
        } else {
            format!("`context[{}]`", first_moved + slot)
        }
    };
    let mut shown_moved = moved_shown.into_iter();
    let mut placeholder = |slot: usize| {
        let (head, tail, total_chars, lines) = shown_moved.next().unwrap_or_default();
        let shown = head.chars().count() + tail.chars().count();
        format!(
            "{head}\n\n[... {} of this message's {} ({}) are not shown here: the whole \
             message is {} in the REPL (a string); read it with code ...]\n\n{tail}",
            count(total_chars.saturating_sub(shown), "character"),
            count(total_chars, "character"),
            count(lines, "line"),
            place(slot),
        )
    };
    let mut query = String::new();
    let mut instructions = Vec::new();
    for part in parts {
        match part {
            Part::Instruction(text) => instructions.push(text),
            Part::MovedInstruction(slot) => instructions.push(placeholder(slot)),
            Part::Query(text) => query = text,
            Part::MovedQuery(slot) => query = placeholder(slot),
        }
    }
    Ok(RunInput {
        query,
        instructions: (!instructions.is_empty()).then(|| instructions.join("\n\n")),
        context,
        moved,
    })
}

/// The first and last bytes of `text` shown to the root model, cut at character
/// boundaries.
fn head_and_tail(text: &str, inline_max_bytes: usize) -> (String, String) {
    let side = SHOWN_BYTES.min(inline_max_bytes / 4).max(1);
    let mut head_end = side.min(text.len());
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len().saturating_sub(side).max(head_end);
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    (text[..head_end].to_owned(), text[tail_start..].to_owned())
}

/// `n noun(s)`, with thousands separated.
fn count(n: usize, noun: &str) -> String {
    let digits = n.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{grouped} {noun}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(role: &str, text: &str) -> ChatMessage {
        ChatMessage::new(role, text)
    }

    fn input(messages: Vec<ChatMessage>, shared: Option<&SharedContext>) -> RunInput {
        run_input(messages, shared, 1_000).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_query_is_the_last_user_message_and_the_rest_is_context() {
        let run = input(
            vec![
                m("system", "Answer in French."),
                m("user", "document one"),
                m("assistant", "document two"),
                m("developer", "Be brief."),
                m("user", "What do they say?"),
            ],
            None,
        );
        assert_eq!(run.query, "What do they say?");
        assert_eq!(
            run.instructions.as_deref(),
            Some("Answer in French.\n\nBe brief.")
        );
        assert_eq!(
            run.context,
            Context::Documents(vec!["document one".into(), "document two".into()])
        );
        assert_eq!(run.moved, 0);
        let single = input(vec![m("user", "the only document"), m("user", "q")], None);
        assert_eq!(single.context, Context::Text("the only document".into()));
    }

    #[test]
    fn a_long_query_becomes_the_context_and_the_root_sees_its_head_and_tail() {
        // Before: the whole pasted document was the query, in the root model's prompt.
        let document = format!("HEAD {} TAIL", "é".repeat(5_000));
        let run = input(vec![m("user", &format!("{document}\nWhat is it?"))], None);
        assert_eq!(
            run.context,
            Context::Text(format!("{document}\nWhat is it?"))
        );
        assert!(run.query.len() < 1_000, "{}", run.query.len());
        assert!(run.query.starts_with("HEAD "), "{}", run.query);
        assert!(run.query.ends_with("TAIL\nWhat is it?"), "{}", run.query);
        assert!(
            run.query
                .contains("the whole message is `context` in the REPL"),
            "{}",
            run.query
        );
        assert!(
            run.query.contains("of this message's 5,022 characters"),
            "{}",
            run.query
        );
        assert_eq!(run.moved, 1);
    }

    #[test]
    fn long_messages_join_the_earlier_messages_and_say_which_item_they_are() {
        let long_system = "s".repeat(3_000);
        let long_query = "q".repeat(3_000);
        let run = input(
            vec![
                m("system", &long_system),
                m("user", "short document"),
                m("user", &long_query),
            ],
            None,
        );
        assert_eq!(
            run.context,
            Context::Documents(vec![
                long_system.clone(),
                "short document".into(),
                long_query.clone()
            ])
        );
        let instructions = run.instructions.unwrap_or_default();
        assert!(instructions.contains("`context[0]`"), "{instructions}");
        assert!(run.query.contains("`context[2]`"), "{}", run.query);
        assert_eq!(run.moved, 2);
    }

    #[test]
    fn with_a_server_context_a_long_message_follows_it() {
        let shared = SharedContext::new(Context::Documents(vec!["a".into(), "b".into()]));
        let long_query = format!("{}?", "x".repeat(2_000));
        let run = input(
            vec![m("user", "earlier, not used"), m("user", &long_query)],
            Some(&shared),
        );
        let Context::Shared(combined) = &run.context else {
            panic!("{:?}", run.context);
        };
        assert_eq!(combined.info().items, Some(3));
        assert_eq!(combined.info().total_chars, 2 + long_query.len());
        assert!(run.query.contains("`context[2]`"), "{}", run.query);

        let text = SharedContext::new(Context::Text("the book".into()));
        let run = input(vec![m("user", &long_query)], Some(&text));
        let Context::Shared(combined) = &run.context else {
            panic!("{:?}", run.context);
        };
        assert_eq!(combined.info().items, Some(2));
        assert!(run.query.contains("`context[1]`"), "{}", run.query);

        // A short query leaves the server's context as it is.
        let run = input(vec![m("user", "q")], Some(&text));
        assert_eq!(run.context, Context::Shared(text.clone()));
    }

    #[test]
    fn no_limit_keeps_every_message_whole() {
        let long = "z".repeat(100_000);
        let run = run_input(vec![m("user", &long)], None, 0).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run.query, long);
        assert_eq!(run.moved, 0);
    }

    #[test]
    fn a_conversation_without_a_query_is_refused() {
        for (messages, code) in [
            (vec![m("system", "x")], "no_user_message"),
            (vec![m("user", "  ")], "empty_query"),
        ] {
            match run_input(messages, None, 1_000) {
                Err(ServeError::BadRequest { code: got, .. }) => assert_eq!(got, code),
                other => panic!("{other:?}"),
            }
        }
    }
}
