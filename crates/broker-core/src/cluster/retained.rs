//! Retained values from the cluster's Raft log (docs/CLUSTERING.md, "Retained values and the
//! dedupe window"): in a cluster with `members`, every retained change goes through the log,
//! and each time this node applies an entry that changed (or refused) a topic's value, the
//! router's value of that topic is replaced by the log's. So a subscriber on any node gets the
//! latest retained value, also after the node where it was published died.
//!
//! It names no transport and owns nothing: the log's values are the replica's, the local ones
//! the router's.

use std::sync::{Arc, Weak};

use cassini_protocol::{TopicLimits, TopicName};
use cassini_replication::Replica;

use crate::memory::MemoryBudget;
use crate::router::Router;
use crate::storage::cluster_wide::retained_value;

/// Makes `router`'s retained values follow `replica`'s log from now on, and replaces them with
/// what the log holds already (a restarted node's values come from its Raft file and the
/// leader, not from its disk store). Values are charged to `memory` (always: the cluster
/// already holds them).
pub(crate) fn follow(
    router: &Arc<Router>,
    memory: &Arc<MemoryBudget>,
    limits: TopicLimits,
    replica: &Arc<Replica>,
) {
    let (to_router, to_memory, to_replica): (Weak<Router>, Weak<MemoryBudget>, Weak<Replica>) = (
        Arc::downgrade(router),
        Arc::downgrade(memory),
        Arc::downgrade(replica),
    );
    replica.on_shared_change(Arc::new(move |topics| {
        let (Some(router), Some(memory), Some(replica)) = (
            to_router.upgrade(),
            to_memory.upgrade(),
            to_replica.upgrade(),
        ) else {
            return;
        };
        refresh(&router, &memory, &limits, &replica, topics);
    }));
    let mut topics = replica.retained_topics();
    topics.extend(
        router
            .retained_topics()
            .iter()
            .map(|topic| topic.as_str().to_owned()),
    );
    topics.sort();
    topics.dedup();
    refresh(router, memory, &limits, replica, &topics);
}

/// Replaces the router's value of each of `topics` with the log's.
fn refresh(
    router: &Router,
    memory: &Arc<MemoryBudget>,
    limits: &TopicLimits,
    replica: &Replica,
    topics: &[String],
) {
    for topic in topics {
        let Ok(name) = TopicName::parse(topic, limits) else {
            tracing::warn!(%topic, "a retained value in the cluster's log has a topic not valid under this node's limits: not kept here");
            continue;
        };
        let value = replica
            .retained(topic)
            .and_then(|bytes| match retained_value(topic, &bytes, limits) {
                Ok((mut message, owner)) => {
                    message.charge = memory.force_message(message.memory_size());
                    Some((message, owner))
                }
                Err(err) => {
                    tracing::warn!(%topic, %err, "a retained value in the cluster's log cannot be read: not kept here");
                    None
                }
            });
        router.set_retained_from_cluster(&name, value);
    }
}
