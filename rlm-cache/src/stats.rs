//! Counters, and the snapshot [`CacheStats`].

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// A snapshot of a [`CachedBackend`](crate::CachedBackend)'s counters.
///
/// Every request is counted once, when it is answered, in exactly one of `hits`, `misses`
/// or `coalesced`; a request that ends cancelled is not counted. So
/// `hits + misses + coalesced` is the number of requests answered, and
/// `hits + coalesced` the number of upstream calls saved.
///
/// Each counter is exact; a snapshot taken while requests are running may mix counts from
/// slightly different moments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[non_exhaustive]
pub struct CacheStats {
    /// Requests answered from a stored entry.
    pub hits: u64,
    /// Requests answered by their own upstream call (successful or not).
    pub misses: u64,
    /// Requests answered by an identical request that was already in flight: another
    /// caller's, or an earlier duplicate in the same batch.
    pub coalesced: u64,
    /// Requests forwarded to the inner backend, including those of a batch that was
    /// cancelled before the inner backend started them.
    pub upstream_calls: u64,
    /// Entries stored now. moka applies evictions and expirations lazily, so this can lag
    /// behind for a moment; [`CachedBackend::run_pending_tasks`](crate::CachedBackend::run_pending_tasks)
    /// brings it up to date.
    pub entries: u64,
    /// Requests answered by the disk tier (`DiskStore`, feature `disk`) below this
    /// cache; they are among `misses` and `upstream_calls` here, since the in-memory cache
    /// forwarded them. Zero unless the owner fills it in from
    /// [`StoredBackend::hits`](crate::StoredBackend::hits).
    #[serde(default)]
    pub disk_hits: u64,
    /// Requests answered by the Redis tier (`RedisStore`, feature `redis`), counted like
    /// `disk_hits`.
    #[serde(default)]
    pub redis_hits: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    upstream_calls: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    if n > 0 {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }
}

impl Counters {
    pub(crate) fn hits(&self, n: usize) {
        add(&self.hits, n);
    }

    pub(crate) fn misses(&self, n: usize) {
        add(&self.misses, n);
    }

    pub(crate) fn coalesced(&self, n: usize) {
        add(&self.coalesced, n);
    }

    pub(crate) fn upstream_calls(&self, n: usize) {
        add(&self.upstream_calls, n);
    }

    pub(crate) fn snapshot(&self, entries: u64) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            coalesced: self.coalesced.load(Ordering::Relaxed),
            upstream_calls: self.upstream_calls.load(Ordering::Relaxed),
            entries,
            disk_hits: 0,
            redis_hits: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_flat() {
        let counters = Counters::default();
        counters.hits(3);
        counters.misses(1);
        counters.coalesced(2);
        counters.upstream_calls(1);
        let json = serde_json::to_value(counters.snapshot(1)).unwrap_or_default();
        assert_eq!(
            json,
            serde_json::json!({"hits": 3, "misses": 1, "coalesced": 2, "upstream_calls": 1, "entries": 1, "disk_hits": 0, "redis_hits": 0})
        );
    }
}
