//! [`SubscriptionEnd`]: why a subscription's stream ended.

use std::fmt;

use cassini_protocol::ErrorCode;

use crate::connect::connection_state::DisconnectReason;
use crate::error::ConnectionError;

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
    pub(crate) fn after(error: &ConnectionError, reason: &DisconnectReason) -> Self {
        if *reason == DisconnectReason::SessionTakenOver {
            return SubscriptionEnd::SessionTakenOver;
        }
        match error {
            ConnectionError::Closed => SubscriptionEnd::Closed,
            ConnectionError::Protocol { reason } => SubscriptionEnd::ProtocolError {
                reason: reason.clone(),
            },
            ConnectionError::ConnectionLost { reason } => SubscriptionEnd::ConnectionLost {
                reason: reason.clone(),
            },
            other => SubscriptionEnd::ConnectionLost {
                reason: other.to_string(),
            },
        }
    }
}
