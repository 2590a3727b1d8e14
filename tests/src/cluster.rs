//! Cluster nodes in process: a [`TestBroker`] that is a cluster node gets its cluster endpoint
//! here, and a set of endpoints is joined into a full mesh. The tests keep their own node types
//! (what each adds around the endpoint differs); the steps they share are these.

use cassini_quic::cluster::{ClusterNode, ClusterOptions, ClusterTls};
use cassini_quic::tls::RevocationOptions;

use crate::{identity_of, Pki, TestBroker};

/// The cluster endpoint of `broker`, started as a cluster node named `name`, presenting the node
/// certificate `pki` issues for `name`, on `options`.
pub fn start_endpoint(
    pki: &Pki,
    broker: &TestBroker,
    name: &str,
    options: ClusterOptions,
) -> ClusterNode {
    let (chain, key) = identity_of(&pki.node(name));
    let tls = ClusterTls::build(
        pki.ca_certs(),
        chain,
        key,
        Vec::new(),
        RevocationOptions::default(),
    )
    .expect("cluster TLS");
    let port = broker.broker.cluster().expect("a cluster node");
    ClusterNode::start(options, tls, port).expect("cluster endpoint")
}

/// Every endpoint dials every endpoint's address, its own included, whatever order they
/// started in.
pub fn dial_full_mesh<'a>(endpoints: impl IntoIterator<Item = &'a ClusterNode>) {
    let endpoints: Vec<&ClusterNode> = endpoints.into_iter().collect();
    let addrs: Vec<_> = endpoints
        .iter()
        .map(|endpoint| endpoint.local_addr().expect("cluster address"))
        .collect();
    for endpoint in &endpoints {
        for &addr in &addrs {
            endpoint.dial(addr);
        }
    }
}

/// Whether `endpoint` has both links up with `others` peers, every one of them.
pub fn meshed_with(endpoint: &ClusterNode, others: usize) -> bool {
    let peers = endpoint.port().peers();
    peers.len() == others && peers.iter().all(|peer| peer.inbound && peer.outbound)
}
