//! Flags and subcommands.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::error::EXIT_CODES_HELP;

const ABOUT: &str = "Recursive Language Models: answer queries over contexts far larger than a \
model's window";

const LONG_ABOUT: &str = "\
Recursive Language Models: answer queries over contexts far larger than a model's window.

The context is never pasted into the prompt. It lives in a sandboxed Rhai REPL as the \
variable `context`; the root model writes code that reads it and calls sub-models with \
llm_query(prompt) and llm_batch(prompts) (many at once), then answers with FINAL(...).

Works with any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama, LM Studio, ...).
Try `rlm demo` first: it runs offline and needs no key.";

const RUN_AFTER_HELP: &str = "\
Output:
  stdout gets the answer alone (with --json, one JSON object:
  {\"answer\", \"iterations\", \"stopped\", \"elapsed_ms\", \"usage\": {MODEL: {\"calls\",
  \"prompt_tokens\", \"completion_tokens\"}}, \"sub_calls\", \"failed_sub_calls\",
  \"warnings\", \"cache\"}). A usage summary, warnings and errors go to stderr;
  progress too, when stderr is a terminal.
  On an error nothing is printed on stdout.

Answers:
  An answer is accepted only after the root model saw the output it rests on: a
  FINAL(...) written in a reply with code is not accepted (the model sees the
  output and must repeat it); a reply cut at the token limit never ends the run;
  cut or empty sub-call replies are \"Error: ...\" items. \"warnings\" (and stderr)
  list held answers, cut or empty sub-answers and answers given after failed
  sub-calls. When a budget ends the run and the final ask gets no FINAL, there is
  no answer: stdout stays empty, stderr says why, and the exit status is 3.

Time:
  One call tries at most --max-retries + 1 times, each attempt bounded by
  --timeout (root calls) or --sub-timeout (sub-calls). --max-time bounds the
  whole run, whatever it is doing. RUST_LOG (e.g.
  RUST_LOG=rlm_openai=debug) turns on logs.

Trace (--trace FILE):
  JSON Lines, one object per event, written as it happens: {\"t_ms\": <ms since
  start>, \"event\": NAME, ...} with NAME one of run_start, turn_start,
  root_reply, code_block, sub_call_start, sub_call_end, batch_start,
  batch_progress, batch_end, turn_end, final. The API key is never in it.

Environment:
  OPENAI_API_KEY     the API key (sent as a bearer token; never printed or traced)
  OPENAI_BASE_URL    default of --base-url
  OPENAI_ORG_ID      sent as OpenAI-Organization, when set
  OPENAI_PROJECT_ID  sent as OpenAI-Project, when set
  RLM_MODEL          default of --model
  RLM_SUB_MODEL      default of --sub-model
";

/// The `rlm` command line.
#[derive(Debug, Parser)]
#[command(
    name = "rlm",
    version,
    about = ABOUT,
    long_about = LONG_ABOUT,
    after_help = EXIT_CODES_HELP,
    propagate_version = true,
    arg_required_else_help = true
)]
pub(crate) struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Answer a query over a context, against an OpenAI-compatible endpoint.
    #[command(after_help = format!("{RUN_AFTER_HELP}\n{EXIT_CODES_HELP}"))]
    Run(Box<RunArgs>),
    /// Serve an OpenAI-compatible HTTP API: POST /v1/chat/completions answers the last user
    /// message with a Recursive Language Model.
    #[command(
        after_help = SERVE_AFTER_HELP,
        mut_arg("query", |a| a.required_unless_present(clap::builder::Resettable::Reset).hide(true)),
        mut_arg("query_file", |a| a.hide(true)),
        mut_arg("json", |a| a.hide(true)),
        mut_arg("trace", |a| a.hide(true))
    )]
    Serve(Box<ServeArgs>),
    /// Serve the Model Context Protocol on stdio: the tool rlm_answer answers a query over
    /// files under the allowed roots, or over text.
    #[command(
        after_help = MCP_AFTER_HELP,
        mut_arg("query", |a| a.required_unless_present(clap::builder::Resettable::Reset).hide(true)),
        mut_arg("query_file", |a| a.hide(true)),
        mut_arg("context", |a| a.hide(true)),
        mut_arg("json", |a| a.hide(true)),
        mut_arg("trace", |a| a.hide(true))
    )]
    Mcp(Box<McpArgs>),
    /// Offline demo, no key needed: the same job with sequential llm_query and with
    /// llm_batch, timed.
    #[command(after_help = EXIT_CODES_HELP)]
    Demo(DemoArgs),
}

