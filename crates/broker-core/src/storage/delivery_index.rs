//! Which named sessions' at-least-once subscriptions a topic reaches, anywhere in the cluster
//! (docs/CLUSTERING.md, "Replicated sessions"): built on every member from the subscriptions in
//! the cluster's records as they are applied, so a node that does not own a session can still
//! deliver an acknowledged publish into that session's records before its `PublishAck`, also
//! while no node serves the session.
//!
//! Only plain at-least-once subscriptions are indexed: a queue group's member is chosen by the
//! node that routes the message. It owns the index, and nothing else; it reads records through
//! [`session_records`](super::session_records).

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use cassini_protocol::{TopicFilter, TopicLimits, TopicName};
use cassini_replication::{RecordsChange, SessionKey};

use super::records::SubscriptionRecord;
use super::session_records::{self, SubscriptionChange};
use crate::filter_trie::FilterTrie;

/// One indexed subscription: where a delivery for it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryTarget {
    /// The session, as the cluster claims it.
    pub(crate) key: SessionKey,
    /// The session's id in its records.
    pub(crate) session: u128,
    /// The subscription's id in the session.
    pub(crate) subscription: u64,
}

#[derive(Default)]
struct Index {
    /// Per session, its indexed subscriptions' filters.
    sessions: HashMap<SessionKey, HashMap<u64, TopicFilter>>,
    trie: FilterTrie<Vec<Arc<DeliveryTarget>>>,
}

/// The index of named sessions' at-least-once subscriptions. See the module documentation.
pub(crate) struct DeliveryIndex {
    index: RwLock<Index>,
    limits: TopicLimits,
}

impl std::fmt::Debug for DeliveryIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryIndex").finish_non_exhaustive()
    }
}

impl DeliveryIndex {
    /// An empty index; filters are read under `limits`.
    pub(crate) fn new(limits: TopicLimits) -> Self {
        Self {
            index: RwLock::default(),
            limits,
        }
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        // Every change below leaves the index whole between statements.
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies changes to session records, in the order applied.
    pub(crate) fn observe(&self, changes: &[RecordsChange]) {
        let mut index = self.write();
        for change in changes {
            match change {
                RecordsChange::Applied(session, ops) => {
                    for change in ops.iter().filter_map(session_records::subscription_change) {
                        match change {
                            SubscriptionChange::Put(record) => {
                                index.put(session, &record, &self.limits);
                            }
                            SubscriptionChange::Removed(id) => index.remove(session, id),
                            SubscriptionChange::AllRemoved => index.remove_session(session),
                        }
                    }
                }
                RecordsChange::Replaced(session, records) => {
                    index.remove_session(session);
                    for record in records.iter().flat_map(session_records::subscriptions) {
                        index.put(session, &record, &self.limits);
                    }
                }
            }
        }
    }

    /// The indexed subscriptions whose filter matches `topic`.
    pub(crate) fn targets(&self, topic: &TopicName) -> Vec<Arc<DeliveryTarget>> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        if index.sessions.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        index
            .trie
            .for_each_match(topic, |targets| found.extend(targets.iter().cloned()));
        found
    }
}

impl Index {
    fn put(&mut self, session: &SessionKey, record: &SubscriptionRecord, limits: &TopicLimits) {
        self.remove(session, record.subscription);
        if record.options.acks.is_none() || record.options.queue_group.is_some() {
            return;
        }
        let Ok(filter) = TopicFilter::parse(&record.filter, limits) else {
            return;
        };
        let target = Arc::new(DeliveryTarget {
            key: session.clone(),
            session: record.session,
            subscription: record.subscription,
        });
        self.trie
            .slot(&filter)
            .get_or_insert_with(Vec::new)
            .push(target);
        self.sessions
            .entry(session.clone())
            .or_default()
            .insert(record.subscription, filter);
    }

