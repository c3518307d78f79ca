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
  \"refused_sub_calls\", \"cancelled_sub_calls\", \"max_depth_reached\",
  \"child_runs\", \"warnings\", \"cost_usd\": {\"total\", \"by_model\": {MODEL: USD},
  \"unpriced\": [MODEL]}, \"cache\"}). A usage summary, warnings and errors go to
  stderr; progress too (see --progress).
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
  turn_start, root_reply, root_reasoning, code_block, sub_call_start, sub_call_end,
  batch_start, batch_progress, batch_end, tool_call, turn_end, output_refused
  (with --output-schema), final (with cost_usd), run_error. depth
  is 0 for the top-level run; run is its id path (\"0\", \"0.3\", \"0.3.1\"); a
  child's run_start names its parent. run_start carries the settings (models,
  base URL without credentials, limits, budgets), the wall-clock start, the
  system prompt and the first message; turn_end only counts, with the verdict on
  the turn's answer (the text is in root_reply and code_block); a sub_call_end
  cut short says \"cancelled\": true.
  The API key is never in it. `rlm view FILE` makes an HTML page of it.

Environment:
  OPENAI_API_KEY     the API key (sent as a bearer token; never printed or traced)
  OPENAI_BASE_URL    default of --base-url
  OPENAI_ORG_ID      sent as OpenAI-Organization, when set
  OPENAI_PROJECT_ID  sent as OpenAI-Project, when set
  RLM_MODEL          default of --model
  RLM_SUB_MODEL      default of --sub-model
  RLM_CACHE_DIR      default of --cache-dir
  RLM_REDIS_URL      default of --redis
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
    #[command(
        after_help = format!("{RUN_AFTER_HELP}\n{EXIT_CODES_HELP}"),
        allow_negative_numbers = true
    )]
    Run(Box<RunArgs>),
    /// Serve an OpenAI-compatible HTTP API: POST /v1/chat/completions answers the last user
    /// message with a Recursive Language Model.
    #[command(
        after_help = SERVE_AFTER_HELP,
        allow_negative_numbers = true,
        mut_arg("query", |a| a.required_unless_present(clap::builder::Resettable::Reset).hide(true)),
        mut_arg("query_file", |a| a.hide(true)),
        mut_arg("json", |a| a.hide(true)),
        mut_arg("trace", |a| a.hide(true)),
        mut_arg("session", |a| a.hide(true))
    )]
    Serve(Box<ServeArgs>),
    /// Serve the Model Context Protocol on stdio: the tool rlm_answer answers a query over
    /// files under the allowed roots, or over text.
    #[command(
        after_help = MCP_AFTER_HELP,
        allow_negative_numbers = true,
        mut_arg("query", |a| a.required_unless_present(clap::builder::Resettable::Reset).hide(true)),
        mut_arg("query_file", |a| a.hide(true)),
        mut_arg("context", |a| a.hide(true)),
        mut_arg("json", |a| a.hide(true)),
        mut_arg("trace", |a| a.hide(true)),
        mut_arg("session", |a| a.hide(true))
    )]
    Mcp(Box<McpArgs>),
    /// An interactive session in the terminal: each question is answered like `rlm run`,
    /// in one REPL (follow-up questions keep its variables and see the earlier answers; the
    /// context is loaded once). Ctrl-C cancels the current question, Ctrl-D ends.
    #[command(
        after_help = CHAT_AFTER_HELP,
        allow_negative_numbers = true,
        mut_arg("query", |a| a.required_unless_present(clap::builder::Resettable::Reset).hide(true)),
        mut_arg("query_file", |a| a.hide(true)),
        mut_arg("json", |a| a.hide(true))
    )]
    Chat(Box<RunArgs>),
    /// Run many jobs (JOBS.jsonl: one {"id", "query", ...} per line) on one backend stack,
    /// writing one result line per job to --output as each finishes; resumable.
    #[command(
        after_help = BATCH_AFTER_HELP,
        allow_negative_numbers = true,
        mut_arg("query", |a| a.required_unless_present(clap::builder::Resettable::Reset).hide(true)),
        mut_arg("query_file", |a| a.hide(true)),
        mut_arg("context", |a| a.hide(true)),
        mut_arg("trace", |a| a.hide(true)),
        mut_arg("session", |a| a.hide(true))
    )]
    Batch(Box<BatchArgs>),
    /// Take jobs from a Redis Streams queue that `rlm batch --queue` fills, run them, and
    /// store their results for the collector; run any number, on any machine.
    #[command(
        after_help = WORKER_AFTER_HELP,
        allow_negative_numbers = true,
        mut_arg("query", |a| a.required_unless_present(clap::builder::Resettable::Reset).hide(true)),
        mut_arg("query_file", |a| a.hide(true)),
        mut_arg("context", |a| a.hide(true)),
        mut_arg("trace", |a| a.hide(true)),
        mut_arg("json", |a| a.hide(true)),
        mut_arg("session", |a| a.hide(true))
    )]
    Worker(Box<WorkerArgs>),
    /// Offline demo, no key needed: the same job with sequential llm_query and with
    /// llm_batch, timed.
    #[command(after_help = EXIT_CODES_HELP, allow_negative_numbers = true)]
    Demo(DemoArgs),
    /// Make one self-contained HTML page from a --trace file: the summary and cost, every
    /// turn, a timeline of the sub-calls, and the recursion tree. Opens from file://, loads
    /// nothing from the network.
    #[command(after_help = VIEW_AFTER_HELP)]
    View(ViewArgs),
}

