//! Helpers respect the sandbox's size limits while they build a result, not only after: a
//! result that would be too large fails before it is allocated. Measured as the process's
//! peak memory (Linux), one case at a time.
#![cfg(target_os = "linux")]

use rlm_repl::{Context, Repl, SandboxLimits};

/// A line of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// How far the process's peak memory rose above its current use while `f` ran; `None` where
/// the peak cannot be reset.
fn peak_growth<T>(f: impl FnOnce() -> T) -> Option<(T, usize)> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    let before = status_bytes("VmRSS")?;
    let value = f();
    let peak = status_bytes("VmHWM")?;
    Some((value, peak.saturating_sub(before)))
}

/// The cases: a name, the context and the code. Each would build at least 100 MiB (some many
/// GiB) without the check.
fn cases() -> Vec<(&'static str, String, &'static str)> {
    const MIB: usize = 1 << 20;
    let lines = "0123456789abcdefghijklmnopqrstuvwxyz01\n".repeat(5_000); // 195 KB
    let letters = "a".repeat(100_000);
    vec![
        (
            "grep with a huge context",
            lines,
            "grep(context, \"\", 1000000000)",
        ),
        (
            "chunk with overlap",
            letters.clone(),
            "chunk(context, 10000, 9999)",
        ),
        (
            "join with a long separator",
            letters.clone(),
            "join(range(10000), context)",
        ),
        (
            "regex_replace",
            letters.clone(),
            "let s = context.sub_string(0, 10000); regex_replace(context, \"\", s)",
        ),
        (
            "replace",
            letters,
            "let s = context.sub_string(0, 10000); let t = context.sub_string(0); \
             t.replace(\"a\", s)",
        ),
        (
            "chunk of single characters",
            "x".repeat(2 * MIB),
            "chunk(context, 1)",
        ),
        ("lines", "\n".repeat(2 * MIB), "lines(context)"),
        (
            "chunk_lines",
            "\n".repeat(2 * MIB),
            "chunk_lines(context, 1)",
        ),
        (
            "regex_find_all",
            "x".repeat(2 * MIB),
            "regex_find_all(context, \".\")",
        ),
        (
            "regex_split",
            "x".repeat(2 * MIB),
            "regex_split(context, \"\")",
        ),
        ("split", "x ".repeat(MIB), "split(context)"),
    ]
}

/// Set in the child processes: the case to run.
const CASE: &str = "RLM_LIMITS_CASE";

#[test]
fn oversized_helper_results_fail_before_they_are_built() {
    // Freed memory stays with the process, so each case runs in a fresh one.
    let Ok(case) = std::env::var(CASE) else {
        for (index, (name, ..)) in cases().iter().enumerate() {
            let output = std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "oversized_helper_results_fail_before_they_are_built",
                    "--nocapture",
                ])
                .env(CASE, index.to_string())
                .output()
                .expect("the test binary runs");
            assert!(
                output.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        return;
    };
    const MIB: usize = 1 << 20;
    let limits = SandboxLimits {
        max_string_size: MIB,
        max_array_size: 10_000,
        ..SandboxLimits::default()
    };
    let index: usize = case.parse().expect("a case number");
    let (name, context, code) = cases().swap_remove(index);
    let mut repl = Repl::builder(Context::from(context)).limits(limits).build();
    let Some((outcome, growth)) = peak_growth(|| repl.execute(code)) else {
        println!("peak memory cannot be measured here: skipped");
        return;
    };
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("too large"), "{name}: {error}");
    assert!(
        growth < 32 * MIB,
        "{name}: peak memory rose by {} MiB",
        growth / MIB
    );
}
