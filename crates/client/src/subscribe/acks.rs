//! Acknowledgements of an at-least-once subscription's deliveries, waiting to be sent.
//!
//! The [`crate::Subscription`] handle owns one [`PendingAcks`]: it adds a sequence when the
//! application is done with that message (it asked for the next one), coalesces consecutive
//! sequences into ranges, and sends them as one `Ack` frame once [`ACK_BATCH`] are waiting or
//! the subscription has nothing more to yield right now. Acknowledgements belong to the epoch
//! (session) they were made in; those of an older epoch are discarded, since the broker that
//! sent those messages forgot them with the session. No I/O here.

use cassini_protocol::{Ack, SequenceRange, SubscriptionId};

/// Acknowledgements sent in one frame once this many are waiting.
pub(crate) const ACK_BATCH: u64 = 64;

/// Most separate ranges kept while they cannot be sent (reconnecting); beyond it the oldest are
/// forgotten, and the broker redelivers those messages, which the subscription then
/// acknowledges again without yielding them twice.
const MAX_RANGES: usize = 4096;

/// Acknowledgements not yet sent, and the message the application holds now.
#[derive(Debug, Default)]
pub(crate) struct PendingAcks {
    /// The epoch the pending ranges belong to.
    epoch: u64,
    /// Sequences to acknowledge, as ranges in the order they were added.
    ranges: Vec<SequenceRange>,
    /// How many sequences the ranges cover.
    count: u64,
    /// The message yielded last, acknowledged when the application asks for the next.
    held: Option<(u64, u64)>,
}

impl PendingAcks {
    /// The application was given message `sequence` of `epoch`.
    pub(crate) fn yielded(&mut self, epoch: u64, sequence: u64) {
        self.held = Some((epoch, sequence));
    }

    /// The application asked for the next message: it is done with the one it held.
    pub(crate) fn last_processed(&mut self) {
        if let Some((epoch, sequence)) = self.held.take() {
            self.add(epoch, sequence);
        }
    }

    /// Queues the acknowledgement of `sequence` of `epoch`.
    pub(crate) fn add(&mut self, epoch: u64, sequence: u64) {
        if epoch != self.epoch {
            self.ranges.clear();
            self.count = 0;
            self.epoch = epoch;
        }
        match self.ranges.last_mut() {
            Some(last) if last.to.checked_add(1) == Some(sequence) => last.to = sequence,
            Some(last) if (last.from..=last.to).contains(&sequence) => return,
            _ => self.ranges.push(SequenceRange {
                from: sequence,
                to: sequence,
            }),
        }
        self.count = self.count.saturating_add(1);
        if self.ranges.len() > MAX_RANGES {
            let forgotten = self.ranges.remove(0);
            self.count = self
                .count
                .saturating_sub((forgotten.to - forgotten.from).saturating_add(1));
        }
    }

    /// Whether to send now: something is waiting and either `idle` (nothing more to yield right
    /// now) or a batch is full.
    pub(crate) fn due(&self, idle: bool) -> bool {
        !self.ranges.is_empty() && (idle || self.count >= ACK_BATCH)
    }

    /// The `Ack` frame for `subscription` with everything waiting in `epoch`, if anything is.
    pub(crate) fn take(&mut self, epoch: u64, subscription: SubscriptionId) -> Option<Ack> {
        if epoch != self.epoch {
            self.ranges.clear();
            self.count = 0;
            return None;
        }
        if self.ranges.is_empty() {
            return None;
        }
        self.count = 0;
        Some(Ack {
            subscription,
            ranges: std::mem::take(&mut self.ranges),
        })
    }

    /// An `Ack` taken for `epoch` that could not be sent: keep it for the next attempt.
    pub(crate) fn put_back(&mut self, epoch: u64, ack: Ack) {
        if epoch != self.epoch {
            return;
        }
        let later = std::mem::replace(&mut self.ranges, ack.ranges);
        self.ranges.extend(later);
        self.count = self
            .ranges
            .iter()
            .map(|range| range.to.saturating_sub(range.from).saturating_add(1))
            .fold(0u64, u64::saturating_add);
        while self.ranges.len() > MAX_RANGES {
            let forgotten = self.ranges.remove(0);
            self.count = self
                .count
                .saturating_sub((forgotten.to - forgotten.from).saturating_add(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(ack: &Ack) -> Vec<(u64, u64)> {
        ack.ranges
            .iter()
            .map(|range| (range.from, range.to))
            .collect()
    }

    #[test]
    fn a_message_is_acknowledged_once_the_application_asks_for_the_next() {
        let mut acks = PendingAcks::default();
        acks.yielded(0, 1);
        assert!(!acks.due(true), "still held by the application");
        acks.last_processed();
        assert!(acks.due(true));
        let ack = acks.take(0, 7).expect("an ack");
        assert_eq!(ack.subscription, 7);
        assert_eq!(ranges(&ack), vec![(1, 1)]);
        assert!(acks.take(0, 7).is_none(), "sent once");
    }

    #[test]
    fn consecutive_sequences_coalesce_and_a_full_batch_is_due_while_busy() {
        let mut acks = PendingAcks::default();
        for sequence in 1..ACK_BATCH {
            acks.add(0, sequence);
        }
        acks.add(0, 100);
        assert!(acks.due(false));
        let ack = acks.take(0, 1).expect("an ack");
        assert_eq!(ranges(&ack), vec![(1, ACK_BATCH - 1), (100, 100)]);
    }

    #[test]
    fn acknowledgements_of_a_lost_session_are_discarded() {
        let mut acks = PendingAcks::default();
        acks.add(0, 1);
        assert!(acks.take(1, 9).is_none());
        acks.add(1, 1);
        assert!(acks.take(1, 9).is_some());
    }

    #[test]
    fn an_ack_that_could_not_be_sent_is_kept_in_order() {
        let mut acks = PendingAcks::default();
        acks.add(0, 1);
        let ack = acks.take(0, 1).expect("an ack");
        acks.add(0, 5);
        acks.put_back(0, ack);
        assert!(acks.due(true));
        assert_eq!(
            ranges(&acks.take(0, 1).expect("an ack")),
            vec![(1, 1), (5, 5)]
        );
    }
}
