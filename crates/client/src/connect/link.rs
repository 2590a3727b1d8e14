//! What every part of the client shares about its one connection.
//!
//! The [`Link`] holds the quinn connection, the broker's `Welcome`, and the facts that decide
//! what a failed operation reports: whether the user is closing the client (a flag every
//! connection of the client shares), whether this client closed the connection for a protocol
//! violation, and otherwise how quinn says it ended. A reconnect makes a new `Link`. It does not
//! read or write any stream.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use cassini_protocol::{ErrorCode, GoingAway, Limits, TopicLimits, Welcome};
use quinn::VarInt;

use crate::connect::disconnect::{connection_error, Phase};
use crate::error::ConnectionError;
use crate::sync::lock;

/// The connection and what is known about it.
#[derive(Debug)]
pub(crate) struct Link {
    /// The QUIC connection to the broker.
    connection: quinn::Connection,
    /// The broker's answer to `Hello`: session, identity and limits.
    welcome: Welcome,
    /// Set when the user starts closing the client: operations then report `Closed`. Shared by
    /// every connection of the client.
    closing: Arc<AtomicBool>,
    /// Set when this client closed the connection because the broker broke the protocol.
    violation: OnceLock<String>,
    /// Set when this client closed the connection because the broker stopped answering pings.
    unresponsive: OnceLock<String>,
    /// The last `GoingAway` the broker sent.
    going_away: Mutex<Option<GoingAway>>,
    /// Set once the client has seen the connection end ([`Link::noticed_dead`]).
    dead: AtomicBool,
}

impl Link {
    pub(crate) fn new(
        connection: quinn::Connection,
        welcome: Welcome,
        closing: Arc<AtomicBool>,
    ) -> Self {
        Self {
            connection,
            welcome,
            closing,
            violation: OnceLock::new(),
            unresponsive: OnceLock::new(),
            going_away: Mutex::new(None),
            dead: AtomicBool::new(false),
        }
    }

    pub(crate) fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    pub(crate) fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    pub(crate) fn limits(&self) -> Limits {
        self.welcome.limits
    }

    pub(crate) fn max_frame_bytes(&self) -> u32 {
        self.welcome.limits.max_frame_bytes
    }

    /// The topic rules announced by the broker.
    pub(crate) fn topic_limits(&self) -> TopicLimits {
        let limits = &self.welcome.limits;
        TopicLimits {
            max_bytes: limits.max_topic_bytes as usize,
            max_depth: limits.max_topic_depth as usize,
        }
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Whether the connection has ended, as quinn knows it now (it takes the connection's
    /// lock: for paths where something already failed).
    pub(crate) fn is_dead(&self) -> bool {
        if self.noticed_dead() {
            return true;
        }
        let dead = self.connection.close_reason().is_some();
        if dead {
            self.mark_dead();
        }
        dead
    }

    /// Whether the client has seen the connection end: set by the task that watches it as
    /// soon as quinn reports the end, and by every [`Link::is_dead`] that finds it. One load,
    /// for the publish path, which must not take the connection's lock per message.
    pub(crate) fn noticed_dead(&self) -> bool {
        self.dead.load(Ordering::Acquire)
    }

    /// Records that the connection has ended.
    pub(crate) fn mark_dead(&self) {
        self.dead.store(true, Ordering::Release);
    }

    pub(crate) fn set_going_away(&self, going_away: GoingAway) {
        *lock(&self.going_away) = Some(going_away);
    }

    pub(crate) fn going_away(&self) -> Option<GoingAway> {
        lock(&self.going_away).clone()
    }

    /// Closes the connection because the broker broke the protocol.
    pub(crate) fn protocol_violation(&self, code: ErrorCode, reason: &str) {
        tracing::error!(code = ?code, %reason, "the broker broke the protocol; closing the connection");
        let _ = self.violation.set(reason.to_owned());
        self.connection
            .close(VarInt::from_u32(code.value()), reason.as_bytes());
    }

    /// Closes the connection because the broker left a ping unanswered for `waited`: it is
    /// lost, and the session only detaches (the broker, if it still runs, keeps it).
    pub(crate) fn unresponsive(&self, waited: std::time::Duration) {
        let reason = format!("the broker did not answer a ping within {waited:?}");
        tracing::warn!(%reason, "closing the connection");
        let _ = self.unresponsive.set(reason.clone());
        self.connection
            .close(VarInt::from_u32(0), reason.as_bytes());
    }

    /// Why the connection can no longer be used, for an operation that just failed.
    pub(crate) fn error(&self) -> ConnectionError {
        if let Some(reason) = self.violation.get() {
            return ConnectionError::Protocol {
                reason: reason.clone(),
            };
        }
        if self.is_closing() {
            return ConnectionError::Closed;
        }
        if let Some(reason) = self.unresponsive.get() {
            return ConnectionError::ConnectionLost {
                reason: reason.clone(),
            };
        }
        match self.connection.close_reason() {
            Some(error) => connection_error(&error, Phase::Established),
            None => ConnectionError::ConnectionLost {
                reason: "the control stream failed".to_owned(),
            },
        }
    }
}
