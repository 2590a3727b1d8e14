//! Every subscription of the session, across connections, and which stream carries each.
//!
//! A subscription's stream may arrive before or after the `Subscribed` answer, and after a
//! resume the broker opens a new stream for every subscription without any answer. The control
//! reader registers a subscription's [`SubscriptionSink`] when `Subscribed` arrives; the task
//! reading a new stream claims the sink for the id its `SubscriptionStart` names, waiting for
//! the registration if it has not happened yet, and then for the task reading the previous
//! stream of the same subscription (if any) to let go, so that messages stay in order.
//!
//! When a connection is lost, its stream readers release their sinks and the subscriptions stay
//! registered for the next connection. When the broker had forgotten the session, the
//! subscriptions become orphans until they are made again under new ids. The registry is closed
//! only when the client ends for good: then every subscription ends, at once or as soon as its
//! reader lets go.
//!
//! A resumed session may hold subscriptions this client does not know (a new process that
//! resumed its session by id or name): `Welcome` lists them, and they wait here as
//! `adoptable` until the application subscribes with the same filter and options, which
//! takes one up under its id instead of making a new one ([`SubscriptionRegistry::adopt`]).
//! Until then their streams wait unread (no deadline), so the broker keeps their messages.
//!
//! A stream whose subscription is not registered waits for it until a deadline; while a
//! `Subscribe` of this client is unanswered, it waits with no deadline, since the answer may name
//! it however late it comes (a broker waiting for its disk).
//!
//! It also remembers subscriptions this client asked to end without hearing back (`abandoned`):
//! their `Unsubscribe` is sent again after a resume, and a stream the broker opens for one is
//! stopped at once.

use std::collections::{HashMap, HashSet};
use std::pin::pin;
use std::sync::{Arc, Mutex};

use cassini_protocol::{ResumePosition, SessionSubscription, SubscribeOptions, SubscriptionId};
use tokio::sync::{mpsc, Notify, OwnedMutexGuard};
use tokio::time::{timeout_at, Instant};

use crate::subscribe::end::SubscriptionEnd;
use crate::subscribe::sink::{finish_slot, Delivered, SubscriptionSink, SubscriptionState};
use crate::sync::lock;

/// Why a stream could not claim its subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClaimError {
    /// No subscription with that id was registered before the deadline.
    TimedOut,
    /// This client asked to end that subscription.
    Abandoned,
    /// The subscription or the whole client ended.
    Closed,
}

/// The session's subscriptions.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionRegistry {
    /// Subscriptions by id, orphans, abandoned ids, and whether the client ended.
    state: Mutex<RegistryState>,
    /// Woken on every registration and on close.
    changed: Notify,
}

#[derive(Debug, Default)]
struct RegistryState {
    /// Live subscriptions by their id in the current session.
    live: HashMap<SubscriptionId, Arc<SubscriptionSink>>,
    /// Subscriptions of a session the broker forgot, waiting to be made again.
    orphans: Vec<Arc<SubscriptionSink>>,
    /// Subscriptions this client asked to end whose end the broker has not confirmed.
    abandoned: HashSet<SubscriptionId>,
    /// Set when the client ended: how every subscription ends from then on.
    closed: Option<SubscriptionEnd>,
    /// Subscriptions of the resumed session this client has not taken up yet, with their
    /// filter and options.
    adoptable: HashMap<SubscriptionId, (String, SubscribeOptions)>,
    /// `Subscribe` requests waiting for their answer ([`SubscriptionRegistry::subscribing`]).
    subscribing: usize,
}

/// A `Subscribe` request waiting for its answer: while one does, a stream naming a subscription
/// not registered yet waits for it with no deadline. Dropped once the answer was applied, or
/// the request failed.
#[must_use]
pub(crate) struct Subscribing<'a> {
    registry: &'a SubscriptionRegistry,
}

impl Drop for Subscribing<'_> {
    fn drop(&mut self) {
        {
            let mut state = lock(&self.registry.state);
            state.subscribing = state.subscribing.saturating_sub(1);
        }
        self.registry.changed.notify_waiters();
    }
}

