//! Numbers, durations and dollars for people: the formatting the summary, progress, the
//! trace's warning and the demo share.

use std::time::Duration;

/// Dollars for people: `$0.0042`, `$12.35`.
pub(crate) fn dollars(usd: f64) -> String {
    if usd == 0.0 {
        "$0".to_owned()
    } else if usd < 1.0 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

/// `n` things: `1 sub-call`, `2 sub-calls`, `1,000 items` (plural by adding an `s`).
pub(crate) fn count(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{} {what}s", thousands(n))
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A duration for people: `850 ms`, `4.21 s`, `3 min 05 s`.
pub(crate) fn human_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", duration.as_secs_f64())
    } else {
        let secs = duration.as_secs();
        format!("{} min {:02} s", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_durations_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(count(1, "sub-call"), "1 sub-call");
        assert_eq!(count(0, "item"), "0 items");
        assert_eq!(count(1200, "item"), "1,200 items");
        assert_eq!(human_duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(human_duration(Duration::from_millis(4210)), "4.21 s");
        assert_eq!(human_duration(Duration::from_secs(185)), "3 min 05 s");
        assert_eq!(dollars(0.0), "$0");
        assert_eq!(dollars(0.00421), "$0.0042");
        assert_eq!(dollars(12.345), "$12.35");
    }
}
