//! Tiers behind the in-memory cache: the [`Store`] trait, its [`StoreKey`], and the
//! [`StoredBackend`] decorator that reads and writes through a store.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use rlm_core::{
    BatchExecutor, BatchObserver, BatchOptions, BatchResult, Completion, CompletionRequest,
    LlmBackend, LlmError,
};
use sha2::{Digest, Sha256};

use crate::CacheError;

/// What a stored key is derived from, besides the endpoint and the request: changing the
/// encoding changes every key, so an old entry can never be read as a new one.
const KEY_DOMAIN: &[u8] = b"rlm-cache/v2\n";

/// The key of a request in a persistent or shared store: the SHA-256 of a versioned prefix,
/// the endpoint that answers (see [`LlmBackend::endpoint`]) and the request's JSON (model,
/// every message, every sampling field, `extra`), so the same request to the same service
/// gets the same key in every process and on every machine, and two services sharing one
/// store never answer for each other.
///
/// Two requests that differ in any field get different keys (up to SHA-256 collisions);
/// two equal requests get the same key (JSON objects in `extra` are encoded with their keys
/// sorted, floats by their shortest round-trip text).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StoreKey([u8; 32]);

impl StoreKey {
    /// The key of `request` sent to `endpoint` (`None`: a backend without one, such as a
    /// mock).
    pub fn new(endpoint: Option<&str>, request: &CompletionRequest) -> Self {
        /// Feeds the JSON straight into the hash, without building it in memory.
        struct Feed(Sha256);
        impl std::io::Write for Feed {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.update(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut feed = Feed(Sha256::new());
        feed.0.update(KEY_DOMAIN);
        // Length-prefixed, so no endpoint text can run into the request's JSON.
        match endpoint {
            Some(endpoint) => {
                feed.0.update((endpoint.len() as u64).to_le_bytes());
                feed.0.update(endpoint.as_bytes());
            }
            None => feed.0.update(u64::MAX.to_le_bytes()),
        }
        // Encoding a request cannot fail (string keys, no non-finite map keys); were it to,
        // the error text is hashed too, which only costs a miss.
        if let Err(e) = serde_json::to_writer(&mut feed, request) {
            feed.0.update(format!("\nunencodable: {e}").as_bytes());
        }
        Self(feed.0.finalize().into())
    }

    /// The key of `request` for a backend without an endpoint: `StoreKey::new(None, request)`.
    pub fn of(request: &CompletionRequest) -> Self {
        Self::new(None, request)
    }

    /// The 32 bytes of the digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The digest as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({})", self.to_hex())
    }
}

/// The first bytes of a stored value: the format's version.
#[cfg(any(feature = "disk", feature = "redis"))]
const VALUE_MAGIC: &[u8; 4] = b"rlv2";

/// The checksum of a stored value: SHA-256 over its key and its JSON, so a changed byte, a
/// truncated value or a value moved under another key never reads as an answer.
#[cfg(any(feature = "disk", feature = "redis"))]
fn checksum(key: &StoreKey, json: &[u8]) -> [u8; 32] {
    let mut hash = Sha256::new();
    hash.update(key.as_bytes());
    hash.update(json);
    hash.finalize().into()
}

/// Encodes a completion stored under `key`: [`VALUE_MAGIC`], the checksum, then the JSON.
#[cfg(any(feature = "disk", feature = "redis"))]
pub(crate) fn encode(key: &StoreKey, completion: &Completion) -> Vec<u8> {
    let json = serde_json::to_vec(completion).unwrap_or_default();
    let mut value = Vec::with_capacity(VALUE_MAGIC.len() + 32 + json.len());
    value.extend_from_slice(VALUE_MAGIC);
    value.extend_from_slice(&checksum(key, &json));
    value.extend_from_slice(&json);
    value
}

/// What a stored value read back under its key turned out to be.
#[cfg(any(feature = "disk", feature = "redis"))]
#[derive(Debug)]
pub(crate) enum Decoded {
    /// A whole answer whose checksum matches.
    Answer(Completion),
    /// Bytes that are not a sound entry (another format, a checksum that does not match,
    /// a failed reply): a miss, and the store removes it.
    Bad,
}

/// Decodes a value stored under `key`, checking its checksum.
#[cfg(any(feature = "disk", feature = "redis"))]
pub(crate) fn decode(key: &StoreKey, bytes: &[u8]) -> Decoded {
    let Some(rest) = bytes.strip_prefix(VALUE_MAGIC.as_slice()) else {
        return Decoded::Bad;
    };
    let Some((sum, json)) = rest.split_first_chunk::<32>() else {
        return Decoded::Bad;
    };
    if *sum != checksum(key, json) {
        return Decoded::Bad;
    }
    match serde_json::from_slice::<Completion>(json) {
        Ok(completion) if completion.is_complete() => Decoded::Answer(completion),
        _ => Decoded::Bad,
    }
}

/// A persistent or shared key-value tier for completions, behind the in-memory cache.
///
/// Implementations: `DiskStore` (feature `disk`) and `RedisStore` (feature `redis`). A store decides itself how entries
/// expire and how large it may grow. Errors are reported, never panicked on; the
/// [`StoredBackend`] using the store treats them as misses.
#[async_trait]
pub trait Store: Send + Sync {
    /// A short name for messages and stats: `"disk"`, `"redis"`.
    fn name(&self) -> &'static str;