/// How to read a context file or stdin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ContextFormat {
    /// By file extension: .json is JSON, .jsonl / .ndjson are JSON Lines, anything else
    /// (and stdin) is text.
    Auto,
    /// One string.
    Text,
    /// A JSON value: an object becomes a map, an array an array.
    Json,
    /// JSON Lines: one JSON value per non-empty line, as an array.
    Jsonl,
}

/// Flags of `rlm run`.
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    /// The question to answer. `-` reads it from stdin.
    #[arg(
        long,
        value_name = "TEXT",
        required_unless_present = "query_file",
        conflicts_with = "query_file",
        help_heading = "Input"
    )]
    pub(crate) query: Option<String>,

    /// Read the question from a file instead.
    #[arg(long, value_name = "PATH", help_heading = "Input")]
    pub(crate) query_file: Option<PathBuf>,

    /// The context: a file, a directory (one document per file, recursive, sorted by path;
    /// hidden and binary files skipped), or `-` for stdin. Without it the context is an
    /// empty string. Invalid UTF-8 is replaced (U+FFFD) with a warning.
    #[arg(short, long, value_name = "PATH|-", help_heading = "Input")]
    pub(crate) context: Option<PathBuf>,

    /// How to read a context file or stdin (a directory is always one text document per
    /// file).
    #[arg(
        long,
        value_enum,
        default_value_t = ContextFormat::Auto,
        value_name = "FORMAT",
        help_heading = "Input"
    )]
    pub(crate) context_format: ContextFormat,

    /// Directory contexts: do not start each document with a `==> relative/path <==` line.
    #[arg(long, help_heading = "Input")]
    pub(crate) no_file_headers: bool,

    /// Replace the built-in system prompt (which teaches the root model the REPL and its
    /// Rhai dialect) with the text of this file.
    #[arg(long, value_name = "PATH", help_heading = "Input")]
    pub(crate) system_prompt_file: Option<PathBuf>,

    /// The root model: it writes the code and gives the answer.
    #[arg(
        short,
        long,
        value_name = "NAME",
        env = "RLM_MODEL",
        help_heading = "Models and server"
    )]
    pub(crate) model: String,

    /// The model of llm_query / llm_batch sub-calls (default: the root model).
    #[arg(
        long,
        value_name = "NAME",
        env = "RLM_SUB_MODEL",
        help_heading = "Models and server"
    )]
    pub(crate) sub_model: Option<String>,

    /// The OpenAI-compatible endpoint, up to the API version (Ollama:
    /// http://localhost:11434/v1, vLLM: http://localhost:8000/v1, llama.cpp:
    /// http://localhost:8080/v1).
    #[arg(
        long,
        value_name = "URL",
        env = "OPENAI_BASE_URL",
        hide_env_values = true,
        default_value = rlm_openai::DEFAULT_BASE_URL,
        help_heading = "Models and server"
    )]
    pub(crate) base_url: String,

    /// The environment variable that holds the API key (local servers need none).
    #[arg(
        long,
        value_name = "VAR",
        default_value = "OPENAI_API_KEY",
        help_heading = "Models and server"
    )]
    pub(crate) api_key_env: String,

    /// Seconds one HTTP attempt of a root call may take, from sending to the whole answer
    /// (fractions allowed). Each retry gets the full time again, so one call may take up to
    /// (--max-retries + 1) x --timeout plus the backoff waits; --max-time bounds the run.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "600",
        value_parser = parse_seconds,
        help_heading = "Models and server"
    )]
    pub(crate) timeout: Duration,

    /// Seconds one HTTP attempt of a sub-call (llm_query, an llm_batch item) may take. Shorter
    /// than --timeout, so that one hung sub-call cannot hold a run for long: it fails as
    /// an "Error: timed out" item after its retries, and the rest of its batch is kept.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "120",
        value_parser = parse_seconds,
        help_heading = "Models and server"
    )]
    pub(crate) sub_timeout: Duration,

    /// Retries of a failed call (429, 5xx, timeouts, dropped connections), with exponential
    /// backoff or the server's Retry-After. 0 disables retries.
    #[arg(
        long,
        value_name = "N",
        default_value_t = rlm_openai::DEFAULT_MAX_RETRIES,
        help_heading = "Models and server"
    )]
    pub(crate) max_retries: u32,

    /// Requests per minute allowed to each model (0: no limit). Paced smoothly: about a
    /// second's share at once, never more than N in any minute.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Rate limits"
    )]
    pub(crate) rpm: u32,

    /// Tokens (prompt + expected completion) per minute allowed to each model (0: no limit).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        help_heading = "Rate limits"
    )]
    pub(crate) tpm: u32,

    /// Requests per minute for the sub model, when it differs from the root model
    /// (default: --rpm).
    #[arg(long, value_name = "N", help_heading = "Rate limits")]
    pub(crate) sub_rpm: Option<u32>,

    /// Tokens per minute for the sub model, when it differs from the root model
    /// (default: --tpm).
    #[arg(long, value_name = "N", help_heading = "Rate limits")]
    pub(crate) sub_tpm: Option<u32>,

    /// Root-model turns before it is asked for its best final answer.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 20,
        value_parser = clap::value_parser!(u32).range(1..),
        help_heading = "Budgets"
    )]
    pub(crate) max_iterations: u32,

    /// Sub-calls llm_batch runs at once by default (a script may pass its own); also sizes
    /// the HTTP connection pool.
    #[arg(
        long,
        value_name = "N",
        default_value_t = rlm_core::DEFAULT_MAX_CONCURRENT as u32,
        value_parser = clap::value_parser!(u32).range(1..=4096),
        help_heading = "Budgets"
    )]
    pub(crate) max_concurrent: u32,

    /// Sub-calls allowed over the run (default: no limit).
    #[arg(long, value_name = "N", help_heading = "Budgets")]
    pub(crate) max_sub_calls: Option<u64>,

    /// Tokens allowed over the run: root and sub-calls, prompt and completion (default: no
    /// limit).
    #[arg(long, value_name = "N", help_heading = "Budgets")]
    pub(crate) max_total_tokens: Option<u64>,

    /// Seconds the whole run may take (default: no limit).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds, help_heading = "Budgets")]
    pub(crate) max_time: Option<Duration>,

    /// Send every sub-call, even one identical to an earlier one (by default identical
    /// sub-calls of a run are sent once and share the answer).
    #[arg(long, help_heading = "Output and behaviour")]
    pub(crate) no_cache: bool,

    /// Write every event (turns, code blocks and outputs, sub-calls, the answer) to FILE as
    /// JSON Lines, each line flushed as it happens.
    #[arg(long, value_name = "FILE", help_heading = "Output and behaviour")]
    pub(crate) trace: Option<PathBuf>,

    /// Print one JSON object on stdout instead of the answer alone.
    #[arg(long, help_heading = "Output and behaviour")]
    pub(crate) json: bool,

    /// No progress, summary or input warnings on stderr (errors, and warnings about the
    /// answer, still).
    #[arg(long, help_heading = "Output and behaviour")]
    pub(crate) quiet: bool,
}

