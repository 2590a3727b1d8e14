//! Publishes made while the client is reconnecting: the [`OutboundBuffer`] settings and the
//! bounded queue that holds them.
//!
//! The queue is bookkeeping only, with the time passed in, so its bounds and its expiry are
//! tested without a connection or a clock. Who puts publishes in and sends them after the
//! reconnect is [`crate::connect::session`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many publishes the client holds while it is reconnecting, and for how long.
///
/// While the connection is down, [`crate::Client::publish`] puts the message here and returns
/// at once; after the reconnect the messages are sent first, in the order they were published.
/// A message that waited longer than `max_age` is dropped instead (and counted, see
/// [`crate::Client::outbound_stats`]). When the buffer holds `max_messages`, publishing fails
/// with [`crate::PublishError::OutboundBufferFull`]: it never waits for the reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundBuffer {
    /// Most messages held. Each costs its payload in memory until the reconnect. `0` disables
    /// the buffer: publishing while reconnecting fails with
    /// [`crate::ConnectionError::Disconnected`]. Default: 1024.
    pub max_messages: usize,
    /// How long a message may wait for the reconnect before it is dropped. Longer delivers
    /// older news after a long outage. Must be longer than zero. Default: 60 s.
    pub max_age: Duration,
}

impl Default for OutboundBuffer {
    fn default() -> Self {
        Self {
            max_messages: 1024,
            max_age: Duration::from_secs(60),
        }
    }
}

impl OutboundBuffer {
    /// No buffer: publishing while reconnecting fails at once.
    pub fn disabled() -> Self {
        Self {
            max_messages: 0,
            ..Self::default()
        }
    }

    /// Why these settings cannot work, if they cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        if self.max_messages > 0 && self.max_age.is_zero() {
            return Err(
                "outbound_buffer max_age must be longer than zero (set max_messages to 0 to \
                 disable the buffer)"
                    .to_owned(),
            );
        }
        Ok(())
    }
}

/// What the outbound buffer holds and has dropped, from [`crate::Client::outbound_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboundStats {
    /// Messages waiting for the reconnect now.
    pub buffered: usize,
    /// Messages dropped because they waited longer than [`OutboundBuffer::max_age`].
    pub expired: u64,
    /// Messages dropped because the client ended (closed, or stopped reconnecting) before it
    /// could send them.
    pub discarded: u64,
}

/// Why a message could not be buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BufferRefusal {
    /// The buffer is disabled (`max_messages` is 0).
    Disabled,
    /// The buffer holds `max_messages` unexpired messages.
    Full {
        /// `max_messages`.
        capacity: usize,
    },
}

/// One buffered message and when it was buffered.
#[derive(Debug)]
pub(crate) struct Buffered<T> {
    /// The message.
    pub(crate) item: T,
    /// When it was buffered: its age counts from here.
    pub(crate) queued_at: Instant,
}

/// Messages in the order they were published, at most `max_messages`, none older than
/// `max_age` when taken out.
#[derive(Debug)]
pub(crate) struct OutboundQueue<T> {
    /// The bounds.
    settings: OutboundBuffer,
    /// Oldest first.
    entries: VecDeque<Buffered<T>>,
    /// Dropped for their age so far.
    expired: u64,
    /// Dropped because the client ended so far.
    discarded: u64,
}

impl<T> OutboundQueue<T> {
    /// An empty queue with these bounds.
    pub(crate) fn new(settings: OutboundBuffer) -> Self {
        Self {
            settings,
            entries: VecDeque::new(),
            expired: 0,
            discarded: 0,
        }
    }

    /// Buffers `item` at `now`, after dropping the messages that expired by then.
    pub(crate) fn push(&mut self, item: T, now: Instant) -> Result<(), BufferRefusal> {
        if self.settings.max_messages == 0 {
            return Err(BufferRefusal::Disabled);
        }
        self.expire(now);
        if self.entries.len() >= self.settings.max_messages {
            return Err(BufferRefusal::Full {
                capacity: self.settings.max_messages,
            });
        }
        self.entries.push_back(Buffered {
            item,
            queued_at: now,
        });
        Ok(())
    }

    /// Takes the oldest message that has not expired at `now`; expired ones are dropped.
    pub(crate) fn pop(&mut self, now: Instant) -> Option<Buffered<T>> {
        self.expire(now);
        self.entries.pop_front()
    }

    /// Puts back a message [`OutboundQueue::pop`] gave out but that could not be sent: it is
    /// still the oldest, so it goes first again. It may take the queue one over its bound.
    pub(crate) fn push_front(&mut self, buffered: Buffered<T>) {
        self.entries.push_front(buffered);
    }

    /// Drops every message because the client ended; returns how many there were.
    pub(crate) fn discard_all(&mut self) -> usize {
        let count = self.entries.len();
        self.entries.clear();
        self.discarded += count as u64;
        count
    }

