//! Times the REPL's native helpers on a 100 MB context: loading it, chunking it, building
//! 1,000 prompts in script code, searching it, and a 1,000-prompt `llm_batch` against a mock
//! with no latency (the engine's own overhead), and script loops that grow an array to a
//! million items.
//!
//! Run with `cargo bench -p rlm-repl --bench helpers`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rlm_core::mock::MockBackend;
use rlm_repl::{Context, Repl};

fn time<T>(label: &str, f: impl FnOnce() -> T) -> T {
    let started = Instant::now();
    let value = f();
    report(label, started.elapsed());
    value
}

fn report(label: &str, elapsed: Duration) {
    println!("{label:<58} {:>9.1} ms", elapsed.as_secs_f64() * 1000.0);
}

fn main() {
    const SIZE: usize = 100 << 20;
    let mut text = rlm_tests::fixtures::text_of_size(SIZE, 42);
    let middle = text.len() / 2;
    let at = text[middle..].find('\n').map_or(middle, |i| middle + i + 1);
    text.insert_str(at, "the secret number is 4217\n");
    println!("context: {} bytes", text.len());

    let sub = MockBackend::from_fn(|request| {
        Ok(request.last_user_message().map_or(0, str::len).to_string())
    });
    let mut repl = time("load the context (build the REPL)", || {
        Repl::builder(Context::from(text))
            .sub_backend(Arc::new(sub), "sub")
            .max_concurrent(64)
            .build()
    });

    let steps = [
        ("context.len() (characters)", "let n = context.len();"),
        (
            "chunk(context, 100000) -> 1,000+ chunks",
            "let chunks = chunk(context, 100000);",
        ),
        (
            "chunk(context, 100000, 1000) (with overlap)",
            "let overlapped = chunk(context, 100000, 1000);",
        ),
        (
            "1,000 prompts via chunks.map(|c| \"...\" + c)",
            "let prompts = chunks.map(|c| \"Find the secret number. Answer NONE if absent.\\n\\n\" + c);",
        ),
        (
            "1,000 prompts via a for loop with push",
            "let pushed = []; for c in chunks { pushed.push(`Find the number in:\n${c}`); }",
        ),
        (
            "chunk_lines(context, 10000)",
            "let blocks = chunk_lines(context, 10000);",
        ),
        (
            "lines(context).len() (1.3 M lines)",
            "let line_count = lines(context).len();",
        ),
        (
            "grep(context, \"secret number\")",
            "let hits = grep(context, \"secret number\");",
        ),
        (
            "regex_count(context, \"(?i)river\")",
            "let rivers = regex_count(context, \"(?i)river\");",
        ),
        (
            "context.contains(\"secret number\")",
            "let has = context.contains(\"secret number\");",
        ),
        (
            "llm_batch(1,000 prompts of 100 KB) on a zero-latency mock",
            "let answers = llm_batch(prompts);",
        ),
    ];
    for (label, code) in steps {
        let outcome = time(label, || repl.execute(code));
        if let Some(error) = outcome.error {
            println!("  error: {error}");
        }
    }
    // Plain script loops over growing arrays: each step must cost the same however long the
    // array already is (no re-measuring of the whole array per call).
    let loops = [
        (
            "80,000 pushes in a for loop",
            "let p80 = []; for i in 0..80000 { p80.push(i); }",
        ),
        (
            "1,000,000 pushes in a for loop",
            "let xs = []; for i in 0..1000000 { xs.push(i); }",
        ),
        (
            "1,000,000-step `while i < xs.len()` loop",
            "let i = 0; let total = 0; while i < xs.len() { total += xs[i]; i += 1; }",
        ),
        (
            "1,000,000 `+=` appends to an array",
            "let ys = []; for i in 0..1000000 { ys += i; }",
        ),
    ];
    for (label, code) in loops {
        let outcome = time(label, || repl.execute(code));
        if let Some(error) = outcome.error {
            println!("  error: {error}");
        }
    }
    let check = repl.execute(
        "print(chunks.len()); print(prompts.len()); print(hits.len()); print(answers.len()); print(answers[0]); print(xs.len()); print(total); print(ys.len());",
    );
    println!("check: {}", check.output.replace('\n', " "));
}
