//! Reading a root reply: its code blocks and its text-level `FINAL(...)` / `FINAL_VAR(...)`.
//!
//! Fenced blocks tagged `repl` or `rhai` run, in order. Untagged blocks run only when the
//! reply has no tagged block (a model that forgets the tag still meant code; a model that tags
//! its code and also shows an untagged snippet meant an illustration). Blocks in other
//! languages (`python`, `json`, ...) never run; the model is told so. A `FINAL` marker counts
//! only on a line outside every fence.

/// A text-level end marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FinalMarker {
    /// `FINAL(answer)`.
    Value(String),
    /// `FINAL_VAR(name)`.
    Var(String),
}

/// What a reply asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ParsedReply {
    /// Code to run, in order.
    pub(crate) blocks: Vec<String>,
    /// The first end marker outside code fences.
    pub(crate) final_marker: Option<FinalMarker>,
    /// A fence was opened and never closed (its code does not run).
    pub(crate) unterminated: bool,
    /// Languages of blocks that were not run.
    pub(crate) skipped: Vec<String>,
}

struct Fence {
    lang: String,
    code: String,
}

/// Splits `reply` into code blocks and text.
pub(crate) fn parse_reply(reply: &str) -> ParsedReply {
    let mut parsed = ParsedReply::default();
    let mut fences: Vec<Fence> = Vec::new();
    // The open fence: its language, its length in backticks, and its lines so far.
    let mut open: Option<(String, usize, Vec<&str>)> = None;
    let lines: Vec<&str> = reply.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim();
        let ticks = trimmed.len() - trimmed.trim_start_matches('`').len();
        match &mut open {
            Some((lang, length, body)) => {
                // As in Markdown, only a bare fence at least as long as the opening one
                // closes it: a ````repl block may hold ``` lines.
                if ticks >= *length && trimmed.trim_start_matches('`').trim().is_empty() {
                    fences.push(Fence {
                        lang: std::mem::take(lang),
                        code: body.join("\n"),
                    });
                    open = None;
                } else {
                    body.push(line);
                }
            }
            None => {
                if let Some(info) = trimmed.strip_prefix("```") {
                    let lang = info
                        .trim_start_matches('`')
                        .split_whitespace()
                        .next()
                        .unwrap_or("")
                        .to_ascii_lowercase();
                    open = Some((lang, ticks, Vec::new()));
                } else if parsed.final_marker.is_none() {
                    parsed.final_marker = final_marker(line, &lines[i + 1..]);
                }
            }
        }
        i += 1;
    }
    parsed.unterminated = open.is_some();
    let tagged = fences.iter().any(|f| is_rhai(&f.lang));
    for fence in fences {
        if is_rhai(&fence.lang) || (!tagged && fence.lang.is_empty()) {
            if !fence.code.trim().is_empty() {
                parsed.blocks.push(fence.code);
            }
        } else {
            parsed.skipped.push(fence.lang);
        }
    }
    parsed
}

fn is_rhai(lang: &str) -> bool {
    matches!(lang, "repl" | "rhai")
}

/// A marker at the start of `line` (after indentation and Markdown decoration).
fn final_marker(line: &str, following: &[&str]) -> Option<FinalMarker> {
    let text = line.trim_start_matches(|c: char| c.is_whitespace() || "*>#-`_".contains(c));
    if let Some(rest) = text.strip_prefix("FINAL_VAR(") {
        // A name has no `)`: anything after the first one is prose.
        let name = rest.find(')').map_or(rest, |end| &rest[..end]);
        let name = unquote(name.trim());
        return (!name.is_empty()).then(|| FinalMarker::Var(name.to_owned()));
    }
    let rest = text.strip_prefix("FINAL(")?;
    let answer = match rest.rfind(')') {
        Some(end) => rest[..end].to_owned(),
        // The answer spans lines: take everything up to the last `)` of the reply.
        None => {
            let mut all = rest.to_owned();
            for next in following {
                all.push('\n');
                all.push_str(next);
            }
            match all.rfind(')') {
                Some(end) => all[..end].to_owned(),
                None => all,
            }
        }
    };
    Some(FinalMarker::Value(unquote(answer.trim()).to_owned()))
}

