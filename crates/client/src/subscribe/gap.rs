//! What a subscription skipped: [`Gap`]s, and the bookkeeping that finds them in the sequence
//! numbers of the messages it yields.
//!
//! The broker numbers a subscription's messages 1, 2, 3, … counting every message the subscription
//! accepted, so a jump in the numbers is exactly what the application missed: messages the overflow
//! policy dropped, or messages that were in flight when a connection dropped. The broker announces
//! each such range with a `Gap` frame naming its reason; the [`GapTracker`] records those, and also
//! any jump it sees without one. It sits where messages are yielded, so it also refuses a message
//! whose sequence is not above the last one yielded: nothing is yielded twice or out of order. When
//! the client had to subscribe again in a new session the numbers start again at 1; the stream
//! reader marks those messages with a new epoch. A subscription taken up from a resumed session (a
//! new client process) starts where its first message or announced gap starts: what came before
//! went to the earlier process. No I/O here.
//!
//! A datagram subscription has no order to hold, only losses to count:
//!
//! Datagrams may arrive late, out of order, or never. The [`DatagramTracker`] yields every
//! sequence once, in the order it arrives: a sequence above the highest seen opens holes for
//! the ones skipped, and so does the broker's word that it has sent through a sequence above
//! it (`DatagramsSent`, after a pause); a late arrival fills its hole. The loss counter is every hole still open
//! plus every sequence known never to come (announced by the broker's `Gap`, or a hole pushed
//! out of the [`MAX_HOLES`] most recent). A new session (epoch) starts afresh. No I/O here.