    /// The stored completion of each key, in order (`None`: absent or expired).
    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Completion>>, CacheError>;

    /// Stores the entries (replacing entries with the same key).
    async fn put_many(&self, entries: &[(StoreKey, Completion)]) -> Result<(), CacheError>;
}

#[async_trait]
impl<S: Store + ?Sized> Store for Arc<S> {
    fn name(&self) -> &'static str {
        (**self).name()
    }

    async fn get_many(&self, keys: &[StoreKey]) -> Result<Vec<Option<Completion>>, CacheError> {
        (**self).get_many(keys).await
    }

    async fn put_many(&self, entries: &[(StoreKey, Completion)]) -> Result<(), CacheError> {
        (**self).put_many(entries).await
    }
}

/// A decorator that answers requests from a [`Store`] and writes every successful answer
/// of the inner backend to it.
///
/// Put it *below* [`CachedBackend`](crate::CachedBackend), which keeps the in-memory
/// cache, single-flight and in-batch deduplication in front:
/// `CachedBackend::new(StoredBackend::new(provider, disk))`. Tiers stack:
/// `StoredBackend::new(StoredBackend::new(provider, redis), disk)` looks on disk, then in
/// Redis, then asks the provider; an answer found in Redis is written to disk on its way up.
///
/// - Errors, cancelled calls and failed replies (cut at the token limit, empty, only
///   reasoning or tool calls; see [`Completion::is_complete`]) are never stored, so asking
///   again sends the request again.
/// - Entries are keyed by the inner backend's [`LlmBackend::endpoint`] and the request
///   ([`StoreKey`]).
/// - A batch's answers are written as each arrives, a few at a time, so a process killed
///   during a long batch keeps what was answered before.
/// - A store that fails is treated as empty: the call goes on to the inner backend, and a
///   warning is logged (`tracing`, target `rlm_cache`) once per outage; when the store works
///   again an info line says so.
pub struct StoredBackend<B, S> {
    inner: B,
    store: Arc<S>,
    state: Arc<Health>,
}

/// A store's hit count and whether its failure was already reported.
#[derive(Debug, Default)]
struct Health {
    hits: AtomicU64,
    down: AtomicBool,
}

impl Health {
    fn failed(&self, store: &str, error: &CacheError) {
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "rlm_cache",
                "{error}; going on without the {store} cache until it works again"
            );
        }
    }

    fn worked(&self, store: &str) {
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(target: "rlm_cache", "the {store} cache works again");
        }
    }
}

impl<B, S: Store> StoredBackend<B, S> {
    /// Wraps `inner` with `store`.
    pub fn new(inner: B, store: S) -> Self {
        Self::shared(inner, Arc::new(store))
    }

    /// Wraps `inner` with a store shared with other holders.
    pub fn shared(inner: B, store: Arc<S>) -> Self {
        Self {
            inner,
            store,
            state: Arc::default(),
        }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// Requests answered from the store so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::Relaxed)
    }

    async fn lookup(&self, keys: &[StoreKey]) -> Vec<Option<Completion>> {
        match self.store.get_many(keys).await {
            Ok(found) if found.len() == keys.len() => {
                self.state.worked(self.store.name());
                found
            }
            Ok(_) => keys.iter().map(|_| None).collect(),
            Err(error) => {
                self.state.failed(self.store.name(), &error);
                keys.iter().map(|_| None).collect()
            }
        }
    }

    async fn write(&self, entries: &[(StoreKey, Completion)]) {
        write(&*self.store, &self.state, entries).await;
    }
}

async fn write<S: Store + ?Sized>(store: &S, state: &Health, entries: &[(StoreKey, Completion)]) {
    if entries.is_empty() {
        return;
    }
    match store.put_many(entries).await {
        Ok(()) => state.worked(store.name()),
        Err(error) => state.failed(store.name(), &error),
    }
}

impl<B: fmt::Debug, S: Store> fmt::Debug for StoredBackend<B, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredBackend")
            .field("inner", &self.inner)
            .field("store", &self.store.name())
            .field("hits", &self.hits())
            .finish()
    }
}

#[async_trait]
impl<B: LlmBackend, S: Store + 'static> LlmBackend for StoredBackend<B, S> {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, LlmError> {
        let key = StoreKey::new(self.inner.endpoint(), &request);
        if let Some(Some(found)) = self.lookup(&[key]).await.pop() {
            self.state.hits.fetch_add(1, Ordering::Relaxed);
            return Ok(found);
        }
        let completion = self.inner.complete(request).await?;
        if completion.is_complete() {
            self.write(&[(key, completion.clone())]).await;
        }
        Ok(completion)
    }

    fn endpoint(&self) -> Option<&str> {
        self.inner.endpoint()
    }
}

