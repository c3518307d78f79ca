//! Errors as the root model sees them: where, the offending line, and a hint for the
//! Python habit behind it.

use rhai::{EvalAltResult, ParseError, Position};

use crate::SandboxLimits;

/// Why the sandbox stopped a block (carried by `on_progress` termination).
pub(crate) const STOP_TIMEOUT: &str = "rlm:block-timeout";
/// The run was cancelled or its time ran out.
pub(crate) const STOP_CANCELLED: &str = "rlm:cancelled";
/// The process's memory grew past the budget while the block ran.
pub(crate) const STOP_MEMORY: &str = "rlm:memory";
/// `FINAL` / `FINAL_VAR` ended the block.
pub(crate) const STOP_FINAL: &str = "rlm:final";

/// One error, formatted for the model.
pub(crate) fn format_eval_error(err: &EvalAltResult, code: &str, limits: &SandboxLimits) -> String {
    // Walk from the outermost error (in this block) to the innermost one (the cause).
    let mut chain: Vec<(&str, Position)> = Vec::new();
    let mut inner = err;
    while let EvalAltResult::ErrorInFunctionCall(name, _, cause, pos) = inner {
        chain.push((name.as_str(), *pos));
        inner = cause;
    }
    let message = describe(inner, limits);
    let mut out = String::new();
    let cause_pos = inner.position();
    let outer_pos = err.position();
    match location(cause_pos) {
        Some(at) => out.push_str(&format!("Error at {at}: {message}")),
        None => out.push_str(&format!("Error: {message}")),
    }
    for (name, pos) in &chain {
        let name = if name.starts_with("anon$") {
            "a closure".to_owned()
        } else {
            format!("function '{name}'")
        };
        match location(*pos) {
            Some(at) => out.push_str(&format!("\n  in {name}, called at {at}")),
            None => out.push_str(&format!("\n  in {name}")),
        }
    }
    // The offending line: the cause's when it is in this block's own code, else the call site.
    let defined_here = chain
        .last()
        .is_none_or(|(name, _)| name.starts_with("anon$") || defines_fn(code, name));
    let shown = if defined_here { cause_pos } else { outer_pos };
    out.push_str(&code_excerpt(code, shown));
    let line = shown
        .line()
        .and_then(|l| code.lines().nth(l.saturating_sub(1)))
        .unwrap_or("");
    let hints = eval_hints(inner, !chain.is_empty(), code, line);
    push_hints(&mut out, &hints);
    out
}

/// A parse error, formatted for the model.
pub(crate) fn format_parse_error(err: &ParseError, code: &str) -> String {
    let message = err.0.to_string();
    let pos = err.1;
    let mut out = match location(pos) {
        Some(at) => format!("Syntax error at {at}: {message}"),
        None => format!("Syntax error: {message}"),
    };
    out.push_str(&code_excerpt(code, pos));
    let line = pos
        .line()
        .and_then(|l| code.lines().nth(l.saturating_sub(1)))
        .unwrap_or("");
    let mut hints = line_hints(line);
    if hints.is_empty() {
        // The parser often notices a problem a line late: look at the previous line too.
        if let Some(previous) = pos
            .line()
            .and_then(|l| l.checked_sub(2))
            .and_then(|l| code.lines().nth(l))
        {
            hints = line_hints(previous);
        }
    }
    push_hints(&mut out, &hints);
    out
}

fn push_hints(out: &mut String, hints: &[String]) {
    for hint in hints.iter().take(3) {
        out.push_str("\nHint: ");
        out.push_str(hint);
    }
}

fn location(pos: Position) -> Option<String> {
    let line = pos.line()?;
    Some(match pos.position() {
        Some(column) => format!("line {line}, column {column}"),
        None => format!("line {line}"),
    })
}

