//! When to retry and how long to wait: the provider's hints (`retry-after-ms`,
//! `Retry-After`, `x-should-retry`) first, exponential backoff with jitter otherwise.

use std::time::{Duration, SystemTime};

use backoff::ExponentialBackoff;
use backoff::backoff::Backoff;
use reqwest::header::HeaderMap;
use rlm_core::LlmError;

/// How far a backoff wait may vary either way, so that concurrent callers spread out.
const JITTER: f64 = 0.25;

/// The wait a response asks for: `retry-after-ms` (milliseconds), else `Retry-After` as
/// seconds (fractions allowed) or as an HTTP date. A date in the past means no wait;
/// unparsable or negative values are ignored.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = header("retry-after-ms").and_then(|v| seconds(v, 1e-3)) {
        return Some(ms);
    }
    let value = header("retry-after")?;
    seconds(value, 1.0).or_else(|| http_date_from_now(value, SystemTime::now()))
}

/// `value` (a non-negative decimal number) times `unit` seconds.
fn seconds(value: &str, unit: f64) -> Option<Duration> {
    let number: f64 = value.trim().parse().ok()?;
    let secs = number * unit;
    // Negative, NaN and infinite values mean nothing; a finite value too large for a
    // `Duration` is as good as forever.
    (secs.is_finite() && secs >= 0.0)
        .then(|| Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

/// The time from `now` until the HTTP date `value` (zero if it has passed).
fn http_date_from_now(value: &str, now: SystemTime) -> Option<Duration> {
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The `x-should-retry` header: the server's own verdict, when it gives one.
pub(crate) fn should_retry_header(headers: &HeaderMap) -> Option<bool> {
    match headers.get("x-should-retry")?.to_str().ok()?.trim() {
        v if v.eq_ignore_ascii_case("true") => Some(true),
        v if v.eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    }
}

/// Failures no retry can fix, whatever the server's headers say: bad requests (400, 404,
/// 422), credentials (401, 403), an exhausted quota, a reply we cannot read, cancellation.
fn never_retry(error: &LlmError) -> bool {
    match error {
        LlmError::QuotaExhausted { .. }
        | LlmError::Auth { .. }
        | LlmError::InvalidResponse { .. }
        | LlmError::Cancelled => true,
        LlmError::BadRequest { status, .. } => matches!(status, 400 | 404 | 422),
        _ => false,
    }
}

/// Whether a failed attempt is worth another, before counting retries or hints.
///
/// `x-should-retry: false` vetoes any retry; `x-should-retry: true` allows one for failures
/// not in the never-retry list (for example an unusual 4xx); without the header, rate limits,
/// 5xx, 408, 409, timeouts and connection failures are retried.
pub(crate) fn is_worth_retrying(error: &LlmError, should_retry: Option<bool>) -> bool {
    if never_retry(error) {
        return false;
    }
    should_retry.unwrap_or_else(|| error.is_retryable())
}

/// The retry policy of one request: counts retries and hands out waits.
pub(crate) struct RetryPolicy {
    remaining: u32,
    max_retry_after: Duration,
    schedule: ExponentialBackoff,
}

/// What to do after a failed attempt.
#[derive(Debug, PartialEq)]
pub(crate) enum Decision {
    /// Wait this long, then try again.
    RetryAfter(Duration),
    /// Return the error.
    GiveUp,
}

impl RetryPolicy {
    pub(crate) fn new(
        max_retries: u32,
        initial_backoff: Duration,
        max_backoff: Duration,
        max_retry_after: Duration,
    ) -> Self {
        let schedule = ExponentialBackoff {
            current_interval: initial_backoff,
            initial_interval: initial_backoff,
            randomization_factor: JITTER,
            multiplier: 2.0,
            max_interval: max_backoff,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        Self {
            remaining: max_retries,
            max_retry_after,
            schedule,
        }
    }

    /// Decides after a failed attempt: gives up when the failure is not worth retrying, the
    /// retries are spent, or the server asks for a wait longer than the cap; otherwise
    /// waits as the server asked, or as the backoff says (also when the server asks for no
    /// wait at all).
    pub(crate) fn decide(&mut self, error: &LlmError, should_retry: Option<bool>) -> Decision {
        if self.remaining == 0 || !is_worth_retrying(error, should_retry) {
            return Decision::GiveUp;
        }
        let wait = match error.retry_after() {
            Some(hint) if hint > self.max_retry_after => return Decision::GiveUp,
            // A zero hint (`Retry-After: 0`, a date already past) would fire every retry at
            // once: back off instead.
            Some(hint) if !hint.is_zero() => hint,
            // Never `None`: the schedule has no elapsed-time limit.
            _ => self
                .schedule
                .next_backoff()
                .unwrap_or(self.schedule.max_interval),
        };
        self.remaining -= 1;
        Decision::RetryAfter(wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(value) {
                map.insert(*name, value);
            }
        }
        map
    }

    #[test]
    fn retry_after_in_every_form() {
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")])),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", " 1.5 ")])),
            Some(Duration::from_millis(1500))
        );
        // retry-after-ms wins over retry-after.
        assert_eq!(
            retry_after(&headers(&[("retry-after", "9"), ("retry-after-ms", "250")])),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after-ms", "12.5")])),
            Some(Duration::from_micros(12_500))
        );
        assert_eq!(
            retry_after(&headers(&[("retry-after", "1e30")])),
            Some(Duration::MAX)
        );
        for bad in ["-1", "soon", "NaN", "inf", ""] {
            assert_eq!(
                retry_after(&headers(&[("retry-after", bad)])),
                None,
                "{bad}"
            );
        }
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }

    #[test]
    fn retry_after_as_an_http_date() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT")
            .unwrap_or(SystemTime::UNIX_EPOCH);
        assert_eq!(
            http_date_from_now("Sun, 06 Nov 1994 08:49:40 GMT", now),
            Some(Duration::from_secs(3))
        );
        assert_eq!(
            http_date_from_now("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(http_date_from_now("yesterday", now), None);
        // Through the header: a date 30 s ahead is about 30 s (whole seconds, so 29..=30).
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let wait = retry_after(&headers(&[("retry-after", &later)])).unwrap_or_default();
        assert!(
            wait > Duration::from_secs(28) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    #[test]
    fn should_retry_header_values() {
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "true")])),
            Some(true)
        );
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "FALSE")])),
            Some(false)
        );
        assert_eq!(
            should_retry_header(&headers(&[("x-should-retry", "maybe")])),
            None
        );
        assert_eq!(should_retry_header(&HeaderMap::new()), None);
    }

    fn status(status: u16, code: Option<&str>, hint: Option<Duration>) -> LlmError {
        LlmError::from_http_status(status, "m", code, code, hint)
    }

    #[test]
    fn what_is_worth_retrying() {
        for s in [429, 500, 502, 503, 504, 408, 409] {
            assert!(is_worth_retrying(&status(s, None, None), None), "{s}");
            assert!(
                !is_worth_retrying(&status(s, None, None), Some(false)),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!is_worth_retrying(&status(s, None, None), None), "{s}");
            assert!(
                !is_worth_retrying(&status(s, None, None), Some(true)),
                "{s}"
            );
        }
        let quota = status(429, Some("insufficient_quota"), None);
        assert!(!is_worth_retrying(&quota, Some(true)));
        // An unusual 4xx is retried only when the server says so.
        assert!(!is_worth_retrying(&status(425, None, None), None));
        assert!(is_worth_retrying(&status(425, None, None), Some(true)));
        let timeout = LlmError::Timeout {
            message: "t".into(),
        };
        assert!(is_worth_retrying(&timeout, None));
        assert!(!is_worth_retrying(&LlmError::invalid_response("x"), None));
    }

    #[test]
    fn policy_counts_retries_and_honours_hints() {
        let ms = Duration::from_millis;
        let mut policy = RetryPolicy::new(3, ms(100), ms(400), Duration::from_secs(60));
        let server = status(500, None, None);
        let mut waits = Vec::new();
        while let Decision::RetryAfter(wait) = policy.decide(&server, None) {
            waits.push(wait);
        }
        assert_eq!(waits.len(), 3);
        // 100, 200, 400 ms, each within ±25% (plus the crate's rounding of a nanosecond).
        for (wait, base) in waits.iter().zip([100u64, 200, 400]) {
            assert!(
                *wait >= ms(base * 3 / 4) && *wait <= ms(base * 5 / 4 + 1),
                "{waits:?}"
            );
        }

        let mut policy = RetryPolicy::new(3, ms(100), ms(400), Duration::from_secs(60));
        let hinted = status(429, None, Some(Duration::from_secs(2)));
        assert_eq!(
            policy.decide(&hinted, None),
            Decision::RetryAfter(Duration::from_secs(2))
        );
        let absurd = status(429, None, Some(Duration::from_secs(3600)));
        assert_eq!(policy.decide(&absurd, None), Decision::GiveUp);
        assert_eq!(
            policy.decide(&status(400, None, None), None),
            Decision::GiveUp
        );

        let mut none = RetryPolicy::new(0, ms(1), ms(1), ms(1));
        assert_eq!(none.decide(&server, None), Decision::GiveUp);
    }

    #[test]
    fn a_zero_hint_backs_off_instead_of_retrying_at_once() {
        // `Retry-After: 0` (or a date already past) is no reason to fire every retry at an
        // overloaded server in the same instant: the backoff applies.
        let ms = Duration::from_millis;
        let mut policy = RetryPolicy::new(3, ms(100), ms(400), Duration::from_secs(60));
        let now = status(429, None, Some(Duration::ZERO));
        let mut waits = Vec::new();
        while let Decision::RetryAfter(wait) = policy.decide(&now, None) {
            waits.push(wait);
        }
        assert_eq!(waits.len(), 3);
        assert!(waits.iter().all(|wait| *wait >= ms(75)), "{waits:?}");
    }
}