/// `text` without one pair of matching surrounding quotes.
fn unquote(text: &str) -> &str {
    for quote in ['"', '\'', '`'] {
        if text.len() >= 2 && text.starts_with(quote) && text.ends_with(quote) {
            return &text[1..text.len() - 1];
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_tagged_blocks_in_order() {
        let reply = "Let me look.\n```repl\nlet a = 1;\n```\ntext\n```rhai\nprint(a);\n```\n";
        let parsed = parse_reply(reply);
        assert_eq!(parsed.blocks, ["let a = 1;", "print(a);"]);
        assert_eq!(parsed.final_marker, None);
        assert!(!parsed.unterminated);
    }

    #[test]
    fn untagged_blocks_run_only_without_tagged_ones() {
        assert_eq!(parse_reply("```\nprint(1);\n```").blocks, ["print(1);"]);
        let mixed = parse_reply("```repl\nprint(1);\n```\n```\nexample output\n```");
        assert_eq!(mixed.blocks, ["print(1);"]);
        assert_eq!(mixed.skipped, [""]);
        let python = parse_reply("```python\nprint(1)\n```");
        assert!(python.blocks.is_empty());
        assert_eq!(python.skipped, ["python"]);
    }

    #[test]
    fn final_markers_outside_fences_only() {
        let parsed =
            parse_reply("```repl\nFINAL(\"in code\")\n```\nFINAL(The answer (really) is 42).");
        assert_eq!(
            parsed.final_marker,
            Some(FinalMarker::Value("The answer (really) is 42".into()))
        );
        assert_eq!(parsed.blocks, ["FINAL(\"in code\")"]);
        let var = parse_reply("Done.\n**FINAL_VAR(answer)**");
        assert_eq!(var.final_marker, Some(FinalMarker::Var("answer".into())));
        let quoted = parse_reply("FINAL_VAR(\"answer\")");
        assert_eq!(quoted.final_marker, Some(FinalMarker::Var("answer".into())));
        let multi = parse_reply("FINAL(line one\nline two)");
        assert_eq!(
            multi.final_marker,
            Some(FinalMarker::Value("line one\nline two".into()))
        );
        assert_eq!(
            parse_reply("The FINAL(x) is not at the start").final_marker,
            None
        );
        assert_eq!(
            parse_reply("FINAL(\"quoted\")").final_marker,
            Some(FinalMarker::Value("quoted".into()))
        );
    }

    #[test]
    fn a_longer_fence_holds_shorter_ones() {
        // A prompt with a fenced example inside a backtick string: the model fences its code
        // with four backticks, as Markdown allows, and the inner ``` lines are code.
        let reply = "````repl\nlet p = `Reply like this:\n```json\n{}\n```\n`;\nprint(p);\n````\nFINAL(done)";
        let parsed = parse_reply(reply);
        assert_eq!(
            parsed.blocks,
            ["let p = `Reply like this:\n```json\n{}\n```\n`;\nprint(p);"]
        );
        assert!(!parsed.unterminated);
        assert_eq!(parsed.final_marker, Some(FinalMarker::Value("done".into())));
        // A fence closes only with at least as many backticks as it opened with.
        let parsed = parse_reply("````repl\nprint(1);\n```\n");
        assert!(parsed.unterminated);
        let parsed = parse_reply("```repl\nprint(1);\n`````\nFINAL(x)");
        assert_eq!(parsed.blocks, ["print(1);"]);
        assert_eq!(parsed.final_marker, Some(FinalMarker::Value("x".into())));
    }

    #[test]
    fn final_var_takes_the_name_up_to_its_parenthesis() {
        let parsed = parse_reply("FINAL_VAR(answer) (computed above)");
        assert_eq!(parsed.final_marker, Some(FinalMarker::Var("answer".into())));
        let parsed = parse_reply("FINAL_VAR(\"answer\").");
        assert_eq!(parsed.final_marker, Some(FinalMarker::Var("answer".into())));
    }

    #[test]
    fn unterminated_and_empty() {
        let parsed = parse_reply("```repl\nprint(1);\n");
        assert!(parsed.unterminated);
        assert!(parsed.blocks.is_empty());
        assert_eq!(parse_reply(""), ParsedReply::default());
        let inside = parse_reply("```repl\nlet x = 1;\nFINAL(x)\n");
        assert_eq!(
            inside.final_marker, None,
            "a marker inside an open fence is code"
        );
    }
}
