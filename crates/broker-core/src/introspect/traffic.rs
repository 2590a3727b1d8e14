//! Traffic per topic: messages and payload bytes published to each topic, for `/topicz`.
//!
//! Bounded: at most `limits.max_tracked_topics` topics are counted one by one. A publish to a
//! further topic is counted in the untracked totals. Once the table is full, each sweep (the
//! system publisher runs one a minute) forgets the topics that had no publish since the
//! previous sweep, making room for new ones; a forgotten topic's counts are gone (they stay in
//! the broker-wide counters).
//!
//! The publish path takes the table's mutex only when a publisher's topic changes (each
//! publisher keeps its topic's [`TopicCounter`]); every publish is then two relaxed atomic
//! adds. System events (`$SYS.>`) are not counted here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cassini_protocol::TopicName;
use serde::Serialize;

/// One tracked topic's counts.
#[derive(Debug, Default)]
pub(crate) struct TopicCounter {
    messages: AtomicU64,
    bytes: AtomicU64,
    /// `messages` at the previous sweep: unchanged means idle since.
    swept: AtomicU64,
    /// Set when a sweep forgot the topic: its holders look it up again.
    forgotten: AtomicBool,
}

/// The topics with traffic. See the module docs.
#[derive(Debug)]
pub(crate) struct TopicTraffic {
    max_topics: usize,
    topics: Mutex<HashMap<TopicName, Arc<TopicCounter>>>,
    /// Bumped by every sweep that forgot something: publishers whose topic found no room
    /// look again after one.
    sweeps: AtomicU64,
    untracked_messages: AtomicU64,
    untracked_bytes: AtomicU64,
}

/// A publisher's handle on its current topic's counts.
#[derive(Debug, Default)]
pub(crate) struct TrafficSlot {
    /// The topic, its counter (`None`: untracked, the table was full) and the sweep
    /// generation of the lookup.
    current: Option<(TopicName, Option<Arc<TopicCounter>>, u64)>,
}

/// One topic's traffic, as `/topicz` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TopicTrafficInfo {
    /// The topic.
    pub topic: String,
    /// Messages published to it (accepted and routed).
    pub messages: u64,
    /// Their payload bytes.
    pub bytes: u64,
}

/// The traffic table at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrafficSnapshot {
    /// The tracked topics, busiest (most messages) first.
    pub topics: Vec<TopicTrafficInfo>,
    /// `limits.max_tracked_topics`.
    pub max_tracked: usize,
    /// Messages to topics that found the table full.
    pub untracked_messages: u64,
    /// Their payload bytes.
    pub untracked_bytes: u64,
}