const SERVE_AFTER_HELP: &str = "\
Endpoints:
  GET  /v1/models            lists the model \"rlm\" (any model name is accepted)
  POST /v1/chat/completions  the query is the last user message; the context is
                             --context if given, else the earlier messages (system
                             messages are extra instructions to the root model);
                             stream: true sends the trajectory as
                             delta.reasoning_content, then the answer as
                             delta.content, then usage (stream_options.include_usage)
  GET  /health               {\"status\": \"ok\", \"running\", \"queued\", \"max_runs\"}

  Replies carry an \"rlm\" object (iterations, stopped, sub_calls, failed_sub_calls,
  warnings, cost_usd). A budget stop is still 200, with finish_reason \"length\".
  Errors: {\"error\": {\"message\", \"type\", \"code\"}}; 400 bad body, 401 wrong server
  key, 413 body over --max-request-bytes, 429 queue full (Retry-After), 502 the
  upstream model server failed. All requests share one backend: --rpm, --tpm,
  retries and the sub-call cache hold across them. A client that disconnects
  cancels its run.";

const MCP_AFTER_HELP: &str = "\
Tool rlm_answer: {\"query\": str, \"paths\": [str]} or {\"query\": str, \"text\": str}.
  Paths must be under a --root (after resolving .. and symlinks); relative
  paths are taken under each root. One path is read like rlm run --context;
  several are an array of documents. Progress is notified per turn, code block
  and tenth of a batch; cancelling the call stops the run. stdout carries the
  protocol only; logs go to stderr.

Client configuration (e.g. claude_desktop_config.json):
  {\"mcpServers\": {\"rlm\": {\"command\": \"rlm\",
    \"args\": [\"mcp\", \"--root\", \"/path/to/docs\", \"--model\", \"gpt-4o\"],
    \"env\": {\"OPENAI_API_KEY\": \"sk-...\"}}}}";

/// Flags of `rlm serve`: every flag of `rlm run` but the query and output flags.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// The flags shared with `rlm run`.
    #[command(flatten)]
    pub(crate) run: RunArgs,

    /// The address to listen on. Anything beyond loopback needs --server-key-env.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = rlm_serve::serve::DEFAULT_LISTEN,
        help_heading = "Serving"
    )]
    pub(crate) listen: std::net::SocketAddr,

    /// Runs at once; further requests wait in arrival order.
    #[arg(
        long,
        value_name = "N",
        default_value_t = rlm_serve::serve::DEFAULT_MAX_RUNS as u32,
        value_parser = clap::value_parser!(u32).range(1..=4096),
        help_heading = "Serving"
    )]
    pub(crate) max_runs: u32,

    /// Requests that may wait for a run; beyond them a request gets 429 with Retry-After.
    #[arg(
        long,
        value_name = "N",
        default_value_t = rlm_serve::serve::DEFAULT_MAX_QUEUE as u32,
        help_heading = "Serving"
    )]
    pub(crate) max_queue: u32,

    /// The environment variable holding the server's own bearer token, which clients must
    /// send (`Authorization: Bearer ...`). --api-key-env stays the upstream key.
    #[arg(long, value_name = "VAR", help_heading = "Serving")]
    pub(crate) server_key_env: Option<String>,

    /// The largest request body, in bytes (413 beyond).
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = rlm_serve::serve::DEFAULT_MAX_REQUEST_BYTES as u64,
        value_parser = clap::value_parser!(u64).range(1..),
        help_heading = "Serving"
    )]
    pub(crate) max_request_bytes: u64,
}

