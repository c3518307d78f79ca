//! Persistent and shared state: the disk and Redis tiers below the in-memory cache, and the
//! Redis pacer ([`Settings::cache_dir`], [`Settings::cache_max_bytes`],
//! [`Settings::cache_ttl`], [`Settings::redis`], [`Settings::redis_prefix`]). The disk tier
//! needs the `disk` feature and Redis the `redis` feature; without them, asking for either is
//! a usage error.
//!
//! A tier is a help, never a condition of a run: a cache file that cannot be used (corrupt,
//! truncated, read-only) or a Redis URL this process cannot use is a warning, and the runs go
//! on without that tier. So is a tier that fails during a run (the tier itself then treats
//! its failures as misses). Each such warning is logged once and kept in [`Notices`], where
//! a front end finds it for its own report (`rlm run --json`'s `warnings`).

#[cfg(any(feature = "disk", feature = "redis"))]
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
#[cfg(feature = "redis")]
use std::time::Duration;

use rlm_cache::CacheStats;
use rlm_core::BatchExecutor;
use rlm_openai::SharedPacer;

use crate::{HostError, Settings};

/// How long Redis keeps a shared answer without [`Settings::cache_ttl`].
#[cfg(feature = "redis")]
const DEFAULT_REDIS_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// What went wrong with the persistent and shared tiers, each said once, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Notices(Arc<Mutex<Vec<String>>>);

#[cfg_attr(not(any(feature = "disk", feature = "redis")), allow(dead_code))]
impl Notices {
    /// Logs `message` as a warning and keeps it.
    pub(crate) fn warn(&self, message: String) {
        tracing::warn!(target: "rlm_host", "{message}");
        self.keep(message);
    }

    /// Keeps `message` without logging it (its layer logged it already).
    fn keep(&self, message: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }

    /// Everything kept so far.
    pub(crate) fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// The Redis server of [`Settings::redis`], when this process can use it.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) struct Redis {
    /// The URL (with its credentials: never shown).
    url: String,
    /// Shared pacing through it.
    pub(crate) pacer: Arc<dyn SharedPacer>,
}

/// [`Settings::redis`] when set and usable. A string that is not a Redis URL at all is a
/// usage error; a Redis URL this process cannot use (TLS in a build without it, a wildcard
/// address, a bad database number) is a warning in `notices`, and `None`: no Redis tier and
/// no shared pacing.
#[cfg(feature = "redis")]
pub(crate) fn redis(settings: &Settings, notices: &Notices) -> Result<Option<Redis>, HostError> {
    let Some(url) = settings.redis_url() else {
        return Ok(None);
    };
    match rlm_openai::RedisPacer::new(url, &settings.redis_prefix) {
        Ok(pacer) => Ok(Some(Redis {
            url: url.to_owned(),
            pacer: Arc::new(WatchedPacer {
                inner: pacer,
                notices: notices.clone(),
                shown: rlm_core::url::url_without_credentials(url)
                    .unwrap_or_else(|| "(a Redis URL)".to_owned()),
                reported: AtomicBool::new(false),
            }),
        })),
        Err(e) if has_redis_scheme(url) => {
            notices.warn(format!(
                "--redis: {e}; going on without Redis (no shared cache tier, and each \
                 process paces its own rate limits)"
            ));
            Ok(None)
        }
        Err(e) => Err(HostError::Usage(format!("--redis: {e}"))),
    }
}

#[cfg(not(feature = "redis"))]
pub(crate) fn redis(settings: &Settings, _notices: &Notices) -> Result<Option<Redis>, HostError> {
    match settings.redis_url() {
        Some(_) => Err(without_feature("--redis", "redis")),
        None => Ok(None),
    }
}

/// Whether `url` names one of the schemes of a Redis server (it may still be unusable).
#[cfg(feature = "redis")]
fn has_redis_scheme(url: &str) -> bool {
    url.split_once("://").is_some_and(|(scheme, _)| {
        [
            "redis",
            "rediss",
            "valkey",
            "valkeys",
            "unix",
            "redis+unix",
            "valkey+unix",
        ]
        .iter()
        .any(|known| scheme.eq_ignore_ascii_case(known))
    })
}

/// The error for a setting whose feature this build does not have.
#[cfg(not(all(feature = "redis", feature = "disk")))]
fn without_feature(setting: &str, feature: &str) -> HostError {
    HostError::Usage(format!(
        "{setting}: this build has no support for it (rlm-host's feature `{feature}`)"
    ))
}

/// A shared pacer that notes, once, that its books could not be reached (the pacer itself
/// logs it and each process paces its own share meanwhile).
#[cfg(feature = "redis")]
struct WatchedPacer<P> {
    inner: P,
    notices: Notices,
    shown: String,
    reported: AtomicBool,
}

#[cfg(feature = "redis")]
impl<P: std::fmt::Debug> std::fmt::Debug for WatchedPacer<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[cfg(feature = "redis")]
#[async_trait::async_trait]
impl<P: SharedPacer> SharedPacer for WatchedPacer<P> {
    async fn admit(
        &self,
        model: &str,
        limit: rlm_openai::RateLimit,
        tokens: u64,
    ) -> Option<Duration> {
        let admitted = self.inner.admit(model, limit, tokens).await;
        if admitted.is_none() && !self.reported.swap(true, Ordering::Relaxed) {
            self.notices.keep(format!(
                "Redis at {} could not be reached for the shared rate limits; this process \
                 paced its own share of them meanwhile",
                self.shown
            ));
        }
        admitted
    }

    async fn pause(&self, model: &str, wait: Duration) {
        self.inner.pause(model, wait).await;
    }

