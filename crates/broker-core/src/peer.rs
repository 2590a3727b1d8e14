//! The entry point for a cluster peer's traffic, beside [`crate::broker`] (clients' connections)
//! and [`crate::local`] (the embedding program): the transport's cluster links reach the broker
//! only through [`ClusterPort`]. docs/CLUSTERING.md is the design.
//!
//! What a peer forwards is admitted like any publish ([`crate::admission`], the one way in), as
//! coming from a peer: to local subscribers only (one hop), to the queue groups the peer named.

use std::sync::Arc;

use cassini_protocol::{Publish, SessionId, SubscriptionId, TopicLimits, TopicName};

use crate::admission::Publisher;
use crate::cluster::{
    Cluster, FirstSync, GroupTarget, InboundLink, InterestUpdate, Lost, OutboundLink, PeerStats,
    Unsettled, UNSETTLED_WAIT,
};
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

    /// Starts the link that carries this node's interest and forwards to peer `node`. If the
    /// peer's first acknowledgement of this node's interest comes while this node has just
    /// started, one lost message is announced on every subscription here (docs/CLUSTERING.md,
    /// "While a peer's interest is not known").
    pub fn open_outbound(&self, node: &str) -> OutboundLink {
        let mut link = self.cluster.open_outbound(node);
        let shared = Arc::clone(&self.shared);
        let peer = node.to_owned();
        link.set_first_sync(FirstSync(Arc::new(move || {
            tracing::info!(%peer, "a peer knows this just-started node's interest now: announcing one lost message of it on every subscription made before");
            announce_dropped(&shared, &Lost::on_any_topic(), 1);
        })));
        link
    }

    /// Peer `node` advertises `address` as its client address (`None`: none); set before
    /// its inbound link opens, so that a client told of the peer is told its address.
    pub fn set_peer_client_address(&self, node: &str, address: Option<String>) {
        self.cluster.set_peer_client_address(node, address);
    }

    /// This node dials `addresses`, its configured peers (its own address may be among them):
    /// what it publishes before it knows their interest is tallied until each turned out to be
    /// a peer whose interest arrived, or [`crate::cluster::ClusterConfig::startup_window`]
    /// passed (docs/CLUSTERING.md, "When this node has just started").
    pub fn expect_peers(&self, addresses: impl IntoIterator<Item = std::net::SocketAddr>) {
        self.cluster.expect_peers(addresses);
    }

    /// A dial to `address` reached node `node` (this node itself, or a peer).
    pub fn reached(&self, address: std::net::SocketAddr, node: &str) {
        self.cluster.reached(address, node);
    }

    /// Whether the link that carries this node's interest and forwards to peer `node` is up.
    pub fn has_outbound(&self, node: &str) -> bool {
        self.cluster.has_outbound(node)
    }

    /// This node's incarnation, for the `Hello` of its links (see [`Unsettled`]).
    pub fn incarnation(&self) -> u64 {
        self.cluster.incarnation()
    }

    /// Starts the link that brings peer `node`'s interest and forwards to this node; the peer
    /// says it is `incarnation`. What its previous link left unsettled is announced now if the
    /// peer is another incarnation (again, if it was announced already and a subscription was
    /// made here since); if it is the same one, the peer announces its losses itself.
    pub fn open_inbound(&self, node: &str, incarnation: u64) -> PeerInbox {
        let link = self.cluster.open_inbound_as(node, incarnation);
        if let Some(unsettled) = link.take_unsettled() {
            let restarted = unsettled.incarnation != incarnation || incarnation == 0;
            let owed = unsettled
                .announced_at
                .is_none_or(|seq| link.interest_seq() > seq);
            if restarted && owed {
                announce_unsettled(&self.shared, node);
            }
        }
        PeerInbox {
            link,
            incarnation,
            publisher: Publisher::peer(),
            shared: Arc::clone(&self.shared),
            cluster: Arc::clone(&self.cluster),
        }
    }

    /// Peer `node` is gone: a link towards it ended and no link to it came up again within
    /// [`UNSETTLED_WAIT`]. What its queue groups were to get from this node and lost (the
    /// group part of the `unconfirmed` forwards of the link that ended, and of the drops not
    /// yet announced to it) is announced to another
    /// member of each group instead: one on this node, else one on a peer in routing. A group
    /// lives on past one node's members, and it must hear of every message it lost; the
    /// plain subscribers of the peer are gone with it (their sessions report that
    /// themselves). With no member known elsewhere the loss stays counted for the peer.
    pub fn settle_gone_peer(&self, node: &str, unconfirmed: Vec<(Lost, u64)>) {
        let mut losses = unconfirmed;
        losses.extend(self.cluster.take_group_drops(node));
        for (lost, count) in losses {
            for one in lost.split_groups().0 {
                let group = one.groups.first().map(String::as_str).unwrap_or_default();
                match self
                    .cluster
                    .reassign_group_loss(node, &one.topic, group, count)
                {
                    Some(GroupTarget::Here) => announce_dropped(&self.shared, &one, count),
                    Some(GroupTarget::Peer) => {}
                    None => self.cluster.drop_for_peer(node, one, count),
                }
            }
        }
    }

    /// Records `count` messages lost for peer `node` (forwards a link that ended left
    /// unconfirmed, beyond what the peer says it received): announced to it first on its next
    /// link, before any forward queued on that link.
    pub fn drop_for_peer(&self, node: &str, lost: Lost, count: u64) {
        self.cluster.drop_for_peer(node, lost, count);
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
    /// The incarnation the peer said it is.
    incarnation: u64,
    publisher: Publisher,
    shared: Arc<Shared>,
    cluster: Arc<Cluster>,
}

