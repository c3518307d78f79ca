//! What the sandbox's values hold, measured without making scripts quadratic.
//!
//! Rhai's own size limits re-measure a whole value (every item of an array, recursively) after
//! each call that may change it: `xs.push(x)` and `xs.len()` cost O(len), so a loop that
//! pushes n items costs O(n²). The REPL turns them off and keeps its limits itself:
//!
//! - each value's own size (a string's bytes, an array's items, a map's entries) is checked in
//!   O(1) whenever a variable is read (see [`check_own_size`]), and by every native function
//!   that grows a value while it builds it (`pad`, `split`, `to_chars`, the helpers);
//! - while a block runs, the watchdog follows what the block's thread allocated (with
//!   `rlm_alloc::Counting` as the global allocator, as in the `rlm` binary), or else the
//!   process's resident memory (see [`resident_bytes`]), and stops the block once it grew by
//!   more than the memory budget;
//! - after every block, the variables are measured (see [`estimate_bytes`]) and those that do
//!   not fit the limits or the budget are removed, largest first, with a note naming them.

use std::sync::atomic::{AtomicUsize, Ordering};

use rhai::{Dynamic, EvalAltResult, Position, Scope};

use crate::SandboxLimits;

/// Bytes an array item or map value takes besides what it points to.
const SLOT: usize = std::mem::size_of::<Dynamic>();
/// Bytes a string takes besides its text (its shared header and allocation rounding).
const STRING_OVERHEAD: usize = 32;
/// Bytes a map entry takes besides its key's text and its value.
const ENTRY_OVERHEAD: usize = 48;

/// The limit with 0 meaning none.
fn cap(limit: usize) -> usize {
    if limit == 0 { usize::MAX } else { limit }
}

/// A "too large" error, as Rhai raises it.
pub(crate) fn too_large(what: &str) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorDataTooLarge(
        what.to_owned(),
        Position::NONE,
    ))
}

/// Fails when `value` on its own is over a size limit: a string's bytes, an array's (or
/// BLOB's) items, a map's entries. O(1): nested values are checked when they are used.
pub(crate) fn check_own_size(
    value: &Dynamic,
    limits: &SandboxLimits,
) -> Result<(), Box<EvalAltResult>> {
    match own_size_over(value, limits) {
        Some(what) => Err(too_large(what)),
        None => Ok(()),
    }
}

/// Which size limit `value` on its own is over, if any (as Rhai names it).
fn own_size_over(value: &Dynamic, limits: &SandboxLimits) -> Option<&'static str> {
    if value.is_string() {
        value
            .as_immutable_string_ref()
            .is_ok_and(|s| s.len() > cap(limits.max_string_size))
            .then_some("Length of string")
    } else if value.is_array() {
        value
            .as_array_ref()
            .is_ok_and(|items| items.len() > cap(limits.max_array_size))
            .then_some("Size of array")
    } else if value.is_map() {
        value
            .as_map_ref()
            .is_ok_and(|map| map.len() > cap(limits.max_map_size))
            .then_some("Size of object map")
    } else if value.is_blob() {
        value
            .as_blob_ref()
            .is_ok_and(|blob| blob.len() > cap(limits.max_array_size))
            .then_some("Size of BLOB")
    } else {
        None
    }
}

/// An estimate of the heap bytes `value` holds (strings, map keys and the slots of arrays and
/// maps, recursively), counting up to a little past `stop_after` and no further.
pub(crate) fn estimate_bytes(value: &Dynamic, stop_after: usize) -> usize {
    let mut total = 0usize;
    add_bytes(value, stop_after, &mut total, 0);
    total
}

fn add_bytes(value: &Dynamic, stop_after: usize, total: &mut usize, depth: usize) {
    if *total > stop_after || depth > 512 {
        return;
    }
    if let Ok(s) = value.as_immutable_string_ref() {
        *total = total.saturating_add(s.len() + STRING_OVERHEAD);
    } else if let Ok(items) = value.as_array_ref() {
        *total = total.saturating_add(items.len() * SLOT);
        for item in items.iter() {
            add_bytes(item, stop_after, total, depth + 1);
            if *total > stop_after {
                return;
            }
        }
    } else if let Ok(map) = value.as_map_ref() {
        for (key, item) in map.iter() {
            *total = total.saturating_add(key.len() + SLOT + ENTRY_OVERHEAD);
            add_bytes(item, stop_after, total, depth + 1);
            if *total > stop_after {
                return;
            }
        }
    } else if let Ok(blob) = value.as_blob_ref() {
        *total = total.saturating_add(blob.len());
    }
}

