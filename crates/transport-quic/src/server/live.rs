//! The live connections the server remembers, with the client certificate chain each one
//! presented, so that new TLS material can be applied to connections already open; and the
//! expiry of each connection's client certificate, at which the connection is closed with
//! `CERTIFICATE_EXPIRED`.
//!
//! Installing new material and admitting a new connection take the same lock, and every
//! install raises a generation number. A handshake notes the generation before it starts; if an
//! install happened meanwhile, the connection is verified against the new material before it is
//! admitted. So no connection slips past a reload by being mid-handshake when it happened.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use cassini_protocol::ErrorCode;
use quinn::VarInt;
use rustls_pki_types::CertificateDer;

use super::stats::AcceptStats;
use crate::revocation::{certificate_not_after, expiry};
use crate::tls::ServerTls;

/// What [`QuicServer::reload`](super::QuicServer::reload) did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Live connections whose certificate still verifies; they continue.
    pub kept: usize,
    /// Live connections closed with `CERTIFICATE_REVOKED`: (identity, why).
    pub closed: Vec<(String, String)>,
}

/// One live connection.
#[derive(Debug)]
struct Live {
    connection: quinn::Connection,
    identity: String,
    chain: Vec<CertificateDer<'static>>,
}

#[derive(Debug, Default)]
struct State {
    /// By quinn's stable connection id.
    live: HashMap<usize, Live>,
    /// Raised by every install.
    generation: u64,
    /// The material of the last install (`None` until the first reload).
    current: Option<ServerTls>,
}

/// The registry of live connections.
#[derive(Debug, Default)]
pub(super) struct LiveConnections {
    state: Mutex<State>,
}

impl LiveConnections {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The generation to note before a handshake starts.
    pub(super) fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// How many connections are remembered.
    pub(super) fn len(&self) -> usize {
        self.lock().live.len()
    }

    /// Remembers `connection` until it closes. If material was installed since `generation`,
    /// the chain is verified against it first; a refused connection is closed with
    /// `CERTIFICATE_REVOKED` and the reason returned.
    pub(super) fn admit(
        self: &Arc<Self>,
        connection: &quinn::Connection,
        identity: &str,
        chain: Vec<CertificateDer<'static>>,
        generation: u64,
        stats: &AcceptStats,
    ) -> Result<(), String> {
        let mut state = self.lock();
        if state.generation != generation {
            if let Some(tls) = &state.current {
                if let Err(error) = tls.verify_client(&chain) {
                    let reason = close_revoked(connection, &error);
                    stats.revoked.fetch_add(1, Ordering::Relaxed);
                    return Err(reason);
                }
            }
        }
        let id = connection.stable_id();
        let not_after = chain.first().and_then(certificate_not_after);
        state.live.insert(
            id,
            Live {
                connection: connection.clone(),
                identity: identity.to_owned(),
                chain,
            },
        );
        drop(state);
        let registry = Arc::clone(self);
        let connection = connection.clone();
        let identity = identity.to_owned();
        tokio::spawn(async move {
            tokio::select! {
                _ = connection.closed() => {}
                () = expiry(not_after) => {
                    tracing::info!(%identity, "closing a connection: its client certificate expired");
                    connection.close(
                        VarInt::from_u32(ErrorCode::CERTIFICATE_EXPIRED.value()),
                        b"certificate expired",
                    );
                }
            }
            registry.lock().live.remove(&id);
        });
        Ok(())
    }

    /// Runs `install` (which hands the new material to quinn) and re-verifies every live
    /// connection against `tls`, closing those it refuses, all under the registry's lock.
    pub(super) fn install(
        &self,
        tls: &ServerTls,
        install: impl FnOnce(),
        stats: &AcceptStats,
    ) -> ReloadReport {
        let mut state = self.lock();
        install();
        state.generation += 1;
        state.current = Some(tls.clone());
        let mut report = ReloadReport {
            kept: 0,
            closed: Vec::new(),
        };
        state
            .live
            .retain(|_, entry| match tls.verify_client(&entry.chain) {
                Ok(()) => {
                    report.kept += 1;
                    true
                }
                Err(error) => {
                    let reason = close_revoked(&entry.connection, &error);
                    stats.revoked.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(identity = %entry.identity, %reason, "closed a live connection");
                    report.closed.push((entry.identity.clone(), reason));
                    false
                }
            });
        report
    }
}

fn close_revoked(connection: &quinn::Connection, error: &rustls::Error) -> String {
    let reason = format!("client certificate no longer accepted: {error}");
    connection.close(
        VarInt::from_u32(ErrorCode::CERTIFICATE_REVOKED.value()),
        reason.as_bytes(),
    );
    reason
}