    /// What the queue holds and has dropped.
    pub(crate) fn stats(&self) -> OutboundStats {
        OutboundStats {
            buffered: self.entries.len(),
            expired: self.expired,
            discarded: self.discarded,
        }
    }

    /// Drops the messages older than `max_age` at `now`. Entries are in buffering order, so the
    /// expired ones are at the front.
    fn expire(&mut self, now: Instant) {
        while let Some(oldest) = self.entries.front() {
            if now.saturating_duration_since(oldest.queued_at) <= self.settings.max_age {
                break;
            }
            self.entries.pop_front();
            self.expired += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The outbound buffer keeps publishes in order, within its bounds, and drops them with age.

    #![allow(clippy::expect_used)] // A failed expectation in a test panics on purpose.

    use std::time::{Duration, Instant};

    use super::*;

    fn queue(max_messages: usize, max_age_secs: u64) -> OutboundQueue<u32> {
        OutboundQueue::new(OutboundBuffer {
            max_messages,
            max_age: Duration::from_secs(max_age_secs),
        })
    }

    fn drain(queue: &mut OutboundQueue<u32>, now: Instant) -> Vec<u32> {
        std::iter::from_fn(|| queue.pop(now).map(|buffered| buffered.item)).collect()
    }

    #[test]
    fn the_defaults_hold_1024_messages_for_a_minute() {
        let defaults = OutboundBuffer::default();
        assert_eq!(defaults.max_messages, 1024);
        assert_eq!(defaults.max_age, Duration::from_secs(60));
        assert!(defaults.check().is_ok());
        assert_eq!(OutboundBuffer::disabled().max_messages, 0);
    }

    #[test]
    fn messages_come_out_in_the_order_they_were_published() {
        let now = Instant::now();
        let mut queue = queue(10, 60);
        for n in 0..5 {
            queue.push(n, now).expect("room");
        }
        assert_eq!(queue.stats().buffered, 5);
        assert_eq!(drain(&mut queue, now), vec![0, 1, 2, 3, 4]);
        assert_eq!(queue.stats().buffered, 0);
    }

    #[test]
    fn a_full_buffer_refuses_instead_of_growing() {
        let now = Instant::now();
        let mut queue = queue(3, 60);
        for n in 0..3 {
            queue.push(n, now).expect("room");
        }
        assert_eq!(queue.push(3, now), Err(BufferRefusal::Full { capacity: 3 }));
        assert_eq!(drain(&mut queue, now), vec![0, 1, 2]);
    }

    #[test]
    fn a_disabled_buffer_refuses_everything() {
        let mut queue = queue(0, 60);
        assert_eq!(queue.push(1, Instant::now()), Err(BufferRefusal::Disabled));
    }

    #[test]
    fn expired_messages_are_dropped_and_counted() {
        let start = Instant::now();
        let mut queue = queue(10, 60);
        queue.push(1, start).expect("room");
        queue
            .push(2, start + Duration::from_secs(30))
            .expect("room");
        queue
            .push(3, start + Duration::from_secs(50))
            .expect("room");
        // At 61 s the first is older than a minute; the others are not.
        assert_eq!(
            drain(&mut queue, start + Duration::from_secs(61)),
            vec![2, 3]
        );
        assert_eq!(queue.stats().expired, 1);
    }

    #[test]
    fn expired_messages_make_room_for_new_ones() {
        let start = Instant::now();
        let mut queue = queue(2, 60);
        queue.push(1, start).expect("room");
        queue
            .push(2, start + Duration::from_secs(10))
            .expect("room");
        let later = start + Duration::from_secs(65);
        queue.push(3, later).expect("the first one expired");
        assert_eq!(drain(&mut queue, later), vec![2, 3]);
        assert_eq!(queue.stats().expired, 1);
    }

    #[test]
    fn a_message_that_could_not_be_sent_goes_first_again() {
        let now = Instant::now();
        let mut queue = queue(3, 60);
        for n in 0..3 {
            queue.push(n, now).expect("room");
        }
        let first = queue.pop(now).expect("a message");
        queue.push(3, now).expect("room again");
        queue.push_front(first);
        assert_eq!(drain(&mut queue, now), vec![0, 1, 2, 3]);
    }

    #[test]
    fn discarding_counts_what_was_lost() {
        let now = Instant::now();
        let mut queue = queue(10, 60);
        queue.push(1, now).expect("room");
        queue.push(2, now).expect("room");
        assert_eq!(queue.discard_all(), 2);
        assert_eq!(
            queue.stats(),
            OutboundStats {
                buffered: 0,
                expired: 0,
                discarded: 2
            }
        );
    }

    #[test]
    fn a_buffer_whose_messages_expire_at_once_is_refused() {
        let instant_expiry = OutboundBuffer {
            max_messages: 10,
            max_age: Duration::ZERO,
        };
        assert!(instant_expiry.check().is_err());
        let disabled = OutboundBuffer {
            max_messages: 0,
            max_age: Duration::ZERO,
        };
        assert!(disabled.check().is_ok());
    }
}
