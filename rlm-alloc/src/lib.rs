//! A counting global allocator: the bytes each *metered* thread allocated minus those it
//! freed, readable from any thread.
//!
//! The REPL's memory budget (`--max-memory`) limits how much a code block's script may grow.
//! Measured as the growth of the process's resident memory, every block running in the same
//! process (the runs of `rlm serve` or `rlm batch`) would be charged with what the others
//! allocate, and one heavy run would stop all the others. With [`Counting`] as the global
//! allocator, a block is charged with what its own evaluation thread allocates:
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: rlm_alloc::Counting = rlm_alloc::Counting;
//!
//! let meter = rlm_alloc::Meter::current().expect("Counting is the global allocator");
//! let before = meter.bytes();
//! let held = vec![0u8; 1 << 20];
//! assert!(meter.bytes() - before >= 1 << 20);
//! drop(held);
//! ```
//!
//! A thread is metered once it asked for its [`Meter`]; other threads pay one thread-local
//! read per allocation. Memory freed on another thread than the one that allocated it counts
//! there: a metered thread's figure is what it allocated and freed itself. Where memory
//! crosses between threads on purpose (a request handed to other threads, a reply handed
//! back), [`unmetered`] keeps the hand-over off the thread's meter and says how many bytes it
//! moved, so the caller can account for them where they belong:
//!
//! ```
//! #[global_allocator]
//! static ALLOCATOR: rlm_alloc::Counting = rlm_alloc::Counting;
//!
//! let meter = rlm_alloc::Meter::current().expect("Counting is the global allocator");
//! let before = meter.bytes();
//! let (reply, moved) = rlm_alloc::unmetered(|| vec![0u8; 1 << 20]);
//! assert!(moved >= 1 << 20);
//! assert!(meter.bytes() - before < 1 << 10);
//! drop(reply); // freed here, metered: the meter goes down by what it never counted
//! assert!(meter.bytes() - before <= -(1 << 20) + (1 << 10));
//! ```
//!
//! Without [`Counting`] as the global allocator, [`Meter::current`] is `None` and the caller
//! falls back to what it had (the REPL: the process's resident memory).

#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// The system allocator, counting what each metered thread allocates and frees.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counting;

/// Whether an allocation went through [`Counting`]: it is the global allocator.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// What the allocator keeps for one thread.
struct ThreadState {
    /// This thread's counter, once it is metered. Never freed (one word per metered thread),
    /// so the allocator can count into it until the thread's very end.
    counter: Cell<Option<&'static AtomicIsize>>,
    /// Whether an [`unmetered`] section runs: its bytes go to `apart`, not to `counter`.
    diverted: Cell<bool>,
    /// Bytes allocated minus freed in [`unmetered`] sections (a running sum; each section
    /// reads its own difference).
    apart: Cell<isize>,
}

thread_local! {
    static STATE: ThreadState = const {
        ThreadState {
            counter: Cell::new(None),
            diverted: Cell::new(false),
            apart: Cell::new(0),
        }
    };
}

#[inline]
fn count(bytes: isize) {
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    let _ = STATE.try_with(|state| {
        if state.diverted.get() {
            state.apart.set(state.apart.get().wrapping_add(bytes));
        } else if let Some(counter) = state.counter.get() {
            counter.fetch_add(bytes, Ordering::Relaxed);
        }
    });
}

/// Runs `f` with this thread's allocations and frees kept off its [`Meter`] (metered or not),
/// and returns with `f`'s result the bytes `f` allocated minus those it freed on this thread
/// (0 when [`Counting`] is not the global allocator).
///
/// For memory that crosses threads on purpose: what a thread builds to hand to others (who
/// free it), and the freeing of what others built and handed to it. Sections nest; an inner
/// section's bytes count in the outer one's too.
pub fn unmetered<R>(f: impl FnOnce() -> R) -> (R, isize) {
    /// Ends the section, even when `f` unwinds.
    struct Section(bool);
    impl Drop for Section {
        fn drop(&mut self) {
            let _ = STATE.try_with(|state| state.diverted.set(self.0));
        }
    }
    let Ok((was, start)) =
        STATE.try_with(|state| (state.diverted.replace(true), state.apart.get()))
    else {
        // The thread is ending and keeps no state any more: nothing is metered.
        return (f(), 0);
    };
    let section = Section(was);
    let result = f();
    let moved = STATE
        .try_with(|state| state.apart.get().wrapping_sub(start))
        .unwrap_or(0);
    drop(section);
    (result, moved)
}

/// A size as a signed count (an allocation is never larger than `isize::MAX`).
#[inline]
fn signed(size: usize) -> isize {
    isize::try_from(size).unwrap_or(isize::MAX)
}

/// `ptr`, counting `bytes` when the allocation succeeded.
#[inline]
fn counted(ptr: *mut u8, bytes: isize) -> *mut u8 {
    if !ptr.is_null() {
        count(bytes);
    }
    ptr
}

