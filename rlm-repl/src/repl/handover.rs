//! Memory that crosses between a block's thread and the threads that make its sub-calls.
//!
//! With the counting allocator, a block's growth is what its own thread allocates minus what
//! it frees (see `rlm_alloc`). Memory handed over to other threads breaks that count both
//! ways unless it is accounted for by hand:
//!
//! - **Out**: a prompt the script built is shared with the request, not copied. When the
//!   script drops it while the cache (or a request still in flight) holds it, it is freed
//!   later on another thread, or only when the cache evicts it, and the block's thread would
//!   stay charged with it: a block sending many rounds of large prompts would be stopped for
//!   memory the script no longer holds. A [`ScriptText`] is what the requests share; once
//!   the script holds the string no more, the block's growth is discounted its bytes (looked
//!   for before the watchdog stops a block over its budget, and before a sub-call function
//!   reckons the answers' room in a block holding more than half of it), and when it is
//!   freed it is freed apart from any meter.
//! - **In**: replies are built on other threads. Freed by the script on the block's thread,
//!   they would take off its growth memory it was never charged with, and a script dropping
//!   answers in a loop could then grow past its budget. [`across`] makes the script's copy of
//!   what a host function returns on the block's thread (charged to the block: the script
//!   holds it) and frees the original apart.
//!
//! Everything a host function builds for the sub-calls in between (requests, events,
//! records) is built and freed apart from the meter too. Without the counting allocator (the
//! process's resident memory measures the block) none of this is needed, and nothing is done.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use rhai::{Array, Dynamic, EvalAltResult, ImmutableString, Map};
use rlm_core::{Text, TextOwner};

use super::subcall::BlockClock;

/// Rhai's string, inside an [`ImmutableString`].
type SmartString = smartstring::SmartString<smartstring::LazyCompact>;

/// A block that memory was handed over in: freeing that memory, or the script letting go of
/// it, discounts it from this block's growth.
#[derive(Clone)]
pub(crate) struct Handover {
    clock: Weak<BlockClock>,
    block: u64,
}

impl Handover {
    /// The running block of `clock`, when the counting allocator measures it.
    pub(crate) fn of(clock: &Arc<BlockClock>) -> Option<Self> {
        Some(Self {
            clock: Arc::downgrade(clock),
            block: clock.metered_block()?,
        })
    }

    /// `text` as request text, shared with the script, watched by the block's clock.
    pub(crate) fn share(&self, text: ImmutableString) -> Text {
        let shared = Arc::new(ScriptText {
            text: Some(text),
            from: self.clone(),
            released: AtomicBool::new(false),
        });
        if let Some(clock) = self.clock.upgrade() {
            clock.hand_over(self.block, Arc::downgrade(&shared));
        }
        Text::from_shared(shared)
    }
}

/// A script's string sent as a prompt (shared, not copied); see the module's documentation.
pub(crate) struct ScriptText {
    /// Always `Some` until dropped.
    text: Option<ImmutableString>,
    from: Handover,
    /// Whether the block was already discounted the string's bytes (see [`release`]).
    ///
    /// [`release`]: Self::release
    released: AtomicBool,
}

impl ScriptText {
    /// Once the script no longer holds the string (only this does), discounts it from the
    /// growth of the block it was sent in, through that block's `clock`, once: the string's
    /// buffer and its shared header, as the allocator counted them when the script built it.
    /// Returns the bytes.
    pub(crate) fn release(&self, clock: &BlockClock) -> usize {
        let Some(text) = &self.text else { return 0 };
        if text.strong_count() != 1 || self.released.swap(true, Ordering::SeqCst) {
            return 0;
        }
        let bytes = held_bytes(text);
        clock.discount(self.from.block, bytes);
        bytes
    }

    /// Whether the block may still discount it.
    pub(crate) fn watched(&self) -> bool {
        !self.released.load(Ordering::SeqCst)
    }
}

impl TextOwner for ScriptText {
    fn text(&self) -> &str {
        self.text.as_ref().map_or("", ImmutableString::as_str)
    }

