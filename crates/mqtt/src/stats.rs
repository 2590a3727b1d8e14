//! The gateway's counters, for monitoring: kept by the listener (`server`) and the wills
//! (`will`), read by `/metrics` (`cassini-monitor`).

use std::sync::atomic::AtomicU64;

/// Counters of the gateway, for monitoring.
#[derive(Debug, Default)]
pub struct MqttStats {
    /// Connections whose transport was established (TLS verified, or plaintext on loopback).
    pub accepted: AtomicU64,
    /// Connections refused at TLS or for a certificate without identity.
    pub refused: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Will messages published.
    pub wills_published: AtomicU64,
    /// Will messages due but refused (by the ACL, a limit, or a topic with no Cassini form).
    pub wills_refused: AtomicU64,
    /// Will messages waiting for their will delay now.
    pub wills_waiting: AtomicU64,
    /// Will messages that a new connection for their client id cancelled during their delay.
    pub wills_cancelled: AtomicU64,
}
