//! Every error code a peer can see, in one place.
//!
//! The same number space is used for QUIC application close codes (a whole connection), stream
//! reset/stop codes (one stream) and the `code` field of error frames (one request). A code is a
//! plain `u32` newtype so that a code this build does not know still round-trips and prints.
//! `docs/PROTOCOL.md` lists the same table; keep them in step.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A protocol error code with a stable number.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub u32);

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:expr, $text:expr; )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode($value); )*

            /// Every code this build knows, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// The symbolic name of a known code, `None` for a code this build does not know.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }

            /// A short human-readable description of the code.
            pub fn description(self) -> &'static str {
                match self.0 {
                    $( $value => $text, )*
                    _ => "unknown error code",
                }
            }
        }
    };
}

error_codes! {
    /// Closed on purpose, nothing went wrong.
    NORMAL = 0, "closed normally";
    /// The peer broke a rule of the protocol: a frame on the wrong stream, a frame out of order.
    PROTOCOL_VIOLATION = 1, "protocol violation";
    /// A frame could not be decoded.
    MALFORMED_FRAME = 2, "malformed frame";
    /// A frame declared a length above the maximum frame size.
    FRAME_TOO_LARGE = 3, "frame too large";
    /// The `Hello` named a protocol version the broker does not speak.
    UNSUPPORTED_VERSION = 4, "unsupported protocol version";
    /// No `Hello` arrived within the handshake deadline.
    HELLO_TIMEOUT = 5, "no hello within the deadline";
    /// Something failed inside the broker; the reason never carries internal details.
    INTERNAL = 6, "internal error";
    /// A publish named an invalid topic.
    INVALID_TOPIC = 10, "invalid topic";
    /// A subscribe named an invalid filter.
    INVALID_FILTER = 11, "invalid subscription filter";
    /// A publish payload exceeded the maximum payload size.
    PAYLOAD_TOO_LARGE = 12, "payload too large";
    /// The session already holds the maximum number of subscriptions.
    TOO_MANY_SUBSCRIPTIONS = 13, "too many subscriptions";
    /// An unsubscribe named a subscription the session does not have.
    UNKNOWN_SUBSCRIPTION = 14, "unknown subscription";
    /// A subscribe option was out of range.
    INVALID_OPTION = 15, "invalid subscribe option";
    /// A retained publish named a new topic while the retained store is full.
    RETAINED_STORE_FULL = 16, "retained store full";
    /// A publish asked for an acknowledgement without a message id.
    MISSING_MESSAGE_ID = 17, "acknowledged publish without a message id";
    /// The session's subscriptions would together queue more than the session's pending-bytes
    /// budget.
    PENDING_BYTES_LIMIT = 18, "session pending-bytes budget exhausted";
    /// A datagram subscription on a connection whose peer did not negotiate QUIC datagrams.
    DATAGRAMS_UNSUPPORTED = 19, "QUIC datagrams not negotiated on this connection";
    /// A resume named a session that does not exist (expired or never created).
    SESSION_NOT_FOUND = 20, "session not found";
    /// A resume named a session that belongs to another certificate identity.
    SESSION_IDENTITY_MISMATCH = 21, "session belongs to another identity";
    /// Another connection of the same identity resumed this session; do not reconnect.
    SESSION_TAKEN_OVER = 22, "session taken over by a newer connection";
    /// The broker could not open a subscription's stream in time: the client allows it no more
    /// unidirectional streams (QUIC `initial_max_streams_uni` / `MAX_STREAMS`). The
    /// subscription ended; a client must allow one stream per subscription.
    STREAM_LIMIT = 23, "the client allows no more subscription streams";
    /// A `Hello` named an invalid session name (empty, too long, or a character other than
    /// ASCII letters, digits, `-`, `_` and `.`).
    INVALID_SESSION_NAME = 24, "invalid session name";
    /// In a cluster with replicated session ownership: the node could not get its claim of the
    /// named session committed by a majority of the cluster's members within the claim timeout
    /// (3 s): it is cut off from the majority, or no leader is elected yet; or, closing a
    /// connection attached to a named session, the node has not heard the majority within its
    /// lease (2 s). Retry, another node first.
    NO_QUORUM = 25, "no quorum: this node cannot reach the cluster's majority";
    /// The subscription's queue overflowed under the `close` policy.
    SLOW_CONSUMER = 30, "subscription closed: slow consumer";
    /// The broker is shutting down.
    SERVER_SHUTTING_DOWN = 40, "server shutting down";
    /// The broker holds the maximum number of connections.
    TOO_MANY_CONNECTIONS = 41, "too many connections";
    /// The client's certificate identity holds the maximum number of connections.
    TOO_MANY_CONNECTIONS_FOR_IDENTITY = 42, "too many connections for this identity";
    /// The ACL does not allow this identity to publish to the topic or subscribe to the filter.
    NOT_AUTHORIZED = 50, "not authorized";
    /// After a reload, the connection's certificate no longer verifies (revoked, expired, or no
    /// longer issued by a trusted CA); or the reloaded CRL revokes the certificate of the
    /// connection's session, which ends.
    CERTIFICATE_REVOKED = 51, "certificate no longer valid";
    /// The connection's client certificate reached its `notAfter` while connected. The session
    /// is only detached: a renewed certificate for the same identity may resume it.
    CERTIFICATE_EXPIRED = 52, "certificate expired";
    /// Durable mode (or a named session's records in a cluster with members): storing the
    /// publish, or a subscription's record, would exceed the broker's limit; nothing stored was
    /// dropped. Retry later.
    STORAGE_FULL = 60, "storage full";
    /// Durable mode (or a cluster with members): the broker could not make the publish, a
    /// subscription's record or a named session's records durable (a write failed or was
    /// refused, or the store is closing); a publish was not acknowledged.
    STORAGE_FAILED = 61, "storage failure";
    /// A publish carried more headers than the broker's `max_headers` limit.
    TOO_MANY_HEADERS = 70, "too many headers";
    /// A publish's header keys and values together exceeded the broker's `max_header_bytes`.
    HEADERS_TOO_LARGE = 71, "headers too large";
    /// The broker holds as much as its memory budget allows: a publish or subscribe was refused.
    /// Retry later.
    MEMORY_BUDGET_EXCEEDED = 72, "broker memory budget exhausted";
    /// The partially received frames of the connection's certificate identity held more bytes
    /// than the broker allows per identity (or the broker's memory budget was exhausted while a
    /// frame was arriving).
    PARTIAL_FRAMES_LIMIT = 73, "too many bytes in partially received frames";
    /// A retained publish would take the publishing identity over its retained quota
    /// (`max_retained_topics_per_identity` or `max_retained_bytes_per_identity`). Clear one of
    /// its retained topics first.
    RETAINED_QUOTA_EXCEEDED = 75, "retained quota of this identity exceeded";
    /// A new session was refused: the identity holds `max_sessions_per_identity` sessions and
    /// all of them are attached (a detached one would have been ended to make room).
    TOO_MANY_SESSIONS_FOR_IDENTITY = 76, "too many sessions for this identity";
}

impl ErrorCode {
    /// The numeric value carried on the wire.
    pub fn value(self) -> u32 {
        self.0
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({})", self.0),
            None => write!(f, "ErrorCode({})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (code {})", self.description(), self.0)
    }
}

impl From<u32> for ErrorCode {
    fn from(value: u32) -> Self {
        ErrorCode(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_has_a_unique_value_and_a_name() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.0), "duplicate value {}", code.0);
            assert!(code.name().is_some());
            assert_ne!(code.description(), "unknown error code");
        }
    }

    #[test]
    fn unknown_codes_round_trip_and_print() {
        let code = ErrorCode::from(9999);
        assert_eq!(code.name(), None);
        assert_eq!(code.to_string(), "unknown error code (code 9999)");
        assert_eq!(format!("{code:?}"), "ErrorCode(9999)");
    }
}
