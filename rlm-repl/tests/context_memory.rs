//! A context as large as the run was allowed to load must be workable with the natural code
//! (`chunk`, then `map` to prompts, then `llm_batch`) at the default memory budget: the
//! budget fitted to the context (`SandboxLimits::max_memory_fits_context`, the CLI's
//! `--max-memory auto`) holds the chunks and the prompts built from them. A budget given
//! explicitly still holds as given. (Alone in its test binary: the budget is also checked
//! against the process's resident memory, which other tests would move.)

mod common;

use common::{BuildOk, builder, fence, run_ok};
use rlm_core::mock::MockBackend;
use rlm_repl::{Context, Repl, SandboxLimits};

const MB: usize = 1 << 20;

/// The natural code: the context cut into chunks, each made into a prompt, all sent at once.
const NATURAL: &str = "let parts = chunk(context, 1000000);\n\
                       let prompts = parts.map(|c| \"Summarize this part:\\n\" + c);\n\
                       let answers = llm_batch(prompts);\n\
                       print(`${answers.len()} answers`);";

/// A text context of `bytes` bytes in short lines.
fn text(bytes: usize) -> String {
    let line = "a line of the log that the model must read through, then summarize\n";
    line.repeat(bytes / line.len() + 1)
}

/// Runs the natural code over a 48 MB context under a budget of 32 MB, fitted to the context
/// or not; returns the answer and the sub-calls made.
async fn natural_run(fits_context: bool) -> (String, usize) {
    let root = MockBackend::from_fn(|request| {
        let last = request
            .last_user_message()
            .map(|m| m.to_string())
            .unwrap_or_default();
        Ok(if last.contains("answers") || last.contains("memory") {
            "FINAL(done: see the output)".to_owned()
        } else {
            fence(NATURAL)
        })
    });
    let sub = MockBackend::from_fn(|_| Ok("a short summary".to_owned()));
    let rlm = builder(&root, &sub)
        .sandbox(SandboxLimits {
            max_memory: 32 * MB,
            max_memory_fits_context: fits_context,
            ..SandboxLimits::default()
        })
        .max_iterations(3)
        .build_ok();
    let result = run_ok(&rlm, "summarize", Context::from(text(48 * MB))).await;
    let seen = root
        .requests()
        .get(1)
        .and_then(|r| r.last_user_message().map(|m| m.to_string()))
        .unwrap_or_default();
    assert!(result.answer.starts_with("done"), "{:?}", result.trajectory);
    (seen, sub.calls())
}

#[tokio::test]
async fn the_natural_code_fits_a_budget_fitted_to_the_context_and_a_given_budget_holds() {
    // Fitted: 32 MB + 2 x 48 MB. Every chunk became a prompt and was answered.
    let (seen, calls) = natural_run(true).await;
    let chunks = (48 * MB).div_ceil(1_000_000);
    assert_eq!(calls, chunks, "the model saw: {seen}");
    assert!(seen.contains(&format!("{calls} answers")), "{seen}");
    // Given as 32 MB: the chunks and prompts (96 MB) do not fit; the model is told, and
    // nothing is sent.
    let (seen, calls) = natural_run(false).await;
    assert_eq!(calls, 0, "{seen}");
    assert!(seen.contains("memory"), "{seen}");

    // `map` over a temporary array lets go of each chunk once its prompt is built: the
    // block holds the prompts (48 MB) and never the chunks too (96 MB), within a given
    // budget of 72 MB.
    let mut repl = Repl::builder(Context::from(text(48 * MB)))
        .limits(SandboxLimits {
            max_memory: 72 * MB,
            ..SandboxLimits::default()
        })
        .build();
    let outcome = repl.execute(
        "let prompts = chunk(context, 1000000).map(|c| \"Summarize this part:\\n\" + c);\n\
         print(prompts.len());",
    );
    assert_eq!(outcome.error, None, "{}", outcome.output);
    assert_eq!(
        outcome.output.trim(),
        chunks.to_string(),
        "{}",
        outcome.output
    );
}
