//! The memory budget while a block runs: the process's resident memory may not grow by more
//! than the budget during one block. Alone in its test binary, so that no other test's
//! allocations count.
#![cfg(target_os = "linux")]

use std::time::Duration;

use rlm_repl::{Context, Repl, SandboxLimits};

#[test]
fn a_block_whose_memory_grows_past_the_budget_is_stopped() {
    const MB: usize = 1 << 20;
    let mut repl = Repl::builder(Context::from("ctx"))
        .limits(SandboxLimits {
            max_memory: 64 * MB,
            max_string_size: 16 * MB,
            block_timeout: Duration::from_secs(120),
            ..SandboxLimits::default()
        })
        .build();
    // Before: 40 variables of 128 MB each, every one within the string limit, took 5.3 GiB
    // in one block. Here: 400 of 8 MB against a 64 MB budget.
    let outcome = repl.execute(
        "let s = \"\"; s.pad(8000000, 'x'); let all = []; \
         for i in 0..400 { all.push(s + i); }",
    );
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("memory"), "{error}");
    assert!(
        error.contains("The largest variables now: `all`"),
        "{error}"
    );
    assert!(repl.execute("print(1)").output == "1\n");
}
