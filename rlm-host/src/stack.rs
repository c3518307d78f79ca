//! Settings to a backend stack: one HTTP client with its rate limits and retries, usage
//! metering, and the tiers of the sub-call cache, shared by every run of a process.
//!
//! ```text
//! root calls:  Metered(OpenAiBackend)
//! sub-calls:   CachedBackend(disk tier(Redis tier(Metered(Sent(OpenAiBackend with --sub-timeout)))))
//! ```
//!
//! Usage is metered below the cache, so it counts what the server was really asked; `Sent`
//! counts the sub-calls that started there (the cache's `upstream_calls`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rlm_cache::{CacheStats, CachedBackend};
use rlm_core::usage::{Metered, ModelUsage, UsageTracker};
use rlm_core::{BatchExecutor, LlmBackend};
use rlm_openai::{ConfigError, OpenAiBackend, OpenAiConfig, RateLimit, WaitObserver};
use rlm_repl::{Rlm, RlmBuilder, RlmError, SandboxLimits};

use crate::runner::Runner;
use crate::sent::Sent;
use crate::state::{self, Notices, TierHits};
use crate::total::{Capped, TotalCost};
use crate::url::{display_url, host_of};
use crate::{HostError, Settings};

/// The longest connect timeout (a shorter [`Settings::timeout`] shortens it too).
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The backend stack every run of a process shares (a server's requests too).
pub struct Stack {
    model: String,
    sub_model: String,
    shown_url: String,
    root: Arc<dyn LlmBackend>,
    sub: Arc<dyn BatchExecutor>,
    tracker: UsageTracker,
    cache: Option<Arc<CachedBackend<Arc<dyn BatchExecutor>>>>,
    tier_hits: TierHits,
    notices: Notices,
    /// Sub-calls started at the server.
    sent: Arc<AtomicU64>,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("model", &self.model)
            .field("sub_model", &self.sub_model)
            .field("shown_url", &self.shown_url)
            .field("cache", &self.cache.is_some())
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Builds the stack from the model, server, rate-limit and cache settings, for up to
    /// `runs` runs at once (the connection pool is sized by [`pool_size`]). `waits`, if
    /// given, hears of every retry and rate-limit wait.
    ///
    /// # Errors
    /// [`HostError::Usage`] for an empty model name, an empty or bad base URL, a value of
    /// [`Settings::redis`] that is not a Redis URL;
    /// [`HostError::Auth`] for a missing key the OpenAI API needs, or a key that is not
    /// UTF-8; [`HostError::Input`] for a cache directory that is not a directory. A cache file
    /// that cannot be used, or a Redis URL this process cannot use, is not an error: the
    /// stack goes without that tier and [`warnings`](Self::warnings) says why.
    pub fn build(
        settings: &Settings,
        waits: Option<WaitObserver>,
        runs: usize,
    ) -> Result<Self, HostError> {
        Self::build_with_total(settings, waits, runs, None)
    }

    /// [`build`](Self::build), with every call the stack sends (root calls and sub-calls,
    /// not cache hits) charged to `total` when given: a cost budget shared by all the runs
    /// of the process (`rlm batch --total-max-cost`).
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn build_with_total(
        settings: &Settings,
        waits: Option<WaitObserver>,
        runs: usize,
        total: Option<Arc<TotalCost>>,
    ) -> Result<Self, HostError> {
        let api_key = match std::env::var(&settings.api_key_env) {
            Ok(key) => Some(key).filter(|key| !key.trim().is_empty()),
            Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(HostError::Auth(format!(
                    "the API key in {} is not valid UTF-8 (an HTTP header cannot carry it); \
                     check how the variable was set",
                    settings.api_key_env
                )));
            }
        };
        Self::build_keyed(settings, api_key, waits, runs, total)
    }

    /// [`build`](Self::build) with the API key given here (a library caller's own, such as
    /// the Python package's `api_key=`) instead of read from
    /// [`Settings::api_key_env`]. An empty key is no key.
    ///
    /// # Errors
    /// As [`build`](Self::build).
    pub fn build_with_api_key(
        settings: &Settings,
        api_key: &str,
        waits: Option<WaitObserver>,
        runs: usize,
    ) -> Result<Self, HostError> {
        let api_key = Some(api_key.to_owned()).filter(|key| !key.trim().is_empty());
        Self::build_keyed(settings, api_key, waits, runs, None)
    }

    fn build_keyed(
        settings: &Settings,
        api_key: Option<String>,
        waits: Option<WaitObserver>,
        runs: usize,
        total: Option<Arc<TotalCost>>,
    ) -> Result<Self, HostError> {
        let (model, sub_model) = models(settings)?;
        let base_url = settings.effective_base_url()?;
        let shown_url = display_url(&base_url);
        if api_key.is_none() && host_of(&base_url) == Some("api.openai.com") {
            return Err(HostError::Auth(format!(
                "no API key: {} is not set (set it, name another variable with --api-key-env, \
                 or point --base-url at a server that needs no key)",
                settings.api_key_env
            )));
        }

        let pool = pool_size(settings.max_concurrent, settings.max_depth, runs);
        let mut config = OpenAiConfig::from_env()
            .with_base_url(&base_url)
            .with_api_key(api_key.unwrap_or_default())
            .with_max_retries(settings.max_retries)
            .with_request_timeout(settings.timeout)
            .with_connect_timeout(settings.timeout.min(MAX_CONNECT_TIMEOUT))
            .with_concurrency(pool)
            .with_rate_limit(RateLimit::new(settings.rpm, settings.tpm));
        if let Some(waits) = waits {
            config = config.with_wait_observer(waits);
        }
        if sub_model != model && (settings.sub_rpm.is_some() || settings.sub_tpm.is_some()) {
            config = config.with_model_rate_limit(
                &sub_model,
                RateLimit::new(
                    settings.sub_rpm.unwrap_or(settings.rpm),
                    settings.sub_tpm.unwrap_or(settings.tpm),
                ),
            );
        }
        let notices = Notices::default();
        let redis = state::redis(settings, &notices)?;
        if let Some(redis) = &redis {
            config = config.with_shared_pacer(redis.pacer.clone());
        }
        let backend = OpenAiBackend::new(config).map_err(config_error)?;
        // Sub-calls share the client, pool and rate limits, with their own attempt timeout.
        let sub_backend = backend.with_request_timeout(settings.sub_timeout);
        // Charged to the total, if any, just above HTTP: cache hits cost nothing.
        let (backend, sub_backend): (Arc<dyn BatchExecutor>, Arc<dyn BatchExecutor>) = match total {
            Some(total) => (
                Arc::new(Capped::new(backend, Arc::clone(&total))),
                Arc::new(Capped::new(sub_backend, total)),
            ),
            None => (Arc::new(backend), Arc::new(sub_backend)),
        };
        Self::assemble(
            settings,
            (model, sub_model, shown_url),
            backend,
            sub_backend,
            redis,
            notices,
        )
    }

    /// A stack whose root and sub-calls go to `backend` (a caller's own model: a local
    /// model, a test double, the Python package's `backend=`) instead of an
    /// OpenAI-compatible server, with the same usage metering and sub-call cache tiers as
    /// [`build`](Self::build). The server, key, retry and rate-limit settings do not apply
    /// (the backend does its own); a Redis URL gives a shared cache tier only.
    ///
    /// # Errors
    /// [`HostError::Usage`] for an empty model name or a value of [`Settings::redis`] that
    /// is not a Redis URL; [`HostError::Input`] for a cache directory that is not a directory.
    pub fn with_backend(
        settings: &Settings,
        backend: Arc<dyn BatchExecutor>,
    ) -> Result<Self, HostError> {
        let (model, sub_model) = models(settings)?;
        let notices = Notices::default();
        let redis = state::redis(settings, &notices)?;
        Self::assemble(
            settings,
            (model, sub_model, "(a caller's backend)".to_owned()),
            backend.clone(),
            backend,
            redis,
            notices,
        )
    }

    /// Meters the backends and puts the cache tiers above the sub-call one.
    fn assemble<R, S>(
        settings: &Settings,
        (model, sub_model, shown_url): (String, String, String),
        root: Arc<R>,
        sub_backend: Arc<S>,
        redis: Option<state::Redis>,
        notices: Notices,
    ) -> Result<Self, HostError>
    where
        R: LlmBackend + ?Sized + 'static,
        S: BatchExecutor + ?Sized + 'static,
    {
        // Metered below the cache: usage counts what the server was really asked.
        let tracker = UsageTracker::new();
        let root: Arc<dyn LlmBackend> = Arc::new(Metered::new(root, tracker.clone()));
        let sent = Arc::new(AtomicU64::new(0));
        let metered = Metered::new(Sent::new(sub_backend, Arc::clone(&sent)), tracker.clone());
        // Below the in-memory cache, the disk and Redis tiers.
        let (tiered, tier_hits): (Arc<dyn BatchExecutor>, _) = if settings.no_cache {
            (Arc::new(metered), TierHits::default())
        } else {
            state::tiers(Arc::new(metered), settings, redis.as_ref(), &notices)?
        };
        let cache = (!settings.no_cache).then(|| Arc::new(CachedBackend::new(tiered.clone())));
        let sub: Arc<dyn BatchExecutor> = match &cache {
            Some(cache) => cache.clone(),
            None => tiered,
        };
        Ok(Self {
            model,
            sub_model,
            shown_url,
            root,
            sub,
            tracker,
            cache,
            tier_hits,
            notices,
            sent,
        })
    }

    /// The root model.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The sub model (the root model unless [`Settings::sub_model`]).
    pub fn sub_model(&self) -> &str {
        &self.sub_model
    }

    /// The base URL without credentials, for messages.
    pub fn shown_url(&self) -> &str {
        &self.shown_url
    }

    /// The backend of root calls.
    pub fn root(&self) -> Arc<dyn LlmBackend> {
        self.root.clone()
    }

    /// The backend of sub-calls (through the cache unless [`Settings::no_cache`]).
    pub fn sub(&self) -> Arc<dyn BatchExecutor> {
        self.sub.clone()
    }

    /// What the server was really asked so far, per model (cache hits are not in it).
    pub fn usage(&self) -> BTreeMap<String, ModelUsage> {
        self.tracker.snapshot()
    }

    /// The cache's statistics with the disk and Redis tiers' hits, settled first (the
    /// in-memory cache counts entries in the background); `None` without a cache.
    ///
    /// `upstream_calls` is what reached the server: the sub-calls started at the HTTP
    /// backend, each once whatever its retries. Calls the disk or Redis tier answered are not
    /// in it (they are `disk_hits` and `redis_hits`), nor calls a cancellation stopped before
    /// they started. (A call cancelled while it waited for its `--rpm`/`--tpm` turn counts:
    /// it had started.)
    pub async fn cache_stats(&self) -> Option<CacheStats> {
        let cache = self.cache.as_ref()?;
        cache.run_pending_tasks().await;
        let mut stats = self.tier_hits.fill(cache.stats());
        stats.upstream_calls = self.sent.load(Ordering::Relaxed);
        Some(stats)
    }

    /// What went wrong with the persistent and shared tiers so far, each once, in order: a
    /// cache file that could not be used (corrupt, truncated, read-only), a Redis URL this
    /// process cannot use, a tier that failed during a run. Runs go on without such a tier;
    /// each of these was also logged (`tracing`, a warning) when it happened.
    pub fn warnings(&self) -> Vec<String> {
        self.notices.all()
    }

    /// An [`Rlm`] builder on this stack with the models, the sandbox, recursion and the
    /// budgets of `settings` (prices, observers and the cancel token are the caller's).
    ///
    /// # Errors
    /// [`HostError::Usage`] for an empty child model name.
    pub fn rlm_builder(&self, settings: &Settings) -> Result<RlmBuilder, HostError> {
        let sandbox = SandboxLimits {
            max_string_size: settings.max_string_bytes,
            block_timeout: settings.block_timeout,
            max_memory: settings.max_memory,
            max_memory_fits_context: settings.max_memory_fits_context,
            ..SandboxLimits::default()
        };
        let mut builder = Rlm::builder(self.root())
            .sandbox(sandbox)
            .root_model(&self.model)
            .sub_model(&self.sub_model)
            .sub_backend(self.sub())
            .max_iterations(settings.max_iterations as usize)
            .max_concurrent(settings.max_concurrent as usize)
            .max_depth(settings.max_depth as usize)
            .child_max_iterations(settings.child_max_iterations as usize)
            .output_schema_retries(settings.output_schema_retries as usize)
            .structured_output(settings.structured_output);
        if let Some(schema) = &settings.output_schema {
            builder = builder.output_schema(schema.schema().clone());
        }
        if let Some(child) = &settings.child_model {
            builder = builder.child_model(non_empty(child, "--child-model (or RLM_CHILD_MODEL)")?);
        }
        if let Some(tokens) = settings.sub_max_prompt_tokens {
            builder = builder.sub_max_prompt_tokens(tokens);
        }
        if let Some(usd) = settings.max_cost {
            builder = builder.max_cost(usd);
        }
        if let Some(calls) = settings.max_sub_calls {
            builder = builder.max_sub_calls(calls);
        }
        if let Some(tokens) = settings.max_total_tokens {
            builder = builder.max_total_tokens(tokens);
        }
        if let Some(time) = settings.max_time {
            builder = builder.max_time(time);
        }
        Ok(builder)
    }

    /// A [`Runner`] on this stack with the settings `builder` holds (made by
    /// [`rlm_builder`](Self::rlm_builder), with the caller's prices and system prompt).
    ///
    /// # Errors
    /// As [`RlmBuilder::build`]: settings the loop refuses.
    pub fn runner(&self, builder: RlmBuilder) -> Result<Runner, RlmError> {
        let config = builder.build()?.config().clone();
        Ok(Runner::new(self.root(), self.sub(), config))
    }
}

