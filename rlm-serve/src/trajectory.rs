//! The trajectory as short text: what a streaming client is shown as "thinking" and what an
//! MCP client gets as progress messages.

use rlm_repl::Event;

/// Characters of a code block shown before it is cut.
const MAX_CODE_CHARS: usize = 2_000;
/// Characters of a block's output (or error) shown before it is cut.
const MAX_OUTPUT_CHARS: usize = 240;

/// The text for one event, ending with a line break, or `None` for events not worth
/// showing. Batch progress is shown at each tenth of the batch (and its end), so a batch of
/// thousands of prompts gives a dozen lines, not thousands.
pub fn describe(event: &Event) -> Option<String> {
    match event {
        Event::TurnStart { turn } => Some(format!("Turn {turn}: asking the root model\n")),
        Event::CodeBlock {
            code,
            output,
            error,
            elapsed_ms,
            ..
        } => {
            let mut text = format!("```rhai\n{}\n```\n", cut(code.trim_end(), MAX_CODE_CHARS));
            match error {
                Some(error) => text.push_str(&format!("error: {}\n", one_line(error))),
                None if output.trim().is_empty() => {
                    text.push_str(&format!("(no output, {elapsed_ms} ms)\n"));
                }
                None => text.push_str(&format!(
                    "output ({} chars): {}\n",
                    output.chars().count(),
                    one_line(output)
                )),
            }
            Some(text)
        }
        Event::BatchStart {
            batch,
            total,
            max_concurrent,
            ..
        } => Some(format!(
            "llm_batch #{batch}: {total} prompts, up to {max_concurrent} at a time\n"
        )),
        Event::BatchProgress {
            batch,
            done,
            failed,
            total,
            ..
        } if *total > 0 && *done > 0 && (done * 10 / total != (done - 1) * 10 / total) => {
            let failed = if *failed > 0 {
                format!(" ({failed} failed)")
            } else {
                String::new()
            };
            Some(format!("llm_batch #{batch}: {done}/{total} done{failed}\n"))
        }
        Event::SubCallEnd {
            batch: None,
            error,
            latency_ms,
            ..
        } => Some(match error {
            Some(error) => format!("llm_query failed: {}\n", one_line(error)),
            None => format!("llm_query answered in {latency_ms} ms\n"),
        }),
        _ => None,
    }
}

/// `text` on one line, at most [`MAX_OUTPUT_CHARS`] characters.
fn one_line(text: &str) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    cut(&line, MAX_OUTPUT_CHARS)
}

/// At most `max` characters of `text`, saying how many were left out.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((end, _)) => format!(
            "{}… [{} more chars]",
            &text[..end],
            text[end..].chars().count()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_and_outputs_are_short() {
        let event = Event::CodeBlock {
            turn: 1,
            block: 0,
            code: "print(context.len());".into(),
            output: format!("{}\n", "x".repeat(1000)),
            error: None,
            elapsed_ms: 3,
        };
        let text = describe(&event).unwrap_or_default();
        assert!(
            text.starts_with("```rhai\nprint(context.len());\n```\n"),
            "{text}"
        );
        assert!(text.contains("output (1001 chars)"), "{text}");
        assert!(text.contains("[760 more chars]"), "{text}");
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn batch_progress_is_shown_by_tenths() {
        let shown = (1..=100)
            .filter(|done| {
                describe(&Event::BatchProgress {
                    turn: 1,
                    batch: 1,
                    done: *done,
                    failed: 0,
                    total: 100,
                })
                .is_some()
            })
            .count();
        assert_eq!(shown, 10);
        let small = (1..=3)
            .filter_map(|done| {
                describe(&Event::BatchProgress {
                    turn: 1,
                    batch: 2,
                    done,
                    failed: 1,
                    total: 3,
                })
            })
            .collect::<Vec<_>>();
        assert_eq!(small.len(), 3);
        assert_eq!(small[2], "llm_batch #2: 3/3 done (1 failed)\n");
    }
}
