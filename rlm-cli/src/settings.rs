//! Flags to the host layer's settings: what `rlm run`, `rlm serve` and `rlm mcp` share.

use rlm_host::context::{self, LoadOptions};
use rlm_host::{HostError, Settings};

use crate::cli::{ContextFormat, Memory, RunArgs};

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

/// The text of `--system-prompt-file`, if given, within `--max-context-bytes`.
pub(crate) fn system_prompt(
    args: &RunArgs,
    warnings: &mut Vec<String>,
) -> Result<Option<String>, HostError> {
    args.system_prompt_file
        .as_deref()
        .map(|path| {
            context::read_text_file(path, "system prompt file", args.max_context_bytes, warnings)
        })
        .transpose()
}

/// The model, server, limit, budget, sandbox and cache flags.
pub(crate) fn settings(args: &RunArgs) -> Settings {
    Settings {
        model: args.model.clone(),
        sub_model: args.sub_model.clone(),
        child_model: args.child_model.clone(),
        base_url: args.base_url.clone(),
        api_key_env: args.api_key_env.clone(),
        timeout: args.timeout,
        sub_timeout: args.sub_timeout,
        max_retries: args.max_retries,
        rpm: args.rpm,
        tpm: args.tpm,
        sub_rpm: args.sub_rpm,
        sub_tpm: args.sub_tpm,
        max_iterations: args.max_iterations,
        max_concurrent: args.max_concurrent,
        max_sub_calls: args.max_sub_calls,
        max_total_tokens: args.max_total_tokens,
        max_depth: args.max_depth,
        child_max_iterations: args.child_max_iterations,
        sub_max_prompt_tokens: args.sub_max_prompt_tokens,
        max_time: args.max_time,
        max_cost: args.max_cost,
        prices: args.prices.clone(),
        max_memory: match args.max_memory {
            Memory::Auto => rlm_repl::DEFAULT_MAX_MEMORY,
            Memory::Bytes(bytes) => bytes,
        },
        max_memory_fits_context: args.max_memory == Memory::Auto,
        block_timeout: args.block_timeout,
        max_string_bytes: args.max_string_bytes,
        no_cache: args.no_cache,
        cache_dir: args.cache_dir.clone(),
        cache_max_bytes: args.cache_max_bytes,
        cache_ttl: args.cache_ttl,
        redis: args.redis.clone(),
        redis_prefix: args.redis_prefix.clone(),
        output_schema: None,
        output_schema_retries: args.output_schema_retries,
        structured_output: args.structured_output.into(),
    }
}

/// `--output-schema`, read and compiled (exit 2 for a file that is not JSON, not a valid
/// schema or too big).
pub(crate) fn output_schema(args: &RunArgs) -> Result<Option<rlm_host::OutputSchema>, HostError> {
    args.output_schema
        .as_deref()
        .map(rlm_host::output_schema::load)
        .transpose()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn the_flags_defaults_are_the_host_layers_defaults() {
        // Without the variables that set flags, so that the parse sees the defaults.
        let parsed = Cli::try_parse_from(["rlm", "run", "--query", "q", "--model", "m"]);
        let Ok(Cli {
            command: Command::Run(args),
        }) = parsed
        else {
            panic!("did not parse: {parsed:?}");
        };
        let mut expected = Settings::new("m");
        // The variables of the environment the tests run in may set these.
        expected.sub_model.clone_from(&args.sub_model);
        expected.child_model.clone_from(&args.child_model);
        expected.base_url.clone_from(&args.base_url);
        expected.cache_dir.clone_from(&args.cache_dir);
        expected.redis.clone_from(&args.redis);
        assert_eq!(settings(&args), expected);
        assert_eq!(load_options(&args), LoadOptions::default());
    }

    #[test]
    fn a_memory_budget_given_holds_as_given_and_auto_fits_the_context() {
        let parse = |value: &str| {
            let parsed = Cli::try_parse_from([
                "rlm",
                "run",
                "--query",
                "q",
                "--model",
                "m",
                "--max-memory",
                value,
            ]);
            match parsed {
                Ok(Cli {
                    command: Command::Run(args),
                }) => {
                    let settings = settings(&args);
                    (settings.max_memory, settings.max_memory_fits_context)
                }
                other => panic!("did not parse: {other:?}"),
            }
        };
        assert_eq!(parse("2G"), (2 << 30, false));
        assert_eq!(parse("0"), (0, false));
        assert_eq!(parse("auto"), (rlm_repl::DEFAULT_MAX_MEMORY, true));
        assert_eq!(parse("AUTO"), (rlm_repl::DEFAULT_MAX_MEMORY, true));
        let bad = Cli::try_parse_from([
            "rlm",
            "run",
            "--query",
            "q",
            "--model",
            "m",
            "--max-memory",
            "lots",
        ]);
        let message = bad.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message.contains("or auto"), "{message}");
    }
}
