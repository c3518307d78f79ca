//! Warnings for code that runs but silently does the wrong thing (see rhai-pitfalls).

use std::sync::OnceLock;

use regex::bytes::{Regex, RegexBuilder};

/// Warnings about `code`, each naming its line.
pub(crate) fn lint(code: &str) -> Vec<String> {
    let mut warnings = Vec::new();
    for line in raw_escape_lines(code) {
        warnings.push(format!(
            "warning (line {line}): backtick strings are raw, so `\\n` there is a backslash and \
             an n, not a line break. Use \"double quotes\" for escapes, or a real line break \
             inside the backticks."
        ));
    }
    for (line, method) in unit_assignments(code) {
        warnings.push(format!(
            "warning (line {line}): `{method}()` changes the value in place and returns (), so \
             the variable assigned here holds (). Call it as a statement (`x.{method}();`) and \
             use `x`{}.",
            match method {
                "sort" => ", or use sorted(x), which returns a sorted copy",
                "reverse" => ", or use reversed(x), which returns a reversed copy",
                _ => "",
            }
        ));
    }
    for line in for_each_with_argument(code) {
        warnings.push(format!(
            "warning (line {line}): for_each passes the item as `this` and the INDEX as the \
             closure's argument, so `|x|` gets 0, 1, 2, ...: use a loop instead: \
             `for x in xs {{ total += x; }}`."
        ));
    }
    for line in find_all_with_groups(code) {
        warnings.push(format!(
            "warning (line {line}): regex_find_all gives the WHOLE matches, not the parts in \
             ( ): for the groups use regex_captures(text, pattern), an array of [group1, \
             group2, ...] per match (or write (?:...) for a group that only groups)."
        ));
    }
    for line in floor_divisions(code) {
        warnings.push(format!(
            "warning (line {line}): `//` starts a comment in Rhai, so everything after it on \
             this line is ignored (`x = a // b` sets x to a). Integer division is `/` between \
             two integers; for a float result write float(a) / b."
        ));
    }
    for (line, a, b) in integer_divisions(code) {
        warnings.push(format!(
            "warning (line {line}): {a} / {b} divides integers, which gives {} (the fraction is \
             dropped). Write {a}.0 / {b} or float(x) / y for {}.",
            a / b,
            a as f64 / b as f64
        ));
    }
    warnings
}

/// Starts compiling the lint's patterns on a blocking thread, once per process, so that a
/// run's first code block does not wait for them: a run calls it before its first root call,
/// whose round trip hides the compilation (the patterns took ~17M instructions, a few
/// milliseconds between the root's reply and the first sub-call). Needs a tokio runtime;
/// without one the patterns are compiled on first use, as before.
pub(crate) fn warm_up() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        STARTED.call_once(|| {
            drop(handle.spawn_blocking(|| lint("")));
        });
    }
}

/// A match as text (whole characters: see [`compiled`]).
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).unwrap_or_default()
}

/// The regex cached in `cell`, compiled from `pattern` on first use (`None` if it does not
/// compile: the lint is then skipped, never a panic).
///
/// The patterns look at Rhai code, whose names, numbers and operators are ASCII: they are
/// compiled without Unicode classes (matching bytes), which makes them several times cheaper
/// to build, and what they capture always starts and ends at an ASCII byte.
fn compiled(cell: &'static OnceLock<Option<Regex>>, pattern: &str) -> Option<&'static Regex> {
    cell.get_or_init(|| RegexBuilder::new(pattern).unicode(false).build().ok())
        .as_ref()
}

/// Lines (from 1) where `//` follows an operand and is followed by one (`a // b`, Python's
/// floor division), outside strings: in Rhai the rest of the line is a comment.
fn floor_divisions(code: &str) -> Vec<usize> {
    static OPERAND: OnceLock<Option<Regex>> = OnceLock::new();
    let Some(operand) = compiled(
        &OPERAND,
        r"^\s*(?:[0-9]+(?:\.[0-9]+)?|[A-Za-z_][0-9A-Za-z_.]*(?:\([^()]*\)|\[[^\[\]]*\])?)\s*\)*\s*;?\s*$",
    ) else {
        return Vec::new();
    };
    code.lines()
        .enumerate()
        .filter(|(_, line)| {
            let Some(at) = comment_start(line) else {
                return false;
            };
            let before = line[..at].trim_end();
            // An operand right before, inside an assignment or a call: `x = a // b`,
            // `print(a // b)`; and only an operand after.
            before.ends_with(|c: char| c.is_alphanumeric() || c == '_' || c == ')' || c == ']')
                && (before.contains('=') || before.contains('('))
                && operand.is_match(&line.as_bytes()[at + 2..])
        })
        .map(|(i, _)| i + 1)
        .collect()
}

/// The byte offset of the first `//` outside a string on `line`.
fn comment_start(line: &str) -> Option<usize> {
    let mut quote = None;
    let mut escaped = false;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
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
            None => {
                if c == '"' || c == '`' {
                    quote = Some(c);
                } else if c == '/' && previous == '/' {
                    return Some(i - 1);
                }
            }
        }
        previous = c;
    }
    None
}

