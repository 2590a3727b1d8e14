//! The application's end of a subscription, and what it shares with the task reading the
//! subscription's stream.
//!
//! A [`Subscription`] is a stream of [`Message`]s read from a bounded channel. The other end of
//! that channel lives in a [`SubscriptionSink`], which outlives connections: the task reading
//! the subscription's current QUIC stream (see [`crate::subscription_stream`]) holds it while
//! it reads, and after a reconnect the task reading the new stream takes it over. When the
//! channel is full that task waits and stops reading, so QUIC flow control pushes back on the
//! broker, whose per-subscription queue then applies the subscription's overflow policy.
//! Nothing here buffers without bound. Where messages are yielded, a [`GapTracker`] records
//! what was skipped and refuses duplicates.
//!
//! An at-least-once subscription acknowledges a message once the application asks for the
//! next one (it is done with the previous), in batches ([`PendingAcks`]); a redelivery of a
//! message the subscription already yielded is acknowledged again and not yielded twice.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use cassini_protocol::{
    DeliveryClass, ErrorCode, Gap as GapFrame, SubscribeOptions, SubscriptionId, TopicFilter,
};
use futures_util::{Stream, StreamExt};
use tokio::sync::{mpsc, Mutex};

use crate::connection_state::DisconnectReason;
use crate::control::ControlRequest;
use crate::datagram_loss::DatagramTracker;
use crate::delivery_acks::PendingAcks;
use crate::error::ClientError;
use crate::gaps::{Gap, GapTracker};
use crate::message::Message;
use crate::session::SessionCore;

/// Why a subscription's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriptionEnd {
    /// This client unsubscribed (or dropped the subscription) and the broker ended the stream.
    Unsubscribed,
    /// The broker ended the stream without being asked, e.g. because the session ended.
    EndedByBroker,
    /// The broker closed the subscription because its queue overflowed under
    /// [`cassini_protocol::OverflowPolicy::Close`]: this client read too slowly.
    SlowConsumer,
    /// The broker reset the stream with another error code.
    Reset(ErrorCode),
    /// The client was closed, or the broker closed the connection normally.
    Closed,
    /// A newer connection with the same certificate identity took the session over
    /// (`SESSION_TAKEN_OVER`): the subscription lives on there, not here.
    SessionTakenOver,
    /// The connection was lost.
    ConnectionLost {
        /// What went wrong.
        reason: String,
    },
    /// The broker sent something invalid on the stream; the client closed the connection.
    ProtocolError {
        /// What the broker sent.
        reason: String,
    },
    /// The broker had forgotten the session when the client reconnected, and subscribing again
    /// in the new session failed.
    ResubscribeFailed {
        /// Why the broker refused the new subscription.
        reason: String,
    },
}

impl fmt::Display for SubscriptionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscriptionEnd::Unsubscribed => f.write_str("unsubscribed"),
            SubscriptionEnd::EndedByBroker => f.write_str("ended by the broker"),
            SubscriptionEnd::SlowConsumer => {
                f.write_str("closed by the broker: slow consumer (its queue overflowed)")
            }
            SubscriptionEnd::Reset(code) => write!(f, "reset by the broker: {code}"),
            SubscriptionEnd::Closed => f.write_str("the client was closed"),
            SubscriptionEnd::SessionTakenOver => {
                f.write_str("the session was taken over by a newer connection of this identity")
            }
            SubscriptionEnd::ConnectionLost { reason } => write!(f, "connection lost: {reason}"),
            SubscriptionEnd::ProtocolError { reason } => write!(f, "protocol error: {reason}"),
            SubscriptionEnd::ResubscribeFailed { reason } => {
                write!(
                    f,
                    "the session was lost and subscribing again failed: {reason}"
                )
            }
        }
    }
}

impl SubscriptionEnd {
    /// How a subscription ends when the client ended with `error` for `reason`.
    pub(crate) fn after(error: &ClientError, reason: &DisconnectReason) -> Self {
        if *reason == DisconnectReason::SessionTakenOver {
            return SubscriptionEnd::SessionTakenOver;
        }
        match error {
            ClientError::Closed => SubscriptionEnd::Closed,
            ClientError::Protocol { reason } => SubscriptionEnd::ProtocolError {
                reason: reason.clone(),
            },
            ClientError::ConnectionLost { reason } => SubscriptionEnd::ConnectionLost {
                reason: reason.clone(),
            },
            other => SubscriptionEnd::ConnectionLost {
                reason: other.to_string(),
            },
        }
    }
}

