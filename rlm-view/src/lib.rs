//! `rlm view`: one self-contained HTML page from an rlm `--trace` file.
//!
//! The page has every script and style inline and loads nothing (it opens from `file://`
//! with no network). It shows:
//!
//! - the summary: query, answer, stop reason, warnings, models, turns, sub-calls (failed,
//!   cached, unfinished), tokens and cost per model, wall time, the peak of sub-calls in
//!   flight;
//! - the turns of each run: the root model's reply with its code highlighted, each block's
//!   output and error as the model was shown them, answers held or not accepted;
//! - a timeline of every sub-call against wall time, one row per call grouped by batch
//!   (drawn on a canvas, only the visible rows, so 100,000 calls stay responsive), above a
//!   curve of the calls in flight;
//! - the recursion tree, when the trace has runs below the root (events with `depth` and
//!   `run` ids such as `"0.3.1"`), each child expandable to its own turns.
//!
//! A trace cut short (a killed run, a partial last line) still renders, with a notice.
//! Cost comes from the trace's `final` event (`cost_usd`), or, for traces without one, from
//! the [`Prices`] given in [`ViewOptions`].
//!
//! ```
//! use rlm_view::{ViewOptions, render, synth};
//!
//! let trace = synth::trace(&synth::SynthOptions { sub_calls: 50, ..Default::default() });
//! let page = render(&trace, &ViewOptions::default()).unwrap();
//! assert!(page.html.starts_with("<!DOCTYPE html>"));
//! assert_eq!(page.sub_calls, 50);
//! ```

mod model;
pub mod synth;

use std::path::{Path, PathBuf};

use rlm_core::cost::Prices;

/// The page's frame; `{{title}}`, `{{style}}`, `{{script}}` and `{{data}}` are filled in.
const TEMPLATE: &str = include_str!("../assets/view.html");
const STYLE: &str = include_str!("../assets/view.css");
const SCRIPT: &str = include_str!("../assets/view.js");

/// How to render a page.
#[derive(Debug, Clone)]
pub struct ViewOptions {
    /// The page title (default: "rlm trace").
    pub title: Option<String>,
    /// Prices for traces whose `final` event has no `cost_usd` (default: the built-in table).
    pub prices: Prices,
}

impl Default for ViewOptions {
    fn default() -> Self {
        Self {
            title: None,
            prices: Prices::builtin(),
        }
    }
}

/// A rendered page and what went into it.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The whole HTML document.
    pub html: String,
    /// Trace events read.
    pub events: usize,
    /// Sub-calls shown in the timeline.
    pub sub_calls: usize,
    /// Runs (1 without recursion).
    pub runs: usize,
    /// What the page warns about: a cut trace, skipped lines, a run without a final event,
    /// shortened previews.
    pub notices: Vec<String>,
}