use std::collections::BTreeSet;
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

    /// The session was lost and the subscription made again in `epoch`: records
    /// [`Gap::SessionLost`] now, unless the tracker is there (or further) already.
    pub(crate) fn new_epoch(&mut self, epoch: u64) {
        if epoch > self.epoch {
            self.enter(epoch);
        }
    }

    /// The session was lost and the subscription made again in `epoch`, its last sequence
    /// seen `last_sequence` (for a datagram subscription, whose [`DatagramTracker`] follows
    /// the sequences): records [`Gap::SessionLost`].
    pub(crate) fn session_lost(&mut self, epoch: u64, last_sequence: u64) {
        if epoch > self.epoch {
            self.record(Gap::SessionLost { last_sequence });
            self.epoch = epoch;
            self.last_sequence = 0;
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

/// Most open holes remembered; older ones count as lost for good.
pub(crate) const MAX_HOLES: usize = 4096;

/// The sequences a datagram subscription has seen, and what it is missing.
#[derive(Debug, Default)]
pub(crate) struct DatagramTracker {
    epoch: u64,
    highest: u64,
    holes: BTreeSet<u64>,
    lost_for_good: u64,
}

impl DatagramTracker {
    /// Whether `sequence` of `epoch` is new (yield it) rather than a duplicate.
    pub(crate) fn accept(&mut self, epoch: u64, sequence: u64) -> bool {
        self.enter(epoch);
        if sequence > self.highest {
            self.open_holes(self.highest + 1, sequence - 1);
            self.highest = sequence;
            true
        } else {
            self.holes.remove(&sequence)
        }
    }

    /// The broker announced that `from..=to` will never come.
    pub(crate) fn announced(&mut self, epoch: u64, from: u64, to: u64) {
        self.enter(epoch);
        if from > to {
            // An empty range from the broker announces nothing.
            return;
        }
        let seen = self.highest;
        let closed: Vec<u64> = if from <= to.min(seen) {
            self.holes.range(from..=to.min(seen)).copied().collect()
        } else {
            Vec::new()
        };
        for sequence in closed {
            self.holes.remove(&sequence);
            self.lost_for_good = self.lost_for_good.saturating_add(1);
        }
        if to > seen {
            let start = from.max(seen + 1);
            self.open_holes(seen + 1, start - 1);
            self.lost_for_good = self
                .lost_for_good
                .saturating_add((to - start).saturating_add(1));
            self.highest = to;
        }
    }

    /// The broker has sent every sequence of `epoch` through `through`: those not seen yet are
    /// holes (a late arrival still fills its hole).
    pub(crate) fn sent_through(&mut self, epoch: u64, through: u64) {
        self.enter(epoch);
        if through > self.highest {
            self.open_holes(self.highest + 1, through);
            self.highest = through;
        }
    }

    /// The session was lost and the subscription made again in `epoch`: it starts afresh,
    /// unless the tracker is there (or further) already. Returns the highest sequence seen
    /// in the epoch left, when it moved on.
    pub(crate) fn new_epoch(&mut self, epoch: u64) -> Option<u64> {
        if epoch > self.epoch {
            let highest = self.highest;
            self.enter(epoch);
            return Some(highest);
        }
        None
    }

    /// Messages missing so far: open holes and sequences that will never come.
    pub(crate) fn lost(&self) -> u64 {
        self.lost_for_good + self.holes.len() as u64
    }

    fn enter(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.highest = 0;
            self.holes.clear();
        }
    }

    fn open_holes(&mut self, from: u64, to: u64) {
        if from > to {
            return;
        }
        let count = to - from + 1;
        let keep = (MAX_HOLES as u64).min(count);
        self.lost_for_good += count - keep;
        // `keep` is at least 1 here, and `to` may be `u64::MAX`.
        self.holes.extend((to - (keep - 1))..=to);
        while self.holes.len() > MAX_HOLES {
            self.holes.pop_first();
            self.lost_for_good += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    //! Gap accounting: jumps are recorded, duplicates refused, a new session starts afresh.

    use super::*;

    fn yielded(tracker: &mut GapTracker, epoch: u64, sequences: &[u64]) -> Vec<u64> {
        sequences
            .iter()
            .copied()
            .filter(|&sequence| tracker.accept(epoch, sequence))
            .collect()
    }

    #[test]
    fn consecutive_sequences_have_no_gaps() {
        let mut tracker = GapTracker::default();
        assert_eq!(yielded(&mut tracker, 0, &[1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(tracker.missed(), 0);
        assert!(tracker.take().is_empty());
    }

    #[test]
    fn a_jump_is_recorded_as_the_range_it_skipped() {
        let mut tracker = GapTracker::default();
        assert_eq!(
            yielded(&mut tracker, 0, &[1, 2, 6, 7, 9]),
            vec![1, 2, 6, 7, 9]
        );
        assert_eq!(tracker.missed(), 4);
        assert_eq!(
            tracker.take(),
            vec![
                Gap::Missed {
                    from: 3,
                    to: 5,
                    reason: None
                },
                Gap::Missed {
                    from: 8,
                    to: 8,
                    reason: None
                }
            ]
        );
        assert!(tracker.take().is_empty(), "taken gaps are gone");
        assert_eq!(tracker.missed(), 4, "the total stays");
    }

    #[test]
    fn messages_dropped_before_the_first_one_read_are_a_gap_too() {
        let mut tracker = GapTracker::default();
        assert!(tracker.accept(0, 4));
        assert_eq!(
            tracker.take(),
            vec![Gap::Missed {
                from: 1,
                to: 3,
                reason: None
            }]
        );
    }

    #[test]
    fn duplicates_and_older_sequences_are_refused() {
        let mut tracker = GapTracker::default();
        assert_eq!(
            yielded(&mut tracker, 0, &[1, 2, 2, 3, 1, 3, 4]),
            vec![1, 2, 3, 4]
        );
        assert_eq!(tracker.missed(), 0);
    }

    #[test]
    fn a_new_session_records_the_loss_and_starts_again_at_one() {
        let mut tracker = GapTracker::default();
        assert_eq!(yielded(&mut tracker, 0, &[1, 2, 3]), vec![1, 2, 3]);
        assert_eq!(yielded(&mut tracker, 1, &[1, 2]), vec![1, 2]);
        assert_eq!(tracker.take(), vec![Gap::SessionLost { last_sequence: 3 }]);
        assert_eq!(tracker.missed(), 0, "an unknown number is not counted");
    }

    #[test]
    fn gap_sizes_are_known_only_for_missed_ranges() {
        assert_eq!(
            Gap::Missed {
                from: 3,
                to: 5,
                reason: None
            }
            .missed(),
            Some(3)
        );
        assert_eq!(Gap::SessionLost { last_sequence: 9 }.missed(), None);
    }

    #[test]
    fn only_the_latest_gaps_are_kept_but_all_are_counted() {
        let mut tracker = GapTracker::default();
        let total = MAX_RECORDED_GAPS as u64 + 10;
        for n in 0..total {
            assert!(tracker.accept(0, 2 * n + 2));
        }
        assert_eq!(tracker.missed(), total);
        let gaps = tracker.take();
        assert_eq!(gaps.len(), MAX_RECORDED_GAPS);
        assert_eq!(
            gaps.last(),
            Some(&Gap::Missed {
                from: 2 * total - 1,
                to: 2 * total - 1,
                reason: None
            })
        );
    }

    #[test]
    fn an_announced_gap_is_recorded_with_its_reason_and_the_next_message_makes_none() {
        let mut tracker = GapTracker::default();
        assert!(tracker.accept(0, 1));
        tracker.announced(0, 2, 901, GapReason::Overflow);
        assert!(tracker.accept(0, 902));
        assert_eq!(tracker.missed(), 900);
        assert_eq!(
            tracker.take(),
            vec![Gap::Missed {
                from: 2,
                to: 901,
                reason: Some(GapReason::Overflow)
            }]
        );
    }

    #[test]
    fn an_announced_gap_behind_what_was_yielded_is_ignored() {
        let mut tracker = GapTracker::default();
        assert_eq!(yielded(&mut tracker, 0, &[1, 2, 3]), vec![1, 2, 3]);
        tracker.announced(0, 1, 2, GapReason::Undelivered);
        assert!(tracker.take().is_empty());
        assert_eq!(tracker.last_sequence(), 3);
    }

    #[test]
    fn numbers_at_the_end_of_the_sequence_space_neither_wrap_nor_panic() {
        let mut tracker = GapTracker::default();
        assert_eq!(yielded(&mut tracker, 0, &[1, u64::MAX]), vec![1, u64::MAX]);
        let missed = tracker.missed();
        assert_eq!(missed, u64::MAX - 2);
        tracker.announced(0, u64::MAX, u64::MAX, GapReason::Overflow);
        tracker.announced(0, 0, u64::MAX, GapReason::Overflow);
        assert_eq!(tracker.missed(), missed, "nothing after the last sequence");
        let gap = Gap::Missed {
            from: 0,
            to: u64::MAX,
            reason: None,
        };
        assert_eq!(gap.missed(), Some(u64::MAX));
    }

    #[test]
    fn a_subscription_taken_up_starts_at_its_first_message_or_gap() {
        let mut tracker = GapTracker::taken_up();
        assert_eq!(yielded(&mut tracker, 0, &[5, 6, 8]), vec![5, 6, 8]);
        assert_eq!(
            tracker.take(),
            vec![Gap::Missed {
                from: 7,
                to: 7,
                reason: None
            }],
            "only what this client missed after taking it up"
        );

        let mut tracker = GapTracker::taken_up();
        tracker.announced(0, 3, 4, GapReason::Overflow);
        assert_eq!(
            tracker.take(),
            vec![Gap::Missed {
                from: 3,
                to: 4,
                reason: Some(GapReason::Overflow)
            }],
            "an announced gap is kept whole, without the sequences before it"
        );
        assert_eq!(yielded(&mut tracker, 0, &[5]), vec![5]);
        assert!(tracker.take().is_empty());
    }
}

#[cfg(test)]
mod datagram_tests {
    use super::*;

    #[test]
    fn a_skipped_sequence_is_lost_until_it_arrives_late() {
        let mut tracker = DatagramTracker::default();
        assert!(tracker.accept(0, 1));
        assert!(tracker.accept(0, 4));
        assert_eq!(tracker.lost(), 2);
        assert!(tracker.accept(0, 2), "a late arrival is still yielded");
        assert_eq!(tracker.lost(), 1);
        assert!(!tracker.accept(0, 2), "but only once");
        assert!(!tracker.accept(0, 4));
    }

    #[test]
    fn announced_sequences_are_lost_for_good() {
        let mut tracker = DatagramTracker::default();
        assert!(tracker.accept(0, 1));
        assert!(tracker.accept(0, 5));
        tracker.announced(0, 3, 3);
        assert_eq!(tracker.lost(), 3, "2 and 4 may still come, 3 never will");
        assert!(!tracker.accept(0, 3));
        tracker.announced(0, 6, 10);
        assert_eq!(tracker.lost(), 8);
        assert!(tracker.accept(0, 11));
        assert_eq!(tracker.lost(), 8);
    }

    #[test]
    fn holes_are_bounded_and_old_ones_count_as_lost() {
        let mut tracker = DatagramTracker::default();
        assert!(tracker.accept(0, 1));
        assert!(tracker.accept(0, 2 + MAX_HOLES as u64 * 2));
        assert_eq!(tracker.lost(), MAX_HOLES as u64 * 2);
        assert!(tracker.holes.len() <= MAX_HOLES);
    }

    #[test]
    fn what_the_broker_sent_and_was_not_seen_is_lost_until_it_arrives_late() {
        let mut tracker = DatagramTracker::default();
        assert!(tracker.accept(0, 1));
        tracker.sent_through(0, 3);
        assert_eq!(tracker.lost(), 2, "2 and 3 were sent and have not come");
        assert!(tracker.accept(0, 3), "a late arrival is still yielded");
        assert_eq!(tracker.lost(), 1);
        tracker.sent_through(0, 2);
        assert_eq!(tracker.lost(), 1, "an older mark changes nothing");
        assert!(tracker.accept(0, 4));
        assert_eq!(tracker.lost(), 1);
        tracker.sent_through(1, 2);
        assert_eq!(tracker.lost(), 2, "a new session starts afresh");
    }

    #[test]
    fn a_mark_at_the_largest_sequence_never_panics() {
        let mut tracker = DatagramTracker::default();
        assert!(tracker.accept(0, 1));
        tracker.sent_through(0, u64::MAX);
        assert_eq!(tracker.lost(), u64::MAX - 1);
        assert!(tracker.holes.len() <= MAX_HOLES);
        assert!(tracker.accept(0, u64::MAX), "the newest hole is kept");
    }

    #[test]
    fn a_new_session_starts_again() {
        let mut tracker = DatagramTracker::default();
        assert!(tracker.accept(0, 10));
        assert!(tracker.accept(1, 1));
        assert!(tracker.accept(1, 2));
    }

    #[test]
    fn an_inverted_or_extreme_announced_range_changes_nothing_and_never_panics() {
        let mut tracker = DatagramTracker::default();
        assert!(tracker.accept(0, 1));
        tracker.announced(0, 10, 5);
        assert_eq!(tracker.lost(), 0, "an empty range announces nothing");
        tracker.announced(0, u64::MAX, u64::MAX);
        assert!(tracker.lost() >= 1);
        assert!(!tracker.accept(0, u64::MAX));
    }
}
