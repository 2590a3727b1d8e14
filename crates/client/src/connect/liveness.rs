//! Noticing a broker that stopped answering, sooner than QUIC's idle timeout.
//!
//! A broker that crashed, or whose machine died, sends nothing more: the client learns it only
//! when the connection's idle timeout (30 s by default) runs out. With a single broker there is
//! nowhere else to go, and waiting out a short network outage keeps the connection (and its
//! in-flight data) alive. With several broker addresses (a cluster) another node can take over
//! at once, so the client pings the broker on the control stream and counts the connection as
//! lost when a ping goes unanswered for the [`Liveness`] timeout; the supervisor then
//! reconnects, trying the other addresses.

use std::time::Duration;

use crate::connect::control::handle::WeakControlHandle;

/// The pace of pings when the client knows several broker addresses ([`Liveness::Auto`]).
pub(crate) const AUTO_PING_INTERVAL: Duration = Duration::from_millis(500);
/// How long a ping may go unanswered under [`Liveness::Auto`].
pub(crate) const AUTO_PING_TIMEOUT: Duration = Duration::from_millis(1500);

/// How the client notices a broker that stopped answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Liveness {
    /// Pings every 500 ms, lost after 1.5 s without an answer, when the client knows more than
    /// one broker address (given, or learned from a cluster node's `Welcome`); otherwise
    /// [`Liveness::IdleTimeout`]. The default.
    #[default]
    Auto,
    /// Only QUIC's idle timeout ([`crate::QuicOptions`]) ends a silent connection.
    IdleTimeout,
    /// A ping every `interval` on the control stream; the connection counts as lost when one
    /// goes unanswered for `timeout`.
    Ping {
        /// Time between the answer to one ping and the next ping.
        interval: Duration,
        /// How long one ping may wait for its answer.
        timeout: Duration,
    },
}

/// The pings to send on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pings {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

impl Liveness {
    /// The pings this setting asks for, for a client with `several_addresses` or not.
    pub(crate) fn pings(self, several_addresses: bool) -> Option<Pings> {
        match self {
            Self::Auto if several_addresses => Some(Pings {
                interval: AUTO_PING_INTERVAL,
                timeout: AUTO_PING_TIMEOUT,
            }),
            Self::Auto | Self::IdleTimeout => None,
            Self::Ping { interval, timeout } => Some(Pings { interval, timeout }),
        }
    }

    /// Refuses a zero timeout, which would count every connection as lost.
    pub(crate) fn check(self) -> Result<(), String> {
        match self {
            Self::Ping { timeout, .. } if timeout.is_zero() => {
                Err("the liveness ping timeout must be longer than zero".to_owned())
            }
            _ => Ok(()),
        }
    }
}

/// Pings the broker through `control` until a ping goes unanswered for `pings.timeout`, then
/// returns; never returns while the broker answers. A ping that fails because the connection
/// ended makes this wait forever: the connection's own end is reported elsewhere.
pub(crate) async fn unanswered(control: WeakControlHandle, pings: Pings) {
    loop {
        tokio::time::sleep(pings.interval).await;
        let Some(handle) = control.upgrade() else {
            return std::future::pending().await;
        };
        match tokio::time::timeout(pings.timeout, handle.ping()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return std::future::pending().await,
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_pings_only_with_several_addresses() {
        assert_eq!(Liveness::Auto.pings(false), None);
        assert_eq!(
            Liveness::Auto.pings(true),
            Some(Pings {
                interval: AUTO_PING_INTERVAL,
                timeout: AUTO_PING_TIMEOUT
            })
        );
        assert_eq!(Liveness::IdleTimeout.pings(true), None);
        let chosen = Liveness::Ping {
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(3),
        };
        assert_eq!(
            chosen.pings(false),
            Some(Pings {
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(3)
            })
        );
    }

    #[test]
    fn a_zero_timeout_is_refused() {
        let zero = Liveness::Ping {
            interval: Duration::from_secs(1),
            timeout: Duration::ZERO,
        };
        assert!(zero.check().is_err());
        assert!(Liveness::Auto.check().is_ok());
    }
}
