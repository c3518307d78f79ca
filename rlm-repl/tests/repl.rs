//! The environment on its own: persistence, context kinds, helpers, the sandbox and errors.

use std::sync::Arc;
use std::time::Duration;

use rlm_core::LlmError;
use rlm_core::mock::MockBackend;
use rlm_repl::{Context, Repl, SandboxLimits};

fn small_limits() -> SandboxLimits {
    SandboxLimits {
        max_operations: 5_000_000,
        max_string_size: 1 << 20,
        max_array_size: 100_000,
        max_map_size: 10_000,
        // Far beyond what the operation limit lets a block take, even on a loaded machine:
        // the tests here stop code by operations and sizes, never by the clock.
        block_timeout: Duration::from_secs(600),
        ..SandboxLimits::default()
    }
}

fn repl(context: impl Into<Context>) -> Repl {
    Repl::builder(context.into()).limits(small_limits()).build()
}

#[test]
fn variables_and_functions_persist_across_blocks() {
    let mut repl = repl("abc");
    assert_eq!(repl.execute("let n = 41; fn inc(x) { x + 1 }").error, None);
    let outcome = repl.execute("print(inc(n));");
    assert_eq!(outcome.output, "42\n");
    // A failing block keeps what it defined before the error.
    let failed = repl.execute("let kept = 7; let broken = nope();");
    assert!(failed.error.is_some());
    assert_eq!(repl.execute("print(kept)").output, "7\n");
    // Redefining a function replaces it.
    repl.execute("fn inc(x) { x + 10 }");
    assert_eq!(repl.execute("inc(1)").output, "=> 11\n");
    assert!(repl.show_vars().contains("kept: i64 = 7"));
    assert!(repl.execute("SHOW_VARS()").output.contains("kept: i64 = 7"));
    assert!(
        repl.show_vars()
            .contains("context: string, 3 chars (read-only)")
    );
}

#[test]
fn context_kinds() {
    let mut text = repl("line one\nline two\n");
    assert_eq!(
        text.execute("range(3).map(|i| i * 2)").output,
        "=> [0,2,4]\n"
    );
    assert_eq!(text.execute("lines(context).len()").output, "=> 2\n");
    assert_eq!(text.context_info().kind, "string");

    let docs = vec!["alpha".to_owned(), "beta gamma".to_owned()];
    let mut docs = repl(docs);
    assert_eq!(
        docs.execute("for (doc, i) in context { print(`${i}: ${doc.len()}`); }")
            .output,
        "0: 5\n1: 10\n"
    );
    assert_eq!(docs.context_info().items, Some(2));

    let json = serde_json::json!({"users": [{"name": "ada", "age": 36}, {"name": "bob"}]});
    let mut json = repl(json);
    assert_eq!(json.execute("context.users[0].name").output, "=> ada\n");
    assert_eq!(json.execute("context.users.len()").output, "=> 2\n");
    assert_eq!(
        json.execute("context.users.map(|u| u.get(\"age\"))").output,
        "=> [36,null]\n"
    );
    // The context is read-only.
    let changed = json.execute("context.users = [];");
    assert!(changed.error.is_some_and(|e| e.contains("read-only")));
}

