//! Deterministic generated contexts.

/// A small, fast, deterministic pseudo-random generator (xorshift64*), so fixtures are the
/// same on every machine without a dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (0 is replaced by a fixed non-zero seed).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next_u64() % bound.max(1)
    }
}

const WORDS: &[&str] = &[
    "the", "river", "quiet", "ledger", "amber", "signal", "harbor", "copper", "window", "forest",
    "engine", "paper", "silver", "market", "garden", "winter", "orbit", "canvas", "thunder",
    "meadow", "lantern", "marble", "compass", "velvet", "anchor", "prairie", "cobalt", "summit",
];

/// A line of filler text of roughly `len` bytes (never containing digits).
pub fn filler_line(rng: &mut Rng, len: usize) -> String {
    let mut line = String::with_capacity(len + 12);
    while line.len() < len {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    line
}

/// A haystack of `lines` lines of filler (about 80 bytes each, newline-separated) with
/// `needle` placed as the whole of line `needle_line` (when it is in range).
pub fn haystack(lines: usize, needle_line: usize, needle: &str, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut text = String::with_capacity(lines * 82);
    for i in 0..lines {
        if i == needle_line {
            text.push_str(needle);
        } else {
            text.push_str(&filler_line(&mut rng, 80));
        }
        text.push('\n');
    }
    text
}

/// A context of about `bytes` bytes of filler lines, deterministic for a given seed.
pub fn text_of_size(bytes: usize, seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let mut text = String::with_capacity(bytes + 100);
    while text.len() < bytes {
        text.push_str(&filler_line(&mut rng, 80));
        text.push('\n');
    }
    text.truncate(bytes);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haystack_is_deterministic_and_holds_the_needle() {
        let a = haystack(1000, 777, "the secret number is 4217", 7);
        let b = haystack(1000, 777, "the secret number is 4217", 7);
        assert_eq!(a, b);
        assert_eq!(a.lines().nth(777), Some("the secret number is 4217"));
        assert_eq!(a.matches("4217").count(), 1);
        assert_eq!(text_of_size(10_000, 1).len(), 10_000);
    }
}
