//! The crate's error: what a persistent or shared tier ([`Store`](crate::Store)) can fail with.
//!
//! A tier's failure never fails a call: [`StoredBackend`](crate::StoredBackend) treats it as
//! a miss (or skips the write), warns once, and goes on.

/// Why a [`Store`](crate::Store) could not read or write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The store could not be opened or created (a bad directory, a file that is not a
    /// cache, a bad Redis URL).
    #[error("cannot open the {store} cache: {message}")]
    Open {
        /// Which store: `"disk"` or `"redis"`.
        store: &'static str,
        /// What went wrong (paths and host names, never passwords).
        message: String,
    },
    /// The store is unreachable or failed one operation; the next may work.
    #[error("the {store} cache is unavailable: {message}")]
    Unavailable {
        /// Which store: `"disk"` or `"redis"`.
        store: &'static str,
        /// What went wrong.
        message: String,
    },
}