const CHAT_AFTER_HELP: &str = "\
Takes every flag of `rlm run` but the query and --json. Each answer goes to stdout
as `rlm run` prints it; the summary and warnings go to stderr (not with --quiet).
Lines are edited and recalled (arrow keys) with the usual readline keys. With
--session FILE, the session resumes from FILE if it exists and is saved there after
every question. --trace FILE records every question's run.";

const VIEW_AFTER_HELP: &str = "\
The page is written beside the trace (t.jsonl -> t.html) unless -o names another file;
its path is printed on stdout. A trace cut short (a killed run) still renders, with a
notice. Cost comes from the trace's final event, or, for a trace without one, from the
built-in prices and --prices.

Exit status:
  0    the page was written
  2    bad flags
  4    the trace or the prices could not be read, or the page not written";

/// Flags of `rlm view`.
#[derive(Debug, Args)]
pub(crate) struct ViewArgs {
    /// The trace file (JSON Lines, as `rlm run --trace` writes it).
    #[arg(value_name = "TRACE.jsonl")]
    pub(crate) trace: PathBuf,

    /// Where to write the page (default: beside the trace, with the extension .html).
    #[arg(short, long, value_name = "FILE.html")]
    pub(crate) output: Option<PathBuf>,

    /// Prices for traces without cost (see `rlm run --help`).
    #[arg(long, value_name = "FILE")]
    pub(crate) prices: Option<PathBuf>,

    /// Print nothing on stderr but errors.
    #[arg(long)]
    pub(crate) quiet: bool,
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

    /// Resume the session saved in FILE, if there is one, and save it there after the run
    /// (`rlm chat`: after every question): the REPL's variables and the questions and answers
    /// (a versioned JSON file; see the README's "Sessions"). The context is not stored: give the same --context again
    /// (another one is refused). Written atomically (a temporary file, then a rename).
    #[arg(long, value_name = "FILE", help_heading = "Input")]
    pub(crate) session: Option<PathBuf>,

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

    /// US dollars the run may spend, by the prices (default: no limit). Each call reserves
    /// its estimated cost before it is sent (prompt at ~4 bytes a token plus 1,000
    /// completion tokens) and settles it with the usage the server reports; a call that does
    /// not fit is refused and the run stops (exit 3). The final ask for an answer is still
    /// made and may pass the budget by that call. Every model of the run (root, sub, child)
    /// needs a price (built in or from --prices): a model without one is refused at start
    /// (exit 2), since its calls would count as free.
    #[arg(long, value_name = "USD", value_parser = parse_usd, help_heading = "Budgets")]
    pub(crate) max_cost: Option<f64>,

