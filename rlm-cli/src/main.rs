//! `rlm`: Recursive Language Models from the shell.
//!
//! `rlm run` answers a query over a context of any size: the context lives in a sandboxed
//! Rhai REPL, and a root model writes code that reads it and calls sub-models with
//! `llm_query` / `llm_batch`, against any OpenAI-compatible endpoint. `rlm demo` shows the
//! same job done with sequential `llm_query` and with `llm_batch`, offline. `rlm view` turns
//! a `--trace` file into one self-contained HTML page. `rlm batch` runs many jobs from a
//! JSON Lines file (resumable, one result line each), on one machine or, with `--queue`,
//! across `rlm worker` processes on Redis Streams.
//!
//! ```text
//! rlm run --model gpt-4o --sub-model gpt-4o-mini \
//!     --context ./docs --query "Which documents mention a refund, and why?"
//! rlm chat --model gpt-4o --context ./docs
//! rlm demo
//! rlm view run.jsonl
//! rlm batch jobs.jsonl --output results.jsonl --model gpt-4o --max-runs 8
//! rlm worker --queue redis://127.0.0.1:6379 --model gpt-4o
//! rlm serve --model gpt-4o --listen 127.0.0.1:8000
//! rlm mcp --model gpt-4o --root ./docs
//! ```
//!
//! See `rlm run --help` for every flag, the exit codes and the `--json` / `--trace` formats.

/// The system allocator, counting what each REPL block's thread allocates: a block's memory
/// budget is then charged with that block's own growth, not with every run's in the process.
#[global_allocator]
static ALLOCATOR: rlm_alloc::Counting = rlm_alloc::Counting;

mod batch;
mod chat;
mod cli;
mod demo;
mod error;
mod human;
mod output;
mod progress;
mod run;
mod serve;
mod settings;
mod summary;
mod trace;
mod view;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{CliError, exit};

fn main() -> ExitCode {
    install_panic_hook();
    // Known before parsing, so that a bad flag still gets its JSON object.
    let json = std::env::args_os()
        .skip(1)
        .take_while(|arg| arg != "--")
        .any(|arg| arg == "--json");
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e, json),
    };
    let quiet = match &cli.command {
        Command::Run(args) | Command::Chat(args) => args.quiet,
        Command::Serve(args) => args.run.quiet,
        Command::Mcp(args) => args.run.quiet,
        Command::Batch(args) => args.run.quiet,
        Command::Worker(args) => args.run.quiet,
        Command::Demo(args) => args.quiet,
        Command::View(args) => args.quiet,
    };
    init_tracing(quiet);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rlm")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            return report(
                &CliError::Internal(format!("cannot start the async runtime: {e}")),
                json,
            );
        }
    };
    // A panic is reported by the hook; it exits with the internal-error status, not 101.
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            match cli.command {
                Command::Run(args) => run::run(args).await,
                Command::Chat(args) => chat::chat(args).await,
                Command::Serve(args) => serve::serve(args).await,
                Command::Mcp(args) => serve::mcp(args).await,
                Command::Batch(args) => batch::batch(args).await,
                Command::Worker(args) => batch::worker(args).await,
                Command::Demo(args) => demo::demo(args).await,
                Command::View(args) => view::view(&args),
            }
        })
    }));
    // Blocked REPL threads or slow sockets must not hold the exit up.
    runtime.shutdown_background();
    match outcome {
        Ok(Ok(code)) => ExitCode::from(code),
        Ok(Err(e)) => report(&e, json),
        Err(_) => {
            if json {
                print_json_failure(
                    "internal error (a bug in rlm); run with RUST_BACKTRACE=1 for details",
                    "internal",
                    exit::INTERNAL,
                );
            }
            ExitCode::from(exit::INTERNAL)
        }
    }
}

/// Help and version go to stdout with status 0; `rlm` alone prints the help on stderr; any
/// other mistake is one `error: ...` line on stderr with status 2 (and, with `--json`, the
/// error object on stdout).
fn usage_error(error: &clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    if !error.use_stderr() || error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let _ = error.print();
        return ExitCode::from(if error.use_stderr() { exit::USAGE } else { 0 });
    }
    let line = one_line(&error.render().to_string());
    let _ = writeln!(std::io::stderr(), "{line}");
    if json {
        let message = line.strip_prefix("error: ").unwrap_or(&line);
        print_json_failure(message, "usage", exit::USAGE);
    }
    ExitCode::from(exit::USAGE)
}

