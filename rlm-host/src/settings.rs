//! The settings of a backend stack and its runs: plain data, one field per model, server,
//! limit, budget, sandbox and cache flag of `rlm run`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use rlm_core::cost::Prices;

use crate::HostError;

/// Everything a front end chooses about its models, server, limits, budgets, sandbox and
/// cache. Field names are the `rlm run` flags with underscores; [`Settings::default`] has the
/// flags' defaults. The API key itself is never held here: [`api_key_env`](Self::api_key_env)
/// names the environment variable it is read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The root model: it writes the code and gives the answer.
    pub model: String,
    /// The model of `llm_query` / `llm_batch` sub-calls (`None`: the root model).
    pub sub_model: Option<String>,
    /// The root model of child runs (`None`: the sub model).
    pub child_model: Option<String>,
    /// The OpenAI-compatible endpoint, up to the API version (empty: the OpenAI API).
    pub base_url: String,
    /// The environment variable that holds the API key.
    pub api_key_env: String,
    /// One HTTP attempt of a root call.
    pub timeout: Duration,
    /// One HTTP attempt of a sub-call.
    pub sub_timeout: Duration,
    /// Retries of a failed call.
    pub max_retries: u32,
    /// Requests per minute to each model (0: no limit).
    pub rpm: u32,
    /// Tokens per minute to each model (0: no limit).
    pub tpm: u32,
    /// Requests per minute to the sub model, when it differs from the root model.
    pub sub_rpm: Option<u32>,
    /// Tokens per minute to the sub model, when it differs from the root model.
    pub sub_tpm: Option<u32>,
    /// Root turns before the final ask.
    pub max_iterations: u32,
    /// Sub-calls `llm_batch` runs at once by default (and the ceiling).
    pub max_concurrent: u32,
    /// Calls allowed below the top-level root over a run.
    pub max_sub_calls: Option<u64>,
    /// Tokens allowed over a run.
    pub max_total_tokens: Option<u64>,
    /// Levels of runs (1: no recursion).
    pub max_depth: u32,
    /// Root turns of a child run.
    pub child_max_iterations: u32,
    /// The largest sub-call prompt, in estimated tokens.
    pub sub_max_prompt_tokens: Option<u64>,
    /// Wall-clock time a run may take.
    pub max_time: Option<Duration>,
    /// US dollars a run may spend, by the prices.
    pub max_cost: Option<f64>,
    /// A prices file over the built-in table (see [`crate::prices::load`]).
    pub prices: Option<PathBuf>,
    /// Bytes the REPL's variables may hold (0: no limit).
    pub max_memory: usize,
    /// Fit `max_memory` to each run's context (the default, `--max-memory auto`): a tree of
    /// runs may hold `max_memory` plus twice its context's size, at most the machine's
    /// memory less the context (see [`rlm_repl::SandboxLimits::max_memory_fits_context`]).
    /// Off when the budget was given explicitly.
    pub max_memory_fits_context: bool,
    /// Script time one code block may take.
    pub block_timeout: Duration,
    /// The longest string a script may build, in bytes (0: no limit).
    pub max_string_bytes: usize,
    /// Send every sub-call, even one identical to an earlier one: no cache tier at all.
    pub no_cache: bool,
    /// A directory for the persistent sub-call cache (feature `disk`; empty: none).
    pub cache_dir: Option<OsString>,
    /// The most bytes the disk cache keeps.
    pub cache_max_bytes: u64,
    /// How long a stored answer stays valid (default: on disk forever, in Redis 7 days).
    pub cache_ttl: Option<Duration>,
    /// A Redis server for a shared cache tier and shared pacing (feature `redis`; empty:
    /// none).
    pub redis: Option<String>,
    /// The prefix of every Redis key.
    pub redis_prefix: String,
    /// The schema the final answer must conform to (`--output-schema`; see
    /// [`crate::output_schema::load`]).
    pub output_schema: Option<rlm_repl::OutputSchema>,
    /// Non-conforming final answers refused before the run ends without one.
    pub output_schema_retries: u32,
    /// How `llm_query_json` / `llm_batch_json` ask for JSON.
    pub structured_output: rlm_repl::StructuredOutput,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            model: String::new(),
            sub_model: None,
            child_model: None,
            base_url: rlm_openai::DEFAULT_BASE_URL.to_owned(),
            api_key_env: "OPENAI_API_KEY".to_owned(),
            timeout: Duration::from_secs(600),
            sub_timeout: Duration::from_secs(120),
            max_retries: rlm_openai::DEFAULT_MAX_RETRIES,
            rpm: 0,
            tpm: 0,
            sub_rpm: None,
            sub_tpm: None,
            max_iterations: 20,
            max_concurrent: u32::try_from(rlm_core::DEFAULT_MAX_CONCURRENT).unwrap_or(u32::MAX),
            max_sub_calls: None,
            max_total_tokens: None,
            max_depth: 2,
            child_max_iterations: 10,
            sub_max_prompt_tokens: None,
            max_time: None,
            max_cost: None,
            prices: None,
            max_memory: rlm_repl::DEFAULT_MAX_MEMORY,
            max_memory_fits_context: true,
            block_timeout: Duration::from_secs(60),
            max_string_bytes: 256 << 20,
            no_cache: false,
            cache_dir: None,
            cache_max_bytes: rlm_cache::DEFAULT_MAX_BYTES,
            cache_ttl: None,
            redis: None,
            redis_prefix: "rlm".to_owned(),
            output_schema: None,
            output_schema_retries: rlm_repl::DEFAULT_OUTPUT_SCHEMA_RETRIES as u32,
            structured_output: rlm_repl::StructuredOutput::Auto,
        }
    }
}

