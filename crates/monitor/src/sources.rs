//! What the endpoints read: the broker and its facts ([`MonitorSources`]), the bearer token,
//! readiness, and the state the handlers share. It imports no other module of this crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use cassini_broker::BrokerHandle;
use cassini_mqtt::MqttStats;
use cassini_quic::revocation::CrlSource;
use cassini_quic::server::AcceptStats;

/// Why the monitor could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The TCP address could not be bound.
    #[error("cannot bind the monitoring endpoint on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The token file cannot be read or is empty.
    #[error("cannot use the monitoring token file {}: {reason}", path.display())]
    TokenFile {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Whether the broker is ready for clients; `/readyz` answers from it. The owner of the
/// broker sets it once the endpoint is bound and clears it when shutdown starts.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the broker ready (or not).
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }

    /// Whether it is ready.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Everything the endpoints read.
#[derive(Debug, Clone)]
pub struct MonitorSources {
    /// The broker.
    pub broker: BrokerHandle,
    /// The QUIC endpoint's accept counters (handshakes accepted and refused by reason).
    pub accept: Option<Arc<AcceptStats>>,
    /// The MQTT gateway's counters, when it runs.
    pub mqtt: Option<Arc<MqttStats>>,
    /// The address clients connect to.
    pub listen: Option<SocketAddr>,
    /// The effective configuration, shown in `/varz` as given.
    pub config: serde_json::Value,
    /// `/readyz`.
    pub readiness: Readiness,
    /// The broker's CRL file and what revocation is in force, shown in `/varz` as
    /// `revocation`.
    pub crl: Option<Arc<CrlSource>>,
    /// The bearer token every endpoint but `/` (the status page), `/healthz` and `/readyz` requires (see
    /// [`crate`]); `None`: no token is asked for, and session ids are redacted.
    pub token: Option<BearerToken>,
}

/// A secret the monitoring endpoint requires as `Authorization: Bearer TOKEN`. Its `Debug`
/// does not show it.
#[derive(Clone)]
pub struct BearerToken(Arc<str>);

impl BearerToken {
    /// Reads the token from `path`: the file's contents without surrounding whitespace, which
    /// must not be empty.
    pub fn from_file(path: &Path) -> Result<Self, MonitorError> {
        let text = std::fs::read_to_string(path).map_err(|source| MonitorError::TokenFile {
            path: path.to_owned(),
            reason: source.to_string(),
        })?;
        Self::new(&text).ok_or_else(|| MonitorError::TokenFile {
            path: path.to_owned(),
            reason: "the file holds no token".into(),
        })
    }

    /// `secret` without surrounding whitespace as a token; `None` if nothing is left.
    pub fn new(secret: &str) -> Option<Self> {
        let secret = secret.trim();
        (!secret.is_empty()).then(|| Self(Arc::from(secret)))
    }

    /// The token itself, to send.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token, compared in time independent of where they differ.
    pub(crate) fn matches(&self, presented: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        presented.len() == expected.len()
            && presented
                .iter()
                .zip(expected)
                .fold(0u8, |differ, (a, b)| differ | (a ^ b))
                == 0
    }
}

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// Shared by the handlers.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) sources: MonitorSources,
    pub(crate) monitor_addr: SocketAddr,
    pub(crate) started_at: SystemTime,
    pub(crate) started: Instant,
}