/// Whether `code` holds a `/` or `/=` operator: outside strings, characters and comments
/// (an interpolation inside backticks counts as code, so a `/` anywhere in backticks counts).
pub(crate) fn has_division(code: &str) -> bool {
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => {
                let quote = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != quote && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'/' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// `7 / 2`-style divisions of integer literals that do not come out even.
fn integer_divisions(code: &str) -> Vec<(usize, i64, i64)> {
    static PATTERN: OnceLock<Option<Regex>> = OnceLock::new();
    let Some(pattern) = compiled(
        &PATTERN,
        r"(?:^|[^0-9A-Za-z_.])([0-9]+)\s*/\s*([0-9]+)(?:[^0-9A-Za-z_.]|$)",
    ) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let code_part = line.split("//").next().unwrap_or(line);
        for caps in pattern.captures_iter(code_part.as_bytes()) {
            let number = |g: usize| {
                caps.get(g)
                    .and_then(|m| text(m.as_bytes()).parse::<i64>().ok())
            };
            if let (Some(a), Some(b)) = (number(1), number(2)) {
                if b != 0 && a % b != 0 {
                    found.push((i + 1, a, b));
                }
            }
        }
    }
    found
}

/// Lines (from 1) that call `for_each` with a closure taking an argument.
fn for_each_with_argument(code: &str) -> Vec<usize> {
    static PATTERN: OnceLock<Option<Regex>> = OnceLock::new();
    let Some(pattern) = compiled(
        &PATTERN,
        r"\bfor_each\s*\(\s*(?:[0-9A-Za-z_.\[\]]+\s*,\s*)?\|\s*[0-9A-Za-z_]",
    ) else {
        return Vec::new();
    };
    code.lines()
        .enumerate()
        .filter(|(_, line)| pattern.is_match(line.split("//").next().unwrap_or(line).as_bytes()))
        .map(|(i, _)| i + 1)
        .collect()
}

/// Lines (from 1) that call `regex_find_all` with a pattern literal holding a capturing group.
fn find_all_with_groups(code: &str) -> Vec<usize> {
    static PATTERN: OnceLock<Option<Regex>> = OnceLock::new();
    let Some(pattern) = compiled(&PATTERN, r"\bregex_find_all\s*\(([^\n]*)") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let grouped = pattern.captures_iter(line.as_bytes()).any(|caps| {
            caps.get(1).is_some_and(|rest| {
                string_literals(call_arguments(text(rest.as_bytes())))
                    .into_iter()
                    .any(|literal| has_capturing_group(&literal))
            })
        });
        if grouped {
            found.push(i + 1);
        }
    }
    found
}

/// The arguments of a call, from just after its `(` to its closing `)` (or the line's end).
fn call_arguments(rest: &str) -> &str {
    let mut depth = 0usize;
    let mut quote = None;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
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
            None => match c {
                '"' | '`' => quote = Some(c),
                '(' | '[' | '{' => depth += 1,
                ')' | ']' | '}' if depth == 0 => return &rest[..i],
                ')' | ']' | '}' => depth -= 1,
                _ => {}
            },
        }
    }
    rest
}

