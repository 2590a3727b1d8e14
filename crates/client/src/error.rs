//! The client's errors: one per operation where callers handle them differently, and
//! [`ClientError`] over them all.
//!
//! [`ConnectionError`] is why the client could not connect or why its connection cannot carry
//! an operation now ([`crate::ClientBuilder::connect`] returns it, and every other error holds
//! it). [`PublishError`], [`SubscribeError`] and [`RequestError`] add what only that operation
//! meets. [`ClientError`] is the umbrella the other operations return: every error above
//! converts into it (so `?` works in a function returning `ClientError`), variant for variant,
//! keeping the names callers match on (`ClientError::NoResponders`, `ClientError::Certificate`,
//! `ClientError::Refused { code, .. }`, ...). Every error is `Clone`: the error that ended the
//! client reaches every caller that waits, and errors of other crates are held in an [`Arc`].
//!
//! Turning quinn's connection errors (TLS alerts, application close codes, timeouts) into these
//! variants happens in one place, [`crate::connect::disconnect`]; this module only defines the
//! variants, their messages and the conversions.

use std::sync::Arc;

use cassini_protocol::{EncodeError, ErrorCode, TopicError};
use cassini_quic::endpoint::EndpointError;
use cassini_quic::tls::TlsError;

use crate::payload::PayloadError;