/// Flags of `rlm mcp`: the model, limit and budget flags of `rlm run`, and the roots.
#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    /// The flags shared with `rlm run`.
    #[command(flatten)]
    pub(crate) run: RunArgs,

    /// A directory whose files the tool may read (repeat for more).
    #[arg(
        long = "root",
        value_name = "DIR",
        required = true,
        help_heading = "Serving"
    )]
    pub(crate) roots: Vec<PathBuf>,
}

/// Flags of `rlm demo`.
#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Documents in the generated context (one sub-call each).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 24,
        value_parser = clap::value_parser!(u32).range(1..=10_000)
    )]
    pub(crate) docs: u32,

    /// Simulated latency of each sub-call, in milliseconds: `MIN-MAX` or one number.
    #[arg(long, value_name = "MIN-MAX", default_value = "100-300", value_parser = parse_latency)]
    pub(crate) latency_ms: (u64, u64),

    /// Sub-calls the batched run sends at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 8,
        value_parser = clap::value_parser!(u32).range(1..=4096)
    )]
    pub(crate) max_concurrent: u32,

    /// Print the measurements as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,

    /// Print nothing but errors (and the JSON object with --json).
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// Seconds as a non-negative number (fractions allowed) to a `Duration`.
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err("must be a positive number of seconds".to_owned());
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| "too large".to_owned())
}