fn defines_fn(code: &str, name: &str) -> bool {
    code.match_indices("fn ").any(|(i, _)| {
        code[i + 3..].trim_start().starts_with(name)
            && code[i + 3..].trim_start()[name.len()..]
                .trim_start()
                .starts_with('(')
    })
}

/// The line at `pos` with a caret under the column.
fn code_excerpt(code: &str, pos: Position) -> String {
    let Some(line_no) = pos.line() else {
        return String::new();
    };
    let Some(line) = code.lines().nth(line_no.saturating_sub(1)) else {
        return String::new();
    };
    let shown: String = line.chars().take(200).collect();
    let gutter = line_no.to_string();
    let mut out = format!("\n  {gutter} | {shown}");
    if let Some(column) = pos.position() {
        if column <= 200 {
            out.push_str(&format!(
                "\n  {} | {}^",
                " ".repeat(gutter.len()),
                " ".repeat(column.saturating_sub(1))
            ));
        }
    }
    out
}

/// The message of one (innermost) error, without Rhai's position suffix.
fn describe(err: &EvalAltResult, limits: &SandboxLimits) -> String {
    match err {
        EvalAltResult::ErrorTerminated(token, _) => {
            let token = token.to_string();
            if token == STOP_TIMEOUT {
                format!(
                    "stopped: the block ran for more than {} s of script time (sandbox limit). \
                     Is there an endless loop? Variables set before this point are kept.",
                    limits.block_timeout.as_secs_f64()
                )
            } else if token == STOP_CANCELLED {
                "stopped: the run was cancelled or ran out of time".to_owned()
            } else if token == STOP_MEMORY {
                format!(
                    "stopped: the block's memory grew by more than the memory budget of {} \
                     bytes (sandbox limit, --max-memory). Keep less: work chunk by chunk, \
                     keep counts or short summaries, not copies of the context.",
                    limits.max_memory
                )
            } else {
                "stopped".to_owned()
            }
        }
        EvalAltResult::ErrorTooManyOperations(_) => format!(
            "stopped: more than {} operations in one block (sandbox limit). Is there an \
             endless loop? For heavy text work use the native helpers (chunk, lines, grep, \
             regex_*), which cost one operation each.",
            limits.max_operations
        ),
        EvalAltResult::ErrorStackOverflow(_) => format!(
            "stopped: function calls nested more than {} deep (sandbox limit). Endless \
             recursion? Use a loop.",
            limits.max_call_depth
        ),
        EvalAltResult::ErrorDataTooLarge(what, _) => format!(
            "stopped: {what} too large (sandbox limits: strings {} bytes, arrays {} items, \
             maps {} entries).",
            limits.max_string_size, limits.max_array_size, limits.max_map_size
        ),
        EvalAltResult::ErrorRuntime(value, _) => {
            let text = value.to_string();
            if text.is_empty() {
                "runtime error".to_owned()
            } else {
                text
            }
        }
        other => strip_position(&other.to_string()),
    }
}

/// Rhai appends ` (line L, position C)` to its messages; we state the position ourselves.
fn strip_position(message: &str) -> String {
    match message.rfind(" (line ") {
        Some(i) if message.ends_with(')') => message[..i].to_owned(),
        _ => message.to_owned(),
    }
}

/// The name of a missing function (before the argument types).
fn function_name(signature: &str) -> &str {
    signature
        .split([' ', '('])
        .next()
        .unwrap_or(signature)
        .trim()
}

