//! Locking that survives a panicked holder.
//!
//! The client's mutexes guard small tables that every update leaves consistent, so a lock
//! poisoned by a panic elsewhere is still safe to use; refusing it would only turn one failure
//! into many.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Locks `mutex`, ignoring poisoning.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
