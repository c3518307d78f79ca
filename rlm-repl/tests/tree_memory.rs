//! `max_memory` is one budget for the tree of runs, like the other budgets: what a parent's
//! variables hold leaves less for its children's. (Alone in its test binary: the budget is
//! also checked against the process's resident memory, which other tests would move.)

mod common;

use common::{BuildOk, builder, fence, run_ok};
use rlm_core::mock::MockBackend;
use rlm_repl::{Context, SandboxLimits};

const MB: usize = 1 << 20;

#[tokio::test]
async fn a_childs_variables_count_against_the_trees_memory_budget() {
    // The parent holds 24 MB, then starts a child that keeps 12 MB: 36 MB in the tree, over
    // the budget of 32 MB. The child's model says whether its variable was kept.
    let models = MockBackend::from_fn(|request| {
        let first = request
            .messages
            .iter()
            .find(|m| m.role == rlm_core::Role::User)
            .map(|m| m.content.to_string())
            .unwrap_or_default();
        let turn = request
            .messages
            .iter()
            .filter(|m| m.role == rlm_core::Role::Assistant)
            .count();
        let last = request
            .messages
            .last()
            .map(|m| m.content.to_string())
            .unwrap_or_default();
        Ok(match (first.starts_with("Query: child"), turn) {
            // Each block grows the process by well under the budget (a string being padded
            // may briefly take twice its size).
            (false, _) => [
                fence(&format!("let a = \"\"; a.pad({}, 'a');", 12 * MB)),
                fence(&format!("let b = \"\"; b.pad({}, 'b');", 12 * MB)),
                fence("let answer = rlm_query(\"child\", \"x\");\nFINAL(answer);"),
            ]
            .join("\n"),
            (true, 0) => fence(&format!(
                "let mine = \"\"; mine.pad({}, 'c');\nprint(mine.len());",
                12 * MB
            )),
            (true, _) if last.contains("over the memory budget") => "FINAL(removed)".to_owned(),
            (true, _) => "FINAL(kept)".to_owned(),
        })
    });
    let sub = MockBackend::echo();
    let rlm = builder(&models, &sub)
        .child_model("root")
        .sandbox(SandboxLimits {
            max_memory: 32 * MB,
            ..SandboxLimits::default()
        })
        .build_ok();
    let result = run_ok(&rlm, "top", Context::from("x")).await;
    assert_eq!(result.answer, "removed", "{:?}", result.trajectory);
    // The parent's blocks all ran: the budget refused the child's variable, not the parent's.
    assert_eq!(result.iterations, 1, "{:?}", result.trajectory);
}
