//! Which `Gap` frames a subscription writer owes its client.
//!
//! The writer knows where its client stands (the [`Attachment`]) and sees the sequence of every
//! new message it sends; any sequence it skips is a gap. A gap is split by cause: sequences an
//! earlier writer sent on a connection that was lost ([`GapReason::Undelivered`]), and sequences
//! the overflow policy dropped before anyone sent them ([`GapReason::Overflow`]). Redeliveries
//! of an at-least-once subscription are below the expected sequence and never make a gap.
//! No I/O here.

use cassini_protocol::{Gap, GapReason, SubscriptionId};

use crate::queue::Attachment;

/// The next sequence the client expects, and how to explain a jump past it.
#[derive(Debug)]
pub(crate) struct GapAnnouncer {
    subscription: SubscriptionId,
    next_expected: u64,
    undelivered_through: u64,
}

impl GapAnnouncer {
    pub(crate) fn new(subscription: SubscriptionId, attachment: &Attachment) -> Self {
        Self {
            subscription,
            next_expected: attachment.next_expected,
            undelivered_through: attachment.undelivered_through,
        }
    }

    /// The gaps to announce before sending the new message `sequence`.
    pub(crate) fn before(&mut self, sequence: u64) -> Vec<Gap> {
        let gaps = self.through(sequence.saturating_sub(1));
        self.next_expected = self.next_expected.max(sequence.saturating_add(1));
        gaps
    }

    /// The gaps up to and including `last`, when nothing after `last` is left to send.
    pub(crate) fn through(&mut self, last: u64) -> Vec<Gap> {
        let mut gaps = Vec::new();
        if last < self.next_expected {
            return gaps;
        }
        let from = self.next_expected;
        if from <= self.undelivered_through {
            gaps.push(self.gap(
                from,
                last.min(self.undelivered_through),
                GapReason::Undelivered,
            ));
        }
        let overflow_from = from.max(self.undelivered_through.saturating_add(1));
        if overflow_from <= last {
            gaps.push(self.gap(overflow_from, last, GapReason::Overflow));
        }
        self.next_expected = last.saturating_add(1);
        gaps
    }

    fn gap(&self, from: u64, to: u64, reason: GapReason) -> Gap {
        Gap {
            subscription: self.subscription,
            from,
            to,
            reason,
        }
    }
}

#[cfg(test)]
mod tests;
