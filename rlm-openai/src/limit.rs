//! Per-model pacing: requests and tokens per minute (governor GCRA buckets for smoothness,
//! and the books of the last minute for the hard limit), admitted in arrival order, plus a
//! pause every caller honours when the server asks for one.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use crate::config::{OpenAiConfig, RateLimit};
use crate::shared::SharedPacer;

/// governor's clock, reading tokio's time: the clock every wait here sleeps on. (With
/// another clock, a paused tokio clock, as in tests, would make the waits spin.)
#[derive(Debug, Clone, Copy, Default)]
struct TokioClock;

/// An instant of [`TokioClock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct TokioInstant(Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    fn add(self, later: Nanos) -> Self {
        // Beyond the clock's range (centuries away) the instant stays put; never a panic.
        Self(self.0.checked_add(later.into()).unwrap_or(self.0))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Self(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<TokioInstant>>;

/// One per-minute budget: a GCRA bucket that lets about one second's share through at once
/// and refills so that no 60-second window ever holds more than the budget.
#[derive(Debug)]
struct Bucket {
    limiter: Limiter,
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
            limiter: RateLimiter::direct_with_clock(quota, TokioClock),
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

/// The length of the windows the budgets are counted in.
const MINUTE: Duration = Duration::from_secs(60);

/// What one budget let through in the last minute, oldest first: the hard guarantee that no
/// 60-second window holds more than the budget, whatever happened between taking a
/// bucket's cells and sending (a wait for the other budget, a server's pause) and however
/// large a request is.
#[derive(Debug)]
struct Window {
    /// The budget (`0`: none, nothing is recorded).
    limit: u64,
    sent: VecDeque<Sent>,
    /// The sum of `sent`.
    total: u64,
}

/// Sends of less than a millisecond, counted as one.
#[derive(Debug)]
struct Sent {
    first: Instant,
    /// When the last of them went: the entry leaves the window a minute after this.
    last: Instant,
    cost: u64,
}

impl Window {
    fn new(per_minute: u32) -> Self {
        Self {
            limit: u64::from(per_minute),
            sent: VecDeque::new(),
            total: 0,
        }
    }

    /// How long from `now` until `cost` fits in the minute ending then (zero: it fits now).
    /// A cost larger than the whole budget fits only a minute with nothing else in it.
    fn wait_for_room(&mut self, cost: u64, now: Instant) -> Duration {
        if self.limit == 0 {
            return Duration::ZERO;
        }
        while let Some(oldest) = self.sent.front() {
            if now.saturating_duration_since(oldest.last) < MINUTE {
                break;
            }
            self.total = self.total.saturating_sub(oldest.cost);
            self.sent.pop_front();
        }
        let allowed = self.limit.saturating_sub(cost);
        let mut in_window = self.total;
        let mut until = now;
        for sent in &self.sent {
            if in_window <= allowed {
                break;
            }
            in_window = in_window.saturating_sub(sent.cost);
            until = sent.last.checked_add(MINUTE).unwrap_or(now);
        }
        until.saturating_duration_since(now)
    }

    /// Counts `cost` as sent at `now`. Sends within a millisecond of an entry's first one
    /// share that entry, dated by the latest (so they expire a little late, never early):
    /// at most about 60,000 entries, however small and frequent the requests.
    fn record(&mut self, cost: u64, now: Instant) {
        if self.limit == 0 {
            return;
        }
        self.total = self.total.saturating_add(cost);
        match self.sent.back_mut() {
            Some(entry)
                if now.saturating_duration_since(entry.first) < Duration::from_millis(1) =>
            {
                entry.last = now;
                entry.cost = entry.cost.saturating_add(cost);
            }
            _ => self.sent.push_back(Sent {
                first: now,
                last: now,
                cost,
            }),
        }
    }
}

/// The windows of both budgets, guarded by the turnstile.
#[derive(Debug)]
struct Ledger {
    requests: Window,
    tokens: Window,
    /// The same sends, held to this process's share of the limits while the shared books are
    /// unreachable (the limits divided by the processes that shared them).
    share_requests: Window,
    share_tokens: Window,
}

impl Ledger {
    /// How long until this process's share of `limit` has room for a request of `tokens`.
    fn share_wait(
        &mut self,
        limit: RateLimit,
        processes: usize,
        tokens: u64,
        now: Instant,
    ) -> Duration {
        let share = |per_minute: u32| {
            if per_minute == 0 {
                0
            } else {
                (u64::from(per_minute) / processes.max(1) as u64).max(1)
            }
        };
        self.share_requests.limit = share(limit.requests_per_minute);
        self.share_tokens.limit = share(limit.tokens_per_minute);
        self.share_requests
            .wait_for_room(1, now)
            .max(self.share_tokens.wait_for_room(tokens, now))
    }
}

/// Everything that paces one model.
#[derive(Debug)]
pub(crate) struct Gate {
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    /// Callers take their cells one at a time, in arrival order, so a large request is
    /// never starved by a stream of small ones; the holder also keeps the books.
    turnstile: tokio::sync::Mutex<Ledger>,
    /// No request is sent before this instant (set from a server's `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
    /// Books shared with other processes, consulted after this process's own.
    shared: Option<Shared>,
}

/// A model's share of a [`SharedPacer`].
#[derive(Debug)]
struct Shared {
    pacer: Arc<dyn SharedPacer>,
    model: String,
    limit: RateLimit,
    /// The longest wait the shared books can rightly ask for: a minute's window, plus the
    /// longest server pause this process honours. A longer one is damaged state.
    max_wait: Duration,
    /// Whether damaged shared state was already reported for this model.
    warned: std::sync::atomic::AtomicBool,
}

impl Shared {
    fn new(
        pacer: Arc<dyn SharedPacer>,
        model: &str,
        limit: RateLimit,
        max_pause: Duration,
    ) -> Self {
        Self {
            pacer,
            model: model.to_owned(),
            limit,
            max_wait: Duration::from_secs(61).saturating_add(max_pause),
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The shared books' answer for one request: `None` when they are unreachable, or when
    /// they ask for a wait no configured limit can require (state written by something
    /// else, a clock far off): then it is reported once, the books are reset, and this
    /// process paces on its own.
    async fn admit(&self, tokens: u64) -> Option<Duration> {
        let wait = self.pacer.admit(&self.model, self.limit, tokens).await?;
        if wait <= self.max_wait {
            return Some(wait);
        }
        if !self.warned.swap(true, std::sync::atomic::Ordering::Relaxed) {
            tracing::warn!(
                target: "rlm_openai",
                "the shared rate-limit state of {} asks for a wait of {} s, more than its \
                 limits can require ({} s at most): ignored and reset; pacing locally",
                self.model,
                wait.as_secs(),
                self.max_wait.as_secs(),
            );
        }
        self.pacer.reset(&self.model).await;
        None
    }
}

impl Gate {
    #[cfg(test)]
    fn new(limit: RateLimit) -> Self {
        Self::with_shared(limit, None)
    }

    fn with_shared(limit: RateLimit, shared: Option<Shared>) -> Self {
        Self {
            requests: Bucket::per_minute(limit.requests_per_minute),
            tokens: Bucket::per_minute(limit.tokens_per_minute),
            turnstile: tokio::sync::Mutex::new(Ledger {
                requests: Window::new(limit.requests_per_minute),
                tokens: Window::new(limit.tokens_per_minute),
                share_requests: Window::new(limit.requests_per_minute),
                share_tokens: Window::new(limit.tokens_per_minute),
            }),
            paused_until: Mutex::new(None),
            shared,
        }
    }

    /// Waits until a request estimated at `tokens` tokens may be sent, and takes its share of
    /// the budgets. Dropping the future gives up the place in line.
    pub(crate) async fn admit(&self, tokens: u64) {
        if self.requests.is_none() && self.tokens.is_none() && self.shared.is_none() {
            self.wait_for_pause().await;
            return;
        }
        let tokens = tokens.max(1);
        let mut ledger = self.turnstile.lock().await;
        self.wait_for_pause().await;
        // Smoothness: about a second's share at once, then the sustained rate.
        if let Some(requests) = &self.requests {
            requests.take(1).await;
        }
        if let Some(bucket) = &self.tokens {
            bucket.take(tokens).await;
        }
        // The guarantee: the request counts from the moment it is let through (after any
        // pause that began meanwhile), and only if the last minute has room for it.
        loop {
            self.wait_for_pause().await;
            let now = Instant::now();
            let wait = ledger
                .requests
                .wait_for_room(1, now)
                .max(ledger.tokens.wait_for_room(tokens, now));
            if wait.is_zero() {
                // Then the books of every process together; unreachable, this process
                // keeps to its share of the limits.
                if let Some(shared) = &self.shared {
                    let wait = match shared.admit(tokens).await {
                        Some(wait) => wait,
                        None => {
                            let processes = shared.pacer.processes(&shared.model);
                            ledger.share_wait(shared.limit, processes, tokens, Instant::now())
                        }
                    };
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                        continue;
                    }
                }
                let now = Instant::now();
                ledger.requests.record(1, now);
                ledger.tokens.record(tokens, now);
                ledger.share_requests.record(1, now);
                ledger.share_tokens.record(tokens, now);
                return;
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Holds every request of this model for `wait` from now (extending, never shortening,
    /// a pause already in force).
    pub(crate) fn pause(&self, wait: Duration) {
        if let Some(shared) = &self.shared {
            let pacer = Arc::clone(&shared.pacer);
            let model = shared.model.clone();
            tokio::spawn(async move { pacer.pause(&model, wait).await });
        }
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
    shared: Option<Arc<dyn SharedPacer>>,
    /// The longest server pause honoured (`OpenAiConfig::with_max_retry_after`).
    max_pause: Duration,
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
            shared: config.shared_pacer.clone(),
            max_pause: config.max_retry_after,
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
        Arc::clone(gates.entry(model.to_owned()).or_insert_with(|| {
            let shared = self
                .shared
                .as_ref()
                .map(|pacer| Shared::new(Arc::clone(pacer), model, limit, self.max_pause));
            Arc::new(Gate::with_shared(limit, shared))
        }))
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

    /// The largest total cost admitted within any window of length `window`.
    fn max_in_window(admitted: &[(Instant, u64)], window: Duration) -> u64 {
        let mut best = 0;
        for (i, (start, _)) in admitted.iter().enumerate() {
            let total: u64 = admitted[i..]
                .iter()
                .take_while(|(at, _)| at.duration_since(*start) < window)
                .map(|(_, cost)| cost)
                .sum();
            best = best.max(total);
        }
        best
    }

    /// Admits requests of the given token costs one after another, as a stream of callers
    /// does through the turnstile, and returns when each was let through (on tokio's clock).
    async fn admit_all(gate: &Gate, costs: impl IntoIterator<Item = u64>) -> Vec<(Instant, u64)> {
        let mut admitted = Vec::new();
        for cost in costs {
            gate.admit(cost).await;
            admitted.push((Instant::now(), cost));
        }
        admitted
    }

    fn requests_of(admitted: &[(Instant, u64)]) -> Vec<(Instant, u64)> {
        admitted.iter().map(|(at, _)| (*at, 1)).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_runs_on_tokios_clock() {
        // The waits sleep on tokio's clock, so the buckets must read the same clock: with
        // time paused (as in applications' tests), three calls at 60 a minute take two
        // seconds of tokio time, not however long the real clock takes to catch up.
        let gate = Gate::new(RateLimit::new(60, 0));
        let start = Instant::now();
        let admitted = admit_all(&gate, [1, 1, 1]).await;
        let elapsed = admitted[2].0.duration_since(start);
        assert!(
            elapsed >= Duration::from_millis(1_990) && elapsed <= Duration::from_millis(2_100),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn token_costs_larger_than_the_burst_never_overfill_a_minute() {
        // 6,000 a minute: a burst of 100; every request costs 308.
        let gate = Gate::new(RateLimit::new(0, 6_000));
        let admitted = admit_all(&gate, std::iter::repeat_n(308, 60)).await;
        let most = max_in_window(&admitted, MINUTE);
        assert!(most <= 6_000, "{most} tokens within a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_and_tokens_together_never_overfill_a_minute() {
        // The first call waits ~10 s for its tokens; its request must not count as sent
        // before it really is, or the calls after it overfill the request budget.
        let gate = Gate::new(RateLimit::new(60, 6_000));
        let costs = std::iter::once(1_100).chain(std::iter::repeat_n(1, 100));
        let admitted = admit_all(&gate, costs).await;
        let most = max_in_window(&requests_of(&admitted), MINUTE);
        assert!(most <= 60, "{most} requests within a minute");
        let most = max_in_window(&admitted, MINUTE);
        assert!(most <= 6_000, "{most} tokens within a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_never_lets_a_minute_overfill() {
        // A server's pause begins while a caller waits for its cell; the caller goes out
        // when the pause ends, and the budget refilled meanwhile must not stack on it.
        let gate = Arc::new(Gate::new(RateLimit::new(60, 0)));
        let pauser = {
            let gate = Arc::clone(&gate);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(1_500)).await;
                gate.pause(Duration::from_secs(10));
            })
        };
        let admitted = admit_all(&gate, std::iter::repeat_n(1, 100)).await;
        assert!(pauser.await.is_ok());
        let most = max_in_window(&admitted, MINUTE);
        assert!(most <= 60, "{most} requests within a minute");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_larger_than_the_whole_budget_goes_alone() {
        // 600 a minute; the middle request alone is estimated at 1,000.
        let gate = Gate::new(RateLimit::new(0, 600));
        let admitted = admit_all(&gate, [100, 1_000, 100]).await;
        let (first, big, last) = (admitted[0].0, admitted[1].0, admitted[2].0);
        assert!(big.duration_since(first) >= MINUTE, "{admitted:?}");
        assert!(last.duration_since(big) >= MINUTE, "{admitted:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_books_never_slow_the_sustained_rate() {
        // 1,200 a minute: a burst of 20, then 1,181 a minute. 2,400 calls take just over two
        // minutes of (paused) time; the minute's books must not hold them up further.
        let gate = Gate::new(RateLimit::new(1_200, 0));
        let start = Instant::now();
        let admitted = admit_all(&gate, std::iter::repeat_n(1, 2_400)).await;
        let elapsed = admitted[2_399].0.duration_since(start);
        let ideal = Duration::from_secs_f64(2_380.0 * 60.0 / 1_181.0);
        assert!(
            elapsed <= ideal + Duration::from_secs(1),
            "{elapsed:?} for {ideal:?}"
        );
        assert!(max_in_window(&requests_of(&admitted), MINUTE) <= 1_200);
    }

    #[test]
    fn the_books_stay_small() {
        let mut window = Window::new(u32::MAX);
        let start = Instant::now();
        for i in 0..10_000u64 {
            let now = start + Duration::from_micros(10 * i);
            assert_eq!(window.wait_for_room(1, now), Duration::ZERO);
            window.record(1, now);
        }
        // 100 ms of sends: an entry per millisecond (not one per send, nor one for all of
        // them), and nothing lost from the total.
        assert!(
            (99..=101).contains(&window.sent.len()),
            "{}",
            window.sent.len()
        );
        assert_eq!(window.total, 10_000);
        // A minute after the last send, all of them have left the window.
        let later = start + Duration::from_millis(100) + MINUTE;
        assert_eq!(
            window.wait_for_room(u64::from(u32::MAX), later),
            Duration::ZERO
        );
        assert_eq!((window.total, window.sent.len()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn mixed_costs_idle_gaps_and_concurrent_callers_never_overfill_a_minute() {
        let gate = Arc::new(Gate::new(RateLimit::new(120, 20_000)));
        let admitted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut callers = Vec::new();
        for caller in 0..4u64 {
            let gate = Arc::clone(&gate);
            let admitted = Arc::clone(&admitted);
            callers.push(tokio::spawn(async move {
                // A small deterministic generator: costs from 1 to ~2,000, idle gaps of up
                // to 20 s now and then.
                let mut state = caller.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                for _ in 0..60 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    if state % 7 == 0 {
                        tokio::time::sleep(Duration::from_millis(state % 20_000)).await;
                    }
                    let cost = 1 + state % 2_000;
                    gate.admit(cost).await;
                    admitted
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push((Instant::now(), cost));
                }
            }));
        }
        for caller in callers {
            assert!(caller.await.is_ok());
        }
        let mut admitted = admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        admitted.sort_by_key(|(at, _)| *at);
        assert_eq!(admitted.len(), 240);
        let most = max_in_window(&requests_of(&admitted), MINUTE);
        assert!(most <= 120, "{most} requests within a minute");
        let most = max_in_window(&admitted, MINUTE);
        assert!(most <= 20_000, "{most} tokens within a minute");
    }

    /// A shared pacer that asks for one wait, then admits; or is unreachable.
    #[derive(Debug, Default)]
    struct FakePacer {
        unreachable: bool,
        /// Answers every admission with a wait far in the future (damaged state).
        far_future: bool,
        /// The processes that shared the books (0: the default, 1).
        processes: usize,
        resets: std::sync::atomic::AtomicUsize,
        asked: std::sync::atomic::AtomicUsize,
        paused: Mutex<Vec<(String, Duration)>>,
    }

    #[async_trait::async_trait]
    impl SharedPacer for FakePacer {
        async fn admit(&self, _model: &str, _limit: RateLimit, _tokens: u64) -> Option<Duration> {
            let asked = self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if self.far_future {
                return Some(Duration::from_micros(99_999_999_999_999_999));
            }
            match (self.unreachable, asked) {
                (true, _) => None,
                (false, 0) => Some(Duration::from_millis(500)),
                (false, _) => Some(Duration::ZERO),
            }
        }

        fn processes(&self, _model: &str) -> usize {
            self.processes.max(1)
        }

        async fn reset(&self, _model: &str) {
            self.resets
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }

        async fn pause(&self, model: &str, wait: Duration) {
            self.paused
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((model.to_owned(), wait));
        }
    }

    fn shared_gate(pacer: &Arc<FakePacer>, limit: RateLimit) -> Gate {
        Gate::with_shared(
            limit,
            Some(Shared::new(
                Arc::clone(pacer) as Arc<dyn SharedPacer>,
                "m",
                limit,
                Duration::from_secs(60),
            )),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn the_shared_books_are_asked_after_the_local_ones_and_their_wait_is_honoured() {
        let pacer = Arc::new(FakePacer::default());
        let gate = shared_gate(&pacer, RateLimit::new(600, 0));
        let start = Instant::now();
        gate.admit(1).await;
        assert_eq!(start.elapsed(), Duration::from_millis(500));
        assert_eq!(pacer.asked.load(std::sync::atomic::Ordering::SeqCst), 2);
        // With no local limit, the shared books (and their pauses) are still asked.
        let gate = shared_gate(&pacer, RateLimit::default());
        gate.admit(1).await;
        assert_eq!(pacer.asked.load(std::sync::atomic::Ordering::SeqCst), 3);
        gate.pause(Duration::from_secs(3));
        tokio::task::yield_now().await;
        let paused = pacer
            .paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        assert_eq!(paused, [("m".to_owned(), Duration::from_secs(3))]);
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_shared_books_leave_the_local_limiter_in_charge() {
        let pacer = Arc::new(FakePacer {
            unreachable: true,
            ..FakePacer::default()
        });
        let gate = shared_gate(&pacer, RateLimit::new(60, 0));
        let admitted = admit_all(&gate, std::iter::repeat_n(1, 3)).await;
        // Still paced locally: one a second at 60 a minute.
        let elapsed = admitted[2].0.duration_since(admitted[0].0);
        assert!(elapsed >= Duration::from_millis(1_990), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_shared_wait_beyond_what_the_limits_require_is_ignored_and_reset() {
        let pacer = Arc::new(FakePacer {
            far_future: true,
            ..FakePacer::default()
        });
        let gate = shared_gate(&pacer, RateLimit::new(60, 0));
        let start = Instant::now();
        let admitted = admit_all(&gate, std::iter::repeat_n(1, 3)).await;
        // Paced locally as if the shared books were unreachable: one a second at 60 a minute
        // (the burst of one goes at once), never the 3,000-year wait.
        assert_eq!(admitted.len(), 3);
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(pacer.resets.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_shared_books_hold_each_process_to_its_share() {
        // Three processes shared the books; Redis is gone: at 180 a minute together, this
        // one keeps to 60 a minute (its burst of 3 at once, then the minute's books).
        let pacer = Arc::new(FakePacer {
            unreachable: true,
            processes: 3,
            ..FakePacer::default()
        });
        let gate = shared_gate(&pacer, RateLimit::new(180, 0));
        let admitted = admit_all(&gate, std::iter::repeat_n(1, 120)).await;
        let most = max_in_window(&requests_of(&admitted), MINUTE);
        assert_eq!(most, 60, "{most} requests within a minute");
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
