//! The [`Client`]: one session with a Cassini broker, over one connection at a time, and
//! everything done over it.
//!
//! `Client` is a cheap handle (clone it freely) over the [`SessionCore`], which holds the current
//! connection's parts (the control stream tasks in [`crate::connect::control::handle`], the publish
//! lanes in [`crate::publish::publisher`], the subscription streams in
//! [`crate::subscribe::incoming`]) and what outlives a connection. The first connection is made by
//! the builder; the task in [`crate::connect::supervisor`] makes the next ones. The goodbye in
//! [`Client::close`] is in `close`.

mod close;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_protocol::{
    AckOptions, DeliveryClass, GoingAway, Headers, Limits, OversizeRule, PublishRejected,
    SessionId, SubscribeOptions, TopicName,
};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::connect::attachment::AttachmentContext;
use crate::connect::cluster_addresses::ClusterAddresses;
use crate::connect::connection_state::{ConnectionState, DisconnectReason};
use crate::connect::connector::{Connector, Established};
use crate::connect::liveness::Liveness;
use crate::connect::reconnect_policy::ReconnectPolicy;
use crate::connect::session::SessionCore;
use crate::connect::supervisor::supervise;
use crate::error::{ClientError, ConnectionError, PublishError, RequestError, SubscribeError};
use crate::message::Message;
use crate::payload::{self, CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE};
use crate::publish::options::PublishOptions;
use crate::publish::outbound::{OutboundBuffer, OutboundStats};
use crate::publish::publisher::PublisherSettings;
use crate::publish::receipt::{PendingAcks, PublishReceipt};
use crate::request::inbox::Inbox;
use crate::request::replies::PendingReplies;
use crate::subscribe::subscription::Subscription;
use crate::sync::lock;

/// Publish rejections kept for [`Client::publish_errors`]; more are only logged.
const PUBLISH_ERRORS_CAPACITY: usize = 256;

/// Settings the client keeps after connecting.
#[derive(Debug, Clone)]
pub(crate) struct ClientSettings {
    /// Messages buffered per subscription.
    pub(crate) subscription_buffer: usize,
    /// Bound on each waiting step of `close`.
    pub(crate) close_timeout: Duration,
    /// Lane count and sizes.
    pub(crate) publisher: PublisherSettings,
    /// Whether and how to reconnect.
    pub(crate) reconnect: ReconnectPolicy,
    /// How a broker that stopped answering is noticed.
    pub(crate) liveness: Liveness,
    /// Publishes kept while reconnecting.
    pub(crate) outbound: OutboundBuffer,
    /// How long an acknowledged publish waits for its acknowledgement by default.
    pub(crate) ack_timeout: Duration,
    /// Most acknowledged publishes waiting at once.
    pub(crate) max_unacked_publishes: usize,
    /// Wraps every UDP socket the client uses.
    pub(crate) socket_layer: Option<cassini_quic::endpoint::SocketLayer>,
}

