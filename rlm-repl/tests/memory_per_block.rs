//! The memory budget while a block runs, with the counting allocator (as in the `rlm` binary):
//! a block is charged with what its own thread allocates, not with what other blocks running
//! in the same process do (the runs of `rlm serve` and `rlm batch`). Before, the process's
//! resident memory was the measure, and one run that grew stopped every run's block.

use std::sync::{Arc, mpsc};
use std::time::Duration;

use rlm_core::mock::MockBackend;
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

/// A block growing as fast as it can (1 MB an iteration, no pause) is stopped by its own
/// thread within a few operations of its budget: it does not wait for the watchdog's thread,
/// which a loaded machine may leave without a core for longer than the growth takes.
#[test]
fn a_block_growing_fast_is_stopped_near_its_budget() {
    let mut repl = repl("fast");
    let outcome = repl.execute(
        "let line = \"\"; line.pad(1000000, \"x\"); let all = []; \
         for i in 0..300 { all.push(line + i); print(all.len()); }",
    );
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("memory"), "{error}");
    // The last count printed before the stop. Each item holds about 2 MB (`line + i` copies
    // `line` and grows the copy), so the 64 MB budget is reached at about 32 items; the
    // block's own check runs every 32 operations, a few iterations. (With only the
    // watchdog's look every 10 ms, 39 to 42 on an idle machine, more on a loaded one.)
    let last: usize = outcome
        .output
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .max()
        .unwrap_or(0);
    assert!(last <= 37, "grew to {last} items before the stop");
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

/// A REPL whose sub-calls run on `runtime`'s threads (as in the binary), answered by `sub`,
/// which keeps every request it was sent (as the cache keeps its keys).
fn repl_with_sub(runtime: &tokio::runtime::Runtime, sub: Arc<MockBackend>, budget: usize) -> Repl {
    Repl::builder(Context::from("ctx"))
        .limits(SandboxLimits {
            max_memory: budget,
            max_string_size: 16 * MB,
            block_timeout: Duration::from_secs(600),
            ..SandboxLimits::default()
        })
        .sub_backend(sub, "sub")
        .runtime_handle(runtime.handle().clone())
        .build()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// 20 rounds of 8 prompts of 256 KB (512 KB buffers) against a 16 MB budget, through a mock
/// that keeps every request (as the cache keeps its keys); with `keep`, the script keeps
/// each round's prompts too. Each round's script time has a pause, so that the watchdog
/// looks at the growth even on a loaded machine.
fn prompt_rounds(keep: bool) -> (rlm_repl::BlockOutcome, Arc<MockBackend>) {
    let runtime = runtime();
    let sub = Arc::new(MockBackend::from_fn(|_| Ok("ok".to_owned())));
    let mut repl = repl_with_sub(&runtime, Arc::clone(&sub), 16 * MB);
    let kept = if keep { "kept.push(ps);" } else { "" };
    let outcome = repl.execute(&format!(
        "let big = \"\"; big.pad(256000, 'x'); let kept = []; let refused = 0; \
         for r in 0..20 {{ let ps = []; for i in 0..8 {{ ps.push(big + \" \" + r + \" \" + i); }} \
         let answers = llm_batch(ps); sleep(0.02); {kept} \
         refused += answers.filter(|a| a.starts_with(\"Error:\")).len(); }} \
         print(`done, ${{refused}} refused`);"
    ));
    (outcome, sub)
}

/// Rounds of large prompts, each round's dropped by the script: the requests' side (here the
/// mock, as the cache would) keeps them, but the script does not. Before, every prompt sent
/// stayed on the block's meter: 20 rounds of 2 MB against a 16 MB budget were stopped in the
/// eighth round, for memory the script no longer held.
#[test]
fn prompts_the_script_let_go_of_are_not_its_memory() {
    let (outcome, sub) = prompt_rounds(false);
    assert_eq!(outcome.error, None);
    // Nor do they take the answers' room.
    assert_eq!(outcome.output, "done, 0 refused\n");
    assert_eq!(sub.calls(), 160);
    // The mock still holds every prompt: the memory is held, only not by the script.
    assert!(
        sub.requests()
            .iter()
            .all(|r| r.last_user_message().is_some_and(|p| p.len() > 256000))
    );
}

/// The same rounds, with the script keeping every prompt: those are its memory, and the block
/// is stopped.
#[test]
fn prompts_the_script_keeps_are_still_its_memory() {
    let (outcome, sub) = prompt_rounds(true);
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("memory"), "{error}");
    assert!(sub.calls() < 160, "{}", sub.calls());
}

