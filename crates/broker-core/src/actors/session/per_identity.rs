//! How many subscriptions each certificate identity holds over all its sessions, against
//! `limits.max_subscriptions_per_identity`.
//!
//! An identity may hold `max_sessions_per_identity` sessions of `max_subscriptions_per_session`
//! subscriptions each (a million with the defaults); each subscription is a subscriber actor, a
//! queue and a stream, and every member of a filter's route is visited when its members
//! change. This bounds them per identity.
//!
//! Each session holds an [`IdentitySubscriptions`] for its identity. A subscribe reserves its
//! place at once ([`IdentitySubscriptions::reserve`]), so sessions of one identity subscribing
//! together cannot pass the limit; after every message it handles the session brings its share
//! up to date with the subscriptions it holds, made and starting
//! ([`IdentitySubscriptions::recount`]), so no path that makes or ends one leaves the count
//! wrong; and it gives its share back when it ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::error::BrokerError;

/// Every identity's count, shared by its sessions; an entry lives while one of them does.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionCounts {
    identities: Mutex<HashMap<Arc<str>, Arc<AtomicUsize>>>,
}

impl SubscriptionCounts {
    /// A session's share of `identity`'s count, holding nothing yet.
    pub(crate) fn for_identity(self: &Arc<Self>, identity: &Arc<str>) -> IdentitySubscriptions {
        let mut identities = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        let held = Arc::clone(
            identities
                .entry(Arc::clone(identity))
                .or_insert_with(|| Arc::new(AtomicUsize::new(0))),
        );
        IdentitySubscriptions {
            counts: Arc::clone(self),
            identity: Arc::clone(identity),
            held,
            counted: 0,
        }
    }

    /// The subscriptions `identity` holds now.
    #[cfg(test)]
    pub(crate) fn of(&self, identity: &str) -> usize {
        let identities = self.identities.lock().unwrap_or_else(|p| p.into_inner());
        identities
            .get(identity)
            .map_or(0, |held| held.load(Ordering::Relaxed))
    }

    /// Identities with a live session.
    #[cfg(test)]
    pub(crate) fn identities(&self) -> usize {
        self.identities
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// One session's share of its identity's count.
#[derive(Debug)]
pub(crate) struct IdentitySubscriptions {
    counts: Arc<SubscriptionCounts>,
    identity: Arc<str>,
    /// The identity's count.
    held: Arc<AtomicUsize>,
    /// This session's part of it.
    counted: usize,
}

impl IdentitySubscriptions {
    /// Takes one more place for a subscription about to be made, unless the identity holds
    /// `max` already.
    pub(crate) fn reserve(&mut self, max: u32) -> Result<(), BrokerError> {
        let max_places = usize::try_from(max).unwrap_or(usize::MAX);
        let taken = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held < max_places).then_some(held + 1)
            });
        if taken.is_err() {
            return Err(BrokerError::TooManySubscriptionsForIdentity(max));
        }
        self.counted += 1;
        Ok(())
    }

    /// Makes this session's part `now`: the subscriptions it holds, made and starting.
    pub(crate) fn recount(&mut self, now: usize) {
        if now > self.counted {
            self.held.fetch_add(now - self.counted, Ordering::Relaxed);
        } else if now < self.counted {
            self.held.fetch_sub(self.counted - now, Ordering::Relaxed);
        }
        self.counted = now;
    }
}

impl Drop for IdentitySubscriptions {
    fn drop(&mut self) {
        self.recount(0);
        let mut identities = self
            .counts
            .identities
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // The map's and this one: no other session of the identity is left.
        if Arc::strong_count(&self.held) == 2 {
            identities.remove(&self.identity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_of_one_identity_share_its_limit_and_give_back_their_part() {
        let counts = Arc::new(SubscriptionCounts::default());
        let identity: Arc<str> = Arc::from("fleet");
        let mut first = counts.for_identity(&identity);
        let mut second = counts.for_identity(&identity);
        first.reserve(3).expect("one");
        first.reserve(3).expect("two");
        second.reserve(3).expect("three");
        assert!(matches!(
            second.reserve(3),
            Err(BrokerError::TooManySubscriptionsForIdentity(3))
        ));
        assert_eq!(counts.of("fleet"), 3);
        first.recount(1);
        assert_eq!(counts.of("fleet"), 2, "one of the first session's ended");
        second.reserve(3).expect("room again");
        drop(first);
        assert_eq!(counts.of("fleet"), 2);
        let other: Arc<str> = Arc::from("other");
        let mut elsewhere = counts.for_identity(&other);
        elsewhere
            .reserve(3)
            .expect("another identity has its own limit");
        drop(second);
        drop(elsewhere);
        assert_eq!(
            counts.identities(),
            0,
            "nothing kept for identities without a session"
        );
    }
}
