//! Every frame that crosses the wire.
//!
//! A Cassini connection carries three kinds of stream and QUIC datagrams, and each frame belongs
//! to exactly one of them:
//!
//! | stream | opened by | frames |
//! |---|---|---|
//! | control (bidirectional, the first one) | client | `Hello`, `Subscribe`, `Unsubscribe`, `Ping`, `Ack` up; `Welcome`, `Subscribed`, `Unsubscribed`, `SubscriptionEnded`, `Error`, `Pong`, `GoingAway` down |
//! | publish (bidirectional, one per topic) | client | `Publish` up; `PublishAck`, `PublishRejected`, `NoResponders` down |
//! | subscription (unidirectional, one per subscription) | broker | `SubscriptionStart` first, then `Message` and `Gap` (and `DatagramsSent` on a datagram subscription's) |
//! | (QUIC datagrams, unreliable) | both | `Datagram` down (deliveries of datagram subscriptions); `Publish` up (fire and forget) |
//!
//! A frame on the wrong kind of stream is a protocol violation. The frames are one enum so that a
//! single codec (and a single fuzz target) covers them all; the stream handlers decide which
//! variants they accept.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::ErrorCode;

/// A broker-assigned session identifier: 128 random bits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// Identifies one subscription within its session. Assigned by the broker, never reused
/// within a session.
pub type SubscriptionId = u64;

/// Correlates a control request with its answer. Chosen by the client.
pub type RequestId = u64;

pub use crate::headers::Headers;

/// Every Cassini frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Control, client → broker: the first frame of every connection.
    Hello(Hello),
    /// Control, broker → client: the answer to `Hello`.
    Welcome(Welcome),
    /// Control, client → broker: start a subscription.
    Subscribe(Subscribe),
    /// Control, broker → client: a subscription was created; its stream follows.
    Subscribed(Subscribed),
    /// Control, client → broker: end a subscription.
    Unsubscribe(Unsubscribe),
    /// Control, broker → client: a subscription was ended; its stream has been finished.
    Unsubscribed(Unsubscribed),
    /// Control, client → broker: liveness and round-trip probe.
    Ping(Ping),
    /// Control, client → broker: deliveries of an at-least-once subscription were processed.
    /// Not answered.
    Ack(Ack),
    /// Control, broker → client: the answer to `Ping`, echoing its nonce.
    Pong(Ping),
    /// Control, broker → client: a request failed, or (without a request id) the connection is
    /// about to be closed for the reason given.
    Error(ErrorFrame),
    /// Control, broker → client: the broker is shutting down.
    GoingAway(GoingAway),
    /// Publish stream, client → broker: one message for one topic.
    Publish(Publish),
    /// Publish stream, broker → client: a publish was refused.
    PublishRejected(PublishRejected),
    /// Publish stream, broker → client: a request reached no subscriber.
    NoResponders(NoResponders),
    /// Publish stream, broker → client: a publish that asked for it was accepted.
    PublishAck(PublishAck),
    /// Subscription stream, broker → client: the first frame, naming the subscription.
    SubscriptionStart(SubscriptionStart),
    /// Subscription stream, broker → client: one delivered message.
    Message(Delivery),
    /// Subscription stream, broker → client: a range of the subscription's sequence numbers
    /// will never be delivered, and why. Sent before the next delivery after the range.
    Gap(Gap),
    /// QUIC datagram, broker → client: one delivery of a datagram subscription. Client →
    /// broker, a datagram carries a `Publish` instead (fire and forget).
    Datagram(DatagramDelivery),
    /// Control, broker → client: the broker ended a subscription the client did not ask to end
    /// (its `Close` policy overflowed, or a reloaded ACL no longer allows it). Its stream is
    /// also reset with the same code, but a reset may overtake the stream's
    /// `SubscriptionStart`, so this frame is what names the subscription.
    SubscriptionEnded(SubscriptionEnded),
    /// Subscription stream of a datagram subscription, broker → client: every sequence through
    /// `through` has been sent, so one not received by now was lost (unless it arrives late).
    /// Sent once the subscription has sent no datagram for a moment, so that a datagram lost
    /// last, on a topic gone quiet, is counted without waiting for the next one.
    DatagramsSent(DatagramsSent),
}

