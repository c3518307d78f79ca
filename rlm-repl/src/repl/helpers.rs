//! Native helpers: short, linear-time code over huge strings, and the Python names models
//! reach for.

use std::cell::Cell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use regex::{Regex, RegexBuilder};
use rhai::{
    Array, Blob, Dynamic, EvalAltResult, FuncRegistration, INT, ImmutableString, Map, Module,
    RhaiNativeFunc,
};

use super::values::{RhaiResult, compare, script_error, to_text};
use crate::SandboxLimits;
use crate::sync::lock;

/// The size limits of a run's sandbox as the helpers check them (0: no limit).
///
/// The helpers are registered once for the process (see [`register`]), not once per run: a
/// helper checks against the limits of the block running on its thread, which the REPL sets
/// around each block ([`in_block`]); the limits given at registration only stand in where no
/// block runs (a helper called directly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockSizes {
    string: usize,
    array: usize,
    map: usize,
    memory: usize,
}

impl BlockSizes {
    fn of(limits: &SandboxLimits) -> Self {
        Self {
            string: limits.max_string_size,
            array: limits.max_array_size,
            map: limits.max_map_size,
            memory: limits.max_memory,
        }
    }

    /// The limits of the block running on this thread, or these.
    fn in_force(self) -> Self {
        BLOCK.with(Cell::get).unwrap_or(self)
    }
}

thread_local! {
    /// The limits of the block running on this thread (see [`in_block`]).
    static BLOCK: Cell<Option<BlockSizes>> = const { Cell::new(None) };
}

/// While it lives, the helpers called on this thread check against `limits` (the running
/// block's); dropped, what was in force before is again.
pub(crate) struct InBlock(Option<BlockSizes>);

/// The helpers called on this thread check against `limits` until the guard is dropped.
pub(crate) fn in_block(limits: &SandboxLimits) -> InBlock {
    InBlock(BLOCK.with(|block| block.replace(Some(BlockSizes::of(limits)))))
}

impl Drop for InBlock {
    fn drop(&mut self) {
        BLOCK.with(|block| block.set(self.0));
    }
}

/// One limit of the running block, read when a helper is called (see [`BlockSizes`]).
#[derive(Clone, Copy)]
struct Live {
    given: BlockSizes,
    pick: fn(BlockSizes) -> usize,
}

impl Live {
    fn get(self) -> usize {
        (self.pick)(self.given.in_force())
    }
}

/// `Engine::register_fn`, for a module of functions shared by every engine.
pub(crate) trait RegisterFn {
    fn register_fn<
        A: 'static,
        const N: usize,
        const X: bool,
        R: Clone + Send + Sync + 'static,
        const F: bool,
    >(
        &mut self,
        name: &str,
        func: impl RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
    ) -> &mut Self;
}

impl RegisterFn for Module {
    fn register_fn<
        A: 'static,
        const N: usize,
        const X: bool,
        R: Clone + Send + Sync + 'static,
        const F: bool,
    >(
        &mut self,
        name: &str,
        func: impl RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
    ) -> &mut Self {
        FuncRegistration::new(name)
            .in_global_namespace()
            .set_into_module(self, func);
        self
    }
}

/// `FuncRegistration::register_into_engine`, for a module of functions shared by every engine.
pub(crate) trait RegisterInto {
    fn register_into<
        A: 'static,
        const N: usize,
        const X: bool,
        R: Clone + Send + Sync + 'static,
        const F: bool,
    >(
        self,
        module: &mut Module,
        func: impl RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
    );
}

impl RegisterInto for FuncRegistration {
    fn register_into<
        A: 'static,
        const N: usize,
        const X: bool,
        R: Clone + Send + Sync + 'static,
        const F: bool,
    >(
        self,
        module: &mut Module,
        func: impl RhaiNativeFunc<A, N, X, R, F> + Send + Sync + 'static,
    ) {
        self.in_global_namespace().set_into_module(module, func);
    }
}

/// How large a helper's result may grow: the sandbox's limits, counted as Rhai counts them
/// (array items, map entries and string bytes anywhere inside the result; 0: no limit).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResultLimits {
    items: usize,
    entries: usize,
    bytes: usize,
    memory: usize,
}

impl ResultLimits {
    pub(crate) fn new(limits: &SandboxLimits) -> Self {
        Self::of(BlockSizes::of(limits))
    }

    fn of(sizes: BlockSizes) -> Self {
        let max = |limit: usize| if limit == 0 { usize::MAX } else { limit };
        Self {
            items: max(sizes.array),
            entries: max(sizes.map),
            bytes: max(sizes.string),
            memory: max(sizes.memory),
        }
    }

    fn tally(self, function: &'static str) -> Tally {
        // The running block's limits, when a block runs (see `BlockSizes`).
        let limits = BLOCK.with(Cell::get).map_or(self, Self::of);
        Tally {
            limits,
            function,
            items: 0,
            entries: 0,
            bytes: 0,
            memory: 0,
        }
    }
}

/// The size of a result being built, checked before each piece is added. Rhai checks a value
/// only once it exists: for `chunk(text, 1)` on a large text, or `join` with a long separator,
/// that is after gigabytes were allocated.
#[derive(Clone, Copy)]
struct Tally {
    limits: ResultLimits,
    function: &'static str,
    items: usize,
    entries: usize,
    bytes: usize,
    /// An estimate of the heap bytes of the result (slots and string headers included).
    memory: usize,
}

impl Tally {
    /// Counts `items` more array items, `entries` more map entries and `bytes` more string
    /// bytes; an error if the result would exceed a limit.
    fn add(&mut self, items: usize, entries: usize, bytes: usize) -> RhaiResult<()> {
        self.items = self.items.saturating_add(items);
        self.entries = self.entries.saturating_add(entries);
        self.bytes = self.bytes.saturating_add(bytes);
        self.memory = self
            .memory
            .saturating_add(bytes)
            .saturating_add(items.saturating_mul(48))
            .saturating_add(entries.saturating_mul(96));
        let what = if self.items > self.limits.items {
            "Size of array"
        } else if self.entries > self.limits.entries {
            "Size of object map"
        } else if self.bytes > self.limits.bytes {
            "Length of string"
        } else if self.memory > self.limits.memory {
            "Memory (--max-memory) of the result"
        } else {
            return Ok(());
        };
        Err(Box::new(EvalAltResult::ErrorDataTooLarge(
            format!("{what} from {}", self.function),
            rhai::Position::NONE,
        )))
    }

