//! One watchdog thread for every running block of the process.
//!
//! A block is watched from the moment it starts until it ends (see [`Shared::look`]): the
//! watchdog looks at each block every [`POLL`] (or at a block's deadline, when sooner) and
//! raises its halt flag when it must stop, which the engine reads at every operation. One
//! thread for all blocks, rather than one per block: a hundred runs waiting on their
//! sub-calls cost one wake-up every [`POLL`], not a hundred, and no thread is started per
//! block. With no block running the thread sleeps until one starts.

use std::sync::{Arc, Mutex};
use std::thread::Thread;
use std::time::Duration;

use super::Shared;
use crate::sync::lock;

/// How often each running block is looked at.
const POLL: Duration = Duration::from_millis(10);

/// The blocks being watched, and the thread that watches them.
struct Watched {
    next_id: u64,
    blocks: Vec<(u64, Arc<Shared>)>,
    /// `None` until the first block; stays `None` if the thread could not start (the engine's
    /// own checks are then the backstop).
    thread: Option<Thread>,
    /// The thread could not be started: not tried again.
    failed: bool,
}

static WATCHED: Mutex<Watched> = Mutex::new(Watched {
    next_id: 0,
    blocks: Vec::new(),
    thread: None,
    failed: false,
});

/// A block being watched: watched no more when dropped.
pub(super) struct Watch {
    id: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut watched = lock(&WATCHED);
        if let Some(i) = watched.blocks.iter().position(|(id, _)| *id == self.id) {
            watched.blocks.swap_remove(i);
        }
    }
}

/// Watches the block about to run on `shared`, until the returned guard is dropped. `None`
/// if the watchdog thread cannot run.
pub(super) fn watch(shared: &Arc<Shared>) -> Option<Watch> {
    let mut watched = lock(&WATCHED);
    if watched.thread.is_none() {
        if watched.failed {
            return None;
        }
        match std::thread::Builder::new()
            .name("rlm-repl-watchdog".into())
            .stack_size(256 << 10)
            .spawn(run)
        {
            Ok(handle) => watched.thread = Some(handle.thread().clone()),
            Err(_) => {
                watched.failed = true;
                return None;
            }
        }
    }
    let id = watched.next_id;
    watched.next_id += 1;
    watched.blocks.push((id, Arc::clone(shared)));
    if let Some(thread) = &watched.thread {
        thread.unpark();
    }
    Some(Watch { id })
}

/// The watchdog: looks at every running block, then sleeps until the next look is due (or
/// a block starts).
fn run() {
    let mut blocks = Vec::new();
    loop {
        blocks.clear();
        blocks.extend(
            lock(&WATCHED)
                .blocks
                .iter()
                .map(|(_, shared)| Arc::clone(shared)),
        );
        if blocks.is_empty() {
            // A block that starts now unparks this thread: the park returns at once.
            std::thread::park();
            continue;
        }
        let mut sleep = POLL;
        for shared in &blocks {
            if let Some(left) = shared.look() {
                sleep = sleep.min(left);
            }
        }
        // The last references to a run's state may be these: dropped here, not held asleep.
        blocks.clear();
        std::thread::park_timeout(sleep);
    }
}