impl Frame {
    /// The variant's name, for logs and error reasons.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "Hello",
            Frame::Welcome(_) => "Welcome",
            Frame::Subscribe(_) => "Subscribe",
            Frame::Subscribed(_) => "Subscribed",
            Frame::Unsubscribe(_) => "Unsubscribe",
            Frame::Unsubscribed(_) => "Unsubscribed",
            Frame::Ping(_) => "Ping",
            Frame::Ack(_) => "Ack",
            Frame::Pong(_) => "Pong",
            Frame::Error(_) => "Error",
            Frame::GoingAway(_) => "GoingAway",
            Frame::Publish(_) => "Publish",
            Frame::PublishRejected(_) => "PublishRejected",
            Frame::NoResponders(_) => "NoResponders",
            Frame::PublishAck(_) => "PublishAck",
            Frame::SubscriptionStart(_) => "SubscriptionStart",
            Frame::Message(_) => "Message",
            Frame::Gap(_) => "Gap",
            Frame::Datagram(_) => "Datagram",
            Frame::SubscriptionEnded(_) => "SubscriptionEnded",
            Frame::DatagramsSent(_) => "DatagramsSent",
        }
    }
}

/// The client's opening frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The protocol version the client speaks; see [`crate::PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// A session to resume, or `None` for a new session.
    pub resume: Option<SessionId>,
    /// A free-form client name for logs. Never used as the identity: that comes from the
    /// certificate only.
    pub client_name: Option<String>,
    /// With `resume`: for each subscription, the last sequence the client received. The broker
    /// continues each subscription after that point and announces with a `Gap` whatever it no
    /// longer holds. A subscription not listed is taken to stand at 0: the broker cannot tell
    /// what of it arrived, so everything it sent and no longer holds is announced as a gap.
    #[serde(default)]
    pub positions: Vec<ResumePosition>,
    /// A stable session name, unique per certificate identity (like MQTT's client id with a
    /// clean start of false): the first `Hello` naming it creates the session, a later one
    /// resumes it. When set, `resume` is not used. 1 to [`MAX_SESSION_NAME_BYTES`] bytes of
    /// ASCII letters, digits, `-`, `_` and `.`; anything else is refused with
    /// `INVALID_SESSION_NAME`.
    #[serde(default)]
    pub session_name: Option<String>,
}

/// Longest accepted session name, in bytes.
pub const MAX_SESSION_NAME_BYTES: usize = 128;

/// Whether `name` is a valid session name: 1 to [`MAX_SESSION_NAME_BYTES`] bytes of ASCII
/// letters, digits, `-`, `_` and `.`.
pub fn valid_session_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SESSION_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Where the client stands in one subscription when it resumes its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumePosition {
    /// The subscription.
    pub subscription: SubscriptionId,
    /// The last sequence the client received on it (0 if none).
    pub last_sequence: u64,
}

/// The broker's answer to `Hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Welcome {
    /// The protocol version the broker will speak on this connection.
    pub protocol_version: u32,
    /// The session this connection is attached to.
    pub session_id: SessionId,
    /// Whether an existing session was resumed.
    pub resumed: bool,
    /// The identity the broker read from the client's certificate.
    pub identity: String,
    /// The limits in force for this connection.
    pub limits: Limits,
    /// On a resumed session: every subscription the session holds, so that a client that
    /// does not know them (a new process) can take them up again; empty on a new session.
    #[serde(default)]
    pub subscriptions: Vec<SessionSubscription>,
    /// In a cluster: the client addresses of this broker's node and of every peer node in
    /// routing, as `host:port` strings (docs/CLUSTERING.md), for a client to fail over to;
    /// empty from a standalone broker (and when left off by an older one).
    #[serde(default)]
    pub cluster_addresses: Vec<String>,
}

/// A subscription a resumed session holds, as listed in `Welcome`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionSubscription {
    /// Its id; the broker opens its stream as it re-attaches the session, so the stream may
    /// arrive before `Welcome`.
    pub subscription: SubscriptionId,
    /// The filter it was made with.
    pub filter: String,
    /// The options it was made with.
    pub options: SubscribeOptions,
}

/// Limits the broker enforces, announced in `Welcome` so clients can check before sending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest accepted publish payload, in bytes.
    pub max_payload_bytes: u32,
    /// Largest accepted frame (length prefix excluded), in bytes.
    pub max_frame_bytes: u32,
    /// Most subscriptions one session may hold.
    pub max_subscriptions: u32,
    /// Longest topic name or filter, in bytes.
    pub max_topic_bytes: u32,
    /// Most dot-separated tokens in a topic name or filter.
    pub max_topic_depth: u32,
    /// Most headers one publish may carry; 0 when the broker did not announce it (an older
    /// broker), and then a client does not check.
    #[serde(default)]
    pub max_headers: u32,
    /// Most bytes of header keys and values together in one publish; 0 when not announced.
    #[serde(default)]
    pub max_header_bytes: u32,
    /// The largest QUIC datagram (its whole content: length prefix and frame) the broker could
    /// send on this connection when it sent `Welcome`, 0 if the connection has no datagrams.
    /// It follows the path MTU and the client's `max_datagram_frame_size`, so it may change;
    /// a datagram subscription's larger messages follow its oversize rule.
    #[serde(default)]
    pub max_datagram_bytes: u32,
}

