//! Flags to the host layer's settings.

use rlm_host::context::{self, LoadOptions};

use crate::cli::{ContextFormat, RunArgs};

impl From<ContextFormat> for context::ContextFormat {
    fn from(format: ContextFormat) -> Self {
        match format {
            ContextFormat::Auto => context::ContextFormat::Auto,
            ContextFormat::Text => context::ContextFormat::Text,
            ContextFormat::Json => context::ContextFormat::Json,
            ContextFormat::Jsonl => context::ContextFormat::Jsonl,
        }
    }
}

/// How `--context` (and `rlm mcp`'s paths) are read: `--context-format`,
/// `--no-file-headers`, `--max-context-bytes`.
pub(crate) fn load_options(args: &RunArgs) -> LoadOptions {
    LoadOptions {
        format: args.context_format.into(),
        file_headers: !args.no_file_headers,
        max_bytes: args.max_context_bytes,
    }
}
