//! Running the code of a root reply in the run's REPL, on a thread of its own.

use std::sync::Arc;

use rlm_core::Completion;

use super::LazyRepl;
use crate::parse::{FinalMarker, ParsedReply, parse_reply};
use crate::repl::subcall::millis;
use crate::state::RunState;
use crate::{BlockRecord, Event, RlmError, StopReason, SubCallRecord};

/// Reports the reasoning the reply held in its text, if any.
pub(super) fn report_reasoning(run: &RunState, turn: usize, parsed: &ParsedReply) {
    if parsed.reasoning.is_empty() {
        return;
    }
    run.emitter.emit_with(|| Event::RootReasoning {
        turn,
        text: parsed.reasoning.join("\n\n"),
        unclosed: parsed.reasoning_unclosed,
    });
}

/// What the blocks of one reply did.
pub(super) struct TurnWork {
    /// The REPL, back from the blocks' thread (taken by the run).
    pub(super) repl: Option<LazyRepl>,
    pub(super) blocks: Vec<BlockRecord>,
    pub(super) sub_calls: Vec<SubCallRecord>,
    /// A `FINAL` called in code, and whether its block raised lint warnings.
    pub(super) code_final: Option<(String, bool)>,
    /// Any block raised lint warnings.
    pub(super) warned: bool,
    /// The block that failed (from 0); the blocks after it did not run.
    pub(super) failed: Option<usize>,
    /// Blocks not run because the run had to stop.
    pub(super) not_run: usize,
    /// The value of a text `FINAL_VAR(name)`, or why there is none.
    pub(super) text_var: Option<Result<String, String>>,
}

/// Runs the reply's blocks in order on a thread of their own; stops after a `FINAL`, after a
/// block that fails, or once the run must stop. Then reads a text `FINAL_VAR`, unless the
/// reply was `cut`.
pub(super) async fn run_blocks(
    repl: LazyRepl,
    parsed: ParsedReply,
    cut: bool,
    turn: usize,
    run: Arc<RunState>,
) -> Result<TurnWork, RlmError> {
    let reads_var = matches!(parsed.final_marker, Some(FinalMarker::Var(_))) && !cut;
    if parsed.blocks.is_empty() && !reads_var {
        // Nothing to evaluate (a reply with a text answer, or none): no evaluation thread.
        let sub_calls = repl.take_sub_calls();
        return Ok(TurnWork {
            repl: Some(repl),
            blocks: Vec::new(),
            sub_calls,
            code_final: None,
            warned: false,
            failed: None,
            not_run: 0,
            text_var: None,
        });
    }
    let stack = repl.stack_size();
    crate::repl::spawn_evaluation(stack, move || {
        let mut repl = repl.force();
        let mut blocks = Vec::new();
        let mut code_final = None;
        let mut warned = false;
        let mut failed = None;
        let mut not_run = 0;
        for (index, code) in parsed.blocks.iter().enumerate() {
            // Cancellation stops everything; a spent budget stops after the block that spent
            // it (the first block of a turn still runs: it may hold the final answer).
            let stop = run.budget.stopped();
            let cancelled = matches!(stop, Some(StopReason::Cancelled | StopReason::MaxTime));
            if cancelled || (index > 0 && stop.is_some()) {
                not_run = parsed.blocks.len() - index;
                break;
            }
            let outcome = repl.execute(code);
            run.emitter.emit_with(|| Event::CodeBlock {
                turn,
                block: index,
                code: code.clone(),
                output: outcome.output.clone(),
                error: outcome.error.clone(),
                elapsed_ms: millis(outcome.elapsed),
            });
            warned |= !outcome.warnings.is_empty();
            let error = outcome.error.is_some();
            blocks.push(BlockRecord {
                code: code.clone(),
                output: outcome.output,
                error: outcome.error,
                elapsed: outcome.elapsed,
            });
            if let Some(answer) = outcome.final_answer {
                code_final = Some((answer, !outcome.warnings.is_empty()));
                break;
            }
            if error {
                failed = Some(index);
                break;
            }
        }
        let cancelled = matches!(
            run.budget.stopped(),
            Some(StopReason::Cancelled | StopReason::MaxTime)
        );
        let text_var = match &parsed.final_marker {
            Some(FinalMarker::Var(name)) if code_final.is_none() && !cancelled && !cut => {
                Some(repl.final_expression(name))
            }
            _ => None,
        };
        let sub_calls = repl.take_sub_calls();
        TurnWork {
            repl: Some(LazyRepl::Built(Box::new(repl))),
            blocks,
            sub_calls,
            code_final,
            warned,
            failed,
            not_run,
            text_var,
        }
    })
    .await
}

