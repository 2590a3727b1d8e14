//! The publish dedupe window: which acknowledged publishes the broker has already accepted.
//!
//! A publisher that asks for an acknowledgement (`ack: true`, with a `message_id`) may retry a
//! publish whose acknowledgement it never received, for instance after a reconnect. The broker
//! remembers each accepted (identity, message id) pair for `max_age`; a retry inside the window
//! is acknowledged again but not routed again. Keyed by certificate identity, so a retry is
//! recognised even from a new session of the same client.
//!
//! The window is bounded per identity and in total, and one identity's publishes never push
//! another's out early: an identity holding `max_entries_per_identity` pairs forgets its own
//! oldest; when the whole window holds `max_entries`, the oldest pair of the identity holding
//! the most is forgotten. An identity that stays within its share (`max_entries` divided by
//! the number of publishing identities) keeps every pair for `max_age`.
//!
//! In disk mode every accepted pair is also written to the store (with its wall-clock time), and
//! the pairs still inside the window are read back on start, so a retry after a broker restart
//! is still recognised.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::storage::records::DedupeRecord;
use crate::storage::{unix_ms, DiskStore, Op};

pub use crate::config::DedupeConfig;

/// The publish dedupe window: each pair notes the replicated store's ticket of the log entry
/// holding its publish (0 outside a cluster with `members`), so that a resend answered as a
/// duplicate waits for the same entry as the first publish's answer.
pub(crate) type PublishWindow = DedupeWindow<u64>;

/// Recently accepted (identity, message id) pairs, per identity, oldest first, each with a
/// note of type `T` (none for the publish dedupe window; the router notes which queue groups
/// a publish was handed to).
#[derive(Debug)]
pub struct DedupeWindow<T = ()> {
    config: DedupeConfig,
    /// Most remembered publishes of one identity (`limits.max_dedupe_entries_per_identity`).
    max_per_identity: usize,
    state: Mutex<Window<T>>,
    /// Where accepted pairs are also kept, in disk mode.
    store: Option<Arc<DiskStore>>,
}

#[derive(Debug)]
struct Window<T> {
    identities: HashMap<Arc<str>, IdentityWindow<T>>,
    /// Pairs held by all identities together.
    total: usize,
}

impl<T> Default for Window<T> {
    fn default() -> Self {
        Self {
            identities: HashMap::new(),
            total: 0,
        }
    }
}

/// One identity's remembered message ids.
#[derive(Debug)]
struct IdentityWindow<T> {
    /// Each id with its note.
    seen: HashMap<u64, T>,
    /// The same ids with the time they were accepted, oldest first.
    order: VecDeque<(u64, Instant)>,
}

