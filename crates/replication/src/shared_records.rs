//! The cluster-wide records that belong to no session and carry no epoch
//! (docs/CLUSTERING.md, "Retained values and the dedupe window"): each topic's retained value,
//! and the window of acknowledged publishes already accepted, by (publisher identity, message
//! id). They are written with [`crate::Command::Shared`], applied by every member in log order,
//! kept in the state machine's snapshots, and bounded the same way on every member: what one
//! member keeps, refuses or forgets, every member does.
//!
//! Values are the broker's, opaque here. No I/O, no clock: time is the publishing node's
//! wall-clock time carried in each entry ([`SharedChange::Dedupe::at_ms`]).

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One cluster-wide change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SharedChange {
    /// `topic`'s retained value is `value` from now on.
    PutRetained {
        /// The topic.
        topic: String,
        /// The value, in the broker's encoding.
        value: Bytes,
    },
    /// `topic` has no retained value any more.
    DeleteRetained {
        /// The topic.
        topic: String,
    },
    /// `identity` published `message_id`, acknowledged, at `at_ms`: a resend inside the
    /// window is a duplicate. Recorded only if nothing else in its entry was refused.
    Dedupe {
        /// The publisher's certificate identity.
        identity: String,
        /// The publish's message id.
        message_id: u64,
        /// When the publishing node accepted it, in milliseconds since the Unix epoch.
        at_ms: u64,
    },
}

impl SharedChange {
    /// About how many bytes the change takes in an entry.
    pub fn size(&self) -> usize {
        match self {
            Self::PutRetained { topic, value } => topic.len() + value.len() + 16,
            Self::DeleteRetained { topic } => topic.len() + 16,
            Self::Dedupe { identity, .. } => identity.len() + 32,
        }
    }
}

/// The bounds of the cluster-wide records: the same on every member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedBounds {
    /// Most topics with a retained value.
    pub max_retained_topics: usize,
    /// Most bytes of retained values (topic, value and [`RETAINED_OVERHEAD`] each).
    pub max_retained_bytes: u64,
    /// Most remembered publishes of all identities together.
    pub max_dedupe_entries: usize,
    /// Most remembered publishes of one identity.
    pub max_dedupe_entries_per_identity: usize,
    /// How long a publish is remembered.
    pub dedupe_max_age: Duration,
}

impl Default for SharedBounds {
    /// The broker's defaults: 10,000 topics and 512 MiB of retained values; 100,000
    /// remembered publishes, 10,000 per identity, for 2 minutes.
    fn default() -> Self {
        Self {
            max_retained_topics: 10_000,
            max_retained_bytes: 512 << 20,
            max_dedupe_entries: 100_000,
            max_dedupe_entries_per_identity: 10_000,
            dedupe_max_age: Duration::from_secs(120),
        }
    }
}

/// What one retained value counts against the bound beyond its topic and value.
pub const RETAINED_OVERHEAD: u64 = 32;

/// Told, after an entry is applied (or a snapshot installed), of the topics whose retained
/// value changed: the broker reads each one's value again ([`crate::Replica::retained`]).
pub type SharedObserver = Arc<dyn Fn(&[String]) + Send + Sync>;

/// One identity's remembered publishes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct IdentityWindow {
    /// (message id, accepted at), oldest first.
    order: VecDeque<(u64, u64)>,
    /// The same message ids: derived, not stored.
    #[serde(skip)]
    seen: HashSet<u64>,
}

