//! The addresses a client tries when it connects: the ones it was given, then the cluster's
//! client addresses it learned from `Welcome` (docs/CLUSTERING.md, "Clients").
//!
//! Every `Welcome` of a cluster node lists the client addresses of that node and of its peers
//! in routing; the client keeps each one it has not seen (at most [`MAX_LEARNED`], the oldest
//! forgotten first) for the rest of its life. On a reconnect, the address of the connection it
//! lost is tried first, so a client whose connection broke while its node lives keeps its
//! session there; an address where nothing listens any more fails at once (the connector
//! probes when it has several), and the client moves on to another node, where it gets a new
//! session and a `SessionLost` gap.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::connect::broker_address::BrokerAddress;
use crate::error::ConnectionError;

/// Most learned addresses a client keeps.
pub(crate) const MAX_LEARNED: usize = 64;

/// What a client knows of where to connect, besides the addresses it was given. Shared by
/// every connection attempt of one client.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterAddresses {
    known: Arc<Mutex<Known>>,
}

#[derive(Debug, Default)]
struct Known {
    /// Learned from `Welcome`, oldest first.
    learned: Vec<String>,
    /// The broker address of the current (or last) connection.
    connected: Option<SocketAddr>,
}

impl ClusterAddresses {
    fn known(&self) -> std::sync::MutexGuard<'_, Known> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A connection to `remote` is up, and its `Welcome` listed `addresses`.
    pub(crate) fn connected(&self, remote: SocketAddr, addresses: &[String]) {
        let mut known = self.known();
        known.connected = Some(remote);
        for address in addresses {
            if !known.learned.contains(address) {
                known.learned.push(address.clone());
            }
        }
        let excess = known.learned.len().saturating_sub(MAX_LEARNED);
        known.learned.drain(..excess);
    }

    /// The addresses learned so far, oldest first.
    pub(crate) fn learned(&self) -> Vec<String> {
        self.known().learned.clone()
    }

    /// Every socket address to try, in order without repeats: `configured`'s, then the learned
    /// ones'; after a connection was up, its address goes first (a reconnect resumes there if
    /// it can). Fails only if nothing resolves.
    pub(crate) async fn candidates(
        &self,
        configured: &BrokerAddress,
    ) -> Result<Vec<SocketAddr>, ConnectionError> {
        let (learned, connected) = {
            let known = self.known();
            (known.learned.clone(), known.connected)
        };
        let given = configured.resolve_all().await;
        let mut candidates = match (&given, learned.is_empty()) {
            (Err(_), true) => return given,
            (Err(_), false) => Vec::new(),
            (Ok(addresses), _) => addresses.clone(),
        };
        if !learned.is_empty() {
            let learned = BrokerAddress::List(
                learned
                    .iter()
                    .map(|one| BrokerAddress::from(one.as_str()))
                    .collect(),
            );
            for address in learned.resolve_all().await.unwrap_or_default() {
                if !candidates.contains(&address) {
                    candidates.push(address);
                }
            }
        }
        if candidates.is_empty() {
            return given;
        }
        if let Some(lost) = connected {
            if let Some(position) = candidates.iter().position(|address| *address == lost) {
                candidates.remove(position);
                candidates.insert(0, lost);
            }
        }
        Ok(candidates)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("a socket address")
    }

    #[tokio::test]
    async fn learned_addresses_follow_the_given_ones_without_repeats_the_last_connected_first() {
        let addresses = ClusterAddresses::default();
        addresses.connected(
            addr("127.0.0.1:7009"),
            &["127.0.0.1:7001".into(), "127.0.0.1:7002".into()],
        );
        addresses.connected(
            addr("127.0.0.1:7009"),
            &["127.0.0.1:7003".into(), "127.0.0.1:7002".into()],
        );
        let given = BrokerAddress::from("127.0.0.1:7001,127.0.0.1:7009");
        let found = addresses.candidates(&given).await.expect("resolves");
        assert_eq!(
            found,
            [
                "127.0.0.1:7009",
                "127.0.0.1:7001",
                "127.0.0.1:7002",
                "127.0.0.1:7003"
            ]
            .map(addr)
            .to_vec()
        );
    }

    #[tokio::test]
    async fn a_reconnect_tries_the_lost_address_first_then_the_others() {
        let addresses = ClusterAddresses::default();
        addresses.connected(addr("127.0.0.1:7002"), &["127.0.0.1:7002".into()]);
        let given = BrokerAddress::from("127.0.0.1:7001");
        let found = addresses.candidates(&given).await.expect("resolves");
        assert_eq!(
            found,
            ["127.0.0.1:7002", "127.0.0.1:7001"].map(addr).to_vec()
        );
        let alone = ClusterAddresses::default();
        alone.connected(addr("127.0.0.1:7001"), &[]);
        let found = alone.candidates(&given).await.expect("resolves");
        assert_eq!(
            found,
            vec![addr("127.0.0.1:7001")],
            "one broker: tried again"
        );
    }

    #[test]
    fn at_most_max_learned_are_kept_the_oldest_forgotten() {
        let addresses = ClusterAddresses::default();
        let many: Vec<String> = (0..MAX_LEARNED + 3)
            .map(|port| format!("127.0.0.1:{}", 8000 + port))
            .collect();
        addresses.connected(addr("127.0.0.1:7001"), &many);
        let learned = addresses.learned();
        assert_eq!(learned.len(), MAX_LEARNED);
        assert_eq!(learned.first(), Some(&"127.0.0.1:8003".to_owned()));
    }
}