impl Settings {
    /// Settings for `model`, the rest at their defaults.
    pub fn new(model: impl Into<String>) -> Self {
        Self {
            model: model.into(),
            ..Self::default()
        }
    }

    /// The built-in prices with [`prices`](Self::prices)' file on top.
    ///
    /// # Errors
    /// As [`crate::prices::load`]; and [`HostError::Usage`] when [`max_cost`](Self::max_cost)
    /// is set and a model of the run (root, sub or child) has no price: its calls would
    /// count as free, so the budget could not be kept.
    pub fn load_prices(&self) -> Result<Prices, HostError> {
        let prices = crate::prices::load(self.prices.as_deref())?;
        if let Some(usd) = self.max_cost {
            let unpriced: Vec<&str> = self
                .models()
                .into_iter()
                .filter(|model| prices.get(model).is_none())
                .collect();
            if !unpriced.is_empty() {
                return Err(HostError::Usage(format!(
                    "--max-cost {usd} cannot be kept: no price for {} (its calls would count \
                     as free); give {} with --prices FILE ({{\"MODEL\": {{\"input\": USD, \
                     \"output\": USD}}}} per million tokens; 0 for a free model)",
                    unpriced
                        .iter()
                        .map(|model| format!("model {model:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    if unpriced.len() == 1 {
                        "its price"
                    } else {
                        "their prices"
                    }
                )));
            }
        }
        Ok(prices)
    }

    /// The models a run may call, each once: the root model, the sub model (default: the
    /// root model) and the child model (default: the sub model), trimmed, empty names left
    /// out.
    pub fn models(&self) -> Vec<&str> {
        let root = self.model.trim();
        let sub = self.sub_model.as_deref().map_or(root, str::trim);
        let child = self.child_model.as_deref().map_or(sub, str::trim);
        let mut models: Vec<&str> = Vec::with_capacity(3);
        for model in [root, sub, child] {
            if !model.is_empty() && !models.contains(&model) {
                models.push(model);
            }
        }
        models
    }

    /// The settings a trace's `run_start` shows beside the engine's own (base URL without
    /// credentials, rate limits, retries, timeouts, cache); nothing secret.
    pub fn trace_settings(&self) -> serde_json::Map<String, serde_json::Value> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let serde_json::Value::Object(map) = serde_json::json!({
            "base_url": crate::url::display_url(self.base_url.trim()),
            "rpm": self.rpm,
            "tpm": self.tpm,
            "sub_rpm": self.sub_rpm,
            "sub_tpm": self.sub_tpm,
            "max_retries": self.max_retries,
            "timeout_ms": ms(self.timeout),
            "sub_timeout_ms": ms(self.sub_timeout),
            "cache": !self.no_cache,
        }) else {
            return serde_json::Map::new();
        };
        map
    }

