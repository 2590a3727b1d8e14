//! The bounded queue between the topics a subscription matches and its stream writer.
//!
//! Producers are publish-stream tasks; they never wait: [`SubscriptionQueue::push`] applies the
//! subscription's [`OverflowPolicy`] when the queue is full and returns at once. The single
//! consumer is the subscription's stream writer, which takes messages out in batches.
//!
//! Every accepted message takes the next sequence number, whether it is later delivered or
//! dropped, so a receiver can see a gap in the numbers as well as in the `Dropped` count.
//! A message always fits into an empty queue, so the byte bound can be exceeded by at most one
//! payload.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cassini_protocol::OverflowPolicy;
use tokio::sync::Notify;

use crate::config::QueueBounds;
use crate::message::PublishedMessage;

/// A message waiting in a queue, with its sequence number in the subscription.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Position in the subscription.
    pub sequence: u64,
    /// The shared message.
    pub message: Arc<PublishedMessage>,
}

/// What happened to a pushed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Queued without dropping anything.
    Queued,
    /// Queued, after the policy dropped this many older messages.
    QueuedAfterDropping(u64),
    /// Not queued: the queue was full under `DropNewest`.
    DroppedNewest,
    /// Not queued: the queue overflowed under `Close` and is now closed.
    Overflowed,
    /// Not queued: the queue is closed.
    Closed,
}

/// What the consumer gets from [`SubscriptionQueue::pop_batch`].
#[derive(Debug, PartialEq, Eq)]
pub enum Popped {
    /// Messages were moved into the batch (possibly none, when only drops are to be reported);
    /// `dropped` were lost to the policy since the last pop.
    Batch {
        /// Messages dropped since the previous pop, to report before this batch.
        dropped: u64,
    },
    /// The queue was closed and is empty.
    Closed(CloseReason),
}

/// Why a queue closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The subscription ended normally (unsubscribe, session end).
    Ended,
    /// It overflowed under the `Close` policy.
    Overflow,
    /// The ACL no longer allows it (after a reload); what is queued is discarded.
    NotAuthorized,
}

/// Counters for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages queued now.
    pub depth: usize,
    /// Payload bytes queued now.
    pub bytes: usize,
    /// Messages dropped by the policy, in total.
    pub dropped_total: u64,
    /// The last sequence number assigned.
    pub last_sequence: u64,
}

#[derive(Debug)]
struct State {
    items: VecDeque<Queued>,
    bytes: usize,
    last_sequence: u64,
    dropped_unreported: u64,
    dropped_total: u64,
    closed: Option<CloseReason>,
}

/// A bounded multi-producer, single-consumer queue with an overflow policy.
#[derive(Debug)]
pub struct SubscriptionQueue {
    bounds: QueueBounds,
    state: Mutex<State>,
    ready: Notify,
    /// Whether a writer is draining the queue (the session is attached). Queue groups prefer
    /// attached members.
    attached: AtomicBool,
}

