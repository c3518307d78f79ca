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
    let mut cause_pos = inner.position();
    // Rhai reports a data race without a position: find the call in the code.
    let race = match inner {
        EvalAltResult::ErrorDataRace(what, _) => Some(data_race_site(code, what)),
        _ => None,
    };
    if let Some(site) = &race {
        if cause_pos.is_none() {
            cause_pos = site.position;
        }
    }
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
    let shown = if defined_here || race.is_some() {
        cause_pos
    } else {
        outer_pos
    };
    out.push_str(&code_excerpt(code, shown));
    let line = shown
        .line()
        .and_then(|l| code.lines().nth(l.saturating_sub(1)))
        .unwrap_or("");
    let mut hints = eval_hints(inner, !chain.is_empty(), code, line);
    if let Some(site) = race {
        hints.insert(0, site.hint());
    }
    push_hints(&mut out, &hints);
    out
}

/// Where a data race happened: a closure that uses the value its method is called on.
struct RaceSite {
    function: String,
    receiver: Option<String>,
    position: Position,
}

impl RaceSite {
    fn hint(&self) -> String {
        let f = &self.function;
        match &self.receiver {
            Some(r) => format!(
                "the closure passed to {f} uses `{r}`, the value {f} is called on, which is \
                 busy during the call. Compute what the closure needs first (e.g. \
                 `let n = {r}.len();` or `let ks = {r}.keys();`, then call {f} on that), or \
                 write a for loop."
            ),
            None => format!(
                "a closure passed to {f} uses the value {f} is called on (e.g. \
                 `xs.{f}(|x| x < xs.len())`), which is busy during the call. Compute what the \
                 closure needs first (`let n = xs.len();`), or write a for loop."
            ),
        }
    }
}

