//! Which `Gap` frames a subscription writer owes its client.
//!
//! The writer knows where its client stands (the [`Attachment`]) and sees the sequence of every
//! new message it sends; any sequence it skips is a gap. A gap is split by cause: sequences an
//! earlier writer sent on a connection that was lost ([`GapReason::Undelivered`]), sequences
//! lost on a cluster route before they reached this node ([`GapReason::ClusterRoute`], the
//! ranges the queue reports), and sequences the overflow policy dropped before anyone sent them
//! ([`GapReason::Overflow`]). Redeliveries of an at-least-once subscription are below the
//! expected sequence and never make a gap. No I/O here.

use std::collections::VecDeque;

use cassini_protocol::{Gap, GapReason, SubscriptionId};

use crate::queue::Attachment;

/// The next sequence the client expects, and how to explain a jump past it.
#[derive(Debug)]
pub(crate) struct GapAnnouncer {
    subscription: SubscriptionId,
    next_expected: u64,
    undelivered_through: u64,
    /// Ranges lost on a cluster route not yet announced, oldest first.
    route_lost: VecDeque<(u64, u64)>,
}

impl GapAnnouncer {
    pub(crate) fn new(subscription: SubscriptionId, attachment: &Attachment) -> Self {
        Self {
            subscription,
            next_expected: attachment.next_expected,
            undelivered_through: attachment.undelivered_through,
            route_lost: VecDeque::new(),
        }
    }

    /// Sequences in `ranges` (oldest first) were lost on a cluster route: a gap over them says
    /// so.
    pub(crate) fn lost_on_route(&mut self, ranges: impl IntoIterator<Item = (u64, u64)>) {
        self.route_lost.extend(ranges);
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
        let mut dropped_from = from.max(self.undelivered_through.saturating_add(1));
        while dropped_from <= last {
            // The route's ranges below this point were announced (or passed) already.
            while self
                .route_lost
                .front()
                .is_some_and(|&(_, to)| to < dropped_from)
            {
                self.route_lost.pop_front();
            }
            match self.route_lost.front().copied() {
                Some((lost_from, lost_to)) if lost_from <= last => {
                    if dropped_from < lost_from {
                        gaps.push(self.gap(dropped_from, lost_from - 1, GapReason::Overflow));
                    }
                    let to = lost_to.min(last);
                    gaps.push(self.gap(dropped_from.max(lost_from), to, GapReason::ClusterRoute));
                    dropped_from = to.saturating_add(1);
                    if to == u64::MAX {
                        break;
                    }
                }
                _ => {
                    gaps.push(self.gap(dropped_from, last, GapReason::Overflow));
                    break;
                }
            }
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