impl<T> Default for IdentityWindow<T> {
    fn default() -> Self {
        Self {
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<T> IdentityWindow<T> {
    /// Forgets the oldest id; returns whether there was one.
    fn forget_oldest(&mut self) -> bool {
        match self.order.pop_front() {
            Some((id, _)) => {
                self.seen.remove(&id);
                true
            }
            None => false,
        }
    }

    /// Forgets the ids older than `max_age`; returns how many.
    fn forget_expired(&mut self, now: Instant, max_age: Duration) -> usize {
        let mut forgotten = 0;
        while let Some((_, at)) = self.order.front() {
            if now.saturating_duration_since(*at) <= max_age {
                break;
            }
            self.forget_oldest();
            forgotten += 1;
        }
        forgotten
    }
}

impl<T: Default> Window<T> {
    /// Records `message_id` for `identity` if it is new, within both bounds, and lets `note`
    /// change its note (a new pair's starts as `T::default()`); returns whether it was new.
    fn first_time(
        &mut self,
        identity: &Arc<str>,
        message_id: u64,
        now: Instant,
        config: &DedupeConfig,
        max_per_identity: usize,
        note: impl FnOnce(&mut T),
    ) -> bool {
        let own = self.identities.entry(Arc::clone(identity)).or_default();
        let expired = own.forget_expired(now, config.max_age);
        self.total = self.total.saturating_sub(expired);
        if let Some(noted) = own.seen.get_mut(&message_id) {
            note(noted);
            return false;
        }
        while own.order.len() >= max_per_identity.max(1) && own.forget_oldest() {
            self.total = self.total.saturating_sub(1);
        }
        let mut noted = T::default();
        note(&mut noted);
        own.seen.insert(message_id, noted);
        own.order.push_back((message_id, now));
        self.total = self.total.saturating_add(1);
        if self.total > config.max_entries.max(1) {
            self.make_room(now, config.max_age);
        }
        true
    }

    /// Over the global bound: forgets every expired pair, then, while still over, the oldest
    /// pair of the identity holding the most. Costs one pass over the identities.
    fn make_room(&mut self, now: Instant, max_age: Duration) {
        let mut expired = 0;
        for window in self.identities.values_mut() {
            expired += window.forget_expired(now, max_age);
        }
        self.total = self.total.saturating_sub(expired);
        self.identities.retain(|_, window| !window.order.is_empty());
        if let Some(largest) = self
            .identities
            .values_mut()
            .max_by_key(|window| window.order.len())
        {
            if expired == 0 && largest.forget_oldest() {
                self.total = self.total.saturating_sub(1);
            }
        }
    }
}

impl<T: Default> DedupeWindow<T> {
    /// An empty window keeping at most `max_per_identity` pairs of one identity.
    pub fn new(config: DedupeConfig, max_per_identity: usize) -> Self {
        Self {
            config,
            max_per_identity,
            state: Mutex::default(),
            store: None,
        }
    }

    /// A window holding `records` (read back from the store, oldest first) that writes every
    /// accepted pair through to `store`.
    pub(crate) fn restore(
        config: DedupeConfig,
        max_per_identity: usize,
        store: Option<Arc<DiskStore>>,
        records: Vec<DedupeRecord>,
    ) -> Self {
        let now = Instant::now();
        let now_ms = unix_ms();
        let mut window = Window::default();
        for record in records {
            let age = Duration::from_millis(now_ms.saturating_sub(record.at_ms));
            let at = now.checked_sub(age).unwrap_or(now);
            let identity: Arc<str> = Arc::from(record.identity);
            window.first_time(
                &identity,
                record.message_id,
                at,
                &config,
                max_per_identity,
                |_| {},
            );
        }
        Self {
            config,
            max_per_identity,
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
        self.note(identity, message_id, now, |_| {})
    }

    /// [`Self::first_time`], letting `note` change the pair's note (a new pair's starts as
    /// `T::default()`), whether the pair is new or not.
    pub(crate) fn note(
        &self,
        identity: &Arc<str>,
        message_id: u64,
        now: Instant,
        note: impl FnOnce(&mut T),
    ) -> bool {
        let mut window = self.state.lock().unwrap_or_else(|p| p.into_inner());
        window.first_time(
            identity,
            message_id,
            now,
            &self.config,
            self.max_per_identity,
            note,
        )
    }

    /// When the pair was remembered, if it still is (within the window's age), and what
    /// `read` makes of its note; records nothing.
    pub(crate) fn remembered<R>(
        &self,
        identity: &Arc<str>,
        message_id: u64,
        now: Instant,
        read: impl FnOnce(&T) -> R,
    ) -> Option<(Instant, R)> {
        let window = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let own = window.identities.get(identity)?;
        let noted = own.seen.get(&message_id)?;
        let at = own
            .order
            .iter()
            .find(|(id, _)| *id == message_id)
            .map(|(_, at)| *at)
            .filter(|at| now.saturating_duration_since(*at) <= self.config.max_age)?;
        Some((at, read(noted)))
    }

    /// Forgets the pair, if remembered: its publish was refused after all (its commit failed),
    /// so a resend is accepted again.
    pub(crate) fn forget(&self, identity: &Arc<str>, message_id: u64) {
        self.forget_if(identity, message_id, |_| true);
    }

    /// [`Self::forget`], if `noted` says so of the pair's note (a pair remembered again since,
    /// for a newer publish, is kept).
    pub(crate) fn forget_if(
        &self,
        identity: &Arc<str>,
        message_id: u64,
        noted: impl FnOnce(&T) -> bool,
    ) {
        let mut window = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(own) = window.identities.get_mut(identity) else {
            return;
        };
        if !own.seen.get(&message_id).is_some_and(noted) {
            return;
        }
        own.seen.remove(&message_id);
        own.order.retain(|(id, _)| *id != message_id);
        window.total = window.total.saturating_sub(1);
    }

    /// Pairs remembered now, of all identities.
    pub fn len(&self) -> usize {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).total
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(max_entries: usize, max_age: Duration) -> DedupeWindow {
        DedupeWindow::new(
            DedupeConfig {
                max_entries,
                max_age,
            },
            max_entries,
        )
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
    fn a_forgotten_pair_is_accepted_again() {
        let w = window(10, Duration::from_secs(60));
        let alice: Arc<str> = Arc::from("alice");
        let now = Instant::now();
        assert!(w.first_time(&alice, 1, now));
        assert!(w.first_time(&alice, 2, now));
        w.forget(&alice, 1);
        w.forget(&Arc::from("bob"), 2);
        assert_eq!(w.len(), 1);
        assert!(w.first_time(&alice, 1, now), "its publish was refused");
        assert!(!w.first_time(&alice, 2, now));
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

    #[test]
    fn one_identity_never_pushes_out_another_identitys_entry() {
        let w: DedupeWindow = DedupeWindow::new(
            DedupeConfig {
                max_entries: 10,
                max_age: Duration::from_secs(60),
            },
            4,
        );
        let alice: Arc<str> = Arc::from("alice");
        let eve: Arc<str> = Arc::from("eve");
        let now = Instant::now();
        assert!(w.first_time(&alice, 1, now));
        for id in 0..1_000 {
            assert!(w.first_time(&eve, id, now));
        }
        assert!(
            !w.first_time(&alice, 1, now),
            "alice's entry survived eve's flood"
        );
        assert_eq!(w.len(), 5, "eve holds only her own bound");
    }

    #[test]
    fn the_global_bound_forgets_the_largest_holders_oldest_entry() {
        let w: DedupeWindow = DedupeWindow::new(
            DedupeConfig {
                max_entries: 6,
                max_age: Duration::from_secs(60),
            },
            5,
        );
        let now = Instant::now();
        let (alice, bob, eve): (Arc<str>, Arc<str>, Arc<str>) =
            (Arc::from("alice"), Arc::from("bob"), Arc::from("eve"));
        assert!(w.first_time(&alice, 1, now));
        assert!(w.first_time(&bob, 1, now));
        for id in 0..5 {
            assert!(w.first_time(&eve, id, now));
        }
        assert_eq!(w.len(), 6);
        assert!(!w.first_time(&alice, 1, now));
        assert!(!w.first_time(&bob, 1, now));
        assert!(w.first_time(&eve, 0, now), "eve's oldest made room");
    }
}
