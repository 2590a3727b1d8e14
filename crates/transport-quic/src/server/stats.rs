//! What the accept path counts: handshakes accepted and refused (by reason), Retry packets,
//! and live connections a reload closed.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of the accept path.
#[derive(Debug, Default)]
pub struct AcceptStats {
    /// Handshakes that completed and were handed to the broker.
    pub accepted: AtomicU64,
    /// Handshakes that failed, for any reason (the sum of the `refused_*` counters).
    pub refused: AtomicU64,
    /// Refused by TLS: a missing, untrusted, expired or otherwise bad client certificate, or
    /// any other TLS alert.
    pub refused_tls: AtomicU64,
    /// Not completed within the handshake timeout (or the client's packets stopped).
    pub refused_timeout: AtomicU64,
    /// The client certificate named no usable identity.
    pub refused_no_identity: AtomicU64,
    /// Anything else: the client went away, a transport error, the endpoint refused.
    pub refused_other: AtomicU64,
    /// Retry packets sent to validate a client's address.
    pub retries: AtomicU64,
    /// Live connections closed by a reload because their certificate no longer verifies.
    pub revoked: AtomicU64,
}

/// Why a handshake failed, for counting and logging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HandshakeFailure {
    /// TLS refused it (certificate problems are the usual cause).
    Tls,
    /// It took too long.
    Timeout,
    /// The certificate named no identity.
    NoIdentity,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// Every reason, in a fixed order.
    pub const ALL: [HandshakeFailure; 4] = [
        HandshakeFailure::Tls,
        HandshakeFailure::Timeout,
        HandshakeFailure::NoIdentity,
        HandshakeFailure::Other,
    ];

    /// The label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Tls => "tls",
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NoIdentity => "no_identity",
            HandshakeFailure::Other => "other",
        }
    }

    pub(super) fn of(err: &quinn::ConnectionError) -> Self {
        match err {
            // Refused here, or by the client (a TLS alert in its CONNECTION_CLOSE: it did
            // not accept the broker's certificate).
            quinn::ConnectionError::TransportError(err)
                if (0x100..0x200).contains(&u64::from(err.code)) =>
            {
                HandshakeFailure::Tls
            }
            quinn::ConnectionError::ConnectionClosed(close)
                if (0x100..0x200).contains(&u64::from(close.error_code)) =>
            {
                HandshakeFailure::Tls
            }
            quinn::ConnectionError::TimedOut => HandshakeFailure::Timeout,
            _ => HandshakeFailure::Other,
        }
    }
}

impl AcceptStats {
    /// Refused handshakes for `reason`.
    pub fn refused_for(&self, reason: HandshakeFailure) -> u64 {
        self.counter(reason).load(Ordering::Relaxed)
    }

    fn counter(&self, reason: HandshakeFailure) -> &AtomicU64 {
        match reason {
            HandshakeFailure::Tls => &self.refused_tls,
            HandshakeFailure::Timeout => &self.refused_timeout,
            HandshakeFailure::NoIdentity => &self.refused_no_identity,
            HandshakeFailure::Other => &self.refused_other,
        }
    }

    pub(super) fn refuse(&self, reason: HandshakeFailure) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        self.counter(reason).fetch_add(1, Ordering::Relaxed);
    }
}
