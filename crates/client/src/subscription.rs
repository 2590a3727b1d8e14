//! The application's end of a subscription.
//!
//! A [`Subscription`] is a stream of [`Message`]s read from a bounded channel. The other end of
//! that channel, a [`SubscriptionSink`], belongs to the task reading the subscription's QUIC
//! stream (see [`crate::subscription_stream`]); when the channel is full that task waits and
//! stops reading, so QUIC flow control pushes back on the broker, whose per-subscription queue
//! then applies the subscription's overflow policy. Nothing here buffers without bound.

use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use cassini_protocol::{ErrorCode, SubscribeOptions, SubscriptionId, TopicFilter};
use futures_util::Stream;
use tokio::sync::mpsc;

use crate::control::{ControlHandle, ControlRequest};
use crate::error::ClientError;
use crate::link::Link;
use crate::message::Message;

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
            SubscriptionEnd::ConnectionLost { reason } => write!(f, "connection lost: {reason}"),
            SubscriptionEnd::ProtocolError { reason } => write!(f, "protocol error: {reason}"),
        }
    }
}

impl SubscriptionEnd {
    /// How a subscription ends when `link`'s connection has ended.
    pub(crate) fn connection_ended(link: &Link) -> Self {
        match link.error() {
            ClientError::Closed => SubscriptionEnd::Closed,
            ClientError::Protocol { reason } => SubscriptionEnd::ProtocolError { reason },
            ClientError::ConnectionLost { reason } => SubscriptionEnd::ConnectionLost { reason },
            other => SubscriptionEnd::ConnectionLost {
                reason: other.to_string(),
            },
        }
    }
}

/// What the application's handle and the stream-reading task share.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionState {
    /// Sum of the broker's `Dropped` counts.
    dropped: AtomicU64,
    /// Set once, by the stream-reading task, before it drops its sender.
    end: OnceLock<SubscriptionEnd>,
    /// Set when this client asked the broker to end the subscription.
    unsubscribing: AtomicBool,
}

impl SubscriptionState {
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

    fn has_ended(&self) -> bool {
        self.end.get().is_some()
    }

    /// Why the subscription ended, once it has.
    pub(crate) fn end(&self) -> Option<SubscriptionEnd> {
        self.end.get().cloned()
    }
}

/// The sending end of a subscription's channel, with the state it shares with the handle.
#[derive(Debug)]
pub(crate) struct SubscriptionSink {
    /// Bounded: a full channel stops the stream reader, and flow control stops the broker.
    pub(crate) sender: mpsc::Sender<Message>,
    /// Where the reader records drops and the end.
    pub(crate) state: Arc<SubscriptionState>,
}

impl SubscriptionSink {
    /// Records why the subscription ended and closes the channel: the handle yields what is
    /// buffered, then `None`.
    pub(crate) fn finish(self, end: SubscriptionEnd) {
        let _ = self.state.end.set(end);
    }
}

/// A live subscription: a [`Stream`] of the messages the broker delivers to it.
///
/// Messages wait in a bounded buffer (`ClientBuilder::subscription_buffer`, default 1024); when
/// it is full the client stops reading this subscription's stream and the broker's overflow
/// policy for the subscription applies. Other subscriptions are not held up.
///
/// Dropping a `Subscription` ends it: the client stops its stream and sends `Unsubscribe` in the
/// background. Call [`Subscription::unsubscribe`] to wait for the broker's answer instead.
#[derive(Debug)]
pub struct Subscription {
    /// The broker-assigned id.
    id: SubscriptionId,
    /// The filter as subscribed.
    filter: TopicFilter,
    /// The options as subscribed.
    options: SubscribeOptions,
    /// Messages read from the stream, in order.
    messages: mpsc::Receiver<Message>,
    /// Shared with the stream-reading task.
    state: Arc<SubscriptionState>,
    /// For `Unsubscribe`, now or on drop.
    control: ControlHandle,
}

impl Subscription {
    pub(crate) fn new(
        id: SubscriptionId,
        filter: TopicFilter,
        options: SubscribeOptions,
        messages: mpsc::Receiver<Message>,
        state: Arc<SubscriptionState>,
        control: ControlHandle,
    ) -> Self {
        Self {
            id,
            filter,
            options,
            messages,
            state,
            control,
        }
    }

    /// The broker-assigned subscription id.
    pub fn id(&self) -> SubscriptionId {
        self.id
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

    /// How many messages the broker reported dropped for this subscription so far (the sum of
    /// its `Dropped` frames). A matching gap shows in [`Message::sequence`].
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// Why the subscription's stream ended, once it has; `None` while it is live.
    ///
    /// It is set as soon as the stream ends. Messages received before the end are still
    /// yielded, then the subscription yields `None`.
    pub fn end_reason(&self) -> Option<SubscriptionEnd> {
        self.state.end()
    }

    /// The next message, or `None` once the subscription has ended and every received message
    /// was yielded. The same as `StreamExt::next`, without importing the trait.
    pub async fn recv(&mut self) -> Option<Message> {
        self.messages.recv().await
    }

    /// Asks the broker to end the subscription and waits for its answer.
    ///
    /// Messages already received can still be read afterwards; then the subscription yields
    /// `None` with [`SubscriptionEnd::Unsubscribed`]. Calling it again does nothing. A
    /// subscription the broker already ended (e.g. [`SubscriptionEnd::SlowConsumer`]) is not an
    /// error.
    pub async fn unsubscribe(&mut self) -> Result<(), ClientError> {
        if self.state.start_unsubscribing() {
            return Ok(());
        }
        match self.control.unsubscribe(self.id).await {
            Err(ClientError::Request { code, .. })
                if code == ErrorCode::UNKNOWN_SUBSCRIPTION && self.state.has_ended() =>
            {
                Ok(())
            }
            other => other,
        }
    }
}

impl Stream for Subscription {
    type Item = Message;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.messages.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.state.start_unsubscribing() || self.state.has_ended() {
            return;
        }
        self.control
            .request_in_background(ControlRequest::Unsubscribe {
                subscription: self.id,
            });
    }
}
