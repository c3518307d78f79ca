//! Pacing shared with other processes: the [`SharedPacer`] trait, consulted by every call
//! after the process's own limiter, and (feature `redis`) its Redis implementation.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::RateLimit;

/// A rate limiter whose books are kept outside the process, so that every process using
/// it together stays within one budget.
///
/// The backend calls [`admit`](Self::admit) for each request (each attempt) once its own
/// per-process limiter has let it through, and repeats after the wait it is told; it calls
/// [`pause`](Self::pause) when the server asks for a pause (`Retry-After`), so every
/// process honours it. An implementation that cannot reach its books says so (`None`),
/// and the request goes out under the local limiter alone: never a failed call, never an
/// unlimited burst.
#[async_trait]
pub trait SharedPacer: fmt::Debug + Send + Sync {
    /// Takes one request and `tokens` tokens of `model`'s shared budget `limit` (per
    /// minute; `0` means no limit of that kind) if it can now: `Some(Duration::ZERO)`
    /// means taken (and counted); `Some(wait)` means not now, ask again after `wait`
    /// (nothing was taken); `None` means the shared books are unreachable.
    async fn admit(&self, model: &str, limit: RateLimit, tokens: u64) -> Option<Duration>;

    /// Holds every process's requests for `model` for `wait` from now (extending, never
    /// shortening, a pause already in force). Best effort: an unreachable store is ignored.
    async fn pause(&self, model: &str, wait: Duration);

    /// How many processes (this one included) used `model`'s books within the last minute,
    /// as last seen while they were reachable; at least 1. While the books are unreachable,
    /// each process keeps to this share of the limit, so together they still keep to it.
    fn processes(&self, model: &str) -> usize {
        let _ = model;
        1
    }

    /// Clears `model`'s shared books. The backend calls it when they ask for a wait that no
    /// configured limit can require (state damaged or written by something else), so no
    /// process stays stuck behind it. Best effort; the default does nothing.
    async fn reset(&self, model: &str) {
        let _ = model;
    }
}

#[cfg(feature = "redis")]
pub use self::redis_pacer::RedisPacer;

#[cfg(feature = "redis")]
mod redis_pacer {
    use std::sync::{Mutex, PoisonError};
    use std::time::Duration;

    use async_trait::async_trait;
    use redis::Script;
    use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    use tokio::time::Instant;

    use super::SharedPacer;
    use crate::config::{ConfigError, RateLimit};

    /// The longest one Redis round trip may take before the books count as unreachable.
    const OP_TIMEOUT: Duration = Duration::from_millis(1_000);
    /// After a failure, Redis is not asked again for this long.
    const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

    /// The admission script. KEYS: state hash, requests window list, tokens window list,
    /// the set of processes using the books. ARGV: rpm, tpm, tokens, an optional clock in
    /// microseconds (tests; otherwise Redis's `TIME`), and the asking process's id. Returns
    /// `{wait, processes}`: 0 (admitted and counted) or the microseconds to wait, and how
    /// many processes asked within the last minute.
    ///
    /// The same shape as the local limiter: a GCRA bucket per budget (a burst of
    /// `limit / 60`, at least 1, refilled so that 60 s never holds more than the limit)
    /// for smoothness, and a one-minute ledger (entries per millisecond, dated by the end
    /// of their millisecond so they expire late, never early) for the hard guarantee.
    const ADMIT: &str = r"
local state, rlist, tlist = KEYS[1], KEYS[2], KEYS[3]
local rpm, tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local now
if ARGV[4] and ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local MINUTE = 60000000
local function num(value)
  return tonumber(value) or 0
end
local peers = 1
if KEYS[4] and ARGV[5] and ARGV[5] ~= '' then
  redis.call('ZADD', KEYS[4], now, ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now - MINUTE)
  redis.call('PEXPIRE', KEYS[4], 120000)
  peers = redis.call('ZCARD', KEYS[4])
end
local pause = num(redis.call('HGET', state, 'pause'))
if pause > now then return {pause - now, peers} end

local function gcra(field, limit, cost)
  if limit <= 0 then return 0, nil end
  local burst = math.max(math.floor(limit / 60), 1)
  local period = math.ceil(MINUTE / (limit - burst + 1))
  local tat = num(redis.call('HGET', state, field))
  if tat < now then tat = now end
  local allow_at = tat - (burst - math.min(cost, burst)) * period
  if allow_at > now then return allow_at - now, nil end
  return 0, tat + cost * period
end

local function parse(entry)
  local sep = string.find(entry, ':', 1, true)
  if not sep then return 0, 0 end
  return num(string.sub(entry, 1, sep - 1)), num(string.sub(entry, sep + 1))
end

local function room(list, field, limit, cost)
  if limit <= 0 then return 0, 0 end
  local total = num(redis.call('HGET', state, field))
  while true do
    local head = redis.call('LINDEX', list, 0)
    if not head then total = 0 break end
    local at, c = parse(head)
    if now - at < MINUTE then break end
    redis.call('LPOP', list)
    total = total - c
  end
  if total < 0 then total = 0 end
  local allowed = math.max(limit - cost, 0)
  if total <= allowed then return 0, total end
  local in_window, until_at, i = total, now, 0
  while in_window > allowed do
    local items = redis.call('LRANGE', list, i, i + 127)
    if #items == 0 then break end
    for _, entry in ipairs(items) do
      if in_window <= allowed then break end
      local at, c = parse(entry)
      in_window = in_window - c
      until_at = at + MINUTE
    end
    i = i + 128
  end
  return math.max(until_at - now, 1), total
end

local function record(list, field, limit, cost, total)
  if limit <= 0 then return end
  local at = math.ceil(now / 1000) * 1000
  local last = redis.call('LINDEX', list, -1)
  if last then
    local last_at, last_cost = parse(last)
    if last_at == at then
      redis.call('LSET', list, -1, at .. ':' .. (last_cost + cost))
    else
      redis.call('RPUSH', list, at .. ':' .. cost)
    end
  else
    redis.call('RPUSH', list, at .. ':' .. cost)
  end
  redis.call('HSET', state, field, total + cost)
  redis.call('PEXPIRE', list, 120000)
end

local rwait, rtat = gcra('rtat', rpm, 1)
local twait, ttat = gcra('ttat', tpm, tokens)
local wait = math.max(rwait, twait)
if wait > 0 then return {wait, peers} end
local rroom, rtotal = room(rlist, 'rtotal', rpm, 1)
local troom, ttotal = room(tlist, 'ttotal', tpm, tokens)
wait = math.max(rroom, troom)
if wait > 0 then return {wait, peers} end
if rtat then redis.call('HSET', state, 'rtat', rtat) end
if ttat then redis.call('HSET', state, 'ttat', ttat) end
record(rlist, 'rtotal', rpm, 1, rtotal)
record(tlist, 'ttotal', tpm, tokens, ttotal)
redis.call('PEXPIRE', state, 120000)
return {0, peers}
";

