//! Loss accounting for a datagram subscription.
//!
//! Datagrams may arrive late, out of order, or never. The [`DatagramTracker`] yields every
//! sequence once, in the order it arrives: a sequence above the highest seen opens holes for
//! the ones skipped; a late arrival fills its hole. The loss counter is every hole still open
//! plus every sequence known never to come (announced by the broker's `Gap`, or a hole pushed
//! out of the [`MAX_HOLES`] most recent). A new session (epoch) starts afresh. No I/O here.

use std::collections::BTreeSet;

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
        self.holes.extend((to + 1 - keep)..=to);
        while self.holes.len() > MAX_HOLES {
            self.holes.pop_first();
            self.lost_for_good += 1;
        }
    }
}

#[cfg(test)]
mod tests;