#[test]
fn helpers_work_on_text() {
    let text = rlm_tests::fixtures::haystack(5_000, 4_321, "The secret code is 8675309.", 9);
    let mut repl = repl(text);
    let outcome = repl.execute(
        r##"
let hits = grep(context, "secret code");
print(hits[0].line);
print(regex_find_all(context, "code is \\d+")[0]);
print(regex_captures(context, "code is (\\d+)")[0][0]);
print(regex_count(context, "(?i)SECRET"));
print(regex_test(context, "^The secret"));
print(chunk(context, 100000).len());
print(chunk_lines(context, 1000).len());
print(join(["a", "b", 3], "-"));
print(", ".join(["x", "y"]));
print(regex_replace("a1b22", "\\d+", "#"));
let ctx = grep(context, "secret", 1);
print(ctx[0].context.split("\n").len());
print(parse_json("{\"a\": [1, 2]}").a[1]);
print(to_json(#{k: [1, "two"]}));
"##,
    );
    assert_eq!(outcome.error, None, "{}", outcome.output);
    let lines: Vec<&str> = outcome.output.lines().collect();
    assert_eq!(
        lines,
        [
            "4322",
            "code is 8675309",
            "8675309",
            "1",
            "false",
            "5",
            "5",
            "a-b-3",
            "x, y",
            "a#b#",
            "3",
            "2",
            r#"{"k":[1,"two"]}"#
        ]
    );
}

#[test]
fn python_names_return_values() {
    let mut repl = repl("  Mixed Case  ");
    let outcome = repl.execute(
        r#"
print(upper(strip(context)));
print(context.lower().strip());
print(str(42) + str(1.5));
print(int("12") + int(3.9));
print(float("2.5") * 2);
print(sum([1, 2, 3]));
print(max([3, 9, 2]));
print(sorted(["b", "c", "a"]));
print(reversed([1, 2]));
let total = 0; for i in range(4) { total += i; } print(total);
print(find("hello", "l"));
print(count("banana", "an"));
print("abc".startswith("ab"));
let s = "  padded "; let t = s.trim(); print(`[${t}]`);
let r = "a-b".replace("-", "+"); print(r);
"#,
    );
    assert_eq!(outcome.error, None, "{}", outcome.output);
    let lines: Vec<&str> = outcome.output.lines().collect();
    assert_eq!(
        lines,
        [
            "MIXED CASE",
            "mixed case",
            "421.5",
            "15",
            "5.0",
            "6",
            "9",
            r#"["a", "b", "c"]"#,
            "[2, 1]",
            "6",
            "2",
            "2",
            "true",
            "[padded]",
            "a+b"
        ]
    );
}

#[test]
fn output_is_truncated_head_and_tail_with_the_true_length() {
    let mut repl = Repl::builder(Context::from("x"))
        .max_output_chars(1000)
        .build();
    let outcome = repl.execute("for i in 0..10000 { print(`row ${i}`); }");
    assert!(outcome.output.starts_with("row 0\nrow 1\n"));
    assert!(outcome.output.trim_end().ends_with("row 9999"));
    let total: usize = (0..10000).map(|i| format!("row {i}\n").len()).sum();
    assert!(
        outcome.output.contains(&format!("of {total} characters")),
        "{}",
        &outcome.output[400..700]
    );
    assert!(outcome.output.len() < 1300);
}

#[test]
fn runaway_code_is_stopped_and_the_scope_survives() {
    let mut repl = repl("context");
    repl.execute("let before = 1;");
    let cases = [
        ("let n = 0; loop { n += 1; }", "operations"),
        ("let s = \"ab\"; loop { s += s; }", "too large"),
        ("fn down(n) { down(n + 1) } down(0)", "nested more than"),
        ("let a = []; a.pad(1000000, 0);", "too large"),
        (
            &format!("let x = {}1{};", "(".repeat(500), ")".repeat(500)),
            "Syntax error",
        ),
    ];
    for (code, expected) in cases {
        let outcome = repl.execute(code);
        let error = outcome.error.unwrap_or_default();
        assert!(error.contains(expected), "{code}: {error}");
        assert!(outcome.output.contains(&error));
    }
    assert_eq!(repl.execute("print(before)").output, "1\n");
}

#[test]
fn wall_clock_limit_excludes_nothing_but_sub_call_waits() {
    let limits = SandboxLimits {
        max_operations: 0, // unlimited: only the clock stops it
        block_timeout: Duration::from_millis(300),
        ..SandboxLimits::default()
    };
    let mut endless = Repl::builder(Context::from("x"))
        .limits(limits.clone())
        .build();
    let outcome = endless.execute("let n = 0; loop { n += 1; }");
    assert!(outcome.error.unwrap_or_default().contains("script time"));

    // Sub-calls that take longer than the limit do not count as script time.
    let slow = MockBackend::echo().with_latency(Duration::from_millis(400));
    let mut waiting = Repl::builder(Context::from("x"))
        .limits(limits)
        .sub_backend(Arc::new(slow), "sub")
        .build();
    let outcome =
        waiting.execute("let a = llm_query(\"one\"); let b = llm_query(\"two\"); print(b);");
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.output, "echo: two\n");
}

#[test]
fn no_files_environment_network_or_modules() {
    let mut repl = repl("x");
    for code in [
        "import \"/etc/passwd\" as p;",
        "eval(\"1 + 1\")",
        "open(\"/etc/passwd\")",
        "read_file(\"/etc/passwd\")",
        "env(\"HOME\")",
        "getenv(\"HOME\")",
        "http_get(\"http://127.0.0.1\")",
        "system(\"ls\")",
    ] {
        let outcome = repl.execute(code);
        let error = outcome.error.unwrap_or_default();
        assert!(
            error.contains("not found")
                || error.contains("disabled")
                || error.contains("import is disabled"),
            "{code}: {error}"
        );
    }
}

#[test]
fn errors_show_line_column_and_the_code() {
    let mut repl = repl("x");
    let outcome = repl.execute("let a = 1;\nlet b = a +;\n");
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.starts_with("Syntax error at line 2, column"),
        "{error}"
    );
    assert!(error.contains("  2 | let b = a +;"), "{error}");
    let outcome = repl.execute("let a = 1;\nlet b = \"x\".nope(a);");
    let error = outcome.error.unwrap_or_default();
    assert!(
        error.starts_with("Error at line 2, column 13: Function not found: nope"),
        "{error}"
    );
    assert!(
        error.contains("  2 | let b = \"x\".nope(a);\n    |             ^"),
        "{error}"
    );
}