impl IdentityWindow {
    fn forget_oldest(&mut self) -> bool {
        match self.order.pop_front() {
            Some((id, _)) => {
                self.seen.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Forgets what was accepted before `before_ms`; returns how many.
    fn forget_before(&mut self, before_ms: u64) -> usize {
        let mut forgotten = 0;
        while self.order.front().is_some_and(|(_, at)| *at < before_ms) {
            self.forget_oldest();
            forgotten += 1;
        }
        forgotten
    }
}

/// The cluster-wide records. A field of the state machine's snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct SharedRecords {
    /// Each topic's retained value.
    retained: BTreeMap<String, Bytes>,
    /// Per identity, its remembered publishes (a `BTreeMap`: every member picks the same
    /// identity when the window is full).
    dedupe: BTreeMap<String, IdentityWindow>,
    /// The latest acceptance time applied: the window's clock, the same on every member.
    clock_ms: u64,
    /// Bytes `retained` counts against its bound: derived, not stored.
    #[serde(skip)]
    retained_bytes: u64,
    /// Publishes `dedupe` holds: derived, not stored.
    #[serde(skip)]
    dedupe_total: usize,
}

/// What applying one entry's changes did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct SharedApplied {
    /// The topics whose retained value changed.
    pub(crate) changed: Vec<String>,
    /// The topics whose value was refused (the retained bound).
    pub(crate) refused: Vec<String>,
}

fn retained_size(topic: &str, value: &Bytes) -> u64 {
    (topic.len() as u64)
        .saturating_add(value.len() as u64)
        .saturating_add(RETAINED_OVERHEAD)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl SharedRecords {
    /// Rebuilds what is derived (after reading a snapshot).
    pub(crate) fn reindex(&mut self) {
        self.retained_bytes = self
            .retained
            .iter()
            .map(|(topic, value)| retained_size(topic, value))
            .fold(0, u64::saturating_add);
        self.dedupe_total = 0;
        for window in self.dedupe.values_mut() {
            window.seen = window.order.iter().map(|(id, _)| *id).collect();
            self.dedupe_total += window.order.len();
        }
    }

    /// Applies one entry's changes in order. A retained value that would take the values
    /// beyond a bound is refused (nothing else of it changes); the entry's publishes are
    /// remembered only if `record_publishes` (nothing else of the entry was refused: its
    /// publishers are told it failed, and a resend must be accepted again).
    pub(crate) fn apply(
        &mut self,
        changes: Vec<SharedChange>,
        mut record_publishes: bool,
        bounds: SharedBounds,
    ) -> SharedApplied {
        let mut applied = SharedApplied::default();
        let mut publishes = Vec::new();
        for change in changes {
            match change {
                SharedChange::PutRetained { topic, value } => {
                    if self.put_retained(&topic, value, bounds) {
                        applied.changed.push(topic);
                    } else {
                        applied.refused.push(topic);
                    }
                }
                SharedChange::DeleteRetained { topic } => {
                    if let Some(old) = self.retained.remove(&topic) {
                        self.retained_bytes = self
                            .retained_bytes
                            .saturating_sub(retained_size(&topic, &old));
                        applied.changed.push(topic);
                    }
                }
                SharedChange::Dedupe {
                    identity,
                    message_id,
                    at_ms,
                } => publishes.push((identity, message_id, at_ms)),
            }
        }
        record_publishes &= applied.refused.is_empty();
        if record_publishes {
            for (identity, message_id, at_ms) in publishes {
                self.remember(identity, message_id, at_ms, bounds);
            }
        }
        applied
    }

    fn put_retained(&mut self, topic: &str, value: Bytes, bounds: SharedBounds) -> bool {
        let size = retained_size(topic, &value);
        let old = self
            .retained
            .get(topic)
            .map(|old| retained_size(topic, old));
        if old.is_none() && self.retained.len() >= bounds.max_retained_topics {
            return false;
        }
        let after = self
            .retained_bytes
            .saturating_sub(old.unwrap_or(0))
            .saturating_add(size);
        if after > bounds.max_retained_bytes {
            return false;
        }
        self.retained_bytes = after;
        self.retained.insert(topic.to_owned(), value);
        true
    }

    /// Remembers a publish, within both bounds: an identity at its own bound forgets its
    /// oldest; a full window forgets what expired, then the oldest of the identity holding
    /// the most (as a single node's window does).
    fn remember(&mut self, identity: String, message_id: u64, at_ms: u64, bounds: SharedBounds) {
        self.clock_ms = self.clock_ms.max(at_ms);
        let expired_before = self.clock_ms.saturating_sub(millis(bounds.dedupe_max_age));
        let own = self.dedupe.entry(identity).or_default();
        let expired = own.forget_before(expired_before);
        self.dedupe_total = self.dedupe_total.saturating_sub(expired);
        if own.seen.contains(&message_id) {
            return;
        }
        while own.order.len() >= bounds.max_dedupe_entries_per_identity.max(1)
            && own.forget_oldest()
        {
            self.dedupe_total = self.dedupe_total.saturating_sub(1);
        }
        own.seen.insert(message_id);
        own.order.push_back((message_id, at_ms));
        self.dedupe_total += 1;
        if self.dedupe_total > bounds.max_dedupe_entries.max(1) {
            let mut expired = 0;
            for window in self.dedupe.values_mut() {
                expired += window.forget_before(expired_before);
            }
            self.dedupe_total = self.dedupe_total.saturating_sub(expired);
            self.dedupe.retain(|_, window| !window.order.is_empty());
            if expired == 0 {
                let largest = self
                    .dedupe
                    .values_mut()
                    .max_by_key(|window| window.order.len());
                if largest.is_some_and(IdentityWindow::forget_oldest) {
                    self.dedupe_total = self.dedupe_total.saturating_sub(1);
                }
            }
        }
    }

    /// Whether `identity` published `message_id` no longer than `max_age` before `now_ms`.
    pub(crate) fn seen(
        &self,
        identity: &str,
        message_id: u64,
        now_ms: u64,
        max_age: Duration,
    ) -> bool {
        let Some(window) = self.dedupe.get(identity) else {
            return false;
        };
        if !window.seen.contains(&message_id) {
            return false;
        }
        let since = now_ms.saturating_sub(millis(max_age));
        window
            .order
            .iter()
            .rev()
            .any(|(id, at)| *id == message_id && *at >= since)
    }

    /// `topic`'s retained value.
    pub(crate) fn retained(&self, topic: &str) -> Option<Bytes> {
        self.retained.get(topic).cloned()
    }

    /// Every topic with a retained value.
    pub(crate) fn retained_topics(&self) -> Vec<String> {
        self.retained.keys().cloned().collect()
    }

    /// The topics whose value differs between `self` and `other`.
    pub(crate) fn retained_differences(&self, other: &Self) -> Vec<String> {
        let mut topics: Vec<String> = self
            .retained
            .iter()
            .filter(|(topic, value)| other.retained.get(*topic) != Some(*value))
            .map(|(topic, _)| topic.clone())
            .collect();
        topics.extend(
            other
                .retained
                .keys()
                .filter(|topic| !self.retained.contains_key(*topic))
                .cloned(),
        );
        topics
    }

    /// How many publishes the window remembers.
    pub(crate) fn remembered(&self) -> usize {
        self.dedupe_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(topic: &str, value: &'static [u8]) -> SharedChange {
        SharedChange::PutRetained {
            topic: topic.into(),
            value: Bytes::from_static(value),
        }
    }

    fn dedupe(identity: &str, message_id: u64, at_ms: u64) -> SharedChange {
        SharedChange::Dedupe {
            identity: identity.into(),
            message_id,
            at_ms,
        }
    }

    fn bounds() -> SharedBounds {
        SharedBounds::default()
    }

    const MINUTE: u64 = 60_000;

    #[test]
    fn retained_values_are_set_replaced_and_cleared_in_log_order() {
        let mut records = SharedRecords::default();
        let applied = records.apply(vec![put("a", b"1"), put("b", b"2")], true, bounds());
        assert_eq!(applied.changed, ["a", "b"]);
        records.apply(
            vec![
                put("a", b"3"),
                SharedChange::DeleteRetained { topic: "b".into() },
            ],
            true,
            bounds(),
        );
        assert_eq!(records.retained("a"), Some(Bytes::from_static(b"3")));
        assert_eq!(records.retained("b"), None);
        assert_eq!(
            records.retained_bytes,
            retained_size("a", &Bytes::from_static(b"3"))
        );
        let applied = records.apply(
            vec![SharedChange::DeleteRetained { topic: "b".into() }],
            true,
            bounds(),
        );
        assert!(
            applied.changed.is_empty(),
            "clearing nothing changes nothing"
        );
    }

    #[test]
    fn a_retained_value_beyond_a_bound_is_refused_and_a_replacement_fits() {
        let small = SharedBounds {
            max_retained_topics: 2,
            max_retained_bytes: 2 * (1 + 2 + RETAINED_OVERHEAD),
            ..bounds()
        };
        let mut records = SharedRecords::default();
        records.apply(vec![put("a", b"11"), put("b", b"22")], true, small);
        let applied = records.apply(vec![put("c", b"3")], true, small);
        assert_eq!(applied.refused, ["c"], "a third topic");
        let applied = records.apply(vec![put("a", b"111")], true, small);
        assert_eq!(applied.refused, ["a"], "more bytes than the bound");
        let applied = records.apply(vec![put("a", b"33")], true, small);
        assert_eq!(
            applied.changed,
            ["a"],
            "a replacement of the same size fits"
        );
        assert_eq!(records.retained("a"), Some(Bytes::from_static(b"33")));
    }

    #[test]
    fn a_publish_is_remembered_for_the_window_on_every_identity_apart() {
        let mut records = SharedRecords::default();
        let age = bounds().dedupe_max_age;
        records.apply(vec![dedupe("alice", 1, 10 * MINUTE)], true, bounds());
        assert!(records.seen("alice", 1, 10 * MINUTE + 1, age));
        assert!(
            !records.seen("bob", 1, 10 * MINUTE, age),
            "identities apart"
        );
        assert!(!records.seen("alice", 2, 10 * MINUTE, age));
        assert!(
            !records.seen("alice", 1, 10 * MINUTE + millis(age) + 1, age),
            "older than the window"
        );
    }

    #[test]
    fn publishes_of_an_entry_with_a_refusal_are_not_remembered() {
        let mut records = SharedRecords::default();
        let age = bounds().dedupe_max_age;
        records.apply(vec![dedupe("alice", 1, MINUTE)], false, bounds());
        assert!(
            !records.seen("alice", 1, MINUTE, age),
            "a session's write was refused"
        );
        let full = SharedBounds {
            max_retained_topics: 0,
            ..bounds()
        };
        records.apply(vec![put("a", b"1"), dedupe("alice", 2, MINUTE)], true, full);
        assert!(
            !records.seen("alice", 2, MINUTE, age),
            "its retained value was refused"
        );
        assert_eq!(records.remembered(), 0);
    }

    #[test]
    fn the_window_is_bounded_per_identity_and_in_total_by_log_order() {
        let small = SharedBounds {
            max_dedupe_entries: 4,
            max_dedupe_entries_per_identity: 3,
            ..bounds()
        };
        let age = small.dedupe_max_age;
        let mut records = SharedRecords::default();
        records.apply(vec![dedupe("alice", 1, MINUTE)], true, small);
        for id in 0..10 {
            records.apply(vec![dedupe("eve", id, MINUTE)], true, small);
        }
        assert_eq!(records.remembered(), 4);
        assert!(
            records.seen("alice", 1, MINUTE, age),
            "eve pushed out only her own"
        );
        assert!(records.seen("eve", 9, MINUTE, age));
        assert!(!records.seen("eve", 6, MINUTE, age));
        // The window's clock is the entries' time: a later entry forgets the expired.
        records.apply(
            vec![dedupe("bob", 1, MINUTE + millis(age) + 1)],
            true,
            small,
        );
        assert!(records.dedupe_total <= 4);
        let mut read: SharedRecords =
            rmp_serde::from_slice(&rmp_serde::to_vec(&records).expect("encoded")).expect("decoded");
        read.reindex();
        assert_eq!(read.remembered(), records.remembered());
    }

    #[tokio::test]
    async fn every_member_applies_the_entry_and_a_snapshot_carries_it_to_a_new_one() {
        use std::sync::Mutex;

        use openraft::storage::RaftStateMachine;
        use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};

        use crate::log_store::Storage;
        use crate::{Command, SessionKey, SessionWrite, StateMachine};

        let told: Arc<Mutex<Vec<String>>> = Arc::default();
        let observer = |told: &Arc<Mutex<Vec<String>>>| -> SharedObserver {
            let told = Arc::clone(told);
            Arc::new(move |topics: &[String]| told.lock().expect("lock").extend_from_slice(topics))
        };
        let mut member = StateMachine::open(Storage::Memory, None).expect("state machine");
        member.on_shared_change(observer(&told));
        let entry = |index, command| Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 7), index),
            payload: EntryPayload::Normal(command),
        };
        // A session write refused (no claim) keeps the entry's publishes out of the window,
        // not its retained value.
        let unclaimed = SessionWrite {
            session: SessionKey {
                identity: "alice".into(),
                name: "s".into(),
            },
            epoch: 1,
            ops: Vec::new(),
        };
        let applied = member
            .apply(vec![
                entry(
                    1,
                    Command::Shared {
                        writes: vec![unclaimed],
                        changes: vec![put("a", b"1"), dedupe("alice", 1, MINUTE)],
                        id: None,
                    },
                ),
                entry(
                    2,
                    Command::Shared {
                        writes: Vec::new(),
                        changes: vec![dedupe("alice", 2, MINUTE)],
                        id: None,
                    },
                ),
            ])
            .await
            .expect("applied");
        assert_eq!(applied[0].refused_writes.len(), 1);
        assert_eq!(member.retained("a"), Some(Bytes::from_static(b"1")));
        assert!(!member.seen("alice", 1, MINUTE));
        assert!(member.seen("alice", 2, MINUTE));
        assert_eq!(*told.lock().expect("lock"), ["a"]);