    /// Room for the first items of an array (never more than the limit allows).
    fn capacity(&self, estimate: usize) -> usize {
        estimate.min(self.limits.items).min(1 << 16)
    }
}

/// Compiled regexes by pattern, so a pattern used in a loop compiles once.
#[derive(Default)]
pub(crate) struct RegexCache {
    compiled: Mutex<HashMap<String, Regex>>,
}

impl RegexCache {
    const CAPACITY: usize = 128;

    fn get(&self, function: &str, pattern: &str) -> RhaiResult<Regex> {
        if let Some(regex) = lock(&self.compiled).get(pattern) {
            return Ok(regex.clone());
        }
        // CRLF mode: in multi-line mode `$` matches before "\r\n" as well as before "\n", and
        // `^` after it, as `lines()` splits lines.
        let regex = RegexBuilder::new(pattern)
            .crlf(true)
            .size_limit(32 << 20)
            .build()
            .map_err(|e| script_error(format!("{function}: invalid regex {pattern:?}: {e}")))?;
        let mut compiled = lock(&self.compiled);
        if compiled.len() >= Self::CAPACITY {
            compiled.clear();
        }
        compiled.insert(pattern.to_owned(), regex.clone());
        Ok(regex)
    }
}

/// Character counts of the context's large strings, computed once.
///
/// Rhai's own `len` counts the characters of a string on every call: 15 ms for a 100 MB
/// context, paid again by every `context.len()` in a loop condition. The context's strings
/// live as long as the REPL (the scope holds them as a constant and they are immutable), so
/// their address and length identify them; other strings are counted as before.
#[derive(Default)]
pub(crate) struct ContextLengths {
    /// Address and byte length of each large context string.
    known: HashMap<usize, usize>,
    counted: Mutex<HashMap<usize, INT>>,
}

impl ContextLengths {
    /// Strings shorter than this are counted every time: it is cheap.
    const MIN_BYTES: usize = 64 << 10;

    /// The large strings inside `context` (a string, or strings in arrays and maps).
    pub(crate) fn of(context: &Dynamic) -> Self {
        fn walk(value: &Dynamic, known: &mut HashMap<usize, usize>) {
            if let Ok(s) = value.as_immutable_string_ref() {
                if s.len() >= ContextLengths::MIN_BYTES {
                    known.insert(s.as_ptr() as usize, s.len());
                }
            } else if let Ok(items) = value.as_array_ref() {
                items.iter().for_each(|item| walk(item, known));
            } else if let Ok(map) = value.as_map_ref() {
                map.values().for_each(|item| walk(item, known));
            }
        }
        let mut known = HashMap::new();
        walk(context, &mut known);
        Self {
            known,
            counted: Mutex::default(),
        }
    }

    /// The number of characters of `text`.
    pub(crate) fn len(&self, text: &str) -> INT {
        let count = || INT::try_from(text.chars().count()).unwrap_or(INT::MAX);
        let address = text.as_ptr() as usize;
        if self.known.get(&address) != Some(&text.len()) {
            return count();
        }
        if let Some(n) = lock(&self.counted).get(&address) {
            return *n;
        }
        let n = count();
        lock(&self.counted).insert(address, n);
        n
    }

    #[cfg(test)]
    pub(crate) fn counted_is_empty(&self) -> bool {
        lock(&self.counted).is_empty()
    }
}

fn positive(function: &str, what: &str, n: INT) -> RhaiResult<usize> {
    if n <= 0 {
        return Err(script_error(format!(
            "{function}: {what} must be a positive number, got {n}"
        )));
    }
    usize::try_from(n).map_err(|_| script_error(format!("{function}: {what} is too large")))
}

/// The byte offset `n` characters after byte offset `from` (or the end).
fn advance(text: &str, from: usize, n: usize) -> usize {
    // `n` ASCII bytes are `n` characters. Checked piece by piece rather than over the whole
    // text first: the piece is then in the processor's cache when it is copied.
    let end = from.saturating_add(n).min(text.len());
    if text.as_bytes()[from..end].is_ascii() {
        return end;
    }
    text[from..]
        .char_indices()
        .nth(n)
        .map_or(text.len(), |(i, _)| from + i)
}

/// Splits `text` into pieces of `size` characters, each starting `size - overlap` characters
/// after the previous one. Never splits a character.
pub(crate) fn chunk_text(
    text: &str,
    size: INT,
    overlap: INT,
    limits: ResultLimits,
) -> RhaiResult<Array> {
    let size = positive("chunk", "size", size)?;
    if overlap < 0 || overlap as u64 >= size as u64 {
        return Err(script_error(format!(
            "chunk: overlap must be at least 0 and less than size ({size}), got {overlap}"
        )));
    }
    let step = size - overlap as usize;
    let mut tally = limits.tally("chunk");
    let mut chunks = Array::with_capacity(tally.capacity(text.len() / step + 1));
    let mut start = 0;
    while start < text.len() {
        let end = advance(text, start, size);
        tally.add(1, 0, end - start)?;
        chunks.push(Dynamic::from(ImmutableString::from(&text[start..end])));
        if end >= text.len() {
            break;
        }
        start = advance(text, start, step);
    }
    Ok(chunks)
}

/// Groups items `n` at a time.
fn chunk_array(items: Array, n: INT) -> RhaiResult<Array> {
    let n = positive("chunk", "size", n)?;
    Ok(items
        .chunks(n)
        .map(|group| Dynamic::from_array(group.to_vec()))
        .collect())
}

/// Pieces of `n` lines each (line breaks kept).
pub(crate) fn chunk_lines(text: &str, n: INT, limits: ResultLimits) -> RhaiResult<Array> {
    let n = positive("chunk_lines", "lines per chunk", n)?;
    let mut tally = limits.tally("chunk_lines");
    let mut chunks = Array::new();
    let mut start = 0;
    let mut lines = 0;
    for (i, _) in text.match_indices('\n') {
        lines += 1;
        if lines == n {
            tally.add(1, 0, i + 1 - start)?;
            chunks.push(Dynamic::from(ImmutableString::from(&text[start..=i])));
            start = i + 1;
            lines = 0;
        }
    }
    if start < text.len() {
        tally.add(1, 0, text.len() - start)?;
        chunks.push(Dynamic::from(ImmutableString::from(&text[start..])));
    }
    Ok(chunks)
}

