//! The application's end of a subscription: [`Subscription`], its [`SubscriptionEvent`]s, and
//! subscribing ([`Subscription::open`]).
//!
//! A [`Subscription`] is a stream of [`Message`]s read from a bounded channel. The other end of
//! that channel lives in a [`SubscriptionSink`] (in [`crate::subscribe::sink`]), which outlives
//! connections: the task reading the subscription's current QUIC stream (see
//! [`crate::subscribe::incoming`]) holds it while it reads, and after a reconnect the task reading
//! the new stream takes it over. When the channel is full that task waits and stops reading, so
//! QUIC flow control pushes back on the broker, whose per-subscription queue then applies the
//! subscription's overflow policy. Nothing here buffers without bound. Where messages are yielded,
//! a [`GapTracker`] records what was skipped and refuses duplicates.
//!
//! An at-least-once subscription acknowledges a message once the application asks for the
//! next one (it is done with the previous), in batches ([`PendingAcks`]); a redelivery of a
//! message the subscription already yielded is acknowledged again and not yielded twice.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use cassini_protocol::{DeliveryClass, ErrorCode, SubscribeOptions, SubscriptionId, TopicFilter};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::connect::control::handle::ControlRequest;
use crate::connect::session::SessionCore;
use crate::error::{ClientError, ConnectionError, SubscribeError};
use crate::message::Message;
use crate::subscribe::acks::PendingAcks;
use crate::subscribe::end::SubscriptionEnd;
use crate::subscribe::gap::{DatagramTracker, Gap, GapTracker};
use crate::subscribe::sink::{Delivered, StreamItem, SubscriptionSink, SubscriptionState};

/// Most messages a [`Subscription`] takes from its channel at once.
const RECEIVE_BATCH: usize = 32;

/// A live subscription: a [`Stream`] of the messages the broker delivers to it.
///
/// Messages wait in a bounded buffer (`ClientBuilder::subscription_buffer`, default 1024, plus
/// up to 32 the subscription has taken from it to yield next, and up to 32 decoded from the
/// stream and waiting to go in); when it is full the client
/// stops reading this subscription's stream and the broker's overflow policy for the
/// subscription applies. Other subscriptions are not held up.
///
/// A subscription survives reconnects (see [`crate::ReconnectPolicy`]): when the session is
/// resumed, messages continue from the new connection, in order. Messages are never yielded
/// twice or out of order (a datagram subscription yields each sequence once, in the order it
/// arrives); what was skipped (dropped by the overflow policy, lost in flight, or
/// lost with an expired session) is counted by [`Subscription::gaps`] and listed by
/// [`Subscription::take_gaps`].
///
/// Dropping a `Subscription` ends it: the client stops its stream and sends `Unsubscribe` in the
/// background (after the reconnect, if the connection is down). Call
/// [`Subscription::unsubscribe`] to wait for the broker's answer instead.
#[derive(Debug)]
pub struct Subscription {
    /// The filter as subscribed.
    filter: TopicFilter,
    /// The options as subscribed.
    options: SubscribeOptions,
    /// Messages read from the stream, in order.
    messages: mpsc::Receiver<Delivered>,
    /// Taken from `messages` in one go (one return of the channel's permits for up to
    /// [`RECEIVE_BATCH`] messages, not one per message), yielded from here first.
    received: VecDeque<Delivered>,
    /// Scratch space for taking a batch out of `messages`; always empty between calls.
    batch: Vec<Delivered>,
    /// Shared with the stream-reading task.
    state: Arc<SubscriptionState>,
    /// The last sequence yielded and the gaps before it.
    gaps: GapTracker,
    /// At least once: acknowledgements not yet sent, and the message yielded last (acknowledged
    /// when the application asks for the next one).
    acks: Option<PendingAcks>,
    /// Datagram delivery: which sequences arrived, in whatever order, and what is missing.
    datagrams: Option<DatagramTracker>,
    /// A message (with its epoch) read behind a gap found in front of it: the gap is yielded
    /// first, the message at the next call.
    held: Option<(u64, Message)>,
    /// For `Unsubscribe`, now or on drop, on whichever connection is current.
    session: Arc<SessionCore>,
}

impl Subscription {
    pub(crate) fn new(
        filter: TopicFilter,
        options: SubscribeOptions,
        messages: mpsc::Receiver<Delivered>,
        state: Arc<SubscriptionState>,
        session: Arc<SessionCore>,
    ) -> Self {
        let acks = options.acks.map(|_| PendingAcks::default());
        let datagrams = matches!(options.delivery, DeliveryClass::Datagram { .. })
            .then(DatagramTracker::default);
        Self {
            filter,
            options,
            messages,
            received: VecDeque::new(),
            batch: Vec::new(),
            state,
            gaps: GapTracker::default(),
            acks,
            datagrams,
            held: None,
            session,
        }
    }