/// Whether `value` or anything inside it is over a size limit (strings' bytes, arrays' items,
/// maps' entries, each counted on its own; map keys count as strings).
fn over_size_limits(value: &Dynamic, limits: &SandboxLimits, depth: usize) -> bool {
    if depth > 512 || check_own_size(value, limits).is_err() {
        return depth <= 512;
    }
    if let Ok(items) = value.as_array_ref() {
        // Only containers can hold something too large further down.
        items
            .iter()
            .filter(|item| !item.is_int() && !item.is_float() && !item.is_bool())
            .any(|item| over_size_limits(item, limits, depth + 1))
    } else if let Ok(map) = value.as_map_ref() {
        map.iter().any(|(key, item)| {
            key.len() > cap(limits.max_string_size) || over_size_limits(item, limits, depth + 1)
        })
    } else {
        false
    }
}

/// Watches values that grow inside other values (`m.x[k] = v`, `xs[0].push(y)`): reading
/// `m` checks only `m`'s own size, and checking everything inside it on every use would make
/// loops quadratic. So every so many variable uses, the whole scope is checked, nested values
/// included; the next check waits for a share of what this one visited, so checking costs a
/// few steps per use however large the data, and a nested value is stopped within a small
/// fraction of its limit.
#[derive(Debug, Default)]
pub(crate) struct NestedCheck {
    uses: AtomicUsize,
    next: AtomicUsize,
}

impl NestedCheck {
    /// Fewest variable uses between two checks.
    const MIN_USES: usize = 1 << 10;
    /// A check waits for 1/SHARE of the items it visited.
    const SHARE: usize = 8;

    /// Counts one variable use; on every so many, checks `scope` (a read-only `context`
    /// excepted: it fits by construction) and fails if a value inside it is over a limit.
    pub(crate) fn on_use(
        &self,
        scope: &Scope<'_>,
        limits: &SandboxLimits,
    ) -> Result<(), Box<EvalAltResult>> {
        let uses = self.uses.fetch_add(1, Ordering::Relaxed) + 1;
        if uses < self.next.load(Ordering::Relaxed).max(Self::MIN_USES) {
            return Ok(());
        }
        self.uses.store(0, Ordering::Relaxed);
        let mut visited = 0usize;
        let mut found = None;
        for (name, constant, value) in scope.iter_raw() {
            if constant && name == "context" {
                continue;
            }
            found = nested_too_large(value, limits, &mut visited, 0);
            if found.is_some() {
                break;
            }
        }
        self.next.store(visited / Self::SHARE, Ordering::Relaxed);
        match found {
            Some(what) => Err(too_large(what)),
            None => Ok(()),
        }
    }
}

/// What inside `value` is over a size limit, if anything (strings' bytes, arrays' items,
/// maps' entries, map keys as strings); counts the items it visits into `visited`.
fn nested_too_large(
    value: &Dynamic,
    limits: &SandboxLimits,
    visited: &mut usize,
    depth: usize,
) -> Option<&'static str> {
    *visited = visited.saturating_add(1);
    if depth > 512 {
        return None;
    }
    if let Some(what) = own_size_over(value, limits) {
        return Some(what);
    }
    let container = |item: &&Dynamic| item.is_array() || item.is_map() || item.is_string();
    if let Ok(items) = value.as_array_ref() {
        *visited = visited.saturating_add(items.len());
        items
            .iter()
            .filter(container)
            .find_map(|item| nested_too_large(item, limits, visited, depth + 1))
    } else if let Ok(map) = value.as_map_ref() {
        *visited = visited.saturating_add(map.len());
        map.iter().find_map(|(key, item)| {
            if key.len() > cap(limits.max_string_size) {
                return Some("Length of string");
            }
            if container(&item) {
                nested_too_large(item, limits, visited, depth + 1)
            } else {
                None
            }
        })
    } else {
        None
    }
}

