//! The retained store: the last retained value of each topic, and who set it.
//!
//! Bounded in total (topics and bytes) and per certificate identity (topics and bytes), so one
//! tenant cannot fill the store for everyone. Each value counts `PublishedMessage::memory_size`
//! bytes against the identity that set it: replacing a value moves it to the new publisher's
//! quota, and clearing it (a retained publish with an empty payload) frees it, whoever clears
//! it. A value with no owner (set by the embedding program through `LocalClient`, or read back
//! from a store written before values recorded their owner) counts only against the totals.
//!
//! In disk mode every change is written through to the store under the store's lock, with the
//! owner, so the quotas hold across a restart. In a cluster with `members` every change is
//! written through to the cluster's Raft log instead ([`WriteThrough::Cluster`]), and what the
//! log applies replaces this node's value of each topic it changed
//! ([`RetainedStore::set_from_cluster`]): every node ends with the log's value. No I/O here
//! besides those appends.

use std::collections::HashMap;
use std::sync::Arc;

use cassini_protocol::TopicName;

use crate::config::BrokerLimits;
use crate::error::{BrokerError, RetainedQuota};
use crate::message::PublishedMessage;
use crate::storage::replicated::ReplicatedStore;
use crate::storage::{DiskStore, Op};

/// Where the retained store writes its changes through.
#[derive(Debug, Clone, Copy)]
pub(crate) enum WriteThrough<'a> {
    /// Nowhere (memory mode).
    Nowhere,
    /// The disk store (disk mode).
    Disk(&'a DiskStore),
    /// The cluster's Raft log (a cluster with `members`, in either mode).
    Cluster(&'a ReplicatedStore),
}

impl WriteThrough<'_> {
    fn append(self, op: Op) {
        match self {
            Self::Nowhere => {}
            Self::Disk(store) => store.append([op]),
            Self::Cluster(store) => store.append_shared([op]),
        }
    }
}

/// The bounds of the retained store, from [`BrokerLimits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetainedLimits {
    /// Most topics with a retained value.
    pub max_topics: usize,
    /// Most bytes of retained values.
    pub max_bytes: u64,
    /// Most topics whose value one identity set.
    pub max_topics_per_identity: usize,
    /// Most bytes of values one identity set.
    pub max_bytes_per_identity: u64,
}

impl RetainedLimits {
    /// The retained bounds of `limits`.
    pub fn of(limits: &BrokerLimits) -> Self {
        Self {
            max_topics: limits.max_retained_topics,
            max_bytes: limits.max_retained_bytes,
            max_topics_per_identity: limits.max_retained_topics_per_identity,
            max_bytes_per_identity: limits.max_retained_bytes_per_identity,
        }
    }

    /// Only a topic bound: every other bound is unlimited.
    pub fn topics(max_topics: usize) -> Self {
        Self {
            max_topics,
            max_bytes: u64::MAX,
            max_topics_per_identity: usize::MAX,
            max_bytes_per_identity: u64::MAX,
        }
    }
}

/// One topic's retained value.
#[derive(Debug)]
pub(crate) struct RetainedValue {
    pub(crate) message: Arc<PublishedMessage>,
    /// The identity that set it, if known.
    owner: Option<Arc<str>>,
    /// What it counts against the bounds.
    bytes: u64,
}

/// What one identity's retained values hold.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    topics: usize,
    bytes: u64,
}

/// The values and what each identity holds. Kept behind the router's lock.
#[derive(Debug)]
pub(crate) struct RetainedStore {
    limits: RetainedLimits,
    pub(crate) values: HashMap<TopicName, RetainedValue>,
    usage: HashMap<Arc<str>, Usage>,
    /// Bytes of all values together.
    bytes: u64,
}

fn size_of(message: &PublishedMessage) -> u64 {
    u64::try_from(message.memory_size()).unwrap_or(u64::MAX)
}

impl RetainedStore {
    /// A store holding `values` (read back from the disk store, with their owners). Values
    /// beyond the bounds are kept: the bounds refuse only new values.
    pub(crate) fn new(
        limits: RetainedLimits,
        values: Vec<(PublishedMessage, Option<String>)>,
    ) -> Self {
        let mut store = Self {
            limits,
            values: HashMap::new(),
            usage: HashMap::new(),
            bytes: 0,
        };
        for (message, owner) in values {
            let owner = owner.map(Arc::from);
            store.insert(Arc::new(message), owner);
        }
        store
    }