    /// Subscribes to `filter` with `options` in `session`, with a channel of `buffer` messages:
    /// what [`crate::Client::subscribe_with`] does. Takes up the session's subscription of the
    /// same filter and options if a resumed session holds one nobody claimed yet.
    pub(crate) async fn open(
        session: &Arc<SessionCore>,
        buffer: usize,
        filter: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let core = session;
        if core.is_closing() {
            return Err(ConnectionError::Closed.into());
        }
        let limits = core.attachment().link.topic_limits();
        let filter = TopicFilter::parse(filter, &limits).map_err(SubscribeError::InvalidFilter)?;
        let control = core.control()?;
        let (sender, messages) = mpsc::channel(buffer);
        let state = Arc::new(SubscriptionState::default());
        let sink = SubscriptionSink::new(
            filter.as_str().to_owned(),
            options.clone(),
            sender,
            Arc::clone(&state),
        );
        let taken_up = match core.registry().adopt(filter.as_str(), &options) {
            Some(id) => {
                tracing::debug!(%filter, subscription = id, "took up the session's subscription");
                core.registry().register(id, sink);
                true
            }
            None => {
                let _subscribing = core.registry().subscribing();
                control.subscribe(sink).await?;
                false
            }
        };
        let subscription = Subscription::new(filter, options, messages, state, Arc::clone(session));
        Ok(if taken_up {
            subscription.taken_up()
        } else {
            subscription
        })
    }

    /// This subscription was taken up from a resumed session rather than made: sequences
    /// before its first message or gap went to an earlier client, and are no gap here.
    pub(crate) fn taken_up(mut self) -> Self {
        self.gaps = GapTracker::taken_up();
        self
    }

    /// The broker-assigned subscription id. It changes if the broker had forgotten the session
    /// when the client reconnected and the client subscribed again ([`Gap::SessionLost`]).
    pub fn id(&self) -> SubscriptionId {
        self.state.id()
    }

    /// The filter this subscription was created with.
    ///
    /// With `futures_util::StreamExt` in scope, `sub.filter()` resolves to the trait's `filter`
    /// combinator (it takes `self` by value, which method lookup tries first); write
    /// `Subscription::filter(&sub)` there.
    pub fn filter(&self) -> &str {
        self.filter.as_str()
    }

    /// The options this subscription was created with.
    pub fn options(&self) -> &SubscribeOptions {
        &self.options
    }

    /// How many messages the broker reported dropped for this subscription so far: by its
    /// overflow policy, or on a full cluster route from another node (the sum of its
    /// `Overflow` and `ClusterRoute` `Gap` announcements). A matching gap shows in
    /// [`Message::sequence`] and in [`Subscription::take_gaps`].
    pub fn dropped(&self) -> u64 {
        self.state.dropped()
    }

    /// How many messages this subscription skipped so far, as seen in the sequence numbers of
    /// the messages it yielded: dropped by the broker's overflow policy, or lost in flight when
    /// a connection dropped. Messages lost with an expired session are not counted (nobody
    /// knows how many there were); they show as [`Gap::SessionLost`] in
    /// [`Subscription::take_gaps`].
    pub fn gaps(&self) -> u64 {
        self.gaps.missed()
    }

    /// How many messages this subscription is missing so far. For a reliable subscription, the
    /// same as [`Subscription::gaps`]. For a datagram subscription, every sequence not (yet)
    /// received below the highest one received or the highest the broker says it has sent (it
    /// says so 50 ms after it last sent a datagram, so a loss just before a pause is counted
    /// too), plus those the broker announced will never come (dropped by the overflow policy,
    /// or too large for a datagram under [`cassini_protocol::OversizeRule::Drop`]); a late
    /// datagram that arrives after all is yielded and no longer counted. Updated as the
    /// subscription is read.
    pub fn lost(&self) -> u64 {
        match &self.datagrams {
            Some(tracker) => tracker.lost(),
            None => self.gaps.missed(),
        }
    }

    /// The gaps found since the last call, oldest first: each is recorded when the
    /// subscription is read up to it, in stream order (the broker's `Gap` frame, a lost
    /// session, or the first message after an unannounced jump in the sequence numbers); to
    /// learn of a gap on a quiet topic without taking messages, wait on
    /// [`Subscription::next_event`], which yields it as soon as the client knows it. At most
    /// the latest 1,024 are kept between calls.
    pub fn take_gaps(&mut self) -> Vec<Gap> {
        self.gaps.take()
    }