impl SubscriptionQueue {
    /// An empty queue with the given bounds.
    pub fn new(bounds: QueueBounds) -> Self {
        Self {
            bounds,
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                last_sequence: 0,
                dropped_unreported: 0,
                dropped_total: 0,
                closed: None,
            }),
            ready: Notify::new(),
            attached: AtomicBool::new(false),
        }
    }

    /// Records whether a writer is draining this queue.
    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Relaxed);
    }

    /// Whether a writer is draining this queue.
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    /// Whether a message of `size` bytes would be queued without dropping anything.
    pub fn has_room(&self, size: usize) -> bool {
        let state = self.lock();
        let max_messages = match self.bounds.overflow {
            OverflowPolicy::Latest => 1,
            _ => self.bounds.max_messages,
        };
        state.closed.is_none()
            && (state.items.is_empty()
                || (state.items.len() < max_messages
                    && state.bytes + size <= self.bounds.max_bytes))
    }

    /// Takes every queued message out (open or closed queue), for handing them to another
    /// member of a queue group when this member leaves.
    pub fn take_remaining(&self) -> Vec<Arc<PublishedMessage>> {
        let mut state = self.lock();
        state.bytes = 0;
        state.items.drain(..).map(|queued| queued.message).collect()
    }

    /// The bounds and policy of this queue.
    pub fn bounds(&self) -> QueueBounds {
        self.bounds
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every mutation
        // is a few field updates), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Offers a message. Never waits.
    pub fn push(&self, message: &Arc<PublishedMessage>) -> PushOutcome {
        let size = message.queued_size();
        let outcome = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return PushOutcome::Closed;
            }
            let max_messages = match self.bounds.overflow {
                OverflowPolicy::Latest => 1,
                _ => self.bounds.max_messages,
            };
            let fits = |state: &State| {
                state.items.is_empty()
                    || (state.items.len() < max_messages
                        && state.bytes + size <= self.bounds.max_bytes)
            };
            let mut dropped = 0u64;
            if !fits(&state) {
                match self.bounds.overflow {
                    OverflowPolicy::DropOldest | OverflowPolicy::Latest => {
                        while !fits(&state) {
                            let Some(old) = state.items.pop_front() else {
                                break;
                            };
                            state.bytes -= old.message.queued_size();
                            dropped += 1;
                        }
                    }
                    OverflowPolicy::DropNewest => {
                        state.last_sequence += 1;
                        state.dropped_unreported += 1;
                        state.dropped_total += 1;
                        return PushOutcome::DroppedNewest;
                    }
                    OverflowPolicy::Close => {
                        state.closed = Some(CloseReason::Overflow);
                        drop(state);
                        self.ready.notify_one();
                        return PushOutcome::Overflowed;
                    }
                }
            }
            state.last_sequence += 1;
            let sequence = state.last_sequence;
            state.bytes += size;
            state.items.push_back(Queued {
                sequence,
                message: Arc::clone(message),
            });
            state.dropped_unreported += dropped;
            state.dropped_total += dropped;
            if dropped == 0 {
                PushOutcome::Queued
            } else {
                PushOutcome::QueuedAfterDropping(dropped)
            }
        };
        self.ready.notify_one();
        outcome
    }

    /// Waits for messages and moves up to `max` of them into `batch`.
    ///
    /// After close, queued messages are still returned (for `Ended`); `Closed` comes once the
    /// queue is empty. An overflowed queue reports `Closed(Overflow)` at once.
    pub async fn pop_batch(&self, batch: &mut Vec<Queued>, max: usize) -> Popped {
        loop {
            {
                let mut state = self.lock();
                if let Some(reason @ (CloseReason::Overflow | CloseReason::NotAuthorized)) =
                    state.closed
                {
                    return Popped::Closed(reason);
                }
                if !state.items.is_empty() || state.dropped_unreported > 0 {
                    let take = state.items.len().min(max.max(1));
                    let state = &mut *state;
                    for queued in state.items.drain(..take) {
                        state.bytes -= queued.message.queued_size();
                        batch.push(queued);
                    }
                    let dropped = std::mem::take(&mut state.dropped_unreported);
                    return Popped::Batch { dropped };
                }
                if let Some(reason) = state.closed {
                    return Popped::Closed(reason);
                }
            }
            self.ready.notified().await;
        }
    }

    /// Closes the queue: further pushes are refused; the consumer drains what is queued.
    pub fn close(&self) {
        {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(CloseReason::Ended);
            }
        }
        self.ready.notify_one();
    }

    /// Closes the queue because the ACL no longer allows the subscription: further pushes are
    /// refused and the consumer gets `Closed(NotAuthorized)` at once, without what is queued.
    pub fn revoke(&self) {
        {
            let mut state = self.lock();
            state.closed = Some(CloseReason::NotAuthorized);
        }
        self.ready.notify_one();
    }

    /// Current counters.
    pub fn stats(&self) -> QueueStats {
        let state = self.lock();
        QueueStats {
            depth: state.items.len(),
            bytes: state.bytes,
            dropped_total: state.dropped_total,
            last_sequence: state.last_sequence,
        }
    }
}

#[cfg(test)]
mod tests;