    /// Prices per model, in USD per million tokens, over the built-in table: a JSON or TOML
    /// file of {MODEL: {input, cached_input, output}} (cached_input optional). See the README
    /// for the built-in table and its date.
    #[arg(long, value_name = "FILE", help_heading = "Budgets")]
    pub(crate) prices: Option<PathBuf>,

    /// The most bytes read from the context (a file, all the files of a directory, or
    /// stdin), and from the query file, the system prompt file or `--query -`. Suffixes K,
    /// M, G (powers of 1024) allowed; 0: no limit. Past it the run stops with an input error
    /// (exit 4) before anything is sent.
    #[arg(
        long,
        value_name = "N",
        default_value = "1G",
        value_parser = parse_bytes,
        help_heading = "Input"
    )]
    pub(crate) max_context_bytes: usize,

    /// Bytes the REPL's variables may hold (the context excepted), e.g. 512M or 2G; 0: no
    /// limit; auto: 1 GiB plus twice the context's size (its chunks and the prompts built
    /// from them), at most the machine's memory less the context. Checked after every code
    /// block and, on Linux, while it runs; past it the model gets an error naming the big
    /// variables (removed, largest first) and the run goes on. Also bounds what one
    /// llm_batch may send and keep.
    #[arg(
        long,
        value_name = "BYTES|auto",
        default_value = "auto",
        value_parser = parse_memory,
        help_heading = "Sandbox"
    )]
    pub(crate) max_memory: Memory,

    /// Seconds of script time one code block may run (time waiting for sub-calls excepted;
    /// sleep counts).
    #[arg(
        long,
        value_name = "SECS",
        default_value = "60",
        value_parser = parse_seconds,
        help_heading = "Sandbox"
    )]
    pub(crate) block_timeout: Duration,

    /// Longest string a script may build, in bytes (K, M, G allowed; raised to fit the
    /// context; 0: no limit). A sub-call answer longer than this becomes an Error string
    /// with its start.
    #[arg(
        long,
        value_name = "N",
        default_value = "256M",
        value_parser = parse_bytes,
        help_heading = "Sandbox"
    )]
    pub(crate) max_string_bytes: usize,

    /// Send every sub-call, even one identical to an earlier one (by default identical
    /// sub-calls of a run are sent once and share the answer).
    #[arg(long, help_heading = "Output and behaviour")]
    pub(crate) no_cache: bool,

    /// Keep sub-call answers in DIR (an SQLite file that several rlm processes may share
    /// at once), so a later run asking the same sub-calls is answered from disk. Root
    /// calls and errors are never stored.
    #[arg(
        long,
        value_name = "DIR",
        env = "RLM_CACHE_DIR",
        value_parser = clap::value_parser!(std::ffi::OsString),
        help_heading = "Persistent and shared state"
    )]
    pub(crate) cache_dir: Option<std::ffi::OsString>,

    /// Most bytes (keys and values) the --cache-dir cache keeps; the oldest entries go
    /// first.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = rlm_cache::DEFAULT_MAX_BYTES,
        help_heading = "Persistent and shared state"
    )]
    pub(crate) cache_max_bytes: u64,

    /// Seconds a stored sub-call answer stays valid, on disk and in Redis (default: on disk
    /// forever, in Redis 7 days).
    #[arg(
        long,
        value_name = "SECS",
        value_parser = parse_seconds,
        help_heading = "Persistent and shared state"
    )]
    pub(crate) cache_ttl: Option<Duration>,

    /// Share sub-call answers and the --rpm/--tpm limits with every rlm process using
    /// this Redis server (redis://[:PASSWORD@]HOST[:PORT][/DB]). While it is unreachable,
    /// each process uses its own cache and limits, and picks Redis up again when it is back.
    #[arg(
        long,
        value_name = "URL",
        env = "RLM_REDIS_URL",
        hide_env_values = true,
        help_heading = "Persistent and shared state"
    )]
    pub(crate) redis: Option<String>,

    /// Prefix of every Redis key rlm uses: one per deployment sharing a server.
    #[arg(
        long,
        value_name = "PREFIX",
        default_value = "rlm",
        help_heading = "Persistent and shared state"
    )]
    pub(crate) redis_prefix: String,

    /// A JSON Schema (draft 2020-12 or 7, a JSON file) the answer must conform to. The root
    /// model is told the schema; a final answer is converted to JSON and validated, and one
    /// that does not conform is refused with its first errors. stdout is then the answer as
    /// compact JSON on one line (--json: `answer` is the value). A file that is not JSON or
    /// not a valid schema is exit 2.
    #[arg(long, value_name = "FILE", help_heading = "Typed answers")]
    pub(crate) output_schema: Option<PathBuf>,

    /// Non-conforming final answers refused before the run ends without an answer
    /// (`stopped: "invalid_output"`, exit 3, stdout empty).
    #[arg(
        long,
        value_name = "N",
        default_value_t = rlm_host::DEFAULT_OUTPUT_SCHEMA_RETRIES as u32,
        help_heading = "Typed answers"
    )]
    pub(crate) output_schema_retries: u32,

    /// How llm_query_json / llm_batch_json ask the sub-model for JSON: `native` sends the
    /// schema as OpenAI's response_format (json_schema, strict), `prompt` puts it in the
    /// prompt, `auto` tries native and uses the prompt for a model whose server refuses
    /// response_format (one warning).
    #[arg(
        long,
        value_enum,
        value_name = "MODE",
        default_value_t = StructuredMode::Auto,
        help_heading = "Typed answers"
    )]
    pub(crate) structured_output: StructuredMode,

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

