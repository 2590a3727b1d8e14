//! The broker-wide memory budget: one count of the bytes the broker holds in messages (queued,
//! in flight, retained, waiting for the disk) and in frame buffers (partially received frames),
//! checked before new work is taken.
//!
//! A message is charged once, when it is accepted, for what it really holds
//! ([`PublishedMessage::memory_size`](crate::message::PublishedMessage::memory_size)), however
//! many queues share it, and released when its last copy is dropped: the count is exact by
//! construction ([`MemoryCharge`]). A publish that would take the count past the budget is
//! refused with `MEMORY_BUDGET_EXCEEDED`, as is a new subscription while the budget has no room
//! for one more frame of the maximum size.
//!
//! Frame buffers are charged per identity (`IdentityFrames`): every stream reader of every
//! connection of one certificate identity shares one count (with the MQTT gateway's read
//! buffers and decoded packets waiting for their connection), bounded by
//! `max_partial_frame_bytes_per_identity`. They count in the budget's `used` (so publishes are
//! refused sooner while they are large), but the budget refuses a frame buffer only once frame
//! buffers alone would hold all of it: a publisher whose large publish does not fit in what
//! messages left is answered `MEMORY_BUDGET_EXCEEDED` for that publish, not disconnected. A
//! buffer that would grow past either bound closes its connection with `PARTIAL_FRAMES_LIMIT`.
//! So the broker holds at most the budget in messages and at most the budget in frame
//! buffers.
//!
//! This module must not decide what is refused where; it only counts and answers, with a
//! [`MemoryError`] (which [`crate::error`] turns into a wire code like every other error).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What the budget refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemoryError {
    /// Taking this work would grow the broker past its memory budget.
    #[error(
        "the broker holds {used} of its {limit}-byte memory budget; this needs {requested} more"
    )]
    BudgetExceeded {
        /// Bytes held now.
        used: usize,
        /// The budget.
        limit: usize,
        /// What the refused work needed.
        requested: usize,
    },
    /// A frame buffer would hold more than allowed.
    #[error("partially received frames would hold {held} bytes; {what} allows {max}")]
    PartialFramesLimit {
        /// What they would hold.
        held: usize,
        /// The limit that refused it.
        max: usize,
        /// `"the identity's limit"` or `"the broker's memory budget"`.
        what: &'static str,
    },
}

/// The broker-wide count of held bytes and its limit.
#[derive(Debug)]
pub struct MemoryBudget {
    /// `limits.max_memory_bytes`.
    limit: usize,
    /// Bytes held by accepted messages.
    messages: AtomicUsize,
    /// Bytes held by stream readers' frame buffers.
    frame_buffers: AtomicUsize,
    /// The bound on one identity's frame buffers.
    max_frame_bytes_per_identity: usize,
    /// Each connected identity's frame-buffer count; an entry lives while a connection of the
    /// identity does.
    identities: Mutex<HashMap<Arc<str>, Arc<AtomicUsize>>>,
}

