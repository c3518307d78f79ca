//! Reading a root reply: its code blocks and its text-level `FINAL(...)` / `FINAL_VAR(...)`.
//!
//! Fences are ```` ``` ```` or `~~~`, three or more, closed by a bare fence of the same
//! character at least as long (as in Markdown). Blocks tagged `repl` or `rhai` run, in order.
//! Untagged blocks run only when the reply has no tagged block (a model that forgets the tag
//! still meant code; a model that tags its code and also shows an untagged snippet meant an
//! illustration). Blocks in other languages (`python`, `json`, ...) never run; the model is
//! told so.
//!
//! A marker is `FINAL(` or `FINAL_VAR(` at the start of a line (after indentation and Markdown
//! decoration such as `**`, `>`, `-`, `#`), outside every fence and not inside inline code.
//! `FINAL(` takes the text up to the parenthesis that balances it, across lines; prose after
//! it is not part of the answer. Only when it never balances does a fallback apply: the text
//! up to the reply's last `)`, or all of it. A reply whose markers disagree (`FINAL(12)` and
//! later `FINAL(4242)`) gives no answer: it is ambiguous (the same marker repeated is fine).
//!
//! Reasoning is not the reply: local reasoning models write their thinking into the reply as
//! `<think>...</think>` (also `<thinking>`, `<reasoning>`). Such a section, opened at the start
//! of a line outside code, is taken out before the reply is read: no marker and no code in it
//! counts. A section never closed runs to the end of the reply; a closing tag at the start of
//! a line with no opening tag before it (servers that put the opening tag in the prompt) ends
//! a section that began with the reply.

/// A text-level end marker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FinalMarker {
    /// `FINAL(answer)`.
    Value(String),
    /// `FINAL_VAR(name)` (or `FINAL_VAR(expression)`).
    Var(String),
}

/// What a reply asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ParsedReply {
    /// Code to run, in order.
    pub(crate) blocks: Vec<String>,
    /// The first end marker outside code.
    pub(crate) final_marker: Option<FinalMarker>,
    /// The `FINAL(` marker never balanced: its answer is a fallback, possibly cut.
    pub(crate) final_unbalanced: bool,
    /// A fence was opened and never closed (its code does not run).
    pub(crate) unterminated: bool,
    /// Languages of blocks that were not run (`""` for an untagged illustration).
    pub(crate) skipped: Vec<String>,
    /// Two or more different markers outside code (each once, in order): no answer is taken.
    pub(crate) conflicting: Vec<FinalMarker>,
    /// The reasoning sections taken out of the reply, in order.
    pub(crate) reasoning: Vec<String>,
    /// A reasoning section was opened and never closed: the rest of the reply was reasoning.
    pub(crate) reasoning_unclosed: bool,
}

impl ParsedReply {
    /// Whether the reply holds code the model meant to run: blocks that run, a block cut
    /// short, or a block in another programming language. Data shown in a fence (`json`,
    /// `text`, an untagged illustration beside tagged code) is not code.
    pub(crate) fn has_code(&self) -> bool {
        !self.blocks.is_empty()
            || self.unterminated
            || self.skipped.iter().any(|lang| !is_data_language(lang))
    }

    /// The first skipped block in a programming language, if any.
    pub(crate) fn skipped_code(&self) -> Option<&str> {
        self.skipped
            .iter()
            .map(String::as_str)
            .find(|lang| !is_data_language(lang))
    }
}

/// An open fence: its character, its length, its language and its lines so far.
struct OpenFence<'a> {
    mark: char,
    length: usize,
    lang: String,
    body: Vec<&'a str>,
}

/// Splits `reply` into reasoning, code blocks and text.
pub(crate) fn parse_reply(reply: &str) -> ParsedReply {
    let reasoning = split_reasoning(reply);
    let mut parsed = parse_text(&reasoning.text);
    parsed.reasoning = reasoning.sections;
    parsed.reasoning_unclosed = reasoning.unclosed;
    parsed
}

/// The opening and closing tags of a reasoning section, lowercase.
const REASONING_TAGS: [(&str, &str); 3] = [
    ("<think>", "</think>"),
    ("<thinking>", "</thinking>"),
    ("<reasoning>", "</reasoning>"),
];

/// A reply without its reasoning sections.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reasoning {
    /// The reply without them.
    text: String,
    /// The sections, without their tags.
    sections: Vec<String>,
    /// The last section was never closed.
    unclosed: bool,
}