    /// Why the subscription's stream ended, once it has; `None` while it is live (also while
    /// the client reconnects).
    ///
    /// It is set as soon as the stream ends. Messages received before the end are still
    /// yielded, then the subscription yields `None`.
    pub fn end_reason(&self) -> Option<SubscriptionEnd> {
        self.state.end()
    }

    /// The next message, or `None` once the subscription has ended and every received message
    /// was yielded. The same as `StreamExt::next`, without importing the trait.
    pub async fn recv(&mut self) -> Option<Message> {
        self.next().await
    }

    /// Asks the broker to end the subscription and waits for its answer.
    ///
    /// Messages already received can still be read afterwards; then the subscription yields
    /// `None` with [`SubscriptionEnd::Unsubscribed`]. Calling it again does nothing. A
    /// subscription the broker already ended (e.g. [`SubscriptionEnd::SlowConsumer`]) is not an
    /// error. While the client is reconnecting it fails with [`ClientError::Disconnected`] and
    /// the subscription stays as it was; if the connection drops while the answer is awaited,
    /// the subscription ends here and the client unsubscribes again after the reconnect.
    pub async fn unsubscribe(&mut self) -> Result<(), ClientError> {
        if self.state.is_unsubscribing() {
            return Ok(());
        }
        let control = self.session.control()?;
        if self.state.start_unsubscribing() {
            return Ok(());
        }
        let id = self.id();
        self.session.registry().unsubscribing(&self.state);
        match control.unsubscribe(id).await {
            Err(SubscribeError::Refused { code, .. })
                if code == ErrorCode::UNKNOWN_SUBSCRIPTION && self.state.has_ended() =>
            {
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

/// What a subscription yields through [`Subscription::next_event`] and
/// [`Subscription::events`]: a message, or the announcement that messages were skipped.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum SubscriptionEvent {
    /// A delivery.
    Message(Message),
    /// Messages this subscription will never yield, announced as soon as the client knows:
    /// when the broker's `Gap` frame arrives (even with no message after it), or at the first
    /// message after an unannounced jump in the sequence numbers.
    Gap(Gap),
}

impl Stream for Subscription {
    type Item = Message;

    /// Messages only; gaps are still counted and kept for [`Subscription::take_gaps`].
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        let this = &mut *self;
        loop {
            match this.poll_event(cx) {
                Poll::Ready(Some(SubscriptionEvent::Message(message))) => {
                    this.gaps.clear_unannounced();
                    return Poll::Ready(Some(message));
                }
                Poll::Ready(Some(SubscriptionEvent::Gap(_))) => {}
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    this.gaps.clear_unannounced();
                    return Poll::Pending;
                }
            }
        }
    }
}

/// [`Subscription::events`]: the subscription as a [`Stream`] of [`SubscriptionEvent`]s.
#[derive(Debug)]
pub struct Events<'a> {
    subscription: &'a mut Subscription,
}

impl Stream for Events<'_> {
    type Item = SubscriptionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.subscription.poll_event(cx)
    }
}

impl Subscription {
    /// The next message or gap, or `None` once the subscription has ended and everything
    /// received was yielded. Unlike [`Subscription::recv`], a gap wakes the caller at once,
    /// so loss on a quiet topic is heard without waiting for the next message. Datagram
    /// subscriptions yield messages only (their loss is [`Subscription::lost`]).
    pub async fn next_event(&mut self) -> Option<SubscriptionEvent> {
        std::future::poll_fn(|cx| self.poll_event(cx)).await
    }