impl TopicTraffic {
    /// A table of at most `max_topics` topics.
    pub(crate) fn new(max_topics: usize) -> Self {
        Self {
            max_topics,
            topics: Mutex::default(),
            sweeps: AtomicU64::new(0),
            untracked_messages: AtomicU64::new(0),
            untracked_bytes: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TopicName, Arc<TopicCounter>>> {
        // Every change is one insert or retain: a poisoned map is still whole.
        self.topics.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one message of `bytes` payload bytes to `topic`, through the publisher's `slot`.
    pub(crate) fn count(&self, slot: &mut TrafficSlot, topic: &TopicName, bytes: usize) {
        let sweeps = self.sweeps.load(Ordering::Relaxed);
        let stale = match &slot.current {
            Some((current, counter, generation)) => {
                current != topic
                    || match counter {
                        Some(counter) => counter.forgotten.load(Ordering::Relaxed),
                        None => *generation != sweeps,
                    }
            }
            None => true,
        };
        if stale {
            slot.current = Some((topic.clone(), self.counter(topic), sweeps));
        }
        let bytes = bytes as u64;
        match slot
            .current
            .as_ref()
            .and_then(|(_, counter, _)| counter.as_ref())
        {
            Some(counter) => {
                counter.messages.fetch_add(1, Ordering::Relaxed);
                counter.bytes.fetch_add(bytes, Ordering::Relaxed);
            }
            None => {
                self.untracked_messages.fetch_add(1, Ordering::Relaxed);
                self.untracked_bytes.fetch_add(bytes, Ordering::Relaxed);
            }
        }
    }

    /// `topic`'s counter, added if there is room.
    fn counter(&self, topic: &TopicName) -> Option<Arc<TopicCounter>> {
        let mut topics = self.lock();
        if let Some(counter) = topics.get(topic) {
            return Some(Arc::clone(counter));
        }
        if topics.len() >= self.max_topics {
            return None;
        }
        let counter = Arc::new(TopicCounter::default());
        topics.insert(topic.clone(), Arc::clone(&counter));
        Some(counter)
    }

    /// When the table is full, forgets the topics with no publish since the previous sweep.
    /// Returns how many were forgotten.
    pub(crate) fn sweep(&self) -> usize {
        let mut topics = self.lock();
        let full = topics.len() >= self.max_topics;
        let before = topics.len();
        topics.retain(|_, counter| {
            let messages = counter.messages.load(Ordering::Relaxed);
            let idle = counter.swept.swap(messages, Ordering::Relaxed) == messages;
            if full && idle {
                counter.forgotten.store(true, Ordering::Relaxed);
                return false;
            }
            true
        });
        let forgotten = before - topics.len();
        if forgotten > 0 {
            self.sweeps.fetch_add(1, Ordering::Relaxed);
        }
        forgotten
    }

    /// The counts now, busiest topic first.
    pub(crate) fn snapshot(&self) -> TrafficSnapshot {
        let mut topics: Vec<TopicTrafficInfo> = self
            .lock()
            .iter()
            .map(|(topic, counter)| TopicTrafficInfo {
                topic: topic.to_string(),
                messages: counter.messages.load(Ordering::Relaxed),
                bytes: counter.bytes.load(Ordering::Relaxed),
            })
            .collect();
        topics.sort_by(|a, b| b.messages.cmp(&a.messages).then(a.topic.cmp(&b.topic)));
        TrafficSnapshot {
            topics,
            max_tracked: self.max_topics,
            untracked_messages: self.untracked_messages.load(Ordering::Relaxed),
            untracked_bytes: self.untracked_bytes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use cassini_protocol::TopicLimits;

    use super::*;

    fn name(topic: &str) -> TopicName {
        TopicName::parse(topic, &TopicLimits::default()).expect("valid")
    }

    #[test]
    fn counts_per_topic_and_bounds_the_table() {
        let traffic = TopicTraffic::new(2);
        let mut slot = TrafficSlot::default();
        traffic.count(&mut slot, &name("a"), 10);
        traffic.count(&mut slot, &name("a"), 5);
        traffic.count(&mut slot, &name("b"), 1);
        traffic.count(&mut slot, &name("c"), 7);
        let snapshot = traffic.snapshot();
        assert_eq!(
            snapshot.topics,
            vec![
                TopicTrafficInfo {
                    topic: "a".into(),
                    messages: 2,
                    bytes: 15
                },
                TopicTrafficInfo {
                    topic: "b".into(),
                    messages: 1,
                    bytes: 1
                },
            ]
        );
        assert_eq!(
            (snapshot.untracked_messages, snapshot.untracked_bytes),
            (1, 7)
        );
    }

    #[test]
    fn a_full_table_forgets_idle_topics_and_takes_new_ones() {
        let traffic = TopicTraffic::new(2);
        let (mut busy, mut idle, mut late) = Default::default();
        traffic.count(&mut busy, &name("busy"), 1);
        traffic.count(&mut idle, &name("idle"), 1);
        assert_eq!(traffic.sweep(), 0, "the first sweep only notes the counts");
        traffic.count(&mut busy, &name("busy"), 1);
        traffic.count(&mut late, &name("late"), 1);
        assert_eq!(traffic.snapshot().untracked_messages, 1, "no room yet");
        assert_eq!(traffic.sweep(), 1, "idle is forgotten");
        traffic.count(&mut late, &name("late"), 1);
        let topics: Vec<_> = traffic
            .snapshot()
            .topics
            .into_iter()
            .map(|t| (t.topic, t.messages))
            .collect();
        assert_eq!(topics, vec![("busy".into(), 2), ("late".into(), 1)]);
        // The forgotten topic's publisher finds it again (if there is room).
        traffic.count(&mut idle, &name("idle"), 1);
        assert_eq!(traffic.snapshot().untracked_messages, 2);
    }
}