    fn remove(&mut self, session: &SessionKey, subscription: u64) {
        let Some(filters) = self.sessions.get_mut(session) else {
            return;
        };
        let Some(filter) = filters.remove(&subscription) else {
            return;
        };
        if filters.is_empty() {
            self.sessions.remove(session);
        }
        let slot = self.trie.slot(&filter);
        if let Some(targets) = slot {
            targets.retain(|t| !(t.key == *session && t.subscription == subscription));
            if targets.is_empty() {
                self.trie.remove(&filter);
            }
        }
    }

    fn remove_session(&mut self, session: &SessionKey) {
        let ids: Vec<u64> = self
            .sessions
            .get(session)
            .map(|filters| filters.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.remove(session, id);
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use cassini_protocol::{AckOptions, SubscribeOptions};
    use cassini_replication::{RecordOp, SessionRecords};

    use super::*;
    use crate::storage::Op;

    fn alice() -> SessionKey {
        SessionKey {
            identity: "alice".into(),
            name: "s".into(),
        }
    }

    fn subscribe(id: u64, filter: &str, acks: bool, group: Option<&str>) -> RecordOp {
        let options = SubscribeOptions {
            acks: acks.then(AckOptions::default),
            queue_group: group.map(str::to_owned),
            ..SubscribeOptions::default()
        };
        let op = Op::PutSubscription(SubscriptionRecord {
            session: 7,
            subscription: id,
            filter: filter.into(),
            options,
        });
        let (_, mut ops) = session_records::record_ops(&op).expect("a session's op");
        ops.remove(0)
    }

    fn topic(name: &str) -> TopicName {
        TopicName::parse(name, &TopicLimits::default()).expect("topic")
    }

    fn found(index: &DeliveryIndex, name: &str) -> Vec<u64> {
        let mut ids: Vec<u64> = index
            .targets(&topic(name))
            .iter()
            .map(|t| t.subscription)
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn indexes_plain_at_least_once_subscriptions_as_they_are_applied() {
        let index = DeliveryIndex::new(TopicLimits::default());
        index.observe(&[RecordsChange::Applied(
            alice(),
            vec![
                subscribe(1, "orders.>", true, None),
                subscribe(2, "orders.eu", false, None),
                subscribe(3, "orders.*", true, Some("workers")),
                subscribe(4, "orders.eu", true, None),
            ],
        )]);
        assert_eq!(
            found(&index, "orders.eu"),
            [1, 4],
            "at most once and groups are not"
        );
        assert_eq!(index.targets(&topic("orders.eu"))[0].session, 7);

        index.observe(&[RecordsChange::Applied(
            alice(),
            vec![RecordOp::Delete {
                key: {
                    let (_, ops) =
                        session_records::record_ops(&Op::DeleteSubscription(7, 4)).expect("op");
                    match &ops[0] {
                        RecordOp::Delete { key } => key.clone(),
                        other => panic!("{other:?}"),
                    }
                },
            }],
        )]);
        assert_eq!(found(&index, "orders.eu"), [1]);

        index.observe(&[RecordsChange::Applied(
            alice(),
            vec![RecordOp::DeletePrefix {
                prefix: Bytes::new(),
            }],
        )]);
        assert!(found(&index, "orders.eu").is_empty(), "the session ended");
    }

    #[test]
    fn replaced_records_replace_the_sessions_entries() {
        let index = DeliveryIndex::new(TopicLimits::default());
        index.observe(&[RecordsChange::Applied(
            alice(),
            vec![subscribe(1, "a.>", true, None)],
        )]);
        let mut records = SessionRecords::new();
        if let RecordOp::Put { key, value } = subscribe(2, "b.>", true, None) {
            records.insert(key, value);
        }
        index.observe(&[RecordsChange::Replaced(alice(), Some(records))]);
        assert!(found(&index, "a.x").is_empty());
        assert_eq!(found(&index, "b.x"), [2]);
        index.observe(&[RecordsChange::Replaced(alice(), None)]);
        assert!(found(&index, "b.x").is_empty(), "forgotten with its claim");
    }
}
