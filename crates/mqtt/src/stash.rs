//! Deliveries that arrive for a subscription before the broker's `Subscribed` answer says
//! which MQTT filter it is (the broker may start a subscription's stream first): kept until
//! that answer, then delivered in order.
//!
//! Bounded per subscription ([`STASH_LIMIT`] deliveries) and per connection in bytes
//! ([`STASH_BYTES`]: topic, headers and payload of every delivery kept). Past either, a
//! delivery is not kept: a QoS 0 one is lost, as MQTT allows; a QoS 1 one stays unacknowledged
//! at the broker and comes again on the session's next connection.

use std::collections::HashMap;

use cassini_protocol::{Delivery, SubscriptionId};

/// Deliveries kept for one subscription, at most.
pub(crate) const STASH_LIMIT: usize = 4096;
/// Bytes kept for all of a connection's subscriptions, at most.
pub(crate) const STASH_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Stash {
    kept: HashMap<SubscriptionId, Vec<Delivery>>,
    bytes: usize,
}

impl Stash {
    /// Keeps `delivery` for `subscription`, if there is room.
    pub(crate) fn keep(&mut self, subscription: SubscriptionId, delivery: Delivery) {
        let size = size_of(&delivery);
        if self.bytes.saturating_add(size) > STASH_BYTES {
            return;
        }
        let kept = self.kept.entry(subscription).or_default();
        if kept.len() < STASH_LIMIT {
            kept.push(delivery);
            self.bytes += size;
        }
    }

    /// What was kept for `subscription`, in order, and forgets it.
    pub(crate) fn take(&mut self, subscription: SubscriptionId) -> Vec<Delivery> {
        let taken = self.kept.remove(&subscription).unwrap_or_default();
        let size: usize = taken.iter().map(size_of).sum();
        self.bytes = self.bytes.saturating_sub(size);
        taken
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        self.kept.clear();
        self.bytes = 0;
    }
}

fn size_of(delivery: &Delivery) -> usize {
    let headers: usize = delivery
        .headers
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    delivery.topic.len() + headers + delivery.payload.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery(payload: usize) -> Delivery {
        Delivery {
            topic: "t".into(),
            payload: bytes::Bytes::from(vec![0u8; payload]),
            ..Delivery::default()
        }
    }

    #[test]
    fn a_connection_s_stash_holds_at_most_its_bytes() {
        let mut stash = Stash::default();
        for subscription in 0..20 {
            stash.keep(subscription, delivery(1024 * 1024));
        }
        assert!(stash.bytes <= STASH_BYTES);
        assert_eq!(stash.kept.values().map(Vec::len).sum::<usize>(), 7);
        assert_eq!(stash.take(0).len(), 1);
        stash.keep(30, delivery(1024 * 1024));
        assert_eq!(stash.take(30).len(), 1, "room again once taken");
    }
}
