//! What the loop makes of a reply's answer: the answer-acceptance rules.

use super::blocks::TurnWork;
use crate::TurnVerdict;
use crate::parse::{FinalMarker, ParsedReply};

/// What the loop makes of a reply's end markers.
#[derive(Debug, PartialEq)]
pub(super) enum Verdict {
    /// The run ends with this answer.
    Accept(String),
    /// Not yet: the model is told why and must confirm (the next FINAL stands).
    Hold(String),
    /// Not accepted; the model is told why.
    Refuse(String),
    /// The reply gave no answer.
    None,
    /// The answer does not conform to the output schema: its first errors.
    Invalid(String),
}

impl Verdict {
    /// The verdict as the turn's event reports it.
    pub(super) fn reported(&self) -> TurnVerdict {
        match self {
            Verdict::Accept(_) => TurnVerdict::Accepted,
            Verdict::Hold(_) => TurnVerdict::Held,
            Verdict::Refuse(_) => TurnVerdict::Refused,
            Verdict::None => TurnVerdict::NoAnswer,
            Verdict::Invalid(_) => TurnVerdict::InvalidOutput,
        }
    }
}

/// Applies the answer-acceptance rules to one reply: a `FINAL` called in code stands once its
/// block ran; a text `FINAL(...)` only in a reply without code; a text `FINAL_VAR(name)` when
/// every block ran without error; nothing in a cut reply; an answer from a warned block, an
/// `Error: ...` string or a blank answer is held once.
/// `held` says whether an answer of this run was already held once.
pub(super) fn verdict(parsed: &ParsedReply, work: &TurnWork, cut: bool, held: bool) -> Verdict {
    let (answer, warned) = if let Some((answer, warned)) = &work.code_final {
        (answer.clone(), *warned)
    } else {
        if !parsed.conflicting.is_empty() {
            return Verdict::Refuse(conflict_note(parsed));
        }
        match (&parsed.final_marker, &work.text_var) {
            (None, _) => return Verdict::None,
            (Some(FinalMarker::Value(_)), _) if cut => {
                return Verdict::Refuse(
                    "Your FINAL(...) was not accepted: the reply was cut at the token limit, so \
                     the answer may be cut too. Give it again, shorter, or store it in a \
                     variable and give FINAL_VAR(name)."
                        .to_owned(),
                );
            }
            (Some(FinalMarker::Value(_)), _) if parsed.has_code() => {
                return Verdict::Refuse(
                    "Your FINAL(...) was not accepted: you wrote it before you saw the output \
                     above. If it still holds, repeat it (FINAL(...) on its own line, or \
                     FINAL_VAR(name))."
                        .to_owned(),
                );
            }
            (Some(FinalMarker::Value(value)), _) => (value.clone(), false),
            (Some(FinalMarker::Var(name)), _) if cut => {
                return Verdict::Refuse(format!(
                    "Your FINAL_VAR({name}) was not accepted: the reply was cut at the token \
                     limit. Give it again."
                ));
            }
            (Some(FinalMarker::Var(name)), _) if work.failed.is_some() || work.not_run > 0 => {
                return Verdict::Refuse(format!(
                    "Your FINAL_VAR({name}) was not accepted: not every block ran without \
                     error. Fix the code, then give FINAL_VAR({name}) again."
                ));
            }
            (Some(FinalMarker::Var(_)), Some(Ok(value))) => (value.clone(), work.warned),
            (Some(FinalMarker::Var(_)), Some(Err(why))) => return Verdict::Refuse(why.clone()),
            (Some(FinalMarker::Var(_)), None) => return Verdict::None,
        }
    };
    if cut {
        return Verdict::Refuse(
            "Your FINAL was not accepted: the reply was cut at the token limit, and nothing in \
             a cut reply ends the run. Give it again, shorter."
                .to_owned(),
        );
    }
    if !held {
        if warned {
            return Verdict::Hold(
                "the block that gave it raised a warning (see above), which often means a \
                 silently wrong value"
                    .to_owned(),
            );
        }
        if answer.trim_start().starts_with("Error:") {
            return Verdict::Hold(
                "it is an \"Error: ...\" string from a failed or cancelled call, not an answer"
                    .to_owned(),
            );
        }
        if answer.trim().is_empty() {
            return Verdict::Hold(
                "it is empty, which usually means a variable or a search came back blank"
                    .to_owned(),
            );
        }
    }
    Verdict::Accept(answer)
}