    /// KEYS: state hash. ARGV: the pause in microseconds, optional clock (as above).
    const PAUSE: &str = r"
local now
if ARGV[2] and ARGV[2] ~= '' then
  now = tonumber(ARGV[2])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local until_at = now + tonumber(ARGV[1])
local current = tonumber(redis.call('HGET', KEYS[1], 'pause')) or 0
if until_at > current then redis.call('HSET', KEYS[1], 'pause', until_at) end
redis.call('PEXPIRE', KEYS[1], math.max(120000, math.ceil((until_at - now) / 1000) + 1000))
return 0
";

    /// Rate limits shared through Redis: one Lua script decides each admission
    /// atomically, so any number of processes on any number of machines together keep
    /// to the limit, paced as one process would be (about a second's share at once, never
    /// more than the limit in any 60-second window), and a server's `Retry-After` pause
    /// holds them all.
    ///
    /// Keys: `{prefix}:pace:{model}` (a hash: bucket states, totals, pause) and
    /// `{prefix}:pace:{model}:req` / `:tok` (the minute's ledgers); they expire after two
    /// idle minutes. Every process must use the same limits for a model (each passes its
    /// own; mixed limits mix). Times are Redis's clock (`TIME`), so the processes' clocks
    /// need not agree.
    ///
    /// While Redis is unreachable (a failed round trip waits at most 1 s, and for a second
    /// after it Redis is not asked), each process keeps to its share of the limit: the
    /// limit divided by the number of processes that used the books in the last minute it
    /// could see (`{prefix}:pace:{model}:procs`). When Redis returns, the shared books are
    /// used again.
    pub struct RedisPacer {
        client: redis::Client,
        /// Made on first use, inside the caller's runtime (making it needs one).
        manager: tokio::sync::OnceCell<ConnectionManager>,
        prefix: String,
        admit: Script,
        pause: Script,
        reset: Script,
        retry_at: Mutex<Option<Instant>>,
        shown: String,
        /// Whether the outage now was already reported.
        warned: std::sync::atomic::AtomicBool,
        /// A fixed clock for tests (microseconds), instead of Redis's.
        clock: Option<fn() -> u64>,
        /// This process's id in the books' set of processes.
        id: String,
        /// The number of processes last seen per model.
        processes: Mutex<std::collections::HashMap<String, usize>>,
    }