    /// Bytes of all values.
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Stores `message` as its topic's value set by `owner`, or clears the value when the
    /// payload is empty; writes the change through to `store`. In a cluster a clear is always
    /// written (another node's value may be on its way through the log).
    pub(crate) fn retain(
        &mut self,
        message: &PublishedMessage,
        owner: Option<&Arc<str>>,
        store: WriteThrough<'_>,
    ) -> Result<(), BrokerError> {
        if message.payload.is_empty() {
            let had = self.remove(&message.topic).is_some();
            if had || matches!(store, WriteThrough::Cluster(_)) {
                store.append(Op::DeleteRetained(message.topic.as_str().to_string()));
            }
            return Ok(());
        }
        self.check(message, owner)?;
        let copy = Arc::new(PublishedMessage {
            retained: true,
            ..message.clone()
        });
        store.append(Op::PutRetained(Arc::clone(&copy), owner.cloned()));
        self.remove(&message.topic);
        self.insert(copy, owner.cloned());
        Ok(())
    }

    /// Sets `topic`'s value to what the cluster's log holds (`None`: no value), within no
    /// bound: the log bounded it.
    pub(crate) fn set_from_cluster(
        &mut self,
        topic: &TopicName,
        value: Option<(PublishedMessage, Option<String>)>,
    ) {
        self.remove(topic);
        if let Some((message, owner)) = value {
            self.insert(Arc::new(message), owner.map(Arc::from));
        }
    }

    /// Every topic with a value.
    pub(crate) fn topics(&self) -> Vec<TopicName> {
        self.values.keys().cloned().collect()
    }

    /// Refuses `message` if storing it in place of its topic's current value would exceed a
    /// bound: the identity's quotas first, then the totals.
    fn check(
        &self,
        message: &PublishedMessage,
        owner: Option<&Arc<str>>,
    ) -> Result<(), BrokerError> {
        let bytes = size_of(message);
        let old = self.values.get(&message.topic);
        let old_bytes = old.map_or(0, |value| value.bytes);
        if let Some(owner) = owner {
            let usage = self.usage.get(owner).copied().unwrap_or_default();
            let own_old = old.filter(|value| value.owner.as_ref() == Some(owner));
            let own_old_bytes = own_old.map_or(0, |value| value.bytes);
            if own_old.is_none() && usage.topics >= self.limits.max_topics_per_identity {
                return Err(BrokerError::RetainedQuotaExceeded(RetainedQuota::Topics(
                    self.limits.max_topics_per_identity as u64,
                )));
            }
            let after = usage
                .bytes
                .saturating_sub(own_old_bytes)
                .saturating_add(bytes);
            if after > self.limits.max_bytes_per_identity {
                return Err(BrokerError::RetainedQuotaExceeded(RetainedQuota::Bytes(
                    self.limits.max_bytes_per_identity,
                )));
            }
        }
        if old.is_none() && self.values.len() >= self.limits.max_topics {
            return Err(BrokerError::RetainedStoreFull(self.limits.max_topics));
        }
        if self.bytes.saturating_sub(old_bytes).saturating_add(bytes) > self.limits.max_bytes {
            return Err(BrokerError::RetainedBytesFull(self.limits.max_bytes));
        }
        Ok(())
    }

    fn insert(&mut self, message: Arc<PublishedMessage>, owner: Option<Arc<str>>) {
        let bytes = size_of(&message);
        self.bytes = self.bytes.saturating_add(bytes);
        if let Some(owner) = &owner {
            let usage = self.usage.entry(Arc::clone(owner)).or_default();
            usage.topics = usage.topics.saturating_add(1);
            usage.bytes = usage.bytes.saturating_add(bytes);
        }
        let topic = message.topic.clone();
        let value = RetainedValue {
            message,
            owner,
            bytes,
        };
        if let Some(old) = self.values.insert(topic, value) {
            self.forget(&old);
        }
    }

    fn remove(&mut self, topic: &TopicName) -> Option<RetainedValue> {
        let old = self.values.remove(topic)?;
        self.forget(&old);
        Some(old)
    }

