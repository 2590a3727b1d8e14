//! The entry point for a cluster peer's traffic, beside [`crate::broker`] (clients' connections)
//! and [`crate::local`] (the embedding program): the transport's cluster links reach the broker
//! only through [`ClusterPort`]. docs/CLUSTERING.md is the design.
//!
//! What a peer forwards is admitted like any publish ([`crate::admission`], the one way in), as
//! coming from a peer: to local subscribers only (one hop), to the queue groups the peer named.

use std::sync::Arc;

use cassini_protocol::{Publish, TopicName};

use crate::admission::Publisher;
use crate::cluster::{Cluster, InboundLink, InterestUpdate, Lost, OutboundLink, PeerStats};
use crate::context::Shared;

/// This node's side of the cluster, for the transport that carries it.
#[derive(Debug, Clone)]
pub struct ClusterPort {
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
}

impl ClusterPort {
    pub(crate) fn new(shared: Arc<Shared>, cluster: Arc<Cluster>) -> Self {
        Self { shared, cluster }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        self.cluster.node()
    }

    /// Starts the link that carries this node's interest and forwards to peer `node`.
    pub fn open_outbound(&self, node: &str) -> OutboundLink {
        self.cluster.open_outbound(node)
    }

    /// Peer `node` advertises `address` as its client address (`None`: none); set before
    /// its inbound link opens, so that a client told of the peer is told its address.
    pub fn set_peer_client_address(&self, node: &str, address: Option<String>) {
        self.cluster.set_peer_client_address(node, address);
    }

    /// Whether the link that carries this node's interest and forwards to peer `node` is up.
    pub fn has_outbound(&self, node: &str) -> bool {
        self.cluster.has_outbound(node)
    }

    /// Starts the link that brings peer `node`'s interest and forwards to this node.
    pub fn open_inbound(&self, node: &str) -> PeerInbox {
        PeerInbox {
            link: self.cluster.open_inbound(node),
            publisher: Publisher::peer(),
            shared: Arc::clone(&self.shared),
        }
    }

    /// Every peer this node knows of, with its numbers.
    pub fn peers(&self) -> Vec<PeerStats> {
        self.cluster.peers()
    }

    /// Sets the client address this node advertises to its peers (and lists first in its
    /// clients' `Welcome`).
    pub fn set_client_address(&self, address: impl Into<String>) {
        self.cluster.set_client_address(address);
    }

    /// The client address this node advertises, if set.
    pub fn client_address(&self) -> Option<String> {
        self.cluster.client_address()
    }

    /// This node's member of the cluster's Raft group, when the cluster has `members`: the
    /// transport plugs its links in ([`cassini_replication::Replica::set_transport`]) and
    /// hands it the requests peers send ([`cassini_replication::Replica::handle`]).
    pub fn replica(&self) -> Option<Arc<cassini_replication::Replica>> {
        self.cluster
            .ownership()
            .map(|ownership| Arc::clone(ownership.replica()))
    }
}

/// What arrives from one peer. Dropping it forgets the peer's interest.
pub struct PeerInbox {
    link: InboundLink,
    publisher: Publisher,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PeerInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerInbox")
            .field("peer", &self.link.peer())
            .finish()
    }
}

impl PeerInbox {
    /// The peer's node name.
    pub fn peer(&self) -> &str {
        self.link.peer()
    }

    /// Applies an update of the peer's interest; returns the sequence number to acknowledge.
    pub fn interest(&self, update: InterestUpdate) -> u64 {
        self.link.apply(update)
    }

    /// Delivers a message the peer forwarded to local plain subscribers and to one member of
    /// each queue group in `groups` (a direct message, with `to_session`: to that session's
    /// matching subscriptions only). A message this node refuses (its own limits, its memory
    /// budget) is logged and counted as a rejected publish.
    pub fn deliver(&mut self, mut publish: Publish, groups: &[String]) {
        if let Err(err) = self
            .publisher
            .admit_forwarded(&self.shared, &mut publish, groups)
        {
            tracing::warn!(peer = %self.link.peer(), topic = %publish.topic, %err, "refused a peer's forward");
        }
    }

    /// The peer dropped `count` messages meant for this node (for `lost`): each local plain
    /// subscription matching its topic (if they were for plain subscribers) and one member of
    /// each queue group named announce them as a gap with the reason `ClusterRoute` (direct
    /// messages: the subscriptions of the session they were for).
    pub fn dropped(&self, lost: &Lost, count: u64) {
        let Ok(topic) = TopicName::parse(&lost.topic, &self.shared.config.limits.topics) else {
            return;
        };
        for route in self.shared.router.matching(&topic) {
            route
                .members()
                .lost_before_arrival(count, lost.plain, &lost.groups, lost.session);
        }
    }
}
