//! The bounded queue between the topics a subscription matches and its stream writer.
//!
//! Producers are publish-stream tasks; they never wait: [`SubscriptionQueue::push`] applies the
//! subscription's [`OverflowPolicy`] when the queue is full and returns at once. The single
//! consumer is the subscription's current stream writer, which takes messages out in batches.
//!
//! Every accepted message takes the next sequence number, whether it is later delivered or
//! dropped, so a receiver can see a gap in the numbers; the writer announces each gap with a
//! `Gap` frame. The byte bound counts what each message really holds
//! ([`PublishedMessage::memory_size`]: payload, topic, headers, `reply_to`, the struct). A message
//! always fits into an empty queue, so the byte bound can be exceeded by at most one message. With an age bound ([`QueueBounds::max_age`]) a message that waited
//! unsent longer is dropped, counted like an overflow drop, when the writer next takes from the
//! queue.
//!
//! An at-least-once subscription ([`QueueBounds::acks`]) also keeps every message it handed to a
//! writer until the client acknowledges it: at most `max_in_flight` messages and the byte bound
//! in message bytes. Unacknowledged messages are handed out again, marked as redeliveries, to the
//! writer of the next attachment (after a reconnect) and when their ack timeout passes. The
//! overflow policy only ever drops messages not yet sent; a message in flight is kept until it
//! is acknowledged or the subscription ends.
//!
//! Each writer works for one [`Attachment`]; once a newer attachment began, an older writer gets
//! nothing more, so a writer for a dying connection cannot take messages meant for the next one.
//!
//! In disk mode a queue writes through to the store (`QueueStore`) under its own lock, so the
//! store sees each subscription's changes in the order they happened: every assigned sequence,
//! and for an at-least-once subscription every accepted message, and every message that left
//! for good (acknowledged, or dropped by the policy before it was sent). A queue rebuilt from
//! the store (`SubscriptionQueue::restore`) holds its stored messages as unacknowledged, due
//! to be sent again, marked redelivered.
//!
//! Each queue charges the entries it holds to the broker's memory budget (`entries`), so the
//! budget bounds what a message offered to many subscriptions costs, not only its bytes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use cassini_protocol::{OverflowPolicy, SequenceRange};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::QueueBounds;
use crate::memory::MemoryBudget;
use crate::message::PublishedMessage;
use crate::storage::session_records::InboxSlot;
use crate::storage::{QueueStore, SessionStore};

/// How far beyond the last sequence a restored queue knows a resuming client may stand: the
/// sequences the broker assigned and had not yet committed when it stopped. Far more than any
/// uncommitted batch holds; a claim beyond it is ignored.
const MAX_AHEAD_OF_STORE: u64 = 1 << 32;

/// The most ranges of sequences lost on a cluster route a queue remembers until its writer
/// announces them; beyond it the oldest range is forgotten and announced as `Overflow`
/// instead of `ClusterRoute` (still a gap, only with the less precise reason).
const MAX_ROUTE_LOST_RANGES: usize = 1024;

/// A message waiting in a queue or handed to a writer, with its sequence number in the
/// subscription.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Position in the subscription.
    pub sequence: u64,
    /// The shared message.
    pub message: Arc<PublishedMessage>,
    /// Whether it was handed to a writer before (at-least-once subscriptions only).
    pub redelivered: bool,
    /// When it was queued, for the age bound; read only when the queue has one (a clock read
    /// per message shows in the profile).
    pub queued_at: Option<Instant>,
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
    /// Messages were moved into the batch (possibly none, when only drops are to be reported).
    Batch {
        /// Messages dropped by the policy since the previous pop.
        dropped: u64,
        /// The last sequence number the queue assigned, as of this pop.
        last_sequence: u64,
        /// Whether every message not yet sent, and every one due to be sent again, is in this
        /// batch: sequences after the batch up to `last_sequence` were dropped.
        drained: bool,
    },
    /// The queue was closed and is empty.
    Closed(CloseReason),
    /// A newer attachment began: this writer's connection is no longer the subscription's.
    Superseded,
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