/// The reasoning tag a line starts with (after indentation): its closing tag and the byte
/// length of the indentation plus the tag.
fn opening_tag(line: &str) -> Option<(&'static str, usize)> {
    let indent = line.len() - line.trim_start().len();
    let rest = &line.as_bytes()[indent..];
    REASONING_TAGS.iter().find_map(|(open, close)| {
        (rest.len() >= open.len() && rest[..open.len()].eq_ignore_ascii_case(open.as_bytes()))
            .then_some((*close, indent + open.len()))
    })
}

/// A reasoning section at the very start of `text` (after blank space), or ended by a closing
/// tag with no opening tag before it: the reasoning (without its tags) and the text after it.
/// A section never closed is all reasoning.
pub(crate) fn leading_reasoning(text: &str) -> Option<(String, String)> {
    // Every tag starts with `<`: most answers have none, and are not copied (it runs on
    // every sub-call's answer).
    if !text.contains('<') {
        return None;
    }
    let lower = text.to_ascii_lowercase();
    let start = text.len() - text.trim_start().len();
    if let Some((close, tag_end)) = opening_tag(&text[start..]) {
        let body = start + tag_end;
        return Some(match lower[body..].find(close) {
            Some(at) => (
                text[body..body + at].trim().to_owned(),
                text[body + at + close.len()..].trim_start().to_owned(),
            ),
            None => (text[body..].trim().to_owned(), String::new()),
        });
    }
    REASONING_TAGS
        .iter()
        .filter_map(|(open, close)| {
            let at = lower.find(close)?;
            (!lower[..at].contains(open)).then_some((at, close.len()))
        })
        .min()
        .map(|(at, len)| {
            (
                text[..at].trim().to_owned(),
                text[at + len..].trim_start().to_owned(),
            )
        })
}

/// Takes the reasoning sections out of `reply` (see the module documentation).
fn split_reasoning(reply: &str) -> Reasoning {
    let lower = reply.to_ascii_lowercase();
    let mut out = Reasoning::default();
    let mut from = 0;
    // A closing tag at the start of a line, no opening tag before it: everything up to it was
    // reasoning whose opening tag the server kept.
    let mut offset = 0;
    for line in reply.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if opening_tag(line).is_some() {
            break;
        }
        let indent = line.len() - line.trim_start().len();
        if let Some((_, close)) = REASONING_TAGS
            .iter()
            .find(|(_, close)| lower[start + indent..].starts_with(close))
        {
            out.sections.push(reply[..start + indent].trim().to_owned());
            from = start + indent + close.len();
            break;
        }
    }
    let mut fence: Option<(char, usize)> = None;
    let mut offset = from;
    let mut skip_until = from;
    for line in reply[from..].split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if start < skip_until {
            // Inside a reasoning section: its rest after the closing tag is reply again.
            if offset > skip_until {
                out.text.push_str(&reply[skip_until..offset]);
            }
            continue;
        }
        let trimmed = line.trim();
        if let Some((mark, length)) = fence {
            let (run_mark, run_length) = fence_run(trimmed);
            if run_mark == Some(mark) && run_length >= length && trimmed[run_length..].is_empty() {
                fence = None;
            }
            out.text.push_str(line);
            continue;
        }
        if let (Some(mark), length @ 3..) = fence_run(trimmed) {
            if !(mark == '`' && trimmed[length..].contains('`')) {
                fence = Some((mark, length));
            }
            out.text.push_str(line);
            continue;
        }
        let Some((close, tag_end)) = opening_tag(line) else {
            out.text.push_str(line);
            continue;
        };
        let body_start = start + tag_end;
        match lower[body_start..].find(close) {
            Some(at) => {
                out.sections
                    .push(reply[body_start..body_start + at].trim().to_owned());
                skip_until = body_start + at + close.len();
                if offset > skip_until {
                    out.text.push_str(&reply[skip_until..offset]);
                }
            }
            None => {
                out.sections.push(reply[body_start..].trim().to_owned());
                out.unclosed = true;
                break;
            }
        }
    }
    out
}

