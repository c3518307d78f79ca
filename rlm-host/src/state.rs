//! Persistent and shared state: the disk and Redis tiers below the in-memory cache, and the
//! Redis pacer ([`Settings::cache_dir`], [`Settings::cache_max_bytes`],
//! [`Settings::cache_ttl`], [`Settings::redis`], [`Settings::redis_prefix`]). The disk tier
//! needs the `disk` feature and Redis the `redis` feature; without them, asking for either is
//! a usage error.

use std::sync::Arc;
#[cfg(feature = "redis")]
use std::time::Duration;

use rlm_cache::CacheStats;
use rlm_core::BatchExecutor;
use rlm_openai::SharedPacer;

use crate::{HostError, Settings};

/// How long Redis keeps a shared answer without [`Settings::cache_ttl`].
#[cfg(feature = "redis")]
const DEFAULT_REDIS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// The Redis pacer, with [`Settings::redis`].
pub(crate) fn pacer(settings: &Settings) -> Result<Option<Arc<dyn SharedPacer>>, HostError> {
    let Some(url) = settings.redis_url() else {
        return Ok(None);
    };
    redis_pacer(url, &settings.redis_prefix).map(Some)
}

#[cfg(feature = "redis")]
fn redis_pacer(url: &str, prefix: &str) -> Result<Arc<dyn SharedPacer>, HostError> {
    let pacer = rlm_openai::RedisPacer::new(url, prefix)
        .map_err(|e| HostError::Usage(format!("--redis: {e}")))?;
    Ok(Arc::new(pacer))
}

#[cfg(not(feature = "redis"))]
fn redis_pacer(_url: &str, _prefix: &str) -> Result<Arc<dyn SharedPacer>, HostError> {
    Err(without_feature("--redis", "redis"))
}

/// The error for a setting whose feature this build does not have.
#[cfg(not(all(feature = "redis", feature = "disk")))]
fn without_feature(setting: &str, feature: &str) -> HostError {
    HostError::Usage(format!(
        "{setting}: this build has no support for it (rlm-host's feature `{feature}`)"
    ))
}

/// A tier's hit counter.
type HitCounter = Box<dyn Fn() -> u64 + Send + Sync>;

/// The tiers' hit counters, read for figures and summaries.
#[derive(Default)]
pub(crate) struct TierHits {
    disk: Option<HitCounter>,
    redis: Option<HitCounter>,
}

impl TierHits {
    /// `stats` with the tiers' hits filled in.
    pub(crate) fn fill(&self, mut stats: CacheStats) -> CacheStats {
        stats.disk_hits = self.disk.as_ref().map_or(0, |hits| hits());
        stats.redis_hits = self.redis.as_ref().map_or(0, |hits| hits());
        stats
    }
}

/// `sub` wrapped in the tiers the settings ask for: Redis nearest the provider, then disk
/// (so a Redis answer is kept on disk too). Without either, `sub` itself.
pub(crate) fn tiers(
    sub: Arc<dyn BatchExecutor>,
    settings: &Settings,
) -> Result<(Arc<dyn BatchExecutor>, TierHits), HostError> {
    let mut hits = TierHits::default();
    let mut backend = sub;
    if let Some(url) = settings.redis_url() {
        let (tier, counter) = redis_tier(backend, url, settings)?;
        hits.redis = Some(counter);
        backend = tier;
    }
    // An empty RLM_CACHE_DIR means unset.
    if let Some(dir) = settings.cache_dir.as_ref().filter(|d| !d.is_empty()) {
        let (tier, counter) = disk_tier(backend, dir.as_ref(), settings)?;
        hits.disk = Some(counter);
        backend = tier;
    }
    Ok((backend, hits))
}

/// A tier over `backend` and its hit counter.
type Tier = (Arc<dyn BatchExecutor>, HitCounter);

#[cfg(feature = "redis")]
fn redis_tier(
    backend: Arc<dyn BatchExecutor>,
    url: &str,
    settings: &Settings,
) -> Result<Tier, HostError> {
    let ttl = settings.cache_ttl.unwrap_or(DEFAULT_REDIS_TTL);
    let store = rlm_cache::RedisStore::new(url, &settings.redis_prefix, Some(ttl))
        .map_err(|e| HostError::Usage(format!("--redis: {e}")))?;
    let tier = Arc::new(rlm_cache::StoredBackend::new(backend, store));
    let counter = Arc::clone(&tier);
    Ok((tier, Box::new(move || counter.hits())))
}

#[cfg(not(feature = "redis"))]
fn redis_tier(
    _backend: Arc<dyn BatchExecutor>,
    _url: &str,
    _settings: &Settings,
) -> Result<Tier, HostError> {
    Err(without_feature("--redis", "redis"))
}

#[cfg(feature = "disk")]
fn disk_tier(
    backend: Arc<dyn BatchExecutor>,
    dir: &std::path::Path,
    settings: &Settings,
) -> Result<Tier, HostError> {
    let mut config = rlm_cache::DiskConfig::default().with_max_bytes(settings.cache_max_bytes);
    if let Some(ttl) = settings.cache_ttl {
        config = config.with_time_to_live(ttl);
    }
    let store = rlm_cache::DiskStore::open(dir, config)
        .map_err(|e| HostError::Input(format!("--cache-dir: {e}")))?;
    let tier = Arc::new(rlm_cache::StoredBackend::new(backend, store));
    let counter = Arc::clone(&tier);
    Ok((tier, Box::new(move || counter.hits())))
}

#[cfg(not(feature = "disk"))]
fn disk_tier(
    _backend: Arc<dyn BatchExecutor>,
    _dir: &std::path::Path,
    _settings: &Settings,
) -> Result<Tier, HostError> {
    Err(without_feature("--cache-dir", "disk"))
}
