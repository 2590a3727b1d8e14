//! The [`Client`]: one connection to a Cassini broker and everything done over it.
//!
//! `Client` is a cheap handle (clone it freely) over the parts that do the work: the control
//! stream tasks ([`crate::control`]), the publish lanes ([`crate::publish`]) and the subscription
//! streams ([`crate::subscription_stream`]). It starts those tasks when the handshake is done and
//! runs the goodbye in [`Client::close`].

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_protocol::{
    GoingAway, Headers, Limits, PublishRejected, SessionId, SubscribeOptions, TopicFilter,
};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::builder::{BrokerAddress, ClientBuilder};
use crate::control::{self, ControlHandle, PendingRequests};
use crate::disconnect::{connection_error, Phase};
use crate::error::ClientError;
use crate::handshake::Established;
use crate::inbox::Inbox;
use crate::link::Link;
use crate::message::Message;
use crate::payload::{self, CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE};
use crate::publish::{Publisher, PublisherSettings};
use crate::publish_options::PublishOptions;
use crate::registry::SubscriptionRegistry;
use crate::replies::PendingReplies;
use crate::responder::Responder;
use crate::subscription::{Subscription, SubscriptionSink, SubscriptionState};
use crate::subscription_stream::accept_streams;
use crate::sync::lock;

/// Publish rejections kept for [`Client::publish_errors`]; more are only logged.
const PUBLISH_ERRORS_CAPACITY: usize = 256;

/// What [`ClientError::Timeout`] says when a request got no reply in time.
const REPLY_TIMEOUT: &str = "waiting for a reply";

/// After the connection is closed, how long to wait for the endpoint to tell the broker.
const WAIT_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings the client keeps after connecting.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientSettings {
    /// Messages buffered per subscription.
    pub(crate) subscription_buffer: usize,
    /// Bound on each waiting step of `close`.
    pub(crate) close_timeout: Duration,
    /// Lane count and sizes.
    pub(crate) publisher: PublisherSettings,
}

/// A connection to a Cassini broker: publish, subscribe, request and serve, ping, close.
///
/// Cloning is cheap and every clone uses the same connection. Call [`Client::close`] when done:
/// it delivers everything already published before closing. Dropping the last clone without
/// `close` closes the connection at once, and messages still queued may be lost.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The local QUIC endpoint; waited on after closing so the broker hears of it.
    endpoint: quinn::Endpoint,
    /// The connection and its state.
    link: Arc<Link>,
    /// Requests on the control stream.
    control: ControlHandle,
    /// Publish lanes.
    publisher: Publisher,
    /// Where replies to this client's requests arrive.
    inbox: Inbox,
    /// The rejection queue, until the application takes it.
    publish_errors: Mutex<Option<mpsc::Receiver<PublishRejected>>>,
    /// Settings from the builder.
    settings: ClientSettings,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.link.start_closing() {
            self.link
                .connection()
                .close(0u32.into(), b"client dropped without close()");
        }
    }
}

impl Client {
    /// Starts configuring a client for the broker at `address` (`"host:port"`, `"ip:port"` or a
    /// [`SocketAddr`]).
    pub fn builder(address: impl Into<BrokerAddress>) -> ClientBuilder {
        ClientBuilder::new(address.into())
    }

