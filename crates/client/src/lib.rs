//! The async Rust client for the Cassini broker: QUIC with mutual TLS.
//!
//! Layering: every file uses only files below it, from the wire (frames, the `Link`-level
//! facts of a connection, close reasons) through what each feature keeps (publish lanes and
//! acknowledgements, subscription sinks and their registry, pending replies), one connection
//! (handshake, control stream, attachment), the session that outlives connections (and the task
//! that reconnects it), up to the handles (`Subscription`, `Client`) and the ways in
//! (`ClientBuilder`, `Client::serve`).
//!
//! ```no_run
//! use bytes::Bytes;
//! use cassini_client::Client;
//! use futures_util::StreamExt;
//!
//! # async fn run() -> Result<(), cassini_client::ClientError> {
//! let client = Client::builder("127.0.0.1:7700")
//!     .ca_file("certs/ca.crt")
//!     .identity_files("certs/client-dev.crt", "certs/client-dev.key")
//!     .connect()
//!     .await?;
//!
//! let mut sub = client.subscribe("demo.>").await?;
//! client.publish("demo.hello", Bytes::from("hi")).await?;
//! if let Some(msg) = sub.next().await {
//!     println!("{} #{}: {:?}", msg.topic(), msg.sequence(), msg.payload());
//! }
//! sub.unsubscribe().await?;
//! client.close().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Beyond publish and subscribe
//!
//! - **Request/reply**: [`Client::request`] publishes with a reply topic and waits for the
//!   first reply, failing at once with [`RequestError::NoResponders`] when nobody subscribes to
//!   the topic. [`Client::serve`] yields [`Request`]s that [`Request::respond`] answers; a plain
//!   subscriber can answer too, by publishing to [`Message::reply_to`].
//! - **Queue groups**: [`Client::subscribe_queue`] and [`Client::serve_queue`]: each message
//!   goes to one member of the group instead of to all.
//! - **Retained messages**: [`Client::publish_retained`] keeps a topic's last value on the
//!   broker for new subscribers ([`Message::is_retained`]).
//! - **Acknowledged publishes**: [`Client::publish_acked`] waits until the broker has routed
//!   the message and returns a [`PublishReceipt`]; the message is sent again after a reconnect
//!   until acknowledged (at least once; the broker drops duplicates by message id).
//! - **A barrier**: [`Client::flush`] returns once the broker has processed every publish made
//!   before it (with any refusal of an unacknowledged publish in [`Client::publish_errors`]),
//!   as NATS's `flush`.
//! - **Direct messages**: [`Client::send_to`] delivers to one session only.
//! - **Options and typed payloads**: [`Client::publish_with`] takes [`PublishOptions`];
//!   [`Client::publish_json`] and [`Client::publish_msgpack`] set a `content-type` header
//!   ([`CONTENT_TYPE_HEADER`]) and [`Message::decode_json`] and [`Message::decode_msgpack`]
//!   read the payload back.
//!
//! ```no_run
//! # use std::time::Duration;
//! # use cassini_client::Client;
//! # async fn run(client: Client) -> Result<(), cassini_client::ClientError> {
//! let mut responder = client.serve_queue("time.now", "clock").await?;
//! tokio::spawn(async move {
//!     while let Some(request) = responder.recv().await {
//!         let _ = request.respond("12:00").await;
//!     }
//! });
//! let reply = client.request("time.now", "", Duration::from_secs(5)).await?;
//! assert_eq!(reply.payload().as_ref(), b"12:00");
//! # Ok(())
//! # }
//! ```
//!
//! # Errors
//!
//! Each operation fails with the error of what it does: [`ClientBuilder::connect`] with a
//! [`ConnectionError`], the publishes with a [`PublishError`], the subscribes and
//! [`Client::serve`] with a [`SubscribeError`], [`Client::request`] with a [`RequestError`];
//! each holds a [`ConnectionError`] when the connection is at fault. The other operations
//! return [`ClientError`], and every error converts into it with `?`, variant for variant
//! ([`RequestError::NoResponders`] becomes [`ClientError::NoResponders`],
//! [`SubscribeError::Refused`] becomes [`ClientError::Request`], ...). All of them are `Clone`.
//!
//! # How it talks to the broker
//!
//! One QUIC connection per [`Client`]. The client opens a control stream and exchanges
//! `Hello`/`Welcome` on it (a certificate the broker refuses shows up here, as
//! [`ConnectionError::Certificate`]); subscribe, unsubscribe and ping requests follow on the same
//! stream. Each topic is published on its own client-opened stream (a *lane*), so per-topic
//! order holds and topics do not delay each other. The broker opens one stream per
//! subscription. Every queue is bounded: a slow subscriber stops reading its stream and QUIC
//! flow control pushes back on the broker; a fast publisher waits in [`Client::publish`]. TLS
//! session resumption and 0-RTT stay off on reconnects too: every connection runs the full
//! certificate check.
//!
//! # Surviving a lost connection
//!
//! A connection lost without a goodbye does not end the client: it reconnects with backoff
//! ([`ReconnectPolicy`], on by default) and resumes its session, and every [`Subscription`]
//! continues with the messages the broker kept for it, in order and never twice. Publishes made
//! meanwhile wait in a bounded [`OutboundBuffer`] and are sent first after the reconnect;
//! subscribe, unsubscribe and ping fail at once with a `Disconnected` error
//! ([`ConnectionError::Disconnected`]). Watch it
//! happen with [`Client::state_changes`] ([`ConnectionState`]); hear what a subscription
//! missed as it happens with [`Subscription::next_event`] ([`SubscriptionEvent::Gap`]), or count
//! it with [`Subscription::gaps`] and [`Subscription::take_gaps`] ([`Gap`]). The client stops for
//! good after [`Client::close`], when a newer connection of the same identity took the session
//! over, when the broker refuses it in a way that would repeat, or when the policy gives up.
//! The [`Client`] documentation has the details.
//!
//! A session also outlives the process: [`ClientBuilder::session_name`] gives it a stable name
//! per identity (or [`ClientBuilder::resume_session`] resumes a known id), [`Client::leave`]
//! closes without ending it, and a later process subscribing with the same filter and options
//! takes its subscriptions up, with what the broker kept meanwhile
//! ([`Client::unclaimed_subscriptions`]; `docs/SESSIONS.md`).
//!
//! ```no_run
//! # use cassini_client::{Client, ConnectionState};
//! # async fn run(client: Client) {
//! let mut states = client.state_changes();
//! while states.changed().await.is_ok() {
//!     let state = states.borrow().clone();
//!     println!("{state}");
//!     if let ConnectionState::Disconnected { .. } = state {
//!         break;
//!     }
//! }
//! # }
//! ```
//!
//! # Layout
//!
//! Folders follow what a user does; files are named after the type they hold.
//!
//! - `client`: the [`Client`] handle and its operations; `client/close`: the goodbye in
//!   [`Client::close`].
//! - `connect/`: connecting and staying connected.
//!   - `builder`: [`ClientBuilder`], its settings and their validation, and `connect`
//!     ([`Client::builder`] is defined here); `broker_address`: [`BrokerAddress`] and resolving
//!     it.
//!   - `connector`: one connection attempt under the connect timeout, and the handshake: the
//!     QUIC connection, the control stream, `Hello` (resuming a session) and `Welcome`.
//!   - `link`: what every part shares about one connection, and which error a failure
//!     reports; `disconnect`: quinn's close reasons and TLS alerts as [`ConnectionError`]s;
//!     `framed`: whole frames over quinn streams.
//!   - `control/`: the control stream: `handle` (the requests and the handle that makes them),
//!     `pending` (requests waiting for their answer), the `writer` and `reader` tasks.
//!   - `attachment`: one connection and the tasks serving it.
//!   - `session`: what outlives a connection (the current connection, the outbound buffer, the
//!     [`ConnectionState`]); `supervisor`: the task that notices a lost connection and
//!     reconnects, resumes or replaces the session; `reconnect_policy`: [`ReconnectPolicy`],
//!     its backoff schedule, and which failures are retried; `connection_state`:
//!     [`ConnectionState`] and [`DisconnectReason`].
//! - `publish/`: publishing.
//!   - `options`: [`PublishOptions`]; `outgoing`: checking a publish against the broker's
//!     limits and encoding it.
//!   - `publisher`: the lanes of one connection, the least recently used closed first; `lane`:
//!     the task that owns one publish stream.
//!   - `receipt`: acknowledged publishes ([`PublishReceipt`]): message ids, the bounded table
//!     of publishes waiting for their acknowledgement, and which to send again after a
//!     reconnect.
//!   - `outbound`: [`OutboundBuffer`], publishes kept while reconnecting.
//! - `subscribe/`: subscribing.
//!   - `subscription`: the application's [`Subscription`] and its [`SubscriptionEvent`]s;
//!     `end`: why it ended ([`SubscriptionEnd`]).
//!   - `sink`: what the handle shares with the tasks reading its stream and datagrams;
//!     `registry`: the session's subscriptions across connections, pairing a stream with its
//!     `Subscribed` answer whichever arrives first, and handing a subscription from one
//!     connection's stream to the next; `incoming`: subscription streams and datagrams in.
//!   - `gap`: [`Gap`]s, the bookkeeping that finds them and refuses duplicates, and the loss
//!     count of datagram subscriptions; `acks`: acknowledgements of at-least-once deliveries.
//! - `request/`: request and reply.
//!   - `inbox`: the per-client reply subscription and its dispatcher; `replies`: requests
//!     waiting for a reply, completed by a reply, a `NoResponders` or the inbox's end.
//!   - `responder`: [`Responder`] and [`Request`], serving requests ([`Client::serve`] is
//!     defined here).
//! - `message`: a delivered [`Message`]; `payload`: JSON and MessagePack payloads
//!   ([`PayloadError`]).
//! - `error`: the errors per operation ([`ConnectionError`], [`PublishError`],
//!   [`SubscribeError`], [`RequestError`]) and [`ClientError`] over them; `sync`: locking
//!   that survives a panicked holder.
//!
//! Unit tests sit in a `tests` module at the end of the file they test.

