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
use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::builder::{BrokerAddress, ClientBuilder};
use crate::control::{self, ControlHandle, PendingRequests};
use crate::disconnect::{connection_error, Phase};
use crate::error::ClientError;
use crate::handshake::Established;
use crate::link::Link;
use crate::publish::{Publisher, PublisherSettings};
use crate::registry::SubscriptionRegistry;
use crate::subscription::{Subscription, SubscriptionSink, SubscriptionState};
use crate::subscription_stream::accept_streams;
use crate::sync::lock;

/// Publish rejections kept for [`Client::publish_errors`]; more are only logged.
const PUBLISH_ERRORS_CAPACITY: usize = 256;

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

/// A connection to a Cassini broker: publish, subscribe, ping, close.
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
        let publisher = Publisher::new(Arc::clone(&link), settings.publisher, rejections);
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
        self.publish_with_headers(topic, Headers::new(), payload)
            .await
    }

    /// Publishes `payload` with `headers` to `topic`; see [`Client::publish`].
    pub async fn publish_with_headers(
        &self,
        topic: &str,
        headers: Headers,
        payload: impl Into<Bytes>,
    ) -> Result<(), ClientError> {
        self.inner
            .publisher
            .publish(topic, headers, payload.into())
            .await
    }

    /// Subscribes to `filter` (wildcards `*` and `>` allowed) with the broker's default options.
    pub async fn subscribe(&self, filter: &str) -> Result<Subscription, ClientError> {
        self.subscribe_with(filter, SubscribeOptions::default())
            .await
    }

    /// Subscribes to `filter` with `options` (overflow policy and queue bounds on the broker).
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