/// `--structured-output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StructuredMode {
    /// Native, falling back to the prompt per model.
    Auto,
    /// The provider's response_format.
    Native,
    /// The schema in the prompt.
    Prompt,
}

impl From<StructuredMode> for rlm_host::StructuredOutput {
    fn from(mode: StructuredMode) -> Self {
        match mode {
            StructuredMode::Auto => rlm_host::StructuredOutput::Auto,
            StructuredMode::Native => rlm_host::StructuredOutput::Native,
            StructuredMode::Prompt => rlm_host::StructuredOutput::Prompt,
        }
    }
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

const SERVE_AFTER_HELP: &str = "\
Endpoints:
  GET  /v1/models            lists the model \"rlm\" (any model name is accepted)
  POST /v1/chat/completions  the query is the last user message; the context is
                             --context if given, else the earlier messages (system
                             messages are extra instructions to the root model);
                             stream: true sends the trajectory as
                             delta.reasoning_content, then the answer as
                             delta.content, then usage (stream_options.include_usage)
  POST /v1/responses         OpenAI's Responses API (stream and not): input as a
                             string or message items, instructions;
                             previous_response_id asks the next question in that
                             response's session (REPL variables and conversation
                             kept, context not reloaded); --session-ttl,
                             --max-sessions; unknown or expired: 404
                             session_not_found
  GET|DELETE /v1/responses/ID a stored response; deleting a session's latest
                             response ends the session
  GET  /v1/models/{id}       any model id (any model name is accepted)
  GET  /health               {\"status\": \"ok\", \"running\", \"queued\", \"max_runs\"}
  GET  /metrics              Prometheus text format (behind the server key)

  A message longer than --inline-max-bytes becomes part of the context; the root
  model sees its head and tail. Parameters rlm cannot honour (tools, n > 1,
  logprobs, ...) are refused with 400 unsupported_parameter naming them; others
  without effect are listed in rlm.ignored_parameters. SIGTERM or Ctrl-C drains:
  runs in flight get --shutdown-grace seconds, then are cancelled (503). One
  access-log line per request on stderr (--log-format text|json).

  Replies carry an \"rlm\" object (iterations, stopped, sub_calls, failed_sub_calls,
  warnings, cost_usd). A budget stop is still 200, with finish_reason \"length\".
  response_format json_schema / json_object is the run's output schema: the content
  is the conforming JSON, or the reply is 422 invalid_output / schema_not_met.
  Errors: {\"error\": {\"message\", \"type\", \"code\"}}; 400 bad body, 401 wrong server
  key, 413 body over --max-request-bytes, 429 queue full (Retry-After), 502 the
  upstream model server failed, 503 shutting down. All requests share one backend: --rpm, --tpm,
  retries and the sub-call cache hold across them. A client that disconnects
  cancels its run.";

const MCP_AFTER_HELP: &str = "\
Tool rlm_answer: {\"query\": str, \"paths\": [str]} or {\"query\": str, \"text\": str},
  plus an optional \"output_schema\" (a JSON Schema object): the answer must conform,
  and the result's structuredContent holds it.
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

    /// The largest request body, in bytes, with K/M/G suffixes like the other sizes (413
    /// beyond).
    #[arg(
        long,
        value_name = "BYTES",
        default_value = "256M",
        value_parser = parse_request_bytes,
        help_heading = "Serving"
    )]
    pub(crate) max_request_bytes: usize,

    /// A browser origin allowed to call the server from its pages (e.g.
    /// https://app.example); repeat for more. Other cross-site browser requests are refused.
    #[arg(long = "cors-origin", value_name = "ORIGIN", help_heading = "Serving")]
    pub(crate) cors_origins: Vec<String>,

    /// Seconds a Responses API session (previous_response_id) is kept after its last use.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "3600",
        value_parser = parse_seconds,
        help_heading = "Serving"
    )]
    pub(crate) session_ttl: Duration,

    /// Responses API sessions kept at once; beyond it the least recently used is evicted
    /// (each holds its REPL, within --max-memory).
    #[arg(
        long,
        value_name = "N",
        default_value_t = rlm_serve::serve::DEFAULT_MAX_SESSIONS as u32,
        value_parser = clap::value_parser!(u32).range(1..),
        help_heading = "Serving"
    )]
    pub(crate) max_sessions: u32,
    /// The longest message shown whole to the root model, in bytes (K/M suffixes). A longer
    /// one (a pasted document, an attachment, a long system message) becomes part of the
    /// context and the root model sees its head and tail. 0: no limit.
    #[arg(
        long,
        value_name = "BYTES",
        default_value = "16K",
        value_parser = parse_bytes,
        help_heading = "Serving"
    )]
    pub(crate) inline_max_bytes: usize,

    /// Seconds that runs in flight may take to finish after SIGTERM or SIGINT (Ctrl-C);
    /// then they are cancelled and their clients get an error.
    #[arg(
        long,
        value_name = "SECS",
        default_value = "30",
        value_parser = parse_seconds,
        help_heading = "Serving"
    )]
    pub(crate) shutdown_grace: Duration,

    /// The access log's form on stderr: one line per request, as text or as JSON.
    #[arg(
        long,
        value_name = "FORMAT",
        value_enum,
        default_value = "text",
        help_heading = "Serving"
    )]
    pub(crate) log_format: LogFormatArg,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormatArg {
    /// `key=value` words on one line.
    Text,
    /// One JSON object a line.
    Json,
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

const BATCH_AFTER_HELP: &str = "\
Jobs (JOBS.jsonl, one JSON object per line):
  {\"id\": str|int, \"query\": str} plus optional \"context\" (string, array or
  object), \"context_path\" (a file or directory, read like --context),
  \"expected\" (for --score), \"output_schema\" (a JSON Schema object), \"model\",
  \"sub_model\" (override --model/--sub-model for the job), \"meta\" (ignored).
  The whole file is checked before any job starts: a bad line or a duplicate id
  is exit 2, naming the line.

Results (--output, one line per job, written whole as each job finishes):
  {\"id\", \"answer\", \"stopped\", \"iterations\", \"elapsed_ms\", \"usage\",
  \"cost_usd\", \"sub_calls\", \"failed_sub_calls\", \"warnings\",
  \"error\": null | {\"message\", \"kind\"}, \"correct\"?, \"trace\"?}
  Run the same command again and the ids already in --output are skipped
  (--retry-failed runs the failed ones again). A job that fails (its context
  cannot be read, its model fails, --total-max-cost is spent) is a line with
  \"error\"; the batch goes on.

Summary: on stderr (answered / failed / skipped, accuracy, tokens and cost per
  model, p50/p95 wall, mean turns), or one JSON object on stdout with --json.

Many machines: --queue redis://HOST enqueues the jobs on a Redis stream and
  collects the results that `rlm worker --queue redis://HOST` processes store.

Exit status:
  0    every job has its line in --output (failed jobs included)
  1    internal error
  2    bad flags, or a bad line in the job file
  3    --total-max-cost was spent: the jobs left were not started
  4    the job file or --output could not be read or written
  5    the queue (--queue) is unreachable
  130  interrupted (Ctrl-C): jobs in flight have no line; run again to resume";

const WORKER_AFTER_HELP: &str = "\
A worker reads jobs from the stream PREFIX:batch:QUEUE:jobs with the consumer
group of the queue, runs --max-runs of them at once, stores each result (one
entry per job id: a job is never stored twice) and only then acknowledges it.
Jobs a dead worker held are claimed after --claim-idle seconds, up to
--max-attempts deliveries; a job past them gets an error result. Share the cache
and the rate limits with --redis. Runs until Ctrl-C or SIGTERM (jobs in flight are
stopped and handed back to the queue).

Exit status:
  0    stopped by Ctrl-C / SIGTERM
  2    bad flags
  5    the queue is unreachable at start";

/// Flags of `rlm batch`.
#[derive(Debug, Args)]
pub(crate) struct BatchArgs {
    /// The job file: one JSON object per line (see below).
    #[arg(value_name = "JOBS.jsonl")]
    pub(crate) jobs: PathBuf,

    /// The results file: one line per finished job, appended as each finishes.
    #[arg(short, long, value_name = "RESULTS.jsonl", help_heading = "Batch")]
    pub(crate) output: PathBuf,

    /// The flags shared with `rlm run`.
    #[command(flatten)]
    pub(crate) run: RunArgs,

    /// Jobs run at once (each with its own --max-concurrent sub-calls).
    #[arg(
        long,
        value_name = "N",
        default_value_t = rlm_host::batch::DEFAULT_MAX_RUNS as u32,
        value_parser = clap::value_parser!(u32).range(1..=4096),
        help_heading = "Batch"
    )]
    pub(crate) max_runs: u32,

    /// US dollars all jobs together may spend: each call reserves its estimate before it is
    /// sent, so the sum passes it by at most the calls in flight. A job refused by it is a
    /// line with an error; the jobs left are not started (exit 3).
    #[arg(long, value_name = "USD", value_parser = parse_usd, help_heading = "Batch")]
    pub(crate) total_max_cost: Option<f64>,

    /// Run the jobs whose line in --output has an error again (their old lines are removed).
    #[arg(long, help_heading = "Batch")]
    pub(crate) retry_failed: bool,

    /// How answers are compared with a job's "expected": exact (trimmed), contains (ignoring
    /// case), json (parsed, numbers by value), none.
    #[arg(long, value_enum, value_name = "HOW", default_value_t = ScoreMode::Exact, help_heading = "Batch")]
    pub(crate) score: ScoreMode,

    /// Write one trace per job, DIR/ID.jsonl (ids that are not safe file names get their
    /// safe characters and a hash), each readable by `rlm view`.
    #[arg(long, value_name = "DIR", help_heading = "Batch")]
    pub(crate) trace_dir: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) queue: QueueArgs,
}

