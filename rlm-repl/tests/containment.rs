//! Containment: no script can hang a block, grow a value past a limit by any mutation path,
//! or make the REPL hold more than its memory budget; and plain loops stay linear.

use std::time::Duration;

use rlm_core::CancellationToken;
use rlm_repl::{Context, Repl, SandboxLimits};

/// The in-block memory check follows the process's resident memory, so the tests of this
/// file, which grow memory on purpose, run one at a time (another test's growth would count).
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn repl_with(limits: SandboxLimits) -> Repl {
    Repl::builder(Context::from("ctx")).limits(limits).build()
}

fn error_of(repl: &mut Repl, code: &str) -> String {
    repl.execute(code).error.unwrap_or_default()
}

#[test]
fn sleep_stops_with_the_block_time_limit() {
    let _serial = serial();
    let mut repl = repl_with(SandboxLimits {
        block_timeout: Duration::from_millis(300),
        ..SandboxLimits::default()
    });
    // Before: the block slept for 100,000 s whatever the limits.
    let outcome = repl.execute("let before = 1; sleep(100000);");
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("script time"), "{error}");
    assert!(
        outcome.elapsed < Duration::from_secs(30),
        "{:?}",
        outcome.elapsed
    );
    assert_eq!(repl.execute("print(before)").output, "1\n");
}

#[test]
fn sleep_of_a_huge_or_odd_duration_neither_panics_nor_hangs() {
    let _serial = serial();
    let mut repl = repl_with(SandboxLimits {
        block_timeout: Duration::from_millis(200),
        ..SandboxLimits::default()
    });
    // Before: `sleep(1.0e300)` panicked inside Rhai ("internal error").
    let error = error_of(&mut repl, "sleep(1.0e300)");
    assert!(!error.contains("internal error"), "{error}");
    assert!(error.contains("script time"), "{error}");
    for code in [
        "sleep(-1)",
        "sleep(0)",
        "sleep(0.01)",
        "sleep(-1.0e300)",
        "sleep(0.0/0.0)",
    ] {
        assert_eq!(repl.execute(code).error, None, "{code}");
    }
}

#[test]
fn sleep_stops_when_the_run_is_cancelled() {
    let _serial = serial();
    let cancel = CancellationToken::new();
    let mut repl = Repl::builder(Context::from("ctx"))
        .cancel_token(cancel.clone())
        .build();
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        cancel.cancel();
    });
    let error = error_of(&mut repl, "sleep(100000)");
    assert!(error.contains("cancelled"), "{error}");
    canceller.join().expect("the canceller thread");
}

#[test]
fn a_million_pushes_and_len_calls_run_within_the_default_limits() {
    let _serial = serial();
    // Before: every `push` and `len()` re-measured the whole array, so this loop was stopped
    // as "an endless loop?" at about 160,000 items. The default operation and size limits
    // are under test; the wall-clock block limit is not (a debug build on a loaded machine
    // can take longer than it), so it is out of the way here.
    let mut repl = repl_with(SandboxLimits {
        block_timeout: Duration::from_secs(24 * 3600),
        ..SandboxLimits::default()
    });
    let outcome = repl.execute(
        "let xs = []; for i in 0..1000000 { xs.push(i); }\n\
         let i = 0; let total = 0; while i < xs.len() { total += xs[i]; i += 1; }\n\
         print(xs.len()); print(total);",
    );
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.output, "1000000\n499999500000\n");
}

fn small() -> SandboxLimits {
    SandboxLimits {
        max_string_size: 1000,
        max_array_size: 100,
        max_map_size: 50,
        ..SandboxLimits::default()
    }
}