fn eval_hints(err: &EvalAltResult, in_function: bool, code: &str, line: &str) -> Vec<String> {
    let mut hints = Vec::new();
    match err {
        EvalAltResult::ErrorFunctionNotFound(signature, _) => {
            if let Some(hint) = function_hint(function_name(signature)) {
                hints.push(hint);
            }
        }
        EvalAltResult::ErrorVariableNotFound(name, _) => {
            if let Some(hint) = variable_hint(name) {
                hints.push(hint.to_owned());
            } else if in_function {
                hints.push(format!(
                    "a function cannot see variables defined outside it (not even `context`): \
                     pass `{name}` as a parameter, e.g. `fn f(text) {{ ... }}` called as \
                     `f({name})`, or use a closure `|x| ...`, which can."
                ));
            } else if assigned_without_let(code, name) {
                hints.push(format!(
                    "declare a variable before its first use: `let {name} = ...;` (then \
                     `{name} = ...;` to change it)."
                ));
            } else {
                hints.push(
                    "variables must be declared with `let` before use; ones declared inside \
                     `{ }` end at the closing brace. SHOW_VARS() lists what is defined."
                        .to_owned(),
                );
            }
        }
        EvalAltResult::ErrorPropertyNotFound(name, _) => hints.push(format!(
            "the map has no key `{name}`. Use m.get(\"{name}\") (gives () when missing) or \
             check with `\"{name}\" in m`; m.keys() lists the keys."
        )),
        EvalAltResult::ErrorNonPureMethodCallOnConstant(name, _)
        | EvalAltResult::ErrorAssignmentToConstant(name, _) => hints.push(format!(
            "`context` (and any `const`) is read-only: `{name}` would change it. Work on a \
             copy or use a function that returns a new value, e.g. strip(context), \
             context.to_upper(), context.sub_string(0, 1000)."
        )),
        EvalAltResult::ErrorMismatchDataType(..) | EvalAltResult::ErrorArithmetic(..)
            if line.contains('+') && line.contains('"') =>
        {
            hints.push(
                "to build text from values use interpolation `value: ${x}` or \
                     \"value: \" + x.to_string()."
                    .to_owned(),
            );
        }
        EvalAltResult::ErrorFor(_) => hints.push(
            "for loops take arrays, ranges (0..n) or strings: `for x in arr { }`, \
             `for (x, i) in arr { }`, `for k in m.keys() { }`."
                .to_owned(),
        ),
        _ => {}
    }
    if hints.is_empty() {
        hints = line_hints(line);
    }
    hints
}

/// `name = ...` (not `==`, not `let name`) appears in the code.
fn assigned_without_let(code: &str, name: &str) -> bool {
    code.lines().any(|line| {
        let line = line.trim_start();
        line.strip_prefix(name)
            .map(str::trim_start)
            .is_some_and(|rest| rest.starts_with('=') && !rest.starts_with("=="))
    })
}

fn variable_hint(name: &str) -> Option<&'static str> {
    Some(match name {
        "True" => "Rhai's booleans are lowercase: `true`.",
        "False" => "Rhai's booleans are lowercase: `false`.",
        "None" | "null" | "nil" | "undefined" => "Rhai's 'nothing' value is `()`.",
        "json" => "use parse_json(text) and to_json(value).",
        "re" => {
            "use regex_find_all(text, pattern), regex_count, regex_replace, regex_test, \
                 regex_split or grep(text, pattern)."
        }
        "math" => {
            "math functions are built in: abs(x), sqrt(x), floor(x), x.round(), \
                   max(a, b)."
        }
        "self" | "this" => "there are no classes here: use maps #{key: value} and functions.",
        "os" | "sys" | "open" | "requests" | "subprocess" | "pathlib" => {
            "there is no file, environment or network access: everything is in `context`."
        }
        "and" | "or" | "not" => "Rhai's logic operators are `&&`, `||` and `!`.",
        _ => return None,
    })
}