/// Flags of `rlm worker`.
#[derive(Debug, Args)]
pub(crate) struct WorkerArgs {
    /// The flags shared with `rlm run`.
    #[command(flatten)]
    pub(crate) run: RunArgs,

    /// Jobs this worker runs at once.
    #[arg(
        long,
        value_name = "N",
        default_value_t = rlm_host::batch::DEFAULT_MAX_RUNS as u32,
        value_parser = clap::value_parser!(u32).range(1..=4096),
        help_heading = "Batch"
    )]
    pub(crate) max_runs: u32,

    /// Write one trace per job, DIR/ID.jsonl, on this machine.
    #[arg(long, value_name = "DIR", help_heading = "Batch")]
    pub(crate) trace_dir: Option<PathBuf>,

    #[command(flatten)]
    pub(crate) queue: QueueArgs,
}

/// The queue flags of `rlm batch` and `rlm worker`.
#[derive(Debug, Args)]
pub(crate) struct QueueArgs {
    /// A Redis server whose streams carry the jobs and results
    /// (redis://[:PASSWORD@]HOST[:PORT][/DB]).
    #[arg(
        long,
        value_name = "URL",
        hide_env_values = true,
        help_heading = "Queue"
    )]
    pub(crate) queue: Option<String>,

    /// The queue's name: batches with different names share a server without mixing.
    #[arg(
        long,
        value_name = "NAME",
        default_value = "default",
        help_heading = "Queue"
    )]
    pub(crate) queue_name: String,

    /// Seconds after which a job a worker took but did not finish (it died) is taken by
    /// another worker.
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_seconds, help_heading = "Queue")]
    pub(crate) claim_idle: Duration,

    /// Times a job is handed to a worker before it gets an error result.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..), help_heading = "Queue")]
    pub(crate) max_attempts: u32,
}

