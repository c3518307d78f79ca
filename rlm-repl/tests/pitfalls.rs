//! Each Python habit from rhai-pitfalls.md, written by a scripted root model, and what the
//! model sees next: the right result, or an error or warning that points the way.

mod common;

use common::{builder, fence, seen};
use rlm_core::mock::MockBackend;
use rlm_repl::Context;

/// Runs `code` as the root model's first reply; returns the message the model gets back.
fn seen_after(code: &str) -> String {
    let root = MockBackend::scripted([fence(code), "FINAL(done)".to_owned()]);
    let rlm = builder(&root, &MockBackend::echo())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let result = rlm
        .run_blocking("q", Context::from("  some context  "))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.answer, "done");
    seen(&root, 1)
}

fn assert_sees(code: &str, expected: &[&str]) {
    let shown = seen_after(code);
    for part in expected {
        assert!(
            shown.contains(part),
            "{code}\n---\n{shown}\n--- missing: {part}"
        );
    }
}

// Silent in plain Rhai: made loud or made to work.

#[test]
fn escapes_in_backtick_strings_are_flagged() {
    assert_sees(
        "let prompt = `line one\\nline two`;\nprint(prompt);",
        &[
            "warning (line 1): backtick strings are raw",
            "line one\\nline two",
        ],
    );
}

#[test]
fn trim_returns_the_trimmed_string() {
    assert_sees(
        "let s = \"  padded  \";\nlet t = s.trim();\nprint(`[${t}]`);",
        &["[padded]"],
    );
}

#[test]
fn keeping_the_result_of_sort_is_flagged() {
    assert_sees(
        "let xs = [3, 1, 2];\nlet s = xs.sort();\nprint(s);",
        &[
            "warning (line 2): `sort()` changes the value in place and returns ()",
            "sorted(x)",
            "note: a value printed above was ()",
        ],
    );
}

#[test]
fn integer_division_is_flagged() {
    assert_sees(
        "print(5 / 2);",
        &[
            "warning (line 1): 5 / 2 divides integers, which gives 2",
            "2.5",
        ],
    );
    assert!(rlm_repl::prompt::SYSTEM_PROMPT.contains("7 / 2 == 3"));
}

#[test]
fn a_missing_map_key_is_an_error() {
    assert_sees(
        "let m = #{a: 1};\nprint(m[\"missing\"]);",
        &[
            "Property not found: missing",
            "m.get(\"missing\")",
            "\"missing\" in m",
        ],
    );
}

#[test]
fn printing_unit_is_explained() {
    assert_sees(
        "let x = ();\nprint(x);",
        &["()\n", "note: a value printed above was () (nothing)"],
    );
}

// Loud in plain Rhai: now working, or with a hint.

#[test]
fn upper_works() {
    assert_sees("print(\"abc\".upper());", &["ABC"]);
}

#[test]
fn range_works() {
    assert_sees("for i in range(3) { print(i); }", &["0\n1\n2"]);
}

#[test]
fn python_constants_get_a_hint() {
    assert_sees(
        "let done = True;",
        &["Variable not found: True", "lowercase: `true`"],
    );
    assert_sees("let x = None;", &["Variable not found: None", "`()`"]);
}

#[test]
fn join_works_both_ways() {
    assert_sees(
        "let parts = [\"a\", \"b\"];\nprint(\", \".join(parts));\nprint(join(parts, \"+\"));",
        &["a, b\na+b"],
    );
}

#[test]
fn functions_not_seeing_outer_variables_get_a_hint() {
    assert_sees(
        "fn size() { context.len() }\nprint(size());",
        &[
            "Variable not found: context",
            "in function 'size'",
            "pass `context` as a parameter",
        ],
    );
}

#[test]
fn f_strings_get_a_hint() {
    assert_sees(
        "let n = 3;\nprint(f\"n is {n}\");",
        &["Syntax error at line 2", "backticks"],
    );
}

#[test]
fn list_comprehensions_get_a_hint() {
    assert_sees(
        "let xs = [1, 2];\nlet ys = [x * 2 for x in xs];",
        &[
            "Syntax error at line 2",
            "no list comprehensions",
            "map(|x|",
        ],
    );
}

#[test]
fn enumerate_loops_get_a_hint() {
    assert_sees(
        "let xs = [1, 2];\nfor i, x in enumerate(xs) { print(x); }",
        &["Syntax error at line 2", "for (x, i) in arr"],
    );
}

#[test]
fn elif_gets_a_hint() {
    assert_sees(
        "let x = 2;\nif x == 1 { print(1); } elif x == 2 { print(2); }",
        &["Syntax error at line 2", "`else if`"],
    );
}

#[test]
fn assignment_without_let_gets_a_hint() {
    assert_sees(
        "total = 1;\nprint(total);",
        &["Variable not found: total", "let total = ...;"],
    );
}

#[test]
fn python_blocks_and_comments_get_hints() {
    assert_sees("if 1 > 0:\n    print(1)", &["braces, not colons"]);
    assert_sees("# a comment\nprint(1);", &["comments start with //"]);
    assert_sees("let ok = 1 > 0 and 2 > 1;", &["`&&`, `||` and `!`"]);
    assert_sees("let s = 'hello';", &["\"double quotes\""]);
}