/// The pieces as an array of strings, within the limits.
fn string_array<'a>(pieces: impl Iterator<Item = &'a str>, mut tally: Tally) -> RhaiResult<Array> {
    let mut array = Array::new();
    for piece in pieces {
        tally.add(1, 0, piece.len())?;
        array.push(Dynamic::from(ImmutableString::from(piece)));
    }
    Ok(array)
}

/// Every whole match of `pattern` (groups or not: their parts come from [`regex_captures`]).
fn regex_find_all(
    cache: &RegexCache,
    text: &str,
    pattern: &str,
    limits: ResultLimits,
) -> RhaiResult<Array> {
    let regex = cache.get("regex_find_all", pattern)?;
    string_array(
        regex.find_iter(text).map(|m| m.as_str()),
        limits.tally("regex_find_all"),
    )
}

/// For every match of `pattern`, the array of its groups `(...)` in order (`""` for a group
/// that took no part); a pattern without groups gives `[whole match]`.
fn regex_captures(
    cache: &RegexCache,
    text: &str,
    pattern: &str,
    limits: ResultLimits,
) -> RhaiResult<Array> {
    let regex = cache.get("regex_captures", pattern)?;
    let groups = regex.captures_len();
    let wanted = if groups == 1 { 0..1 } else { 1..groups };
    let mut tally = limits.tally("regex_captures");
    let mut found = Array::new();
    for caps in regex.captures_iter(text) {
        let parts: Vec<&str> = wanted
            .clone()
            .map(|g| caps.get(g).map_or("", |m| m.as_str()))
            .collect();
        tally.add(parts.len() + 1, 0, parts.iter().map(|p| p.len()).sum())?;
        found.push(Dynamic::from_array(
            parts
                .into_iter()
                .map(|p| Dynamic::from(ImmutableString::from(p)))
                .collect(),
        ));
    }
    Ok(found)
}

/// `regex.replace_all(text, with)`, failing before the result outgrows the limits.
fn regex_replace(
    cache: &RegexCache,
    text: &str,
    pattern: &str,
    with: &str,
    limits: ResultLimits,
) -> RhaiResult<String> {
    let regex = cache.get("regex_replace", pattern)?;
    let mut tally = limits.tally("regex_replace");
    // `$1`, `${name}`, ... expand to parts of the match, so one replacement is at most this
    // long; without `$` it is `with` itself.
    let references = with.matches('$').count();
    let mut out = String::new();
    let mut last = 0;
    for caps in regex.captures_iter(text) {
        let Some(m) = caps.get(0) else { continue };
        let gap = m.start() - last;
        let most = with
            .len()
            .saturating_add(references.saturating_mul(m.len()));
        let mut trial = tally;
        trial.add(0, 0, gap.saturating_add(most))?;
        let before = out.len();
        out.push_str(&text[last..m.start()]);
        if references == 0 {
            out.push_str(with);
        } else {
            caps.expand(with, &mut out);
        }
        // Count what was added, not the bound.
        tally.add(0, 0, out.len() - before)?;
        last = m.end();
    }
    tally.add(0, 0, text.len() - last)?;
    out.push_str(&text[last..]);
    Ok(out)
}

fn grep(
    cache: &RegexCache,
    text: &str,
    pattern: &str,
    around: INT,
    limits: ResultLimits,
) -> RhaiResult<Array> {
    // One pass of the regex over the whole text (multi-line mode, so ^ and $ match at line
    // boundaries), then the lines of the matches: far faster than testing every line when
    // matches are rare.
    let regex = cache.get("grep", &format!("(?m){pattern}"))?;
    let around = usize::try_from(around.max(0)).unwrap_or(usize::MAX);
    let mut tally = limits.tally("grep");
    let mut found = Array::new();
    // Line number (from 0) and start of the line the scan has reached.
    let mut line_no = 0usize;
    let mut line_start = 0usize;
    let mut next_free = 0usize;
    for m in regex.find_iter(text) {
        if m.start() < next_free {
            continue; // another match on a line already reported
        }
        line_no += count_newlines(&text[line_start..m.start()]);
        let start = text[..m.start()].rfind('\n').map_or(0, |i| i + 1);
        let end = text[m.start()..]
            .find('\n')
            .map_or(text.len(), |i| m.start() + i);
        line_start = start;
        next_free = end + 1;
        let line = text[start..end]
            .strip_suffix('\r')
            .unwrap_or(&text[start..end]);
        // The lines around a hit are measured before they are copied: with a large `around`
        // each hit's context is most of the text.
        let context = if around > 0 {
            let (from, to, before, after) = around_range(text, start, end, around);
            // Each line also gets a marker, its number and ": ".
            let shown = before + after + 1;
            let numbers = shown * ((line_no + after + 1).to_string().len() + 3);
            tally.add(1, 3, line.len() + (to - from) + numbers)?;
            Some(surrounding(text, from, to, line_no - before, line_no))
        } else {
            tally.add(1, 2, line.len())?;
            None
        };
        found.push(grep_hit(line_no, line, context));
    }
    Ok(found)
}

fn count_newlines(text: &str) -> usize {
    text.bytes().filter(|&b| b == b'\n').count()
}

/// The bytes `[from, to)` of up to `around` lines before and after the line `[start, end)`,
/// and how many lines come before and after it.
fn around_range(
    text: &str,
    start: usize,
    end: usize,
    around: usize,
) -> (usize, usize, usize, usize) {
    let mut from = start;
    let mut before = 0;
    while before < around && from > 0 {
        from = text[..from - 1].rfind('\n').map_or(0, |i| i + 1);
        before += 1;
    }
    let mut to = end;
    let mut after = 0;
    while after < around && to < text.len() {
        to = text[to + 1..].find('\n').map_or(text.len(), |i| to + 1 + i);
        after += 1;
    }
    (from, to, before, after)
}

/// The lines `[from, to)` of `text` (the first is number `first_no` from 0), each prefixed
/// with its number, line `line_no` marked with `>`.
fn surrounding(text: &str, from: usize, to: usize, first_no: usize, line_no: usize) -> String {
    let mut out = String::new();
    for (i, line) in text[from..to].split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let number = first_no + i;
        let marker = if number == line_no { '>' } else { ' ' };
        out.push_str(&format!(
            "{marker}{}: {}",
            number + 1,
            line.strip_suffix('\r').unwrap_or(line)
        ));
    }
    out
}

