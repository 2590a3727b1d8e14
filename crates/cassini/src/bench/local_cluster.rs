//! A cluster of whole brokers inside the bench process, in a full mesh over loopback (each
//! node with its client and cluster endpoints, real QUIC, certificates made in memory), and
//! where each bench client connects ([`Placement`]).

use std::fmt;
use std::time::Duration;

use anyhow::Context;
use cassini_broker::cluster::ClusterConfig;
use cassini_broker::BrokerConfig;
use cassini_client::ClientBuilder;
use cassini_quic::certs::CertificateAuthority;
use cassini_quic::cluster::{ClusterNode, ClusterOptions, ClusterTls};
use cassini_quic::server::ServerOptions;
use cassini_quic::tls::RevocationOptions;

use super::embedded::{bench_config, EmbeddedBroker};

/// How long the nodes may take to connect to each other.
const MESH_TIMEOUT: Duration = Duration::from_secs(20);

/// Which node of a cluster a bench client connects to, by the names the scenarios give their
/// clients (`bench-publisher`, `bench-subscriber`, `bench-subscriber-N`, `bench-responder`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Placement {
    /// Every client on node `0`.
    OneNode(usize),
    /// The publisher on `publisher`, every other client on `others`.
    Split { publisher: usize, others: usize },
    /// The publisher on node 0, subscriber `N` on node `N % nodes`.
    Spread,
}

impl Placement {
    /// The index of the node `name` connects to.
    pub(crate) fn node_for(&self, name: &str) -> usize {
        let is_publisher = name.contains("publisher");
        match *self {
            Self::OneNode(node) => node,
            Self::Split { publisher, .. } if is_publisher => publisher,
            Self::Split { others, .. } => others,
            Self::Spread => name
                .rsplit_once('-')
                .and_then(|(_, index)| index.parse().ok())
                .unwrap_or(0),
        }
    }
}

impl fmt::Display for Placement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::OneNode(node) => write!(f, "all clients on node {}", node + 1),
            Self::Split { publisher, others } => write!(
                f,
                "publisher on node {}, subscriber on node {}",
                publisher + 1,
                others + 1
            ),
            Self::Spread => write!(f, "subscribers spread over the nodes"),
        }
    }
}

/// One node: a broker with its client endpoint, and its cluster endpoint.
struct LocalNode {
    broker: EmbeddedBroker,
    cluster: ClusterNode,
}

/// A cluster of whole brokers in this process, in a full mesh over loopback.
pub(crate) struct LocalCluster {
    nodes: Vec<LocalNode>,
}

impl LocalCluster {
    /// Starts `count` nodes named `n1`... under one CA and waits until they form a full mesh.
    pub(crate) async fn start(count: usize) -> anyhow::Result<Self> {
        Self::start_with(count, |_, config| config).await
    }

    /// [`Self::start`], each node's configuration (the bench's, with its cluster settings)
    /// passed through `configure` with the node's name first.
    pub(crate) async fn start_with(
        count: usize,
        configure: impl Fn(&str, BrokerConfig) -> BrokerConfig,
    ) -> anyhow::Result<Self> {
        let ca = CertificateAuthority::generate("Cassini Bench CA").context("bench CA")?;
        let mut nodes = Vec::with_capacity(count);
        for index in 1..=count {
            let name = format!("n{index}");
            let config = configure(
                &name,
                BrokerConfig {
                    cluster: Some(ClusterConfig::node(&name)),
                    ..bench_config()
                },
            );
            let node_ca = CertificateAuthority::from_pem(ca.cert_pem(), ca.key_pem())?;
            let broker =
                EmbeddedBroker::start_under(node_ca, config, ServerOptions::default()).await?;
            let identity = ca.issue_node(&name)?;
            let tls = ClusterTls::build(
                vec![ca.cert_der().clone()],
                vec![identity.cert_der()?],
                identity.key_der()?,
                Vec::new(),
                RevocationOptions::default(),
            )?;
            let options = ClusterOptions::new("bench", "127.0.0.1:0".parse()?, Vec::new());
            let port = broker
                .broker()
                .cluster()
                .context("a node started without its cluster settings")?;
            let cluster = ClusterNode::start(options, tls, port)?;
            nodes.push(LocalNode { broker, cluster });
        }
        let cluster = Self { nodes };
        cluster.mesh().await?;
        Ok(cluster)
    }

    async fn mesh(&self) -> anyhow::Result<()> {
        let addrs = self
            .nodes
            .iter()
            .map(|node| node.cluster.local_addr())
            .collect::<Result<Vec<_>, _>>()?;
        for node in &self.nodes {
            for &addr in &addrs {
                node.cluster.dial(addr);
            }
        }
        let others = self.nodes.len() - 1;
        let meshed = || {
            self.nodes.iter().all(|node| {
                let peers = node.cluster.port().peers();
                peers.len() == others && peers.iter().all(|peer| peer.inbound && peer.outbound)
            })
        };
        tokio::time::timeout(MESH_TIMEOUT, async {
            while !meshed() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .map_err(|_| anyhow::anyhow!("the nodes did not form a full mesh within {MESH_TIMEOUT:?}"))
    }

    /// How many nodes.
    pub(crate) fn len(&self) -> usize {
        self.nodes.len()
    }

    /// A client builder for node `index` (modulo the node count) with a certificate of `name`.
    pub(crate) fn client(&self, index: usize, name: &str) -> anyhow::Result<ClientBuilder> {
        self.nodes[index % self.nodes.len()].broker.client(name)
    }

    /// Stops every node.
    pub(crate) async fn stop(self) {
        for node in &self.nodes {
            node.cluster.close(Duration::from_secs(1)).await;
        }
        for node in self.nodes {
            node.broker.stop().await;
        }
    }
}
