//! What the broker can tell about itself while it runs: counters bumped on the hot path, the
//! registry of open connections, and snapshots of connections, subscriptions and topics for
//! monitoring.
//!
//! # Layout
//! - `counters`: [`Counters`], broker-wide atomic counters (one relaxed `fetch_add` per event,
//!   no lock, no allocation) and their plain [`CountersSnapshot`].
//! - `registry`: the open connections with their identity, address, start time and session,
//!   registered by each listener for as long as it lives.
//! - `traffic`: messages and bytes per topic, bounded in how many topics it tracks
//!   ([`TrafficSnapshot`], for `/topicz`).
//! - `snapshot`: the serialisable views ([`ConnectionInfo`], [`SubscriptionInfo`],
//!   [`TopicInfo`]; transport facts are [`crate::ConnectionStats`]) taken by [`crate::BrokerHandle`] on request.
//!
//! Snapshots are taken when asked (a monitoring request), never on the publish path: they read
//! the registry's mutex, the routing trie's read lock and each queue's lock briefly. They are
//! a consistent view of each item, not of the whole broker at one instant.

pub(crate) mod counters;
pub(crate) mod registry;
mod snapshot;
pub(crate) mod traffic;

pub use counters::{Counters, CountersSnapshot, DropReason};
pub use snapshot::{ConnectionInfo, GroupInfo, SubscriptionInfo, TopicInfo};
pub use traffic::{TopicTrafficInfo, TrafficSnapshot};

use crate::router::Router;

pub(crate) use snapshot::connections as snapshot_connections;
pub(crate) use snapshot::policy_name;

/// Every subscription in the routing index.
pub(crate) fn snapshot_subscriptions(router: &Router) -> Vec<SubscriptionInfo> {
    snapshot::subscriptions(&router.routes())
}

/// Every filter in the routing index.
pub(crate) fn snapshot_topics(router: &Router) -> Vec<TopicInfo> {
    snapshot::topics(&router.routes())
}