mod client;
mod connect;
mod error;
mod message;
mod payload;
mod publish;
mod request;
mod subscribe;
mod sync;

pub use client::Client;
pub use connect::broker_address::BrokerAddress;
pub use connect::builder::ClientBuilder;
pub use connect::connection_state::{ConnectionState, DisconnectReason};
pub use connect::liveness::Liveness;
pub use connect::reconnect_policy::ReconnectPolicy;
pub use error::{ClientError, ConnectionError, PublishError, RequestError, SubscribeError};
pub use message::Message;
pub use payload::{PayloadError, CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE, MSGPACK_CONTENT_TYPE};
pub use publish::options::PublishOptions;
pub use publish::outbound::{OutboundBuffer, OutboundStats};
pub use publish::receipt::PublishReceipt;
pub use request::responder::{Request, Responder};
pub use subscribe::end::SubscriptionEnd;
pub use subscribe::gap::Gap;
pub use subscribe::subscription::{Events, Subscription, SubscriptionEvent};

pub use cassini_protocol::{
    AckOptions, DeliveryClass, ErrorCode, GapReason, GoingAway, Headers, Limits, OverflowPolicy,
    OversizeRule, PublishRejected, SessionId, SessionSubscription, SubscribeOptions,
    SubscriptionId, TopicError,
};
pub use cassini_quic::tls::QuicOptions;
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer};