/// A session with a Cassini broker: publish, subscribe, request and serve, ping, close.
///
/// Cloning is cheap and every clone uses the same session. Call [`Client::close`] when done:
/// it delivers everything already published before closing. Dropping the last clone without
/// `close` closes the connection at once, and messages still queued may be lost.
///
/// # Reconnecting
///
/// When the connection is lost without a goodbye, the client reconnects by itself (see
/// [`ReconnectPolicy`]) and resumes its session: every [`Subscription`] continues with the
/// messages the broker queued meanwhile, in order, and [`Client::state_changes`] reports each
/// step. While the connection is down:
///
/// - [`Client::publish`] (and every other publish but [`Client::publish_datagram`], which
///   fails with [`ConnectionError::Disconnected`]) puts the message in a bounded outbound
///   buffer ([`OutboundBuffer`]) and returns; the buffer is sent first, in order, after the
///   reconnect. When the buffer is full it fails with [`PublishError::OutboundBufferFull`];
///   with the buffer disabled, with [`ConnectionError::Disconnected`].
/// - [`Client::subscribe`], [`Subscription::unsubscribe`] and [`Client::ping`] fail at once
///   with a `Disconnected` error ([`ConnectionError::Disconnected`] inside a
///   [`SubscribeError`], [`ClientError::Disconnected`] for the other two): they do not wait for
///   the reconnect. Try again when the state is [`ConnectionState::Connected`].
/// - [`Client::request`] waits for its reply up to its timeout (the request is buffered like
///   any publish) if the client has made a request before; a first request fails with
///   [`ConnectionError::Disconnected`] (in [`RequestError::Inbox`]), since it must subscribe
///   to its reply inbox.
/// - A request in flight when the connection dropped keeps waiting: its reply inbox is part
///   of the session, so a reply the broker queued meanwhile arrives after the resume;
///   otherwise it ends with [`RequestError::Timeout`]. Control requests in flight
///   (subscribe, unsubscribe, ping) fail with [`ConnectionError::ConnectionLost`]; they may
///   or may not have reached the broker.
///
/// Each operation's error holds a [`ConnectionError`] when the connection is at fault
/// ([`PublishError::Connection`], [`SubscribeError::Connection`],
/// [`RequestError::Connection`]); `?` turns any of them into the [`ClientError`] of the same
/// name.
///
/// The client does not reconnect after [`Client::close`], when another connection with the same
/// certificate identity took the session over (`SESSION_TAKEN_OVER`), when the broker or TLS
/// refused it in a way that would repeat (a certificate, the protocol version, a protocol
/// error), or when [`ReconnectPolicy::give_up_after`] has passed: it then reports
/// [`ConnectionState::Disconnected`], ends every subscription and fails every operation.
///
/// If the broker had forgotten the session by the time the client got back (it expired after
/// the broker's `sessions.expiry`), the client starts a new session and subscribes again to
/// every live subscription; each reports a [`crate::Gap::SessionLost`], since messages
/// published in between are lost.
///
/// Each attempt tries the addresses the client was given, in order, then the cluster's client
/// addresses it learned from its brokers' `Welcome` ([`Client::cluster_addresses`]); a
/// reconnect tries the address that answered last first (to keep the session) and, with
/// several addresses, passes over one where nothing listens at once, and notices a silent
/// broker by pings ([`Liveness`](crate::Liveness)). So a client of a cluster node that dies
/// reconnects to another node: a session stays on its node, so there it gets a new session and
/// every subscription a [`crate::Gap::SessionLost`].
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// The local QUIC endpoint; closed and waited on after closing so the broker hears of it.
    endpoint: quinn::Endpoint,
    /// The session across connections.
    core: Arc<SessionCore>,
    /// The identity the broker read from the certificate: the same on every connection.
    identity: String,
    /// Where replies to this client's requests arrive.
    inbox: Inbox,
    /// The rejection queue, until the application takes it.
    publish_errors: Mutex<Option<mpsc::Receiver<PublishRejected>>>,
    /// Settings from the builder.
    settings: ClientSettings,
    /// The cluster's client addresses learned from `Welcome`.
    cluster: ClusterAddresses,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if !self.core.start_closing() {
            self.core.stop_token().cancel();
            self.endpoint
                .close(0u32.into(), b"client dropped without close()");
            self.core
                .end(ConnectionError::Closed, DisconnectReason::Closed);
        }
    }
}

impl Client {
    /// Starts serving an established session, and the task that reconnects it.
    pub(crate) fn start(
        connector: Connector,
        established: Established,
        settings: ClientSettings,
    ) -> Self {
        let identity = established.welcome.identity.clone();
        let (rejections, publish_errors) = mpsc::channel(PUBLISH_ERRORS_CAPACITY);
        let replies = Arc::new(PendingReplies::default());
        let context = AttachmentContext {
            registry: Arc::default(),
            closing: Arc::default(),
            rejections,
            replies: Arc::clone(&replies),
            acks: Arc::new(PendingAcks::new(settings.max_unacked_publishes)),
            publisher: settings.publisher,
        };
        context.registry.offer(&established.welcome.subscriptions);
        let (core, attachment) =
            SessionCore::start(established, context, settings.reconnect, settings.outbound);
        tracing::info!(
            session = %attachment.link.welcome().session_id,
            %identity,
            "connected to the broker"
        );
        let endpoint = connector.endpoint.clone();
        let cluster = connector.cluster.clone();
        tokio::spawn(supervise(
            Arc::clone(&core),
            connector,
            attachment,
            settings.liveness,
        ));
        let inbox = Inbox::new(
            Arc::clone(&core),
            replies,
            identity.clone(),
            settings.subscription_buffer,
        );
        Self {
            inner: Arc::new(Inner {
                endpoint,
                core,
                identity,
                inbox,
                publish_errors: Mutex::new(Some(publish_errors)),
                settings,
                cluster,
            }),
        }
    }