/// What the application's handle, the stream-reading tasks and the session share.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionState {
    /// The broker's id for the subscription; a new one when it was made again in a new session.
    id: AtomicU64,
    /// Grows by one each time the subscription is made again in a new session, whose sequence
    /// numbers start again at 1.
    epoch: AtomicU64,
    /// Sum of the broker's overflow gaps.
    dropped: AtomicU64,
    /// The highest sequence read from the subscription's streams in this epoch: where the
    /// client stands when it resumes the session.
    last_received: AtomicU64,
    /// Set once, before the channel is closed.
    end: OnceLock<SubscriptionEnd>,
    /// Set when this client asked the broker to end the subscription, or dropped it.
    unsubscribing: AtomicBool,
}

impl SubscriptionState {
    pub(crate) fn id(&self) -> SubscriptionId {
        self.id.load(Ordering::Acquire)
    }

    pub(crate) fn set_id(&self, id: SubscriptionId) {
        self.id.store(id, Ordering::Release);
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Starts a new epoch: the subscription is being made again in a new session.
    pub(crate) fn next_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.last_received.store(0, Ordering::Release);
    }

    /// Records that sequences up to `sequence` were read from the stream.
    pub(crate) fn note_received(&self, sequence: u64) {
        self.last_received.fetch_max(sequence, Ordering::AcqRel);
    }

    /// The highest sequence read from the subscription's streams in this epoch.
    pub(crate) fn last_received(&self) -> u64 {
        self.last_received.load(Ordering::Acquire)
    }

    pub(crate) fn add_dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn is_unsubscribing(&self) -> bool {
        self.unsubscribing.load(Ordering::Acquire)
    }

    /// Marks the subscription as being unsubscribed; returns whether it already was.
    pub(crate) fn start_unsubscribing(&self) -> bool {
        self.unsubscribing.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn has_ended(&self) -> bool {
        self.end.get().is_some()
    }

    /// Why the subscription ended, once it has.
    pub(crate) fn end(&self) -> Option<SubscriptionEnd> {
        self.end.get().cloned()
    }
}

/// One message or announced gap on its way to the application, with the epoch it was read in.
#[derive(Debug)]
pub(crate) struct Delivered {
    /// The subscription's epoch when the stream carrying the message was claimed.
    pub(crate) epoch: u64,
    /// The message or gap.
    pub(crate) item: StreamItem,
}

/// What a subscription stream carries to the application.
#[derive(Debug)]
pub(crate) enum StreamItem {
    /// A delivery.
    Message(Message),
    /// The broker's announcement that a range of sequences will never come.
    Gap(GapFrame),
}

/// The slot holding a subscription's sender: `None` once the subscription has ended. The task
/// reading the subscription's stream keeps it locked while it reads.
pub(crate) type SenderSlot = Arc<Mutex<Option<mpsc::Sender<Delivered>>>>;

/// The session's side of one subscription: what it was made with, so it can be made again, and
/// the sending end of its channel. It outlives connections.
#[derive(Debug)]
pub(crate) struct SubscriptionSink {
    /// The filter as subscribed.
    pub(crate) filter: String,
    /// The options as subscribed.
    pub(crate) options: SubscribeOptions,
    /// Shared with the handle.
    pub(crate) state: Arc<SubscriptionState>,
    /// The channel's sender. Bounded: a full channel stops the stream reader, and flow control
    /// stops the broker.
    sender: SenderSlot,
    /// For a datagram subscription, the sender the connection's datagram reader uses: it never
    /// waits (a datagram that finds the channel full is dropped and shows as lost). Cleared
    /// when the subscription ends, so the channel closes.
    datagram_sender: std::sync::Mutex<Option<mpsc::Sender<Delivered>>>,
}

impl SubscriptionSink {
    pub(crate) fn new(
        filter: String,
        options: SubscribeOptions,
        sender: mpsc::Sender<Delivered>,
        state: Arc<SubscriptionState>,
    ) -> Arc<Self> {
        let datagram_sender =
            matches!(options.delivery, DeliveryClass::Datagram { .. }).then(|| sender.clone());
        Arc::new(Self {
            filter,
            options,
            state,
            sender: Arc::new(Mutex::new(Some(sender))),
            datagram_sender: std::sync::Mutex::new(datagram_sender),
        })
    }

