//! The sandboxed Rhai REPL and the Recursive Language Model loop of **rlm**.
//!
//! (Crate documentation to be completed with the implementation.)

mod config;
mod context;
mod error;
mod events;
mod result;
mod rlm;

pub use config::{RlmConfig, SandboxLimits};
pub use context::{Context, ContextInfo};
pub use error::RlmError;
pub use events::{Event, Observer};
pub use result::{BlockRecord, RunResult, StopReason, SubCallRecord, Turn};
pub use rlm::{Rlm, RlmBuilder};
