//! What the root model and the user are told: the next user message after a turn, and
//! the warnings of a run.

use rlm_core::Completion;

use crate::ledger::Ledger;
use crate::parse::ParsedReply;
use crate::{BlockRecord, StopReason};

/// The next user message: each block's output, which blocks did not run and why, and notes
/// on the reply (cut, not accepted, held); or a nudge for a reply that did nothing.
pub(super) fn feedback(
    reply: &Completion,
    parsed: &ParsedReply,
    blocks: &[BlockRecord],
    failed: Option<usize>,
    notes: &[String],
    not_run: usize,
    turns_left: usize,
) -> String {
    let mut out = String::new();
    if reply.is_cut() {
        out.push_str(
            "Your reply was cut at the token limit (finish_reason: length): nothing in it ends \
             the run, and an unfinished block did not run. Write shorter replies; give a long \
             answer with FINAL_VAR(name) after storing it in a variable.\n\n",
        );
    }
    if parsed.reasoning_unclosed {
        out.push_str(
            "Your reply opened a reasoning section (<think>) and never closed it, so all of \
             the reply after it was taken as reasoning: no code in it ran and no FINAL in it \
             counts. Close reasoning with </think> before your code or your answer.\n\n",
        );
    }
    if blocks.is_empty() && parsed.final_marker.is_none() && parsed.conflicting.is_empty() {
        if !reply.is_cut() && !parsed.reasoning_unclosed {
            out.push_str(&nudge(reply, parsed));
        }
    } else {
        let many = parsed.blocks.len() > 1;
        for (i, block) in blocks.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            let title = match (many, failed == Some(i)) {
                (true, true) => format!("Block {} failed:", i + 1),
                (true, false) => format!("Block {} output:", i + 1),
                (false, _) => "Output:".to_owned(),
            };
            out.push_str(&title);
            out.push('\n');
            if block.output.trim().is_empty() {
                out.push_str("(no output: print(...) what you want to see)\n");
            } else {
                out.push_str(&block.output);
                if !block.output.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
        let skipped = parsed.blocks.len().saturating_sub(blocks.len());
        if let Some(index) = failed.filter(|_| skipped > 0) {
            out.push_str(&format!(
                "\nBlock {} failed, so {} after it did not run: fix the error and send them \
                 again.\n",
                index + 1,
                if skipped == 1 {
                    "the block".to_owned()
                } else {
                    format!("the {skipped} blocks")
                }
            ));
        } else if not_run > 0 {
            out.push_str(&format!(
                "\n{} did not run: the run's budget is spent.\n",
                count(not_run as u64, "more block")
            ));
        }
        if parsed.unterminated && !reply.is_cut() {
            out.push_str(
                "\nYour last code block was not closed with a fence, so it did not run.\n",
            );
        }
        if let Some(lang) = parsed.skipped_code() {
            out.push_str(&format!(
                "\nYour ```{lang} block did not run: only ```repl blocks (Rhai) run.\n"
            ));
        }
    }
    for note in notes {
        out.push('\n');
        out.push_str(note);
        out.push('\n');
    }
    if (1..=2).contains(&turns_left) {
        out.push_str(&format!(
            "\n({} left: finish soon with FINAL(answer).)",
            count(turns_left as u64, "turn")
        ));
    }
    out.trim().to_owned()
}

/// Why a root reply that ran no code and gave no answer did nothing, and what to do.
fn nudge(reply: &Completion, parsed: &ParsedReply) -> String {
    if let Some(why) = reply.missing_text() {
        return format!(
            "Your reply was empty: {why}. Write ```repl code to explore `context`, or answer \
             with FINAL(answer) on its own line."
        );
    }
    if !parsed.reasoning.is_empty() && parsed.skipped.is_empty() && !parsed.unterminated {
        return "Your reply held only reasoning (<think>...</think>): code and FINAL(...) inside \
                reasoning do not count. After closing the reasoning, write ```repl code to \
                explore `context`, or answer with FINAL(answer) on its own line."
            .to_owned();
    }
    if parsed.unterminated {
        return "Your code block was not closed with a fence on its own line, so it did not \
                run. Send the code again in a complete block."
            .to_owned();
    }
    if let Some(lang) = parsed.skipped_code() {
        return format!(
            "Your ```{lang} block did not run: only ```repl blocks run, and their language is \
             Rhai (see the cheat-sheet), not Python."
        );
    }
    if !parsed.skipped.is_empty() {
        return format!(
            "Your ```{} block did not run: it is not code. Put code in ```repl blocks, or \
             answer with FINAL(answer) on its own line.",
            parsed.skipped[0]
        );
    }
    "Your reply had no ```repl code block and no FINAL(...) at the start of a line outside \
     code. Write code in ```repl blocks to explore `context`, or answer with FINAL(answer) on \
     its own line."
        .to_owned()
}

/// Why a budget stop left no answer, for the warning.
pub(super) fn stopped_why(stopped: StopReason) -> &'static str {
    match stopped {
        StopReason::MaxIterations => "the turn budget (--max-iterations) ran out",
        StopReason::MaxSubCalls => "the sub-call budget (--max-sub-calls) ran out",
        StopReason::MaxCost => "the cost budget (--max-cost) ran out",
        StopReason::MaxTokens => "the token budget (--max-total-tokens) ran out",
        StopReason::MaxTime => "the run's time (--max-time) ran out before a final answer",
        StopReason::Cancelled => "the run was cancelled before a final answer",
        StopReason::Final => "the run stopped",
        StopReason::InvalidOutput => {
            "no final answer conformed to the output schema (--output-schema-retries ran out)"
        }
    }
}

/// Warnings about the sub-calls of a tree: cut and empty replies, failures an answer was
/// built on.
pub(super) fn sub_call_warnings(
    ledger: &Ledger,
    sub_calls: u64,
    failed: u64,
    answered: bool,
) -> Vec<String> {
    let mut warnings = Vec::new();
    let cut = ledger
        .cut_sub_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    if cut > 0 {
        warnings.push(format!(
            "{} cut at the token limit (the script got \"Error: ...\" with the partial text)",
            count_verb(cut, "sub-call", "was", "were")
        ));
    }
    let empty = ledger
        .empty_sub_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    if empty > 0 {
        warnings.push(format!(
            "{} no answer text (only reasoning or tool calls, or empty content)",
            count_verb(empty, "sub-call", "had", "had")
        ));
    }
    if answered && failed > 0 {
        warnings.push(format!(
            "the answer was given after {failed} of {} failed; it may rest on their \
             \"Error: ...\" strings",
            count(sub_calls, "sub-call")
        ));
    }
    warnings
}

/// A value shown in a message: its first characters.
pub(super) fn clip(text: &str) -> String {
    const SHOWN_CHARS: usize = 60;
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}...", &text[..end]),
        None => text.to_owned(),
    }
}

/// The start of a reply, quoted for a message.
pub(super) fn quote_start(text: &str) -> String {
    const QUOTED_CHARS: usize = 160;
    let text = text.trim();
    match text.char_indices().nth(QUOTED_CHARS) {
        Some((end, _)) => format!("{:?}...", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// `1 sub-call was`, `2 sub-calls were`.
fn count_verb(n: u64, what: &str, one: &str, many: &str) -> String {
    format!("{} {}", count(n, what), if n == 1 { one } else { many })
}

/// `1 sub-call`, `2 sub-calls`.
pub(super) fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}
