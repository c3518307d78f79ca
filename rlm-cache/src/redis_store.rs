//! [`RedisStore`]: completions shared through Redis by every process and machine that uses
//! the same server and prefix.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use rlm_core::Completion;
use tokio::time::Instant;

use crate::CacheError;
use crate::store::{Decoded, Store, StoreKey, decode, encode};

/// The longest one Redis operation may take before the store counts as unavailable.
const OP_TIMEOUT: Duration = Duration::from_millis(1_000);
/// After a failure, operations are not tried for this long (they are misses at once).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

/// The longest expiry set (about 1000 years; Redis refuses larger ones).
const MAX_TTL_MS: u128 = 1000 * 365 * 24 * 3600 * 1000;

/// A [`Store`] in Redis: `SET {prefix}:cache:{sha256 hex} {completion JSON}` with an
/// optional expiry, `MGET` for look-ups.
///
/// The connection is made lazily and remade after a failure (the `redis` crate's
/// `ConnectionManager`). While Redis is unreachable every operation fails fast (a failed
/// operation waits at most 1 s, and for a second after it nothing is tried), so calls go
/// on without this tier; when Redis returns it is used again. Redis's own `maxmemory`
/// policy bounds its size.
pub struct RedisStore {
    client: redis::Client,
    /// Made on first use, inside the caller's runtime (making it needs one).
    manager: tokio::sync::OnceCell<ConnectionManager>,
    prefix: String,
    ttl: Option<Duration>,
    shown: String,
    retry_at: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("url", &self.shown)
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// `url` without a password, for messages.
pub(crate) fn shown_url(url: &str) -> String {
    rlm_core::url::url_without_credentials(url).unwrap_or_else(|| "(a Redis URL)".to_owned())
}

impl RedisStore {
    /// A store on the Redis server at `url` (`redis://[:password@]host[:port][/db]`), its
    /// keys under `prefix`, each entry expiring `ttl` after it was written (`None`: never).
    /// No connection is made until the first operation, so an unreachable server is not an
    /// error here.
    ///
    /// # Errors
    ///
    /// [`CacheError::Open`] when `url` is not a Redis URL.
    pub fn new(url: &str, prefix: &str, ttl: Option<Duration>) -> Result<Self, CacheError> {
        let shown = shown_url(url);
        let fail = |e: redis::RedisError| CacheError::Open {
            store: "redis",
            message: format!("{shown}: {}", e.detail().unwrap_or("not a Redis URL")),
        };
        let client = redis::Client::open(url).map_err(fail)?;
        Ok(Self {
            client,
            manager: tokio::sync::OnceCell::new(),
            prefix: prefix.to_owned(),
            ttl,
            shown,
            retry_at: Mutex::new(None),
        })
    }

    fn key(&self, key: &StoreKey) -> String {
        format!("{}:cache:{}", self.prefix, key.to_hex())
    }

    /// The connection manager (it connects lazily and reconnects after failures).
    async fn connection(&self) -> Result<ConnectionManager, CacheError> {
        self.manager
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(OP_TIMEOUT))
                    .set_response_timeout(Some(OP_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
            .map_err(|e| CacheError::Unavailable {
                store: "redis",
                message: format!("{}: {e}", self.shown),
            })
    }

    /// Runs one operation, failing fast while the server is known to be down.
    async fn run<T>(
        &self,
        operation: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, CacheError> {
        let unavailable = |message: String| CacheError::Unavailable {
            store: "redis",
            message: format!("{}: {message}", self.shown),
        };
        let now = Instant::now();
        {
            let retry_at = self.retry_at.lock().unwrap_or_else(PoisonError::into_inner);
            if retry_at.is_some_and(|at| now < at) {
                return Err(unavailable("unreachable".to_owned()));
            }
        }
        let outcome = match tokio::time::timeout(OP_TIMEOUT, operation).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(unavailable(e.to_string())),
            Err(_) => Err(unavailable(format!(
                "no answer within {} ms",
                OP_TIMEOUT.as_millis()
            ))),
        };
        *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) = match outcome {
            Ok(_) => None,
            Err(_) => Some(Instant::now() + RETRY_AFTER_FAILURE),
        };
        outcome
    }
}

#[async_trait]
impl Store for RedisStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Completion>>, CacheError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|key| self.key(key)).collect();
        let mut connection = self.connection().await?;
        let values: Vec<Option<Vec<u8>>> = self
            .run(async move {
                redis::cmd("MGET")
                    .arg(&names)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        let mut bad = Vec::new();
        let found = values
            .into_iter()
            .zip(keys)
            .map(|(value, key)| match decode(key, &value?) {
                Decoded::Answer(completion) => Some(completion),
                Decoded::Bad => {
                    bad.push(self.key(key));
                    None
                }
            })
            .collect();
        if !bad.is_empty() {
            tracing::warn!(
                target: "rlm_cache",
                "{} Redis cache entr{} did not match {} checksum: removed, asked again",
                bad.len(),
                if bad.len() == 1 { "y" } else { "ies" },
                if bad.len() == 1 { "its" } else { "their" },
            );
            // Removing them is best effort: the answers found are kept either way.
            if let Ok(mut connection) = self.connection().await {
                let _ = self
                    .run(async move {
                        redis::cmd("DEL")
                            .arg(&bad)
                            .query_async::<()>(&mut connection)
                            .await
                    })
                    .await;
            }
        }
        Ok(found)
    }

    async fn put_many(&self, entries: &[(StoreKey, Completion)]) -> Result<(), CacheError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for (key, completion) in entries {
            let command = pipeline
                .cmd("SET")
                .arg(self.key(key))
                .arg(encode(key, completion));
            if let Some(ttl) = self.ttl {
                command.arg("PX").arg(ttl.as_millis().clamp(1, MAX_TTL_MS));
            }
            command.ignore();
        }
        let mut connection = self.connection().await?;
        self.run(async move { pipeline.query_async::<()>(&mut connection).await })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            shown_url("redis://:s3cret@cache.internal:6380/2"),
            "redis://cache.internal:6380/2"
        );
        assert_eq!(shown_url("redis://user:s3cret@host"), "redis://host");
        assert_eq!(
            shown_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert!(!shown_url("s3cret").contains("s3cret"));
    }
}