    /// Starts the tasks that serve an established session.
    pub(crate) fn start(
        endpoint: quinn::Endpoint,
        established: Established,
        settings: ClientSettings,
    ) -> Self {
        let Established {
            connection,
            control_send,
            control_reader,
            welcome,
        } = established;
        let link = Arc::new(Link::new(connection, welcome));
        let pending = Arc::new(PendingRequests::default());
        let registry = Arc::new(SubscriptionRegistry::default());
        let (commands, command_queue) = mpsc::channel(control::COMMAND_QUEUE);
        let control = ControlHandle::new(commands, Arc::clone(&link));
        tokio::spawn(control::run_writer(
            control_send,
            command_queue,
            Arc::clone(&pending),
            Arc::clone(&link),
        ));
        tokio::spawn(control::run_reader(
            control_reader,
            pending,
            Arc::clone(&registry),
            control.downgrade(),
        ));
        tokio::spawn(accept_streams(Arc::clone(&link), registry));
        let (rejections, publish_errors) = mpsc::channel(PUBLISH_ERRORS_CAPACITY);
        let replies = Arc::new(PendingReplies::default());
        let publisher = Publisher::new(
            Arc::clone(&link),
            settings.publisher,
            rejections,
            Arc::clone(&replies),
        );
        let inbox = Inbox::new(Arc::clone(&link), replies);
        tracing::info!(
            session = %link.welcome().session_id,
            identity = %link.welcome().identity,
            "connected to the broker"
        );
        Self {
            inner: Arc::new(Inner {
                endpoint,
                link,
                control,
                publisher,
                inbox,
                publish_errors: Mutex::new(Some(publish_errors)),
                settings,
            }),
        }
    }