/// The values of the "..." and `...` literals on a line (escapes in "..." resolved as Rhai
/// resolves them, so `"\\d"` is `\d`).
fn string_literals(line: &str) -> Vec<String> {
    let mut literals = Vec::new();
    let mut start = None;
    let mut quote = '"';
    let mut escaped = false;
    for (i, c) in line.char_indices() {
        match start {
            None if c == '"' || c == '`' => {
                quote = c;
                start = Some(i + 1);
            }
            None => {}
            Some(from) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' && quote == '"' {
                    escaped = true;
                } else if c == quote {
                    let raw = &line[from..i];
                    literals.push(if quote == '"' {
                        unescape(raw)
                    } else {
                        raw.to_owned()
                    });
                    start = None;
                }
            }
        }
    }
    literals
}

/// A double-quoted literal's value: `\\` is one backslash, `\"` a quote; other escapes are
/// kept as written (they hold no parentheses).
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('\\' | '"')) => out.push(e),
                Some(other) => {
                    out.push('\\');
                    out.push(other);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether a regex has a `(` group that captures.
fn has_capturing_group(pattern: &str) -> bool {
    let mut chars = pattern.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                // An escape in the literal and the regex alike: skip what it escapes.
                chars.next();
            }
            '[' => in_class = true,
            ']' => in_class = false,
            '(' if !in_class => {
                if chars.peek() != Some(&'?') {
                    return true;
                }
                chars.next();
                // (?P<name>...) and (?<name>...) capture too.
                if matches!(chars.peek(), Some('P' | '<')) {
                    let mut rest = chars.clone();
                    rest.next_if_eq(&'P');
                    if rest.next() == Some('<') && rest.peek().is_some_and(|c| c.is_alphabetic()) {
                        return true;
                    }
                }
            }
            _ => {}
        }
    }
    false
}

/// Lines (from 1) with a backslash escape inside a backtick string.
fn raw_escape_lines(code: &str) -> Vec<usize> {
    #[derive(PartialEq)]
    enum State {
        Code,
        Double,
        Backtick,
        LineComment,
        BlockComment,
    }
    let mut state = State::Code;
    let mut lines = Vec::new();
    let mut line = 1;
    let mut chars = code.chars().peekable();
    // Interpolations `${ ... }` inside backticks hold code; track their brace depth.
    let mut interpolation_depth = 0usize;
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        match state {
            State::Code => match c {
                '"' => state = State::Double,
                '`' => state = State::Backtick,
                '/' if chars.peek() == Some(&'/') => state = State::LineComment,
                '/' if chars.peek() == Some(&'*') => state = State::BlockComment,
                '{' if interpolation_depth > 0 => interpolation_depth += 1,
                '}' if interpolation_depth > 0 => {
                    interpolation_depth -= 1;
                    if interpolation_depth == 0 {
                        state = State::Backtick;
                    }
                }
                _ => {}
            },
            State::Double => match c {
                '\\' => line += usize::from(chars.next() == Some('\n')),
                '"' => state = State::Code,
                _ => {}
            },
            State::Backtick => match c {
                '`' => state = State::Code,
                '$' if chars.peek() == Some(&'{') => {
                    chars.next();
                    interpolation_depth = 1;
                    state = State::Code;
                }
                '\\' if matches!(chars.peek(), Some('n' | 't' | 'r' | '"' | '\\'))
                    && lines.last() != Some(&line) =>
                {
                    lines.push(line);
                }
                _ => {}
            },
            State::LineComment => {
                if c == '\n' {
                    state = State::Code;
                }
            }
            State::BlockComment => {
                if c == '*' && chars.peek() == Some(&'/') {
                    chars.next();
                    state = State::Code;
                }
            }
        }
    }
    lines
}

