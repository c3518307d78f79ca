//! `rlm chat`: an interactive session in the terminal. The loop, the session file and the
//! per-question cancellation are the host layer's ([`rlm_host::session::chat`]); this module
//! sets up the run like `rlm run`, reads lines with a line editor and prints what happens.

use std::sync::Arc;
use std::time::Instant;

use rlm_host::session::{Answered, Interrupts, Line, LineReader, chat as chat_loop, open_session};
use rlm_host::{Stack, StopReason};
use rustyline::error::ReadlineError;

use crate::cli::RunArgs;
use crate::error::{CliError, exit};
use crate::output::print_result;
use crate::settings;
use crate::summary::{CodeSubCalls, summary};
use crate::trace;

/// The prompt shown before each question.
const PROMPT: &str = "rlm> ";

/// Reads questions with rustyline (line editing, in-memory history). Not a terminal: plain
/// lines.
struct Editor(rustyline::DefaultEditor);

impl LineReader for Editor {
    fn read_line(&mut self, prompt: &str) -> Line {
        match self.0.readline(prompt) {
            Ok(line) => Line::Text(line),
            Err(ReadlineError::Interrupted) => Line::Interrupted,
            Err(ReadlineError::Eof) => Line::End,
            Err(error) => {
                eprintln!("error: cannot read the terminal: {error}");
                Line::End
            }
        }
    }

    fn add_history(&mut self, line: &str) {
        let _ = self.0.add_history_entry(line);
    }
}

/// Runs `rlm chat` until Ctrl-D (or the end of the input); exits 0.
pub(crate) async fn chat(args: Box<RunArgs>) -> Result<u8, CliError> {
    let start = Instant::now();
    if args.query.is_some() || args.query_file.is_some() || args.json {
        return Err(CliError::Usage(
            "rlm chat does not take --query, --query-file or --json (questions are typed at \
             its prompt; use rlm run for one question)"
                .to_owned(),
        ));
    }
    if args.context.as_deref() == Some(std::path::Path::new("-")) {
        return Err(CliError::Usage(
            "rlm chat reads its questions from stdin: pass the context as a file (--context \
             PATH), not -"
                .to_owned(),
        ));
    }
    let quiet = args.quiet;
    let settings = settings::settings(&args);
    let mut warnings = Vec::new();
    let system_prompt = settings::system_prompt(&args, &mut warnings)?;
    let loaded = rlm_host::context::load(
        args.context.as_deref(),
        &settings::load_options(&args),
        std::io::empty(),
    )?;
    warnings.extend(loaded.warnings);
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    let prices = settings.load_prices()?;
    let stack = Stack::build(&settings, None, 1)?;
    let model = stack.model().to_owned();
    let shown_url = stack.shown_url().to_owned();
    let mut builder = stack.rlm_builder(&settings)?.prices(prices);
    if let Some(prompt) = system_prompt {
        builder = builder.system_prompt(prompt);
    }
    let trace = match &args.trace {
        Some(path) => Some(Arc::new(
            trace::create(path, start)?.with_settings(settings.trace_settings()),
        )),
        None => None,
    };
    if let Some(trace) = &trace {
        builder = builder.observer(trace.clone());
    }
    let from_code = Arc::new(CodeSubCalls::default());
    builder = builder.observer(from_code.clone());
    let rlm = builder
        .build()
        .map_err(|e| CliError::from_rlm(e, &shown_url, &model))?;

    let opened = open_session(rlm, loaded.context, args.session.as_deref())?;
    for warning in &opened.warnings {
        eprintln!("warning: {warning}");
    }
    let mut session = opened.session;
    let editor = rustyline::DefaultEditor::new()
        .map_err(|e| CliError::Internal(format!("cannot start the line editor: {e}")))?;
    if !quiet {
        let info = session.context_info();
        let resumed = if opened.resumed {
            format!(
                ", resumed with {} earlier questions",
                session.history().len()
            )
        } else {
            String::new()
        };
        eprintln!(
            "rlm chat: {model}; context: {} of {} characters{resumed}. Ctrl-C cancels a \
             question, Ctrl-D ends.",
            info.kind, info.total_chars
        );
    }

    // Ctrl-C while a question runs cancels it; at the prompt the editor takes it.
    let interrupts = Interrupts::default();
    let watcher = {
        let interrupts = interrupts.clone();
        tokio::spawn(async move {
            while tokio::signal::ctrl_c().await.is_ok() {
                interrupts.interrupt();
                if !quiet {
                    eprintln!("\nrlm: cancelling the question (Ctrl-D ends the chat)");
                }
            }
        })
    };
    let mut seen_from_code = 0;
    // With --output-schema, answers print as compact JSON, as `rlm run` prints them.
    let typed = settings.output_schema.is_some();
    let asked = chat_loop(
        &mut session,
        Editor(editor),
        PROMPT,
        args.session.clone(),
        &interrupts,
        |what| match what {
            Answered::Result(result) => {
                if result.stopped != StopReason::Cancelled
                    && let Err(e) =
                        print_result(result, &result.usage, &result.cost, None, &[], false, typed)
                {
                    eprintln!("error: {e}");
                }
                for warning in &result.warnings {
                    eprintln!("warning: {warning}");
                }
                let from_code_now = from_code.get();
                if !quiet {
                    eprint!(
                        "{}",
                        summary(
                            result,
                            &result.usage,
                            &result.cost,
                            None,
                            from_code_now - seen_from_code
                        )
                    );
                }
                seen_from_code = from_code_now;
            }
            Answered::Error(error) => {
                let error = CliError::from_rlm(error, &shown_url, &model);
                eprintln!("error: {error}");
            }
            Answered::Warning(warning) => eprintln!("warning: {warning}"),
        },
    )
    .await;
    watcher.abort();
    let asked = asked?;
    if let Some(error) = trace.as_deref().and_then(trace::warning) {
        return Err(CliError::Input(error));
    }
    if !quiet {
        eprintln!("rlm chat: {asked} questions asked");
    }
    Ok(exit::OK)
}