/// Where a new writer starts, from [`SubscriptionQueue::attach`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attachment {
    /// Identifies the attachment; pops for an older one get [`Popped::Superseded`].
    pub id: u64,
    /// The first sequence the client has not received: anything below the first message the
    /// writer sends from here is a gap.
    pub next_expected: u64,
    /// Sequences up to here were handed to an earlier writer; those the client did not receive
    /// were lost with that connection (at-most-once), and the rest of a gap was dropped by the
    /// overflow policy.
    pub undelivered_through: u64,
    /// Every sequence from `next_expected` up to here is known, at the attach, never to reach
    /// the client (nothing queued is below it): the writer announces that gap at once, so a
    /// client resuming onto a quiet topic hears of its loss without waiting for a message.
    pub lost_through: u64,
}

/// Counters for monitoring and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages queued now (not yet sent).
    pub depth: usize,
    /// Payload bytes queued now.
    pub bytes: usize,
    /// Messages sent and not yet acknowledged (at-least-once subscriptions).
    pub in_flight: usize,
    /// Messages dropped by the policy, in total.
    pub dropped_total: u64,
    /// Messages handed out again, in total.
    pub redelivered_total: u64,
    /// The last sequence number assigned.
    pub last_sequence: u64,
    /// Messages a writer took out of the queue and has not finished writing (see
    /// [`SubscriptionQueue::writing`]).
    pub unwritten: usize,
}

/// Counts a batch as taken but not yet written until dropped; see
/// [`SubscriptionQueue::writing`].
#[derive(Debug)]
pub struct UnwrittenBatch<'a> {
    queue: &'a SubscriptionQueue,
    messages: usize,
    /// What the batch counts in the queue's byte bound meanwhile (at most once: see
    /// [`SubscriptionQueue::writing`]).
    bytes: usize,
}

impl Drop for UnwrittenBatch<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            let mut state = self.queue.lock();
            state.writing_bytes = state.writing_bytes.saturating_sub(self.bytes);
        }
        self.queue
            .unwritten
            .fetch_sub(self.messages, Ordering::Relaxed);
        self.queue.progressed();
    }
}

/// A message sent and not yet acknowledged.
#[derive(Debug)]
struct InFlight {
    message: Arc<PublishedMessage>,
    /// When it was last handed to a writer; it is due again at this plus the ack timeout.
    sent_at: Instant,
}

/// The at-least-once state of a queue.
#[derive(Debug)]
struct AckState {
    max_in_flight: usize,
    timeout: Duration,
    unacked: BTreeMap<u64, InFlight>,
    unacked_bytes: usize,
    /// Unacknowledged sequences due to be handed out again.
    due: BTreeSet<u64>,
    /// No message in flight falls due before this (it may be earlier than the first that
    /// does: an acknowledgement does not move it); `None`: none in flight is waiting to.
    /// Spares [`AckState::expire`] its look at every message in flight on every wake-up.
    next_due: Option<Instant>,
}

impl AckState {
    fn has_window_for(&self, size: usize, max_bytes: usize) -> bool {
        self.unacked.is_empty()
            || (self.unacked.len() < self.max_in_flight && self.unacked_bytes + size <= max_bytes)
    }

    /// Marks every message sent before `now - timeout` as due; returns the earliest time a
    /// message still in flight may fall due.
    fn expire(&mut self, now: Instant) -> Option<Instant> {
        match self.next_due {
            None => return None,
            Some(next_due) if next_due > now => return Some(next_due),
            Some(_) => {}
        }
        let mut next = None::<Instant>;
        for (sequence, in_flight) in &self.unacked {
            if self.due.contains(sequence) {
                continue;
            }
            let deadline = in_flight.sent_at + self.timeout;
            if deadline <= now {
                self.due.insert(*sequence);
            } else {
                next = Some(next.map_or(deadline, |next| next.min(deadline)));
            }
        }
        self.next_due = next;
        next
    }