/// What the broker does when a subscription's queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum OverflowPolicy {
    /// Drop the oldest queued message to make room (the default).
    #[default]
    DropOldest,
    /// Drop the message that does not fit.
    DropNewest,
    /// Keep only the newest message: for state-like topics.
    Latest,
    /// Close the subscription: `SubscriptionEnded` with `SLOW_CONSUMER` on the control stream,
    /// and its stream is reset with the same code.
    Close,
}

/// Per-subscription options chosen by the subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SubscribeOptions {
    /// What to do when this subscription's queue is full.
    pub overflow: OverflowPolicy,
    /// Queue bound in messages; `None` takes the broker default. Capped by the broker maximum.
    pub max_queued_messages: Option<u32>,
    /// Queue bound in payload bytes; `None` takes the broker default. Capped by the broker maximum.
    pub max_queued_bytes: Option<u64>,
    /// Join this queue group: each message matching the filter goes to one member of the
    /// group (per filter and group name) instead of to every member.
    pub queue_group: Option<String>,
    /// Make the subscription at least once: the broker keeps every delivery until the client
    /// acknowledges it with `Ack`, and redelivers what is unacknowledged after a reconnect or
    /// the ack timeout. `None`: at most once.
    #[serde(default)]
    pub acks: Option<AckOptions>,
    /// How deliveries travel: on the subscription's stream (reliable, the default) or as QUIC
    /// datagrams (newest first, no retransmission).
    #[serde(default)]
    pub delivery: DeliveryClass,
}

/// How a subscription's messages travel to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum DeliveryClass {
    /// On the subscription's stream: in order, retransmitted when lost.
    #[default]
    Reliable,
    /// As QUIC datagrams: never retransmitted, so a lost packet delays nothing behind it. Loss
    /// shows as missing sequence numbers. A message too large for one datagram follows `oversize`.
    Datagram {
        /// What happens to a message larger than the connection's datagram size.
        oversize: OversizeRule,
    },
}

/// What a datagram subscription does with a message too large for one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum OversizeRule {
    /// Drop it and announce it as a `Gap` with reason `TooLargeForDatagram`.
    #[default]
    Drop,
    /// Send it on the subscription's stream instead.
    Stream,
}

/// Settings of an at-least-once subscription; absent values take the broker's defaults, and
/// every value is capped by the broker's maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AckOptions {
    /// Most deliveries sent but not yet acknowledged (the in-flight window).
    pub max_in_flight: Option<u32>,
    /// How long a delivery may stay unacknowledged on a live connection before the broker
    /// sends it again, in milliseconds.
    pub ack_timeout_ms: Option<u32>,
}

/// Start a subscription.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribe {
    /// Correlates the answer.
    pub request_id: RequestId,
    /// The filter: a topic with optional `*` and `>` wildcards.
    pub filter: String,
    /// Queue and overflow options.
    pub options: SubscribeOptions,
}

/// A subscription was created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The request this answers.
    pub request_id: RequestId,
    /// The new subscription; its stream starts with a `SubscriptionStart` naming it.
    pub subscription: SubscriptionId,
}

/// End a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribe {
    /// Correlates the answer.
    pub request_id: RequestId,
    /// The subscription to end.
    pub subscription: SubscriptionId,
}

/// A subscription was ended and its stream finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsubscribed {
    /// The request this answers.
    pub request_id: RequestId,
    /// The subscription that ended.
    pub subscription: SubscriptionId,
}

/// Deliveries of an at-least-once subscription that the client has processed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The subscription.
    pub subscription: SubscriptionId,
    /// Processed sequence numbers, as inclusive ranges in any order.
    pub ranges: Vec<SequenceRange>,
}

/// An inclusive range of sequence numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SequenceRange {
    /// The first sequence in the range.
    pub from: u64,
    /// The last sequence in the range (inclusive).
    pub to: u64,
}

/// The broker ended a subscription on its own, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionEnded {
    /// The subscription that ended.
    pub subscription: SubscriptionId,
    /// Why: `SLOW_CONSUMER`, `NOT_AUTHORIZED` or `STREAM_LIMIT`.
    pub code: ErrorCode,
    /// A human-readable reason.
    pub reason: String,
}

/// A liveness probe; the answer echoes the nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Any value; echoed back unchanged.
    pub nonce: u64,
}

/// An error the peer should see.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The request that failed, or `None` for a connection-level error.
    pub request_id: Option<RequestId>,
    /// What went wrong.
    pub code: ErrorCode,
    /// A human-readable reason.
    pub reason: String,
}

/// The broker is going away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoingAway {
    /// Why.
    pub reason: String,
    /// How long a client should wait before reconnecting, in milliseconds.
    pub reconnect_after_ms: u32,
}

