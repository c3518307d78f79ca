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
  \"cancelled_sub_calls\", \"max_depth_reached\", \"child_runs\", \"warnings\",
  \"cache\"}). A usage summary, warnings and errors go to stderr; progress too
  (see --progress).
  On an error nothing is printed on stdout, except with --json: then stdout
  gets {\"error\": {\"message\", \"kind\"}, \"exit_code\"} and whatever figures the
  run got to (\"elapsed_ms\", \"usage\", \"cache\"); kind is usage (2), input (4),
  server (5), auth (6), internal (1) or interrupted (130).

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
  start>, \"depth\": D, \"run\": ID, \"event\": NAME, ...} with NAME one of run_start,
  turn_start, root_reply, code_block, sub_call_start, sub_call_end, batch_start,
  batch_progress, batch_end, turn_end, final, run_error. depth is 0 for the
  top-level run; run is its id path (\"0\", \"0.3\", \"0.3.1\"); a child's
  run_start names its parent. run_start carries the settings (models, base URL
  without credentials, limits, budgets), the wall-clock start, the system prompt
  and the first message; turn_end only counts (the text is in root_reply and
  code_block); a sub_call_end cut short says \"cancelled\": true. The API key is
  never in it.

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

    /// Calls allowed below the top-level root over the whole run: llm_query calls, llm_batch
    /// items, and every call of child runs, their root turns included (default: no limit).
    #[arg(long, value_name = "N", help_heading = "Budgets")]
    pub(crate) max_sub_calls: Option<u64>,

    /// Tokens allowed over the run: root and sub-calls, children's too, prompt and
    /// completion (default: no limit). The final ask after a budget stop may exceed it by
    /// that one call.
    #[arg(long, value_name = "N", help_heading = "Budgets")]
    pub(crate) max_total_tokens: Option<u64>,

    /// Levels of runs: the top-level run is depth 0, and at depth N-1 rlm_query is a plain
    /// llm_query (2: the root may start child runs; 1: no recursion).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recursion")]
    pub(crate) max_depth: u32,

    /// The root model of child runs started by rlm_query / rlm_batch (default: the sub
    /// model).
    #[arg(
        long,
        value_name = "NAME",
        env = "RLM_CHILD_MODEL",
        help_heading = "Recursion"
    )]
    pub(crate) child_model: Option<String>,

    /// Root turns of a child run before it is asked for its best answer.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Recursion")]
    pub(crate) child_max_iterations: u32,

    /// The largest sub-call prompt, in estimated tokens (about four bytes each): a larger
    /// llm_query / llm_batch item fails at once with an "Error:" naming both sizes, instead
    /// of a 400 from the server after a round trip (default: no limit).
    #[arg(long, value_name = "N", help_heading = "Recursion")]
    pub(crate) sub_max_prompt_tokens: Option<u64>,

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

    /// Progress on stderr: `bar` draws bars (a terminal's), `lines` prints one timestamped
    /// line per turn, batch start and end, retry wait and rate-limit wait (for CI logs and
    /// `2>log`), `none` nothing; `auto` is `bar` on a terminal and `none` otherwise.
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = ProgressMode::Auto,
        help_heading = "Output and behaviour"
    )]
    pub(crate) progress: ProgressMode,
}

/// How progress is shown (`--progress`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ProgressMode {
    /// Bars on a terminal, nothing otherwise.
    Auto,
    /// Bars and a spinner.
    Bar,
    /// One timestamped line per event of interest.
    Lines,
    /// Nothing.
    None,
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