fn grep_hit(index: usize, line: &str, context: Option<String>) -> Dynamic {
    let mut hit = Map::new();
    hit.insert("line".into(), Dynamic::from(index as INT + 1));
    hit.insert("text".into(), Dynamic::from(ImmutableString::from(line)));
    if let Some(context) = context {
        hit.insert("context".into(), Dynamic::from(context));
    }
    Dynamic::from_map(hit)
}

/// `parse_json(text)`: exact (integers beyond 64 bits become strings of their digits; a
/// leading byte order mark is skipped).
fn parse_json(text: &str) -> RhaiResult<Dynamic> {
    let value = crate::parse_json_exact(text).map_err(|e| {
        script_error(format!(
            "parse_json: invalid JSON at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    Ok(crate::context::json_to_dynamic(value))
}

fn to_json(value: &Dynamic) -> RhaiResult<String> {
    let json: serde_json::Value = rhai::serde::from_dynamic(value).map_err(|e| {
        script_error(format!(
            "to_json: cannot convert {}: {e}",
            value.type_name()
        ))
    })?;
    Ok(json.to_string())
}

fn join(items: &Array, separator: &str, limits: ResultLimits) -> RhaiResult<String> {
    let mut tally = limits.tally("join");
    let mut out = String::new();
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            tally.add(0, 0, separator.len())?;
            out.push_str(separator);
        }
        match item.as_immutable_string_ref() {
            Ok(s) => {
                tally.add(0, 0, s.len())?;
                out.push_str(s.as_str());
            }
            Err(_) => {
                let text = to_text(item);
                tally.add(0, 0, text.len())?;
                out.push_str(&text);
            }
        }
    }
    Ok(out)
}

/// `text` with every `find` replaced by `with`, if the result fits the limits.
fn replaced(text: &str, find: &str, with: &str, limits: ResultLimits) -> RhaiResult<String> {
    if with.len() > find.len() {
        let times = if find.is_empty() {
            text.chars().count() + 1
        } else {
            text.matches(find).count()
        };
        let grown = times.saturating_mul(with.len() - find.len());
        limits
            .tally("replace")
            .add(0, 0, text.len().saturating_add(grown))?;
    }
    Ok(text.replace(find, with))
}

/// The character index of `needle` in `text`, or -1.
fn find(text: &str, needle: &str) -> INT {
    text.find(needle)
        .map_or(-1, |byte| text[..byte].chars().count() as INT)
}

fn count(text: &str, needle: &str) -> INT {
    if needle.is_empty() {
        return text.chars().count() as INT + 1;
    }
    text.matches(needle).count() as INT
}

fn to_int(value: Dynamic) -> RhaiResult<INT> {
    if let Ok(n) = value.as_int() {
        return Ok(n);
    }
    if let Ok(f) = value.as_float() {
        if f.is_finite() && f.abs() < 9.2e18 {
            return Ok(f.trunc() as INT);
        }
        return Err(script_error(format!("int: {f} does not fit an integer")));
    }
    if let Ok(b) = value.as_bool() {
        return Ok(INT::from(b));
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        let trimmed = s.trim();
        return trimmed.replace('_', "").parse::<INT>().map_err(|_| {
            script_error(format!(
                "int: cannot convert {trimmed:?} to an integer (for a decimal use float(s))"
            ))
        });
    }
    Err(script_error(format!(
        "int: cannot convert a value of type {} to an integer",
        value.type_name()
    )))
}

fn to_float(value: Dynamic) -> RhaiResult<f64> {
    if let Ok(f) = value.as_float() {
        return Ok(f);
    }
    if let Ok(n) = value.as_int() {
        return Ok(n as f64);
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        let trimmed = s.trim();
        return trimmed
            .parse::<f64>()
            .map_err(|_| script_error(format!("float: cannot convert {trimmed:?} to a number")));
    }
    Err(script_error(format!(
        "float: cannot convert a value of type {} to a number",
        value.type_name()
    )))
}

enum Number {
    Int(INT),
    Float(f64),
}

fn number(function: &str, value: &Dynamic) -> RhaiResult<Number> {
    if let Ok(n) = value.as_int() {
        Ok(Number::Int(n))
    } else if let Ok(f) = value.as_float() {
        Ok(Number::Float(f))
    } else {
        Err(script_error(format!(
            "{function}: expected numbers, found a {} (convert with int(x) or float(x))",
            value.type_name()
        )))
    }
}

fn sum(items: &Array) -> RhaiResult<Dynamic> {
    let mut int_total: INT = 0;
    let mut float_total = 0.0;
    let mut any_float = false;
    for item in items {
        match number("sum", item)? {
            Number::Int(n) => {
                int_total = int_total
                    .checked_add(n)
                    .ok_or_else(|| script_error("sum: integer overflow"))?;
            }
            Number::Float(f) => {
                any_float = true;
                float_total += f;
            }
        }
    }
    Ok(if any_float {
        Dynamic::from_float(float_total + int_total as f64)
    } else {
        Dynamic::from_int(int_total)
    })
}

fn incomparable(function: &str, a: &Dynamic, b: &Dynamic) -> Box<EvalAltResult> {
    script_error(format!(
        "{function}: cannot compare a {} with a {}",
        a.type_name(),
        b.type_name()
    ))
}

fn sorted(mut items: Array) -> RhaiResult<Array> {
    let mut failure = None;
    items.sort_by(|a, b| {
        compare(a, b).unwrap_or_else(|| {
            failure.get_or_insert_with(|| incomparable("sorted", a, b));
            Ordering::Equal
        })
    });
    match failure {
        Some(error) => Err(error),
        None => Ok(items),
    }
}

fn extreme(function: &str, items: &Array, wanted: Ordering) -> RhaiResult<Dynamic> {
    let mut best: Option<&Dynamic> = None;
    for item in items {
        best = Some(match best {
            None => item,
            Some(current) => match compare(item, current) {
                Some(order) if order == wanted => item,
                Some(_) => current,
                None => return Err(incomparable(function, item, current)),
            },
        });
    }
    best.cloned()
        .ok_or_else(|| script_error(format!("{function}: the array is empty")))
}

/// Most digits `fmt` and `round` take after the point (f64 holds about 17).
const MAX_DIGITS: INT = 17;

fn digits(function: &str, digits: INT) -> RhaiResult<usize> {
    if !(0..=MAX_DIGITS).contains(&digits) {
        return Err(script_error(format!(
            "{function}: digits must be 0 to {MAX_DIGITS}, got {digits}"
        )));
    }
    Ok(digits as usize)
}

/// `x` with exactly `digits` digits after the point: `fmt(7, 2)` is `"7.00"`.
fn format_number(x: f64, places: INT) -> RhaiResult<String> {
    let places = digits("fmt", places)?;
    Ok(format!("{x:.places$}"))
}

/// `x` rounded to `digits` digits after the point (Python's round(x, n)); a number, not text:
/// fmt(x, n) gives the text with trailing zeros.
fn round_to(x: f64, places: INT) -> RhaiResult<f64> {
    let places = digits("round", places)?;
    // Through the decimal text, so 2.675 rounds as it prints, not as 2.67499999...
    format!("{x:.places$}")
        .parse::<f64>()
        .map_err(|_| script_error(format!("round: cannot round {x}")))
}

/// An integer is already round to any number of digits after the point.
fn round_int(x: INT, places: INT) -> RhaiResult<INT> {
    digits("round", places).map(|_| x)
}

fn int_range(from: INT, to: INT, step: INT, limit: usize) -> RhaiResult<Array> {
    if step == 0 {
        return Err(script_error("range: step must not be 0"));
    }
    let span = if step > 0 {
        i128::from(to) - i128::from(from)
    } else {
        i128::from(from) - i128::from(to)
    };
    let count = if span <= 0 {
        0
    } else {
        (span + i128::from(step.unsigned_abs()) - 1) / i128::from(step.unsigned_abs())
    };
    if count > limit as i128 {
        return Err(script_error(format!(
            "range: {count} items is more than the array limit ({limit}); loop with \
             `for i in from..to` instead"
        )));
    }
    let mut items = Array::with_capacity(count as usize);
    let mut value = from;
    for _ in 0..count {
        items.push(Dynamic::from_int(value));
        value = value.wrapping_add(step);
    }
    Ok(items)
}

/// Registers every helper in `engine` (a module every REPL's engine shares): their limits
/// are the running block's (see [`BlockSizes`]), `limits` stand in where no block runs.
pub(crate) fn register(engine: &mut Module, regexes: &Arc<RegexCache>, limits: &SandboxLimits) {
    let max_array_size = Live {
        given: BlockSizes::of(limits),
        pick: |sizes| sizes.array,
    };
    let limits = ResultLimits::new(limits);
    // Chunking and splitting.
    engine.register_fn("chunk", move |text: &str, size: INT| {
        chunk_text(text, size, 0, limits)
    });
    engine.register_fn("chunk", move |text: &str, size: INT, overlap: INT| {
        chunk_text(text, size, overlap, limits)
    });
    engine.register_fn("chunk", chunk_array);
    engine.register_fn("chunk_lines", move |text: &str, n: INT| {
        chunk_lines(text, n, limits)
    });
    for name in ["lines", "splitlines"] {
        engine.register_fn(name, move |text: &str| {
            string_array(text.lines(), limits.tally("lines"))
        });
    }
    engine.register_fn("split", move |text: &str| {
        string_array(text.split_whitespace(), limits.tally("split"))
    });

    // Regular expressions.
    let cache = Arc::clone(regexes);
    engine.register_fn("regex_find_all", move |text: &str, pattern: &str| {
        regex_find_all(&cache, text, pattern, limits)
    });
    let cache = Arc::clone(regexes);
    engine.register_fn("regex_captures", move |text: &str, pattern: &str| {
        regex_captures(&cache, text, pattern, limits)
    });
    let cache = Arc::clone(regexes);
    engine.register_fn("regex_count", move |text: &str, pattern: &str| {
        cache
            .get("regex_count", pattern)
            .map(|re| re.find_iter(text).count() as INT)
    });
    let cache = Arc::clone(regexes);
    engine.register_fn("regex_test", move |text: &str, pattern: &str| {
        cache.get("regex_test", pattern).map(|re| re.is_match(text))
    });
    let cache = Arc::clone(regexes);
    engine.register_fn(
        "regex_replace",
        move |text: &str, pattern: &str, with: &str| {
            regex_replace(&cache, text, pattern, with, limits)
        },
    );
    let cache = Arc::clone(regexes);
    engine.register_fn("regex_split", move |text: &str, pattern: &str| {
        let regex = cache.get("regex_split", pattern)?;
        string_array(regex.split(text), limits.tally("regex_split"))
    });
    let cache = Arc::clone(regexes);
    engine.register_fn("grep", move |text: &str, pattern: &str| {
        grep(&cache, text, pattern, 0, limits)
    });
    let cache = Arc::clone(regexes);
    engine.register_fn("grep", move |text: &str, pattern: &str, around: INT| {
        grep(&cache, text, pattern, around, limits)
    });

    // JSON.
    engine.register_fn("parse_json", parse_json);
    engine.register_fn("to_json", |value: Dynamic| to_json(&value));

    // Python names that read well.
    engine.register_fn("join", move |items: Array, separator: &str| {
        join(&items, separator, limits)
    });
    engine.register_fn("join", move |separator: &str, items: Array| {
        join(&items, separator, limits)
    });
    // Python's range(n) as an array (so range(n).map(...) works); too long is an error
    // before anything is allocated.
    let limit = max_array_size;
    engine.register_fn("range", move |n: INT| int_range(0, n, 1, limit.get()));
    engine.register_fn("range", move |from: INT, to: INT| {
        int_range(from, to, 1, limit.get())
    });
    engine.register_fn("range", move |from: INT, to: INT, step: INT| {
        int_range(from, to, step, limit.get())
    });
    engine.register_fn("upper", |text: &str| text.to_uppercase());
    engine.register_fn("lower", |text: &str| text.to_lowercase());
    engine.register_fn("strip", |text: ImmutableString| trimmed(text, str::trim));
    engine.register_fn("lstrip", |text: ImmutableString| {
        trimmed(text, str::trim_start)
    });
    engine.register_fn("rstrip", |text: ImmutableString| {
        trimmed(text, str::trim_end)
    });
    engine.register_fn("startswith", |text: &str, prefix: &str| {
        text.starts_with(prefix)
    });
    engine.register_fn("endswith", |text: &str, suffix: &str| {
        text.ends_with(suffix)
    });
    engine.register_fn("find", find);
    engine.register_fn("count", count);
    engine.register_fn("str", |value: Dynamic| to_text(&value));
    engine.register_fn("int", to_int);
    // Rhai's own int(float) returns a float (the integer part); Python's returns an integer.
    engine.register_fn("int", |f: f64| to_int(Dynamic::from_float(f)));
    engine.register_fn("float", to_float);
    engine.register_fn("sum", |items: Array| sum(&items));
    engine.register_fn("min", |items: Array| extreme("min", &items, Ordering::Less));
    engine.register_fn("max", |items: Array| {
        extreme("max", &items, Ordering::Greater)
    });
    engine.register_fn("sorted", sorted);
    engine.register_fn("reversed", |mut items: Array| {
        items.reverse();
        items
    });
    super::sorting::register(engine);
    super::mapping::register(engine);
    engine.register_fn("fmt", |x: INT, digits: INT| format_number(x as f64, digits));
    engine.register_fn("fmt", |x: f64, digits: INT| format_number(x, digits));
    engine.register_fn("round", |x: f64, digits: INT| round_to(x, digits));
    engine.register_fn("round", |x: INT, digits: INT| round_int(x, digits));
    engine.register_fn("round", |x: INT| x);

    // Rhai's in-place string methods also return the new value, so that the Python habit
    // `let t = s.trim();` works instead of silently giving ().
    // Not pure: they change their target, so calling them on `context` (a constant) fails
    // loudly instead of changing it.
    FuncRegistration::new("trim")
        .with_purity(false)
        .register_into(engine, |text: &mut ImmutableString| {
            let t = text.trim();
            if t.len() != text.len() {
                *text = ImmutableString::from(t);
            }
            text.clone()
        });
    FuncRegistration::new("replace")
        .with_purity(false)
        .register_into(
            engine,
            move |text: &mut ImmutableString, find: &str, with: &str| {
                if text.contains(find) {
                    *text = ImmutableString::from(replaced(text, find, with, limits)?);
                }
                Ok::<_, Box<EvalAltResult>>(text.clone())
            },
        );
}

fn trimmed(text: ImmutableString, trim: fn(&str) -> &str) -> ImmutableString {
    let t = trim(&text);
    if t.len() == text.len() {
        text
    } else {
        ImmutableString::from(t)
    }
}

/// Rhai's `split(text, sep)` family and `to_chars`, built piece by piece within the limits
/// (Rhai's own build the whole array first: `split("")` of 64 MB is gigabytes). Same results:
/// a text without the separator gives one item, the text itself.
fn split_by<'a>(
    text: &'a str,
    found: bool,
    pieces: impl Iterator<Item = &'a str>,
    limits: ResultLimits,
) -> RhaiResult<Array> {
    if text.is_empty() || !found {
        return Ok(vec![Dynamic::from(ImmutableString::from(text))]);
    }
    string_array(pieces, limits.tally("split"))
}

fn segments(n: INT) -> Option<usize> {
    (n > 1).then(|| usize::try_from(n).unwrap_or(usize::MAX))
}

/// Registers checked versions of Rhai's functions that build a large value in one call:
/// `split`, `split_rev`, `to_chars`, `pad` (strings, arrays, BLOBs) and `blob`.
pub(crate) fn register_checked_builtins(engine: &mut Module, limits: &SandboxLimits) {
    let result = ResultLimits::new(limits);
    let found = |text: &str, sep: &str| sep.is_empty() || text.contains(sep);
    engine.register_fn("split", move |text: &str, sep: &str| {
        split_by(text, found(text, sep), text.split(sep), result)
    });
    engine.register_fn("split", move |text: &str, sep: char| {
        split_by(text, text.contains(sep), text.split(sep), result)
    });
    engine.register_fn(
        "split",
        move |text: &str, sep: &str, n: INT| match segments(n) {
            Some(n) => split_by(text, found(text, sep), text.splitn(n, sep), result),
            None => split_by(text, false, std::iter::empty(), result),
        },
    );
    engine.register_fn(
        "split",
        move |text: &str, sep: char, n: INT| match segments(n) {
            Some(n) => split_by(text, text.contains(sep), text.splitn(n, sep), result),
            None => split_by(text, false, std::iter::empty(), result),
        },
    );
    engine.register_fn("split_rev", move |text: &str, sep: &str| {
        split_by(text, found(text, sep), text.rsplit(sep), result)
    });
    engine.register_fn("split_rev", move |text: &str, sep: char| {
        split_by(text, text.contains(sep), text.rsplit(sep), result)
    });
    engine.register_fn(
        "split_rev",
        move |text: &str, sep: &str, n: INT| match segments(n) {
            Some(n) => split_by(text, found(text, sep), text.rsplitn(n, sep), result),
            None => split_by(text, false, std::iter::empty(), result),
        },
    );
    engine.register_fn(
        "split_rev",
        move |text: &str, sep: char, n: INT| match segments(n) {
            Some(n) => split_by(text, text.contains(sep), text.rsplitn(n, sep), result),
            None => split_by(text, false, std::iter::empty(), result),
        },
    );
    engine.register_fn("to_chars", move |text: &str| -> RhaiResult<Array> {
        let mut tally = result.tally("to_chars");
        let mut chars = Array::new();
        for c in text.chars() {
            tally.add(1, 0, 0)?;
            chars.push(Dynamic::from_char(c));
        }
        Ok(chars)
    });

    // `pad` grows its target to a length in one call: the length is checked first.
    let given = BlockSizes::of(limits);
    let max_string = Live {
        given,
        pick: |sizes| sizes.string,
    };
    let max_items = Live {
        given,
        pick: |sizes| sizes.array,
    };
    let max_memory = Live {
        given,
        pick: |sizes| sizes.memory,
    };
    let over = |limit: Live, wanted: usize| {
        let limit = limit.get();
        limit != 0 && wanted > limit
    };
    FuncRegistration::new("pad")
        .with_purity(false)
        .register_into(
            engine,
            move |text: &mut ImmutableString, len: INT, fill: char| -> RhaiResult<()> {
                let len = usize::try_from(len).unwrap_or(0);
                let have = text.chars().count();
                if len <= have {
                    return Ok(());
                }
                if over(
                    max_string,
                    text.len()
                        .saturating_add((len - have).saturating_mul(fill.len_utf8())),
                ) {
                    return Err(super::memory::too_large("Length of string"));
                }
                let mut out = text.to_string();
                out.extend(std::iter::repeat_n(fill, len - have));
                *text = out.into();
                Ok(())
            },
        );
    FuncRegistration::new("pad")
        .with_purity(false)
        .register_into(
            engine,
            move |text: &mut ImmutableString, len: INT, fill: &str| -> RhaiResult<()> {
                let len = usize::try_from(len).unwrap_or(0);
                let have = text.chars().count();
                if len <= have || fill.is_empty() {
                    return Ok(());
                }
                // At most one character of padding per wanted character, each at most 4 bytes.
                let most = text.len().saturating_add((len - have).saturating_mul(4));
                if over(
                    max_string,
                    most.min(
                        text.len()
                            .saturating_add((len - have).saturating_mul(fill.len())),
                    ),
                ) {
                    return Err(super::memory::too_large("Length of string"));
                }
                let mut out = text.to_string();
                out.extend(fill.chars().cycle().take(len - have));
                *text = out.into();
                Ok(())
            },
        );
    FuncRegistration::new("pad")
        .with_purity(false)
        .register_into(
            engine,
            move |items: &mut Array, len: INT, item: Dynamic| -> RhaiResult<()> {
                let len = usize::try_from(len).unwrap_or(0);
                if len <= items.len() {
                    return Ok(());
                }
                if over(max_items, len) {
                    return Err(super::memory::too_large("Size of array"));
                }
                let each = super::memory::estimate_bytes(&item, max_memory.get());
                if over(max_memory, each.saturating_mul(len - items.len())) {
                    return Err(super::memory::too_large(
                        "Size of array (its copies of the item)",
                    ));
                }
                items.resize(len, item);
                Ok(())
            },
        );
    FuncRegistration::new("pad")
        .with_purity(false)
        .register_into(
            engine,
            move |blob: &mut Blob, len: INT, value: INT| -> RhaiResult<()> {
                let len = usize::try_from(len).unwrap_or(0);
                if len <= blob.len() {
                    return Ok(());
                }
                if over(max_items, len) {
                    return Err(super::memory::too_large("Size of BLOB"));
                }
                blob.resize(len, (value & 0xff) as u8);
                Ok(())
            },
        );
    let new_blob = move |len: INT, value: INT| -> RhaiResult<Blob> {
        let len = usize::try_from(len).unwrap_or(0);
        if over(max_items, len) {
            return Err(super::memory::too_large("Size of BLOB"));
        }
        Ok(vec![(value & 0xff) as u8; len])
    };
    engine.register_fn("blob", move |len: INT| new_blob(len, 0));
    engine.register_fn("blob", new_blob);

    // Merging maps and joining arrays grow a value by a whole other one in one call: the
    // size of the result is checked before it is built.
    let max_entries = Live {
        given,
        pick: |sizes| sizes.map,
    };
    let merged_size = move |map: &Map, other: &Map| -> RhaiResult<()> {
        let new_keys = other.keys().filter(|key| !map.contains_key(*key)).count();
        if over(max_entries, map.len().saturating_add(new_keys)) {
            return Err(super::memory::too_large("Size of object map"));
        }
        Ok(())
    };
    for name in ["mixin", "+="] {
        FuncRegistration::new(name)
            .with_purity(false)
            .register_into(engine, move |map: &mut Map, other: Map| -> RhaiResult<()> {
                merged_size(map, &other)?;
                map.extend(other);
                Ok(())
            });
    }
    FuncRegistration::new("fill_with")
        .with_purity(false)
        .register_into(engine, move |map: &mut Map, other: Map| -> RhaiResult<()> {
            merged_size(map, &other)?;
            for (key, value) in other {
                map.entry(key).or_insert(value);
            }
            Ok(())
        });
    engine.register_fn("+", move |map: Map, other: Map| -> RhaiResult<Map> {
        merged_size(&map, &other)?;
        let mut map = map;
        map.extend(other);
        Ok(map)
    });
    let joined_size = move |items: &Array, other: &Array| -> RhaiResult<()> {
        if over(max_items, items.len().saturating_add(other.len())) {
            return Err(super::memory::too_large("Size of array"));
        }
        Ok(())
    };
    FuncRegistration::new("append")
        .with_purity(false)
        .register_into(
            engine,
            move |items: &mut Array, other: Array| -> RhaiResult<()> {
                joined_size(items, &other)?;
                items.extend(other);
                Ok(())
            },
        );
    engine.register_fn(
        "+",
        move |items: Array, other: Array| -> RhaiResult<Array> {
            joined_size(&items, &other)?;
            let mut items = items;
            items.extend(other);
            Ok(items)
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> ResultLimits {
        ResultLimits::new(&SandboxLimits::default())
    }

    fn strings(array: &Array) -> Vec<String> {
        array.iter().map(to_text).collect()
    }

    #[test]
    fn chunks_by_characters_with_overlap() {
        let chunks = chunk_text("abcdefghij", 4, 0, limits()).unwrap_or_default();
        assert_eq!(strings(&chunks), ["abcd", "efgh", "ij"]);
        let chunks = chunk_text("abcdefghij", 4, 2, limits()).unwrap_or_default();
        assert_eq!(strings(&chunks), ["abcd", "cdef", "efgh", "ghij"]);
        let chunks = chunk_text("héllo wörld", 3, 1, limits()).unwrap_or_default();
        assert_eq!(strings(&chunks), ["hél", "llo", "o w", "wör", "rld"]);
        assert!(
            chunk_text("", 3, 0, limits())
                .unwrap_or_default()
                .is_empty()
        );
        assert!(chunk_text("abc", 0, 0, limits()).is_err());
        assert!(chunk_text("abc", 3, 3, limits()).is_err());
        assert!(chunk_text("abc", 3, -1, limits()).is_err());
    }

    #[test]
    fn chunks_are_whole_characters_wherever_the_edges_fall() {
        // ASCII runs and characters of 2 to 4 bytes, so that an edge falls in every kind of
        // place; compared with chunking a list of characters.
        let text = "ab\u{e9}cd\u{20ac}efgh\u{1f600}ijklmnop\u{e9}\u{e9}q ".repeat(7);
        let chars: Vec<char> = text.chars().collect();
        for size in 1..12 {
            for overlap in 0..size {
                let chunks = chunk_text(&text, size, overlap, limits()).unwrap_or_default();
                let (size, step) = (size as usize, (size - overlap) as usize);
                let mut expected = Vec::new();
                let mut start = 0;
                loop {
                    let end = (start + size).min(chars.len());
                    expected.push(chars[start..end].iter().collect::<String>());
                    if end == chars.len() {
                        break;
                    }
                    start += step;
                }
                assert_eq!(strings(&chunks), expected, "size {size}, overlap {overlap}");
            }
        }
        // The pieces of an ASCII text, without overlap, are the text again.
        let ascii = "0123456789".repeat(31);
        let chunks = chunk_text(&ascii, 100, 0, limits()).unwrap_or_default();
        assert_eq!(strings(&chunks).concat(), ascii);
        assert_eq!(strings(&chunks).last().map(String::len), Some(10));
    }

    #[test]
    fn chunks_by_lines() {
        let chunks = chunk_lines("a\nb\nc\nd\ne", 2, limits()).unwrap_or_default();
        assert_eq!(strings(&chunks), ["a\nb\n", "c\nd\n", "e"]);
        let chunks = chunk_lines("a\nb\n", 2, limits()).unwrap_or_default();
        assert_eq!(strings(&chunks), ["a\nb\n"]);
    }

    #[test]
    fn find_all_gives_whole_matches_and_captures_the_groups() {
        let cache = RegexCache::default();
        let all = regex_find_all(&cache, "a1 b22 c333", r"\d+", limits()).unwrap_or_default();
        assert_eq!(strings(&all), ["1", "22", "333"]);
        let whole = regex_find_all(&cache, "GET /a POST /b", r"(GET|POST) /\w", limits())
            .unwrap_or_default();
        assert_eq!(strings(&whole), ["GET /a", "POST /b"]);
        let groups =
            regex_captures(&cache, "a1 b22", r"([a-z])(\d+)", limits()).unwrap_or_default();
        assert_eq!(strings(&groups), [r#"["a","1"]"#, r#"["b","22"]"#]);
        let one = regex_captures(&cache, "x=1, y=2", r"=(\d)", limits()).unwrap_or_default();
        assert_eq!(strings(&one), [r#"["1"]"#, r#"["2"]"#]);
        let none = regex_captures(&cache, "x=1, y=2", r"\d", limits()).unwrap_or_default();
        assert_eq!(strings(&none), [r#"["1"]"#, r#"["2"]"#]);
        let optional =
            regex_captures(&cache, "a b1", r"([a-z])(\d)?", limits()).unwrap_or_default();
        assert_eq!(strings(&optional), [r#"["a",""]"#, r#"["b","1"]"#]);
        assert!(regex_find_all(&cache, "x", "(", limits()).is_err());
        assert!(regex_captures(&cache, "x", "(", limits()).is_err());
    }

    #[test]
    fn formats_and_rounds_numbers() {
        assert_eq!(format_number(7.0, 2).unwrap_or_default(), "7.00");
        assert_eq!(format_number(23.6, 2).unwrap_or_default(), "23.60");
        assert_eq!(format_number(2.5, 0).unwrap_or_default(), "2");
        assert_eq!(format_number(-1.005, 1).unwrap_or_default(), "-1.0");
        assert!(format_number(1.0, -1).is_err());
        assert!(format_number(1.0, 40).is_err());
        assert_eq!(round_to(23.456, 2).unwrap_or_default(), 23.46);
        assert_eq!(round_to(2.0 / 3.0, 3).unwrap_or_default(), 0.667);
        assert_eq!(round_int(7, 2).unwrap_or_default(), 7);
        assert!(round_to(1.0, -2).is_err());
    }

    #[test]
    fn greps_with_line_numbers_and_context() {
        let cache = RegexCache::default();
        let hits = grep(&cache, "one\ntwo\nthree\nfour", "^t", 1, limits()).unwrap_or_default();
        assert_eq!(hits.len(), 2);
        let last = to_text(&hits[1]);
        assert!(last.contains(r#"" 2: two\n>3: three\n 4: four""#), "{last}");
        let edges = grep(&cache, "a\r\nxa xa\nb\nxa", "xa", 0, limits()).unwrap_or_default();
        assert_eq!(strings(&edges).len(), 2, "one hit per line");
        assert!(
            to_text(&edges[0]).contains(r#""line":2,"text":"xa xa""#),
            "{}",
            to_text(&edges[0])
        );
        assert!(to_text(&edges[1]).contains(r#""line":4"#));
        let wide = grep(&cache, "x\ny", "x", 5, limits()).unwrap_or_default();
        assert!(
            to_text(&wide[0]).contains(r#"">1: x\n 2: y""#),
            "{}",
            to_text(&wide[0])
        );
        let first = to_text(&hits[0]);
        assert!(first.contains(r#""line":2"#), "{first}");
        assert!(
            first.contains(r#"" 1: one\n>2: two\n 3: three""#),
            "{first}"
        );
    }

    #[test]
    fn python_names() {
        assert_eq!(find("héllo", "l"), 2);
        assert_eq!(find("abc", "z"), -1);
        assert_eq!(count("abcabc", "bc"), 2);
        assert_eq!(to_int(Dynamic::from("  42 ")).unwrap_or_default(), 42);
        assert!(to_int(Dynamic::from("4.5")).is_err());
        assert_eq!(to_float(Dynamic::from_int(3)).unwrap_or_default(), 3.0);
        let numbers: Array = vec![Dynamic::from_int(3), Dynamic::from_float(0.5)];
        assert_eq!(
            sum(&numbers).ok().and_then(|d| d.as_float().ok()),
            Some(3.5)
        );
        let mixed: Array = vec![Dynamic::from_int(3), Dynamic::from("x")];
        assert!(sorted(mixed).is_err());
        assert_eq!(
            strings(&int_range(0, 3, 1, 10).unwrap_or_default()),
            ["0", "1", "2"]
        );
        assert_eq!(
            strings(&int_range(5, 0, -2, 10).unwrap_or_default()),
            ["5", "3", "1"]
        );
        assert!(int_range(0, 3, 0, 10).is_err());
        assert!(int_range(0, 1_000_000_000_000, 1, 10).is_err());
        assert!(int_range(3, 0, 1, 10).unwrap_or_default().is_empty());
        let words: Array = vec![Dynamic::from("b"), Dynamic::from("a")];
        assert_eq!(strings(&sorted(words).unwrap_or_default()), ["a", "b"]);
    }
}