    /// The subscription as a [`Stream`] of messages and gaps ([`Subscription::next_event`]).
    pub fn events(&mut self) -> Events<'_> {
        Events { subscription: self }
    }

    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<SubscriptionEvent>> {
        if let Some(acks) = &mut self.acks {
            // Asking for the next item means the application is done with the last message.
            acks.last_processed();
        }
        if let Some(gap) = self.gaps.next_unannounced() {
            return Poll::Ready(Some(SubscriptionEvent::Gap(gap)));
        }
        if let Some(message) = self.held.take() {
            return Poll::Ready(Some(self.yield_message(message)));
        }
        loop {
            let delivered = match self.received.pop_front() {
                Some(delivered) => delivered,
                None => match self
                    .messages
                    .poll_recv_many(cx, &mut self.batch, RECEIVE_BATCH)
                {
                    Poll::Ready(0) => return Poll::Ready(None),
                    Poll::Ready(_) => {
                        self.received.extend(self.batch.drain(..));
                        continue;
                    }
                    Poll::Pending => {
                        self.flush_acks(true);
                        return Poll::Pending;
                    }
                },
            };
            let Delivered { epoch, item } = delivered;
            if let Some(tracker) = &mut self.datagrams {
                match item {
                    StreamItem::Gap(gap) => tracker.announced(epoch, gap.from, gap.to),
                    StreamItem::NewEpoch => {
                        if let Some(last_sequence) = tracker.new_epoch(epoch) {
                            self.gaps.session_lost(epoch, last_sequence);
                            if let Some(gap) = self.gaps.next_unannounced() {
                                return Poll::Ready(Some(SubscriptionEvent::Gap(gap)));
                            }
                        }
                    }
                    StreamItem::SentThrough(through) => tracker.sent_through(epoch, through),
                    StreamItem::Message(message) => {
                        if tracker.accept(epoch, message.sequence()) {
                            return Poll::Ready(Some(SubscriptionEvent::Message(message)));
                        }
                    }
                }
                continue;
            }
            let message = match item {
                StreamItem::Gap(gap) => {
                    self.gaps.announced(epoch, gap.from, gap.to, gap.reason);
                    match self.gaps.next_unannounced() {
                        Some(gap) => return Poll::Ready(Some(SubscriptionEvent::Gap(gap))),
                        None => continue,
                    }
                }
                StreamItem::NewEpoch => {
                    self.gaps.new_epoch(epoch);
                    match self.gaps.next_unannounced() {
                        Some(gap) => return Poll::Ready(Some(SubscriptionEvent::Gap(gap))),
                        None => continue,
                    }
                }
                // Only a datagram subscription's broker says how far it has sent.
                StreamItem::SentThrough(_) => continue,
                StreamItem::Message(message) => message,
            };
            let sequence = message.sequence();
            if self.gaps.accept(epoch, sequence) {
                if let Some(gap) = self.gaps.next_unannounced() {
                    // The message waits one call behind the gap found in front of it.
                    self.held = Some((epoch, message));
                    return Poll::Ready(Some(SubscriptionEvent::Gap(gap)));
                }
                return Poll::Ready(Some(self.yield_message((epoch, message))));
            }
            if let Some(acks) = &mut self.acks {
                // Yielded before (and acknowledged, or about to be): say so again.
                acks.add(epoch, sequence);
            }
            tracing::debug!(
                subscription = self.state.id(),
                sequence,
                redelivered = message.is_redelivered(),
                "duplicate delivery dropped"
            );
        }
    }
}

impl Subscription {
    /// Hands `message` of `epoch` to the application: from now on it is the one an
    /// at-least-once subscription acknowledges when the application asks for the next item.
    fn yield_message(&mut self, (epoch, message): (u64, Message)) -> SubscriptionEvent {
        if let Some(acks) = &mut self.acks {
            acks.yielded(epoch, message.sequence());
        }
        self.flush_acks(false);
        SubscriptionEvent::Message(message)
    }

    /// Sends the pending acknowledgements if there are enough of them, or any at all when
    /// `now`. Never waits: if they cannot be sent now (reconnecting, or the control queue is
    /// full) they wait for the next attempt.
    fn flush_acks(&mut self, now: bool) {
        let Some(acks) = &mut self.acks else {
            return;
        };
        if !acks.due(now) {
            return;
        }
        let epoch = self.state.epoch();
        let Some(ack) = acks.take(epoch, self.state.id()) else {
            return;
        };
        let sent = self
            .session
            .control()
            .map(|control| control.send_ack(&ack))
            .unwrap_or(false);
        if !sent {
            acks.put_back(epoch, ack);
        }
    }
}

impl Subscription {
    /// At least once: the application is done with the message it was given last, so it is
    /// acknowledged now rather than when the next one is asked for, and every acknowledgement
    /// waiting is sent. Use it before [`crate::Client::leave`] so that a later client that
    /// resumes the session does not get that message again. Does nothing for an at-most-once
    /// subscription.
    pub fn acknowledge(&mut self) {
        if let Some(acks) = &mut self.acks {
            acks.last_processed();
        }
        self.flush_acks(true);
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.state.start_unsubscribing() || self.state.has_ended() {
            return;
        }
        let subscription = self.id();
        self.session.registry().unsubscribing(&self.state);
        // While reconnecting, the session sends it after the reconnect.
        if let Ok(control) = self.session.control() {
            control.request_in_background(ControlRequest::Unsubscribe { subscription });
        }
    }
}