    impl std::fmt::Debug for RedisPacer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("RedisPacer")
                .field("url", &self.shown)
                .field("prefix", &self.prefix)
                .finish_non_exhaustive()
        }
    }

    /// An id for this process's pacer, unique among the processes sharing a server.
    fn process_id() -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{}-{}-{nanos}", hostname(), std::process::id())
    }

    /// The machine's name, where it can be read; the process id and time keep ids apart
    /// anyway.
    fn hostname() -> String {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_owned())
            .unwrap_or_default()
    }

    /// `url` without a password, for messages.
    fn shown_url(url: &str) -> String {
        rlm_core::url::url_without_credentials(url).unwrap_or_else(|| "(a Redis URL)".to_owned())
    }

    impl RedisPacer {
        /// A pacer on the Redis server at `url` (`redis://[:password@]host[:port][/db]`),
        /// its keys under `prefix`. No connection is made until the first call.
        ///
        /// # Errors
        ///
        /// [`ConfigError::InvalidSetting`] when `url` is not a Redis URL (the message
        /// never contains a password).
        pub fn new(url: &str, prefix: &str) -> Result<Self, ConfigError> {
            let shown = shown_url(url);
            let fail = |e: redis::RedisError| ConfigError::InvalidSetting {
                name: "Redis URL",
                reason: format!("{shown}: {}", e.detail().unwrap_or("not a Redis URL")),
            };
            let client = redis::Client::open(url).map_err(fail)?;
            Ok(Self {
                client,
                manager: tokio::sync::OnceCell::new(),
                prefix: prefix.to_owned(),
                admit: Script::new(ADMIT),
                pause: Script::new(PAUSE),
                reset: Script::new("return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])"),
                retry_at: Mutex::new(None),
                shown,
                warned: std::sync::atomic::AtomicBool::new(false),
                clock: None,
                id: process_id(),
                processes: Mutex::default(),
            })
        }

        /// Uses `clock` (microseconds) instead of Redis's `TIME`: for tests that check
        /// the books over simulated minutes.
        #[doc(hidden)]
        pub fn with_clock(mut self, clock: fn() -> u64) -> Self {
            self.clock = Some(clock);
            self
        }

        fn keys(&self, model: &str) -> [String; 4] {
            let base = format!("{}:pace:{model}", self.prefix);
            [
                format!("{base}:req"),
                format!("{base}:tok"),
                format!("{base}:procs"),
                base,
            ]
        }

        fn clock_arg(&self) -> String {
            self.clock
                .map(|clock| clock().to_string())
                .unwrap_or_default()
        }

        async fn run<T: redis::FromRedisValue>(
            &self,
            invocation: redis::ScriptInvocation<'_>,
        ) -> Option<T> {
            use std::sync::atomic::Ordering;
            let now = Instant::now();
            if self
                .retry_at
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|at| now < at)
            {
                return None;
            }
            let connection = self
                .manager
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(OP_TIMEOUT))
                        .set_response_timeout(Some(OP_TIMEOUT))
                        .set_number_of_retries(1)
                        .set_min_delay(Duration::from_millis(50));
                    ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                })
                .await
                .cloned();
            let outcome = match connection {
                Ok(mut connection) => {
                    tokio::time::timeout(OP_TIMEOUT, invocation.invoke_async::<T>(&mut connection))
                        .await
                }
                Err(e) => Ok(Err(e)),
            };
            let failure = match outcome {
                Ok(Ok(value)) => {
                    *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) = None;
                    if self.warned.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            target: "rlm_openai",
                            "Redis at {} is reachable again: rate limits are shared again",
                            self.shown
                        );
                    }
                    return Some(value);
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {} ms", OP_TIMEOUT.as_millis()),
            };
            *self.retry_at.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Instant::now() + RETRY_AFTER_FAILURE);
            if !self.warned.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    target: "rlm_openai",
                    "Redis at {} is unreachable ({failure}); each process paces its own \
                     rate limits until it returns",
                    self.shown
                );
            }
            None
        }
    }

    #[async_trait]
    impl SharedPacer for RedisPacer {
        async fn admit(&self, model: &str, limit: RateLimit, tokens: u64) -> Option<Duration> {
            let [requests, token_list, processes, state] = self.keys(model);
            let mut invocation = self.admit.prepare_invoke();
            invocation
                .key(&state)
                .key(&requests)
                .key(&token_list)
                .key(&processes)
                .arg(limit.requests_per_minute)
                .arg(limit.tokens_per_minute)
                .arg(tokens)
                .arg(self.clock_arg())
                .arg(&self.id);
            let (wait, seen): (i64, i64) = self.run(invocation).await?;
            self.processes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(model.to_owned(), usize::try_from(seen).unwrap_or(1).max(1));
            Some(Duration::from_micros(u64::try_from(wait).unwrap_or(0)))
        }

        fn processes(&self, model: &str) -> usize {
            self.processes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(model)
                .copied()
                .unwrap_or(1)
        }

        async fn reset(&self, model: &str) {
            let [requests, tokens, _, state] = self.keys(model);
            let keys = [requests, tokens, state];
            let mut invocation = self.reset.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            let _: Option<i64> = self.run(invocation).await;
        }

        async fn pause(&self, model: &str, wait: Duration) {
            let [_, _, _, state] = self.keys(model);
            let mut invocation = self.pause.prepare_invoke();
            invocation
                .key(&state)
                .arg(u64::try_from(wait.as_micros()).unwrap_or(u64::MAX / 2))
                .arg(self.clock_arg());
            let _: Option<i64> = self.run(invocation).await;
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn passwords_never_show() {
            assert_eq!(shown_url("redis://:pw@h:1/0"), "redis://h:1/0");
            let error = RedisPacer::new("nonsense://:pw@h", "rlm")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!error.contains("pw"), "{error}");
        }
    }
}
