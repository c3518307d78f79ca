//! What every rlm front end shares: the `rlm` command, `rlm serve`, `rlm mcp`, and next
//! `rlm batch`, `rlm worker` and the Python package.
//!
//! - [`context`]: loading a context (a file, a directory of documents, JSON, JSON Lines,
//!   stdin) within a byte bound, with the symlink and dot-file rules, and
//!   [`AllowedRoots`](context::AllowedRoots) for a server that reads paths its clients name.
//!
//! The main types of the crates below are re-exported, so a front end can depend on this
//! crate alone (as `tower` stands beside `tower-service`).
//!
//! ```
//! use rlm_host::{Context, context};
//!
//! let loaded = context::load(Some("-"), &context::LoadOptions::default(), &b"some text"[..])?;
//! assert_eq!(loaded.context, Context::Text("some text".into()));
//! assert!(loaded.warnings.is_empty());
//! # Ok::<(), rlm_host::HostError>(())
//! ```

pub mod context;
mod error;

pub use error::HostError;

pub use rlm_repl::{Context, SharedContext};
