//! How counts are written in what the models and the user read.

/// `n` things, with the plural when `n` is not 1: `1 item`, `2 items`, `1,000 keys`.
pub(crate) fn count_of(n: usize, noun: &str) -> String {
    match (n, noun) {
        (1, _) => format!("1 {noun}"),
        (_, "entry") => format!("{} entries", thousands(n)),
        _ => format!("{} {noun}s", thousands(n)),
    }
}

/// `1234567` as `1,234,567`.
pub(crate) fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}