    /// A message handed out at `now` falls due at `now + timeout`.
    fn sent(&mut self, now: Instant) {
        let due = now + self.timeout;
        self.next_due = Some(self.next_due.map_or(due, |next| next.min(due)));
    }
}

#[derive(Debug)]
struct State {
    items: VecDeque<Queued>,
    bytes: usize,
    /// Bytes of at-most-once messages a writer took out and has not finished writing: they
    /// count in the byte bound until written, so a writer stalled on its stream holds at most
    /// the bound with the queue, not the bound twice.
    writing_bytes: usize,
    last_sequence: u64,
    /// The highest sequence ever handed to a writer.
    last_sent: u64,
    dropped_unreported: u64,
    /// Ranges of sequences lost on a cluster route, not yet taken by a writer, oldest first.
    route_lost: VecDeque<(u64, u64)>,
    dropped_total: u64,
    redelivered_total: u64,
    closed: Option<CloseReason>,
    attachment: u64,
    acks: Option<AckState>,
    /// Restored from the store and not attached since: the client may stand beyond
    /// `last_sequence` (see [`SubscriptionQueue::attach`]).
    restored: bool,
    /// Entries charged to the memory budget (see `entries`).
    charged_entries: usize,
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
    /// Where the queue writes through to, in disk mode.
    store: Option<QueueStore>,
    /// Whether the subscription still needs its filter's retained values (false once restored
    /// from the store: it received them in its earlier life).
    wants_retained: AtomicBool,
    /// Messages popped by a writer and not yet written to its stream.
    unwritten: AtomicUsize,
    /// Told when the queue may have become delivered (a batch written, an acknowledgement, the
    /// writer idle): the session's, for a shutdown's drain to wait on instead of polling.
    progress: OnceLock<Arc<Notify>>,
    /// Whether its overflow under `Close` was reported as a system event (by whoever saw it
    /// first: the periodic look, or the session when the subscription ended).
    overflow_reported: AtomicBool,
    /// When the subscription was made (for a resend through another node: a subscription made
    /// after the first copy was handed out never had it).
    created_at: std::time::Instant,
    /// The budget its entries are charged to, once the broker gave it one.
    budget: OnceLock<Arc<MemoryBudget>>,
}

impl SubscriptionQueue {
    /// An empty queue with the given bounds.
    pub fn new(bounds: QueueBounds) -> Self {
        Self::with_store(bounds, None)
    }

