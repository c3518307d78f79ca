//! Persistent and shared state: the disk and Redis tiers below the in-memory cache, and the
//! Redis pacer (`--cache-dir`, `--cache-max-bytes`, `--cache-ttl`, `--redis`,
//! `--redis-prefix`).

use std::sync::Arc;
use std::time::Duration;

use rlm_cache::{CacheStats, DiskConfig, DiskStore, RedisStore, StoredBackend};
use rlm_core::BatchExecutor;
use rlm_openai::{RedisPacer, SharedPacer};

use crate::cli::RunArgs;
use crate::error::CliError;

/// How long Redis keeps a shared answer without `--cache-ttl`.
pub(crate) const DEFAULT_REDIS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Redis pacer, with `--redis`.
pub(crate) fn pacer(args: &RunArgs) -> Result<Option<Arc<dyn SharedPacer>>, CliError> {
    let Some(url) = redis_url(args) else {
        return Ok(None);
    };
    let pacer = RedisPacer::new(url, &args.redis_prefix)
        .map_err(|e| CliError::Usage(format!("--redis: {e}")))?;
    Ok(Some(Arc::new(pacer)))
}

/// `--redis`, unless empty (an empty RLM_REDIS_URL means unset).
fn redis_url(args: &RunArgs) -> Option<&str> {
    args.redis
        .as_deref()
        .map(str::trim)
        .filter(|url| !url.is_empty())
}

/// The tiers' hit counters, read for `--json` and the summary.
#[derive(Default)]
pub(crate) struct TierHits {
    disk: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
    redis: Option<Box<dyn Fn() -> u64 + Send + Sync>>,
}

impl TierHits {
    /// `stats` with the tiers' hits filled in.
    pub(crate) fn fill(&self, mut stats: CacheStats) -> CacheStats {
        stats.disk_hits = self.disk.as_ref().map_or(0, |hits| hits());
        stats.redis_hits = self.redis.as_ref().map_or(0, |hits| hits());
        stats
    }
}

/// `sub` wrapped in the tiers the flags ask for: Redis nearest the provider, then disk (so
/// a Redis answer is kept on disk too). Without either flag, `sub` itself.
pub(crate) fn tiers(
    sub: Arc<dyn BatchExecutor>,
    args: &RunArgs,
) -> Result<(Arc<dyn BatchExecutor>, TierHits), CliError> {
    let mut hits = TierHits::default();
    let mut backend = sub;
    if let Some(url) = redis_url(args) {
        let ttl = args.cache_ttl.unwrap_or(DEFAULT_REDIS_TTL);
        let store = RedisStore::new(url, &args.redis_prefix, Some(ttl))
            .map_err(|e| CliError::Usage(format!("--redis: {e}")))?;
        let tier = Arc::new(StoredBackend::new(backend, store));
        let counter = Arc::clone(&tier);
        hits.redis = Some(Box::new(move || counter.hits()));
        backend = tier;
    }
    // An empty RLM_CACHE_DIR means unset.
    if let Some(dir) = args.cache_dir.as_ref().filter(|d| !d.is_empty()) {
        let mut config = DiskConfig::default().with_max_bytes(args.cache_max_bytes);
        if let Some(ttl) = args.cache_ttl {
            config = config.with_time_to_live(ttl);
        }
        let store = DiskStore::open(dir.as_ref(), config)
            .map_err(|e| CliError::Input(format!("--cache-dir: {e}")))?;
        let tier = Arc::new(StoredBackend::new(backend, store));
        let counter = Arc::clone(&tier);
        hits.disk = Some(Box::new(move || counter.hits()));
        backend = tier;
    }
    Ok((backend, hits))
}