        let snapshot = member.build_snapshot().await.expect("snapshot");
        let new_told: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut new = StateMachine::open(Storage::Memory, None).expect("state machine");
        new.on_shared_change(observer(&new_told));
        new.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .expect("installed");
        assert_eq!(new.retained_topics(), ["a"]);
        assert!(new.seen("alice", 2, MINUTE));
        assert_eq!(new.remembered(), 1);
        assert_eq!(
            *new_told.lock().expect("lock"),
            ["a"],
            "told of what the snapshot brought"
        );
    }

    #[test]
    fn the_records_round_trip_through_a_snapshot() {
        let mut records = SharedRecords::default();
        records.apply(
            vec![put("a", b"1"), put("b", b"22"), dedupe("alice", 7, MINUTE)],
            true,
            bounds(),
        );
        let bytes = rmp_serde::to_vec(&records).expect("encoded");
        let mut read: SharedRecords = rmp_serde::from_slice(&bytes).expect("decoded");
        read.reindex();
        assert_eq!(read.retained_topics(), ["a", "b"]);
        assert_eq!(read.retained_bytes, records.retained_bytes);
        assert!(read.seen("alice", 7, MINUTE, bounds().dedupe_max_age));
        assert!(read.retained_differences(&records).is_empty());
        read.apply(vec![put("a", b"9")], true, bounds());
        assert_eq!(read.retained_differences(&records), ["a"]);
    }
}
