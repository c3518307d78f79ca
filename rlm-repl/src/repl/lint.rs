//! Warnings for code that runs but silently does the wrong thing (see rhai-pitfalls).

use std::sync::OnceLock;

use regex::Regex;

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

/// `7 / 2`-style divisions of integer literals that do not come out even.
fn integer_divisions(code: &str) -> Vec<(usize, i64, i64)> {
    static PATTERN: OnceLock<Option<Regex>> = OnceLock::new();
    let Some(pattern) = PATTERN
        .get_or_init(|| Regex::new(r"(?:^|[^\w.])(\d+)\s*/\s*(\d+)(?:[^\w.]|$)").ok())
        .as_ref()
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let code_part = line.split("//").next().unwrap_or(line);
        for caps in pattern.captures_iter(code_part) {
            let number = |g: usize| caps.get(g).and_then(|m| m.as_str().parse::<i64>().ok());
            if let (Some(a), Some(b)) = (number(1), number(2)) {
                if b != 0 && a % b != 0 {
                    found.push((i + 1, a, b));
                }
            }
        }
    }
    found
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
    let Some(pattern) = PATTERN
        .get_or_init(|| {
            Regex::new(
                r"(?:^|[;{]\s*)(?:let\s+\w+|\w+)\s*=[^=;][^;]*\.\s*(sort|reverse|push|append|clear|truncate|pad|insert|make_upper|make_lower|dedup|shuffle|chop|crop)\s*\((?:[^()]|\([^()]*\))*\)\s*;",
            )
            .ok()
        })
        .as_ref()
    else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        for caps in pattern.captures_iter(line) {
            let method = match caps.get(1).map(|m| m.as_str()) {
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
    fn flags_uneven_integer_literal_division() {
        assert_eq!(integer_divisions("let avg = 7 / 2;"), vec![(1, 7, 2)]);
        assert!(integer_divisions("let half = 8 / 2;").is_empty());
        assert!(integer_divisions("let x = 7.0 / 2;").is_empty());
        assert!(integer_divisions("let x = 7 / 2.0;").is_empty());
        assert!(integer_divisions("let x = a / b; // 7 / 2").is_empty());
    }
}