    /// Publishes `payload` to `topic`.
    ///
    /// The topic and payload size are checked against the broker's limits first
    /// ([`ClientError::InvalidTopic`], [`ClientError::PayloadTooLarge`]). Returns once the
    /// message is queued on the topic's publish stream; it waits while that queue is full.
    /// Messages to one topic reach the broker in the order they were published. A publish the
    /// broker refuses anyway is reported through [`Client::publish_errors`] and the log.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), ClientError> {
        self.publish_with(topic, payload, PublishOptions::default())
            .await
    }

    /// Publishes `payload` with `headers` to `topic`; see [`Client::publish`].
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        headers: Headers,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.publish_with(topic, payload, PublishOptions::new().headers(headers))
            .await
    }

    /// Publishes `payload` to `topic` with `options`: headers, a message id, retention, a reply
    /// topic. See [`Client::publish`]; an invalid `reply_to` is
    /// [`ClientError::InvalidReplyTo`]. Messages to one topic keep their order whatever their
    /// options.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<(), ClientError> {
        self.inner
            .publisher
            .publish(topic, payload.into(), options, None)
            .await
    }

    /// Publishes `payload` to `topic` and makes it the topic's retained value, which the broker
    /// replays to every new subscription matching `topic` (queue-group members excepted). An
    /// empty payload clears the retained value. See [`PublishOptions::retain`].
    pub async fn publish_retained(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.publish_with(topic, payload, PublishOptions::new().retain(true))
            .await
    }

    /// Sends `payload` to `topic` for one session only: the broker delivers it to those of
    /// `session`'s subscriptions that match `topic`, and to nobody else. Learn a peer's session
    /// from its [`Client::session_id`] (exchanged by the application).
    pub async fn send_to(
        &self,
        session: SessionId,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.inner
            .publisher
            .publish(
                topic,
                payload.into(),
                PublishOptions::default(),
                Some(session),
            )
            .await
    }

    /// Publishes `value` as JSON to `topic`, with the header `content-type: application/json`
    /// ([`crate::JSON_CONTENT_TYPE`]). A value serde_json cannot write is
    /// [`ClientError::Payload`]; otherwise see [`Client::publish`]. Read it back with
    /// [`Message::decode_json`].
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        let payload = payload::encode_json(value)?;
        let options = PublishOptions::new().header(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE);
        self.publish_with(topic, payload, options).await
    }

    /// Publishes `value` as MessagePack to `topic` (structs as maps with field names), with the
    /// header `content-type: application/msgpack` ([`crate::MSGPACK_CONTENT_TYPE`]). A value
    /// that cannot be written is [`ClientError::Payload`]; otherwise see [`Client::publish`].
    /// Read it back with [`Message::decode_msgpack`].
    pub async fn publish_msgpack<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        let payload = payload::encode_msgpack(value)?;
        let options = PublishOptions::new().header(CONTENT_TYPE_HEADER, MSGPACK_CONTENT_TYPE);
        self.publish_with(topic, payload, options).await
    }

    /// Subscribes to `filter` (wildcards `*` and `>` allowed) with the broker's default options.
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription, ClientError> {
        self.subscribe_with(filter, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `filter` as a member of the queue group `group`: each message matching the
    /// filter goes to one member of the group (the subscriptions with the same filter and group
    /// name, across all clients), round-robin, instead of to every member. Retained values are
    /// not replayed to queue-group members. The broker refuses a group name it does not accept
    /// ([`ClientError::Request`]).
    pub async fn subscribe_queue(
        &self,
        filter: &str,
        group: &str,
    ) -> Result<Subscription, ClientError> {
        let options = SubscribeOptions {
            queue_group: Some(group.to_owned()),
            ..SubscribeOptions::default()
        };
        self.subscribe_with(filter, options).await
    }

    /// Subscribes to `filter` with `options` (overflow policy and queue bounds on the broker,
    /// queue group).
    ///
    /// The filter is checked against the broker's limits first ([`ClientError::InvalidFilter`]);
    /// a refusal by the broker is [`ClientError::Request`].
    pub async fn subscribe_with(
        &self,
        filter: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, ClientError> {
        let link = &self.inner.link;
        if link.is_closing() {
            return Err(ClientError::Closed);
        }
        let filter =
            TopicFilter::parse(filter, &link.topic_limits()).map_err(ClientError::InvalidFilter)?;
        let (sender, messages) = mpsc::channel(self.inner.settings.subscription_buffer);
        let state = Arc::new(SubscriptionState::default());
        let sink = SubscriptionSink {
            sender,
            state: Arc::clone(&state),
        };
        let control = &self.inner.control;
        let id = control
            .subscribe(filter.as_str().to_owned(), options.clone(), sink)
            .await?;
        Ok(Subscription::new(
            id,
            filter,
            options,
            messages,
            state,
            control.clone(),
        ))
    }

    /// Publishes `payload` to `topic` as a request and waits up to `timeout` for the first
    /// reply.
    ///
    /// The first request subscribes this client to its inbox, `_INBOX.<16 random hex digits>.>`
    /// (one subscription per client, counted against the broker's `max_subscriptions`; made
    /// again under a new random name if the broker ends it); each request asks for its reply on
    /// its own topic under it. Fails with [`ClientError::NoResponders`] as soon as the broker
    /// says no subscription matched `topic`, with `ClientError::Timeout("waiting for a reply")`
    /// if no reply came in time (the timeout covers subscribing and publishing too), with
    /// [`ClientError::InboxEnded`] if the inbox subscription ended while the request waited,
    /// and otherwise as [`Client::publish`] does. A reply that arrives after the timeout, or
    /// after the first reply, is dropped.
    pub async fn request(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        self.request_with(topic, payload, PublishOptions::default(), timeout)
            .await
    }

    /// [`Client::request`] with `options` (headers, message id); its `reply_to` is replaced by
    /// the request's own reply topic.
    pub async fn request_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        options: PublishOptions,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        let inner = &self.inner;
        let payload = payload.into();
        let exchange = async {
            let mut pending = inner.inbox.register(self, topic).await?;
            let options = PublishOptions {
                reply_to: Some(pending.reply_to().to_owned()),
                ..options
            };
            inner
                .publisher
                .publish(topic, payload, options, None)
                .await?;
            pending
                .outcome()
                .await
                .unwrap_or_else(|| Err(inner.link.error()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout(REPLY_TIMEOUT)))
    }

    /// Serves requests published to `filter`: every subscriber gets every request, so with
    /// several responders the requester takes the first reply. See [`Client::serve_queue`] to
    /// share the load instead.
    pub async fn serve(&self, filter: &str) -> Result<Responder, ClientError> {
        let subscription = self.subscribe(filter).await?;
        Ok(Responder::new(subscription, self.clone()))
    }

    /// Serves requests published to `filter` as a member of the queue group `group`: each
    /// request goes to one of the responders sharing the filter and group name. See
    /// [`Client::subscribe_queue`].
    pub async fn serve_queue(&self, filter: &str, group: &str) -> Result<Responder, ClientError> {
        let subscription = self.subscribe_queue(filter, group).await?;
        Ok(Responder::new(subscription, self.clone()))
    }

    /// Measures one round trip on the control stream (queued behind other control requests).
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let started = Instant::now();
        self.inner.control.ping().await?;
        Ok(started.elapsed())
    }

    /// Takes the queue of publishes the broker rejected (invalid topic, payload too large). The
    /// first call returns it, later calls `None`. It holds the latest 256 rejections not yet
    /// read; every rejection is also logged at warn level.
    pub fn publish_errors(&self) -> Option<mpsc::Receiver<PublishRejected>> {
        lock(&self.inner.publish_errors).take()
    }

    /// The session the broker attached this connection to.
    pub fn session_id(&self) -> SessionId {
        self.inner.link.welcome().session_id
    }

    /// The identity the broker read from this client's certificate.
    pub fn identity(&self) -> &str {
        &self.inner.link.welcome().identity
    }

    /// The limits the broker enforces on this connection.
    pub fn limits(&self) -> Limits {
        self.inner.link.limits()
    }

    /// The broker's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.link.connection().remote_address()
    }

    /// QUIC's current estimate of the round-trip time; free, unlike [`Client::ping`].
    pub fn rtt(&self) -> Duration {
        self.inner.link.connection().rtt()
    }

    /// The broker's latest `GoingAway` notice, if it sent one: it is shutting down.
    pub fn going_away(&self) -> Option<GoingAway> {
        self.inner.link.going_away()
    }

    /// Whether the client was closed or its connection ended.
    pub fn is_closed(&self) -> bool {
        self.inner.link.is_closing() || self.inner.link.connection().close_reason().is_some()
    }

    /// Says goodbye without losing published messages, then closes the connection.
    ///
    /// In order: closes every publish stream and waits until the broker has acknowledged all
    /// of them; finishes the control stream (the goodbye: the broker reads the publish streams
    /// to their end and closes the connection); waits for the broker's close; waits for the
    /// endpoint to be idle. Each wait is bounded by `close_timeout`. Afterwards every operation
    /// fails with [`ClientError::Closed`] and every subscription ends with
    /// [`crate::SubscriptionEnd::Closed`]. Returns an error if the connection had already failed
    /// (messages may have been lost) or the broker did not acknowledge the publish streams in
    /// time. Calling it again only waits for the connection to be closed.
    pub async fn close(&self) -> Result<(), ClientError> {
        let inner = &self.inner;
        let connection = inner.link.connection();
        let close_timeout = inner.settings.close_timeout;
        if inner.link.start_closing() {
            let _ = timeout(close_timeout, connection.closed()).await;
            return Ok(());
        }
        let failed_before = connection.close_reason();
        let drained = inner.publisher.close().await;
        let mut closed_by_broker = None;
        if failed_before.is_none() {
            if let Err(error) = inner.control.goodbye().await {
                tracing::debug!(%error, "goodbye not sent");
            }
            match timeout(close_timeout, connection.closed()).await {
                Ok(reason) => closed_by_broker = Some(reason),
                Err(_) => tracing::warn!(
                    timeout = ?close_timeout,
                    "the broker did not close the connection after goodbye; closing it"
                ),
            }
        }
        connection.close(0u32.into(), b"goodbye");
        if timeout(WAIT_IDLE_TIMEOUT, inner.endpoint.wait_idle())
            .await
            .is_err()
        {
            tracing::debug!("endpoint not idle in time after close");
        }
        for reason in [failed_before, closed_by_broker].into_iter().flatten() {
            match connection_error(&reason, Phase::Established) {
                ClientError::Closed => {}
                error => return Err(error),
            }
        }
        drained
    }
}