/// Answers are built on the runtime's threads; freed by the script on its own thread, they
/// took off its growth memory it was never charged with. Before, after dropping 64 answers
/// of 1 MB, a block grew 60 MB against a 16 MB budget unstopped.
#[test]
fn answers_the_script_dropped_do_not_make_room_past_the_budget() {
    let runtime = runtime();
    let sub = Arc::new(MockBackend::from_fn(|_| Ok("a".repeat(MB))));
    let mut repl = repl_with_sub(&runtime, sub, 16 * MB);
    let outcome = repl.execute(
        "for r in 0..64 { let answer = llm_query(\"q\" + r); } \
         let s = \"\"; s.pad(1000000, 'x'); let all = []; \
         for i in 0..60 { all.push(s + i); print(`kept ${all.len()}`); sleep(0.01); }",
    );
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("memory"), "{error}");
    // Each string holds 2 MB (`s + i` doubles the copy's buffer as it appends): stopped at
    // the ninth at the earliest, and well before the fortieth, where a block with 64 MB of
    // answers wrongly taken off its growth would stop. Each step pauses 10 ms, the
    // watchdog's period, so a late look costs a step or two, not twenty.
    let kept: usize = outcome
        .output
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("kept ")?.parse().ok())
        .unwrap_or(0);
    assert!(
        (8..30).contains(&kept),
        "{kept} strings of 2 MB kept against a 16 MB budget"
    );
}

/// Answers count against the budget while the script holds them, not after it dropped them.
/// Before, every answer a block received stayed counted until the block ended: 30 rounds of
/// eight 1 MB answers, each round's dropped, against a 16 MB budget had most of the
/// answers refused ("received and paid for, but ... not kept"): 224 of 240.
#[test]
fn answers_the_script_dropped_leave_room_for_the_next() {
    let runtime = runtime();
    let sub = Arc::new(MockBackend::from_fn(|_| Ok("a".repeat(MB))));
    let mut repl = repl_with_sub(&runtime, Arc::clone(&sub), 16 * MB);
    let outcome = repl.execute(
        "let refused = 0; \
         for r in 0..30 { let answers = llm_batch(range(8).map(|i| `q${r} ${i}`)); \
         refused += answers.filter(|a| a.starts_with(\"Error:\")).len(); } \
         print(`refused ${refused}`);",
    );
    assert_eq!(outcome.error, None);
    assert_eq!(outcome.output, "refused 0\n");
    assert_eq!(sub.calls(), 240);
    // What the script keeps still counts: three rounds kept (24 MB) do not fit in 16 MB.
    // Either the third round's answers are refused, or (when the watchdog looks while the
    // second round's answers are being copied for the script) the block is stopped.
    let outcome = repl.execute(
        "let kept = []; let refused = 0; \
         for r in 0..3 { let answers = llm_batch(range(8).map(|i| `k${r} ${i}`)); \
         refused += answers.filter(|a| a.starts_with(\"Error:\")).len(); kept.push(answers); } \
         print(`refused ${refused}`);",
    );
    match outcome.error {
        Some(error) => assert!(error.contains("memory budget"), "{error}"),
        None => {
            let refused: usize = outcome
                .output
                .trim()
                .strip_prefix("refused ")
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("{}", outcome.output));
            assert!(refused >= 8, "{}", outcome.output);
        }
    }
}