#[test]
fn every_mutation_path_keeps_the_size_limits() {
    let _serial = serial();
    let cases = [
        (
            "let xs = []; for i in 0..1000 { xs.push(i); }",
            "Size of array",
        ),
        (
            "let xs = []; for i in 0..1000 { xs += i; }",
            "Size of array",
        ),
        (
            "let xs = [1]; for i in 0..20 { xs += xs; }",
            "Size of array",
        ),
        (
            "let xs = []; for i in 0..1000 { xs.insert(0, i); }",
            "Size of array",
        ),
        (
            "let xs = [1]; for i in 0..20 { xs.append(xs); }",
            "Size of array",
        ),
        ("let xs = [1]; xs.pad(100000, 0);", "Size of array"),
        // Before: index assignment grew a map past its limit.
        (
            "let m = #{}; for i in 0..1000 { m[`k${i}`] = i; }",
            "Size of object map",
        ),
        (
            "let m = #{}; for i in 0..1000 { let o = #{}; o[`k${i}`] = i; m.mixin(o); }",
            "Size of object map",
        ),
        ("let s = \"ab\"; loop { s += s; }", "Length of string"),
        (
            "let s = \"\"; for i in 0..2000 { s += \"x\"; }",
            "Length of string",
        ),
        ("let s = \"x\"; s.pad(100000, \"yz\");", "Length of string"),
        ("let s = \"x\"; s.pad(100000, 'y');", "Length of string"),
        ("blob(1000000000000)", "BLOB"),
        ("let b = blob(); b.pad(1000000000000, 0);", "BLOB"),
    ];
    for (code, expected) in cases {
        let mut repl = repl_with(small());
        let error = error_of(&mut repl, code);
        assert!(error.contains("too large"), "{code}: {error}");
        assert!(error.contains(expected), "{code}: {error}");
    }
}

#[test]
fn nested_growth_and_merges_stop_at_the_limit_while_the_block_runs() {
    let _serial = serial();
    let two_maps = "let a = #{}; let b = #{}; for i in 0..40 { a[`a${i}`] = i; b[`b${i}`] = i; }";
    let two_arrays = "let a = []; let b = []; for i in 0..80 { a.push(i); b.push(i); }";
    let cases = [
        (
            "let m = #{x: #{}}; for i in 0..100000 { m.x[`k${i}`] = i; }".to_owned(),
            "Size of object map",
        ),
        (
            "let m = #{x: #{y: #{}}}; for i in 0..100000 { m.x.y[`k${i}`] = i; }".to_owned(),
            "Size of object map",
        ),
        (
            "let xs = [[]]; for i in 0..100000 { xs[0].push(i); }".to_owned(),
            "Size of array",
        ),
        (format!("{two_maps} a.mixin(b);"), "Size of object map"),
        (format!("{two_maps} a += b;"), "Size of object map"),
        (format!("{two_maps} a.fill_with(b);"), "Size of object map"),
        (format!("{two_maps} let c = a + b;"), "Size of object map"),
        (format!("{two_arrays} a.append(b);"), "Size of array"),
        (format!("{two_arrays} let c = a + b;"), "Size of array"),
    ];
    for (code, expected) in cases {
        let mut repl = repl_with(small());
        // Before: the block ran to its end (a nested map of 100,000 keys, a merged map past
        // the limit) and only the check after it removed the variable.
        let outcome = repl.execute(&format!("{code} print(\"ran to \" + \"the end\");"));
        let error = outcome.error.unwrap_or_default();
        assert!(error.contains("too large"), "{code}: {error}");
        assert!(error.contains(expected), "{code}: {error}");
        assert!(
            !outcome.output.contains("ran to the end"),
            "{code}: {}",
            outcome.output
        );
    }
    // Within the limits, the same operations work as Rhai's own.
    let mut repl = repl_with(small());
    let outcome = repl.execute(
        "let a = #{x: 1, y: 2}; let b = #{y: 3, z: 4}; let c = a + b; let d = a; d.fill_with(b); \
         a.mixin(#{w: 0}); let xs = [1, 2]; xs.append([3]); \
         print(`${c} ${d} ${a} ${xs + [4]} ${xs}`);",
    );
    assert_eq!(outcome.error, None);
    assert_eq!(
        outcome.output,
        "#{\"x\": 1, \"y\": 3, \"z\": 4} #{\"x\": 1, \"y\": 2, \"z\": 4} \
         #{\"w\": 0, \"x\": 1, \"y\": 2} [1, 2, 3, 4] [1, 2, 3]\n"
    );
}

#[test]
fn map_keys_count_as_strings() {
    let _serial = serial();
    let mut repl = repl_with(small());
    // A key longer than the string limit cannot stay: the map holding it is removed.
    let outcome = repl.execute(
        "let k = \"\"; for i in 0..100 { k += \"0123456789\"; } \
         let m = #{}; for i in 0..20 { m[k + k + i] = 1; } let keep = 1;",
    );
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("`m`"), "{error}");
    assert!(error.contains("size limit"), "{error}");
    assert!(repl.execute("print(keep)").output == "1\n");
    assert!(repl.execute("m").error.is_some());
}