impl SubscriptionRegistry {
    /// Registers `sink` as subscription `id` (the broker answered `Subscribed`).
    pub(crate) fn register(&self, id: SubscriptionId, sink: Arc<SubscriptionSink>) {
        sink.state.set_id(id);
        {
            let mut state = lock(&self.state);
            if let Some(end) = &state.closed {
                let end = end.clone();
                drop(state);
                sink.try_finish(end);
                return;
            }
            state.live.insert(id, sink);
        }
        self.changed.notify_waiters();
    }

    /// Counts a `Subscribe` request as waiting for its answer until the guard is dropped.
    pub(crate) fn subscribing(&self) -> Subscribing<'_> {
        lock(&self.state).subscribing += 1;
        Subscribing { registry: self }
    }

    /// The session was attached: `listed` are the subscriptions the broker holds for it
    /// (empty for a new session). Those this client does not know become adoptable.
    pub(crate) fn offer(&self, listed: &[SessionSubscription]) {
        {
            let mut state = lock(&self.state);
            let state = &mut *state;
            state.adoptable = listed
                .iter()
                .filter(|s| {
                    !state.live.contains_key(&s.subscription)
                        && !state.abandoned.contains(&s.subscription)
                })
                .map(|s| (s.subscription, (s.filter.clone(), s.options.clone())))
                .collect();
        }
        self.changed.notify_waiters();
    }

    /// Takes up the session's subscription to `filter` with `options`, if it holds one this
    /// client does not know yet (the oldest, if several); its id.
    pub(crate) fn adopt(&self, filter: &str, options: &SubscribeOptions) -> Option<SubscriptionId> {
        let mut state = lock(&self.state);
        let id = state
            .adoptable
            .iter()
            .filter(|(_, (f, o))| f == filter && o == options)
            .map(|(id, _)| *id)
            .min()?;
        state.adoptable.remove(&id);
        Some(id)
    }

    /// The session's subscriptions this client has not taken up, by id, with filter and
    /// options.
    pub(crate) fn adoptable(&self) -> Vec<SessionSubscription> {
        let mut listed: Vec<_> = lock(&self.state)
            .adoptable
            .iter()
            .map(|(id, (filter, options))| SessionSubscription {
                subscription: *id,
                filter: filter.clone(),
                options: options.clone(),
            })
            .collect();
        listed.sort_by_key(|s| s.subscription);
        listed
    }

    /// The live subscription `id`, for a delivery that arrived in a datagram.
    pub(crate) fn live(&self, id: SubscriptionId) -> Option<Arc<SubscriptionSink>> {
        lock(&self.state).live.get(&id).cloned()
    }

    /// Where the client stands in every live subscription, for resuming the session.
    pub(crate) fn positions(&self) -> Vec<ResumePosition> {
        lock(&self.state)
            .live
            .iter()
            .map(|(id, sink)| ResumePosition {
                subscription: *id,
                last_sequence: sink.state.last_received(),
            })
            .collect()
    }

    /// Takes subscription `id` for a new stream: waits until `deadline` for it to be registered
    /// (with no deadline while it is adoptable or a `Subscribe` is unanswered), then for as long
    /// as the previous stream's reader holds it.
    pub(crate) async fn claim(
        self: &Arc<Self>,
        id: SubscriptionId,
        deadline: Instant,
    ) -> Result<ClaimedSink, ClaimError> {
        let sink = loop {
            let mut changed = pin!(self.changed.notified());
            // Listen before looking, so a registration between the two is not missed.
            changed.as_mut().enable();
            let no_deadline = {
                let state = lock(&self.state);
                if state.closed.is_some() {
                    return Err(ClaimError::Closed);
                }
                if let Some(sink) = state.live.get(&id) {
                    break Arc::clone(sink);
                }
                if state.abandoned.contains(&id) {
                    return Err(ClaimError::Abandoned);
                }
                state.adoptable.contains_key(&id) || state.subscribing > 0
            };
            if no_deadline {
                changed.await;
                continue;
            }
            if timeout_at(deadline, changed).await.is_err() {
                return Err(ClaimError::TimedOut);
            }
        };
        let slot = sink.slot().lock_owned().await;
        if slot.is_none() {
            return Err(ClaimError::Closed);
        }
        Ok(ClaimedSink {
            registry: Arc::clone(self),
            epoch: sink.state.epoch(),
            sink,
            slot,
        })
    }

    /// Records that this client asked to end the subscription `subscription` is the state of,
    /// under its id in the current session. A subscription not registered in this session
    /// (an orphan of a lost session) has no id to end: it ends when it would be made again.
    pub(crate) fn unsubscribing(&self, subscription: &SubscriptionState) {
        let mut state = lock(&self.state);
        let id = subscription.id();
        let registered = state
            .live
            .get(&id)
            .is_some_and(|sink| std::ptr::eq(Arc::as_ptr(&sink.state), subscription));
        if registered {
            state.abandoned.insert(id);
        }
    }

    /// The broker confirmed that subscription `id` is gone (or never knew it).
    pub(crate) fn unsubscribe_confirmed(&self, id: SubscriptionId) {
        lock(&self.state).abandoned.remove(&id);
    }

    /// The subscriptions whose `Unsubscribe` must be sent again on a resumed session.
    pub(crate) fn abandoned(&self) -> Vec<SubscriptionId> {
        lock(&self.state).abandoned.iter().copied().collect()
    }

    /// The broker forgot the session: every live subscription becomes an orphan to be made
    /// again, in a new epoch. Those being unsubscribed end instead. Returns how many orphans
    /// there are.
    pub(crate) fn session_lost(&self) -> usize {
        let (orphans, ended) = {
            let mut state = lock(&self.state);
            state.abandoned.clear();
            let live: Vec<_> = state.live.drain().map(|(_, sink)| sink).collect();
            let (ended, kept): (Vec<_>, Vec<_>) = live
                .into_iter()
                .partition(|sink| sink.state.is_unsubscribing());
            for sink in &kept {
                sink.state.next_epoch();
                sink.announce_new_epoch(sink.state.epoch());
            }
            state.orphans.extend(kept);
            (state.orphans.len(), ended)
        };
        for sink in ended {
            sink.try_finish(SubscriptionEnd::Unsubscribed);
        }
        orphans
    }

    /// Takes the orphans to make them again; those unsubscribed meanwhile end instead.
    pub(crate) fn take_orphans(&self) -> Vec<Arc<SubscriptionSink>> {
        let orphans = std::mem::take(&mut lock(&self.state).orphans);
        let (ended, kept): (Vec<_>, Vec<_>) = orphans
            .into_iter()
            .partition(|sink| sink.state.is_unsubscribing());
        for sink in ended {
            sink.try_finish(SubscriptionEnd::Unsubscribed);
        }
        kept
    }

    /// Gives back an orphan that could not be made again yet (the connection dropped).
    pub(crate) fn return_orphan(&self, sink: Arc<SubscriptionSink>) {
        let mut state = lock(&self.state);
        match &state.closed {
            Some(end) => {
                let end = end.clone();
                drop(state);
                sink.try_finish(end);
            }
            None => state.orphans.push(sink),
        }
    }

    /// Ends a subscription that could not be made again in the new session.
    pub(crate) fn orphan_refused(&self, sink: &SubscriptionSink, reason: String) {
        sink.try_finish(SubscriptionEnd::ResubscribeFailed { reason });
    }

    /// The client ended: ends every subscription with `end` (its channel closes at once if no
    /// reader holds it, otherwise as soon as its reader lets go). Later registrations end at
    /// once too.
    pub(crate) fn close(&self, end: SubscriptionEnd) {
        let sinks: Vec<_> = {
            let mut state = lock(&self.state);
            state.closed.get_or_insert(end.clone());
            state.abandoned.clear();
            state.adoptable.clear();
            let orphans = std::mem::take(&mut state.orphans);
            state
                .live
                .drain()
                .map(|(_, sink)| sink)
                .chain(orphans)
                .collect()
        };
        for sink in sinks {
            sink.try_finish(end.clone());
        }
        self.changed.notify_waiters();
    }

    /// The broker announced on the control stream that it ended subscription `id`: the
    /// subscription ends with `end` (at once, or as soon as the reader of its stream lets go),
    /// whether or not its stream ever named it. An id this client no longer has is ignored.
    pub(crate) fn ended_by_broker(&self, id: SubscriptionId, end: SubscriptionEnd) {
        let sink = {
            let mut state = lock(&self.state);
            state.abandoned.remove(&id);
            state.live.remove(&id)
        };
        if let Some(sink) = sink {
            sink.try_finish(end);
        }
    }

    /// Forgets `sink` after it ended.
    fn remove(&self, sink: &Arc<SubscriptionSink>) {
        let mut state = lock(&self.state);
        let id = sink.state.id();
        if state
            .live
            .get(&id)
            .is_some_and(|live| Arc::ptr_eq(live, sink))
        {
            state.live.remove(&id);
        }
        state.orphans.retain(|orphan| !Arc::ptr_eq(orphan, sink));
    }
}