    /// An empty queue that writes through to `store` (disk mode).
    pub(crate) fn with_store(bounds: QueueBounds, store: Option<QueueStore>) -> Self {
        Self {
            bounds,
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                writing_bytes: 0,
                last_sequence: 0,
                last_sent: 0,
                dropped_unreported: 0,
                route_lost: VecDeque::new(),
                dropped_total: 0,
                redelivered_total: 0,
                closed: None,
                attachment: 0,
                restored: false,
                charged_entries: 0,
                acks: bounds.acks.map(|acks| AckState {
                    max_in_flight: acks.max_in_flight.max(1),
                    timeout: acks.timeout,
                    unacked: BTreeMap::new(),
                    unacked_bytes: 0,
                    due: BTreeSet::new(),
                    next_due: None,
                }),
            }),
            ready: Notify::new(),
            attached: AtomicBool::new(false),
            store,
            wants_retained: AtomicBool::new(true),
            unwritten: AtomicUsize::new(0),
            progress: OnceLock::new(),
            overflow_reported: AtomicBool::new(false),
            created_at: std::time::Instant::now(),
            budget: OnceLock::new(),
        }
    }

    /// When the queue (its subscription) was made.
    pub fn created_at(&self) -> std::time::Instant {
        self.created_at
    }

    /// A queue rebuilt from the store after a restart: sequences continue after
    /// `last_sequence`, and the stored `messages` (sequence order) are unacknowledged, handed out
    /// again first, marked redelivered. Their count may exceed the in-flight window; nothing new
    /// is sent until acknowledgements bring it below.
    pub(crate) fn restore(
        bounds: QueueBounds,
        store: Option<QueueStore>,
        last_sequence: u64,
        messages: Vec<(u64, Arc<PublishedMessage>)>,
    ) -> Self {
        let queue = Self::with_store(bounds, store);
        queue.wants_retained.store(false, Ordering::Relaxed);
        {
            let mut state = queue.lock();
            let last = messages
                .iter()
                .map(|(sequence, _)| *sequence)
                .max()
                .unwrap_or(0)
                .max(last_sequence);
            state.last_sequence = last;
            state.last_sent = last;
            state.restored = true;
            let now = Instant::now();
            if let Some(acks) = &mut state.acks {
                for (sequence, message) in messages {
                    acks.unacked_bytes += message.memory_size();
                    acks.unacked.insert(
                        sequence,
                        InFlight {
                            message,
                            sent_at: now,
                        },
                    );
                    acks.due.insert(sequence);
                }
            }
        }
        queue
    }

    /// Whether a new subscription on this queue should get its filter's retained values (not
    /// once it was restored from the store).
    pub fn wants_retained(&self) -> bool {
        self.wants_retained.load(Ordering::Relaxed)
    }

    /// Records whether a writer is draining this queue.
    pub fn set_attached(&self, attached: bool) {
        self.attached.store(attached, Ordering::Relaxed);
    }

    /// Whether a writer is draining this queue.
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::Relaxed)
    }

    /// Whether this is an at-least-once subscription's queue.
    pub fn is_at_least_once(&self) -> bool {
        self.bounds.acks.is_some()
    }

    /// In disk mode, waits until everything this queue wrote to the store so far (sequences,
    /// messages, removals) is durable; see [`crate::storage::DiskStore`]. Writers call it
    /// between [`Self::pop_batch`] and sending the batch, and send it only if it answers
    /// `true`: `false` means another node owns the session now (the log refused its writes),
    /// and this copy must send nothing more.
    pub async fn until_durable(&self) -> bool {
        match &self.store {
            Some(store) => store.store.until_appended_is_durable().await,
            None => true,
        }
    }

    /// Whether this queue stores its messages on disk (an at-least-once subscription in disk
    /// mode).
    pub fn is_stored(&self) -> bool {
        self.bounds.acks.is_some()
            && self
                .store
                .as_ref()
                .is_some_and(|store| matches!(store.store, SessionStore::Disk(_)))
    }

    /// Whether this queue stores its messages in the cluster's records (an at-least-once
    /// subscription of a named session in a cluster with `members`).
    pub fn is_replicated(&self) -> bool {
        self.bounds.acks.is_some()
            && self
                .store
                .as_ref()
                .is_some_and(|store| matches!(store.store, SessionStore::Replicated(..)))
    }

    /// Whether a message of `size` bytes would be queued without dropping anything.
    pub fn has_room(&self, size: usize) -> bool {
        let state = self.lock();
        state.closed.is_none() && self.fits(&state, size)
    }

    fn fits(&self, state: &State, size: usize) -> bool {
        let max_messages = match self.bounds.overflow {
            OverflowPolicy::Latest => 1,
            _ => self.bounds.max_messages,
        };
        state.items.is_empty()
            || (state.items.len() < max_messages
                && state.bytes + state.writing_bytes + size <= self.bounds.max_bytes)
    }

    /// Takes every message not yet acknowledged out, in sequence order (open or closed queue),
    /// for handing them to another member of a queue group when this member leaves.
    pub fn take_remaining(&self) -> Vec<Arc<PublishedMessage>> {
        let mut state = self.lock();
        let mut remaining = Vec::new();
        if let Some(acks) = &mut state.acks {
            acks.due.clear();
            acks.unacked_bytes = 0;
            remaining.extend(
                std::mem::take(&mut acks.unacked)
                    .into_values()
                    .map(|in_flight| in_flight.message),
            );
        }
        state.bytes = 0;
        remaining.extend(state.items.drain(..).map(|queued| queued.message));
        remaining
    }

    /// The bounds and policy of this queue.
    pub fn bounds(&self) -> QueueBounds {
        self.bounds
    }

    /// Charges the entries this queue holds, from now on, to `budget`. Once: a later budget
    /// is ignored.
    pub(crate) fn charge_entries_to(&self, budget: &Arc<MemoryBudget>) {
        if self.budget.set(Arc::clone(budget)).is_ok() {
            drop(self.lock());
        }
    }

    fn lock(&self) -> entries::Locked<'_> {
        // A panic while holding this lock cannot leave the queue inconsistent (every mutation
        // is a few field updates), so a poisoned lock is still usable.
        entries::Locked {
            state: self
                .state
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            budget: self.budget.get().map(Arc::as_ref),
        }
    }

    /// Offers a message. Never waits.
    pub fn push(&self, message: &Arc<PublishedMessage>) -> PushOutcome {
        self.push_from(message, None)
    }

    /// [`Self::push`] of a message delivered into the session's records by another node
    /// (`from`): what stores it also takes it out of the inbox, in the same append; if it is
    /// not queued (the queue is closed or full under `Close`), it stays in the inbox.
    pub(crate) fn push_delivered(
        &self,
        message: &Arc<PublishedMessage>,
        from: InboxSlot,
    ) -> PushOutcome {
        self.push_from(message, Some(from))
    }

    fn push_from(&self, message: &Arc<PublishedMessage>, from: Option<InboxSlot>) -> PushOutcome {
        let size = message.memory_size();
        let outcome = {
            let mut state = self.lock();
            if state.closed.is_some() {
                return PushOutcome::Closed;
            }
            let mut dropped = 0u64;
            if !self.fits(&state, size) {
                match self.bounds.overflow {
                    OverflowPolicy::DropOldest | OverflowPolicy::Latest => {
                        let mut gone = Vec::new();
                        while !self.fits(&state, size) {
                            let Some(old) = state.items.pop_front() else {
                                break;
                            };
                            state.bytes -= old.message.memory_size();
                            dropped += 1;
                            gone.push(old.sequence);
                        }
                        if let Some(store) = &self.store {
                            if state.acks.is_some() {
                                store.removed(gone);
                            }
                        }
                    }
                    OverflowPolicy::DropNewest => {
                        let Some(sequence) = state.last_sequence.checked_add(1) else {
                            return self.exhausted(state);
                        };
                        state.last_sequence = sequence;
                        state.dropped_unreported += 1;
                        state.dropped_total += 1;
                        if let Some(store) = &self.store {
                            store.accepted(state.last_sequence, None, from);
                        }
                        drop(state);
                        self.ready.notify_one();
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
            let Some(sequence) = state.last_sequence.checked_add(1) else {
                return self.exhausted(state);
            };
            state.last_sequence = sequence;
            if let Some(store) = &self.store {
                store.accepted(sequence, state.acks.is_some().then_some(message), from);
            }
            state.bytes += size;
            state.items.push_back(Queued {
                sequence,
                message: Arc::clone(message),
                redelivered: false,
                queued_at: self.bounds.max_age.map(|_| Instant::now()),
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

    /// Closes a queue whose sequence numbers are used up (only reachable from a stored or
    /// claimed position near `u64::MAX`): the subscription ends as if it overflowed under
    /// `Close`, so no sequence is ever reused.
    fn exhausted(&self, mut state: entries::Locked<'_>) -> PushOutcome {
        state.closed = Some(CloseReason::Overflow);
        drop(state);
        self.ready.notify_one();
        PushOutcome::Overflowed
    }

    /// Begins a new attachment (a writer on a new stream); writers of older attachments get
    /// nothing more. `last_received` is the last sequence the client says it received, if it
    /// said.
    ///
    /// At most once, the writer continues after `last_received`, and the sequences the client
    /// missed are announced as gaps. At least once, every unacknowledged message is handed out
    /// again first, and the writer continues after the last message ever sent.
    pub fn attach(&self, last_received: Option<u64>) -> Attachment {
        let attachment = {
            let mut state = self.lock();
            state.attachment += 1;
            if let Some(received) = last_received.filter(|_| std::mem::take(&mut state.restored)) {
                // Only after a restart can a client stand beyond the last sequence the queue
                // knows (the broker died before it stored the newest): continue after the
                // client, so no new message reuses a sequence the client already has.
                // A position further ahead than any uncommitted batch can reach is not one the
                // broker gave out: it is ignored, as in memory mode, so the sequence space
                // cannot be exhausted by a client.
                let ahead = received.saturating_sub(state.last_sequence);
                if ahead > 0 && ahead <= MAX_AHEAD_OF_STORE {
                    state.last_sequence = received;
                    state.last_sent = received;
                }
            }
            let last_sent = state.last_sent;
            let next_expected = match &mut state.acks {
                Some(acks) => {
                    acks.due = acks.unacked.keys().copied().collect();
                    last_sent.saturating_add(1)
                }
                None => last_received
                    .unwrap_or(last_sent)
                    .min(last_sent)
                    .saturating_add(1),
            };
            let lost_through = match state.items.front() {
                // Messages handed out again come first, and a client taking the subscription
                // up in a new process starts counting at the first sequence it hears of: a gap
                // announced before them would make it drop them. It comes after them instead.
                _ if state.acks.as_ref().is_some_and(|acks| !acks.due.is_empty()) => {
                    next_expected.saturating_sub(1)
                }
                Some(first) => first.sequence.saturating_sub(1),
                None => state.last_sequence,
            };
            Attachment {
                id: state.attachment,
                next_expected,
                undelivered_through: last_sent,
                lost_through,
            }
        };
        // Wake an older writer so it sees it is superseded.
        self.ready.notify_one();
        attachment
    }

    /// Waits for messages to send and moves up to `max` of them into `batch`: first messages
    /// due again (marked redelivered), then new ones, within the in-flight window.
    ///
    /// After close, queued messages are still returned (for `Ended`); `Closed` comes once the
    /// queue is empty. An overflowed queue reports `Closed(Overflow)` at once.
    pub async fn pop_batch(
        &self,
        attachment: &Attachment,
        batch: &mut Vec<Queued>,
        max: usize,
    ) -> Popped {
        let max = max.max(1);
        loop {
            let wake_at = {
                let mut guard = self.lock();
                let state = &mut *guard;
                if state.attachment != attachment.id {
                    return Popped::Superseded;
                }
                if let Some(reason @ (CloseReason::Overflow | CloseReason::NotAuthorized)) =
                    state.closed
                {
                    return Popped::Closed(reason);
                }
                let now = Instant::now();
                self.drop_expired(state, now);
                let mut wake_at = None;
                if let Some(acks) = &mut state.acks {
                    wake_at = acks.expire(now);
                    while batch.len() < max {
                        let Some(sequence) = acks.due.pop_first() else {
                            break;
                        };
                        if let Some(in_flight) = acks.unacked.get_mut(&sequence) {
                            in_flight.sent_at = now;
                            let message = Arc::clone(&in_flight.message);
                            acks.sent(now);
                            batch.push(Queued {
                                sequence,
                                message,
                                redelivered: true,
                                queued_at: Some(now),
                            });
                            state.redelivered_total += 1;
                        }
                    }
                }
                while batch.len() < max {
                    let Some(front) = state.items.front() else {
                        break;
                    };
                    let size = front.message.memory_size();
                    if let Some(acks) = &state.acks {
                        if !acks.has_window_for(size, self.bounds.max_bytes) {
                            break;
                        }
                    }
                    let Some(queued) = state.items.pop_front() else {
                        break;
                    };
                    state.bytes -= size;
                    state.last_sent = state.last_sent.max(queued.sequence);
                    if let Some(acks) = &mut state.acks {
                        acks.unacked_bytes += size;
                        acks.unacked.insert(
                            queued.sequence,
                            InFlight {
                                message: Arc::clone(&queued.message),
                                sent_at: now,
                            },
                        );
                        acks.sent(now);
                        if wake_at.is_none() {
                            wake_at = Some(now + acks.timeout);
                        }
                    }
                    batch.push(queued);
                }
                if !batch.is_empty() || state.dropped_unreported > 0 {
                    let dropped = std::mem::take(&mut state.dropped_unreported);
                    return Popped::Batch {
                        dropped,
                        last_sequence: state.last_sequence,
                        // Nothing new queued, and no redelivery left for a later batch: a
                        // gap announced now must not pass messages still to be sent again.
                        drained: state.items.is_empty()
                            && state.acks.as_ref().is_none_or(|acks| acks.due.is_empty()),
                    };
                }
                if let Some(reason) = state.closed {
                    return Popped::Closed(reason);
                }
                wake_at
            };
            // Nothing to hand out: the writer is idle, the queue may be delivered.
            self.progressed();
            match wake_at {
                Some(deadline) => {
                    tokio::select! {
                        () = self.ready.notified() => {}
                        () = tokio::time::sleep_until(deadline) => {}
                    }
                }
                None => self.ready.notified().await,
            }
        }
    }

    /// Drops unsent messages older than the age bound, counting them as dropped.
    fn drop_expired(&self, state: &mut State, now: Instant) {
        let Some(max_age) = self.bounds.max_age else {
            return;
        };
        let mut gone = Vec::new();
        while let Some(front) = state.items.front() {
            let queued_at = front.queued_at.unwrap_or(now);
            if now.saturating_duration_since(queued_at) < max_age {
                break;
            }
            let Some(old) = state.items.pop_front() else {
                break;
            };
            state.bytes -= old.message.memory_size();
            gone.push(old.sequence);
        }
        if gone.is_empty() {
            return;
        }
        state.dropped_unreported += gone.len() as u64;
        state.dropped_total += gone.len() as u64;
        if let (Some(store), Some(_)) = (&self.store, &state.acks) {
            store.removed(gone);
        }
    }

    /// Records that the client processed the sequences in `ranges`; returns how many in-flight
    /// messages that released. Sequences not in flight are ignored.
    pub fn ack(&self, ranges: &[SequenceRange]) -> usize {
        let released = {
            let mut guard = self.lock();
            let Some(acks) = &mut guard.acks else {
                return 0;
            };
            let mut released = Vec::new();
            for range in ranges {
                if range.from > range.to {
                    continue;
                }
                let sequences: Vec<u64> = acks
                    .unacked
                    .range(range.from..=range.to)
                    .map(|(sequence, _)| *sequence)
                    .collect();
                for sequence in sequences {
                    if let Some(in_flight) = acks.unacked.remove(&sequence) {
                        acks.unacked_bytes -= in_flight.message.memory_size();
                        acks.due.remove(&sequence);
                        released.push(sequence);
                    }
                }
            }
            let count = released.len();
            if let Some(store) = &self.store {
                store.removed(released);
            }
            count
        };
        if released > 0 {
            self.ready.notify_one();
            self.progressed();
        }
        released
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

    /// Why the queue closed; `None` while it is open.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.lock().closed
    }

    /// Whether the queue overflowed under `Close` and this is the first call to say so after
    /// it did: its `slow_consumer` event is emitted once.
    pub(crate) fn overflow_to_report(&self) -> bool {
        self.close_reason() == Some(CloseReason::Overflow)
            && !self.overflow_reported.swap(true, Ordering::Relaxed)
    }

    /// Current counters.
    pub fn stats(&self) -> QueueStats {
        let state = self.lock();
        QueueStats {
            depth: state.items.len(),
            bytes: state.bytes,
            in_flight: state.acks.as_ref().map_or(0, |acks| acks.unacked.len()),
            dropped_total: state.dropped_total,
            redelivered_total: state.redelivered_total,
            last_sequence: state.last_sequence,
            unwritten: self.unwritten.load(Ordering::Relaxed),
        }
    }

    /// Marks `batch`, just popped by a writer, as not yet written, until the guard drops. An
    /// at-most-once batch leaves the queue when popped, so without this a graceful shutdown's
    /// drain (which waits for empty queues) could close the connection while the writer still
    /// waits for the store or for the stream; and its bytes still count in the byte bound
    /// meanwhile (an at-least-once batch counts in its in-flight window already).
    pub fn writing(&self, batch: &[Queued]) -> UnwrittenBatch<'_> {
        let messages = batch.len();
        self.unwritten.fetch_add(messages, Ordering::Relaxed);
        let mut bytes = 0;
        let mut state = self.lock();
        if state.acks.is_none() {
            bytes = batch
                .iter()
                .map(|queued| queued.message.memory_size())
                .sum();
            state.writing_bytes += bytes;
        }
        drop(state);
        UnwrittenBatch {
            queue: self,
            messages,
            bytes,
        }
    }

    /// `count` messages meant for this subscription were lost before they reached this node (a
    /// cluster peer's queue towards it dropped them): they take the next sequence numbers and
    /// are announced as a gap with the reason `ClusterRoute`.
    pub(crate) fn lost_before_arrival(&self, count: u64) {
        let mut state = self.lock();
        if state.closed.is_some() || count == 0 {
            return;
        }
        let Some(last) = state.last_sequence.checked_add(count) else {
            drop(state);
            return;
        };
        if let Some(store) = &self.store {
            // The store keeps the last sequence only: one record stands for the whole range.
            store.accepted(last, None, None);
        }
        let first = state.last_sequence.saturating_add(1);
        state.last_sequence = last;
        state.dropped_unreported += count;
        state.dropped_total += count;
        match state.route_lost.back_mut() {
            Some(back) if back.1.saturating_add(1) == first => back.1 = last,
            _ => {
                if state.route_lost.len() == MAX_ROUTE_LOST_RANGES {
                    state.route_lost.pop_front();
                }
                state.route_lost.push_back((first, last));
            }
        }
        drop(state);
        self.ready.notify_one();
    }

    /// The ranges of sequences lost on a cluster route since the last call, oldest first, for
    /// the writer to announce with the reason `ClusterRoute`.
    pub(crate) fn take_route_lost(&self) -> Vec<(u64, u64)> {
        self.lock().route_lost.drain(..).collect()
    }

    /// Tells `progress` from now on whenever the queue may have become delivered (see
    /// [`crate::ack_targets`]); the first call wins.
    pub(crate) fn report_progress_to(&self, progress: Arc<Notify>) {
        let _ = self.progress.set(progress);
    }

    /// Wakes whoever waits for the queue's progress (one atomic operation when nobody does).
    fn progressed(&self) {
        if let Some(progress) = self.progress.get() {
            progress.notify_one();
        }
    }
}

impl Drop for SubscriptionQueue {
    fn drop(&mut self) {
        if let Some(budget) = self.budget.get() {
            let state = self
                .state
                .get_mut()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            entries::release_all(state, budget);
        }
    }
}

mod entries;
#[cfg(test)]
mod tests;
