//! Which named sessions' at-least-once subscriptions a topic reaches, anywhere in the cluster
//! (docs/CLUSTERING.md, "Replicated sessions"): built on every member from the subscriptions in
//! the cluster's records as they are applied, so a node that does not own a session can still
//! deliver an acknowledged publish into that session's records before its `PublishAck`, also
//! while no node serves the session.
//!
//! Only plain at-least-once subscriptions are indexed as targets: a queue group's member is
//! chosen by the node that routes the message. The at-least-once queue group members are
//! indexed apart, by group name, so a node can tell whether a group's copy of a publish may
//! have gone to a member that gets only what commits. Each subscription's deliveries waiting in the records are
//! counted: one that holds as many as its queue bound in messages gets no more (they are
//! routed as without the records, and a node taking the session up announces the floor gap
//! for what it missed).
//!
//! It also knows which of this node's own deliveries are not queued yet: those written and
//! not yet applied here, and those applied and waiting in the records. While a subscription
//! that this node serves has any, this node's next publishes for it go through the records
//! too ([`DeliveryIndex::holds_back`]), so a publish routed here never overtakes an earlier
//! one of the same publisher that went through the records (a session taken up here while
//! its publisher's deliveries were on their way). It owns the index, and nothing else; it
//! reads records through [`session_records`](super::session_records).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock, RwLockWriteGuard};

use cassini_protocol::{TopicFilter, TopicLimits, TopicName};
use cassini_replication::{RecordsChange, SessionKey};

use super::records::SubscriptionRecord;
use super::session_records::{self, InboxChange, SubscriptionChange};
use crate::config::QueueConfig;
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
    /// The most deliveries that wait for it: its queue bound in messages.
    cap: usize,
}

/// A subscription's deliveries waiting in the records: all, and this node's own.
#[derive(Debug, Default, Clone, Copy)]
struct Waiting {
    all: usize,
    own: usize,
}

#[derive(Default)]
struct Index {
    /// Per session, its indexed subscriptions' filters.
    sessions: HashMap<SessionKey, HashMap<u64, TopicFilter>>,
    trie: FilterTrie<Vec<Arc<DeliveryTarget>>>,
    /// Per session, its at-least-once queue group members' filters.
    grouped: HashMap<SessionKey, HashMap<u64, TopicFilter>>,
    /// The same members: per filter, each one's session, subscription and group name.
    groups: FilterTrie<Vec<(SessionKey, u64, String)>>,
    /// Per session and subscription, its deliveries waiting in the records.
    waiting: HashMap<SessionKey, BTreeMap<u64, Waiting>>,
    /// Per session and subscription, the store's ticket of this node's last delivery written
    /// for it: not applied here while the store's committed ticket is below it.
    written: HashMap<(SessionKey, u64), u64>,
    /// `written` is swept of applied tickets once it holds this many (twice what a sweep
    /// left, at least [`WRITTEN_SWEEP`]): amortized, never a sweep per delivery.
    sweep_at: usize,
}

/// Tickets of deliveries written kept before those already applied are swept out.
const WRITTEN_SWEEP: usize = 1024;

/// The index of named sessions' at-least-once subscriptions. See the module documentation.
pub(crate) struct DeliveryIndex {
    index: RwLock<Index>,
    limits: TopicLimits,
    queues: QueueConfig,
    /// The origin this node's deliveries are numbered under.
    origin: u64,
}

impl std::fmt::Debug for DeliveryIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryIndex").finish_non_exhaustive()
    }
}

