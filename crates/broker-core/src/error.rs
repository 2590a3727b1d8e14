//! The broker's errors, and the one place they become wire codes.

use cassini_protocol::{DecodeError, ErrorCode, TopicError};

use crate::memory::MemoryError;
use crate::storage::StorageError;
use crate::transport::TransportError;

/// Everything that can go wrong in the broker that a peer may hear about.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum BrokerError {
    /// A frame could not be decoded.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A frame arrived on a stream where it has no meaning, or out of order.
    #[error("protocol violation: {0}")]
    ProtocolViolation(String),
    /// The client speaks a protocol version this broker does not.
    #[error("unsupported protocol version {requested}; this broker speaks {supported}")]
    UnsupportedVersion {
        /// The version in `Hello`.
        requested: u32,
        /// The version this broker speaks.
        supported: u32,
    },
    /// No `Hello` within the deadline.
    #[error("no Hello within {0:?}")]
    HelloTimeout(std::time::Duration),
    /// The cluster did not commit this node's claim of a named session within the claim
    /// timeout (no majority reachable).
    #[error("the cluster did not confirm this session's claim within {0:?} (no quorum); try another node")]
    NoQuorum(std::time::Duration),
    /// Another node claimed the session after this connection's claim.
    #[error("session taken over on node {0}")]
    SessionTakenOverOn(String),
    /// A topic name was invalid.
    #[error("invalid topic: {0}")]
    InvalidTopic(TopicError),
    /// A subscription filter was invalid.
    #[error("invalid filter: {0}")]
    InvalidFilter(TopicError),
    /// A payload exceeded the limit.
    #[error("payload of {size} bytes exceeds the maximum of {max} bytes")]
    PayloadTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// A publish carried more headers than the limit.
    #[error("{count} headers exceed the maximum of {max}")]
    TooManyHeaders {
        /// How many it carried (a count above the decoder's ceiling shows as the ceiling + 1).
        count: usize,
        /// The limit.
        max: u32,
    },
    /// A publish's header keys and values exceeded the limit.
    #[error("headers of {size} bytes exceed the maximum of {max} bytes")]
    HeadersTooLarge {
        /// Bytes of its header keys and values.
        size: usize,
        /// The limit.
        max: u32,
    },
    /// The memory budget refused the work.
    #[error("{0}")]
    Memory(#[from] MemoryError),
    /// The session holds the most subscriptions it may.
    #[error("session already has the maximum of {0} subscriptions")]
    TooManySubscriptions(u32),
    /// The identity holds the most subscriptions it may over all its sessions.
    #[error("the identity already holds the maximum of {0} subscriptions over its sessions")]
    TooManySubscriptionsForIdentity(u32),
    /// A `Hello` gave positions for more subscriptions than a session may hold.
    #[error("Hello lists positions for {listed} subscriptions; a session holds at most {max}")]
    TooManyPositions {
        /// Positions listed.
        listed: usize,
        /// `limits.max_subscriptions_per_session`.
        max: u32,
    },
    /// The client left the broker's answers on a stream unread for
    /// [`crate::connection::framed::ANSWER_WRITE_TIMEOUT`] (its flow control held them).
    #[error("answers on the {0} stream went unread for 10 s")]
    AnswersUnread(&'static str),
    /// An unsubscribe named an unknown subscription.
    #[error("no subscription {0} in this session")]
    UnknownSubscription(u64),
    /// A resume named a session that does not exist.
    #[error("session {0} does not exist or has expired")]
    SessionNotFound(String),
    /// A resume named a session owned by another identity.
    #[error("session belongs to another identity")]
    SessionIdentityMismatch,
    /// A `Hello` named an invalid session name.
    #[error(
        "invalid session name {0:?}: 1 to 128 bytes of ASCII letters, digits, '-', '_' and '.'"
    )]
    InvalidSessionName(String),
    /// The retained store holds values for the most topics it may.
    #[error("the retained store is full ({0} topics); clear a retained topic first")]
    RetainedStoreFull(usize),
    /// The retained store's values hold the most bytes they may together.
    #[error("the retained store is full ({0} bytes); clear a retained topic first")]
    RetainedBytesFull(u64),
    /// The publishing identity holds its quota of retained values.
    #[error("{0}")]
    RetainedQuotaExceeded(RetainedQuota),
    /// The identity holds the most sessions one identity may, and none of them is detached.
    #[error(
        "identity already has the maximum of {0} sessions, all attached; close one or resume it"
    )]
    TooManySessionsForIdentity(usize),
    /// A publish asked for an acknowledgement but carried no message id.
    #[error("a publish with ack must carry a message id")]
    MissingMessageId,
    /// A subscribe option is out of range.
    #[error("invalid subscribe option: {0}")]
    InvalidOption(String),
    /// The broker holds the most connections it may.
    #[error("the broker is at its limit of {0} connections")]
    TooManyConnections(usize),
    /// The identity holds the most connections one identity may.
    #[error("identity {identity:?} already has the maximum of {max} connections")]
    TooManyConnectionsForIdentity {
        /// The certificate identity.
        identity: String,
        /// The limit.
        max: usize,
    },
    /// The ACL does not allow the identity this publish or subscription.
    #[error("not authorized to {action} {target:?}")]
    NotAuthorized {
        /// `"publish to"`, `"subscribe to"`, `"ask for replies on"` or `"join queue group"`.
        action: &'static str,
        /// The topic or filter.
        target: String,
    },
    /// The subscription's queue bound would take the session over its pending-bytes budget.
    #[error(
        "the session's subscriptions may queue at most {max} bytes together; {in_use} are \
         taken and this subscription asks for {requested}"
    )]
    PendingBytesLimit {
        /// The session's budget.
        max: u64,
        /// What the session's other subscriptions already reserve.
        in_use: u64,
        /// What this subscription's queue bound reserves.
        requested: u64,
    },
    /// A datagram subscription on a connection without QUIC datagrams.
    #[error("this connection did not negotiate QUIC datagrams; subscribe with reliable delivery")]
    DatagramsUnsupported,
    /// The broker is shutting down.
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The broker told this connection it is going away, with the operator's reason.
    #[error("going away: {0}")]
    GoingAway(String),
    /// The transport failed.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The disk store failed, is full, or could not be read on start.
    #[error("{0}")]
    Storage(#[from] StorageError),
    /// A broker component failed; details are logged, never sent.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Which per-identity retained quota a publish would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetainedQuota {
    /// `limits.max_retained_topics_per_identity`.
    #[error("this identity already set retained values on {0} topics, its quota; clear one first")]
    Topics(u64),
    /// `limits.max_retained_bytes_per_identity`.
    #[error("this identity's retained values would exceed its quota of {0} bytes")]
    Bytes(u64),
}