/// The most HTTP requests `runs` run trees may have in flight at once: each run has at most
/// `max_concurrent` calls or child runs in flight (one root call while it thinks), and
/// children nest `max_depth - 1` levels deep, so a tree holds at most
/// `1 + C + C^2 + ... + C^max_depth` requests. Saturates instead of overflowing.
///
/// The connection pool keeps this many idle connections per host: connections are only
/// opened when a request finds none idle, so the pool never holds more than were ever in
/// use at once, and with this bound every connection is reused rather than closed and
/// reopened (a TLS handshake each) when more than `max_concurrent` are in flight.
pub fn pool_size(max_concurrent: u32, max_depth: u32, runs: usize) -> usize {
    let per_level = (max_concurrent as usize).max(1);
    let mut level = 1usize;
    let mut total = 1usize;
    for _ in 0..max_depth.max(1) {
        level = level.saturating_mul(per_level);
        total = total.saturating_add(level);
    }
    total.saturating_mul(runs.max(1))
}

/// The root model and the sub model (the root model unless set), trimmed and not empty.
fn models(settings: &Settings) -> Result<(String, String), HostError> {
    let model = non_empty(&settings.model, "--model (or RLM_MODEL)")?;
    let sub_model = match &settings.sub_model {
        Some(sub) => non_empty(sub, "--sub-model (or RLM_SUB_MODEL)")?,
        None => model.clone(),
    };
    Ok((model, sub_model))
}