/// One message published to one topic.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Publish {
    /// A topic name without wildcards.
    pub topic: String,
    /// Application headers. Decoding keeps at most [`crate::headers::MAX_DECODED_HEADERS`] + 1
    /// of them (see there).
    #[serde(deserialize_with = "crate::headers::bounded_headers")]
    pub headers: Headers,
    /// The payload, opaque to the broker.
    pub payload: Bytes,
    /// A publisher-chosen id, passed through to subscribers.
    pub message_id: Option<u64>,
    /// Where replies go: makes this publish a request. A request that reaches no subscriber is
    /// answered with `NoResponders` on the same stream.
    pub reply_to: Option<String>,
    /// Keep this message as the topic's retained value, delivered first to every new matching
    /// subscription. An empty retained payload clears the retained value.
    pub retain: bool,
    /// Deliver only to subscriptions of this session (a direct message).
    pub to_session: Option<SessionId>,
    /// Ask for a `PublishAck` once the broker has accepted the message. Requires `message_id`.
    /// A publish whose `message_id` the broker saw from the same identity within its dedupe
    /// window is acknowledged again but not routed again.
    pub ack: bool,
}

/// A publish that asked for an acknowledgement was accepted by its topic (routed to every
/// matching subscription's queue), or was recognised as a duplicate of one that was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishAck {
    /// The acknowledged publish's `message_id`.
    pub message_id: u64,
    /// Whether it was a duplicate within the dedupe window (and so not routed again).
    pub duplicate: bool,
}

/// A request reached no subscriber.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NoResponders {
    /// The `reply_to` of the request.
    pub reply_to: String,
}

/// A publish was refused. The publish stream stays usable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRejected {
    /// The topic of the refused publish.
    pub topic: String,
    /// The refused publish's `message_id`, if it had one.
    pub message_id: Option<u64>,
    /// Why it was refused.
    pub code: ErrorCode,
    /// A human-readable reason.
    pub reason: String,
}

/// The first frame of every subscription stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionStart {
    /// The subscription this stream carries.
    pub subscription: SubscriptionId,
}

/// One message delivered to one subscription.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Delivery {
    /// Position of this message in the subscription, starting at 1 and increasing by one for
    /// every message the subscription accepted, delivered or dropped.
    pub sequence: u64,
    /// The concrete topic the message was published to.
    pub topic: String,
    /// Application headers, as published. Decoding keeps at most
    /// [`crate::headers::MAX_DECODED_HEADERS`] + 1 of them (see there).
    #[serde(deserialize_with = "crate::headers::bounded_headers")]
    pub headers: Headers,
    /// The payload, as published.
    pub payload: Bytes,
    /// The publisher's message id, if it gave one.
    pub message_id: Option<u64>,
    /// Where a reply goes, if the message is a request.
    pub reply_to: Option<String>,
    /// Whether this is a topic's retained value replayed to a new subscription.
    pub retained: bool,
    /// Whether this delivery was sent before (at-least-once subscriptions only): the client may
    /// have seen it already.
    #[serde(default)]
    pub redelivered: bool,
}

/// A datagram subscription has sent every sequence through `through`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatagramsSent {
    /// The subscription the stream carries.
    pub subscription: SubscriptionId,
    /// The highest sequence sent so far: as a datagram, on the stream, or announced by a `Gap`.
    pub through: u64,
}

/// Sequence numbers `from..=to` of a subscription will never be delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gap {
    /// The subscription the stream carries.
    pub subscription: SubscriptionId,
    /// The first missing sequence.
    pub from: u64,
    /// The last missing sequence (inclusive).
    pub to: u64,
    /// Why they are missing.
    pub reason: GapReason,
}

impl Gap {
    /// How many sequence numbers the gap covers.
    pub fn len(&self) -> u64 {
        self.to.saturating_sub(self.from).saturating_add(1)
    }

    /// Whether the gap covers nothing (never true of a gap the broker sends).
    pub fn is_empty(&self) -> bool {
        self.to < self.from
    }
}

/// Why messages are missing from a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum GapReason {
    /// The subscription's queue was full and its overflow policy dropped them.
    Overflow,
    /// They were sent on a connection that was lost before the client received them; an
    /// at-most-once subscription does not send them again.
    Undelivered,
    /// A datagram subscription's message was larger than one datagram, and its oversize rule
    /// is `Drop`.
    TooLargeForDatagram,
    /// They were published on another node of a cluster and lost on the route to this node:
    /// that node's queue towards this one was full, or the link between them was down.
    ClusterRoute,
}

/// One delivery of a datagram subscription, in a QUIC datagram of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatagramDelivery {
    /// The subscription it is for.
    pub subscription: SubscriptionId,
    /// The delivery, as on a stream.
    pub message: Delivery,
}