/// Declares [`ConnectionError`], [`PublishError`] and [`ClientError`], writing once the
/// variants they share: `ClientError` begins with the `connection` variants, which
/// `ConnectionError` begins with too, then the `publish` variants, which `PublishError` begins
/// with too; so `ClientError` keeps them variant for variant.
macro_rules! error_enums {
    (
        connection { $($connection:tt)* }
        publish { $($publish:tt)* }
        $(#[$c_meta:meta])* pub enum ConnectionError { $($c_own:tt)* }
        $(#[$p_meta:meta])* pub enum PublishError { $($p_own:tt)* }
        $(#[$k_meta:meta])* pub enum ClientError { $($k_own:tt)* }
    ) => {
        $(#[$c_meta])* pub enum ConnectionError { $($connection)* $($c_own)* }
        $(#[$p_meta])* pub enum PublishError { $($publish)* $($p_own)* }
        $(#[$k_meta])* pub enum ClientError { $($connection)* $($publish)* $($k_own)* }
    };
}

error_enums! {
    connection {
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
    }

    publish {
        /// The topic is not a valid topic name; nothing was sent.
        #[error("invalid topic: {0}")]
        InvalidTopic(TopicError),
        /// The `reply_to` given in [`crate::PublishOptions`] is not a valid topic name; nothing was
        /// sent.
        #[error("invalid reply_to topic: {0}")]
        InvalidReplyTo(TopicError),
        /// The payload is larger than the broker accepts (or, for a datagram, than one datagram
        /// holds); nothing was sent.
        #[error("payload of {size} bytes exceeds the broker's maximum of {max} bytes")]
        PayloadTooLarge {
            /// The payload's size (for a datagram, the encoded datagram's).
            size: usize,
            /// The broker's `max_payload_bytes` (for a datagram, the largest datagram).
            max: u32,
        },
        /// The publish carries more headers than the broker accepts (`max_headers` in `Welcome`);
        /// nothing was sent.
        #[error("{count} headers exceed the broker's maximum of {max}")]
        TooManyHeaders {
            /// How many headers the publish carries.
            count: usize,
            /// The broker's `max_headers`.
            max: u32,
        },
        /// The publish's header keys and values are larger than the broker accepts
        /// (`max_header_bytes` in `Welcome`); nothing was sent.
        #[error("headers of {size} bytes exceed the broker's maximum of {max} bytes")]
        HeadersTooLarge {
            /// Bytes of the header keys and values.
            size: usize,
            /// The broker's `max_header_bytes`.
            max: u32,
        },
        /// An acknowledged publish named a message id that another acknowledged publish of this
        /// client is still waiting with; nothing was sent.
        #[error("message id {message_id} is already waiting for its acknowledgement")]
        MessageIdInFlight {
            /// The message id.
            message_id: u64,
        },
    }

    /// Why the client could not connect, or why its connection cannot carry an operation now:
    /// what [`crate::ClientBuilder::connect`] returns, and what every other error holds when the
    /// connection is at fault.
    #[derive(Debug, Clone, thiserror::Error)]
    #[non_exhaustive]
    pub enum ConnectionError {
        /// A step of connecting, or of a connection-level operation, did not finish in time; the
        /// string says which.
        #[error("timed out {0}")]
        Timeout(&'static str),
    }

    /// Why a publish failed ([`crate::Client::publish`] and the other `publish` methods, and
    /// [`crate::Client::send_to`]).
    #[derive(Debug, Clone, thiserror::Error)]
    #[non_exhaustive]
    pub enum PublishError {
        /// The frame could not be encoded, e.g. headers push it over the broker's maximum frame
        /// size; nothing was sent.
        #[error(transparent)]
        Encode(#[from] Arc<EncodeError>),
        /// The value could not be encoded as a typed payload (`publish_json`, `publish_msgpack`);
        /// nothing was sent.
        #[error(transparent)]
        Payload(#[from] Arc<PayloadError>),
        /// The broker refused an acknowledged publish: the topic is not allowed, the payload is
        /// too large, or the message id was missing. The message was not routed; the connection
        /// stays usable.
        #[error("the broker rejected the publish to {topic}: {reason} ({code:?})")]
        Rejected {
            /// The topic of the refused publish.
            topic: String,
            /// The refused publish's message id.
            message_id: Option<u64>,
            /// The broker's error code.
            code: ErrorCode,
            /// The broker's reason.
            reason: String,
        },
        /// The publish was made while reconnecting and the outbound buffer is full
        /// ([`crate::OutboundBuffer::max_messages`]); the message was not kept.
        #[error("the outbound buffer is full: {capacity} messages already wait for the reconnect")]
        OutboundBufferFull {
            /// The buffer's `max_messages`.
            capacity: usize,
        },
        /// An acknowledged publish got no acknowledgement in time; the message may or may not
        /// have been delivered.
        #[error("timed out publish acknowledgement")]
        AckTimeout,
        /// The connection could not carry the publish.
        #[error(transparent)]
        Connection(#[from] ConnectionError),
    }

    /// Why a client operation failed: the umbrella over [`ConnectionError`], [`PublishError`],
    /// [`SubscribeError`] and [`RequestError`], and what operations without their own error
    /// (ping, unsubscribe, flush, close, respond) return.
    #[derive(Debug, Clone, thiserror::Error)]
    #[non_exhaustive]
    pub enum ClientError {
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
        /// A filter given to `subscribe` is not a valid filter; nothing was sent.
        #[error("invalid subscription filter: {0}")]
        InvalidFilter(TopicError),
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
        /// A publish made while reconnecting found the outbound buffer full
        /// ([`crate::OutboundBuffer::max_messages`]); the message was not kept.
        #[error("the outbound buffer is full: {capacity} messages already wait for the reconnect")]
        OutboundBufferFull {
            /// The buffer's `max_messages`.
            capacity: usize,
        },
    }
}

/// Why a subscribe failed ([`crate::Client::subscribe`] and the other `subscribe` methods,
/// [`crate::Client::serve`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SubscribeError {
    /// The filter is not a valid filter; nothing was sent.
    #[error("invalid subscription filter: {0}")]
    InvalidFilter(TopicError),
    /// The broker answered with an error (not authorized, too many subscriptions, ...); the
    /// connection stays usable.
    #[error("the broker refused the request: {reason} ({code:?})")]
    Refused {
        /// The broker's error code.
        code: ErrorCode,
        /// The broker's reason.
        reason: String,
    },
    /// The request could not be encoded (larger than the broker's frame limit); nothing was
    /// sent.
    #[error(transparent)]
    Encode(#[from] Arc<EncodeError>),
    /// The connection could not carry the request.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// Why a request failed ([`crate::Client::request`], [`crate::Client::request_with`]).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The request reached no subscription: the broker answered `NoResponders` at once.
    #[error("no responders on {topic}")]
    NoResponders {
        /// The topic the request was published to.
        topic: String,
    },
    /// No reply came in time.
    #[error("timed out waiting for a reply")]
    Timeout,
    /// The subscription that receives this client's replies ended while the request waited
    /// (e.g. the broker closed it as a slow consumer); the next request subscribes again.
    #[error("the reply inbox subscription ended: {reason}")]
    InboxEnded {
        /// Why it ended.
        reason: String,
    },
    /// Publishing the request failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// Subscribing to the reply inbox failed (a client's first request subscribes).
    #[error(transparent)]
    Inbox(#[from] SubscribeError),
    /// The client ended (closed, or gave up reconnecting) while the request waited for its
    /// reply. A connection lost meanwhile does not end the wait: the session's reply inbox
    /// is resumed with it.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
}

/// `From<$error>` for each target, by way of `$via`: the `Arc` that holds another crate's
/// error, or the operation's error a [`ClientError`] is made from.
macro_rules! from_via {
    ($error:ty => $via:ty => $($target:ty),+) => {
        $(impl From<$error> for $target {
            fn from(error: $error) -> Self {
                <$via>::from(error).into()
            }
        })+
    };
}

from_via!(TlsError => Arc<TlsError> => ConnectionError);
from_via!(EndpointError => Arc<EndpointError> => ConnectionError);
from_via!(EncodeError => Arc<EncodeError> => PublishError, SubscribeError);
from_via!(PayloadError => Arc<PayloadError> => PublishError);
from_via!(TlsError => ConnectionError => ClientError);
from_via!(EndpointError => ConnectionError => ClientError);
from_via!(EncodeError => PublishError => ClientError);
from_via!(PayloadError => PublishError => ClientError);

impl From<Arc<TlsError>> for ConnectionError {
    fn from(error: Arc<TlsError>) -> Self {
        ConnectionError::Tls(error)
    }
}

impl From<Arc<EndpointError>> for ConnectionError {
    fn from(error: Arc<EndpointError>) -> Self {
        ConnectionError::Endpoint(error)
    }
}

impl From<ConnectionError> for ClientError {
    fn from(error: ConnectionError) -> Self {
        match error {
            ConnectionError::Config { reason } => ClientError::Config { reason },
            ConnectionError::Tls(error) => ClientError::Tls(error),
            ConnectionError::Endpoint(error) => ClientError::Endpoint(error),
            ConnectionError::Resolve { addr, reason } => ClientError::Resolve { addr, reason },
            ConnectionError::Connect { reason } => ClientError::Connect { reason },
            ConnectionError::Certificate { reason } => ClientError::Certificate { reason },
            ConnectionError::BrokerCertificate { reason } => {
                ClientError::BrokerCertificate { reason }
            }
            ConnectionError::Refused { code, reason } => ClientError::Refused { code, reason },
            ConnectionError::ConnectionLost { reason } => ClientError::ConnectionLost { reason },
            ConnectionError::Protocol { reason } => ClientError::Protocol { reason },
            ConnectionError::Timeout(what) => ClientError::Timeout(what),
            ConnectionError::Closed => ClientError::Closed,
            ConnectionError::Disconnected { reason } => ClientError::Disconnected { reason },
        }
    }
}

impl From<PublishError> for ClientError {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::InvalidTopic(error) => ClientError::InvalidTopic(error),
            PublishError::InvalidReplyTo(error) => ClientError::InvalidReplyTo(error),
            PublishError::PayloadTooLarge { size, max } => {
                ClientError::PayloadTooLarge { size, max }
            }
            PublishError::TooManyHeaders { count, max } => {
                ClientError::TooManyHeaders { count, max }
            }
            PublishError::HeadersTooLarge { size, max } => {
                ClientError::HeadersTooLarge { size, max }
            }
            PublishError::Encode(error) => ClientError::Encode(error),
            PublishError::Payload(error) => ClientError::Payload(error),
            PublishError::Rejected {
                topic,
                message_id,
                code,
                reason,
            } => ClientError::PublishRejected {
                topic,
                message_id,
                code,
                reason,
            },
            PublishError::MessageIdInFlight { message_id } => {
                ClientError::MessageIdInFlight { message_id }
            }
            PublishError::OutboundBufferFull { capacity } => {
                ClientError::OutboundBufferFull { capacity }
            }
            PublishError::AckTimeout => ClientError::Timeout(ACK_TIMEOUT),
            PublishError::Connection(error) => error.into(),
        }
    }
}

impl From<SubscribeError> for ClientError {
    fn from(error: SubscribeError) -> Self {
        match error {
            SubscribeError::InvalidFilter(error) => ClientError::InvalidFilter(error),
            SubscribeError::Refused { code, reason } => ClientError::Request { code, reason },
            SubscribeError::Encode(error) => ClientError::Encode(error),
            SubscribeError::Connection(error) => error.into(),
        }
    }
}

impl From<RequestError> for ClientError {
    fn from(error: RequestError) -> Self {
        match error {
            RequestError::NoResponders { topic } => ClientError::NoResponders { topic },
            RequestError::Timeout => ClientError::Timeout(REPLY_TIMEOUT),
            RequestError::InboxEnded { reason } => ClientError::InboxEnded { reason },
            RequestError::Publish(error) => error.into(),
            RequestError::Inbox(error) => error.into(),
            RequestError::Connection(error) => error.into(),
        }
    }
}

/// What [`ClientError::Timeout`] says for [`PublishError::AckTimeout`].
const ACK_TIMEOUT: &str = "publish acknowledgement";

/// What [`ClientError::Timeout`] says for [`RequestError::Timeout`].
const REPLY_TIMEOUT: &str = "waiting for a reply";

#[cfg(test)]
mod tests {
    //! Every operation's error becomes the `ClientError` of the same name and message.

    #![allow(clippy::panic)] // A failed expectation in a test panics on purpose.

    use super::*;

    #[test]
    fn operation_errors_become_the_client_error_of_the_same_name_and_message() {
        let cases: Vec<(String, ClientError)> = vec![
            (
                RequestError::NoResponders { topic: "a".into() }.to_string(),
                RequestError::NoResponders { topic: "a".into() }.into(),
            ),
            (
                RequestError::Timeout.to_string(),
                RequestError::Timeout.into(),
            ),
            (
                PublishError::AckTimeout.to_string(),
                PublishError::AckTimeout.into(),
            ),
            (
                SubscribeError::Refused {
                    code: ErrorCode::NOT_AUTHORIZED,
                    reason: "no".into(),
                }
                .to_string(),
                SubscribeError::Refused {
                    code: ErrorCode::NOT_AUTHORIZED,
                    reason: "no".into(),
                }
                .into(),
            ),
            (
                RequestError::Publish(PublishError::Connection(ConnectionError::Closed))
                    .to_string(),
                RequestError::Publish(PublishError::Connection(ConnectionError::Closed)).into(),
            ),
        ];
        for (message, error) in cases {
            assert_eq!(message, error.to_string());
        }
        assert!(matches!(
            ClientError::from(RequestError::NoResponders { topic: "a".into() }),
            ClientError::NoResponders { .. }
        ));
        assert!(matches!(
            ClientError::from(RequestError::Timeout),
            ClientError::Timeout("waiting for a reply")
        ));
        assert!(matches!(
            ClientError::from(PublishError::AckTimeout),
            ClientError::Timeout("publish acknowledgement")
        ));
        assert!(matches!(
            ClientError::from(SubscribeError::Refused {
                code: ErrorCode::NOT_AUTHORIZED,
                reason: "no".into(),
            }),
            ClientError::Request {
                code: ErrorCode::NOT_AUTHORIZED,
                ..
            }
        ));
        assert!(matches!(
            ClientError::from(RequestError::Inbox(SubscribeError::Connection(
                ConnectionError::Certificate {
                    reason: "expired".into()
                }
            ))),
            ClientError::Certificate { .. }
        ));
    }
}
