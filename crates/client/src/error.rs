//! The one error type of the client.
//!
//! Every fallible client operation returns [`ClientError`]. Turning quinn's connection errors
//! (TLS alerts, application close codes, timeouts) into these variants happens in one place,
//! [`crate::connect::disconnect`]; this module only defines the variants and their messages.

use std::sync::Arc;

use cassini_protocol::{EncodeError, ErrorCode, TopicError};
use cassini_quic::endpoint::EndpointError;
use cassini_quic::tls::TlsError;

use crate::payload::PayloadError;

/// Why a client operation failed.
///
/// `Clone`, so that the error that ended the client reaches every caller that waits: errors of
/// other crates are held in an [`Arc`].
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The builder was given settings that cannot work (a missing certificate, a zero buffer).
    #[error("invalid client configuration: {reason}")]
    Config {
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// A certificate or key could not be loaded, or the TLS configuration could not be built.
    #[error(transparent)]
    Tls(Arc<TlsError>),
    /// The local UDP socket or QUIC endpoint could not be set up.
    #[error(transparent)]
    Endpoint(Arc<EndpointError>),
    /// The broker's address could not be resolved.
    #[error("cannot resolve broker address {addr}: {reason}")]
    Resolve {
        /// The address as given to the builder.
        addr: String,
        /// What the resolver reported.
        reason: String,
    },
    /// No QUIC connection could be established (unreachable broker, handshake failure that is
    /// not about certificates).
    #[error("cannot connect to the broker: {reason}")]
    Connect {
        /// What went wrong.
        reason: String,
    },
    /// The broker refused this client's certificate (TLS alert during or just after the
    /// handshake): expired, issued by another CA, revoked, or missing.
    #[error("{reason}")]
    Certificate {
        /// A complete sentence, e.g. "the broker refused this client's certificate: certificate
        /// expired or not yet valid (TLS alert 45)".
        reason: String,
    },
    /// This client refused the broker's certificate: not issued by the configured CA, expired,
    /// or not valid for the server name.
    #[error("{reason}")]
    BrokerCertificate {
        /// A complete sentence naming the problem.
        reason: String,
    },
    /// The broker closed the connection with an application error code: it refused the
    /// connection (unsupported version, too many connections) or ended it later (shutting down,
    /// session taken over, protocol violation).
    #[error("the broker closed the connection: {reason} ({code:?})")]
    Refused {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's reason.
        reason: String,
    },
    /// The broker answered a request (subscribe, unsubscribe) with an error; the connection
    /// stays usable.
    #[error("the broker refused the request: {reason} ({code:?})")]
    Request {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's reason.
        reason: String,
    },
    /// The broker refused an acknowledged publish ([`crate::Client::publish_acked`]): the
    /// topic is not allowed, the payload is too large, or the message id was missing. The
    /// message was not routed; the connection stays usable.
    #[error("the broker rejected the publish to {topic}: {reason} ({code:?})")]
    PublishRejected {
        /// The topic of the refused publish.
        topic: String,
        /// The refused publish's message id.
        message_id: Option<u64>,
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's reason.
        reason: String,
    },
    /// An acknowledged publish named a message id that another acknowledged publish of this
    /// client is still waiting with; nothing was sent.
    #[error("message id {message_id} is already waiting for its acknowledgement")]
    MessageIdInFlight {
        /// The message id.
        message_id: u64,
    },
    /// The connection was lost: idle timeout, reset, or a transport error.
    #[error("connection to the broker lost: {reason}")]
    ConnectionLost {
        /// What quinn reported.
        reason: String,
    },
    /// The broker broke the protocol (an unexpected or malformed frame); this client closed the
    /// connection.
    #[error("protocol error: {reason}")]
    Protocol {
        /// What the broker sent that it should not have.
        reason: String,
    },
    /// A topic given to `publish` is not a valid topic name; nothing was sent.
    #[error("invalid topic: {0}")]
    InvalidTopic(TopicError),
    /// A `reply_to` given in [`crate::PublishOptions`] is not a valid topic name; nothing was
    /// sent.
    #[error("invalid reply_to topic: {0}")]
    InvalidReplyTo(TopicError),
    /// A filter given to `subscribe` is not a valid filter; nothing was sent.
    #[error("invalid subscription filter: {0}")]
    InvalidFilter(TopicError),
    /// A payload is larger than the broker accepts; nothing was sent.
    #[error("payload of {size} bytes exceeds the broker's maximum of {max} bytes")]
    PayloadTooLarge {
        /// The payload's size.
        size: usize,
        /// The broker's `max_payload_bytes`.
        max: u32,
    },
    /// A publish carries more headers than the broker accepts (`max_headers` in `Welcome`);
    /// nothing was sent.
    #[error("{count} headers exceed the broker's maximum of {max}")]
    TooManyHeaders {
        /// How many headers the publish carries.
        count: usize,
        /// The broker's `max_headers`.
        max: u32,
    },
    /// A publish's header keys and values are larger than the broker accepts
    /// (`max_header_bytes` in `Welcome`); nothing was sent.
    #[error("headers of {size} bytes exceed the broker's maximum of {max} bytes")]
    HeadersTooLarge {
        /// Bytes of the header keys and values.
        size: usize,
        /// The broker's `max_header_bytes`.
        max: u32,
    },
    /// A frame could not be encoded, e.g. headers push it over the broker's maximum frame size;
    /// nothing was sent.
    #[error(transparent)]
    Encode(Arc<EncodeError>),
    /// A value could not be encoded as a typed payload (`publish_json`, `publish_msgpack`);
    /// nothing was sent.
    #[error(transparent)]
    Payload(Arc<PayloadError>),
    /// A request reached no subscription: the broker answered `NoResponders` at once.
    #[error("no responders on {topic}")]
    NoResponders {
        /// The topic the request was published to.
        topic: String,
    },
    /// The subscription that receives this client's replies ended while a request waited (e.g.
    /// the broker closed it as a slow consumer); the next request subscribes again.
    #[error("the reply inbox subscription ended: {reason}")]
    InboxEnded {
        /// Why it ended.
        reason: String,
    },
    /// `respond` was called on a message that is not a request: it has no `reply_to`.
    #[error("the message on {topic} has no reply_to, so it cannot be answered")]
    NoReplyTo {
        /// The topic of the message.
        topic: String,
    },
    /// An operation did not finish in time; the string says which. A request that got no reply
    /// in time is `Timeout("waiting for a reply")`; an acknowledged publish that got no
    /// acknowledgement in time is `Timeout("publish acknowledgement")` (the message may or may
    /// not have been delivered).
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The client was closed (by [`crate::Client::close`] or a normal close by the broker).
    #[error("the client is closed")]
    Closed,
    /// The client has no connection to the broker: it is reconnecting, or it gave up (see
    /// [`crate::Client::state`]). Subscribe, unsubscribe and ping fail with this at once rather
    /// than wait for the reconnect, and so does a publish when the outbound buffer is disabled.
    /// Nothing was sent; try again once [`crate::Client::state_changes`] reports
    /// [`crate::ConnectionState::Connected`].
    #[error("not connected to the broker: {reason}")]
    Disconnected {
        /// Why the connection is down.
        reason: String,
    },
    /// A publish made while reconnecting found the outbound buffer full
    /// ([`crate::OutboundBuffer::max_messages`]); the message was not kept.
    #[error("the outbound buffer is full: {capacity} messages already wait for the reconnect")]
    OutboundBufferFull {
        /// The buffer's `max_messages`.
        capacity: usize,
    },
}

impl From<TlsError> for ClientError {
    fn from(error: TlsError) -> Self {
        ClientError::Tls(Arc::new(error))
    }
}

impl From<EndpointError> for ClientError {
    fn from(error: EndpointError) -> Self {
        ClientError::Endpoint(Arc::new(error))
    }
}

impl From<EncodeError> for ClientError {
    fn from(error: EncodeError) -> Self {
        ClientError::Encode(Arc::new(error))
    }
}

impl From<PayloadError> for ClientError {
    fn from(error: PayloadError) -> Self {
        ClientError::Payload(Arc::new(error))
    }
}
