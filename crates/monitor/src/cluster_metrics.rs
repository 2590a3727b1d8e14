//! The per-peer part of `/metrics` on a cluster node: for each peer, what was forwarded to it,
//! what was dropped for it, what waits in its queue, whether each link with it is up and the
//! round-trip time of this node's link towards it (docs/OPERATIONS.md).

use cassini_broker::cluster::PeerStats;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

type Labels = Vec<(String, String)>;

fn peer(stats: &PeerStats) -> Labels {
    vec![("peer".to_owned(), stats.node.clone())]
}

fn count(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// Registers the per-peer families for `peers` (one series per peer and label).
pub(crate) fn register(registry: &mut Registry, peers: &[PeerStats]) {
    let forwarded = Family::<Labels, Counter<u64>>::default();
    let dropped = Family::<Labels, Counter<u64>>::default();
    let queued = Family::<Labels, Gauge<i64>>::default();
    let up = Family::<Labels, Gauge<i64>>::default();
    let rtt = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for stats in peers {
        let labels = peer(stats);
        forwarded.get_or_create(&labels).inc_by(stats.forwarded);
        dropped.get_or_create(&labels).inc_by(stats.dropped);
        queued
            .get_or_create(&labels)
            .set(count(stats.queued as u64));
        for (direction, is_up) in [("outbound", stats.outbound), ("inbound", stats.inbound)] {
            let mut labels = labels.clone();
            labels.push(("direction".to_owned(), direction.to_owned()));
            up.get_or_create(&labels).set(i64::from(is_up));
        }
        if let Some(micros) = stats.rtt_micros {
            rtt.get_or_create(&labels).set(micros as f64 / 1e6);
        }
    }
    registry.register(
        "cluster_forwarded_messages",
        "Messages handed to a peer's queue",
        forwarded,
    );
    registry.register(
        "cluster_dropped_messages",
        "Messages dropped for a peer (its queue full or its link down); its subscribers get them as ClusterRoute gaps",
        dropped,
    );
    registry.register(
        "cluster_queued_messages",
        "Messages waiting in a peer's queue",
        queued,
    );
    registry.register(
        "cluster_link_up",
        "1 while a link with a peer is up: outbound carries this node's interest and forwards to it, inbound its (it is in routing)",
        up,
    );
    registry.register(
        "cluster_rtt_seconds",
        "Round-trip time of this node's link towards a peer, as QUIC measures it (absent while the link is down)",
        rtt,
    );
}