/// Clap's multi-line message as one line: the message and any tip, without the usage block.
fn one_line(rendered: &str) -> String {
    let parts: Vec<String> = rendered
        .split("\n\n")
        .map(|paragraph| {
            paragraph
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|p| !p.is_empty() && !p.starts_with("Usage:") && !p.starts_with("For more"))
        .collect();
    let mut line = parts.join("; ");
    if !line.starts_with("error:") {
        line.insert_str(0, "error: ");
    }
    line.push_str(" (see --help)");
    line
}

/// Prints `error: ...` on stderr, on one line, and returns the error's exit status. With
/// `--json`, stdout gets `{"error": {"message", "kind"}, "exit_code"}` and whatever figures
/// the run got to, so that `rlm ... --json | jq` always has its input.
fn report(error: &CliError, json: bool) -> ExitCode {
    let message = single_line(&error.to_string());
    let _ = writeln!(std::io::stderr().lock(), "error: {message}");
    if json {
        print_json_failure(&message, error.kind(), error.exit_code());
    }
    ExitCode::from(error.exit_code())
}

/// Writes `--json`'s failure object on stdout (a closed pipe is no further error).
fn print_json_failure(message: &str, kind: &str, exit_code: u8) {
    let _ = output::write_stdout(&error::json_failure(message, kind, exit_code));
}

/// `message` on one line (a server's message may hold line breaks, or a whole HTML page),
/// at most 1,000 characters.
fn single_line(message: &str) -> String {
    const MAX_ERROR_CHARS: usize = 1000;
    let line = message
        .split(['\n', '\r'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let chars = line.chars().count();
    if chars <= MAX_ERROR_CHARS {
        return line;
    }
    let kept: String = line.chars().take(MAX_ERROR_CHARS).collect();
    format!("{kept} [... {} more characters]", chars - MAX_ERROR_CHARS)
}

/// `RUST_LOG` drives `tracing` output on stderr; without it, warnings are shown (errors only
/// with `--quiet`).
fn init_tracing(quiet: bool) {
    use tracing_subscriber::EnvFilter;
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::filter::FilterExt as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(if quiet { "error" } else { "warn" }));
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .with_filter(filter.and(QuietMethodNotFound));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Leaves out the MCP SDK's warning for each request whose method the server does not offer
/// (a client probing `resources/list`, `prompts/list`, ...): the client gets "method not
/// found", which is the whole story; one warning line per probe would bury real ones.
struct QuietMethodNotFound;

impl<S> tracing_subscriber::layer::Filter<S> for QuietMethodNotFound {
    fn enabled(
        &self,
        _meta: &tracing::Metadata<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        true
    }

    fn event_enabled(
        &self,
        event: &tracing::Event<'_>,
        _cx: &tracing_subscriber::layer::Context<'_, S>,
    ) -> bool {
        /// Whether an event's `error` field is JSON-RPC's "method not found" (-32601).
        struct MethodNotFound(bool);
        impl tracing::field::Visit for MethodNotFound {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "error" && format!("{value:?}").contains("ErrorCode(-32601)") {
                    self.0 = true;
                }
            }
        }
        if !event.metadata().target().starts_with("rmcp") {
            return true;
        }
        let mut found = MethodNotFound(false);
        event.record(&mut found);
        !found.0
    }
}

/// A panic is a bug: say so in one line (the full report with `RUST_BACKTRACE=1`).
fn install_panic_hook() {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        return;
    }
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "error: internal error (a bug in rlm): {message}{location}; run with RUST_BACKTRACE=1 for details"
        );
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_reported_on_one_short_line() {
        assert_eq!(single_line("a\nb\r\n  c \n"), "a b c");
        let long = single_line(&"x".repeat(5000));
        assert!(long.ends_with("x [... 4000 more characters]"), "{long}");
    }

    #[test]
    fn clap_errors_become_one_line() {
        let e = Cli::try_parse_from(["rlm", "run", "--query", "q"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(!line.contains('\n'), "{line}");
        assert!(line.starts_with("error: "), "{line}");
        assert!(line.contains("--model"), "{line}");
        let e = Cli::try_parse_from(["rlm", "run", "--jsn"]).unwrap_err();
        let line = one_line(&e.render().to_string());
        assert!(line.contains("--jsn") && line.contains("--json"), "{line}");
    }
}