    /// Publishes `payload` to `topic`.
    ///
    /// The topic and payload size are checked against the broker's limits first
    /// ([`PublishError::InvalidTopic`], [`PublishError::PayloadTooLarge`]). Returns once the message
    /// is queued on the topic's publish stream; it waits while that queue is full. While the client
    /// is reconnecting, the message goes to the outbound buffer instead ([`OutboundBuffer`]; a full
    /// buffer is [`PublishError::OutboundBufferFull`]). Messages to one topic reach the broker in
    /// the order they were published, across reconnects too; messages still queued on a connection
    /// when it drops are lost (delivery is at most once; [`Client::publish_acked`] delivers at
    /// least once). A publish the broker refuses anyway is reported through
    /// [`Client::publish_errors`] and the log.
    pub async fn publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        self.publish_with(topic, payload, PublishOptions::default())
            .await
    }

    /// Publishes `payload` with `headers` to `topic`; see [`Client::publish`].
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        headers: Headers,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        self.publish_with(topic, payload, PublishOptions::new().headers(headers))
            .await
    }

    /// Publishes `payload` to `topic` with `options`: headers, a message id, retention, a reply
    /// topic. See [`Client::publish`]; an invalid `reply_to` is
    /// [`PublishError::InvalidReplyTo`]. Messages to one topic keep their order whatever their
    /// options. With [`PublishOptions::ack`] this is [`Client::publish_acked_with`] without
    /// the receipt: it returns once the broker acknowledged the message.
    pub async fn publish_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<(), PublishError> {
        if options.ack {
            // Boxed: the acknowledged path's future would otherwise make every publish's
            // future (which an application may move, box or spawn) larger.
            return Box::pin(self.publish_acked_with(topic, payload, options))
                .await
                .map(|_| ());
        }
        self.inner
            .core
            .publish(topic, payload.into(), options, None)
            .await
    }

    /// Publishes `payload` to `topic` and waits until the broker acknowledges it: it was routed
    /// to every matching subscription's queue. Delivery is at least once across reconnects.
    ///
    /// The message gets a message id from this client (a random per-client base plus a
    /// counter: never repeated by this client, and unlikely to collide with another client of
    /// the same certificate identity). If the connection drops before the acknowledgement, the
    /// message is sent again, with the same id, after the reconnect, ahead of the outbound
    /// buffer and in publishing order; a copy the broker had accepted already is acknowledged
    /// with [`PublishReceipt::duplicate`] set and not routed again (the broker remembers ids
    /// for its dedupe window, 120 s by default). Publishing while reconnecting goes through the
    /// outbound buffer like [`Client::publish`].
    ///
    /// Fails with [`PublishError::Rejected`] (carrying the broker's code) when the broker
    /// refuses the message, and with [`PublishError::AckTimeout`] when no
    /// answer came within [`crate::ClientBuilder::ack_timeout`] (60 s by default): **after a
    /// timeout the message may or may not have been delivered**, and it is no longer sent again. At
    /// most [`crate::ClientBuilder::max_unacked_publishes`] acknowledged publishes wait at once
    /// (1024 by default); more wait for a free slot, and that wait counts towards the timeout.
    /// Otherwise it fails as [`Client::publish`] does, and with the client's error when the client
    /// ends. Cancelling the call (dropping the future) stops the re-sending too.
    pub async fn publish_acked(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PublishReceipt, PublishError> {
        self.publish_acked_with(topic, payload, PublishOptions::new())
            .await
    }

    /// [`Client::publish_acked`] with `options` (headers, message id, retention, reply topic);
    /// [`PublishOptions::ack`] is implied. A message id given in `options` is used as is: reuse
    /// one only to send the same message again, since the broker drops a repeated id within its
    /// dedupe window. An id another acknowledged publish of this client still waits with is
    /// [`PublishError::MessageIdInFlight`].
    pub async fn publish_acked_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        options: PublishOptions,
    ) -> Result<PublishReceipt, PublishError> {
        let timeout = self.inner.settings.ack_timeout;
        self.publish_acked_with_timeout(topic, payload, options, timeout)
            .await
    }

    /// [`Client::publish_acked_with`], waiting up to `timeout` instead of the builder's
    /// [`crate::ClientBuilder::ack_timeout`].
    pub async fn publish_acked_with_timeout(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        options: PublishOptions,
        timeout: Duration,
    ) -> Result<PublishReceipt, PublishError> {
        let publish = self
            .inner
            .core
            .publish_acked(topic, payload.into(), options, None);
        tokio::time::timeout(timeout, publish)
            .await
            .unwrap_or(Err(PublishError::AckTimeout))
    }

    /// Publishes `payload` to `topic` and makes it the topic's retained value, which the broker
    /// replays to every new subscription matching `topic` (queue-group members excepted). An
    /// empty payload clears the retained value. See [`PublishOptions::retain`].
    pub async fn publish_retained(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        self.publish_with(topic, payload, PublishOptions::new().retain(true))
            .await
    }

    /// Sends `payload` to `topic` for one session only: the broker delivers it to those of
    /// `session`'s subscriptions that match `topic`, and to nobody else. Learn a peer's session
    /// from its [`Client::session_id`] (exchanged by the application; it changes if the peer's
    /// session was lost).
    pub async fn send_to(
        &self,
        session: SessionId,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        self.inner
            .core
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
    /// [`PublishError::Payload`]; otherwise see [`Client::publish`]. Read it back with
    /// [`Message::decode_json`].
    pub async fn publish_json<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        let payload = payload::encode_json(value)?;
        let options = PublishOptions::new().header(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE);
        self.publish_with(topic, payload, options).await
    }

    /// Publishes `value` as MessagePack to `topic` (structs as maps with field names), with the
    /// header `content-type: application/msgpack` ([`crate::MSGPACK_CONTENT_TYPE`]). A value
    /// that cannot be written is [`PublishError::Payload`]; otherwise see [`Client::publish`].
    /// Read it back with [`Message::decode_msgpack`].
    pub async fn publish_msgpack<T: Serialize + ?Sized>(
        &self,
        topic: &str,
        value: &T,
    ) -> Result<(), PublishError> {
        let payload = payload::encode_msgpack(value)?;
        let options = PublishOptions::new().header(CONTENT_TYPE_HEADER, MSGPACK_CONTENT_TYPE);
        self.publish_with(topic, payload, options).await
    }

    /// Subscribes to `filter` (wildcards `*` and `>` allowed) with the broker's default options.
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription, SubscribeError> {
        self.subscribe_with(filter, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `filter` as a member of the queue group `group`: each message matching the
    /// filter goes to one member of the group (the subscriptions with the same filter and group
    /// name, across all clients), round-robin, instead of to every member. Retained values are
    /// not replayed to queue-group members. The broker refuses a group name it does not accept
    /// ([`SubscribeError::Refused`]).
    pub async fn subscribe_queue(
        &self,
        filter: &str,
        group: &str,
    ) -> Result<Subscription, SubscribeError> {
        let options = SubscribeOptions {
            queue_group: Some(group.to_owned()),
            ..SubscribeOptions::default()
        };
        self.subscribe_with(filter, options).await
    }

    /// Subscribes to `filter` at least once, with the broker's default in-flight window and
    /// ack timeout: the broker keeps each message until this client acknowledges it and sends
    /// it again after a lost connection or the ack timeout. A message is acknowledged when the
    /// application asks the [`Subscription`] for the next one; redeliveries of a message the
    /// subscription already yielded are not yielded again. See `docs/SESSIONS.md`.
    pub async fn subscribe_at_least_once(
        &self,
        filter: &str,
    ) -> Result<Subscription, SubscribeError> {
        let options = SubscribeOptions {
            acks: Some(AckOptions::default()),
            ..SubscribeOptions::default()
        };
        self.subscribe_with(filter, options).await
    }

    /// Subscribes to `filter` with deliveries as QUIC datagrams: never retransmitted, so a lost
    /// packet holds nothing up; the newest data arrives first. Losses show in
    /// [`Subscription::lost`]. A message larger than one datagram is dropped (and counted);
    /// use [`Client::subscribe_with`] and [`cassini_protocol::OversizeRule::Stream`] to have it
    /// sent on the subscription's stream instead. A broker or connection without datagrams
    /// refuses it with `DATAGRAMS_UNSUPPORTED`.
    pub async fn subscribe_datagram(&self, filter: &str) -> Result<Subscription, SubscribeError> {
        let options = SubscribeOptions {
            delivery: DeliveryClass::Datagram {
                oversize: OversizeRule::Drop,
            },
            ..SubscribeOptions::default()
        };
        self.subscribe_with(filter, options).await
    }

    /// Publishes `payload` to `topic` in one QUIC datagram: fire and forget, never
    /// retransmitted, no acknowledgement, no error if the broker refuses it. Fails at once with
    /// [`PublishError::InvalidTopic`] if `topic` is not a valid topic name (the same check as
    /// [`Client::publish`]), with [`PublishError::PayloadTooLarge`] if the publish does not fit
    /// in one datagram, and with
    /// [`ConnectionError::Disconnected`] while reconnecting.
    pub async fn publish_datagram(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<(), PublishError> {
        let core = &self.inner.core;
        if core.is_closing() {
            return Err(ConnectionError::Closed.into());
        }
        let link = core.attachment().link.clone();
        let topic =
            TopicName::parse(topic, &link.topic_limits()).map_err(PublishError::InvalidTopic)?;
        let publish = cassini_protocol::Frame::Publish(cassini_protocol::Publish {
            topic: topic.as_str().to_owned(),
            payload: payload.into(),
            ..cassini_protocol::Publish::default()
        });
        let datagram = crate::connect::framed::encode(&publish, link.max_frame_bytes())?;
        let max = link.connection().max_datagram_size().unwrap_or(0);
        if datagram.len() > max {
            return Err(PublishError::PayloadTooLarge {
                size: datagram.len(),
                max: u32::try_from(max).unwrap_or(u32::MAX),
            });
        }
        link.connection()
            .send_datagram(datagram.freeze())
            .map_err(|error| {
                ConnectionError::Disconnected {
                    reason: error.to_string(),
                }
                .into()
            })
    }

    /// Subscribes to `filter` with `options` (overflow policy and queue bounds on the broker,
    /// queue group, at-least-once delivery).
    ///
    /// The filter is checked against the broker's limits first ([`SubscribeError::InvalidFilter`]);
    /// a refusal by the broker is [`SubscribeError::Refused`]. While the client is reconnecting it
    /// fails with [`ConnectionError::Disconnected`].
    ///
    /// In a resumed session that holds a subscription this client does not know yet (see
    /// [`Client::unclaimed_subscriptions`]) with the same filter and options, this takes that
    /// subscription up instead of making a new one: its stored messages (an at-least-once
    /// backlog) follow.
    pub async fn subscribe_with(
        &self,
        filter: &str,
        options: SubscribeOptions,
    ) -> Result<Subscription, SubscribeError> {
        let buffer = self.inner.settings.subscription_buffer;
        Subscription::open(&self.inner.core, buffer, filter, options).await
    }

    /// Publishes `payload` to `topic` as a request and waits up to `timeout` for the first
    /// reply.
    ///
    /// The first request subscribes this client to its inbox,
    /// `_INBOX.<identity token>.<16 random hex digits>.>` (see `docs/PROTOCOL.md`)
    /// (one subscription per client, counted against the broker's `max_subscriptions`; made
    /// again under a new random name if the broker ends it); each request asks for its reply on
    /// its own topic under it. Fails with [`RequestError::NoResponders`] as soon as the broker
    /// says no subscription matched `topic`, with [`RequestError::Timeout`]
    /// if no reply came in time (the timeout covers subscribing and publishing too), with
    /// [`RequestError::InboxEnded`] if the inbox subscription ended while the request waited,
    /// and otherwise as [`Client::publish`] does. A reply that arrives after the timeout, or
    /// after the first reply, is dropped. While the client is reconnecting, see the
    /// [`Client`] documentation.
    pub async fn request(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        self.request_with(topic, payload, PublishOptions::default(), timeout)
            .await
    }

    /// [`Client::request`] with `options` (headers, message id); its `reply_to` is replaced by
    /// the request's own reply topic. With [`PublishOptions::ack`] the request is published as
    /// [`Client::publish_acked`] publishes (sent again after a reconnect until acknowledged)
    /// before the reply is awaited, all within `timeout`.
    pub async fn request_with(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        options: PublishOptions,
        timeout: Duration,
    ) -> Result<Message, RequestError> {
        let inner = &self.inner;
        let payload = payload.into();
        let exchange = async {
            let mut pending = inner.inbox.register(topic).await?;
            let options = PublishOptions {
                reply_to: Some(pending.reply_to().to_owned()),
                ..options
            };
            if options.ack {
                inner
                    .core
                    .publish_acked(topic, payload, options, None)
                    .await?;
            } else {
                inner.core.publish(topic, payload, options, None).await?;
            }
            pending
                .outcome()
                .await
                .unwrap_or_else(|| Err(inner.core.error().into()))
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout))
    }

    /// A barrier: returns once the broker has read and processed every publish this client
    /// made before the call, at most once or acknowledged (a refusal among them is then in
    /// [`Client::publish_errors`], except an acknowledged publish's, which its caller gets
    /// as [`PublishError::Rejected`]). As NATS's `flush`, for a program about to exit or to hand
    /// off. Each topic's publish stream is finished and a new one opened by the next publish,
    /// so call it at such points, not after every publish. Bounded by `close_timeout`
    /// ([`ClientError::Timeout`]); while reconnecting it fails at once with
    /// [`ClientError::Disconnected`] (the outbound buffer is sent after the reconnect), and if
    /// the connection drops meanwhile it fails with that error.
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.inner.core.control()?;
        let attachment = self.inner.core.attachment();
        attachment.publisher.flush().await
    }

    /// Measures one round trip on the control stream (queued behind other control requests).
    /// While the client is reconnecting it fails with [`ClientError::Disconnected`].
    pub async fn ping(&self) -> Result<Duration, ClientError> {
        let control = self.inner.core.control()?;
        let started = Instant::now();
        control.ping().await?;
        Ok(started.elapsed())
    }

    /// Takes the queue of publishes the broker rejected (invalid topic, payload too large). The
    /// first call returns it, later calls `None`. It holds up to 256 rejections not yet read;
    /// while it is full, later ones are only logged. Every rejection is logged at warn level.
    /// An acknowledged publish's rejection goes to its caller instead
    /// ([`PublishError::Rejected`]).
    pub fn publish_errors(&self) -> Option<mpsc::Receiver<PublishRejected>> {
        lock(&self.inner.publish_errors).take()
    }

    /// The session the broker attached this connection to. It changes when the broker had
    /// forgotten the session by the time the client reconnected.
    pub fn session_id(&self) -> SessionId {
        self.inner.core.session_id()
    }

    /// The resumed session's subscriptions this client has not taken up yet (a new process
    /// that resumed its session with [`crate::ClientBuilder::resume_session`] or
    /// [`crate::ClientBuilder::session_name`]): id, filter and options. Subscribing with the same
    /// filter and options takes one up ([`Client::subscribe_with`]); until then the broker
    /// keeps its messages under its overflow policy. Empty on a new session.
    pub fn unclaimed_subscriptions(&self) -> Vec<crate::SessionSubscription> {
        self.inner.core.registry().adoptable()
    }

    /// Moves the client to a new local UDP socket bound to `addr` (port 0 for any free port),
    /// as happens when a device changes network. QUIC migrates the connection to the new
    /// address: nothing is resumed or sent again, and no message is lost. Returns the new local
    /// address.
    pub fn rebind(&self, addr: SocketAddr) -> Result<SocketAddr, ClientError> {
        let failed = |action: &'static str| {
            move |error| {
                ClientError::from(cassini_quic::endpoint::EndpointError::Socket {
                    action,
                    addr,
                    error,
                })
            }
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(failed("binding"))?;
        let local = socket
            .local_addr()
            .map_err(failed("reading the address of"))?;
        cassini_quic::endpoint::rebind_layered(
            &self.inner.endpoint,
            socket,
            self.inner.settings.socket_layer.as_ref(),
        )
        .map_err(failed("moving the connection to"))?;
        tracing::info!(%local, "client moved to a new UDP socket");
        Ok(local)
    }

    /// The identity the broker read from this client's certificate.
    pub fn identity(&self) -> &str {
        &self.inner.identity
    }

    /// The client addresses of the cluster's nodes this client learned from its brokers'
    /// `Welcome` (empty from a standalone broker), oldest first: after the addresses it was
    /// given, each connection attempt tries these.
    pub fn cluster_addresses(&self) -> Vec<String> {
        self.inner.cluster.learned()
    }

    /// The limits the broker enforces on the current (or, while reconnecting, the last)
    /// connection.
    pub fn limits(&self) -> Limits {
        self.inner.core.attachment().link.limits()
    }

    /// The broker's address, on the current (or last) connection.
    pub fn remote_address(&self) -> SocketAddr {
        self.inner
            .core
            .attachment()
            .link
            .connection()
            .remote_address()
    }

    /// QUIC's current estimate of the round-trip time; free, unlike [`Client::ping`].
    pub fn rtt(&self) -> Duration {
        self.inner.core.attachment().link.connection().rtt()
    }

    /// The largest UDP payload of this client's packets to the broker now: 1,200 bytes at
    /// first, then what QUIC's path MTU discovery has found, up to the smaller of this
    /// client's and the broker's `max_udp_payload_bytes` (4,000 by default). Larger packets
    /// carry more messages each.
    pub fn path_mtu(&self) -> u16 {
        self.inner
            .core
            .attachment()
            .link
            .connection()
            .stats()
            .path
            .current_mtu
    }

    /// The broker's latest `GoingAway` notice on the current (or last) connection, if it sent
    /// one: it is shutting down.
    pub fn going_away(&self) -> Option<GoingAway> {
        self.inner.core.attachment().link.going_away()
    }

    /// Whether the client was closed or ended for good ([`ConnectionState::Disconnected`]). A
    /// client that is reconnecting is not closed.
    pub fn is_closed(&self) -> bool {
        let core = &self.inner.core;
        if core.is_closing() || core.is_ended() {
            return true;
        }
        // Lost, and not reconnecting: the reconnecting task may not have seen it yet.
        !core.reconnect_policy().enabled && core.attachment().is_dead()
    }

    /// The connection's state now: connected (and whether the session was resumed),
    /// reconnecting, or disconnected for good.
    pub fn state(&self) -> ConnectionState {
        self.inner.core.state()
    }

    /// A receiver of the changes of [`Client::state`] from now on: wait for one with
    /// `changed().await` or `wait_for(..).await`. It holds the latest state, so changes in
    /// quick succession may be seen as the last of them only (`wait_for` on the state wanted
    /// is the reliable wait). Every change is also logged.
    pub fn state_changes(&self) -> watch::Receiver<ConnectionState> {
        self.inner.core.state_changes()
    }

    /// How many times the client connected again after losing its connection (each
    /// [`ConnectionState::Reconnecting`] that ended in [`ConnectionState::Connected`]), as
    /// NATS clients count `Reconnects`. A watch channel can skip states a reader was too slow
    /// to see; this count does not.
    pub fn reconnects(&self) -> u64 {
        self.inner.core.reconnects()
    }

    /// What the outbound buffer holds now, and how many publishes it dropped because they
    /// waited too long or because the client ended before it could send them.
    pub fn outbound_stats(&self) -> OutboundStats {
        self.inner.core.outbound_stats()
    }
}
