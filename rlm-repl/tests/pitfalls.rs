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

// Found later: silent traps made loud or made to work, and errors that point at the
// fix. Each quotes the exact error text Rhai produces.

#[test]
fn a_comparer_over_floats_sorts_by_its_sign() {
    assert_sees(
        "let rows = [#{v: 1.5}, #{v: 3.25}, #{v: 2.5}];\nrows.sort(|a, b| b.v - a.v);\nprint(rows.map(|r| r.v));",
        &["[3.25, 2.5, 1.5]"],
    );
    // Rhai's own forms keep working: integer comparers, booleans meaning "a comes first".
    assert_sees(
        "let xs = [3, 1, 2];\nxs.sort(|a, b| b - a);\nprint(xs);\nlet ys = [3, 1, 2, 1];\nys.sort(|a, b| a < b);\nprint(ys);\nlet zs = [2, 3, 1];\nsort_by(zs, |a, b| a - b);\nprint(zs);",
        &["[3, 2, 1]\n[1, 1, 2, 3]\n[1, 2, 3]"],
    );
}

#[test]
fn sort_by_and_sorted_by_take_a_key() {
    assert_sees(
        "let rows = [#{n: \"b\", v: 2.5}, #{n: \"a\", v: 9}, #{n: \"c\", v: 0.5}];\nsort_by(rows, |r| r.v);\nprint(rows.map(|r| r.n));\nrows.sort_by(|r| r.n, true);\nprint(rows.map(|r| r.n));\nlet top = sorted_by(rows, |r| r.v, true);\nprint(top[0].n);\nprint(rows[0].n);\nprint(sorted(rows, |r| [r.v > 1, r.n]).map(|r| r.n));",
        &["[\"c\", \"b\", \"a\"]\n[\"c\", \"b\", \"a\"]\na\nc\n[\"c\", \"a\", \"b\"]"],
    );
    // Ties keep their order, ascending and descending.
    assert_sees(
        "let xs = [#{k: 1, id: 1}, #{k: 0, id: 2}, #{k: 1, id: 3}];\nprint(sorted_by(xs, |x| x.k).map(|x| x.id));\nprint(sorted_by(xs, |x| x.k, true).map(|x| x.id));",
        &["[2, 1, 3]\n[1, 3, 2]"],
    );
}

#[test]
fn sorting_problems_are_errors_not_silence() {
    assert_sees(
        "let xs = [\"b\", \"a\"];\nxs.sort(|a, b| a + b);\nprint(xs);",
        &["the comparer returned a string", "sort_by(xs, |x| x.field)"],
    );
    assert_sees(
        "let rows = [#{v: 1}, #{v: 2}];\nrows.sort(|a, b| a.missing - b.v);",
        &["Property not found: missing"],
    );
    assert_sees(
        "let rows = [#{v: 1}, #{v: \"x\"}];\nsort_by(rows, |r| r.v);",
        &["sort_by: cannot compare the keys"],
    );
    assert_sees(
        "let xs = [1, 2];\nxs.sort(|| 0);",
        &["the closure must take one argument"],
    );
}

#[test]
fn for_each_with_an_argument_is_flagged() {
    assert_sees(
        "let total = 0;\n[10, 20, 30].for_each(|x| total += x);\nprint(total);",
        &[
            "warning (line 2): for_each passes the item as `this` and the INDEX",
            "for x in xs",
            "\n3",
        ],
    );
}

#[test]
fn regex_find_all_gives_whole_matches_and_regex_captures_the_groups() {
    assert_sees(
        "let t = \"GET /a then POST /b\";\nprint(regex_find_all(t, \"(GET|POST) /\\\\w\"));\nprint(regex_captures(t, \"(GET|POST) /(\\\\w)\"));",
        &[
            "warning (line 2): regex_find_all gives the WHOLE matches",
            "regex_captures(text, pattern)",
            "[\"GET /a\", \"POST /b\"]\n[[\"GET\", \"a\"], [\"POST\", \"b\"]]",
        ],
    );
    assert!(!seen_after("print(regex_find_all(\"a1\", \"(?:a)\\\\d\"));").contains("warning"));
}

