//! The publish dedupe window: which acknowledged publishes the broker has already accepted.
//!
//! A publisher that asks for an acknowledgement (`ack: true`, with a `message_id`) may retry a
//! publish whose acknowledgement it never received, for instance after a reconnect. The broker
//! remembers each accepted (identity, message id) pair for `max_age` or until `max_entries`
//! newer pairs pushed it out, whichever comes first; a retry inside the window is acknowledged
//! again but not routed again. Keyed by certificate identity, so a retry is recognised even from
//! a new session of the same client.
//!
//! In disk mode every accepted pair is also written to the store (with its wall-clock time), and
//! the pairs still inside the window are read back on start, so a retry after a broker restart
//! is still recognised.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::storage::records::DedupeRecord;
use crate::storage::{unix_ms, DiskStore, Op};

/// Bounds of the dedupe window.
#[derive(Debug, Clone, Copy)]
pub struct DedupeConfig {
    /// Most remembered publishes; memory is about 100 bytes each.
    pub max_entries: usize,
    /// How long a publish is remembered.
    pub max_age: Duration,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_age: Duration::from_secs(120),
        }
    }
}

type Key = (Arc<str>, u64);

/// Recently accepted (identity, message id) pairs, oldest first.
#[derive(Debug)]
pub struct DedupeWindow {
    config: DedupeConfig,
    state: Mutex<Window>,
    /// Where accepted pairs are also kept, in disk mode.
    store: Option<Arc<DiskStore>>,
}

#[derive(Debug, Default)]
struct Window {
    seen: HashSet<Key>,
    order: VecDeque<(Key, Instant)>,
}

impl DedupeWindow {
    /// An empty window.
    pub fn new(config: DedupeConfig) -> Self {
        Self {
            config,
            state: Mutex::default(),
            store: None,
        }
    }

    /// A window holding `records` (read back from the store, oldest first) that writes every
    /// accepted pair through to `store`.
    pub(crate) fn restore(
        config: DedupeConfig,
        store: Option<Arc<DiskStore>>,
        records: Vec<DedupeRecord>,
    ) -> Self {
        let now = Instant::now();
        let now_ms = unix_ms();
        let mut window = Window::default();
        let skip = records.len().saturating_sub(config.max_entries);
        for record in records.into_iter().skip(skip) {
            let age = Duration::from_millis(now_ms.saturating_sub(record.at_ms));
            let at = now.checked_sub(age).unwrap_or(now);
            let key: Key = (Arc::from(record.identity), record.message_id);
            if window.seen.insert(key.clone()) {
                window.order.push_back((key, at));
            }
        }
        Self {
            config,
            state: Mutex::new(window),
            store,
        }
    }

    /// Writes an accepted pair through to the store (disk mode). Called once the publish was
    /// routed, so a commit never holds the pair without the messages it stands for: a crash in
    /// between at worst lets a retry through again (a duplicate, which at least once allows),
    /// never acknowledges a message that was not stored.
    pub(crate) fn store(&self, identity: &Arc<str>, message_id: u64) {
        if let Some(store) = &self.store {
            store.append([Op::PutDedupe(DedupeRecord {
                at_ms: unix_ms(),
                identity: identity.to_string(),
                message_id,
            })]);
        }
    }

    /// Records the publish and returns `true` the first time it is seen inside the window,
    /// `false` for a duplicate.
    pub fn first_time(&self, identity: &Arc<str>, message_id: u64, now: Instant) -> bool {
        let mut window = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((key, at)) = window.order.front() {
            let expired = now.saturating_duration_since(*at) > self.config.max_age;
            if !expired && window.order.len() < self.config.max_entries {
                break;
            }
            let key = key.clone();
            window.seen.remove(&key);
            window.order.pop_front();
        }
        let key = (Arc::clone(identity), message_id);
        if window.seen.contains(&key) {
            return false;
        }
        window.seen.insert(key.clone());
        window.order.push_back((key, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(max_entries: usize, max_age: Duration) -> DedupeWindow {
        DedupeWindow::new(DedupeConfig {
            max_entries,
            max_age,
        })
    }

    #[test]
    fn a_retry_inside_the_window_is_a_duplicate() {
        let w = window(10, Duration::from_secs(60));
        let alice: Arc<str> = Arc::from("alice");
        let now = Instant::now();
        assert!(w.first_time(&alice, 1, now));
        assert!(!w.first_time(&alice, 1, now + Duration::from_secs(1)));
        assert!(w.first_time(&alice, 2, now));
    }

    #[test]
    fn identities_have_separate_id_spaces() {
        let w = window(10, Duration::from_secs(60));
        let now = Instant::now();
        assert!(w.first_time(&Arc::from("alice"), 1, now));
        assert!(w.first_time(&Arc::from("bob"), 1, now));
    }

    #[test]
    fn old_and_overflowing_entries_are_forgotten() {
        let w = window(2, Duration::from_secs(60));
        let alice: Arc<str> = Arc::from("alice");
        let now = Instant::now();
        assert!(w.first_time(&alice, 1, now));
        assert!(w.first_time(&alice, 2, now));
        assert!(w.first_time(&alice, 3, now), "pushes id 1 out");
        assert!(w.first_time(&alice, 1, now), "id 1 was forgotten");
        let later = now + Duration::from_secs(61);
        assert!(w.first_time(&alice, 3, later), "id 3 expired");
    }
}
