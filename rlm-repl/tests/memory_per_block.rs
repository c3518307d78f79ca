//! The memory budget while a block runs, with the counting allocator (as in the `rlm` binary):
//! a block is charged with what its own thread allocates, not with what other blocks running
//! in the same process do (the runs of `rlm serve` and `rlm batch`). Before, the process's
//! resident memory was the measure, and one run that grew stopped every run's block.

use std::sync::mpsc;
use std::time::Duration;

use rlm_repl::{Context, Repl, SandboxLimits};

#[global_allocator]
static ALLOCATOR: rlm_alloc::Counting = rlm_alloc::Counting;

const MB: usize = 1 << 20;

fn repl(name: &str) -> Repl {
    Repl::builder(Context::from(name))
        .limits(SandboxLimits {
            max_memory: 64 * MB,
            max_string_size: 16 * MB,
            block_timeout: Duration::from_secs(120),
            ..SandboxLimits::default()
        })
        .build()
}

#[test]
fn a_block_is_not_charged_with_another_blocks_growth() {
    let (started, wait_start) = mpsc::channel();
    let (grown, wait_grown) = mpsc::channel();
    // A block that waits while another grows past the budget, then checks in.
    let quiet = std::thread::spawn(move || {
        let mut quiet = repl("quiet");
        started.send(()).expect("the main thread listens");
        let mut outcomes = Vec::new();
        // Its blocks run while the other grows (a few of them: whichever overlaps counts).
        for _ in 0..3 {
            outcomes.push(quiet.execute("sleep(0.5); print(\"quiet done\");"));
            if wait_grown.try_recv().is_ok() {
                outcomes.push(quiet.execute("sleep(0.5); print(\"quiet done\");"));
                break;
            }
        }
        outcomes
    });
    wait_start.recv().expect("the quiet REPL is built");
    let mut big = repl("big");
    // 400 strings of 8 MB against a 64 MB budget: this block is stopped, by its own growth.
    let outcome = big.execute(
        "let s = \"\"; s.pad(8000000, 'x'); let all = []; \
         for i in 0..400 { all.push(s + i); }",
    );
    let _ = grown.send(());
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("memory"), "{error}");
    for outcome in quiet.join().expect("the quiet thread ends") {
        assert_eq!(outcome.error, None, "the quiet block was stopped");
        assert_eq!(outcome.output, "quiet done\n");
    }
}

#[test]
fn a_block_that_grows_is_still_stopped_when_alone() {
    let mut repl = repl("alone");
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
    assert_eq!(repl.execute("print(1)").output, "1\n");
}

/// Blocks starting in many threads at once are never stopped for memory they did not use.
/// Before, a watchdog look in the moment a block switched from the process's resident memory
/// to its thread's allocation meter read the meter's origin as growth past any budget.
#[test]
fn blocks_starting_at_once_are_not_stopped_for_memory() {
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut repl = repl(&format!("thread {t}"));
                (0..100)
                    .filter_map(|i| repl.execute(&format!("let x = {i} + 1; x")).error)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for thread in threads {
        let errors = thread.join().expect("the thread ends");
        assert!(errors.is_empty(), "{errors:?}");
    }
}