fn non_empty(value: &str, flag: &str) -> Result<String, HostError> {
    let value = value.trim();
    if value.is_empty() {
        Err(HostError::Usage(format!("{flag} must name a model")))
    } else {
        Ok(value.to_owned())
    }
}

fn config_error(error: ConfigError) -> HostError {
    match error {
        ConfigError::Client { .. } => HostError::Internal(error.to_string()),
        ConfigError::InvalidBaseUrl { reason, .. } => {
            HostError::Usage(format!("invalid --base-url: {reason}"))
        }
        other => HostError::Usage(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_holds_every_request_a_run_tree_may_have_in_flight() {
        // No recursion: C sub-calls, plus the root's own call.
        assert_eq!(pool_size(16, 1, 1), 17);
        // Children: C children at once, each with C sub-calls in flight.
        assert_eq!(pool_size(16, 2, 1), 1 + 16 + 256);
        assert_eq!(pool_size(100, 2, 1), 1 + 100 + 10_000);
        // Runs at once (rlm serve --max-runs) multiply it.
        assert_eq!(pool_size(4, 2, 3), 3 * 21);
        // Saturates rather than overflowing.
        assert_eq!(pool_size(4096, 64, 1), usize::MAX);
    }

    #[tokio::test]
    async fn a_callers_backend_is_metered_and_its_sub_calls_cached() {
        use rlm_core::{BatchOptions, CompletionRequest};
        let mock = rlm_core::mock::MockBackend::echo();
        let settings = Settings {
            sub_model: Some("sub".into()),
            ..Settings::new("root")
        };
        let stack = Stack::with_backend(&settings, Arc::new(mock.clone()))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((stack.model(), stack.sub_model()), ("root", "sub"));
        let requests = || {
            ["a", "b", "a"]
                .map(|p| CompletionRequest::prompt("sub", p))
                .to_vec()
        };
        let first = stack
            .sub()
            .complete_batch(requests(), &BatchOptions::new(4))
            .await;
        let again = stack
            .sub()
            .complete_batch(requests(), &BatchOptions::new(4))
            .await;
        let texts = |results: Vec<rlm_core::BatchResult>| {
            results
                .into_iter()
                .map(|r| r.map(|c| c.text).unwrap_or_default())
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(first), ["echo: a", "echo: b", "echo: a"]);
        assert_eq!(texts(again), ["echo: a", "echo: b", "echo: a"]);
        // Each distinct prompt reached the backend once, and was metered once.
        assert_eq!(mock.calls(), 2);
        assert_eq!(stack.usage()["sub"].calls, 2);
        let root = stack
            .root()
            .complete(CompletionRequest::prompt("root", "q"))
            .await
            .map(|c| c.text);
        assert_eq!(root.ok().as_deref(), Some("echo: q"));
        assert_eq!(stack.usage()["root"].calls, 1);
    }

    #[test]
    fn a_key_given_directly_stands_in_for_the_variable() {
        let settings = Settings {
            base_url: "https://api.openai.com/v1".into(),
            api_key_env: "RLM_HOST_TEST_SURELY_UNSET_KEY".into(),
            ..Settings::new("gpt-4o")
        };
        let refused = Stack::build(&settings, None, 1).err();
        assert!(matches!(refused, Some(HostError::Auth(_))), "{refused:?}");
        assert!(Stack::build_with_api_key(&settings, "sk-given", None, 1).is_ok());
        // An empty key is no key.
        let refused = Stack::build_with_api_key(&settings, " ", None, 1).err();
        assert!(matches!(refused, Some(HostError::Auth(_))), "{refused:?}");
    }

    #[cfg(feature = "disk")]
    #[test]
    fn a_cache_file_that_cannot_be_used_leaves_the_stack_without_it() {
        let dir = std::env::temp_dir().join(format!("rlm-host-bad-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            dir.join(rlm_cache::DISK_CACHE_FILE),
            "not a database".repeat(300),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let settings = Settings {
            base_url: "http://127.0.0.1:9/v1".into(),
            cache_dir: Some(dir.clone().into_os_string()),
            ..Settings::new("m")
        };
        let stack = Stack::build(&settings, None, 1);
        let _ = std::fs::remove_dir_all(&dir);
        let stack = stack.unwrap_or_else(|e| panic!("{e}"));
        let warnings = stack.warnings();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("without the disk cache"),
            "{warnings:?}"
        );
        assert!(stack.cache.is_some(), "the in-memory cache stays");

        // A path that is not a directory is a mistake in the settings, not a cache.
        let file = std::env::temp_dir().join(format!("rlm-host-not-a-dir-{}", std::process::id()));
        std::fs::write(&file, "a file").unwrap_or_else(|e| panic!("{e}"));
        let settings = Settings {
            cache_dir: Some(file.clone().into_os_string()),
            ..settings
        };
        let refused = Stack::build(&settings, None, 1).err();
        let _ = std::fs::remove_file(&file);
        assert!(matches!(refused, Some(HostError::Input(_))), "{refused:?}");
    }
}
