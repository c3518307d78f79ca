//! Per-model pacing: requests and tokens per minute (governor GCRA buckets), admitted in
//! arrival order, plus a pause every caller honours when the server asks for one.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::{OpenAiConfig, RateLimit};

/// One per-minute budget: a GCRA bucket that lets about one second's share through at once
/// and refills so that no 60-second window ever holds more than the budget.
#[derive(Debug)]
struct Bucket {
    limiter: DefaultDirectRateLimiter,
    burst: u32,
}

impl Bucket {
    /// A bucket for `per_minute` cells a minute, or none for 0 (no limit).
    fn per_minute(per_minute: u32) -> Option<Self> {
        let burst = (per_minute / 60).max(1);
        // Cells arrive `burst` at once and then one per period; in any window of 60 s that
        // is `burst + 60 s / period - 1` cells, which the period makes exactly `per_minute`.
        let refills = u64::from(per_minute.checked_sub(burst)?) + 1;
        // Rounded up, so that 60 s never holds more than `refills` periods.
        let period = Duration::from_nanos(60_000_000_000u64.div_ceil(refills));
        let quota = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?);
        Some(Self {
            limiter: RateLimiter::direct(quota),
            burst,
        })
    }

    /// Waits until `cells` cells have been taken, in pieces no larger than the burst so that
    /// a request larger than the burst still goes through, at the sustained rate.
    async fn take(&self, mut cells: u64) {
        let mut largest = self.burst;
        while cells > 0 {
            let piece = u32::try_from(cells.min(u64::from(largest))).unwrap_or(1);
            let n = NonZeroU32::new(piece).unwrap_or(NonZeroU32::MIN);
            match self.limiter.check_n(n) {
                Ok(Ok(())) => cells -= u64::from(n.get()),
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(self.limiter.clock().now());
                    tokio::time::sleep(wait).await;
                }
                // Cannot happen (pieces fit the burst), but a single cell always fits.
                Err(_) => largest = 1,
            }
        }
    }
}

/// Everything that paces one model.
#[derive(Debug)]
pub(crate) struct Gate {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// Callers take their cells one at a time, in arrival order, so a large request is
    /// never starved by a stream of small ones.
    turnstile: tokio::sync::Mutex<()>,
    /// No request is sent before this instant (set from a server's `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
}

impl Gate {
    fn new(limit: RateLimit) -> Self {
        Self {
            requests: Bucket::per_minute(limit.requests_per_minute),
            tokens: Bucket::per_minute(limit.tokens_per_minute),
            turnstile: tokio::sync::Mutex::new(()),
            paused_until: Mutex::new(None),
        }
    }

    /// Waits until a request estimated at `tokens` tokens may be sent, and takes its share of
    /// the budgets. Dropping the future gives up the place in line.
    pub(crate) async fn admit(&self, tokens: u64) {
        if self.requests.is_none() && self.tokens.is_none() {
            self.wait_for_pause().await;
            return;
        }
        let _turn = self.turnstile.lock().await;
        self.wait_for_pause().await;
        if let Some(requests) = &self.requests {
            requests.take(1).await;
        }
        if let Some(bucket) = &self.tokens {
            bucket.take(tokens.max(1)).await;
        }
        // A pause that began while we waited for cells holds us too.
        self.wait_for_pause().await;
    }

    /// Holds every request of this model for `wait` from now (extending, never shortening,
    /// a pause already in force).
    pub(crate) fn pause(&self, wait: Duration) {
        let Some(until) = Instant::now().checked_add(wait) else {
            return;
        };
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    async fn wait_for_pause(&self) {
        loop {
            let until = *self
                .paused_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match until {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => return,
            }
        }
    }
}

/// The gates of every model, created on first use and shared by every clone of a backend.
#[derive(Debug)]
pub(crate) struct Limiters {
    default: RateLimit,
    per_model: HashMap<String, RateLimit>,
    gates: RwLock<HashMap<String, Arc<Gate>>>,
}

impl Limiters {
    pub(crate) fn new(config: &OpenAiConfig) -> Self {
        Self {
            default: config.rate_limit,
            per_model: config
                .model_rate_limits
                .iter()
                .map(|(model, limit)| (model.clone(), *limit))
                .collect(),
            gates: RwLock::new(HashMap::new()),
        }
    }

    /// The gate of `model`.
    pub(crate) fn gate(&self, model: &str) -> Arc<Gate> {
        if let Some(gate) = self
            .gates
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(model)
        {
            return Arc::clone(gate);
        }
        let limit = self.per_model.get(model).copied().unwrap_or(self.default);
        let mut gates = self.gates.write().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            gates
                .entry(model.to_owned())
                .or_insert_with(|| Arc::new(Gate::new(limit))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant as StdInstant;

    #[test]
    fn burst_is_a_seconds_share_and_no_minute_exceeds_the_limit() {
        for per_minute in [1u32, 2, 59, 60, 61, 600, 10_000, 1_000_000, u32::MAX] {
            let Some(bucket) = Bucket::per_minute(per_minute) else {
                panic!("no bucket for {per_minute}");
            };
            assert_eq!(bucket.burst, (per_minute / 60).max(1));
            let refills = u64::from(per_minute - bucket.burst) + 1;
            let period = 60_000_000_000u64.div_ceil(refills);
            // Cells in a 60 s window: the burst plus one per started period after the first.
            let in_a_minute = u64::from(bucket.burst) + 60_000_000_000u64.div_ceil(period) - 1;
            assert!(
                in_a_minute <= u64::from(per_minute),
                "{per_minute}: {in_a_minute}"
            );
        }
        assert!(Bucket::per_minute(0).is_none());
    }

    #[tokio::test]
    async fn a_request_larger_than_the_burst_goes_through_in_pieces() {
        // 6000 a minute: a burst of 100 and then about 98 a second.
        let bucket = Bucket::per_minute(6_000).unwrap_or_else(|| panic!("bucket"));
        let start = StdInstant::now();
        bucket.take(250).await;
        let elapsed = start.elapsed();
        // 100 at once, then 150 more at ~98.35/s: about 1.5 s.
        assert!(elapsed >= Duration::from_millis(1_400), "{elapsed:?}");
    }

    #[tokio::test]
    async fn pauses_hold_callers_and_only_extend() {
        let gate = Gate::new(RateLimit::default());
        gate.pause(Duration::from_millis(200));
        gate.pause(Duration::from_millis(10));
        let start = StdInstant::now();
        gate.admit(1).await;
        assert!(start.elapsed() >= Duration::from_millis(195));
        // Far-future pauses do not overflow.
        gate.pause(Duration::MAX);
    }

    #[test]
    fn gates_are_per_model_and_shared() {
        let config = OpenAiConfig::new()
            .with_rate_limit(RateLimit::new(60, 0))
            .with_model_rate_limit("fast", RateLimit::default());
        let limiters = Limiters::new(&config);
        let a = limiters.gate("slow");
        let b = limiters.gate("slow");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(a.requests.is_some() && a.tokens.is_none());
        let fast = limiters.gate("fast");
        assert!(fast.requests.is_none() && fast.tokens.is_none());
    }
}