#[test]
fn a_panic_inside_the_engine_becomes_an_error() {
    // A variable captured by a closure becomes shared; storing that shared value inside an
    // array trips an internal assertion of Rhai's size check when a method is called on it.
    let mut repl = repl("x");
    let outcome = repl.execute("let x = [1]; let f = || x.len(); let outer = [x]; outer.len()");
    // Either Rhai handles it, or the panic is caught: never a crash.
    assert!(outcome.error.is_none() || outcome.error.is_some_and(|e| e.contains("internal error")));
    assert_eq!(repl.execute("1 + 1").output, "=> 2\n");
}

#[test]
fn sub_calls_without_a_backend_and_with_failures() {
    let mut bare = repl("x");
    assert_eq!(
        bare.execute("llm_query(\"hi\")").output,
        "=> Error: no sub-model is configured for llm_query\n"
    );
    let failing = MockBackend::echo().fail_when(
        |r| r.last_user_message() == Some("bad"),
        LlmError::other("boom"),
    );
    let mut repl = Repl::builder(Context::from("x"))
        .sub_backend(Arc::new(failing), "sub")
        .build();
    assert_eq!(
        repl.execute("llm_query(\"bad\")").output,
        "=> Error: boom\n"
    );
    let outcome = repl.execute("llm_batch([\"a\", \"bad\", 3])");
    assert_eq!(
        outcome.output,
        "=> [\"echo: a\",\"Error: boom\",\"echo: 3\"]\n"
    );
    let outcome = repl.execute("llm_batch(\"not an array\")");
    assert!(
        outcome
            .error
            .unwrap_or_default()
            .contains("takes an array of prompts")
    );
    let outcome = repl.execute("llm_query(())");
    assert!(
        outcome
            .error
            .unwrap_or_default()
            .contains("the prompt is ()")
    );
    assert_eq!(
        repl.execute("llm_query_batched([\"z\"], 0)").output,
        "=> [\"echo: z\"]\n"
    );
}