    /// The string's buffer and its shared header: a string the script built by appending
    /// may hold twice its length.
    fn held_bytes(&self) -> usize {
        self.text.as_ref().map_or(0, held_bytes)
    }
}

/// The bytes `text` holds, as the allocator counted them when it was built: its buffer (when
/// not inline) and its shared header.
fn held_bytes(text: &ImmutableString) -> usize {
    let string: &SmartString = text.as_ref();
    let buffer = if string.is_inline() {
        0
    } else {
        string.capacity()
    };
    // An `Arc`'s header (two counts) and the string in it.
    buffer + 2 * size_of::<usize>() + size_of::<SmartString>()
}

impl Drop for ScriptText {
    fn drop(&mut self) {
        let text = self.text.take();
        // Freed only when this is the last holder (the script has dropped its own).
        let ((), moved) = rlm_alloc::unmetered(|| drop(text));
        if moved < 0 && !self.released.load(Ordering::SeqCst) {
            if let Some(clock) = self.from.clock.upgrade() {
                clock.discount(self.from.block, moved.unsigned_abs());
            }
        }
    }
}

/// Runs the host function `call`, whose work crosses threads: apart from the block's meter,
/// then its result copied for the script on the block's thread (see the module's
/// documentation). Arguments the script passed are dropped by the caller, after this.
/// First, what the block holds is settled against the memory `budget` (0: none), for the
/// answers' room.
pub(crate) fn across<T: Adopt>(clock: &BlockClock, budget: usize, call: impl FnOnce() -> T) -> T {
    if clock.metered_block().is_none() {
        return call();
    }
    clock.settle_held(budget);
    let (result, _) = rlm_alloc::unmetered(call);
    result.adopted()
}

/// A host function's result, copied for the script on the block's thread.
pub(crate) trait Adopt {
    /// The script's copy of `self`, made on this thread (metered); `self` is freed apart.
    fn adopted(self) -> Self;
}

impl Adopt for Dynamic {
    fn adopted(self) -> Self {
        let copy = deep_copy(&self);
        rlm_alloc::unmetered(|| drop(self));
        copy
    }
}

impl Adopt for String {
    fn adopted(self) -> Self {
        let copy = self.as_str().to_owned();
        rlm_alloc::unmetered(|| drop(self));
        copy
    }
}

impl Adopt for Array {
    fn adopted(self) -> Self {
        let copy = self.iter().map(deep_copy).collect();
        rlm_alloc::unmetered(|| drop(self));
        copy
    }
}

impl<T: Adopt> Adopt for Result<T, Box<EvalAltResult>> {
    fn adopted(self) -> Self {
        match self {
            Ok(value) => Ok(value.adopted()),
            Err(error) => {
                // Moved out of its box, which is freed apart.
                let (error, _) = rlm_alloc::unmetered(|| *error);
                Err(Box::new(match error {
                    EvalAltResult::ErrorRuntime(value, at) => {
                        EvalAltResult::ErrorRuntime(value.adopted(), at)
                    }
                    // The host functions fail with runtime errors only; another kind keeps
                    // its parts as they are.
                    other => other,
                }))
            }
        }
    }
}

/// A copy of `value` sharing no memory with it: strings, arrays, maps and blobs copied.
fn deep_copy(value: &Dynamic) -> Dynamic {
    let value = value.flatten_clone();
    if let Ok(text) = value.as_immutable_string_ref() {
        return Dynamic::from(ImmutableString::from(text.as_str()));
    }
    if let Ok(items) = value.as_array_ref() {
        return Dynamic::from_array(items.iter().map(deep_copy).collect());
    }
    if let Ok(map) = value.as_map_ref() {
        return Dynamic::from_map(
            map.iter()
                .map(|(key, item)| (key.as_str().into(), deep_copy(item)))
                .collect::<Map>(),
        );
    }
    if let Ok(blob) = value.as_blob_ref() {
        return Dynamic::from_blob(blob.clone());
    }
    value
}
