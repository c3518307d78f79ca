//! `--trace FILE`: the library's trace writer ([`rlm_repl::trace::TraceWriter`]), opened with
//! the CLI's error and warning wording.

use std::path::Path;
use std::time::Instant;

pub(crate) use rlm_repl::trace::TraceWriter;

use crate::error::CliError;

/// Creates (or truncates) the trace file `path`.
pub(crate) fn create(path: &Path, start: Instant) -> Result<TraceWriter, CliError> {
    TraceWriter::create(path, start).map_err(|e| {
        CliError::Input(format!(
            "cannot write the trace file {}: {e}",
            path.display()
        ))
    })
}

/// The first write error, if any, as a warning for stderr.
pub(crate) fn warning(writer: &TraceWriter) -> Option<String> {
    writer.error().map(|e| {
        format!(
            "the trace file {} is incomplete: writing failed after {} (the file ends with \
             the last whole line): {e}",
            writer.path().display(),
            crate::human::count(writer.lines(), "line")
        )
    })
}
