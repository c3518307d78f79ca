//! `rlm view TRACE.jsonl [-o FILE.html]`: the trace as one self-contained HTML page.

use rlm_view::{ViewError, ViewOptions};

use crate::cli::ViewArgs;
use crate::error::{CliError, exit};
use crate::output::write_stdout;

/// Writes the page and prints its path on stdout; returns the exit status.
pub(crate) fn view(args: &ViewArgs) -> Result<u8, CliError> {
    let prices = rlm_host::prices::load(args.prices.as_deref())?;
    let out = args
        .output
        .clone()
        .unwrap_or_else(|| rlm_view::default_output(&args.trace));
    let options = ViewOptions {
        title: None,
        prices,
    };
    let page = rlm_view::render_file(&args.trace, &out, &options).map_err(|e| match e {
        ViewError::Serialize(_) => CliError::Internal(e.to_string()),
        other => CliError::Input(other.to_string()),
    })?;
    if !args.quiet {
        for notice in &page.notices {
            eprintln!("note: {notice}");
        }
        eprintln!(
            "rlm: {}, {} from code, {}; page of {}",
            crate::human::count(page.events as u64, "event"),
            crate::human::count(page.sub_calls as u64, "sub-call"),
            crate::human::count(page.runs as u64, "run"),
            crate::human::count(page.html.len() as u64, "byte")
        );
    }
    write_stdout(&format!("{}\n", out.display()))?;
    Ok(exit::OK)
}