/// `MIN-MAX` or `N` milliseconds.
fn parse_latency(text: &str) -> Result<(u64, u64), String> {
    let number = |s: &str| {
        s.trim()
            .parse::<u64>()
            .map_err(|_| format!("{text:?} is not MIN-MAX or N milliseconds"))
    };
    let (min, max) = match text.split_once('-') {
        Some((min, max)) => (number(min)?, number(max)?),
        None => {
            let n = number(text)?;
            (n, n)
        }
    };
    if min > max {
        return Err(format!("the minimum ({min}) is above the maximum ({max})"));
    }
    if max > 60_000 {
        return Err("at most 60000 ms".to_owned());
    }
    Ok((min, max))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_and_mcp_take_the_run_flags_without_a_query() {
        let cli =
            Cli::try_parse_from(["rlm", "serve", "-m", "m", "--rpm", "60", "--max-runs", "2"]);
        let Ok(Cli {
            command: Command::Serve(args),
        }) = cli
        else {
            panic!("did not parse: {cli:?}");
        };
        assert_eq!(args.run.rpm, 60);
        assert_eq!(args.max_runs, 2);
        assert_eq!(args.listen.to_string(), "127.0.0.1:8000");
        assert!(args.run.query.is_none());
        let cli = Cli::try_parse_from(["rlm", "mcp", "-m", "m", "--root", "a", "--root", "b"]);
        let Ok(Cli {
            command: Command::Mcp(args),
        }) = cli
        else {
            panic!("did not parse: {cli:?}");
        };
        assert_eq!(args.roots.len(), 2);
        assert!(Cli::try_parse_from(["rlm", "mcp", "-m", "m"]).is_err());
        assert!(
            Cli::try_parse_from(["rlm", "run", "-m", "m"]).is_err(),
            "run still needs a query"
        );
    }

    #[test]
    fn seconds_and_latencies_parse() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_seconds("0").is_err());
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_seconds("soon").is_err());
        assert_eq!(parse_latency("100-300"), Ok((100, 300)));
        assert_eq!(parse_latency("5"), Ok((5, 5)));
        assert!(parse_latency("300-100").is_err());
        assert!(parse_latency("a-b").is_err());
    }

    #[test]
    fn run_flags_parse() {
        let cli = Cli::try_parse_from([
            "rlm",
            "run",
            "--query",
            "q",
            "--model",
            "m",
            "--max-concurrent",
            "4",
            "--timeout",
            "2.5",
            "--no-cache",
        ]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = cli
        else {
            panic!("did not parse: {cli:?}");
        };
        assert_eq!(args.max_concurrent, 4);
        assert_eq!(args.timeout, Duration::from_millis(2500));
        assert!(args.no_cache);
        assert_eq!(args.max_iterations, 20);
        let both = Cli::try_parse_from([
            "rlm",
            "run",
            "--query",
            "q",
            "--query-file",
            "f",
            "--model",
            "m",
        ]);
        assert!(both.is_err());
        let zero = Cli::try_parse_from([
            "rlm",
            "run",
            "--query",
            "q",
            "--model",
            "m",
            "--max-concurrent",
            "0",
        ]);
        assert!(zero.is_err());
    }
}