/// Splits a reply without reasoning into code blocks and text.
fn parse_text(reply: &str) -> ParsedReply {
    let mut parsed = ParsedReply::default();
    let mut markers: Vec<FinalMarker> = Vec::new();
    let mut fences: Vec<(String, String)> = Vec::new();
    let mut open: Option<OpenFence<'_>> = None;
    // Byte offset of each line's start, so that a marker can take text across lines.
    let mut offset = 0;
    // Lines before this offset belong to a FINAL(...) answer already taken.
    let mut consumed_until = 0;
    for line in reply.split_inclusive('\n') {
        let start = offset;
        offset += line.len();
        if start < consumed_until {
            continue;
        }
        let line = line.strip_suffix('\n').unwrap_or(line);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim();
        if let Some(fence) = &mut open {
            let (mark, length) = fence_run(trimmed);
            if mark == Some(fence.mark)
                && length >= fence.length
                && trimmed[length..].trim().is_empty()
            {
                fences.push((std::mem::take(&mut fence.lang), fence.body.join("\n")));
                open = None;
            } else {
                fence.body.push(line);
            }
            continue;
        }
        if let (Some(mark), length @ 3..) = fence_run(trimmed) {
            let info = &trimmed[length..];
            // A backtick fence's info string has no backticks (CommonMark): "```x```" is
            // inline code, not a fence.
            if mark == '`' && info.contains('`') {
                continue;
            }
            let lang = info
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_ascii_lowercase();
            open = Some(OpenFence {
                mark,
                length,
                lang,
                body: Vec::new(),
            });
            continue;
        }
        let decorated = line.len()
            - line
                .trim_start_matches(|c: char| c.is_whitespace() || "*>#-_+".contains(c))
                .len();
        if let Some((marker, end, balanced)) = final_marker(&reply[start + decorated..]) {
            if markers.is_empty() {
                parsed.final_unbalanced = !balanced;
            }
            if !markers.contains(&marker) {
                markers.push(marker);
            }
            consumed_until = start + decorated + end;
        }
    }
    if markers.len() > 1 {
        parsed.conflicting = markers;
    } else {
        parsed.final_marker = markers.pop();
    }
    parsed.unterminated = open.is_some();
    let tagged = fences.iter().any(|(lang, _)| is_rhai(lang));
    for (lang, code) in fences {
        if is_rhai(&lang) || (!tagged && lang.is_empty()) {
            if !code.trim().is_empty() {
                parsed.blocks.push(code);
            }
        } else {
            parsed.skipped.push(lang);
        }
    }
    parsed
}

/// The fence character a line starts with and how many times it repeats.
fn fence_run(trimmed: &str) -> (Option<char>, usize) {
    let Some(mark) = trimmed.chars().next().filter(|c| matches!(c, '`' | '~')) else {
        return (None, 0);
    };
    let length = trimmed.len() - trimmed.trim_start_matches(mark).len();
    (Some(mark), length)
}

fn is_rhai(lang: &str) -> bool {
    matches!(lang, "repl" | "rhai")
}

/// Fence languages that show data or prose, not code to run.
fn is_data_language(lang: &str) -> bool {
    matches!(
        lang,
        "" | "json"
            | "jsonl"
            | "text"
            | "txt"
            | "plaintext"
            | "plain"
            | "markdown"
            | "md"
            | "csv"
            | "tsv"
            | "yaml"
            | "yml"
            | "toml"
            | "xml"
            | "html"
            | "output"
            | "console"
            | "log"
    )
}

/// A marker at the very start of `text`: the marker, the byte length it spans in `text`, and
/// whether its parenthesis balanced.
fn final_marker(text: &str) -> Option<(FinalMarker, usize, bool)> {
    if let Some(rest) = text.strip_prefix("FINAL_VAR(") {
        // A name (or a short expression) on the marker's line.
        let line = rest.split('\n').next().unwrap_or(rest);
        let (inner, _) = balanced(line).unwrap_or_else(|| {
            let end = line.find(')').unwrap_or(line.len());
            (&line[..end], false)
        });
        let name = unquote(inner.trim());
        let spanned = "FINAL_VAR(".len() + line.len();
        return (!name.is_empty()).then(|| (FinalMarker::Var(name.to_owned()), spanned, true));
    }
    let rest = text.strip_prefix("FINAL(")?;
    let (answer, spanned, balanced) = match balanced(rest) {
        Some((inner, _)) => {
            // The answer ends at its parenthesis; the rest of that line is prose.
            let after = &rest[inner.len()..];
            let line_end = after.find('\n').map_or(after.len(), |i| i + 1);
            (inner, "FINAL(".len() + inner.len() + line_end, true)
        }
        // Never balanced: up to the last `)`, or everything.
        None => (
            rest.rfind(')').map_or(rest, |end| &rest[..end]),
            text.len(),
            false,
        ),
    };
    Some((
        FinalMarker::Value(unquote(answer.trim()).to_owned()),
        spanned,
        balanced,
    ))
}