/// `let x = y.sort();`-style lines: an in-place method whose () result is kept.
fn unit_assignments(code: &str) -> Vec<(usize, &'static str)> {
    static PATTERN: OnceLock<Option<Regex>> = OnceLock::new();
    let Some(pattern) = compiled(
        &PATTERN,
        r"(?:^|[;{]\s*)(?:let\s+[0-9A-Za-z_]+|[0-9A-Za-z_]+)\s*=[^=;][^;]*\.\s*(sort|reverse|push|append|clear|truncate|pad|insert|make_upper|make_lower|dedup|shuffle|chop|crop)\s*\((?:[^()]|\([^()]*\))*\)\s*;",
    ) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        for caps in pattern.captures_iter(line.as_bytes()) {
            let method = match caps.get(1).map(|m| text(m.as_bytes())) {
                Some("sort") => "sort",
                Some("reverse") => "reverse",
                Some("push") => "push",
                Some("append") => "append",
                Some("clear") => "clear",
                Some("truncate") => "truncate",
                Some("pad") => "pad",
                Some("insert") => "insert",
                Some("make_upper") => "make_upper",
                Some("make_lower") => "make_lower",
                Some("dedup") => "dedup",
                Some("shuffle") => "shuffle",
                Some("chop") => "chop",
                Some("crop") => "crop",
                _ => continue,
            };
            found.push((i + 1, method));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_divisions_outside_strings_and_comments() {
        assert!(has_division("let a = b / c;"));
        assert!(has_division("t /= 2;"));
        assert!(has_division("let s = `${a / b}`;"));
        assert!(!has_division(
            "let s = \"a/b\"; // c / d\n/* e / f */ let c = '/';"
        ));
        assert!(!has_division("let p = \"\\\"/\";"));
    }

    #[test]
    fn flags_escapes_in_backtick_strings_only() {
        assert_eq!(raw_escape_lines("let a = `x\\ny`;"), vec![1]);
        assert!(raw_escape_lines("let a = \"x\\ny\";").is_empty());
        assert!(raw_escape_lines("// `a\\n`\nlet b = 1;").is_empty());
        assert_eq!(
            raw_escape_lines("let a = `${f(\"\\n\")} and \\t`;"),
            vec![1]
        );
        assert!(raw_escape_lines("let a = `${f(\"\\n\")}`;").is_empty());
        assert_eq!(raw_escape_lines("let a = 1;\nlet b = `\n\\n`;"), vec![3]);
    }

    #[test]
    fn flags_kept_unit_results() {
        assert_eq!(unit_assignments("let s = xs.sort();"), vec![(1, "sort")]);
        assert_eq!(
            unit_assignments("let s = xs.sort(|a, b| a - b);"),
            vec![(1, "sort")]
        );
        assert_eq!(unit_assignments("y = x.reverse();"), vec![(1, "reverse")]);
        assert!(unit_assignments("xs.sort();").is_empty());
        assert!(unit_assignments("let n = xs.len();").is_empty());
        assert!(unit_assignments("if a == b.sort() {}").is_empty());
        assert_eq!(lint("let t = xs.sort();").len(), 1);
    }

    #[test]
    fn flags_for_each_with_an_argument() {
        assert_eq!(
            for_each_with_argument("xs.for_each(|x| total += x);"),
            vec![1]
        );
        assert_eq!(
            for_each_with_argument("for_each(xs, |x| print(x));"),
            vec![1]
        );
        assert!(for_each_with_argument("xs.for_each(|| this *= 2);").is_empty());
        assert!(for_each_with_argument("for x in xs { print(x); }").is_empty());
        assert!(for_each_with_argument("// xs.for_each(|x| f(x));").is_empty());
    }

    #[test]
    fn flags_find_all_with_capturing_groups() {
        assert_eq!(
            find_all_with_groups("let h = regex_find_all(context, \"(GET|POST) /\\\\w\");"),
            vec![1]
        );
        assert_eq!(
            find_all_with_groups("regex_find_all(t, \"(?P<n>\\\\d+)\")"),
            vec![1]
        );
        assert!(find_all_with_groups("regex_find_all(t, \"(?:GET|POST) /x\")").is_empty());
        assert!(find_all_with_groups("regex_find_all(t, \"\\\\(\\\\d+\\\\)\")").is_empty());
        assert!(find_all_with_groups("regex_find_all(t, \"[(]x\")").is_empty());
        assert!(find_all_with_groups("regex_captures(t, \"(x)\")").is_empty());
        assert!(find_all_with_groups("regex_find_all(f(t), p)").is_empty());
        assert!(
            find_all_with_groups("f(regex_find_all(t, \"x\")); regex_captures(t, \"(x)\")")
                .is_empty()
        );
    }

    #[test]
    fn flags_uneven_integer_literal_division() {
        assert_eq!(integer_divisions("let avg = 7 / 2;"), vec![(1, 7, 2)]);
        assert!(integer_divisions("let half = 8 / 2;").is_empty());
        assert!(integer_divisions("let x = 7.0 / 2;").is_empty());
        assert!(integer_divisions("let x = 7 / 2.0;").is_empty());
        assert!(integer_divisions("let x = a / b; // 7 / 2").is_empty());
    }
}
