//! The queues of a session's subscriptions, by subscription id, as its connection sees them:
//! where the connection's `Ack` frames go, and what a shutdown waits to see delivered.
//!
//! The session actor is the only writer (it adds a queue when a subscription is made and
//! removes it when the subscription ends); the connection driver reads it for every `Ack` frame,
//! so acknowledgements take no actor hop and no mailbox.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cassini_protocol::{SequenceRange, SubscriptionId};

use crate::queue::SubscriptionQueue;

/// The subscriptions' queues of one session.
#[derive(Debug, Default)]
pub(crate) struct AckTargets {
    queues: RwLock<HashMap<SubscriptionId, Arc<SubscriptionQueue>>>,
}

impl AckTargets {
    pub(crate) fn insert(&self, subscription: SubscriptionId, queue: Arc<SubscriptionQueue>) {
        self.write().insert(subscription, queue);
    }

    pub(crate) fn remove(&self, subscription: SubscriptionId) {
        self.write().remove(&subscription);
    }

    /// Applies an acknowledgement; returns how many in-flight messages it released. An `Ack`
    /// for a subscription that ended (or is at most once) releases nothing.
    pub(crate) fn ack(&self, subscription: SubscriptionId, ranges: &[SequenceRange]) -> usize {
        let queue = self
            .queues
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&subscription)
            .cloned();
        queue.map_or(0, |queue| queue.ack(ranges))
    }

    /// Whether every queue of the session is empty, has no batch half-written by its writer and,
    /// at least once, is fully acknowledged.
    pub(crate) fn all_delivered(&self) -> bool {
        self.queues
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .values()
            .all(|queue| {
                let stats = queue.stats();
                stats.depth == 0 && stats.in_flight == 0 && stats.unwritten == 0
            })
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<SubscriptionId, Arc<SubscriptionQueue>>> {
        // Every mutation is one map operation: a poisoned lock is still consistent.
        self.queues
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
