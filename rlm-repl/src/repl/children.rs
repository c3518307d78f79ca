//! The seam between the sandbox and the loop that owns it.
//!
//! `rlm_query` and `rlm_batch` start child runs, but the sandbox knows nothing of runs,
//! models or prompts: the loop implements [`ChildRunner`] and hands one to the REPL where
//! recursion is allowed. Without one, `rlm_query` is a plain `llm_query`.

use std::future::Future;
use std::pin::Pin;

use rhai::Dynamic;

/// What a child run gives the parent's script, once it ends: its final answer, or an
/// `Error: ...` string saying why there is none.
pub(crate) type ChildAnswer = Pin<Box<dyn Future<Output = String> + Send>>;

/// Starts child runs for `rlm_query` / `rlm_batch`.
pub(crate) trait ChildRunner: Send + Sync {
    /// Starts a child run with `query` as its task over `context` (a value of the parent's
    /// scope, shared, not copied). Children are started in the order the script gave them,
    /// so their ids follow that order; the returned future runs the child to its end.
    fn run_child(&self, query: String, context: Dynamic) -> ChildAnswer;
}