#[test]
fn llm_query_on_an_array_points_to_llm_batch() {
    let root = MockBackend::scripted([
        fence("let a = llm_query([\"a\", \"b\"]);"),
        "FINAL(done)".to_owned(),
    ]);
    let sub = MockBackend::echo();
    let rlm = builder(&root, &sub)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let result = rlm
        .run_blocking("q", Context::from("x"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.answer, "done");
    let shown = seen(&root, 1);
    assert!(
        shown.contains("llm_query takes one prompt string, not an array")
            && shown.contains("llm_batch(prompts)"),
        "{shown}"
    );
    assert!(sub.requests().is_empty(), "nothing was sent");
}

#[test]
fn numbers_format_and_round() {
    assert_sees(
        "print(fmt(7, 2));\nprint(fmt(23.6, 2));\nprint(round(23.456, 2));\nprint(fmt(2.0 / 3, 3));",
        &["7.00\n23.60\n23.46\n0.667"],
    );
    assert_sees(
        "print(round(\"2.5\", 1));",
        &["Function not found: round", "fmt(x, 2)"],
    );
}

#[test]
fn a_data_race_names_the_line_and_the_fix() {
    assert_sees(
        "let xs = [1, 2, 3];\nlet ys = xs.filter(|x| x < xs.len());",
        &[
            "Error at line 2, column 10: Data race detected on argument #1 of function 'filter'",
            "uses `xs`, the value filter is called on",
            "let n = xs.len();",
        ],
    );
    assert_sees(
        "let m = #{a: 1, b: 2};\nlet ks = m.keys().filter(|k| m[k] > 1);",
        &[
            "Error at line 2, column 10: Data race detected on argument #2 of function 'filter'",
            "uses `m`",
            "let ks = m.keys();",
        ],
    );
    // The fixes it suggests run.
    assert_sees(
        "let xs = [1, 2, 3];\nlet n = xs.len();\nprint(xs.filter(|x| x < n));\nlet m = #{a: 1, b: 2};\nlet ks = m.keys();\nprint(ks.filter(|k| m[k] > 1));",
        &["[1, 2]\n[\"b\"]"],
    );
}

#[test]
fn counting_into_a_new_key_shows_the_idiom() {
    assert_sees(
        "let m = #{};\nlet k = \"x\";\nm[k] += 1;",
        &[
            "Function not found: + ((), i64)",
            "a value here is () (nothing): a map key that is not set yet",
            "m[k] = (m.get(k) ?? 0) + 1;",
        ],
    );
    assert_sees(
        "let m = #{};\nfor w in [\"a\", \"b\", \"a\"] { m[w] = (m.get(w) ?? 0) + 1; }\nprint(m);",
        &["#{\"a\": 2, \"b\": 1}"],
    );
}

#[test]
fn a_number_as_a_map_key_gets_a_hint() {
    assert_sees(
        "let m = #{};\nm[5] = \"five\";",
        &[
            "Data type incorrect: i64 (expecting string)",
            "map keys are strings: write m[str(k)]",
        ],
    );
    assert_sees(
        "let m = #{};\nm[str(5)] = \"five\";\nprint(m[str(5)]);",
        &["five"],
    );
}

#[test]
fn an_average_over_integers_is_held_with_a_warning() {
    // Before: the block's FINAL(avg) ended the run with 38, silently.
    let root = MockBackend::scripted([
        fence("let total = 193;\nlet n = 5;\nlet avg = total / n;\nFINAL(avg);"),
        fence("let avg = float(total) / n;\nFINAL(avg);"),
    ]);
    let rlm = builder(&root, &MockBackend::echo())
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let result = rlm
        .run_blocking("q", Context::from("x"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(result.answer, "38.6");
    let shown = seen(&root, 1);
    assert!(
        shown.contains("warning (line 3): `/` divided two integers: 193 / 5 gave 38")
            && shown.contains("float(total) / n"),
        "{shown}"
    );
    assert_sees(
        "let t = 193;\nt /= 5;\nprint(t);",
        &["warning (line 2): `/` divided two integers: 193 / 5 gave 38"],
    );
    // Whole quotients and float divisions raise nothing.
    assert_sees(
        "let a = 10;\nlet b = 5;\nprint(a / b);\nprint(float(a) / 4);",
        &["2\n2.5"],
    );
    assert!(!seen_after("let a = 10;\nlet b = 5;\nprint(a / b);").contains("warning"));
}

#[test]
fn python_floor_division_is_flagged() {
    // Before: `//` commented out the divisor and x was 7, silently.
    assert_sees(
        "let a = 7;\nlet b = 2;\nlet x = a // b;",
        &["warning (line 3): `//` starts a comment in Rhai"],
    );
    // A comment after code is not one.
    assert!(!seen_after("let a = 7; // seven apples\nprint(a);").contains("warning"));
    assert!(rlm_repl::prompt::SYSTEM_PROMPT.contains("`a // b` is a"));
}

#[test]
fn the_prompt_says_maps_keep_keys_sorted_and_how_to_rank() {
    let prompt = rlm_repl::prompt::SYSTEM_PROMPT;
    assert!(prompt.contains("Keys stay sorted (not in insertion order)"));
    assert!(prompt.contains("sorted_by(m.keys(), |k| m[k], true)"));
}

#[test]
fn counting_into_a_new_key_with_plus_gets_the_counting_hint() {
    // Before: "Property not found: a" with only the missing-key hint.
    assert_sees(
        "let c2 = #{};\nfor w in [\"a\", \"b\", \"a\"] { c2[w] = c2[w] + 1; }",
        &["Property not found", "m[k] = (m.get(k) ?? 0) + 1;"],
    );
}

#[test]
fn python_slices_try_except_and_mixed_sorts_get_hints() {
    for code in [
        "let xs = [1, 2, 3, 4];\nlet y = xs[0..3];",
        "let xs = [1, 2, 3, 4];\nlet y = xs[:3];",
    ] {
        assert_sees(code, &["xs.extract(0, 3)"]);
    }
    assert_sees(
        "try { let x = 1; } except { print(2); }",
        &["try { ... } catch (err) { ... }"],
    );
    assert_sees(
        "let xs = [1, 2.5, 3];\nxs.sort();",
        &["mixes types", "sort_by(xs, |x| float(x))"],
    );
    assert_sees("import re\nlet x = 1;", &["no modules to import"]);
    // The hints' forms work.
    assert_sees(
        "let xs = [4, 2.5, 3, 1];\nprint(xs.extract(0, 3)); print(xs.extract(0..3)); \
         print(xs.extract(xs.len() - 3));\nsort_by(xs, |x| float(x)); print(xs);",
        &["[4, 2.5, 3]\n[4, 2.5, 3]\n[2.5, 3, 1]\n[1, 2.5, 3, 4]"],
    );
}

#[test]
fn a_block_that_does_not_parse_says_none_of_it_ran() {
    // Before: models resent only the failing line, and the lines before it never ran.
    assert_sees(
        "let found = 1;\nprint(found);\nlet b = [x for x in y];",
        &["Syntax error at line 3", "Nothing in this block ran"],
    );
}

#[test]
fn a_function_defined_earlier_that_divides_is_watched_too() {
    let mut repl = rlm_repl::Repl::new(Context::from("x"));
    assert_eq!(repl.execute("fn avg(t, n) { t / n }").error, None);
    let outcome = repl.execute("print(avg(193, 5));");
    assert!(
        outcome
            .warnings
            .iter()
            .any(|w| w.contains("193 / 5 gave 38")),
        "{}",
        outcome.output
    );
}