/// Announces what a peer's link that ended uncleanly may have lost, as drop reports would: one
/// lost message on every subscription here (one member of each queue group). How many were
/// lost, and on which topics, died with the peer: it may have counted losses on a topic it
/// never forwarded here (its startup or absence tally, drops while cut off, forwards in
/// flight), so no subscription is left out.
fn announce_unsettled(shared: &Shared, node: &str) {
    tracing::info!(
        peer = %node,
        "a peer's link ended uncleanly and its counts are gone: announcing a loss on every subscription"
    );
    announce_dropped(shared, &Lost::on_any_topic(), 1);
}

/// Topic bounds for matching a lost message's topic to local subscriptions: the sender's
/// limits may exceed this node's, and a filter such as `a.>` here still matches a topic deeper
/// or longer than this node takes, so the loss must reach it.
const ANY_TOPIC: TopicLimits = TopicLimits {
    max_bytes: usize::MAX,
    max_depth: usize::MAX,
};

fn announce_dropped(shared: &Shared, lost: &Lost, count: u64) {
    if lost.any_topic {
        // Losses on topics the peer stopped counting one by one: at least one on each
        // subscription here, as a floor (how many each lost is not known).
        tracing::info!(count, "a peer lost messages on more topics than it counts one by one: announcing one lost on every subscription");
        for route in shared.router.routes() {
            let members = route.members();
            let groups: Vec<String> = members
                .groups()
                .iter()
                .map(|group| group.name().to_owned())
                .collect();
            members.lost_before_arrival(1, true, &groups, None);
        }
        return;
    }
    let Ok(topic) = TopicName::parse(&lost.topic, &ANY_TOPIC) else {
        tracing::warn!(topic = %lost.topic, count, "a peer's lost messages name a malformed topic: not announced");
        return;
    };
    for route in shared.router.matching(&topic) {
        route
            .members()
            .lost_before_arrival(count, lost.plain, &lost.groups, lost.session);
    }
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
    /// budget) is logged, counted as a rejected publish, and announced to the subscriptions it
    /// was for as one lost message (a `ClusterRoute` gap), as a drop report would be. The
    /// subscriptions in `delivered` are left out: the peer delivered the message to them
    /// through the cluster's records. An acknowledged publish's forward names its publisher's
    /// certificate identity, `acknowledged_by`: a resend this node already handed to its
    /// subscriptions goes only to the replicated ones.
    pub fn deliver(
        &mut self,
        mut publish: Publish,
        groups: &[String],
        delivered: &[(SessionId, SubscriptionId)],
        acknowledged_by: Option<&str>,
    ) {
        let lost = Lost {
            topic: publish.topic.clone(),
            plain: publish.to_session.is_none(),
            groups: groups.to_vec(),
            session: publish.to_session,
            any_topic: false,
        };
        if let Err(err) = self.publisher.admit_forwarded(
            &self.shared,
            &mut publish,
            groups,
            delivered,
            acknowledged_by.map(Arc::from),
        ) {
            tracing::warn!(peer = %self.link.peer(), topic = %lost.topic, %err, "refused a peer's forward: announced to its subscribers as lost");
            announce_dropped(&self.shared, &lost, 1);
        }
    }

    /// The peer dropped `count` messages meant for this node (for `lost`): each local plain
    /// subscription matching its topic (if they were for plain subscribers) and one member of
    /// each queue group named announce them as a gap with the reason `ClusterRoute` (direct
    /// messages: the subscriptions of the session they were for).
    pub fn dropped(&mut self, lost: &Lost, count: u64) {
        announce_dropped(&self.shared, lost, count);
    }

    /// The link ended: `cleanly` if the peer said `Bye` (nothing was left for this node) or
    /// this node is stopping. Otherwise what the peer still held for this node is lost unless
    /// it comes back as the same incarnation within [`UNSETTLED_WAIT`]: if it does not, one
    /// lost message is announced on every subscription here (a `ClusterRoute` gap of at
    /// least one). A newer link from another incarnation of the peer, up before this one
    /// ended, settles it at once.
    pub fn ended(self, cleanly: bool) {
        if cleanly {
            return;
        }
        let link = self.link.id();
        let unsettled = Unsettled {
            link,
            incarnation: self.incarnation,
            announced_at: None,
        };
        if !self.link.leave_unsettled(unsettled) {
            // A newer link from the peer is up already: from another incarnation (it
            // restarted before this link timed out), what this one may have lost is gone
            // with the old one; from the same one, the peer announces its counts itself.
            if self.link.latest_incarnation() != self.incarnation || self.incarnation == 0 {
                announce_unsettled(&self.shared, self.link.peer());
            }
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let node = self.link.peer().to_owned();
        let (shared, cluster) = (self.shared, self.cluster);
        drop(self.link);
        runtime.spawn(async move {
            tokio::time::sleep(UNSETTLED_WAIT).await;
            if cluster.mark_unsettled_announced(&node, link) {
                announce_unsettled(&shared, &node);
            }
        });
    }
}
