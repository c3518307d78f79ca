//! Locking shared state.

use std::sync::{Mutex, MutexGuard};

/// Locks a mutex, ignoring poisoning: every value guarded in this crate stays consistent
/// between statements.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