    /// The sender's slot, for a stream reader to lock.
    pub(crate) fn slot(&self) -> SenderSlot {
        Arc::clone(&self.sender)
    }

    /// Ends the subscription with `end`: records the reason at once, and closes the channel at
    /// once unless a stream reader holds it, which then closes it when it lets go. A
    /// subscription that had ended keeps its first reason.
    pub(crate) fn try_finish(&self, end: SubscriptionEnd) {
        let _ = self.state.end.set(end);
        self.close_datagrams();
        if let Ok(mut slot) = self.sender.try_lock() {
            *slot = None;
        }
    }

    /// Hands a delivery that arrived in a datagram to the application, if there is room now;
    /// returns whether it was taken.
    pub(crate) fn offer_datagram(&self, message: Message) -> bool {
        let sender = crate::sync::lock(&self.datagram_sender);
        let Some(sender) = sender.as_ref() else {
            return false;
        };
        sender
            .try_send(Delivered {
                epoch: self.state.epoch(),
                item: StreamItem::Message(message),
            })
            .is_ok()
    }

    /// Drops the datagram reader's sender (the subscription ended).
    pub(crate) fn close_datagrams(&self) {
        *crate::sync::lock(&self.datagram_sender) = None;
    }
}

/// Records why the subscription ended (unless it had ended already), then closes its channel:
/// the handle yields what is buffered, then `None`.
pub(crate) fn finish_slot(
    slot: &mut Option<mpsc::Sender<Delivered>>,
    state: &SubscriptionState,
    end: SubscriptionEnd,
) {
    let _ = state.end.set(end);
    *slot = None;
}

/// A live subscription: a [`Stream`] of the messages the broker delivers to it.
///
/// Messages wait in a bounded buffer (`ClientBuilder::subscription_buffer`, default 1024); when
/// it is full the client stops reading this subscription's stream and the broker's overflow
/// policy for the subscription applies. Other subscriptions are not held up.
///
/// A subscription survives reconnects (see [`crate::ReconnectPolicy`]): when the session is
/// resumed, messages continue from the new connection, in order. Messages are never yielded
/// twice or out of order; what was skipped (dropped by the overflow policy, lost in flight, or
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
            state,
            gaps: GapTracker::default(),
            acks,
            datagrams,
            held: None,
            session,
        }
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

    /// How many messages the broker reported its overflow policy dropped for this subscription
    /// so far (the sum of its overflow `Gap` announcements). A matching gap shows in
    /// [`Message::sequence`] and in [`Subscription::take_gaps`].
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
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
    /// received below the highest one received, plus those the broker announced will never
    /// come (dropped by the overflow policy, or too large for a datagram under
    /// [`cassini_protocol::OversizeRule::Drop`]); a late datagram that arrives after all is
    /// yielded and no longer counted.
    pub fn lost(&self) -> u64 {
        match &self.datagrams {
            Some(tracker) => tracker.lost(),
            None => self.gaps.missed(),
        }
    }

    /// The gaps found since the last call, oldest first: each is recorded when the first
    /// message after it is yielded. At most the latest 1,024 are kept between calls.
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
            Err(ClientError::Request { code, .. })
                if code == ErrorCode::UNKNOWN_SUBSCRIPTION && self.state.has_ended() =>
            {
                Ok(())
            }
            other => other,
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
            let delivered = match self.messages.poll_recv(cx) {
                Poll::Ready(Some(delivered)) => delivered,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    self.flush_acks(true);
                    return Poll::Pending;
                }
            };
            let Delivered { epoch, item } = delivered;
            if let Some(tracker) = &mut self.datagrams {
                match item {
                    StreamItem::Gap(gap) => tracker.announced(epoch, gap.from, gap.to),
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