impl BrokerError {
    /// The code a peer sees for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            BrokerError::Decode(DecodeError::FrameTooLarge { .. }) => ErrorCode::FRAME_TOO_LARGE,
            BrokerError::Decode(_) => ErrorCode::MALFORMED_FRAME,
            BrokerError::ProtocolViolation(_) => ErrorCode::PROTOCOL_VIOLATION,
            BrokerError::UnsupportedVersion { .. } => ErrorCode::UNSUPPORTED_VERSION,
            BrokerError::HelloTimeout(_) => ErrorCode::HELLO_TIMEOUT,
            BrokerError::NoQuorum(_) => ErrorCode::NO_QUORUM,
            BrokerError::SessionTakenOverOn(_) => ErrorCode::SESSION_TAKEN_OVER,
            BrokerError::InvalidTopic(_) => ErrorCode::INVALID_TOPIC,
            BrokerError::InvalidFilter(_) => ErrorCode::INVALID_FILTER,
            BrokerError::PayloadTooLarge { .. } => ErrorCode::PAYLOAD_TOO_LARGE,
            BrokerError::TooManyHeaders { .. } => ErrorCode::TOO_MANY_HEADERS,
            BrokerError::HeadersTooLarge { .. } => ErrorCode::HEADERS_TOO_LARGE,
            BrokerError::Memory(MemoryError::BudgetExceeded { .. }) => {
                ErrorCode::MEMORY_BUDGET_EXCEEDED
            }
            BrokerError::Memory(MemoryError::PartialFramesLimit { .. }) => {
                ErrorCode::PARTIAL_FRAMES_LIMIT
            }
            BrokerError::TooManySubscriptions(_)
            | BrokerError::TooManySubscriptionsForIdentity(_)
            | BrokerError::TooManyPositions { .. } => ErrorCode::TOO_MANY_SUBSCRIPTIONS,
            BrokerError::UnknownSubscription(_) => ErrorCode::UNKNOWN_SUBSCRIPTION,
            BrokerError::AnswersUnread(_) => ErrorCode::SLOW_CONSUMER,
            BrokerError::SessionNotFound(_) => ErrorCode::SESSION_NOT_FOUND,
            BrokerError::SessionIdentityMismatch => ErrorCode::SESSION_IDENTITY_MISMATCH,
            BrokerError::InvalidSessionName(_) => ErrorCode::INVALID_SESSION_NAME,
            BrokerError::TooManyConnections(_) => ErrorCode::TOO_MANY_CONNECTIONS,
            BrokerError::TooManyConnectionsForIdentity { .. } => {
                ErrorCode::TOO_MANY_CONNECTIONS_FOR_IDENTITY
            }
            BrokerError::NotAuthorized { .. } => ErrorCode::NOT_AUTHORIZED,
            BrokerError::PendingBytesLimit { .. } => ErrorCode::PENDING_BYTES_LIMIT,
            BrokerError::DatagramsUnsupported => ErrorCode::DATAGRAMS_UNSUPPORTED,
            BrokerError::RetainedStoreFull(_) | BrokerError::RetainedBytesFull(_) => {
                ErrorCode::RETAINED_STORE_FULL
            }
            BrokerError::RetainedQuotaExceeded(_) => ErrorCode::RETAINED_QUOTA_EXCEEDED,
            BrokerError::TooManySessionsForIdentity(_) => ErrorCode::TOO_MANY_SESSIONS_FOR_IDENTITY,
            BrokerError::InvalidOption(_) => ErrorCode::INVALID_OPTION,
            BrokerError::MissingMessageId => ErrorCode::MISSING_MESSAGE_ID,
            BrokerError::ShuttingDown | BrokerError::GoingAway(_) => {
                ErrorCode::SERVER_SHUTTING_DOWN
            }
            BrokerError::Transport(TransportError::Reset(_) | TransportError::Stopped(_)) => {
                ErrorCode::PROTOCOL_VIOLATION
            }
            BrokerError::Storage(StorageError::Full { .. }) => ErrorCode::STORAGE_FULL,
            BrokerError::Storage(StorageError::NoQuorum(_)) => ErrorCode::NO_QUORUM,
            BrokerError::Storage(_) => ErrorCode::STORAGE_FAILED,
            BrokerError::Transport(_) | BrokerError::Internal(_) => ErrorCode::INTERNAL,
        }
    }

    /// The reason a peer sees: the message, except for internal errors whose details stay in
    /// the log.
    pub fn reason(&self) -> String {
        match self {
            BrokerError::Transport(TransportError::Reset(_) | TransportError::Stopped(_)) => {
                self.to_string()
            }
            BrokerError::Transport(_) | BrokerError::Internal(_) => "internal error".to_string(),
            BrokerError::Storage(StorageError::Full { .. } | StorageError::NoQuorum(_)) => {
                self.to_string()
            }
            BrokerError::Storage(_) => {
                "the broker could not store the message; it was not acknowledged".to_string()
            }
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_never_reach_the_peer() {
        let err = BrokerError::Internal("actor 0.17 mailbox closed".into());
        assert_eq!(err.code(), ErrorCode::INTERNAL);
        assert_eq!(err.reason(), "internal error");
    }

    #[test]
    fn storage_errors_have_their_own_codes_and_hide_paths() {
        let full = BrokerError::from(StorageError::Full { limit: 10 });
        assert_eq!(full.code(), ErrorCode::STORAGE_FULL);
        assert!(full.reason().contains("storage is full"));
        let failed = BrokerError::from(StorageError::WriteFailed("/secret/path: EIO".into()));
        assert_eq!(failed.code(), ErrorCode::STORAGE_FAILED);
        assert!(!failed.reason().contains("/secret"));
    }

    #[test]
    fn oversized_frames_and_garbage_have_distinct_codes() {
        let big = BrokerError::from(DecodeError::FrameTooLarge {
            declared: 9,
            max: 1,
        });
        let bad = BrokerError::from(DecodeError::Malformed("x".into()));
        assert_eq!(big.code(), ErrorCode::FRAME_TOO_LARGE);
        assert_eq!(bad.code(), ErrorCode::MALFORMED_FRAME);
        assert!(big.reason().contains("exceeds the maximum"));
    }
}
