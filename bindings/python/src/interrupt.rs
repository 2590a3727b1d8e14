//! Interrupting a read that waits: a subscription's or responder's `wait` holds its lock while
//! it waits for the next item, and `unsubscribe` and `close` must not wait behind it.
//!
//! [`Interrupt::interrupt`] makes the waiting read (or the next one) give the lock back at
//! once, without an item; [`Interrupt::close`] also makes it end the subscription. A wake left
//! for a read that was not waiting makes the next read return early, once, and Python asks
//! again: nothing is lost (the reads are cancel-safe).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub(crate) struct Interrupt {
    wake: Notify,
    closed: AtomicBool,
}

impl Interrupt {
    /// Makes the waiting read give its lock back.
    pub(crate) fn interrupt(&self) {
        self.wake.notify_one();
    }

    /// Makes the waiting read end the subscription, and every later one find it ended.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Whether [`Interrupt::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Completes when the read is interrupted.
    pub(crate) async fn interrupted(&self) {
        self.wake.notified().await;
    }
}
