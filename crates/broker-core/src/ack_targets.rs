//! The queues of a session's subscriptions, by subscription id, as its connection sees them:
//! where the connection's `Ack` frames go, and what a shutdown waits to see delivered.
//!
//! The session actor is the only writer (it adds a queue when a subscription is made and
//! removes it when the subscription ends); the connection driver reads it for every `Ack` frame,
//! so acknowledgements take no actor hop and no mailbox. Its queues report their progress to
//! one [`Notify`], on which a shutdown's drain waits ([`AckTargets::delivered`]).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::sync::Notify;

use cassini_protocol::{SequenceRange, SubscriptionId};

use crate::queue::SubscriptionQueue;

/// The subscriptions' queues of one session.
#[derive(Debug, Default)]
pub(crate) struct AckTargets {
    queues: RwLock<HashMap<SubscriptionId, Arc<SubscriptionQueue>>>,
    /// Told by every queue when it may have become delivered, and when a queue leaves.
    progress: Arc<Notify>,
}

impl AckTargets {
    pub(crate) fn insert(&self, subscription: SubscriptionId, queue: Arc<SubscriptionQueue>) {
        queue.report_progress_to(Arc::clone(&self.progress));
        self.write().insert(subscription, queue);
    }

    pub(crate) fn remove(&self, subscription: SubscriptionId) {
        self.write().remove(&subscription);
        self.progress.notify_one();
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

    /// Waits until [`AckTargets::all_delivered`] holds. Each queue wakes it when it may have
    /// become delivered (a batch written, an acknowledgement, its writer idle) and when it
    /// leaves; it is checked again then, never polled. One waiter at a time (the driver of the
    /// session's connection).
    pub(crate) async fn delivered(&self) {
        while !self.all_delivered() {
            self.progress.notified().await;
        }
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