    /// Takes `value` off the totals and its owner's usage.
    fn forget(&mut self, value: &RetainedValue) {
        self.bytes = self.bytes.saturating_sub(value.bytes);
        if let Some(owner) = &value.owner {
            if let Some(usage) = self.usage.get_mut(owner) {
                usage.topics = usage.topics.saturating_sub(1);
                usage.bytes = usage.bytes.saturating_sub(value.bytes);
                if usage.topics == 0 {
                    self.usage.remove(owner);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cassini_protocol::TopicLimits;

    fn message(topic: &str, payload: &'static [u8]) -> PublishedMessage {
        PublishedMessage {
            topic: TopicName::parse(topic, &TopicLimits::default()).expect("topic"),
            headers: Default::default(),
            payload: Bytes::from_static(payload),
            message_id: None,
            reply_to: None,
            retained: false,
            charge: crate::memory::MemoryCharge::none(),
        }
    }

    fn limits() -> RetainedLimits {
        RetainedLimits {
            max_topics: 10,
            max_bytes: 1_000_000,
            max_topics_per_identity: 2,
            max_bytes_per_identity: 100_000,
        }
    }

    #[test]
    fn an_identity_at_its_topic_quota_is_refused_and_others_are_not() {
        let mut store = RetainedStore::new(limits(), Vec::new());
        let (eve, alice): (Arc<str>, Arc<str>) = (Arc::from("eve"), Arc::from("alice"));
        store
            .retain(&message("e.a", b"1"), Some(&eve), WriteThrough::Nowhere)
            .expect("first");
        store
            .retain(&message("e.b", b"1"), Some(&eve), WriteThrough::Nowhere)
            .expect("second");
        let err = store.retain(&message("e.c", b"1"), Some(&eve), WriteThrough::Nowhere);
        assert!(matches!(
            err,
            Err(BrokerError::RetainedQuotaExceeded(RetainedQuota::Topics(2)))
        ));
        store
            .retain(&message("e.a", b"2"), Some(&eve), WriteThrough::Nowhere)
            .expect("replacing her own fits");
        store
            .retain(&message("a.a", b"1"), Some(&alice), WriteThrough::Nowhere)
            .expect("alice");
    }

    #[test]
    fn clearing_frees_the_quota_and_replacing_moves_it() {
        let mut store = RetainedStore::new(limits(), Vec::new());
        let (eve, alice): (Arc<str>, Arc<str>) = (Arc::from("eve"), Arc::from("alice"));
        store
            .retain(&message("s.a", b"1"), Some(&eve), WriteThrough::Nowhere)
            .expect("a");
        store
            .retain(&message("s.b", b"1"), Some(&eve), WriteThrough::Nowhere)
            .expect("b");
        store
            .retain(&message("s.a", b""), Some(&alice), WriteThrough::Nowhere)
            .expect("clear");
        store
            .retain(&message("s.c", b"1"), Some(&eve), WriteThrough::Nowhere)
            .expect("freed by the clear");
        store
            .retain(&message("s.b", b"2"), Some(&alice), WriteThrough::Nowhere)
            .expect("alice takes s.b");
        store
            .retain(&message("s.d", b"1"), Some(&eve), WriteThrough::Nowhere)
            .expect("s.b moved to alice");
        assert_eq!(store.values.len(), 3);
    }

    #[test]
    fn bytes_are_bounded_per_identity_and_in_total() {
        let big: &'static [u8] = &[7u8; 90];
        // What one value really holds (payload, topic, struct), as the bounds count it.
        let size = message("e.a", big).memory_size() as u64;
        let (per_identity, total) = (size + 10, size + size / 2);
        let mut store = RetainedStore::new(
            RetainedLimits {
                max_topics_per_identity: 100,
                max_bytes: total,
                max_bytes_per_identity: per_identity,
                ..limits()
            },
            Vec::new(),
        );
        let (eve, alice): (Arc<str>, Arc<str>) = (Arc::from("eve"), Arc::from("alice"));
        store
            .retain(&message("e.a", big), Some(&eve), WriteThrough::Nowhere)
            .expect("fits");
        let err = store.retain(&message("e.b", big), Some(&eve), WriteThrough::Nowhere);
        assert!(
            matches!(
                err,
                Err(BrokerError::RetainedQuotaExceeded(RetainedQuota::Bytes(limit))) if limit == per_identity
            ),
            "{err:?}"
        );
        let err = store.retain(&message("a.a", big), Some(&alice), WriteThrough::Nowhere);
        assert!(
            matches!(err, Err(BrokerError::RetainedBytesFull(limit)) if limit == total),
            "{err:?}"
        );
        store
            .retain(&message("e.a", b""), Some(&alice), WriteThrough::Nowhere)
            .expect("clear");
        assert_eq!(store.bytes(), 0);
        store
            .retain(&message("a.a", big), Some(&alice), WriteThrough::Nowhere)
            .expect("room again");
    }
}
