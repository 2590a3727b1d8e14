//! A named session's deliveries from other nodes (docs/CLUSTERING.md, "Replicated sessions"):
//! an acknowledged publish on a node that does not own the session is written into the
//! session's records, in its inbox, before its `PublishAck`; the node serving the session
//! queues each one in its subscription, and removes it from the inbox in the same log entry,
//! so a delivery is queued once by whichever node serves the session, also one that takes the
//! session up later.

use std::collections::HashSet;
use std::sync::Arc;

use super::SessionState;
use crate::queue::{PushOutcome, SubscriptionQueue};
use crate::storage::session_records::{self, InboxSlot};
use crate::storage::{session_key, Op, SessionStore};

impl SessionState {
    /// Queues the deliveries waiting for `subscription` in its `queue` before its route is
    /// live (a take-up): they come before anything this node routes to it afterwards, as
    /// they were published before.
    pub(super) fn drain_inbox_of(&mut self, subscription: u64, queue: &SubscriptionQueue) {
        let Some(SessionStore::Replicated(store, binding)) = &self.store else {
            return;
        };
        let records =
            store.records_under(binding.key(), &session_records::inbox_prefix(subscription));
        let this = session_key(self.id);
        let limits = &self.shared.config.limits.topics;
        for (slot, message) in session_records::inbox(&records, limits) {
            match message {
                Some((session, message)) if session == this => {
                    let outcome = queue.push_delivered(&Arc::new(message), slot);
                    if matches!(outcome, PushOutcome::Closed | PushOutcome::Overflowed) {
                        continue;
                    }
                }
                _ => store.append(binding, [Op::DeleteInbox(slot)]),
            }
            self.inbox_queued.insert(slot);
        }
    }

    /// Queues every delivery waiting in the session's records that is not queued yet. One for
    /// a subscription still starting, or in the records but not restored here, waits for a
    /// later drain; one the queue does not take (closed) stays; one for a subscription the
    /// records no longer hold, or for an earlier session of the name, is removed.
    pub(super) fn drain_inbox(&mut self) {
        let Some(SessionStore::Replicated(store, binding)) = &self.store else {
            return;
        };
        let records = store.records_under(binding.key(), &[session_records::INBOX]);
        let limits = &self.shared.config.limits.topics;
        let waiting = session_records::inbox(&records, limits);
        // A delivery queued before is left alone until its removal is applied.
        let present: HashSet<InboxSlot> = waiting.iter().map(|(slot, _)| *slot).collect();
        self.inbox_queued.retain(|queued| present.contains(queued));
        let this = session_key(self.id);
        for (slot, message) in waiting {
            if self.inbox_queued.contains(&slot) || self.starting.contains_key(&slot.subscription) {
                continue;
            }
            let subscription_exists = || {
                !store
                    .records_under(
                        binding.key(),
                        &session_records::subscription_key(slot.subscription),
                    )
                    .is_empty()
            };
            let subscription = self
                .subscriptions
                .get(&slot.subscription)
                .filter(|subscription| subscription.queue.is_replicated());
            let taken = match (message, subscription) {
                (Some((session, message)), Some(subscription)) if session == this => {
                    // Stored and taken out of the inbox in one append, or left there.
                    !matches!(
                        subscription.queue.push_delivered(&Arc::new(message), slot),
                        PushOutcome::Closed | PushOutcome::Overflowed
                    )
                }
                (Some((session, _)), _) if session == this && subscription_exists() => {
                    // Its subscription is in the records but not served here (not restored):
                    // the delivery waits for a start that restores it.
                    false
                }
                _ => {
                    tracing::debug!(session = %self.id, subscription = slot.subscription, "a delivery for no subscription of this session: removed");
                    store.append(binding, [Op::DeleteInbox(slot)]);
                    true
                }
            };
            if taken {
                self.inbox_queued.insert(slot);
            }
        }
    }
}
