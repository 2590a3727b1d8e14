//! The addresses a client tries when it connects: the ones it was given, then the cluster's
//! client addresses it learned from `Welcome` (docs/CLUSTERING.md, "Clients").
//!
//! Every `Welcome` of a cluster node lists the client addresses of that node and of its peers
//! in routing; the client keeps each one it has not seen (at most [`MAX_LEARNED`], the oldest
//! forgotten first) for the rest of its life. The connector orders the attempt (the address
//! that answered last first, a silent one last) and, with several addresses, probes each, so a
//! client whose node died moves on to another node, where it gets a new session and a
//! `SessionLost` gap.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::connect::broker_address::BrokerAddress;
use crate::error::ConnectionError;

/// Most learned addresses a client keeps.
pub(crate) const MAX_LEARNED: usize = 64;

/// The cluster's client addresses a client learned, oldest first. Shared by every connection
/// attempt of one client.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterAddresses {
    learned: Arc<Mutex<Vec<String>>>,
}

impl ClusterAddresses {
    fn known(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.learned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A `Welcome` listed `addresses`: keeps the new ones.
    pub(crate) fn learn(&self, addresses: &[String]) {
        let mut learned = self.known();
        for address in addresses {
            if !learned.contains(address) {
                learned.push(address.clone());
            }
        }
        let excess = learned.len().saturating_sub(MAX_LEARNED);
        learned.drain(..excess);
    }

    /// The addresses learned so far, oldest first.
    pub(crate) fn learned(&self) -> Vec<String> {
        self.known().clone()
    }

    /// Whether the client knows another node than the one it was given (so another can take
    /// over when that one goes silent).
    pub(crate) fn knows_several(&self) -> bool {
        self.known().len() > 1
    }

    /// Every socket address to try, in order without repeats: `configured`'s, then the learned
    /// ones'. Fails only if nothing resolves.
    pub(crate) async fn candidates(
        &self,
        configured: &BrokerAddress,
    ) -> Result<Vec<SocketAddr>, ConnectionError> {
        let learned = self.learned();
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
    async fn learned_addresses_follow_the_given_ones_without_repeats() {
        let addresses = ClusterAddresses::default();
        addresses.learn(&["127.0.0.1:7001".into(), "127.0.0.1:7002".into()]);
        addresses.learn(&["127.0.0.1:7003".into(), "127.0.0.1:7002".into()]);
        let given = BrokerAddress::from("127.0.0.1:7009,127.0.0.1:7001");
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
        assert!(addresses.knows_several());
    }

    #[tokio::test]
    async fn a_standalone_broker_teaches_nothing() {
        let addresses = ClusterAddresses::default();
        addresses.learn(&[]);
        let given = BrokerAddress::from("127.0.0.1:7001");
        let found = addresses.candidates(&given).await.expect("resolves");
        assert_eq!(found, vec![addr("127.0.0.1:7001")]);
        assert!(!addresses.knows_several());
    }

    #[test]
    fn at_most_max_learned_are_kept_the_oldest_forgotten() {
        let addresses = ClusterAddresses::default();
        let many: Vec<String> = (0..MAX_LEARNED + 3)
            .map(|port| format!("127.0.0.1:{}", 8000 + port))
            .collect();
        addresses.learn(&many);
        let learned = addresses.learned();
        assert_eq!(learned.len(), MAX_LEARNED);
        assert_eq!(learned.first(), Some(&"127.0.0.1:8003".to_owned()));
    }
}