/// A subscription held by the task reading its current stream.
#[derive(Debug)]
pub(crate) struct ClaimedSink {
    /// Where the subscription is registered.
    registry: Arc<SubscriptionRegistry>,
    /// The subscription.
    sink: Arc<SubscriptionSink>,
    /// The subscription's epoch when claimed: marks every message read from this stream.
    epoch: u64,
    /// The locked sender; `Some` until the subscription ends.
    slot: OwnedMutexGuard<Option<mpsc::Sender<Delivered>>>,
}

impl ClaimedSink {
    /// The subscription.
    pub(crate) fn sink(&self) -> &SubscriptionSink {
        &self.sink
    }

    /// The sender into the application's channel; `None` once ended.
    pub(crate) fn sender(&self) -> Option<&mpsc::Sender<Delivered>> {
        self.slot.as_ref()
    }

    /// The epoch to mark this stream's messages with.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Ends the subscription with `end` and forgets it.
    pub(crate) fn finish(mut self, end: SubscriptionEnd) {
        self.sink.close_datagrams();
        finish_slot(&mut self.slot, &self.sink.state, end);
        self.registry.remove(&self.sink);
    }

    /// Lets go of the subscription for the next connection's stream: the connection was lost.
    /// A subscription that ended meanwhile or is being unsubscribed ends instead, and so does
    /// every subscription once the client has ended.
    pub(crate) fn release(self) {
        if self.sink.state.has_ended() {
            // Ended while this reader held it (e.g. subscribing again was refused).
            self.finish(SubscriptionEnd::Closed);
            return;
        }
        if self.sink.state.is_unsubscribing() {
            self.finish(SubscriptionEnd::Unsubscribed);
            return;
        }
        let state = lock(&self.registry.state);
        if let Some(end) = &state.closed {
            let end = end.clone();
            drop(state);
            self.finish(end);
            return;
        }
        // Unlocked while the registry is locked: a `close` either ran before (and is seen
        // above) or finds the sender free.
        drop(self.slot);
        drop(state);
    }
}