/// What the model is told when its reply gave different answers.
pub(super) fn conflict_note(parsed: &ParsedReply) -> String {
    let shown: Vec<String> = parsed
        .conflicting
        .iter()
        .map(|marker| match marker {
            FinalMarker::Value(value) => format!("FINAL({})", super::feedback::clip(value)),
            FinalMarker::Var(name) => format!("FINAL_VAR({})", super::feedback::clip(name)),
        })
        .collect();
    format!(
        "Your reply was not accepted: it gave {} different final answers ({}), so it is not \
         clear which one you meant. Give exactly one FINAL(...) or FINAL_VAR(...).",
        shown.len(),
        shown.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::parse_reply;
    use crate::{Context, Repl};

    fn work(code_final: Option<(&str, bool)>, failed: Option<usize>) -> TurnWork {
        TurnWork {
            repl: Some(super::super::LazyRepl::Built(Box::new(
                Repl::builder(Context::from("")).build(),
            ))),
            blocks: Vec::new(),
            sub_calls: Vec::new(),
            code_final: code_final.map(|(a, w)| (a.to_owned(), w)),
            warned: code_final.is_some_and(|(_, w)| w),
            failed,
            not_run: 0,
            text_var: None,
        }
    }

    #[test]
    fn a_text_final_with_code_waits_for_the_output() {
        let parsed = parse_reply("```repl\nprint(1);\n```\nOutput: 1\nFINAL(999)");
        assert!(matches!(
            verdict(&parsed, &work(None, None), false, false),
            Verdict::Refuse(why) if why.contains("before you saw the output")
        ));
        let alone = parse_reply("FINAL(999)");
        assert_eq!(
            verdict(&alone, &work(None, None), false, false),
            Verdict::Accept("999".into())
        );
        assert!(matches!(
            verdict(&alone, &work(None, None), true, false),
            Verdict::Refuse(why) if why.contains("cut")
        ));
    }

    #[test]
    fn warned_and_error_answers_are_held_once() {
        let parsed = parse_reply("```repl\nFINAL(x)\n```");
        let warned = work(Some(("42", true)), None);
        assert!(matches!(
            verdict(&parsed, &warned, false, false),
            Verdict::Hold(_)
        ));
        assert_eq!(
            verdict(&parsed, &warned, false, true),
            Verdict::Accept("42".into())
        );
        let error = work(Some(("Error: timed out", false)), None);
        assert!(matches!(
            verdict(&parsed, &error, false, false),
            Verdict::Hold(why) if why.contains("Error")
        ));
        // A blank answer, in code or in text, is held once; given again, it stands.
        for (reply, work) in [
            ("```repl\nFINAL(x)\n```", work(Some((" \n", false)), None)),
            ("FINAL()", work(None, None)),
        ] {
            let parsed = parse_reply(reply);
            assert!(
                matches!(verdict(&parsed, &work, false, false), Verdict::Hold(why) if why.contains("empty")),
                "{reply}"
            );
            assert!(
                matches!(verdict(&parsed, &work, false, true), Verdict::Accept(a) if a.trim().is_empty()),
                "{reply}"
            );
        }
    }

    #[test]
    fn a_text_final_var_needs_every_block_to_run() {
        let parsed = parse_reply("```repl\nlet a = 1;\n```\n```repl\nbad(\n```\nFINAL_VAR(a)");
        let mut failed = work(None, Some(1));
        failed.text_var = Some(Ok("1".into()));
        assert!(matches!(
            verdict(&parsed, &failed, false, false),
            Verdict::Refuse(why) if why.contains("not every block")
        ));
        let mut ok = work(None, None);
        ok.text_var = Some(Ok("1".into()));
        assert_eq!(
            verdict(&parsed, &ok, false, false),
            Verdict::Accept("1".into())
        );
    }
}