/// Forwards the inner batch's events to the caller's positions and queues each success
/// for writing as it arrives.
struct Forward {
    outer: Option<Arc<dyn BatchObserver>>,
    /// The caller's position of each inner item.
    positions: Vec<usize>,
    keys: Vec<StoreKey>,
    queue: Mutex<Option<tokio::sync::mpsc::UnboundedSender<(StoreKey, Completion)>>>,
    queued: Mutex<Vec<bool>>,
}

impl BatchObserver for Forward {
    fn started(&self, index: usize, request: &CompletionRequest) {
        if let (Some(outer), Some(&at)) = (&self.outer, self.positions.get(index)) {
            outer.started(at, request);
        }
    }

    fn finished(&self, index: usize, result: &BatchResult, elapsed: Duration) {
        if let (Some(completion), Some(key)) = (
            result.as_ref().ok().filter(|c| c.is_complete()),
            self.keys.get(index),
        ) {
            let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
            let sent = queue
                .as_ref()
                .is_some_and(|queue| queue.send((*key, completion.clone())).is_ok());
            if sent {
                let mut queued = self.queued.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(flag) = queued.get_mut(index) {
                    *flag = true;
                }
            }
        }
        if let (Some(outer), Some(&at)) = (&self.outer, self.positions.get(index)) {
            outer.finished(at, result, elapsed);
        }
    }
}

/// Entries written in one store operation, at most.
const WRITE_CHUNK: usize = 256;

#[async_trait]
impl<B: BatchExecutor, S: Store + 'static> BatchExecutor for StoredBackend<B, S> {
    /// Answers what the store holds at once (its `started` and `finished` reported before
    /// anything is sent), sends the rest through the inner backend's own `complete_batch`
    /// with the caller's concurrency and cancellation, and writes each success as it
    /// arrives. One result per request, in input order.
    async fn complete_batch(
        &self,
        requests: Vec<CompletionRequest>,
        options: &BatchOptions,
    ) -> Vec<BatchResult> {
        if options.cancel.is_cancelled() {
            return requests.iter().map(|_| Err(LlmError::Cancelled)).collect();
        }
        let endpoint = self.inner.endpoint();
        let keys: Vec<StoreKey> = requests
            .iter()
            .map(|request| StoreKey::new(endpoint, request))
            .collect();
        let found = self.lookup(&keys).await;
        let mut results: Vec<Option<BatchResult>> = requests.iter().map(|_| None).collect();
        let mut positions = Vec::new();
        let mut missing_keys = Vec::new();
        let mut missing = Vec::new();
        for (i, ((request, key), found)) in requests.into_iter().zip(keys).zip(found).enumerate() {
            match found {
                Some(completion) => {
                    self.state.hits.fetch_add(1, Ordering::Relaxed);
                    let result = Ok(completion);
                    if let Some(observer) = &options.observer {
                        observer.started(i, &request);
                        observer.finished(i, &result, Duration::ZERO);
                    }
                    results[i] = Some(result);
                }
                None => {
                    positions.push(i);
                    missing_keys.push(key);
                    missing.push(request);
                }
            }
        }
        if !missing.is_empty() {
            let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
            let forward = Arc::new(Forward {
                outer: options.observer.clone(),
                queued: Mutex::new(vec![false; missing.len()]),
                positions,
                keys: missing_keys,
                queue: Mutex::new(Some(sender)),
            });
            let inner_options = BatchOptions::new(options.max_concurrent)
                .with_cancel(options.cancel.clone())
                .with_observer(Arc::clone(&forward) as Arc<dyn BatchObserver>);
            let batch = async {
                let outcomes = self.inner.complete_batch(missing, &inner_options).await;
                // Closes the queue: the writer ends once it has written what is queued.
                forward
                    .queue
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .take();
                outcomes
            };
            let writer = async {
                let mut chunk = Vec::new();
                while receiver.recv_many(&mut chunk, WRITE_CHUNK).await > 0 {
                    self.write(&chunk).await;
                    chunk.clear();
                }
            };
            let (outcomes, ()) = tokio::join!(batch, writer);
            // Successes the inner backend did not report to its observer.
            let queued = std::mem::take(
                &mut *forward
                    .queued
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            let mut late = Vec::new();
            let mut outcomes = outcomes.into_iter();
            for (j, &at) in forward.positions.iter().enumerate() {
                let outcome = outcomes.next().unwrap_or_else(|| {
                    Err(LlmError::other(
                        "the inner backend returned fewer results than requests",
                    ))
                });
                if let (Some(completion), false, Some(key)) = (
                    outcome.as_ref().ok().filter(|c| c.is_complete()),
                    queued.get(j).copied().unwrap_or(true),
                    forward.keys.get(j),
                ) {
                    late.push((*key, completion.clone()));
                }
                results[at] = Some(outcome);
            }
            for chunk in late.chunks(WRITE_CHUNK) {
                self.write(chunk).await;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(LlmError::Cancelled)))
            .collect()
    }
}