#[cfg(test)]
mod tests {
    //! The registry pairs streams with subscriptions in either order, hands a subscription from
    //! one connection's stream to the next in order, and ends subscriptions only when told.

    #![allow(clippy::panic, clippy::expect_used)] // A failed expectation in a test panics on purpose.

    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use cassini_protocol::SubscribeOptions;
    use tokio::sync::mpsc;
    use tokio::time::{timeout, Instant};

    use super::*;
    use crate::message::Message;
    use crate::subscribe::sink::{Delivered, StreamItem, SubscriptionState};

    fn sink() -> (Arc<SubscriptionSink>, mpsc::Receiver<Delivered>) {
        let (sender, receiver) = mpsc::channel(4);
        let sink = SubscriptionSink::new(
            "demo.>".into(),
            SubscribeOptions::default(),
            sender,
            Arc::new(SubscriptionState::default()),
        );
        (sink, receiver)
    }

    fn message(sequence: u64) -> Message {
        Message::plain(sequence, "demo.a", Bytes::new())
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_millis(50)
    }

    fn later() -> Instant {
        Instant::now() + Duration::from_secs(10)
    }

    fn registry() -> Arc<SubscriptionRegistry> {
        Arc::new(SubscriptionRegistry::default())
    }

    #[tokio::test]
    async fn a_stream_arriving_after_the_answer_finds_its_subscription() {
        let registry = registry();
        let (sink, _receiver) = sink();
        registry.register(7, Arc::clone(&sink));
        assert_eq!(sink.state.id(), 7);
        assert!(registry.claim(7, soon()).await.is_ok());
    }

    #[tokio::test]
    async fn a_stream_arriving_before_the_answer_waits_for_it() {
        let registry = registry();
        let waiting = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.claim(7, later()).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        let (sink, _receiver) = sink();
        registry.register(7, sink);
        let claimed = timeout(Duration::from_secs(5), waiting)
            .await
            .expect("claimed in time")
            .expect("claim task");
        assert_eq!(claimed, Ok(()));
    }