impl DeliveryIndex {
    /// An empty index; filters are read under `limits`, queue bounds under `queues`; this
    /// node's deliveries are numbered under `origin`.
    pub(crate) fn new(limits: TopicLimits, queues: QueueConfig, origin: u64) -> Self {
        Self {
            index: RwLock::default(),
            limits,
            queues,
            origin,
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
                    for op in ops {
                        if let Some(change) = session_records::subscription_change(op) {
                            match change {
                                SubscriptionChange::Put(record) => {
                                    self.put(&mut index, session, &record)
                                }
                                SubscriptionChange::Removed(id) => index.remove(session, id),
                                SubscriptionChange::AllRemoved => index.remove_session(session),
                            }
                        }
                        if let Some(change) = session_records::inbox_change(op) {
                            index.count(session, change, self.origin);
                        }
                    }
                }
                RecordsChange::Replaced(session, records) => {
                    index.remove_session(session);
                    index.waiting.remove(session);
                    if let Some(records) = records {
                        for record in session_records::subscriptions(records) {
                            self.put(&mut index, session, &record);
                        }
                        for (subscription, origin) in session_records::inbox_origins(records) {
                            let change = InboxChange::Added {
                                subscription,
                                origin,
                            };
                            index.count(session, change, self.origin);
                        }
                    }
                }
            }
        }
    }

    /// The indexed subscriptions whose filter matches `topic` and whose deliveries waiting
    /// are fewer than their cap.
    pub(crate) fn targets(&self, topic: &TopicName) -> Vec<Arc<DeliveryTarget>> {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        if index.sessions.is_empty() {
            return Vec::new();
        }
        let mut found = Vec::new();
        index.trie.for_each_match(topic, |targets| {
            found.extend(
                targets
                    .iter()
                    .filter(|target| index.waiting_for(target) < target.cap)
                    .cloned(),
            );
        });
        found
    }

    /// Notes that this node wrote a delivery for `target` under the store's `ticket`
    /// (everything up to `committed` is applied here).
    pub(crate) fn written(&self, target: &DeliveryTarget, ticket: u64, committed: u64) {
        let mut index = self.write();
        if index.written.len() >= index.sweep_at.max(WRITTEN_SWEEP) {
            index.written.retain(|_, last| *last > committed);
            index.sweep_at = index.written.len().saturating_mul(2);
        }
        let last = index
            .written
            .entry((target.key.clone(), target.subscription))
            .or_default();
        *last = (*last).max(ticket);
    }

    /// Whether a delivery this node wrote for `target` is not queued yet: written and not
    /// applied here (its ticket above `committed`), or waiting in the records. A publish on
    /// this node for a subscription it serves then goes through the records too, behind it.
    pub(crate) fn holds_back(&self, target: &DeliveryTarget, committed: u64) -> bool {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        let waiting = index
            .waiting
            .get(&target.key)
            .and_then(|counts| counts.get(&target.subscription))
            .is_some_and(|waiting| waiting.own > 0);
        waiting
            || index
                .written
                .get(&(target.key.clone(), target.subscription))
                .is_some_and(|last| *last > committed)
    }

    /// Whether a named session's at-least-once subscription in queue group `group` matches
    /// `topic`.
    pub(crate) fn has_group_member(&self, topic: &TopicName, group: &str) -> bool {
        let index = self.index.read().unwrap_or_else(|p| p.into_inner());
        if index.grouped.is_empty() {
            return false;
        }
        let mut found = false;
        index.groups.for_each_match(topic, |members| {
            found |= members.iter().any(|(_, _, name)| name == group);
        });
        found
    }

    fn put(&self, index: &mut Index, session: &SessionKey, record: &SubscriptionRecord) {
        let cap = self.queues.bounds_for(&record.options).max_messages;
        index.put(session, record, &self.limits, cap);
    }
}

impl Index {
    fn waiting_for(&self, target: &DeliveryTarget) -> usize {
        self.waiting
            .get(&target.key)
            .and_then(|counts| counts.get(&target.subscription))
            .map_or(0, |waiting| waiting.all)
    }

    /// Counts an inbox change; `own` is this node's origin.
    fn count(&mut self, session: &SessionKey, change: InboxChange, own: u64) {
        let counts = self.waiting.entry(session.clone()).or_default();
        match change {
            InboxChange::Added {
                subscription,
                origin,
            } => {
                let waiting = counts.entry(subscription).or_default();
                waiting.all += 1;
                waiting.own += usize::from(origin == own);
            }
            InboxChange::Removed {
                subscription,
                origin,
            } => {
                if let Some(waiting) = counts.get_mut(&subscription) {
                    waiting.all = waiting.all.saturating_sub(1);
                    if origin == own {
                        waiting.own = waiting.own.saturating_sub(1);
                    }
                    if waiting.all == 0 {
                        counts.remove(&subscription);
                    }
                }
            }
            InboxChange::Cleared(Some(id)) => {
                counts.remove(&id);
            }
            InboxChange::Cleared(None) => counts.clear(),
        }
        if counts.is_empty() {
            self.waiting.remove(session);
        }
    }