/// The answer in the reply to the final ask, if it gave one: a text marker, or code that
/// calls FINAL (run for that alone). Also the blocks run and their sub-calls.
pub(super) async fn final_reply(
    repl: LazyRepl,
    reply: &Completion,
    turn: usize,
    run: &Arc<RunState>,
    warnings: &mut Vec<String>,
) -> Result<(Option<LazyRepl>, FinalWork), RlmError> {
    let parsed = parse_reply(&reply.text);
    report_reasoning(run, turn, &parsed);
    let cut = reply.is_cut();
    let finishing = ParsedReply {
        // Out of habit, the model may give its answer as code (FINAL(x) in a ```repl
        // block): run the blocks that do, rather than take the code as the answer.
        blocks: match parsed.final_marker {
            None if !cut => parsed
                .blocks
                .iter()
                .filter(|code| code.contains("FINAL"))
                .cloned()
                .collect(),
            _ => Vec::new(),
        },
        // A cut reply whose FINAL( never closed may hold half an answer.
        final_marker: parsed
            .final_marker
            .clone()
            .filter(|_| !(cut && parsed.final_unbalanced)),
        ..ParsedReply::default()
    };
    let work = run_blocks(repl, finishing.clone(), false, turn, Arc::clone(run)).await?;
    let mut unread = None;
    let given = match (&finishing.final_marker, work.code_final) {
        (Some(FinalMarker::Value(value)), _) => Some(value.clone()),
        (Some(FinalMarker::Var(_)), _) => match work.text_var {
            Some(Ok(answer)) => Some(answer),
            Some(Err(why)) => {
                unread = Some(why);
                None
            }
            None => None,
        },
        (None, code_final) => code_final.map(|(answer, _)| answer),
    };
    if given.is_some() && cut {
        warnings
            .push("the reply that gave the answer was cut at the token limit after it".to_owned());
    }
    Ok((
        work.repl,
        FinalWork {
            answer: given,
            unread,
            conflicting: !parsed.conflicting.is_empty(),
            blocks: work.blocks,
            sub_calls: work.sub_calls,
        },
    ))
}

/// What the reply to the final ask gave.
pub(super) struct FinalWork {
    pub(super) answer: Option<String>,
    /// Why the reply's `FINAL_VAR(...)` gave no answer (its variable could not be read).
    pub(super) unread: Option<String>,
    /// The reply gave different answers, so none was taken.
    pub(super) conflicting: bool,
    pub(super) blocks: Vec<BlockRecord>,
    pub(super) sub_calls: Vec<SubCallRecord>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;
    use crate::emitter::Emitter;
    use crate::{Context, Repl};

    /// A reply with nothing to evaluate (a text answer, or no code) is judged without handing
    /// the REPL to an evaluation thread and back; code, or a `FINAL_VAR` to read, is run there.
    #[tokio::test]
    async fn only_replies_with_something_to_evaluate_go_to_an_evaluation_thread() {
        let run = Arc::new(RunState::new(
            Budget::new(Default::default(), None, None),
            Emitter::default(),
        ));
        let mut repl = LazyRepl::Built(Box::new(Repl::new(Context::Text("the context".into()))));
        let handed = |before: usize| crate::repl::handed_off() - before;
        for (reply, evaluates) in [
            ("FINAL(ok)", false),
            ("I will look at the context first.", false),
            ("```repl\nlet n = context.len();\n```", true),
            ("FINAL_VAR(n)", true),
        ] {
            let before = crate::repl::handed_off();
            let work = run_blocks(repl, parse_reply(reply), false, 1, Arc::clone(&run))
                .await
                .unwrap_or_else(|e| panic!("{reply}: {e}"));
            assert_eq!(handed(before), usize::from(evaluates), "{reply}");
            if reply.starts_with("FINAL_VAR") {
                assert_eq!(work.text_var, Some(Ok("11".to_owned())));
            }
            repl = work
                .repl
                .unwrap_or_else(|| panic!("{reply}: the REPL came back"));
        }
    }
}