    fn processes(&self, model: &str) -> usize {
        self.inner.processes(model)
    }

    async fn reset(&self, model: &str) {
        self.inner.reset(model).await;
    }
}

/// A store that notes, once, that it failed (the tier above treats the failure as a miss
/// and logs it).
#[cfg(any(feature = "disk", feature = "redis"))]
struct WatchedStore<S> {
    inner: S,
    notices: Notices,
    reported: AtomicBool,
}

#[cfg(any(feature = "disk", feature = "redis"))]
impl<S> WatchedStore<S> {
    fn new(inner: S, notices: &Notices) -> Self {
        Self {
            inner,
            notices: notices.clone(),
            reported: AtomicBool::new(false),
        }
    }

    fn check<T>(
        &self,
        result: Result<T, rlm_cache::CacheError>,
        name: &str,
    ) -> Result<T, rlm_cache::CacheError> {
        if let Err(error) = &result
            && !self.reported.swap(true, Ordering::Relaxed)
        {
            self.notices.keep(format!(
                "{error}; sub-calls went on without the {name} cache meanwhile"
            ));
        }
        result
    }
}

#[cfg(any(feature = "disk", feature = "redis"))]
#[async_trait::async_trait]
impl<S: rlm_cache::Store> rlm_cache::Store for WatchedStore<S> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn get_many(
        &self,
        keys: &[rlm_cache::StoreKey],
    ) -> Result<Vec<Option<rlm_core::Completion>>, rlm_cache::CacheError> {
        let found = self.inner.get_many(keys).await;
        self.check(found, self.inner.name())
    }

    async fn put_many(
        &self,
        entries: &[(rlm_cache::StoreKey, rlm_core::Completion)],
    ) -> Result<(), rlm_cache::CacheError> {
        let written = self.inner.put_many(entries).await;
        self.check(written, self.inner.name())
    }
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

/// `sub` wrapped in the tiers the settings ask for: Redis (when `redis` is usable) nearest
/// the provider, then disk (so a Redis answer is kept on disk too). Without either, `sub`
/// itself. A tier that cannot be opened is left out, with a warning in `notices`.
///
/// # Errors
/// [`HostError::Input`] when [`Settings::cache_dir`] names something that is not a
/// directory; [`HostError::Usage`] for a tier this build has no feature for.
pub(crate) fn tiers(
    sub: Arc<dyn BatchExecutor>,
    settings: &Settings,
    redis: Option<&Redis>,
    notices: &Notices,
) -> Result<(Arc<dyn BatchExecutor>, TierHits), HostError> {
    let mut hits = TierHits::default();
    let mut backend = sub;
    if let Some(redis) = redis {
        if let Some((tier, counter)) = redis_tier(backend.clone(), &redis.url, settings, notices)? {
            hits.redis = Some(counter);
            backend = tier;
        }
    }
    // An empty RLM_CACHE_DIR means unset.
    if let Some(dir) = settings.cache_dir.as_ref().filter(|d| !d.is_empty()) {
        let dir: &std::path::Path = dir.as_ref();
        if dir.exists() && !dir.is_dir() {
            return Err(HostError::Input(format!(
                "--cache-dir: {} is not a directory",
                dir.display()
            )));
        }
        if let Some((tier, counter)) = disk_tier(backend.clone(), dir, settings, notices)? {
            hits.disk = Some(counter);
            backend = tier;
        }
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
    notices: &Notices,
) -> Result<Option<Tier>, HostError> {
    let ttl = settings.cache_ttl.unwrap_or(DEFAULT_REDIS_TTL);
    let store = match rlm_cache::RedisStore::new(url, &settings.redis_prefix, Some(ttl)) {
        Ok(store) => store,
        Err(e) => {
            notices.warn(format!(
                "--redis: {e}; going on without the Redis cache tier"
            ));
            return Ok(None);
        }
    };
    let store = WatchedStore::new(store, notices);
    let tier = Arc::new(rlm_cache::StoredBackend::new(backend, store));
    let counter = Arc::clone(&tier);
    Ok(Some((tier, Box::new(move || counter.hits()))))
}

#[cfg(not(feature = "redis"))]
fn redis_tier(
    _backend: Arc<dyn BatchExecutor>,
    _url: &str,
    _settings: &Settings,
    _notices: &Notices,
) -> Result<Option<Tier>, HostError> {
    Err(without_feature("--redis", "redis"))
}

#[cfg(feature = "disk")]
fn disk_tier(
    backend: Arc<dyn BatchExecutor>,
    dir: &std::path::Path,
    settings: &Settings,
    notices: &Notices,
) -> Result<Option<Tier>, HostError> {
    let mut config = rlm_cache::DiskConfig::default().with_max_bytes(settings.cache_max_bytes);
    if let Some(ttl) = settings.cache_ttl {
        config = config.with_time_to_live(ttl);
    }
    let store = match rlm_cache::DiskStore::open(dir, config) {
        Ok(store) => store,
        Err(e) => {
            notices.warn(format!(
                "--cache-dir: {e}; going on without the disk cache (remove or fix the file \
                 to use it again)"
            ));
            return Ok(None);
        }
    };
    let store = WatchedStore::new(store, notices);
    let tier = Arc::new(rlm_cache::StoredBackend::new(backend, store));
    let counter = Arc::clone(&tier);
    Ok(Some((tier, Box::new(move || counter.hits()))))
}

#[cfg(not(feature = "disk"))]
fn disk_tier(
    _backend: Arc<dyn BatchExecutor>,
    _dir: &std::path::Path,
    _settings: &Settings,
    _notices: &Notices,
) -> Result<Option<Tier>, HostError> {
    Err(without_feature("--cache-dir", "disk"))
}