// SAFETY: every method forwards to `System` with the arguments it was given, under the same
// contract, and only counts sizes besides; the counting neither allocates nor unwinds.
//
// The methods are not `#[inline]`: they are compiled here, optimised as this crate is,
// whatever the profile of the binary that installs the allocator (the `rlm` binary's own
// crate is built at a low opt-level to build fast; compiled there, every allocation of the
// process went through unoptimised code).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `GlobalAlloc::alloc`.
        counted(unsafe { System.alloc(layout) }, signed(layout.size()))
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `GlobalAlloc::alloc_zeroed`.
        counted(
            unsafe { System.alloc_zeroed(layout) },
            signed(layout.size()),
        )
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract for `GlobalAlloc::dealloc`.
        unsafe { System.dealloc(ptr, layout) };
        count(-signed(layout.size()));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract for `GlobalAlloc::realloc`.
        counted(
            unsafe { System.realloc(ptr, layout, new_size) },
            signed(new_size) - signed(layout.size()),
        )
    }
}

/// Whether [`Counting`] is the global allocator (it has served an allocation), without
/// metering the calling thread.
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// The bytes one thread allocated minus those it freed since it was first metered; read
/// from any thread.
#[derive(Debug, Clone, Copy)]
pub struct Meter(&'static AtomicIsize);

impl Meter {
    /// This thread's meter (from now on the thread is metered), or `None` when [`Counting`] is
    /// not the global allocator.
    pub fn current() -> Option<Self> {
        if !INSTALLED.load(Ordering::Relaxed) {
            return None;
        }
        STATE
            .try_with(|state| {
                let counter = state.counter.get().unwrap_or_else(|| {
                    let new: &'static AtomicIsize = Box::leak(Box::new(AtomicIsize::new(0)));
                    state.counter.set(Some(new));
                    new
                });
                Self(counter)
            })
            .ok()
    }

    /// Bytes allocated minus bytes freed on the thread since it was first metered (negative
    /// when it freed more than it allocated).
    pub fn bytes(&self) -> isize {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    #[test]
    fn a_thread_is_charged_with_its_own_allocations_only() {
        // Any allocation shows the allocator installed.
        drop(std::hint::black_box(Box::new(0u64)));
        assert!(installed());
        let meter = Meter::current().expect("installed");
        let before = meter.bytes();
        // Another thread allocating much is not charged here.
        let other = std::thread::spawn(|| {
            let mine = Meter::current().expect("installed");
            let start = mine.bytes();
            let big = vec![1u8; 8 << 20];
            let grew = mine.bytes() - start;
            drop(big);
            grew
        })
        .join()
        .expect("the thread ends");
        assert!(other >= 8 << 20, "{other}");
        assert!(
            meter.bytes() - before < 1 << 20,
            "{}",
            meter.bytes() - before
        );
        // Its own allocation is, and its release.
        let held = vec![2u8; 4 << 20];
        assert!(meter.bytes() - before >= 4 << 20);
        let mut grown = held;
        grown.reserve_exact(4 << 20);
        assert!(meter.bytes() - before >= 8 << 20);
        drop(grown);
        assert!(meter.bytes() - before < 1 << 20);
    }

    #[test]
    fn an_unmetered_section_is_kept_off_the_meter_and_says_what_it_moved() {
        drop(std::hint::black_box(Box::new(0u64)));
        let meter = Meter::current().expect("installed");
        let before = meter.bytes();
        // Built in a section: not on the meter, reported as moved.
        let (handed, moved) = unmetered(|| vec![3u8; 4 << 20]);
        assert!(moved >= 4 << 20, "{moved}");
        assert!((meter.bytes() - before).abs() < 1 << 10);
        // Freed in a section: not on the meter either, reported as moved back.
        let ((), back) = unmetered(|| drop(handed));
        assert!(back <= -(4 << 20), "{back}");
        assert!((meter.bytes() - before).abs() < 1 << 10);
        // Sections nest: the inner one's bytes count in the outer one's; after both, the
        // thread is metered again.
        let ((inner, kept), outer) = unmetered(|| {
            let (kept, inner) = unmetered(|| vec![4u8; 1 << 20]);
            let extra = vec![5u8; 1 << 20];
            drop(std::hint::black_box(extra));
            (inner, kept)
        });
        assert!(inner >= 1 << 20 && outer >= inner, "{inner} {outer}");
        assert!((meter.bytes() - before).abs() < 1 << 10);
        let metered = vec![6u8; 2 << 20];
        assert!(meter.bytes() - before >= 2 << 20);
        drop((metered, kept));
        // A section that unwinds still ends.
        let unwound = std::panic::catch_unwind(|| unmetered(|| panic!("inside")));
        assert!(unwound.is_err());
        let after_panic = meter.bytes();
        let metered = vec![7u8; 1 << 20];
        assert!(meter.bytes() - after_panic >= 1 << 20);
        drop(metered);
    }
}
