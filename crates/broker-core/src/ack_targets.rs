//! Where a connection's `Ack` frames go: the queues of its session's at-least-once
//! subscriptions, by subscription id.
//!
//! The session actor is the only writer (it adds a queue when an at-least-once subscription is
//! made and removes it when the subscription ends); the connection driver reads it for every
//! `Ack` frame, so acknowledgements take no actor hop and no mailbox.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use cassini_protocol::{SequenceRange, SubscriptionId};

use crate::queue::SubscriptionQueue;

/// The at-least-once subscriptions of one session.
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
    /// for a subscription that ended (or was never at least once) releases nothing.
    pub(crate) fn ack(&self, subscription: SubscriptionId, ranges: &[SequenceRange]) -> usize {
        let queue = self
            .queues
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&subscription)
            .cloned();
        queue.map_or(0, |queue| queue.ack(ranges))
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
