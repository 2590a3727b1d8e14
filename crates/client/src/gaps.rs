//! What a subscription skipped: [`Gap`]s, and the bookkeeping that finds them in the sequence
//! numbers of the messages it yields.
//!
//! The broker numbers a subscription's messages 1, 2, 3, … counting every message the
//! subscription accepted, so a jump in the numbers is exactly what the application missed:
//! messages the overflow policy dropped, or messages that were in flight when a connection
//! dropped. The broker announces each such range with a `Gap` frame naming its reason; the
//! [`GapTracker`] records those, and also any jump it sees without one. It sits where messages
//! are yielded, so it also refuses a message whose sequence is not above the last one yielded:
//! nothing is yielded twice or out of order. When the client had to subscribe again in a new session the
//! numbers start again at 1; the stream reader marks those messages with a new epoch.
//! A subscription taken up from a resumed session (a new client process) starts where its first
//! message or announced gap starts: what came before went to the earlier process.
//! No I/O here.

use std::collections::VecDeque;

use cassini_protocol::GapReason;

/// Most gaps kept for [`crate::Subscription::take_gaps`]; older ones are forgotten (and still
/// counted by [`crate::Subscription::gaps`]).
pub(crate) const MAX_RECORDED_GAPS: usize = 1024;

/// Messages a [`crate::Subscription`] did not yield, recorded where the stream skipped them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Gap {
    /// The messages with sequences `from..=to` were never yielded: the broker's overflow policy
    /// dropped them (see [`crate::Subscription::dropped`]), or they were in flight when the
    /// connection dropped.
    Missed {
        /// The first missing sequence.
        from: u64,
        /// The last missing sequence (inclusive).
        to: u64,
        /// Why, as the broker announced it; `None` when the gap showed only in the sequence
        /// numbers, without an announcement.
        reason: Option<GapReason>,
    },
    /// The broker had forgotten the session by the time the client reconnected (it expired):
    /// the client started a new session and subscribed again. Every message published in
    /// between is lost, how many is unknown, and sequences start again at 1.
    SessionLost {
        /// The last sequence yielded in the lost session (0 if none was).
        last_sequence: u64,
    },
}

impl Gap {
    /// How many messages the gap skipped, when that is known.
    pub fn missed(&self) -> Option<u64> {
        match self {
            Gap::Missed { from, to, .. } => Some(to.saturating_sub(*from).saturating_add(1)),
            Gap::SessionLost { .. } => None,
        }
    }
}

/// The last sequence yielded and the gaps found so far.
#[derive(Debug, Default)]
pub(crate) struct GapTracker {
    /// The epoch of the last message yielded: it changes when the client subscribed again in a
    /// new session.
    epoch: u64,
    /// The sequence of the last message yielded in this epoch; 0 before the first.
    last_sequence: u64,
    /// Every message skipped by a [`Gap::Missed`] so far.
    missed: u64,
    /// Gaps not yet taken, oldest first, at most [`MAX_RECORDED_GAPS`].
    recorded: VecDeque<Gap>,
    /// Gaps not yet yielded as events, oldest first, at most [`MAX_RECORDED_GAPS`].
    unannounced: VecDeque<Gap>,
    /// Set for a subscription taken up from a resumed session until its first message or
    /// announced gap: the sequences before that one are not this client's to miss.
    starts_at_first: bool,
}

impl GapTracker {
    /// A tracker for a subscription taken up from a resumed session.
    pub(crate) fn taken_up() -> Self {
        Self {
            starts_at_first: true,
            ..Self::default()
        }
    }

    /// On the first message or gap of a subscription taken up from a resumed session, counts
    /// everything before `first` as seen.
    fn start_at(&mut self, first: u64) {
        if std::mem::take(&mut self.starts_at_first) {
            self.last_sequence = self.last_sequence.max(first.saturating_sub(1));
        }
    }

    /// Whether the message `sequence` of `epoch` may be yielded: `false` for a sequence not
    /// above the last one yielded (a duplicate). Records the gap before it, if any.
    pub(crate) fn accept(&mut self, epoch: u64, sequence: u64) -> bool {
        self.enter(epoch);
        self.start_at(sequence);
        if sequence <= self.last_sequence {
            return false;
        }
        if sequence > self.last_sequence + 1 {
            self.skip_to(sequence - 1, None);
        }
        self.last_sequence = sequence;
        true
    }

    /// Records the broker's announcement that `from..=to` of `epoch` will never come. The part
    /// already behind the last message yielded is ignored.
    pub(crate) fn announced(&mut self, epoch: u64, from: u64, to: u64, reason: GapReason) {
        self.enter(epoch);
        self.start_at(from);
        // Numbers from the broker: a gap after the last possible sequence skips nothing.
        if from > self.last_sequence.saturating_add(1) {
            self.skip_to(from - 1, None);
        }
        if to > self.last_sequence {
            self.skip_to(to, Some(reason));
        }
    }

    /// The last sequence yielded in the current epoch.
    #[cfg(test)]
    pub(crate) fn last_sequence(&self) -> u64 {
        self.last_sequence
    }

    fn enter(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.record(Gap::SessionLost {
                last_sequence: self.last_sequence,
            });
            self.epoch = epoch;
            self.last_sequence = 0;
        }
    }

    fn skip_to(&mut self, to: u64, reason: Option<GapReason>) {
        let gap = Gap::Missed {
            from: self.last_sequence + 1,
            to,
            reason,
        };
        self.missed = self.missed.saturating_add(to - self.last_sequence);
        self.last_sequence = to;
        self.record(gap);
    }

    /// Every message skipped by a [`Gap::Missed`] so far.
    pub(crate) fn missed(&self) -> u64 {
        self.missed
    }

    /// The gaps recorded since the last call, oldest first.
    pub(crate) fn take(&mut self) -> Vec<Gap> {
        self.recorded.drain(..).collect()
    }

    /// The oldest gap not yet yielded as an event.
    pub(crate) fn next_unannounced(&mut self) -> Option<Gap> {
        self.unannounced.pop_front()
    }

    /// Forgets the gaps not yet yielded as events (the application reads messages only).
    pub(crate) fn clear_unannounced(&mut self) {
        self.unannounced.clear();
    }

    fn record(&mut self, gap: Gap) {
        for queue in [&mut self.recorded, &mut self.unannounced] {
            if queue.len() >= MAX_RECORDED_GAPS {
                queue.pop_front();
            }
            queue.push_back(gap);
        }
    }
}

#[cfg(test)]
mod tests;