/// The resident memory of this process in bytes (Linux; `None` elsewhere or if unreadable).
pub(crate) fn resident_bytes() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: usize = status.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages.saturating_mul(4096))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The memory this process may use in bytes: the machine's (Linux's `MemTotal`), or its
/// container's limit if lower (cgroup v2 `memory.max`); `None` elsewhere or if unreadable.
/// Read again at most once a second (every run of a batch or a server asks).
pub(crate) fn physical_bytes() -> Option<usize> {
    use std::time::{Duration, Instant};
    static LAST: std::sync::Mutex<Option<(Instant, Option<usize>)>> = std::sync::Mutex::new(None);
    let mut last = crate::sync::lock(&LAST);
    if let Some((read, bytes)) = *last {
        if read.elapsed() < Duration::from_secs(1) {
            return bytes;
        }
    }
    let bytes = read_physical_bytes();
    *last = Some((Instant::now(), bytes));
    bytes
}

fn read_physical_bytes() -> Option<usize> {
    #[cfg(target_os = "linux")]
    {
        let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib: usize = meminfo
            .lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        let machine = kib.saturating_mul(1024);
        // "max" (no limit) or a number of bytes.
        let container = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
            .ok()
            .and_then(|text| text.trim().parse::<usize>().ok());
        Some(container.map_or(machine, |limit| limit.min(machine)))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The memory budget fitted to a context of `context` bytes (see
/// [`SandboxLimits::max_memory_fits_context`]): `given` plus twice the context (its chunks and
/// the prompts built from them), at most the machine's memory (`physical`) less the context,
/// never less than `given`.
pub(crate) fn fit_to_context(given: usize, context: usize, physical: Option<usize>) -> usize {
    let wanted = given.saturating_add(context.saturating_mul(2));
    let room = physical.map_or(usize::MAX, |bytes| bytes.saturating_sub(context));
    wanted.min(room).max(given)
}

/// Sizes shown to the model: `12.3 MB`.
pub(crate) fn human(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["bytes", "KB", "MB", "GB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The largest variables (the context excepted), largest first, for an error message:
/// "`all` (224.0 MB), `s` (32.0 MB)". Each is measured up to `stop_after` bytes.
pub(crate) fn largest(scope: &Scope<'static>, shown: usize, stop_after: usize) -> String {
    let count = scope.len();
    let mut sizes: Vec<(usize, &str)> = scope
        .iter_raw()
        .enumerate()
        .filter(|(back, _)| count - 1 - back != 0)
        .map(|(_, (name, _, value))| (estimate_bytes(value, stop_after), name))
        .collect();
    sizes.sort_by_key(|s| std::cmp::Reverse(s.0));
    sizes
        .iter()
        .take(shown)
        .map(|(bytes, name)| format!("`{name}` ({})", human(*bytes)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// After a block: removes the variables (never `context`, the first entry) that are over a
/// size limit, then, largest first, those that do not fit the memory budget. Returns the
/// bytes the variables kept hold (an estimate) and the message the model sees, if any
/// variable was removed.
pub(crate) fn fit_scope(
    scope: &mut Scope<'static>,
    limits: &SandboxLimits,
) -> (usize, Option<String>) {
    let budget = cap(limits.max_memory);
    let mut sizes: Vec<(usize, String, usize, bool)> = Vec::new();
    let count = scope.len();
    // `iter_raw` goes from the latest entry back; the context is the first entry.
    for (back, (name, _, value)) in scope.iter_raw().enumerate() {
        let index = count - 1 - back;
        if index == 0 {
            continue;
        }
        let over = over_size_limits(value, limits, 0);
        // Counted a little past the budget at most: enough to rank and to report.
        let bytes = estimate_bytes(value, budget.saturating_add(1));
        sizes.push((index, name.to_owned(), bytes, over));
    }
    let mut total: usize = sizes.iter().map(|s| s.2).fold(0, usize::saturating_add);
    let mut removed = vec![false; scope.len()];
    let mut lines = Vec::new();
    for (index, name, bytes, over) in &sizes {
        if *over {
            removed[*index] = true;
            total = total.saturating_sub(*bytes);
            lines.push(format!(
                "`{name}` ({}) was over a size limit (strings {} bytes, arrays {} items, maps \
                 {} entries) and was removed",
                human(*bytes),
                limits.max_string_size,
                limits.max_array_size,
                limits.max_map_size
            ));
        }
    }
    if total > budget {
        let mut by_size: Vec<&(usize, String, usize, bool)> =
            sizes.iter().filter(|s| !removed[s.0]).collect();
        by_size.sort_by_key(|s| std::cmp::Reverse(s.2));
        let over_by = total;
        for (index, name, bytes, _) in by_size {
            if total <= budget {
                break;
            }
            removed[*index] = true;
            total = total.saturating_sub(*bytes);
            lines.push(format!("`{name}` ({}) was removed", human(*bytes)));
        }
        lines.insert(
            0,
            format!(
                "the variables held about {} (the context excepted), over the memory budget \
                 of {} (--max-memory)",
                human(over_by),
                human(budget)
            ),
        );
    }
    if lines.is_empty() {
        return (total, None);
    }
    let entries = std::mem::take(scope).into_iter().enumerate();
    scope.extend(
        entries
            .filter(|(index, _)| !removed.get(*index).copied().unwrap_or(false))
            .map(|(_, (name, value, _))| (name, value.is_read_only(), value)),
    );
    let message = format!(
        "Error: memory: {}. Keep less: store counts, short summaries or the few items you \
         need instead of whole copies of the context; free a variable you no longer need with \
         `x = ();` (SHOW_VARS() lists sizes).",
        lines.join("; ")
    );
    (total, Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_count_strings_keys_and_slots() {
        let mut map = rhai::Map::new();
        map.insert("k".repeat(100).into(), Dynamic::from("v".repeat(1000)));
        let value = Dynamic::from_array(vec![Dynamic::from_map(map), Dynamic::from_int(1)]);
        let bytes = estimate_bytes(&value, usize::MAX);
        assert!((1100..1400).contains(&bytes), "{bytes}");
        assert!(estimate_bytes(&value, 10) < 1400);
    }

    #[test]
    fn a_fitted_budget_holds_two_copies_of_the_context_within_the_machine() {
        const GIB: usize = 1 << 30;
        // 1 GiB context on a 16 GiB machine: 1 GiB + 2 GiB.
        assert_eq!(fit_to_context(GIB, GIB, Some(16 * GIB)), 3 * GIB);
        // On a 3 GiB machine, no more than the memory left beside the context.
        assert_eq!(fit_to_context(GIB, GIB, Some(3 * GIB)), 2 * GIB);
        // Never below what was given, even on a machine too small for the context.
        assert_eq!(fit_to_context(GIB, GIB, Some(GIB)), GIB);
        // Where the machine's memory cannot be read, the context alone decides.
        assert_eq!(fit_to_context(GIB, 10, None), GIB + 20);
    }

    #[test]
    fn own_size_is_checked_in_constant_time() {
        let limits = SandboxLimits {
            max_array_size: 2,
            ..SandboxLimits::default()
        };
        let small = Dynamic::from_array(vec![Dynamic::from_int(1)]);
        let big = Dynamic::from_array(vec![Dynamic::from_int(1); 3]);
        assert!(check_own_size(&small, &limits).is_ok());
        assert!(check_own_size(&big, &limits).is_err());
    }

    #[test]
    fn scope_over_budget_loses_its_largest_variables_first() {
        let limits = SandboxLimits {
            max_memory: 10_000,
            ..SandboxLimits::default()
        };
        let mut scope = Scope::new();
        scope.push_constant_dynamic("context", Dynamic::from("c".repeat(50_000)));
        scope.push_dynamic("small", Dynamic::from("s".repeat(100)));
        scope.push_dynamic("big", Dynamic::from("b".repeat(20_000)));
        let message = fit_scope(&mut scope, &limits).1.unwrap_or_default();
        assert!(message.contains("`big`"), "{message}");
        assert!(!message.contains("`small`"), "{message}");
        assert!(scope.contains("context") && scope.contains("small"));
        assert!(!scope.contains("big"));
        assert_eq!(fit_scope(&mut scope, &limits).1, None);
    }
}
