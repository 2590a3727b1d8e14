//! A named session's deliveries from other nodes (docs/CLUSTERING.md, "Replicated sessions"):
//! an acknowledged publish on a node that does not own the session is written into the
//! session's records, in its inbox, before its `PublishAck`; the node serving the session
//! queues each one in its subscription, and removes it from the inbox in the same log entry,
//! so a delivery is queued once by whichever node serves the session, also one that takes the
//! session up later.

use std::sync::Arc;

use super::SessionState;
use crate::storage::session_records;
use crate::storage::{session_key, Op, SessionStore};

impl SessionState {
    /// Queues every delivery waiting in the session's records that is not queued yet. One for
    /// a subscription still starting waits for the next drain (when it has started); one for a
    /// subscription the session no longer has, or that does not read back, is removed.
    pub(super) fn drain_inbox(&mut self) {
        let Some(SessionStore::Replicated(store, binding)) = &self.store else {
            return;
        };
        let records = store.records_under(binding.key(), &[session_records::INBOX]);
        let limits = &self.shared.config.limits.topics;
        let waiting = session_records::inbox(&records, limits);
        // A delivery queued before is left alone until its removal is applied.
        self.inbox_queued
            .retain(|queued| waiting.iter().any(|(slot, _)| slot == queued));
        let this = session_key(self.id);
        // The queued message and the delivery's removal go into one entry.
        let _whole = store.hold();
        for (slot, message) in waiting {
            if self.inbox_queued.contains(&slot) || self.starting.contains_key(&slot.subscription) {
                continue;
            }
            let subscription = self
                .subscriptions
                .get(&slot.subscription)
                .filter(|subscription| subscription.queue.is_replicated());
            match (message, subscription) {
                (Some((session, message)), Some(subscription)) if session == this => {
                    subscription.queue.push(&Arc::new(message));
                }
                _ => {
                    tracing::debug!(session = %self.id, subscription = slot.subscription, "a delivery for no subscription of this session: removed");
                }
            }
            store.append(binding, [Op::DeleteInbox(slot)]);
            self.inbox_queued.insert(slot);
        }
    }
}