fn function_hint(name: &str) -> Option<String> {
    let hint = match name {
        "upper" | "lower" | "strip" | "lstrip" | "rstrip" | "startswith" | "endswith" => {
            "these take one string: upper(s) or s.upper(); Rhai also has s.to_upper(), \
             s.to_lower(), s.starts_with(x), s.ends_with(x)."
        }
        "format" => "use string interpolation with backticks: `total: ${n} items`.",
        "append" | "extend" => {
            "add one item with arr.push(x); add an array with arr.append(other) or arr + other."
        }
        "items" => "for a map use `for k in m.keys() { let v = m[k]; }` (or m.values()).",
        "enumerate" => "iterate with the index as the second variable: `for (x, i) in arr { }`.",
        "zip" => "iterate by index: `for (x, i) in a { let y = b[i]; }`.",
        "print" => "print takes one value: print(`a=${a}, b=${b}`).",
        "range" => "use ranges: `0..n` (n excluded), `0..=n` (included), or range(n), range(a, b).",
        "dict" => "a map is written #{key: value}; an empty one #{}.",
        "list" | "set" | "tuple" => "an array is written [a, b, c]; an empty one [].",
        "type" | "isinstance" => {
            "use type_of(x), which gives \"string\", \"i64\", \"array\", \"map\", ..."
        }
        "get" => {
            "m.get(key) takes one argument and gives () when the key is missing; for a \
                  default use `if key in m { m[key] } else { default }`."
        }
        "open" | "read" | "input" | "exec" | "eval" | "system" | "getenv" | "env" => {
            "there is no file, environment or network access (and no eval): everything is in \
             `context`."
        }
        "split" => {
            "s.split(\",\") splits on a separator, s.split() on whitespace, lines(s) into lines."
        }
        "join" => "join(array, separator) or separator.join(array); items need not be strings.",
        "len" => "len(x) / x.len() work on strings, arrays and maps.",
        "sort" | "sorted" | "reverse" | "reversed" => {
            "arr.sort() sorts in place and returns (); sorted(arr) returns a sorted copy; \
             arr.sort(|a, b| b - a) sorts with a comparer (numbers) and \
             arr.sort(|a, b| if a < b { -1 } else if a > b { 1 } else { 0 }) for text."
        }
        "FINAL" | "FINAL_VAR" => {
            "FINAL(value) takes one value; FINAL_VAR(\"name\") takes one variable name."
        }
        "llm_query" => "llm_query(prompt) takes one prompt string.",
        "llm_batch" | "llm_query_batched" => {
            "llm_batch(prompts) takes an array of prompt strings (and optionally the number to \
             run at once)."
        }
        "keys" | "values" => "keys() and values() are methods of maps: m.keys().",
        "abs" | "round" | "floor" | "ceiling" | "sqrt" => {
            "math functions work on numbers: convert text first with int(s) or float(s)."
        }
        "contains" => "s.contains(x) for text, arr.contains(x) for arrays, `key in m` for maps.",
        "index" => "s.index_of(x) (or find(s, x)) gives the position, -1 when absent.",
        "isdigit" | "isalpha" | "isnumeric" => {
            "test text with regex_test(s, \"^[0-9]+$\"); a character c with c.is_digit()."
        }
        _ => return None,
    };
    Some(hint.to_owned())
}