    #[tokio::test]
    async fn a_stream_for_an_unknown_subscription_gives_up_at_the_deadline() {
        let registry = registry();
        let (sink, _receiver) = sink();
        registry.register(8, sink);
        assert_eq!(
            registry.claim(7, soon()).await.err(),
            Some(ClaimError::TimedOut)
        );
    }

    #[tokio::test]
    async fn the_next_stream_takes_over_only_after_the_previous_reader_lets_go() {
        let registry = registry();
        let (sink, _receiver) = sink();
        registry.register(7, sink);
        let first = registry.claim(7, soon()).await.expect("first stream");
        let mut second = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.claim(7, soon()).await.map(|_| ()) }
        });
        assert!(
            timeout(Duration::from_millis(100), &mut second)
                .await
                .is_err(),
            "the second stream must wait while the first reader holds the subscription"
        );
        first.release();
        let claimed = timeout(Duration::from_secs(5), second)
            .await
            .expect("claimed in time")
            .expect("claim task");
        assert_eq!(claimed, Ok(()));
    }

    #[tokio::test]
    async fn a_released_subscription_stays_open_for_the_next_connection() {
        let registry = registry();
        let (sink, mut receiver) = sink();
        registry.register(7, Arc::clone(&sink));
        registry.claim(7, soon()).await.expect("claim").release();
        assert_eq!(sink.state.end(), None);
        assert!(receiver.try_recv().is_err(), "the channel stays open");
        let claimed = registry.claim(7, soon()).await.expect("claimed again");
        claimed
            .sender()
            .expect("open")
            .send(Delivered {
                epoch: claimed.epoch(),
                item: StreamItem::Message(message(1)),
            })
            .await
            .expect("send");
        let received = receiver.recv().await.map(|delivered| match delivered.item {
            StreamItem::Message(message) => message.sequence(),
            StreamItem::Gap(gap) => panic!("a gap: {gap:?}"),
            StreamItem::NewEpoch => panic!("a new epoch"),
            StreamItem::SentThrough(through) => panic!("sent through {through}"),
        });
        assert_eq!(received, Some(1));
    }

    #[tokio::test]
    async fn a_finished_subscription_is_forgotten_and_its_channel_closed() {
        let registry = registry();
        let (sink, mut receiver) = sink();
        registry.register(7, Arc::clone(&sink));
        let claimed = registry.claim(7, soon()).await.expect("claim");
        claimed.finish(SubscriptionEnd::SlowConsumer);
        assert!(receiver.recv().await.is_none());
        assert_eq!(sink.state.end(), Some(SubscriptionEnd::SlowConsumer));
        assert_eq!(
            registry.claim(7, soon()).await.err(),
            Some(ClaimError::TimedOut)
        );
    }

    #[tokio::test]
    async fn releasing_a_subscription_being_unsubscribed_ends_it() {
        let registry = registry();
        let (sink, mut receiver) = sink();
        registry.register(7, Arc::clone(&sink));
        let claimed = registry.claim(7, soon()).await.expect("claim");
        sink.state.start_unsubscribing();
        claimed.release();
        assert!(receiver.recv().await.is_none());
        assert_eq!(sink.state.end(), Some(SubscriptionEnd::Unsubscribed));
    }

    #[tokio::test]
    async fn closing_ends_free_subscriptions_at_once_and_held_ones_on_release() {
        let registry = registry();
        let (free, mut free_receiver) = sink();
        let (held, mut held_receiver) = sink();
        registry.register(7, Arc::clone(&free));
        registry.register(8, Arc::clone(&held));
        let claimed = registry.claim(8, soon()).await.expect("claim");
        let lost = SubscriptionEnd::ConnectionLost {
            reason: "timed out".into(),
        };
        registry.close(lost.clone());
        assert!(free_receiver.recv().await.is_none());
        assert_eq!(free.state.end(), Some(lost.clone()));
        assert!(
            held_receiver.try_recv().is_err(),
            "still open while its reader holds it"
        );
        claimed.release();
        assert!(held_receiver.recv().await.is_none());
        assert_eq!(held.state.end(), Some(lost));
        assert_eq!(
            registry.claim(7, soon()).await.err(),
            Some(ClaimError::Closed)
        );
    }

    #[tokio::test]
    async fn a_registration_after_close_ends_at_once() {
        let registry = registry();
        registry.close(SubscriptionEnd::Closed);
        let (sink, mut receiver) = sink();
        registry.register(7, Arc::clone(&sink));
        assert!(receiver.recv().await.is_none());
        assert_eq!(sink.state.end(), Some(SubscriptionEnd::Closed));
    }

    #[tokio::test]
    async fn closing_wakes_a_waiting_stream() {
        let registry = registry();
        let waiting = tokio::spawn({
            let registry = Arc::clone(&registry);
            async move { registry.claim(7, later()).await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        registry.close(SubscriptionEnd::Closed);
        let claimed = timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken in time")
            .expect("claim task");
        assert_eq!(claimed, Err(ClaimError::Closed));
    }

    #[tokio::test]
    async fn a_stream_for_an_abandoned_subscription_is_refused_at_once() {
        let registry = registry();
        let (sink, _receiver) = sink();
        registry.register(7, Arc::clone(&sink));
        sink.state.start_unsubscribing();
        registry.unsubscribing(&sink.state);
        assert_eq!(registry.abandoned(), vec![7]);
        // Its stream was lost with the connection while the answer was awaited: it ends here.
        registry.claim(7, soon()).await.expect("claim").release();
        assert_eq!(sink.state.end(), Some(SubscriptionEnd::Unsubscribed));
        // The broker may still have it and open a stream for it after a resume.
        assert_eq!(
            registry.claim(7, later()).await.err(),
            Some(ClaimError::Abandoned)
        );
        registry.unsubscribe_confirmed(7);
        assert!(registry.abandoned().is_empty());
    }

    #[tokio::test]
    async fn an_orphan_has_no_id_to_unsubscribe() {
        let registry = registry();
        let (sink, _receiver) = sink();
        registry.register(1, Arc::clone(&sink));
        registry.session_lost();
        registry.unsubscribing(&sink.state);
        assert!(
            registry.abandoned().is_empty(),
            "id 1 may name another subscription in the new session"
        );
    }

    #[tokio::test]
    async fn a_lost_session_orphans_live_subscriptions_in_a_new_epoch() {
        let registry = registry();
        let (kept, _kept_receiver) = sink();
        let (dropped, mut dropped_receiver) = sink();
        registry.register(1, Arc::clone(&kept));
        registry.register(2, Arc::clone(&dropped));
        dropped.state.start_unsubscribing();
        registry.unsubscribing(&dropped.state);

        assert_eq!(registry.session_lost(), 1);
        assert!(registry.abandoned().is_empty(), "the new session has none");
        assert!(dropped_receiver.recv().await.is_none());
        assert_eq!(kept.state.epoch(), 1);
        assert_eq!(
            registry.claim(1, soon()).await.err(),
            Some(ClaimError::TimedOut),
            "old ids mean nothing in the new session"
        );

        let orphans = registry.take_orphans();
        assert_eq!(orphans.len(), 1);
        assert!(Arc::ptr_eq(&orphans[0], &kept));
        registry.register(30, Arc::clone(&orphans[0]));
        assert_eq!(kept.state.id(), 30);
        let claimed = registry
            .claim(30, soon())
            .await
            .expect("claimed by its new id");
        assert_eq!(claimed.epoch(), 1);
    }

    #[tokio::test]
    async fn an_orphan_that_could_not_be_made_again_waits_for_the_next_attempt() {
        let registry = registry();
        let (sink, _receiver) = sink();
        registry.register(1, Arc::clone(&sink));
        registry.session_lost();
        let orphans = registry.take_orphans();
        registry.return_orphan(Arc::clone(&orphans[0]));
        assert_eq!(registry.take_orphans().len(), 1);
    }

    #[tokio::test]
    async fn a_refused_orphan_ends_even_while_an_old_reader_holds_it() {
        let registry = registry();
        let (sink, mut receiver) = sink();
        registry.register(1, Arc::clone(&sink));
        let old_reader = registry.claim(1, soon()).await.expect("claim");
        registry.session_lost();
        let orphans = registry.take_orphans();
        registry.orphan_refused(&orphans[0], "too many subscriptions".into());
        old_reader.release();
        assert!(receiver.recv().await.is_none());
        assert!(matches!(
            sink.state.end(),
            Some(SubscriptionEnd::ResubscribeFailed { .. })
        ));
    }
}