#[test]
fn split_and_to_chars_fail_before_building_a_too_large_array() {
    let _serial = serial();
    let mut repl = Repl::builder(Context::from("x".repeat(5000)))
        .limits(small())
        .build();
    for code in [
        "context.split(\"\")",
        "split(context, \"\")",
        "context.to_chars()",
        "context.split('x')",
        "context.split(\"x\", 1000)",
        "context.split_rev(\"\")",
    ] {
        let error = error_of(&mut repl, code);
        assert!(error.contains("too large"), "{code}: {error}");
    }
    // Same results as Rhai's own within the limits.
    assert_eq!(
        repl.execute("print(\"a,b,,c\".split(\",\")); print(\"a,b,c\".split(\",\", 2)); print(\"abc\".split(\";\")); print(\"ab\".to_chars()); print(\"a,b,c\".split_rev(','));")
            .output,
        "[\"a\", \"b\", \"\", \"c\"]\n[\"a\", \"b,c\"]\n[\"abc\"]\n[a, b]\n[\"c\", \"b\", \"a\"]\n"
    );
}

#[test]
fn the_memory_budget_holds_across_blocks_and_the_run_goes_on() {
    let _serial = serial();
    let mut repl = repl_with(SandboxLimits {
        max_memory: 4_000_000,
        ..SandboxLimits::default()
    });
    // Before: one big variable kept per block grew without bound.
    assert_eq!(
        repl.execute("let a = \"\"; a.pad(1500000, 'a'); let small = 7;")
            .error,
        None
    );
    assert_eq!(
        repl.execute("let b = \"\"; b.pad(1500000, 'b');").error,
        None
    );
    let outcome = repl.execute("let c = \"\"; c.pad(2000000, 'c');");
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("memory budget"), "{error}");
    assert!(
        error.contains("`c`") && error.contains("was removed"),
        "{error}"
    );
    assert!(error.contains("x = ();"), "{error}");
    let vars = repl.show_vars();
    assert!(!vars.contains("c: "), "{vars}");
    assert!(vars.contains("a: ") && vars.contains("small: "), "{vars}");
    // Freeing a variable makes room again.
    assert_eq!(
        repl.execute("a = (); let d = \"\"; d.pad(1500000, 'd'); print(d.len());")
            .output,
        "1500000\n"
    );
}

#[test]
fn a_final_answer_larger_than_the_string_limit_is_refused() {
    let _serial = serial();
    let mut repl = repl_with(small());
    let outcome = repl.execute("let m = #{}; for i in 0..40 { m[`${i}`] = \"0123456789012345678901234567890123456789\"; } FINAL(m)");
    assert_eq!(outcome.final_answer, None);
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("FINAL"), "{error}");
}

#[test]
fn a_batch_too_large_to_hold_fails_whole_before_anything_is_sent() {
    let _serial = serial();
    let mock = std::sync::Arc::new(rlm_core::mock::MockBackend::echo());
    let mut repl = Repl::builder(Context::from("ctx"))
        .limits(SandboxLimits {
            max_memory: 64 << 20,
            // Building 200,000 prompts is slow in a debug build on a loaded machine: the
            // memory check is what must stop the batch, not the clock.
            block_timeout: std::time::Duration::from_secs(600),
            ..SandboxLimits::default()
        })
        .sub_backend(mock.clone(), "sub")
        .build();
    // Before: 5,000,000 short prompts took about 1 KiB each before sending, then aborted.
    let outcome = repl.execute("let ps = range(200000).map(|i| `p${i}`); let a = llm_batch(ps);");
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("more than one batch may hold"), "{error}");
    assert_eq!(mock.calls(), 0);
    assert_eq!(repl.execute("print(ps.len())").output, "200000\n");
}

#[test]
fn batch_answers_past_the_budget_become_errors_and_the_rest_are_kept() {
    let _serial = serial();
    const MB: usize = 1 << 20;
    let mock = std::sync::Arc::new(rlm_core::mock::MockBackend::from_fn(|_| Ok("a".repeat(MB))));
    let mut repl = Repl::builder(Context::from("ctx"))
        .limits(SandboxLimits {
            max_memory: 5 * MB + MB / 2,
            ..SandboxLimits::default()
        })
        .sub_backend(mock.clone(), "sub")
        .build();
    // Before: a batch whose answers passed the size limit lost every one of them.
    let outcome = repl.execute(
        "let a = llm_batch(range(10).map(|i| `q${i}`)); \
         let kept = a.filter(|x| !x.starts_with(\"Error:\")).len(); \
         let refused = a.filter(|x| x.starts_with(\"Error:\") && x.contains(\"paid\")).len(); \
         print(`${kept} ${refused}`);",
    );
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.output, "5 5\n");
    assert_eq!(mock.calls(), 10);
    // The kept answers stay: the variables fit the budget.
    assert_eq!(repl.execute("print(a[0].len())").output, format!("{MB}\n"));
}