    fn put(
        &mut self,
        session: &SessionKey,
        record: &SubscriptionRecord,
        limits: &TopicLimits,
        cap: usize,
    ) {
        self.remove(session, record.subscription);
        if record.options.acks.is_none() {
            return;
        }
        let Ok(filter) = TopicFilter::parse(&record.filter, limits) else {
            return;
        };
        if let Some(group) = &record.options.queue_group {
            self.groups
                .slot(&filter)
                .get_or_insert_with(Vec::new)
                .push((session.clone(), record.subscription, group.clone()));
            self.grouped
                .entry(session.clone())
                .or_default()
                .insert(record.subscription, filter);
            return;
        }
        let target = Arc::new(DeliveryTarget {
            key: session.clone(),
            session: record.session,
            subscription: record.subscription,
            cap,
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
        self.remove_grouped(session, subscription);
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

    fn remove_grouped(&mut self, session: &SessionKey, subscription: u64) {
        let Some(filters) = self.grouped.get_mut(session) else {
            return;
        };
        let Some(filter) = filters.remove(&subscription) else {
            return;
        };
        if filters.is_empty() {
            self.grouped.remove(session);
        }
        if let Some(members) = self.groups.slot(&filter) {
            members.retain(|(key, id, _)| !(key == session && *id == subscription));
            if members.is_empty() {
                self.groups.remove(&filter);
            }
        }
    }

    fn remove_session(&mut self, session: &SessionKey) {
        let ids: Vec<u64> = [&self.sessions, &self.grouped]
            .into_iter()
            .filter_map(|map| map.get(session))
            .flat_map(|filters| filters.keys().copied())
            .collect();
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
    use crate::storage::session_records::InboxSlot;
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
    fn knows_the_at_least_once_queue_group_members_by_group() {
        let index = DeliveryIndex::new(TopicLimits::default(), QueueConfig::default(), 1);
        index.observe(&[RecordsChange::Applied(
            alice(),
            vec![
                subscribe(1, "orders.*", true, Some("workers")),
                subscribe(2, "orders.*", false, Some("auditors")),
            ],
        )]);
        assert!(index.has_group_member(&topic("orders.eu"), "workers"));
        assert!(
            !index.has_group_member(&topic("orders.eu"), "auditors"),
            "at most once"
        );
        assert!(!index.has_group_member(&topic("stock.eu"), "workers"));
        assert!(found(&index, "orders.eu").is_empty(), "no target");
        index.observe(&[RecordsChange::Applied(
            alice(),
            vec![subscribe(1, "orders.*", true, None)],
        )]);
        assert!(
            !index.has_group_member(&topic("orders.eu"), "workers"),
            "left the group"
        );
        assert_eq!(found(&index, "orders.eu"), [1]);
        index.observe(&[RecordsChange::Applied(
            alice(),
            vec![subscribe(3, "orders.>", true, Some("workers"))],
        )]);
        assert!(index.has_group_member(&topic("orders.eu"), "workers"));
        index.observe(&[RecordsChange::Replaced(alice(), None)]);
        assert!(
            !index.has_group_member(&topic("orders.eu"), "workers"),
            "session gone"
        );
        assert!(found(&index, "orders.eu").is_empty());
    }

    #[test]
    fn indexes_plain_at_least_once_subscriptions_as_they_are_applied() {
        let index = DeliveryIndex::new(TopicLimits::default(), QueueConfig::default(), 1);
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

    fn delivery(subscription: u64, number: u64) -> RecordOp {
        let slot = InboxSlot {
            session: 7,
            subscription,
            origin: 1,
            number,
        };
        let message = Arc::new(crate::message::PublishedMessage {
            topic: topic("orders.eu"),
            headers: Default::default(),
            payload: Bytes::from_static(b"m"),
            message_id: Some(number),
            reply_to: None,
            retained: false,
            charge: crate::memory::MemoryCharge::none(),
        });
        let (_, mut ops) =
            session_records::record_ops(&Op::PutInbox(slot, message)).expect("a session's op");
        ops.remove(0)
    }

    #[test]
    fn a_subscription_with_its_queue_bound_of_deliveries_waiting_gets_no_more() {
        let index = DeliveryIndex::new(TopicLimits::default(), QueueConfig::default(), 1);
        let mut subscription = subscribe(1, "orders.>", true, None);
        if let RecordOp::Put { value, .. } = &mut subscription {
            let record = SubscriptionRecord {
                session: 7,
                subscription: 1,
                filter: "orders.>".into(),
                options: SubscribeOptions {
                    acks: Some(AckOptions::default()),
                    max_queued_messages: Some(2),
                    ..SubscribeOptions::default()
                },
            };
            let (_, ops) = session_records::record_ops(&Op::PutSubscription(record)).expect("op");
            if let RecordOp::Put { value: bound, .. } = &ops[0] {
                *value = bound.clone();
            }
        }
        index.observe(&[RecordsChange::Applied(
            alice(),
            vec![subscription, delivery(1, 1), delivery(1, 2)],
        )]);
        assert!(found(&index, "orders.eu").is_empty(), "two wait: full");
        let taken = match delivery(1, 1) {
            RecordOp::Put { key, .. } => RecordOp::Take { key },
            other => panic!("{other:?}"),
        };
        index.observe(&[RecordsChange::Applied(alice(), vec![taken])]);
        assert_eq!(found(&index, "orders.eu"), [1], "one taken: room again");
    }

    fn delivery_from(subscription: u64, origin: u64, number: u64) -> RecordOp {
        match delivery(subscription, number) {
            RecordOp::Put { value, .. } => RecordOp::Put {
                key: session_records::inbox_prefix(subscription)
                    .iter()
                    .copied()
                    .chain(origin.to_be_bytes())
                    .chain(number.to_be_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
                value,
            },
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn this_node_s_deliveries_hold_its_publishes_back_until_queued() {
        // This node numbers its deliveries under origin 1.
        let index = DeliveryIndex::new(TopicLimits::default(), QueueConfig::default(), 1);
        index.observe(&[RecordsChange::Applied(
            alice(),
            vec![subscribe(1, "orders.>", true, None)],
        )]);
        let target = index.targets(&topic("orders.eu")).remove(0);
        assert!(!index.holds_back(&target, 0), "nothing written");

        index.written(&target, 5, 3);
        assert!(index.holds_back(&target, 4), "written, not applied here");

        let own = delivery_from(1, 1, 1);
        index.observe(&[RecordsChange::Applied(alice(), vec![own.clone()])]);
        assert!(
            index.holds_back(&target, 5),
            "applied: waiting in the records until queued"
        );

        let other = delivery_from(1, 2, 1);
        index.observe(&[RecordsChange::Applied(alice(), vec![other.clone()])]);
        let taken = |op: RecordOp| match op {
            RecordOp::Put { key, .. } => RecordOp::Take { key },
            other => panic!("{other:?}"),
        };
        index.observe(&[RecordsChange::Applied(alice(), vec![taken(own)])]);
        assert!(
            !index.holds_back(&target, 5),
            "queued; another node's delivery waiting does not hold this node's publishes"
        );

        index.written(&target, 6, 5);
        index.observe(&[RecordsChange::Applied(alice(), vec![taken(other)])]);
        assert!(index.holds_back(&target, 5));
        assert!(
            !index.holds_back(&target, 6),
            "refused or applied: the ticket is committed either way"
        );
    }

    #[test]
    fn replaced_records_replace_the_sessions_entries() {
        let index = DeliveryIndex::new(TopicLimits::default(), QueueConfig::default(), 1);
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