#[test]
fn final_in_code_ends_the_block() {
    let mut repl = repl("x");
    let outcome = repl.execute("print(\"before\"); FINAL([1, 2]); print(\"after\");");
    assert_eq!(outcome.final_answer.as_deref(), Some("[1,2]"));
    assert_eq!(outcome.output, "before\n");
    let outcome = repl.execute("let answer = \"from var\"; FINAL_VAR(\"answer\")");
    assert_eq!(outcome.final_answer.as_deref(), Some("from var"));
    let outcome = repl.execute("FINAL_VAR(answer)");
    assert_eq!(outcome.final_answer.as_deref(), Some("from var"));
    let outcome = repl.execute("FINAL_VAR(\"missing\")");
    assert_eq!(outcome.final_answer, None);
    assert!(
        outcome
            .error
            .unwrap_or_default()
            .contains("no variable named `missing`")
    );
    let outcome = repl.execute("FINAL(())");
    assert_eq!(outcome.final_answer, None);
    assert!(outcome.error.unwrap_or_default().contains("()"));
    assert_eq!(repl.final_var("answer"), Ok("from var".to_owned()));
}

/// Runs `f` on a thread with the stack of a tokio blocking thread (2 MiB), as `Rlm` does.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("a thread starts")
        .join()
        .expect("the thread did not panic")
}

#[test]
fn deeply_nested_data_never_overflows_the_stack() {
    // Each round wraps `a` in 15 more arrays (about the deepest literal the parser takes);
    // 300 rounds make it 4,500 levels deep. Printing it, showing it as the block's value,
    // failing on it and dropping it all recurse once per level.
    let wrap = format!("{}a{}", "[".repeat(15), "]".repeat(15));
    let grow = format!("let a = []; for i in 0..300 {{ a = {wrap}; }}");
    let outcome = on_small_stack(move || {
        let mut repl = repl("x");
        let shown = repl.execute(&format!("{grow} a"));
        let thrown = repl.execute(&format!("{grow} throw a;"));
        let kept = repl.execute(&format!("{grow} let b = 1;"));
        let after = repl.execute("print(b); print(type_of(a));");
        drop(repl);
        (shown, thrown, kept, after)
    });
    let (shown, thrown, kept, after) = outcome;
    assert!(shown.output.starts_with("=> [[[[[["), "{}", shown.output);
    assert!(thrown.error.is_some_and(|e| e.contains("[[[[[[")));
    // Between blocks no variable keeps data nested that deep: the scope cannot grow it
    // further block by block, and what is kept is safe to show and drop anywhere.
    assert!(
        kept.output.contains("`a` was nested more than"),
        "{}",
        kept.output
    );
    assert!(after.output.starts_with("1\n"), "{}", after.output);
    assert!(
        after
            .error
            .is_some_and(|e| e.contains("Variable not found: a")),
        "{}",
        after.output
    );
}

#[test]
fn a_long_error_is_truncated_like_output() {
    let mut repl = Repl::builder(Context::from("x"))
        .max_output_chars(1000)
        .build();
    let outcome = repl.execute("let s = \"ab\"; for i in 0..15 { s += s; } throw s;");
    let error = outcome.error.unwrap_or_default();
    assert!(error.len() < 1500, "{} bytes", error.len());
    assert!(error.starts_with("Error at line 1"), "{error}");
    // Head and tail kept, and the true length stated.
    assert!(error.contains("abababab"), "{error}");
    let total: usize = error
        .split(" characters omitted")
        .next()
        .and_then(|head| head.rsplit(" of ").next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_default();
    assert!(total > 65_536, "{error}");
    assert!(outcome.output.len() < 1500);
}

#[test]
fn redeclared_variables_are_listed_once_and_old_values_freed() {
    let mut repl = repl("x");
    repl.execute("let chunks = [1, 2]; let n = 1;");
    repl.execute("let chunks = [3]; let n = 2; let n = 3;");
    let vars = repl.show_vars();
    assert_eq!(vars.matches("chunks:").count(), 1, "{vars}");
    assert_eq!(vars.matches("n:").count(), 1, "{vars}");
    assert!(vars.contains("chunks: array, 1 item"), "{vars}");
    assert!(!vars.contains("1 items"), "{vars}");
    assert!(vars.contains("n: i64 = 3"), "{vars}");
    assert_eq!(repl.execute("print(n); print(chunks)").output, "3\n[3]\n");
    // The read-only context stays, even when a script shadows it.
    repl.execute("let context = \"mine\";");
    assert_eq!(repl.execute("context").output, "=> mine\n");
}

#[test]
fn the_time_limit_stops_a_loop_of_slow_native_calls_promptly() {
    // Each regex_count scans 32 MB, far longer than the 1 ms limit: the block must stop at
    // the first operation after the limit, not run on for dozens of calls.
    let limits = SandboxLimits {
        block_timeout: Duration::from_millis(1),
        ..SandboxLimits::default()
    };
    let text = "abcdefgh ".repeat((32 << 20) / 9);
    let mut repl = Repl::builder(Context::from(text)).limits(limits).build();
    let outcome = repl.execute(
        "let calls = 0; loop { regex_count(context, \"(?i)x[a-z]+y\"); calls += 1; print(calls); }",
    );
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("script time"), "{error}");
    let calls = outcome
        .output
        .lines()
        .take_while(|l| !l.starts_with("Error"))
        .count();
    assert!(calls <= 2, "{calls} slow calls ran after the limit");
}

