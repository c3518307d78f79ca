//! `rlm serve` and `rlm mcp`: flags to a [`rlm_serve::Runner`] on the host layer's backend
//! stack.

use rlm_host::{Runner, SharedContext, Stack};
use rlm_serve::access_log::{AccessLog, LogFormat};
use rlm_serve::mcp::McpServer;
use rlm_serve::serve::ServeOptions;

use crate::cli::{LogFormatArg, McpArgs, RunArgs, ServeArgs};
use crate::error::{CliError, exit};
use crate::settings;

/// Refuses the flags of `rlm run` that a server has no use for.
fn refuse_run_only(args: &RunArgs, command: &str) -> Result<(), CliError> {
    let mut given = Vec::new();
    if args.query.is_some() || args.query_file.is_some() {
        given.push("--query/--query-file (queries come from the clients)");
    }
    if args.json {
        given.push("--json");
    }
    if args.trace.is_some() {
        given.push("--trace");
    }
    if args.session.is_some() {
        given.push("--session (Responses API clients continue sessions with previous_response_id)");
    }
    match given.as_slice() {
        [] => Ok(()),
        _ => Err(CliError::Usage(format!(
            "rlm {command} does not take {}",
            given.join(", ")
        ))),
    }
}

/// The runner every request shares: one backend stack (for up to `runs` runs at once), the
/// run flags, the system prompt.
fn runner(args: &RunArgs, runs: usize) -> Result<(Runner, Stack), CliError> {
    let mut warnings = Vec::new();
    let system_prompt = settings::system_prompt(args, &mut warnings)?;
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    let mut settings = settings::settings(args);
    settings.output_schema = settings::output_schema(args)?;
    let stack = Stack::build(&settings, None, runs)?;
    let prices = settings.load_prices()?;
    let mut builder = stack.rlm_builder(&settings)?.prices(prices);
    if let Some(prompt) = system_prompt {
        builder = builder.system_prompt(prompt);
    }
    let runner = stack
        .runner(builder)
        .map_err(|e| CliError::from_rlm(e, stack.shown_url(), stack.model()))?;
    Ok((runner, stack))
}

/// Runs `rlm serve` until Ctrl-C.
pub(crate) async fn serve(args: Box<ServeArgs>) -> Result<u8, CliError> {
    let run = &args.run;
    refuse_run_only(run, "serve")?;
    let server_key = match &args.server_key_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(key) if !key.trim().is_empty() => Some(key.trim().to_owned()),
            _ => {
                return Err(CliError::Usage(format!(
                    "--server-key-env {var}: the variable is not set or empty"
                )));
            }
        },
    };
    rlm_serve::serve::check_exposure(&args.listen, server_key.is_some())
        .map_err(|e| CliError::Usage(e.to_string()))?;

    // The shared context is read once, before listening.
    let shared = match &run.context {
        None => None,
        Some(path) => {
            let loaded = rlm_host::context::load(
                Some(path),
                &settings::load_options(run),
                std::io::stdin().lock(),
            )?;
            if !run.quiet {
                for warning in &loaded.warnings {
                    eprintln!("warning: {warning}");
                }
            }
            Some(SharedContext::new(loaded.context))
        }
    };
    let (runner, stack) = runner(run, args.max_runs as usize)?;
    let options = ServeOptions {
        max_runs: args.max_runs as usize,
        max_queue: args.max_queue as usize,
        server_key,
        max_request_bytes: args.max_request_bytes,
        context: shared,
        cors_origins: args.cors_origins.clone(),
        session_ttl: args.session_ttl,
        max_sessions: args.max_sessions as usize,
        inline_max_bytes: args.inline_max_bytes,
        shutdown_grace: args.shutdown_grace,
        access_log: Some(AccessLog::stderr(match args.log_format {
            LogFormatArg::Text => LogFormat::Text,
            LogFormatArg::Json => LogFormat::Json,
        })),
        ..ServeOptions::default()
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError::Internal(format!("the listener has no address: {e}")))?;
    if !run.quiet {
        eprintln!(
            "rlm serve: listening on http://{local}/v1 (root model {}, sub model {}, upstream {}); \
             SIGTERM or Ctrl-C drains and stops",
            stack.model(),
            stack.sub_model(),
            stack.shown_url()
        );
    }
    let grace = args.shutdown_grace;
    let quiet = run.quiet;
    let stop = stop_signal()?;
    let shutdown = async move {
        let signal = stop.await;
        if !quiet {
            eprintln!(
                "rlm serve: {signal}: draining (no new requests; runs in flight have {} s to \
                 finish)",
                grace.as_secs_f64()
            );
        }
    };
    rlm_serve::serve::serve(listener, runner, options, shutdown)
        .await
        .map_err(|e| CliError::Internal(format!("the server failed: {e}")))?;
    if !quiet {
        eprintln!("rlm serve: stopped");
    }
    Ok(exit::OK)
}

/// Completes on the first SIGTERM or SIGINT (Ctrl-C), with the signal's name.
fn stop_signal() -> Result<impl Future<Output = &'static str>, CliError> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| CliError::Internal(format!("cannot watch SIGTERM: {e}")))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| CliError::Internal(format!("cannot watch SIGINT: {e}")))?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            "Ctrl-C"
        })
    }
}

/// Runs `rlm mcp` until the client closes stdin.
pub(crate) async fn mcp(args: Box<McpArgs>) -> Result<u8, CliError> {
    let run = &args.run;
    refuse_run_only(run, "mcp")?;
    if run.context.is_some() {
        return Err(CliError::Usage(
            "rlm mcp does not take --context: clients name paths under --root".to_owned(),
        ));
    }
    let (runner, _stack) = runner(run, 1)?;
    let server = McpServer::new(runner, &args.roots, settings::load_options(run))
        .map_err(|e| CliError::Usage(e.to_string()))?;
    server
        .serve_stdio()
        .await
        // A client that closes stdin or speaks something else is an input problem, not a bug.
        .map_err(|e| {
            CliError::Input(format!(
                "the MCP client on stdin/stdout failed or closed the connection: {e}"
            ))
        })?;
    Ok(exit::OK)
}