/// Hints from the text of the offending line: Python syntax that Rhai does not have.
fn line_hints(line: &str) -> Vec<String> {
    let trimmed = line.trim();
    let mut hints = Vec::new();
    let mut hint = |h: &str| hints.push(h.to_owned());
    if contains_word(trimmed, "elif") {
        hint("Rhai writes `else if`, with braces: if a { } else if b { } else { }");
    }
    if trimmed.starts_with("def ") {
        hint("functions are declared `fn name(a, b) { ... }`; the last expression is the result.");
    }
    if trimmed.contains("f\"") || trimmed.contains("f'") {
        hint(
            "f-strings are written with backticks: `total: ${n}` (backtick strings are raw: \
              no \\n escapes).",
        );
    }
    if trimmed.starts_with('[') && contains_word(trimmed, "for")
        || trimmed.contains("= [") && contains_word(trimmed, "for")
    {
        hint(
            "there are no list comprehensions: use arr.map(|x| ...), arr.filter(|x| ...) or \
              a for loop with push.",
        );
    }
    if trimmed.starts_with("for ")
        && trimmed
            .split(" in ")
            .next()
            .is_some_and(|vars| vars.contains(',') && !vars.contains('('))
    {
        hint("loop over value and index with `for (x, i) in arr { }` (value first).");
    }
    if trimmed.ends_with(':')
        && [
            "if ", "for ", "while ", "else", "def ", "try", "except", "with ",
        ]
        .iter()
        .any(|k| trimmed.starts_with(k))
    {
        hint("blocks use braces, not colons: if x > 1 { ... } else { ... }");
    }
    if trimmed.starts_with('#') && !trimmed.starts_with("#{") {
        hint("comments start with // (or /* ... */).");
    }
    if contains_word(trimmed, "and")
        || contains_word(trimmed, "or")
        || contains_word(trimmed, "not")
    {
        hint("Rhai's logic operators are `&&`, `||` and `!`.");
    }
    if contains_word(trimmed, "lambda") {
        hint("closures are written |x| x * 2 (or |x| { ... }).");
    }
    if contains_word(trimmed, "None")
        || contains_word(trimmed, "True")
        || contains_word(trimmed, "False")
    {
        hint("Rhai writes `()`, `true`, `false`.");
    }
    if trimmed.starts_with("import ") || trimmed.starts_with("from ") {
        hint(
            "there are no modules to import: the helpers are built in and the data is in \
              `context`.",
        );
    }
    if trimmed.starts_with("except") || trimmed.starts_with("try:") {
        hint("errors are caught with try { ... } catch (err) { ... }.");
    }
    if has_single_quoted_string(trimmed) {
        hint("single quotes make one character: write strings in \"double quotes\".");
    }
    if let Some(i) = trimmed.find("//") {
        if i > 0
            && !trimmed[..i].contains('"')
            && !trimmed[..i].contains('`')
            && trimmed[..i]
                .trim_end()
                .ends_with(|c: char| c.is_alphanumeric() || c == ')')
        {
            hint("`//` starts a comment in Rhai; integer division is `/` between integers.");
        }
    }
    hints
}

fn contains_word(text: &str, word: &str) -> bool {
    text.match_indices(word).any(|(i, _)| {
        let before = text[..i].chars().next_back();
        let after = text[i + word.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        boundary(before) && boundary(after) && !inside_string(text, i)
    })
}

/// Whether byte `at` of `line` is inside a "..." or `...` string.
fn inside_string(line: &str, at: usize) -> bool {
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        if i >= at {
            break;
        }
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && q == '"' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None if c == '"' || c == '`' => quote = Some(c),
            None => {}
        }
    }
    quote.is_some()
}

/// `'ab'`-style strings (Rhai's single quotes hold exactly one character).
fn has_single_quoted_string(line: &str) -> bool {
    let mut rest = line;
    while let Some(start) = rest.find('\'') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('\'') else {
            return false;
        };
        let inner = &after[..end];
        if !inside_string(line, line.len() - rest.len() + start)
            && inner.chars().count() > 1
            && !inner.starts_with('\\')
        {
            return true;
        }
        rest = &after[end + 1..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_words_outside_strings() {
        assert!(contains_word("if a and b {", "and"));
        assert!(!contains_word("let s = \"this and that\";", "and"));
        assert!(!contains_word("let band = 1;", "and"));
        assert!(has_single_quoted_string("let s = 'hello';"));
        assert!(!has_single_quoted_string("let c = 'h';"));
        assert!(assigned_without_let("x = 1;\nprint(x);", "x"));
        assert!(!assigned_without_let("if x == 1 {}", "x"));
        assert_eq!(
            function_name("upper (&str | ImmutableString | String)"),
            "upper"
        );
        assert!(defines_fn("fn f(a) { a }", "f"));
        assert!(!defines_fn("fn fa(a) { a }", "f"));
    }

    #[test]
    fn strips_rhai_positions() {
        assert_eq!(
            strip_position("Function not found: x (line 1, position 2)"),
            "Function not found: x"
        );
    }
}
