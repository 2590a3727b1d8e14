//! What a lost connection, or a failed attempt to get it back, means for the session: try
//! again, start a new session, or stop for good.
//!
//! One function decides, from the [`ClientError`] the loss reads as, so the task that
//! reconnects and a publish that meets a dead connection always agree. No I/O here.

use cassini_protocol::ErrorCode;

use crate::connection_state::DisconnectReason;
use crate::error::ClientError;

/// What to do after a connection, or an attempt to connect, failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loss {
    /// Connect again and resume the session.
    Retry,
    /// The broker does not know the session (it expired): connect again with a new session and
    /// subscribe again.
    SessionLost,
    /// Do not connect again.
    Final(DisconnectReason),
}

/// What `error` means for the session.
///
/// Transient failures are retried: timeouts, resets, unreachable or unresolvable brokers, and
/// broker closes that say "later" (`SERVER_SHUTTING_DOWN`, `TOO_MANY_CONNECTIONS`,
/// `HELLO_TIMEOUT`, `INTERNAL`). Refusals that would only repeat are final: certificates,
/// versions, protocol errors either way, another identity's session. `SESSION_TAKEN_OVER` is
/// final so that two clients with one identity do not take the session from each other
/// forever.
pub(crate) fn classify(error: &ClientError) -> Loss {
    let refused = || {
        Loss::Final(DisconnectReason::Refused {
            reason: error.to_string(),
        })
    };
    match error {
        ClientError::Closed => Loss::Final(DisconnectReason::Closed),
        ClientError::Refused { code, .. } => match *code {
            ErrorCode::SESSION_TAKEN_OVER => Loss::Final(DisconnectReason::SessionTakenOver),
            ErrorCode::SESSION_NOT_FOUND => Loss::SessionLost,
            ErrorCode::PROTOCOL_VIOLATION
            | ErrorCode::MALFORMED_FRAME
            | ErrorCode::FRAME_TOO_LARGE
            | ErrorCode::UNSUPPORTED_VERSION
            | ErrorCode::SESSION_IDENTITY_MISMATCH
            | ErrorCode::INVALID_SESSION_NAME => refused(),
            _ => Loss::Retry,
        },
        ClientError::Certificate { .. }
        | ClientError::BrokerCertificate { .. }
        | ClientError::Protocol { .. }
        | ClientError::Config { .. }
        | ClientError::Tls(_) => refused(),
        _ => Loss::Retry,
    }
}

#[cfg(test)]
mod tests;