impl MemoryBudget {
    /// A budget of `limit` bytes whose identities may each hold
    /// `max_frame_bytes_per_identity` bytes in frame buffers.
    pub fn new(limit: usize, max_frame_bytes_per_identity: usize) -> Self {
        Self {
            limit,
            messages: AtomicUsize::new(0),
            frame_buffers: AtomicUsize::new(0),
            max_frame_bytes_per_identity,
            identities: Mutex::new(HashMap::new()),
        }
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now: messages and frame buffers.
    pub fn used(&self) -> usize {
        self.message_bytes()
            .saturating_add(self.frame_buffer_bytes())
    }

    /// Bytes held by accepted messages (queued, in flight, retained, waiting for the disk),
    /// and by the queue entries that hold them (each queue charges its own; see
    /// `queue::entries`).
    pub fn message_bytes(&self) -> usize {
        self.messages.load(Ordering::Relaxed)
    }

    /// Bytes held by frame buffers (partially received frames, and what a reader keeps).
    pub fn frame_buffer_bytes(&self) -> usize {
        self.frame_buffers.load(Ordering::Relaxed)
    }

    /// Refuses new work of `requested` bytes when it does not fit in what is left.
    pub fn check_room(&self, requested: usize) -> Result<(), MemoryError> {
        let used = self.used();
        if used.saturating_add(requested) > self.limit {
            return Err(MemoryError::BudgetExceeded {
                used,
                limit: self.limit,
                requested,
            });
        }
        Ok(())
    }

    /// Charges a message of `bytes` if it fits; the charge is released when dropped.
    /// Concurrent admissions may each pass the check before the others add: the overshoot is
    /// at most one message per publishing stream.
    pub fn charge_message(self: &Arc<Self>, bytes: usize) -> Result<MemoryCharge, MemoryError> {
        self.check_room(bytes)?;
        Ok(self.force_message(bytes))
    }

    /// Charges a message of `bytes` whether or not it fits: for what the broker already holds
    /// (a copy of an accepted message, a message recovered from disk).
    pub fn force_message(self: &Arc<Self>, bytes: usize) -> MemoryCharge {
        self.messages.fetch_add(bytes, Ordering::Relaxed);
        MemoryCharge {
            budget: Some(Arc::clone(self)),
            bytes,
        }
    }

    /// Counts `bytes` more held by queue entries: whether or not they fit, since the messages
    /// are already accepted (a full budget refuses the next publish).
    pub(crate) fn hold_entries(&self, bytes: usize) {
        self.messages.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` fewer held by queue entries.
    pub(crate) fn release_entries(&self, bytes: usize) {
        self.messages.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// The frame-buffer count of `identity`, shared by the readers of all its connections.
    pub(crate) fn frames_for(self: &Arc<Self>, identity: &Arc<str>) -> IdentityFrames {
        let mut identities = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        let held = Arc::clone(
            identities
                .entry(Arc::clone(identity))
                .or_insert_with(|| Arc::new(AtomicUsize::new(0))),
        );
        IdentityFrames {
            budget: Arc::clone(self),
            identity: Arc::clone(identity),
            held,
        }
    }
}

/// The bytes one accepted message holds, counted in the budget until dropped. Cloning charges
/// the same bytes again (a clone of a message is a second copy of its headers).
#[derive(Debug, Default)]
pub struct MemoryCharge {
    budget: Option<Arc<MemoryBudget>>,
    bytes: usize,
}

impl MemoryCharge {
    /// A charge against no budget (messages built outside the broker, in tests).
    pub fn none() -> Self {
        Self::default()
    }

    /// The bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Clone for MemoryCharge {
    fn clone(&self) -> Self {
        match &self.budget {
            Some(budget) => budget.force_message(self.bytes),
            None => Self::none(),
        }
    }
}

impl Drop for MemoryCharge {
    fn drop(&mut self) {
        if let Some(budget) = &self.budget {
            budget.messages.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

/// One identity's frame-buffer count, held by each of its connections.
#[derive(Debug)]
pub(crate) struct IdentityFrames {
    budget: Arc<MemoryBudget>,
    identity: Arc<str>,
    held: Arc<AtomicUsize>,
}

impl IdentityFrames {
    /// A charge of nothing yet, for one stream reader.
    pub(crate) fn reader(self: &Arc<Self>) -> FrameBufferCharge {
        FrameBufferCharge {
            frames: Arc::clone(self),
            bytes: 0,
        }
    }
}

impl Drop for IdentityFrames {
    fn drop(&mut self) {
        let mut identities = self
            .budget
            .identities
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The map's reference and ours: no other connection of the identity is left.
        if Arc::strong_count(&self.held) <= 2 {
            identities.remove(&self.identity);
        }
    }
}

/// What one stream reader's buffer holds, counted for its identity and in the budget (also
/// what a read buffer outside the broker's transports holds: see
/// [`BrokerHandle::read_buffer_charge`](crate::BrokerHandle::read_buffer_charge)).
#[derive(Debug)]
pub struct FrameBufferCharge {
    frames: Arc<IdentityFrames>,
    bytes: usize,
}

impl FrameBufferCharge {
    /// The bytes charged: the most the buffer held since it was last given back.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Records that the buffer may now hold `bytes`: the charge only grows (a buffer's
    /// capacity shrinks as frames are split off its front, but its allocation stays) until
    /// [`FrameBufferCharge::resize`] sets it lower when the buffer is given back.
    pub fn grow_to(&mut self, bytes: usize) -> Result<(), MemoryError> {
        if bytes <= self.bytes {
            return Ok(());
        }
        self.resize(bytes)
    }

    /// Records that the buffer now holds `bytes`; refuses growth past the identity's bound, or
    /// once frame buffers alone would hold the whole budget (the charge then stays as it was).
    pub fn resize(&mut self, bytes: usize) -> Result<(), MemoryError> {
        if bytes == self.bytes {
            return Ok(());
        }
        let frames = &self.frames;
        let budget = &frames.budget;
        if bytes < self.bytes {
            let less = self.bytes - bytes;
            frames.held.fetch_sub(less, Ordering::Relaxed);
            budget.frame_buffers.fetch_sub(less, Ordering::Relaxed);
            self.bytes = bytes;
            return Ok(());
        }
        let more = bytes - self.bytes;
        let max = budget.max_frame_bytes_per_identity;
        let held = frames
            .held
            .fetch_add(more, Ordering::Relaxed)
            .saturating_add(more);
        if held > max {
            frames.held.fetch_sub(more, Ordering::Relaxed);
            return Err(MemoryError::PartialFramesLimit {
                held,
                max,
                what: "the identity's limit",
            });
        }
        let buffers = budget
            .frame_buffers
            .fetch_add(more, Ordering::Relaxed)
            .saturating_add(more);
        if buffers > budget.limit {
            budget.frame_buffers.fetch_sub(more, Ordering::Relaxed);
            frames.held.fetch_sub(more, Ordering::Relaxed);
            return Err(MemoryError::PartialFramesLimit {
                held: buffers,
                max: budget.limit,
                what: "the broker's memory budget",
            });
        }
        self.bytes = bytes;
        Ok(())
    }
}

impl Drop for FrameBufferCharge {
    fn drop(&mut self) {
        let _ = self.resize(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_charge_is_released_once_per_copy() {
        let budget = Arc::new(MemoryBudget::new(1000, 100));
        let charge = budget.charge_message(600).unwrap_or_default();
        assert_eq!(budget.message_bytes(), 600);
        assert!(budget.charge_message(600).is_err());
        let copy = charge.clone();
        assert_eq!(budget.message_bytes(), 1200);
        drop(charge);
        drop(copy);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn an_identity_shares_one_frame_bound_across_its_connections() {
        let budget = Arc::new(MemoryBudget::new(1 << 30, 100_000));
        let identity: Arc<str> = Arc::from("eve");
        let first = Arc::new(budget.frames_for(&identity));
        let second = Arc::new(budget.frames_for(&identity));
        let mut a = first.reader();
        let mut b = second.reader();
        assert!(a.resize(60_000).is_ok());
        assert!(b.resize(60_000).is_err(), "the identity's bound is shared");
        assert!(b.resize(40_000).is_ok());
        assert_eq!(budget.frame_buffer_bytes(), 100_000);
        drop(a);
        drop(b);
        assert_eq!(budget.frame_buffer_bytes(), 0);
        drop(first);
        drop(second);
        assert!(budget
            .identities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty());
    }
}