#[test]
fn integers_beyond_64_bits_stay_exact() {
    // Before: both became the float 1.2345678901234567e19 and compared equal.
    let value: serde_json::Value =
        serde_json::from_str("[12345678901234567890, 12345678901234567891, -5, 2.5]")
            .unwrap_or_default();
    let context = Context::Json(value);
    let first = rlm_repl::prompt::first_message("q", &context.info());
    assert!(
        first.contains("2 integers too large for 64 bits are kept exact as strings"),
        "{first}"
    );
    let mut repl = repl(context);
    let outcome = repl.execute(
        "print(context[0] == context[1]); print(context[0]); print(context[1]); \
         print(context[2] + 1); print(type_of(context[3]));",
    );
    assert_eq!(
        outcome.output,
        "false\n12345678901234567890\n12345678901234567891\n-4\nf64\n"
    );
    // Beyond 64 bits unsigned too, in parse_json, and from a JSON file's text.
    let outcome = repl.execute(
        "let a = parse_json(\"{\\\"x\\\": 123456789012345678901234567890, \\\"y\\\": \
         123456789012345678901234567891, \\\"z\\\": -99999999999999999999, \\\"w\\\": 1e30}\"); \
         print(a.x); print(a.x == a.y); print(a.z); print(type_of(a.w));",
    );
    assert_eq!(
        outcome.output,
        "123456789012345678901234567890\nfalse\n-99999999999999999999\nf64\n"
    );
    let parsed = rlm_repl::parse_json_exact("[123456789012345678901234567890, \"a,1e99\", 0]")
        .unwrap_or_default();
    assert_eq!(
        parsed,
        serde_json::json!(["123456789012345678901234567890", "a,1e99", 0])
    );
    // A malformed number is still an error, at its place in the text.
    let error = rlm_repl::parse_json_exact("[1, 0123456789012345678901234]")
        .err()
        .map(|e| e.column());
    assert_eq!(error, Some(6));
}

#[test]
fn a_byte_order_mark_does_not_hide_json() {
    let mut repl = repl("x");
    // Before: "invalid JSON at line 1 column 1" for a text that is JSON after its BOM.
    let outcome = repl.execute("let j = parse_json(\"\\uFEFF{\\\"a\\\": 1}\"); print(j.a);");
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.output, "1\n");
}

#[test]
fn dollar_matches_before_crlf_line_ends_as_lines_does() {
    let mut repl = repl("head\r\ntotal: 12\r\nother\r\ntotal: 30\r\n");
    // Before: 0 (`$` matched only before "\n", and "\r" came first).
    let outcome = repl.execute(
        "print(regex_count(context, \"(?m)^total: \\\\d+$\")); \
         print(grep(context, \"\\\\d$\").map(|h| h.line)); \
         print(regex_find_all(context, \"(?m)^\\\\w+$\")); \
         print(lines(context).filter(|l| l.starts_with(\"total\")).len());",
    );
    assert_eq!(outcome.error, None, "{}", outcome.output);
    assert_eq!(outcome.output, "2\n[2, 4]\n[\"head\", \"other\"]\n2\n");
}