/// `--score`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum ScoreMode {
    /// The answer, trimmed, equals "expected".
    Exact,
    /// The answer contains "expected", ignoring case.
    Contains,
    /// The answer parsed as JSON equals "expected".
    Json,
    /// No scoring.
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

    /// Write the llm_batch run's trace to FILE: JSON Lines, as `rlm run --trace` writes
    /// them (open it with `rlm view FILE`).
    #[arg(long, value_name = "FILE")]
    pub(crate) trace: Option<PathBuf>,

    /// Print the measurements as one JSON object on stdout.
    #[arg(long)]
    pub(crate) json: bool,

    /// Print nothing but errors (and the JSON object with --json).
    #[arg(long)]
    pub(crate) quiet: bool,
}

/// A byte count: digits with an optional K, M or G suffix (powers of 1024; `B`, `iB` and
/// `KiB`-style spellings accepted).
pub(crate) fn parse_bytes(text: &str) -> Result<usize, String> {
    let trimmed = text.trim();
    let upper = trimmed.to_ascii_uppercase();
    let number = upper.trim_end_matches('B').trim_end_matches('I');
    let (digits, shift) = match number.chars().last() {
        Some('K') => (&number[..number.len() - 1], 10),
        Some('M') => (&number[..number.len() - 1], 20),
        Some('G') => (&number[..number.len() - 1], 30),
        Some('T') => (&number[..number.len() - 1], 40),
        _ => (number, 0),
    };
    let value: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes (e.g. 1000000, 512M, 2G)"))?;
    value
        .checked_mul(1u64 << shift)
        .and_then(|bytes| usize::try_from(bytes).ok())
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `--max-memory`: a number of bytes as given, or fitted to the context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Memory {
    /// 1 GiB plus twice the context, within the machine's memory.
    Auto,
    /// Exactly this many bytes (0: no limit).
    Bytes(usize),
}

/// `--max-memory`: `auto` or a size like `512M`.
fn parse_memory(text: &str) -> Result<Memory, String> {
    if text.trim().eq_ignore_ascii_case("auto") {
        return Ok(Memory::Auto);
    }
    parse_bytes(text)
        .map(Memory::Bytes)
        .map_err(|e| format!("{e}, or auto"))
}

/// A request body bound: a size like `512K` or `1M`, at least one byte.
fn parse_request_bytes(text: &str) -> Result<usize, String> {
    match parse_bytes(text)? {
        0 => Err("a request body bound of 0 bytes would refuse every request".to_owned()),
        bytes => Ok(bytes),
    }
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

/// Dollars as a number, at least 0.
fn parse_usd(text: &str) -> Result<f64, String> {
    let usd: f64 = text
        .trim()
        .trim_start_matches('$')
        .parse()
        .map_err(|_| format!("{text:?} is not a number of US dollars"))?;
    if !usd.is_finite() || usd < 0.0 {
        return Err("must be a number of US dollars, at least 0".to_owned());
    }
    Ok(usd)
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
    fn a_negative_number_is_judged_as_a_value_not_taken_for_a_flag() {
        // Before: "unexpected argument '-1' found", which says nothing of the range.
        for (flag, value) in [
            ("--max-cost", "-1"),
            ("--timeout", "-1"),
            ("--max-memory", "-5"),
            ("--max-concurrent", "-1"),
        ] {
            let error = Cli::try_parse_from(["rlm", "run", "-m", "m", "--query", "q", flag, value])
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(error.contains(value), "{flag}: {error}");
            assert!(!error.contains("unexpected argument"), "{flag}: {error}");
        }
    }

    #[test]
    fn the_request_body_bound_takes_sizes_and_defaults_to_the_servers() {
        let parse = |extra: &[&str]| {
            let args = ["rlm", "serve", "-m", "m"].iter().chain(extra).copied();
            match Cli::try_parse_from(args) {
                Ok(Cli {
                    command: Command::Serve(args),
                }) => Some(args.max_request_bytes),
                _ => None,
            }
        };
        assert_eq!(
            parse(&[]),
            Some(rlm_serve::serve::DEFAULT_MAX_REQUEST_BYTES)
        );
        // Before: "invalid digit found in string".
        assert_eq!(parse(&["--max-request-bytes", "1M"]), Some(1 << 20));
        assert_eq!(parse(&["--max-request-bytes", "0"]), None);
    }

    #[test]
    fn serve_takes_the_inline_limit_the_grace_and_the_log_format() {
        let parse = |extra: &[&str]| {
            let args = ["rlm", "serve", "-m", "m"].iter().chain(extra).copied();
            match Cli::try_parse_from(args) {
                Ok(Cli {
                    command: Command::Serve(args),
                }) => Some((args.inline_max_bytes, args.shutdown_grace, args.log_format)),
                _ => None,
            }
        };
        assert_eq!(
            parse(&[]),
            Some((
                rlm_serve::inline::DEFAULT_INLINE_MAX_BYTES,
                rlm_serve::drain::DEFAULT_SHUTDOWN_GRACE,
                LogFormatArg::Text
            ))
        );
        assert_eq!(
            parse(&[
                "--inline-max-bytes",
                "64K",
                "--shutdown-grace",
                "2.5",
                "--log-format",
                "json"
            ]),
            Some((64 << 10, Duration::from_millis(2_500), LogFormatArg::Json))
        );
        assert_eq!(parse(&["--inline-max-bytes", "0"]).map(|p| p.0), Some(0));
        assert_eq!(parse(&["--log-format", "xml"]), None);
        assert_eq!(parse(&["--shutdown-grace", "-1"]), None);
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
        assert_eq!(parse_usd("0.5"), Ok(0.5));
        assert_eq!(parse_usd("$2"), Ok(2.0));
        assert!(parse_usd("-1").is_err());
        assert!(parse_usd("inf").is_err());
        assert!(parse_usd("cheap").is_err());
    }

    #[test]
    fn view_flags_parse() {
        let cli = Cli::try_parse_from(["rlm", "view", "t.jsonl", "-o", "x.html"]);
        let Ok(Cli {
            command: Command::View(args),
        }) = cli
        else {
            panic!("did not parse: {cli:?}");
        };
        assert_eq!(args.trace, PathBuf::from("t.jsonl"));
        assert_eq!(args.output, Some(PathBuf::from("x.html")));
        assert!(Cli::try_parse_from(["rlm", "view"]).is_err());
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
