//! Runnable examples of the rlm crates. Each runs offline unless `OPENAI_API_KEY` is set:
//!
//! ```text
//! cargo run -p rlm-examples --example batch           # llm_batch over chunks; sequential vs batch
//! cargo run -p rlm-examples --example custom_backend  # your own provider in a few lines
//! cargo run -p rlm-examples --example library         # OpenAI backend + cache + observers
//! ```
//!
//! The sources are in this package's `examples/` directory. Offline, `batch` and `library`
//! start a loopback OpenAI-compatible server on 127.0.0.1 with a scripted root model, so the
//! whole HTTP stack runs; `custom_backend` needs no server at all.
