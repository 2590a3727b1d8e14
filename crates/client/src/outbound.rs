//! Publishes made while the client is reconnecting: the [`OutboundBuffer`] settings and the
//! bounded queue that holds them.
//!
//! The queue is bookkeeping only, with the time passed in, so its bounds and its expiry are
//! tested without a connection or a clock. Who puts publishes in and sends them after the
//! reconnect is [`crate::session`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How many publishes the client holds while it is reconnecting, and for how long.
///
/// While the connection is down, [`crate::Client::publish`] puts the message here and returns
/// at once; after the reconnect the messages are sent first, in the order they were published.
/// A message that waited longer than `max_age` is dropped instead (and counted, see
/// [`crate::Client::outbound_stats`]). When the buffer holds `max_messages`, publishing fails
/// with [`crate::ClientError::OutboundBufferFull`]: it never waits for the reconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboundBuffer {
    /// Most messages held. Each costs its payload in memory until the reconnect. `0` disables
    /// the buffer: publishing while reconnecting fails with
    /// [`crate::ClientError::Disconnected`]. Default: 1024.
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
mod tests;