/// Finds the call behind `Data race detected on argument #N of function 'NAME'`: the first
/// `x.NAME(|..| ...)` (or `x.m().NAME(...)`, `NAME(x, |..| ...)`) whose closure mentions `x`,
/// else the first call of NAME.
fn data_race_site(code: &str, what: &str) -> RaceSite {
    let function = what
        .split("function '")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .filter(|name| !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_'))
        .unwrap_or("filter")
        .to_owned();
    let f = regex::escape(&function);
    let method = regex::Regex::new(&format!(
        r"(\w+)(?:\s*\.\s*\w+\s*\([^()]*\))*\s*\.\s*{f}\s*\(\s*\|[^|]*\|(.*)"
    ));
    let call = regex::Regex::new(&format!(r"\b{f}\s*\(\s*(\w+)\s*,\s*\|[^|]*\|(.*)"));
    let mut first_call = None;
    for (i, line) in code.lines().enumerate() {
        for pattern in [&method, &call].into_iter().flatten() {
            for caps in pattern.captures_iter(line) {
                let (Some(receiver), Some(body)) = (caps.get(1), caps.get(2)) else {
                    continue;
                };
                let at = position(i, line, receiver.start());
                if contains_word(body.as_str(), receiver.as_str()) {
                    return RaceSite {
                        function,
                        receiver: Some(receiver.as_str().to_owned()),
                        position: at,
                    };
                }
                first_call.get_or_insert(at);
            }
        }
    }
    RaceSite {
        function,
        receiver: None,
        position: first_call.unwrap_or(Position::NONE),
    }
}

/// The position of byte `at` of `line` (line `index` from 0), if it fits.
fn position(index: usize, line: &str, at: usize) -> Position {
    let column = line[..at].chars().count() + 1;
    match (u16::try_from(index + 1), u16::try_from(column)) {
        (Ok(line), Ok(column)) => Position::new(line, column),
        _ => Position::NONE,
    }
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
    out.push_str(
        "\nNothing in this block ran: a block that does not parse runs none of its lines. Fix \
         it and send the whole block again, not only the failing line.",
    );
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
        EvalAltResult::ErrorFunctionNotFound(signature, _)
            if signature.contains("different types cannot be sorted") =>
        {
            hints.push(
                "the array mixes types (ints and floats, or numbers and text), which sort() \
                 cannot order: make them one type first (`xs = xs.map(|x| float(x));`) or sort \
                 by a key: sort_by(xs, |x| float(x)) (sorted_by for a sorted copy)."
                    .to_owned(),
            );
        }
        EvalAltResult::ErrorFunctionNotFound(signature, _) => {
            let name = function_name(signature);
            if takes_unit(signature) {
                hints.push(unit_operand_hint(name));
            }
            if let Some(hint) = function_hint(name) {
                hints.push(hint);
            }
        }
        EvalAltResult::ErrorMismatchDataType(..) | EvalAltResult::ErrorIndexingType(..)
            if err.to_string().contains("(expecting string)") && line.contains('[') =>
        {
            hints.push(
                "map keys are strings: write m[str(k)] (or m[`${k}`]) to use a number as a \
                 key, and read it back the same way."
                    .to_owned(),
            );
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
        EvalAltResult::ErrorPropertyNotFound(name, _) => {
            // `m[k] = m[k] + 1` reads a key before it is set: the counting form.
            if line.contains('[') && line.contains('=') && line.contains('+') {
                hints.push(unit_operand_hint("+"));
            }
            hints.push(format!(
                "the map has no key `{name}`. Use m.get(\"{name}\") (gives () when missing) or \
                 check with `\"{name}\" in m`; m.keys() lists the keys."
            ));
        }
        EvalAltResult::ErrorMismatchDataType(..) | EvalAltResult::ErrorIndexingType(..)
            if err.to_string().contains("Range") && line.contains('[') =>
        {
            hints.push(SLICE_HINT.to_owned());
        }
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

/// Whether one of the argument types in `name (type, type)` is `()`.
fn takes_unit(signature: &str) -> bool {
    let name = function_name(signature);
    signature[name.len()..]
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .is_some_and(|args| args.split(", ").any(|a| a.trim() == "()"))
}

fn unit_operand_hint(name: &str) -> String {
    let operator = !name.chars().any(|c| c.is_alphanumeric());
    let fix = if operator {
        " To count or sum into a map, start a new key from 0: \
         `m[k] = (m.get(k) ?? 0) + 1;` (`??` gives the right side when the left is ())."
    } else {
        ""
    };
    format!(
        "a value here is () (nothing): a map key that is not set yet (m[k] and m.get(k) give \
         () until then), the result of an in-place method such as sort() or push(), or a \
         block ending in `;`.{fix}"
    )
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
            "m.get(key) takes one string key (map keys are strings: m.get(str(n))) and gives () \
             when the key is missing; for a default write `m.get(key) ?? default`."
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
        "sort" | "sorted" | "reverse" | "reversed" | "sort_by" | "sorted_by" => {
            "arr.sort() sorts in place and returns (); sorted(arr) returns a sorted copy; \
             sort_by(arr, |x| x.price) sorts in place by a key, sorted_by(arr, |x| x.price) \
             returns a sorted copy, and a third argument `true` sorts descending."
        }
        "FINAL" | "FINAL_VAR" => {
            "FINAL(value) takes one value; FINAL_VAR(\"name\") takes one variable name."
        }
        "llm_query" => {
            "llm_query(prompt) takes one prompt string; for an array of prompts use \
             llm_batch(prompts)."
        }
        "llm_batch" | "llm_query_batched" => {
            "llm_batch(prompts) takes an array of prompt strings (and optionally the number to \
             run at once)."
        }
        "keys" | "values" => "keys() and values() are methods of maps: m.keys().",
        "round" => {
            "round(x) rounds a float, round(x, 2) to two decimals; for text with a fixed \
             number of decimals use fmt(x, 2) (\"23.60\"). Convert text first with float(s)."
        }
        "fmt" => "fmt(number, digits) formats an int or float: fmt(7, 2) is \"7.00\".",
        "abs" | "floor" | "ceiling" | "sqrt" => {
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

/// How to take a part of an array or a string (Python's `xs[:3]`, `xs[0..3]` on arrays).
const SLICE_HINT: &str = "arrays have no slices: take a part with xs.extract(0, 3) (start, \
     count) or xs.extract(0..3), the last items with xs.extract(xs.len() - 3); strings with \
     s.sub_string(0, 3) or s[0..3].";

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
    if contains_word(trimmed, "except") || trimmed.starts_with("try:") {
        hint("errors are caught with try { ... } catch (err) { ... } (not except).");
    }
    if trimmed.contains("[:") || trimmed.contains(":]") {
        hint(SLICE_HINT);
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