#[test]
fn an_answer_longer_than_the_string_limit_keeps_its_start() {
    let _serial = serial();
    let mock = std::sync::Arc::new(rlm_core::mock::MockBackend::from_fn(|_| {
        Ok("b".repeat(5000))
    }));
    let mut repl = Repl::builder(Context::from("ctx"))
        .limits(small())
        .sub_backend(mock, "sub")
        .build();
    let outcome = repl
        .execute("let a = llm_query(\"q\"); print(a.sub_string(0, 40)); print(a.len() < 1000);");
    assert_eq!(outcome.error, None);
    assert!(
        outcome
            .output
            .starts_with("Error: the answer was 5000 bytes"),
        "{}",
        outcome.output
    );
    assert!(outcome.output.ends_with("true\n"), "{}", outcome.output);
}

/// A sub-model whose answers are `bytes` long and which, like the OpenAI backend, charges
/// each answer to the caller's reply budget before it is built, failing the answers that do
/// not fit. Counts the answers it built.
fn charging_backend(
    bytes: usize,
) -> (
    std::sync::Arc<rlm_core::mock::MockBackend>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let built = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&built);
    let mock = rlm_core::mock::MockBackend::from_fn(move |_| {
        if let Some(budget) = rlm_core::ReplyBudget::current() {
            if !budget.try_take(bytes as u64) {
                return Err(rlm_core::LlmError::over_reply_budget(format!(
                    "the answer was not kept: with it the answers received would pass the \
                     memory budget of {} bytes",
                    budget.limit()
                )));
            }
        }
        counter.fetch_add(1, Ordering::SeqCst);
        Ok("a".repeat(bytes))
    });
    (std::sync::Arc::new(mock), built)
}

#[test]
fn answers_count_against_the_memory_budget_before_they_are_built() {
    let _serial = serial();
    use std::sync::atomic::Ordering;
    const MB: usize = 1 << 20;
    let (mock, built) = charging_backend(MB);
    let mut repl = Repl::builder(Context::from("ctx"))
        .limits(SandboxLimits {
            max_memory: 6 * MB,
            ..SandboxLimits::default()
        })
        .sub_backend(mock.clone(), "sub")
        .build();
    assert_eq!(
        repl.execute("let held = \"\"; held.pad(2097152, 'h');")
            .error,
        None
    );
    // Before: no budget reached the backend, so all twenty answers were built (read whole)
    // and only then were most of them dropped.
    let outcome = repl.execute(
        "let a = llm_batch(range(20).map(|i| `q${i}`), 4); \
         let kept = a.filter(|x| !x.starts_with(\"Error:\")).len(); \
         let refused = a.filter(|x| x.starts_with(\"Error: the memory budget\")).len(); \
         let whole = a.all(|x| x.starts_with(\"Error:\") || x.len() == 1048576); \
         print(`${kept} ${refused} ${whole}`);",
    );
    assert_eq!(outcome.error, None);
    let built = built.load(Ordering::SeqCst);
    // About 4 MB were left beside `held`: at most four answers fit, and only those were built.
    assert!((1..=4).contains(&built), "{built} built");
    assert_eq!(outcome.output, format!("{built} {} true\n", 20 - built));
    assert_eq!(mock.calls(), 20);
    assert!(repl.execute("print(a[19])").output.contains("--max-memory"));
    // One query is bounded the same way: what the variables leave. (`a` is freed first, so
    // the block itself stays within the budget whatever the allocator kept from earlier.)
    let outcome =
        repl.execute("a = (); let big = \"\"; big.pad(3145728, 'b'); print(llm_query(\"q\"));");
    assert!(
        outcome.output.starts_with("Error: the memory budget"),
        "{}",
        outcome.output
    );
    assert_eq!(repl.execute("print(held.len())").output, "2097152\n");
}