/// The text before the `)` that closes an already open `(`, if one does.
fn balanced(text: &str) -> Option<(&str, bool)> {
    let mut depth = 1usize;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return Some((&text[..i], true));
                }
            }
            _ => {}
        }
    }
    None
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

    fn value(text: &str) -> Option<FinalMarker> {
        Some(FinalMarker::Value(text.into()))
    }

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
        assert!(python.has_code());
        assert!(!parse_reply("```json\n{}\n```").has_code());
    }

    #[test]
    fn final_markers_outside_fences_only() {
        let parsed =
            parse_reply("```repl\nFINAL(\"in code\")\n```\nFINAL(The answer (really) is 42).");
        assert_eq!(parsed.final_marker, value("The answer (really) is 42"));
        assert_eq!(parsed.blocks, ["FINAL(\"in code\")"]);
        let var = parse_reply("Done.\n**FINAL_VAR(answer)**");
        assert_eq!(var.final_marker, Some(FinalMarker::Var("answer".into())));
        let quoted = parse_reply("FINAL_VAR(\"answer\")");
        assert_eq!(quoted.final_marker, Some(FinalMarker::Var("answer".into())));
        let multi = parse_reply("FINAL(line one\nline two)");
        assert_eq!(multi.final_marker, value("line one\nline two"));
        assert_eq!(
            parse_reply("The FINAL(x) is not at the start").final_marker,
            None
        );
        assert_eq!(
            parse_reply("FINAL(\"quoted\")").final_marker,
            value("quoted")
        );
        assert_eq!(parse_reply("> - FINAL(42)").final_marker, value("42"));
    }

    #[test]
    fn a_final_answer_runs_to_its_balancing_parenthesis_across_lines() {
        // The issue's input: the first line holds a parenthetical.
        let reply = "FINAL(The three duels (in story order):\n1. Ahab and the whale (first)\n\
                     2. The mate and the harpooner\n3. The last one, though it never happened)";
        let parsed = parse_reply(reply);
        assert_eq!(
            parsed.final_marker,
            value(
                "The three duels (in story order):\n1. Ahab and the whale (first)\n\
                 2. The mate and the harpooner\n3. The last one, though it never happened"
            )
        );
        assert!(!parsed.final_unbalanced);
        // Prose after the closing parenthesis is not part of the answer.
        let parsed = parse_reply("FINAL(42) (I counted twice.)\nThanks!");
        assert_eq!(parsed.final_marker, value("42"));
        // Never balanced: the fallback, marked as such.
        let parsed = parse_reply("FINAL(The answer is (a) or");
        assert_eq!(parsed.final_marker, value("The answer is (a"));
        assert!(parsed.final_unbalanced);
        let parsed = parse_reply("FINAL(cut mid-way");
        assert_eq!(parsed.final_marker, value("cut mid-way"));
        assert!(parsed.final_unbalanced);
    }

    #[test]
    fn an_answer_may_hold_fences_without_making_them_code() {
        let reply = "FINAL(Use this:\n```python\nprint(1)\n```\n)";
        let parsed = parse_reply(reply);
        assert_eq!(
            parsed.final_marker,
            value("Use this:\n```python\nprint(1)\n```")
        );
        assert!(!parsed.has_code());
    }

    #[test]
    fn tilde_fences_run() {
        // The issue's input: the code runs, and its FINAL is code, not text.
        let parsed = parse_reply("~~~repl\nlet x = \"the real value\";\nFINAL(x)\n~~~");
        assert_eq!(parsed.blocks, ["let x = \"the real value\";\nFINAL(x)"]);
        assert_eq!(parsed.final_marker, None);
        // A tilde fence is closed only by tildes, at least as many.
        let parsed = parse_reply("~~~~repl\nlet s = `\n```\n~~~\n`;\n~~~~\nFINAL(done)");
        assert_eq!(parsed.blocks, ["let s = `\n```\n~~~\n`;"]);
        assert_eq!(parsed.final_marker, value("done"));
    }

    #[test]
    fn a_marker_in_inline_code_is_not_a_marker() {
        let reply = "`FINAL_VAR(answer)` is what I will call once the count is verified.\n\
                     ```repl\nprint(answer.len());\n```";
        let parsed = parse_reply(reply);
        assert_eq!(parsed.final_marker, None);
        assert_eq!(parsed.blocks, ["print(answer.len());"]);
        assert_eq!(parse_reply("`FINAL(42)`").final_marker, None);
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
        assert_eq!(parsed.final_marker, value("done"));
        // A fence closes only with at least as many backticks as it opened with.
        let parsed = parse_reply("````repl\nprint(1);\n```\n");
        assert!(parsed.unterminated);
        let parsed = parse_reply("```repl\nprint(1);\n`````\nFINAL(x)");
        assert_eq!(parsed.blocks, ["print(1);"]);
        assert_eq!(parsed.final_marker, value("x"));
    }

    #[test]
    fn final_var_takes_the_name_up_to_its_parenthesis() {
        let parsed = parse_reply("FINAL_VAR(answer) (computed above)");
        assert_eq!(parsed.final_marker, Some(FinalMarker::Var("answer".into())));
        let parsed = parse_reply("FINAL_VAR(\"answer\").");
        assert_eq!(parsed.final_marker, Some(FinalMarker::Var("answer".into())));
        let parsed = parse_reply("FINAL_VAR(counts(1)) then");
        assert_eq!(
            parsed.final_marker,
            Some(FinalMarker::Var("counts(1)".into()))
        );
    }

    #[test]
    fn reasoning_holds_no_markers_and_no_code() {
        let reply =
            "<think>\nMaybe FINAL(12)?\n```repl\nprint(\"draft\")\n```\n</think>\nFINAL(4242)";
        let parsed = parse_reply(reply);
        assert_eq!(parsed.final_marker, value("4242"));
        assert!(parsed.blocks.is_empty());
        assert!(!parsed.has_code());
        assert_eq!(
            parsed.reasoning,
            ["Maybe FINAL(12)?\n```repl\nprint(\"draft\")\n```"]
        );
        assert!(!parsed.reasoning_unclosed);
        // Other tag names, any case, the reply on the closing tag's line.
        let parsed = parse_reply("<Thinking>FINAL(1)</Thinking>FINAL(2)");
        assert_eq!(parsed.final_marker, value("2"));
        let parsed = parse_reply(
            "<reasoning>\n```repl\nFINAL(1)\n```\n</reasoning>\n```repl\nprint(2);\n```",
        );
        assert_eq!(parsed.blocks, ["print(2);"]);
        // Never closed: the rest of the reply is reasoning, and the parse says so.
        let parsed = parse_reply("<think>\nFINAL(12)\n```repl\nprint(1);\n```\n");
        assert_eq!(parsed.final_marker, None);
        assert!(parsed.blocks.is_empty());
        assert!(parsed.reasoning_unclosed);
        // A closing tag alone: the server kept the opening one; what came before is reasoning.
        let parsed = parse_reply("So FINAL(12)?\n```repl\nprint(1);\n```\n</think>\n\nFINAL(13)");
        assert_eq!(parsed.final_marker, value("13"));
        assert!(parsed.blocks.is_empty());
        // Inside code, a tag is code.
        let parsed = parse_reply("```repl\nlet t = `\n<think>\n`;\nprint(t);\n```");
        assert_eq!(parsed.blocks, ["let t = `\n<think>\n`;\nprint(t);"]);
        assert!(parsed.reasoning.is_empty());
    }

    #[test]
    fn different_markers_are_ambiguous_and_repeats_are_not() {
        let parsed = parse_reply("FINAL(12)\nOn second thought:\nFINAL(4242)");
        assert_eq!(parsed.final_marker, None);
        assert_eq!(
            parsed.conflicting,
            [value("12").unwrap(), value("4242").unwrap()]
        );
        let parsed = parse_reply("FINAL(12)\nAgain: \nFINAL(12)");
        assert_eq!(parsed.final_marker, value("12"));
        assert!(parsed.conflicting.is_empty());
        let parsed = parse_reply("FINAL_VAR(answer)\nFINAL(12)");
        assert_eq!(parsed.final_marker, None);
        assert_eq!(parsed.conflicting.len(), 2);
    }

    #[test]
    fn unterminated_and_empty() {
        let parsed = parse_reply("```repl\nprint(1);\n");
        assert!(parsed.unterminated);
        assert!(parsed.blocks.is_empty());
        assert!(parsed.has_code());
        assert_eq!(parse_reply(""), ParsedReply::default());
        let inside = parse_reply("```repl\nlet x = 1;\nFINAL(x)\n");
        assert_eq!(
            inside.final_marker, None,
            "a marker inside an open fence is code"
        );
    }
}
