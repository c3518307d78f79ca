//! How large the cache may grow and how long its entries live.

use std::time::Duration;

/// The default bound: 256 MiB of prompts and replies.
pub const DEFAULT_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Longest time-to-live or time-to-idle honoured; longer means "never expire" (moka refuses
/// durations over 1000 years).
const MAX_DURATION: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);

/// What bounds the cache's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capacity {
    /// At most this many entries, whatever their size.
    Entries(u64),
    /// At most about this many bytes of prompts and replies (key and value text plus a
    /// fixed per-entry overhead). An entry larger than the whole bound is not kept.
    Bytes(u64),
}

/// Settings of a [`CachedBackend`](crate::CachedBackend).
///
/// The default keeps up to [`DEFAULT_MAX_BYTES`] and never expires entries.
///
/// ```
/// use std::time::Duration;
/// use rlm_cache::{Capacity, CacheConfig};
///
/// let config = CacheConfig::default()
///     .with_max_entries(10_000)
///     .with_time_to_live(Duration::from_secs(3600));
/// assert_eq!(config.capacity, Capacity::Entries(10_000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheConfig {
    /// The size bound; least valuable entries are evicted beyond it (moka's TinyLFU).
    /// A bound of zero stores nothing, but concurrent identical requests still share one
    /// upstream call.
    pub capacity: Capacity,
    /// Entries expire this long after they were stored.
    pub time_to_live: Option<Duration>,
    /// Entries expire when they have not been read for this long.
    pub time_to_idle: Option<Duration>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            capacity: Capacity::Bytes(DEFAULT_MAX_BYTES),
            time_to_live: None,
            time_to_idle: None,
        }
    }
}

impl CacheConfig {
    /// Bounds the cache by entries.
    pub fn with_max_entries(mut self, entries: u64) -> Self {
        self.capacity = Capacity::Entries(entries);
        self
    }

    /// Bounds the cache by approximate bytes.
    pub fn with_max_bytes(mut self, bytes: u64) -> Self {
        self.capacity = Capacity::Bytes(bytes);
        self
    }

    /// Expires entries `ttl` after they were stored (over 1000 years means never).
    pub fn with_time_to_live(mut self, ttl: Duration) -> Self {
        self.time_to_live = Some(ttl);
        self
    }

    /// Expires entries not read for `tti` (over 1000 years means never).
    pub fn with_time_to_idle(mut self, tti: Duration) -> Self {
        self.time_to_idle = Some(tti);
        self
    }

    /// A duration moka accepts, or `None` for "never".
    pub(crate) fn effective(duration: Option<Duration>) -> Option<Duration> {
        duration.filter(|d| *d <= MAX_DURATION)
    }
}
