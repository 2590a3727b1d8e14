//! Where the client stands with the broker: [`ConnectionState`], and why it stopped for good
//! ([`DisconnectReason`]).
//!
//! These are plain values: [`crate::connect::session`] publishes them through a
//! `tokio::sync::watch` channel and logs every change.

use std::fmt;

use cassini_protocol::SessionId;

/// The client's connection to the broker, from [`crate::Client::state`] and
/// [`crate::Client::state_changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Connected, with a session attached.
    Connected {
        /// The session: the same as before a reconnect when `resumed`, a new one otherwise.
        session_id: SessionId,
        /// Whether this connection resumed a session: the previous connection's, or on the
        /// first connection the one `resume_session` or `session_name` named, if the broker
        /// had it. `false` for a new session, and after the broker had forgotten the session
        /// (its subscriptions were made again: see [`crate::Gap::SessionLost`]).
        resumed: bool,
    },
    /// The connection was lost and the client is trying to get it back (see
    /// [`crate::ReconnectPolicy`]). Publishes are buffered, other requests fail with
    /// [`crate::ConnectionError::Disconnected`], subscriptions stay open.
    Reconnecting {
        /// The attempt under way or about to start, counting from 1.
        attempt: u32,
        /// Why the connection was lost, or why the last attempt failed.
        reason: String,
    },
    /// Disconnected for good: the client will not connect again, every subscription has ended
    /// and every operation fails.
    Disconnected {
        /// Why.
        reason: DisconnectReason,
    },
}

impl ConnectionState {
    /// Whether the client is connected now.
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// Whether the client has stopped for good.
    pub fn is_disconnected(&self) -> bool {
        matches!(self, ConnectionState::Disconnected { .. })
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionState::Connected {
                session_id,
                resumed: true,
            } => write!(f, "connected, session {session_id} resumed"),
            ConnectionState::Connected { session_id, .. } => {
                write!(f, "connected, session {session_id}")
            }
            ConnectionState::Reconnecting { attempt, reason } => {
                write!(f, "reconnecting (attempt {attempt}): {reason}")
            }
            ConnectionState::Disconnected { reason } => write!(f, "disconnected: {reason}"),
        }
    }
}

/// Why the client stopped for good.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// [`crate::Client::close`] was called, the client was dropped, or the broker closed the
    /// connection normally.
    Closed,
    /// A newer connection with the same certificate identity resumed this client's session
    /// (`SESSION_TAKEN_OVER`). Reconnecting would only take it back, so the client does not.
    SessionTakenOver,
    /// The broker or the TLS handshake refused this client in a way retrying cannot fix: a
    /// certificate, the protocol version, a protocol error.
    Refused {
        /// What was refused, and why.
        reason: String,
    },
    /// The connection was lost and reconnecting is disabled ([`crate::ReconnectPolicy`]).
    ConnectionLost {
        /// What went wrong.
        reason: String,
    },
    /// Reconnecting failed for [`crate::ReconnectPolicy::give_up_after`].
    GaveUp {
        /// How many attempts were made.
        attempts: u32,
        /// Why the last one failed.
        reason: String,
    },
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Closed => f.write_str("closed"),
            DisconnectReason::SessionTakenOver => {
                f.write_str("the session was taken over by a newer connection of this identity")
            }
            DisconnectReason::Refused { reason } => write!(f, "refused: {reason}"),
            DisconnectReason::ConnectionLost { reason } => {
                write!(f, "connection lost (reconnecting is disabled): {reason}")
            }
            DisconnectReason::GaveUp { attempts, reason } => write!(
                f,
                "gave up reconnecting after {attempts} attempts; the last failed with: {reason}"
            ),
        }
    }
}
