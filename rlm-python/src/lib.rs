//! The `rlm-rs` Python package (import `rlm_rs`): the rlm engine in-process for Python,
//! built with PyO3 (abi3: one wheel per platform for every Python from 3.9) and maturin.
//!
//! This crate is the extension module `rlm_rs._rlm_rs`; the package around it
//! (`python/rlm_rs/`) re-exports its names and ships the type stubs. What it offers:
//!
//! - `RLM(model, sub_model=None, *, base_url=None, api_key=None, tools=None, backend=None,
//!   **limits)`: settings (the keywords are `rlm run`'s flags with underscores) and the
//!   host layer's backend stack ([`rlm_host::Stack`]: pacing, retries, the sub-call cache),
//!   shared by its runs. `completion(context, query)` and `await acompletion(...)` return a
//!   `Result`.
//! - `batch(jobs, max_runs=8)` / `await abatch(...)`: `JOBS.jsonl`-style dicts run through
//!   [`rlm_host::batch::JobRunner`] on the RLM's own stack, one `Result` per job in order.
//! - `tools={"name": fn}`: Python functions the REPL calls with JSON-like values, through
//!   [`rlm_host::RlmBuilder::tool`]; `backend=fn`: a Python callable as the
//!   [`rlm_core::LlmBackend`] of every call.
//! - `batch_completion(prompts, model, ...)` / `abatch_completion`: the stack's bounded,
//!   ordered, paced, retried and cached batch for plain prompts.
//! - `RlmError` and its subclasses, one per `rlm --json` error kind.
//!
//! Runs happen on one tokio runtime per process; Python waits for them with the GIL
//! released (handling Ctrl-C: the run is cancelled and `KeyboardInterrupt` raised) or, in
//! `acompletion`, as an `asyncio` future of the running loop. Python tools and backends are
//! called on blocking threads with the GIL held only while Python runs; an async one's
//! coroutine runs on the package's own event-loop thread (`rlm_rs._aio`).
//!
//! Building: `maturin build --release -m rlm-python/Cargo.toml` (see the README's "Python"
//! section). No Rust test binary links Python: the tests are pytest files
//! (`rlm-python/tests/`), driven by `tests/python.rs` under `cargo test`.

use pyo3::prelude::*;

/// The system allocator, counting what each REPL block's thread allocates (see `rlm_alloc`):
/// a block's memory budget is charged with that block's growth, not every run's.
#[global_allocator]
static ALLOCATOR: rlm_alloc::Counting = rlm_alloc::Counting;

mod backend;
mod batch;
mod callback;
mod convert;
mod errors;
mod jobs;
mod options;
mod result;
mod rlm;
mod session;
mod tools;
mod wait;

/// The extension module `rlm_rs._rlm_rs`.
#[pymodule]
fn _rlm_rs(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<rlm::PyRlm>()?;
    m.add_class::<result::PyResult_>()?;
    m.add_class::<session::PySession>()?;
    m.add_function(wrap_pyfunction!(batch::batch_completion, m)?)?;
    m.add_function(wrap_pyfunction!(batch::abatch_completion, m)?)?;
    m.add("RlmError", py.get_type::<errors::RlmError>())?;
    m.add("UsageError", py.get_type::<errors::UsageError>())?;
    m.add("InputError", py.get_type::<errors::InputError>())?;
    m.add("ServerError", py.get_type::<errors::ServerError>())?;
    m.add("AuthError", py.get_type::<errors::AuthError>())?;
    m.add("BudgetError", py.get_type::<errors::BudgetError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