/// Why no page could be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ViewError {
    /// The trace could not be read.
    #[error("cannot read the trace {path}: {source}")]
    Read {
        /// The trace file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The page could not be written.
    #[error("cannot write the page {path}: {source}")]
    Write {
        /// The HTML file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The page would be written over the trace it shows (`-o` names the trace itself, a
    /// link to it, or a hard link).
    #[error("the page {out} would replace the trace {trace}: choose another output file")]
    SameFile {
        /// The trace.
        trace: PathBuf,
        /// The page's path.
        out: PathBuf,
    },
    /// The trace is larger than [`MAX_TRACE_BYTES`] (or endless, like `/dev/zero`).
    #[error("the trace {path} is larger than {limit} bytes, the most `rlm view` reads")]
    TooLarge {
        /// The trace file.
        path: PathBuf,
        /// The limit in bytes.
        limit: u64,
    },
    /// Not one line was a trace event.
    #[error("{what} holds no trace events (JSON objects, one a line, as `rlm run --trace` writes)")]
    NoEvents {
        /// The trace, for the message.
        what: String,
    },
    /// The view model could not be serialized (a bug).
    #[error("cannot serialize the page data: {0}")]
    Serialize(String),
}

/// The most bytes [`render_file`] reads from a trace: 2 GiB (a trace of 100,000 sub-calls is
/// about 43 MB).
pub const MAX_TRACE_BYTES: u64 = 2 << 30;

/// Renders the trace `text` (JSON Lines) as one HTML page.
///
/// # Errors
/// [`ViewError::NoEvents`] when no line is a trace event; [`ViewError::Serialize`] on a bug.
pub fn render(text: &str, options: &ViewOptions) -> Result<Rendered, ViewError> {
    let title = options
        .title
        .clone()
        .unwrap_or_else(|| "rlm trace".to_owned());
    let gathered = model::gather(text, title.clone(), &options.prices);
    let Some(view) = gathered.view else {
        return Err(ViewError::NoEvents {
            what: "the trace".to_owned(),
        });
    };
    let data = serde_json::to_string(&view).map_err(|e| ViewError::Serialize(e.to_string()))?;
    // The data sits in a <script> element: no `</script>` or `<!--` may appear in it. JSON
    // has `<` only inside strings, where `\u003c` means the same.
    let data = data.replace('<', "\\u003c");
    let html = fill(
        TEMPLATE,
        &[
            ("title", &escape_html(&title)),
            ("style", STYLE),
            ("script", SCRIPT),
            ("data", &data),
        ],
    );
    Ok(Rendered {
        html,
        events: gathered.events,
        sub_calls: view.calls.id.len(),
        runs: view.runs.len(),
        notices: view.notices,
    })
}

/// Reads the trace at `trace`, renders it and writes the page to `out`.
///
/// Invalid UTF-8 in the trace is replaced (U+FFFD).
///
/// # Errors
/// [`ViewError::Read`], [`ViewError::Write`], or those of [`render`].
pub fn render_file(trace: &Path, out: &Path, options: &ViewOptions) -> Result<Rendered, ViewError> {
    let read_error = |source| ViewError::Read {
        path: trace.to_owned(),
        source,
    };
    // Only a regular file of at most MAX_TRACE_BYTES is read: a special file such as
    // /dev/zero must not eat the machine's memory.
    // Checked before opening: opening a FIFO for reading blocks until a writer comes.
    let metadata = std::fs::metadata(trace).map_err(read_error)?;
    if !metadata.is_file() {
        return Err(read_error(not_a_file()));
    }
    if same_file(trace, out) {
        return Err(ViewError::SameFile {
            trace: trace.to_owned(),
            out: out.to_owned(),
        });
    }
    let file = open_regular(trace).map_err(read_error)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(file, MAX_TRACE_BYTES + 1),
        &mut bytes,
    )
    .map_err(read_error)?;
    if metadata.len() > MAX_TRACE_BYTES || bytes.len() as u64 > MAX_TRACE_BYTES {
        return Err(ViewError::TooLarge {
            path: trace.to_owned(),
            limit: MAX_TRACE_BYTES,
        });
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut options = options.clone();
    if options.title.is_none() {
        options.title = trace
            .file_name()
            .map(|name| format!("rlm trace: {}", name.to_string_lossy()));
    }
    let rendered = render(&text, &options).map_err(|e| match e {
        ViewError::NoEvents { .. } => ViewError::NoEvents {
            what: trace.display().to_string(),
        },
        other => other,
    })?;
    std::fs::write(out, &rendered.html).map_err(|source| ViewError::Write {
        path: out.to_owned(),
        source,
    })?;
    Ok(rendered)
}

fn not_a_file() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "not a regular file (a trace is a file that `rlm run --trace` wrote)",
    )
}

/// Opens `path` for reading only if it is a regular file. On Unix the open does not wait
/// for a writer (a FIFO swapped in after the check), and the opened file is checked again.
fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    if !file.metadata()?.is_file() {
        return Err(not_a_file());
    }
    Ok(file)
}

/// Whether writing `out` would replace `trace` (the same path, a link to it, a hard link).
fn same_file(trace: &Path, out: &Path) -> bool {
    let (Ok(a), Ok(b)) = (std::fs::canonicalize(trace), std::fs::canonicalize(out)) else {
        return false;
    };
    if a == b {
        return true;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(a), Ok(b)) = (std::fs::metadata(&a), std::fs::metadata(&b)) {
            return a.dev() == b.dev() && a.ino() == b.ino();
        }
    }
    false
}

/// Where `rlm view TRACE` writes by default: beside the trace, `.html` for its extension
/// (`runs/t.jsonl` → `runs/t.html`).
pub fn default_output(trace: &Path) -> PathBuf {
    if trace
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("html"))
    {
        // Never the trace itself.
        return trace.with_extension("view.html");
    }
    trace.with_extension("html")
}

/// `template` with each `{{name}}` replaced by its value. Only the template is searched for
/// placeholders, never a value put in (a title or trace holding `{{data}}` stays text).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let extra: usize = values.iter().map(|(_, value)| value.len()).sum();
    let mut out = String::with_capacity(template.len() + extra);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let (before, from) = rest.split_at(start);
        out.push_str(before);
        let found = from[2..].find("}}").and_then(|end| {
            let name = &from[2..2 + end];
            values
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (value, 2 + end + 2))
        });
        match found {
            Some((value, used)) => {
                out.push_str(value);
                rest = &from[used..];
            }
            None => {
                out.push_str("{{");
                rest = &from[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_page_sits_beside_the_trace() {
        assert_eq!(
            default_output(Path::new("runs/t.jsonl")),
            PathBuf::from("runs/t.html")
        );
        assert_eq!(
            default_output(Path::new("trace")),
            PathBuf::from("trace.html")
        );
        assert_eq!(
            default_output(Path::new("t.html")),
            PathBuf::from("t.view.html")
        );
    }

    #[test]
    fn titles_are_escaped() {
        assert_eq!(escape_html("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
