//! Captured output, kept head and tail so that a runaway `print` loop costs bounded memory.

/// Collects printed text; keeps the first and last characters and counts the rest.
#[derive(Debug)]
pub(crate) struct OutputBuffer {
    head_cap: usize,
    tail_cap: usize,
    head: String,
    head_chars: usize,
    tail: String,
    tail_chars: usize,
    total_chars: usize,
}

impl OutputBuffer {
    /// A buffer that shows at most `max_chars` characters.
    pub(crate) fn new(max_chars: usize) -> Self {
        let head_cap = max_chars / 2;
        Self {
            head_cap,
            tail_cap: max_chars - head_cap,
            head: String::new(),
            head_chars: 0,
            tail: String::new(),
            tail_chars: 0,
            total_chars: 0,
        }
    }

    /// Characters written so far.
    #[cfg(test)]
    pub(crate) fn total_chars(&self) -> usize {
        self.total_chars
    }

    /// Appends `text`.
    pub(crate) fn push(&mut self, mut text: &str) {
        let chars = text.chars().count();
        self.total_chars += chars;
        let mut chars_left = chars;
        if self.head_chars < self.head_cap {
            let room = self.head_cap - self.head_chars;
            let cut = byte_of_char(text, room);
            let taken = room.min(chars_left);
            self.head.push_str(&text[..cut]);
            self.head_chars += taken;
            chars_left -= taken;
            text = &text[cut..];
        }
        if chars_left == 0 {
            return;
        }
        self.tail.push_str(text);
        self.tail_chars += chars_left;
        // Keep at most twice the tail's capacity, so trimming is amortized O(1) per char.
        if self.tail_chars > 2 * self.tail_cap.max(1024) {
            let drop = self.tail_chars - self.tail_cap;
            let cut = byte_of_char(&self.tail, drop);
            self.tail.drain(..cut);
            self.tail_chars -= drop;
        }
    }

    /// Appends `text` and a line break.
    pub(crate) fn push_line(&mut self, text: &str) {
        self.push(text);
        self.push("\n");
    }

    /// The text shown to the model: everything if it fits, else head and tail with the true
    /// length stated.
    pub(crate) fn render(&self) -> String {
        let shown = self.head_cap + self.tail_cap;
        if self.total_chars <= shown {
            let mut all = String::with_capacity(self.head.len() + self.tail.len());
            all.push_str(&self.head);
            all.push_str(&self.tail);
            return all;
        }
        let tail_start = byte_of_char(&self.tail, self.tail_chars - self.tail_cap);
        let tail = &self.tail[tail_start..];
        let omitted = self.total_chars - shown;
        format!(
            "{}\n[... output truncated: {omitted} of {} characters omitted from the middle; print \
             less, or print slices/summaries ...]\n{tail}",
            self.head, self.total_chars
        )
    }
}

/// The byte offset of character `n` of `text` (its length if it has fewer characters).
pub(crate) fn byte_of_char(text: &str, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    text.char_indices().nth(n).map_or(text.len(), |(i, _)| i)
}

/// `text` cut to at most `max_chars` characters, head and tail kept, true length stated.
pub(crate) fn truncate_middle(text: &str, max_chars: usize) -> String {
    let mut buffer = OutputBuffer::new(max_chars);
    buffer.push(text);
    buffer.render()
}

/// The first `max_chars` characters of `text`.
pub(crate) fn prefix(text: &str, max_chars: usize) -> &str {
    &text[..byte_of_char(text, max_chars)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_that_fits() {
        let mut out = OutputBuffer::new(10);
        out.push("héllo");
        out.push("wörld");
        assert_eq!(out.render(), "héllowörld");
    }

    #[test]
    fn keeps_head_and_tail_and_states_the_length() {
        let mut out = OutputBuffer::new(24);
        for i in 0..10_000 {
            out.push_line(&format!("line {i}"));
        }
        let shown = out.render();
        assert!(shown.starts_with("line 0\nline "), "{shown}");
        assert!(shown.ends_with("8\nline 9999\n"), "{shown}");
        assert!(shown.contains(&format!("of {} characters", out.total_chars())));
        // Memory stays bounded however much is printed.
        assert!(out.tail.len() < 4096);
    }

    #[test]
    fn never_splits_a_character() {
        let text = "ééééééééééééééééééé";
        let shown = truncate_middle(text, 5);
        assert!(shown.starts_with("éé\n"));
        assert!(shown.ends_with("ééé"));
        assert_eq!(prefix("héllo", 2), "hé");
        assert_eq!(prefix("hé", 10), "hé");
    }
}