    /// When [`tpm`](Self::tpm) is smaller than one root request (its system prompt, the
    /// built-in one unless `system_prompt` is given, and the completion the pacer
    /// reserves): that request's tokens and how long it will wait before it is sent, as a
    /// request larger than a minute's budget waits until the budget covers it. `None`
    /// without a limit or when the request fits.
    pub fn tpm_shortfall(&self, system_prompt: Option<&str>) -> Option<(u64, Duration)> {
        if self.tpm == 0 {
            return None;
        }
        let prompt = match system_prompt {
            Some(prompt) => prompt.to_owned(),
            None => rlm_repl::prompt::system_prompt(&rlm_repl::RlmConfig::default()),
        };
        let request = rlm_core::CompletionRequest::prompt(self.model.trim(), prompt);
        let tokens = request
            .estimated_prompt_tokens()
            .saturating_add(u64::from(rlm_openai::PACING_COMPLETION_TOKENS));
        if tokens <= u64::from(self.tpm) {
            return None;
        }
        let wait = Duration::from_secs_f64(tokens as f64 / f64::from(self.tpm) * 60.0);
        Some((tokens, wait))
    }

    /// The base URL, trimmed.
    ///
    /// # Errors
    /// [`HostError::Usage`] when it is empty: an empty `--base-url` (or `OPENAI_BASE_URL`) is
    /// a mistake (a variable that was meant to hold the URL), never a quiet switch to the
    /// OpenAI API, whose URL is the default.
    pub(crate) fn effective_base_url(&self) -> Result<String, HostError> {
        match self.base_url.trim() {
            "" => Err(HostError::Usage(format!(
                "--base-url is empty (or OPENAI_BASE_URL is set but empty): give the server's \
                 URL up to its API version (e.g. http://localhost:11434/v1), or leave both \
                 unset for the OpenAI API ({})",
                rlm_openai::DEFAULT_BASE_URL
            ))),
            url => Ok(url.to_owned()),
        }
    }

    /// `--redis`, unless empty (an empty `RLM_REDIS_URL` means unset).
    pub(crate) fn redis_url(&self) -> Option<&str> {
        self.redis
            .as_deref()
            .map(str::trim)
            .filter(|url| !url.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_budget(model: &str, sub: Option<&str>, child: Option<&str>) -> Settings {
        Settings {
            sub_model: sub.map(str::to_owned),
            child_model: child.map(str::to_owned),
            max_cost: Some(1.0),
            ..Settings::new(model)
        }
    }

    /// The refusal of `settings`, which must name each of `models` and `--prices`.
    fn refused(settings: &Settings, models: &[&str]) {
        let error = settings.load_prices().err();
        assert!(matches!(error, Some(HostError::Usage(_))), "{error:?}");
        let message = error.map(|e| e.to_string()).unwrap_or_default();
        for model in models {
            assert!(message.contains(&format!("{model:?}")), "{message}");
        }
        assert!(message.contains("--prices"), "{message}");
    }

    #[test]
    fn a_cost_budget_needs_a_price_for_every_model() {
        assert!(
            with_budget("gpt-4o", Some("gpt-4o-mini"), None)
                .load_prices()
                .is_ok()
        );
        // Without a budget, a model without a price is only reported (as free).
        assert!(Settings::new("local-model").load_prices().is_ok());

        refused(&with_budget("local-model", None, None), &["local-model"]);
        refused(
            &with_budget("local-model", Some("gpt-4o"), None),
            &["local-model"],
        );
        refused(
            &with_budget("gpt-4o", Some("local-sub"), None),
            &["local-sub"],
        );
        refused(
            &with_budget("gpt-4o", None, Some("local-child")),
            &["local-child"],
        );
        refused(&with_budget("a", Some("b"), Some("c")), &["a", "b", "c"]);

        // A prices file that prices it (free here) lets the budget hold.
        let file = std::env::temp_dir().join(format!("rlm-settings-{}.json", std::process::id()));
        std::fs::write(&file, r#"{"local-sub": {"input": 0, "output": 0}}"#)
            .unwrap_or_else(|e| panic!("{e}"));
        let settings = Settings {
            prices: Some(file.clone()),
            ..with_budget("gpt-4o", Some("local-sub"), None)
        };
        let loaded = settings.load_prices();
        let _ = std::fs::remove_file(&file);
        assert!(loaded.is_ok(), "{loaded:?}");
    }

    #[test]
    fn the_models_of_a_run_default_down_the_tree() {
        assert_eq!(Settings::new(" m ").models(), ["m"]);
        assert_eq!(with_budget("m", Some("s"), None).models(), ["m", "s"]);
        assert_eq!(with_budget("m", None, Some("c")).models(), ["m", "c"]);
        assert_eq!(with_budget("m", Some("m"), Some("s")).models(), ["m", "s"]);
        assert!(Settings::default().models().is_empty());
    }
}
