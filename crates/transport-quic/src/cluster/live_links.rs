//! The cluster connections that are up, each with the node certificate its peer presented, and
//! the TLS material they are checked against when it is reloaded.
//!
//! A reload ([`LiveLinks::install`]) installs new material for new connections and checks
//! every live connection's certificate against it: a connection whose certificate it refuses
//! (revoked by a new CRL, expired, or no longer issued by a trusted CA) is closed with
//! `CERTIFICATE_REVOKED`. A connection whose handshake ran under the previous material and
//! that is admitted ([`LiveLinks::admit`]) after the install is checked against the new
//! material then. Entries of connections that closed are dropped at each admit and install, so
//! the table holds the live links and no more.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use cassini_protocol::ErrorCode;
use quinn::VarInt;
use rustls_pki_types::CertificateDer;

use crate::identity::peer_chain;
use crate::tls::ServerTls;

/// The live cluster connections (both directions) and the material last installed.
#[derive(Debug, Default)]
pub(super) struct LiveLinks {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// The material installed by the latest reload (`None`: the one the node started with).
    current: Option<ServerTls>,
    /// By the connection's stable id.
    links: HashMap<usize, Link>,
}

#[derive(Debug)]
struct Link {
    connection: quinn::Connection,
    node: String,
    chain: Vec<CertificateDer<'static>>,
}

impl LiveLinks {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Remembers `connection` to peer `node` until it closes. If material was installed
    /// since the node started, the peer's certificate is checked against it first: a refused
    /// connection is closed with `CERTIFICATE_REVOKED` and the reason returned.
    pub(super) fn admit(&self, connection: &quinn::Connection, node: &str) -> Result<(), String> {
        let chain = peer_chain(connection).map_err(|err| err.to_string())?;
        let mut state = self.lock();
        state
            .links
            .retain(|_, link| link.connection.close_reason().is_none());
        if let Some(tls) = &state.current {
            if let Err(error) = tls.verify_client(&chain) {
                return Err(close_refused(connection, &error));
            }
        }
        state.links.insert(
            connection.stable_id(),
            Link {
                connection: connection.clone(),
                node: node.to_owned(),
                chain,
            },
        );
        Ok(())
    }

    /// Runs `install` (new material for new connections), then closes every live connection
    /// whose peer certificate `tls` refuses. Returns the peers closed, each with the reason.
    pub(super) fn install(&self, tls: &ServerTls, install: impl FnOnce()) -> Vec<(String, String)> {
        let mut state = self.lock();
        install();
        state.current = Some(tls.clone());
        let mut closed = Vec::new();
        state.links.retain(|_, link| {
            if link.connection.close_reason().is_some() {
                return false;
            }
            match tls.verify_client(&link.chain) {
                Ok(()) => true,
                Err(error) => {
                    let reason = close_refused(&link.connection, &error);
                    tracing::warn!(peer = %link.node, %reason, "closed a cluster link");
                    closed.push((link.node.clone(), reason));
                    false
                }
            }
        });
        closed
    }
}

fn close_refused(connection: &quinn::Connection, error: &rustls::Error) -> String {
    let reason = format!("node certificate no longer accepted: {error}");
    connection.close(
        VarInt::from_u32(ErrorCode::CERTIFICATE_REVOKED.value()),
        reason.as_bytes(),
    );
    reason
}
