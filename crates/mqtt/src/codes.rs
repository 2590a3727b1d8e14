//! Cassini's error codes as MQTT reason codes: what a client reads when the broker refuses its
//! `CONNECT`, a publish or a subscription, or closes its connection.

use cassini_protocol::ErrorCode;

use crate::packets::{CloseCode, ConnectCode, PubCode, SubCode, UnsubCode};

/// The `CONNACK` code of a `Hello` the broker refused with `code`.
pub(crate) fn connect_refusal(code: ErrorCode) -> ConnectCode {
    match code {
        // The client id names a session another identity's client holds.
        ErrorCode::SESSION_IDENTITY_MISMATCH => ConnectCode::BadClientId,
        ErrorCode::CERTIFICATE_REVOKED
        | ErrorCode::CERTIFICATE_EXPIRED
        | ErrorCode::NOT_AUTHORIZED => ConnectCode::NotAuthorized,
        ErrorCode::INVALID_SESSION_NAME => ConnectCode::BadClientId,
        ErrorCode::TOO_MANY_CONNECTIONS
        | ErrorCode::TOO_MANY_CONNECTIONS_FOR_IDENTITY
        | ErrorCode::TOO_MANY_SESSIONS_FOR_IDENTITY => ConnectCode::QuotaExceeded,
        _ => ConnectCode::Unavailable,
    }
}

/// The MQTT 5 `DISCONNECT` reason of a connection the broker closed with `code`.
pub(crate) fn close_code(code: ErrorCode) -> CloseCode {
    match code {
        ErrorCode::SESSION_TAKEN_OVER => CloseCode::SessionTakenOver,
        ErrorCode::SERVER_SHUTTING_DOWN => CloseCode::ShuttingDown,
        ErrorCode::CERTIFICATE_REVOKED | ErrorCode::NOT_AUTHORIZED => CloseCode::NotAuthorized,
        ErrorCode::CERTIFICATE_EXPIRED => CloseCode::Administrative,
        ErrorCode::TOO_MANY_CONNECTIONS
        | ErrorCode::TOO_MANY_CONNECTIONS_FOR_IDENTITY
        | ErrorCode::TOO_MANY_SESSIONS_FOR_IDENTITY
        | ErrorCode::PARTIAL_FRAMES_LIMIT => CloseCode::QuotaExceeded,
        _ => CloseCode::Unspecified,
    }
}

/// The MQTT 5 `PUBACK` reason of a publish the broker refused with `code`.
pub(crate) fn pub_code(code: ErrorCode) -> PubCode {
    match code {
        ErrorCode::NOT_AUTHORIZED => PubCode::NotAuthorized,
        ErrorCode::INVALID_TOPIC => PubCode::TopicNameInvalid,
        ErrorCode::PAYLOAD_TOO_LARGE
        | ErrorCode::RETAINED_STORE_FULL
        | ErrorCode::RETAINED_QUOTA_EXCEEDED
        | ErrorCode::STORAGE_FULL
        | ErrorCode::MEMORY_BUDGET_EXCEEDED
        | ErrorCode::TOO_MANY_HEADERS
        | ErrorCode::HEADERS_TOO_LARGE => PubCode::QuotaExceeded,
        _ => PubCode::Unspecified,
    }
}

/// The `SUBACK` code of a subscription the broker refused with `code`.
/// The `UNSUBACK` reason for a broker's refusal of an unsubscribe.
pub(crate) fn unsub_code(code: ErrorCode) -> UnsubCode {
    match code {
        ErrorCode::NOT_AUTHORIZED => UnsubCode::NotAuthorized,
        ErrorCode::INVALID_FILTER => UnsubCode::FilterInvalid,
        _ => UnsubCode::Unspecified,
    }
}

pub(crate) fn sub_code(code: ErrorCode) -> SubCode {
    match code {
        ErrorCode::NOT_AUTHORIZED => SubCode::NotAuthorized,
        ErrorCode::INVALID_FILTER => SubCode::FilterInvalid,
        ErrorCode::TOO_MANY_SUBSCRIPTIONS
        | ErrorCode::PENDING_BYTES_LIMIT
        | ErrorCode::MEMORY_BUDGET_EXCEEDED => SubCode::QuotaExceeded,
        _ => SubCode::Unspecified,
    }
}
