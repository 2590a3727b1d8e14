//! The serialisable views monitoring asks for. Field names are the JSON schema of the
//! monitoring endpoints (`/connz`, `/subz`, `/topicz`): add fields, never rename them.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use cassini_protocol::{OverflowPolicy, SessionId};
use serde::Serialize;

use super::registry::Entry;
use crate::router::{FilterRoute, RouteMember};
use crate::transport::ConnectionStats;

/// One open connection.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionInfo {
    /// Broker-assigned id, increasing with each accepted connection.
    pub id: u64,
    /// The identity from the client certificate.
    pub identity: String,
    /// The client's address when the connection was accepted.
    pub remote: String,
    /// The name the client gave in its `Hello` (`client_name`), if any: at most 128
    /// characters, control characters shown as `?`. For logs and monitoring only.
    pub name: Option<String>,
    /// The protocol the client speaks: `quic`, `mqtt/3.1.1` or `mqtt/5`.
    pub protocol: String,
    /// When it was accepted, in milliseconds since the Unix epoch.
    pub connected_at_ms: u64,
    /// How long it has been open, in milliseconds.
    pub uptime_ms: u64,
    /// The session it is attached to (hex), once `Hello` was answered.
    pub session: Option<String>,
    /// Whether that session was resumed rather than created.
    pub resumed: bool,
    /// Transport facts (RTT, congestion window, bytes, streams), when the transport has them.
    pub transport: Option<ConnectionStats>,
    /// The session's subscriptions.
    pub subscriptions: Vec<SubscriptionInfo>,
}

/// One subscription and its queue.
#[derive(Debug, Clone, Serialize)]
pub struct SubscriptionInfo {
    /// The owning session (hex).
    pub session: String,
    /// The subscription's id within its session.
    pub subscription: u64,
    /// Its filter.
    pub filter: String,
    /// Its queue group, if any.
    pub queue_group: Option<String>,
    /// Overflow policy: `drop_oldest`, `drop_newest`, `latest` or `close`.
    pub policy: &'static str,
    /// Queue bound in messages.
    pub max_messages: usize,
    /// Queue bound in message bytes (`PublishedMessage::memory_size`).
    pub max_bytes: usize,
    /// Messages queued now.
    pub depth: usize,
    /// Message bytes queued now: payload, topic, headers, `reply_to` and per-message
    /// overhead (`PublishedMessage::memory_size`).
    pub queued_bytes: usize,
    /// Messages dropped by the policy since the subscription started.
    pub dropped: u64,
    /// `at_most_once`, or `at_least_once` (acknowledged deliveries with redelivery).
    pub delivery: &'static str,
    /// At-least-once: messages sent and not yet acknowledged (0 otherwise).
    pub in_flight: usize,
    /// At-least-once: messages sent again since the subscription started.
    pub redelivered: u64,
    /// The last sequence number assigned.
    pub last_sequence: u64,
    /// Whether a writer is draining the queue (its session is attached to a connection).
    pub attached: bool,
}

/// A queue group of one filter.
#[derive(Debug, Clone, Serialize)]
pub struct GroupInfo {
    /// The group's name.
    pub name: String,
    /// How many subscriptions share it.
    pub members: usize,
}

/// One subscribed filter.
#[derive(Debug, Clone, Serialize)]
pub struct TopicInfo {
    /// The filter.
    pub filter: String,
    /// Subscriptions that get every message.
    pub subscriptions: usize,
    /// Queue groups sharing the messages.
    pub groups: Vec<GroupInfo>,
    /// Messages queued across its subscriptions.
    pub queued_messages: usize,
    /// Message bytes queued across its subscriptions.
    pub queued_bytes: usize,
    /// Messages dropped across its current subscriptions.
    pub dropped: u64,
}

pub(crate) fn policy_name(policy: OverflowPolicy) -> &'static str {
    match policy {
        OverflowPolicy::DropOldest => "drop_oldest",
        OverflowPolicy::DropNewest => "drop_newest",
        OverflowPolicy::Latest => "latest",
        OverflowPolicy::Close => "close",
    }
}

pub(crate) fn subscription_info(route: &FilterRoute, member: &RouteMember) -> SubscriptionInfo {
    let stats = member.queue.stats();
    let bounds = member.queue.bounds();
    SubscriptionInfo {
        session: member.key.session.to_string(),
        subscription: member.key.subscription,
        filter: route.filter().to_string(),
        queue_group: member.group.as_deref().map(str::to_string),
        policy: policy_name(bounds.overflow),
        max_messages: bounds.max_messages,
        max_bytes: bounds.max_bytes,
        depth: stats.depth,
        queued_bytes: stats.bytes,
        dropped: stats.dropped_total,
        delivery: if bounds.acks.is_some() {
            "at_least_once"
        } else {
            "at_most_once"
        },
        in_flight: stats.in_flight,
        redelivered: stats.redelivered_total,
        last_sequence: stats.last_sequence,
        attached: member.queue.is_attached(),
    }
}

/// Every subscription of every route, ordered by session then subscription id.
pub(crate) fn subscriptions(routes: &[std::sync::Arc<FilterRoute>]) -> Vec<SubscriptionInfo> {
    let mut out = Vec::new();
    for route in routes {
        let members = route.members();
        let groups = members.groups().iter().flat_map(|group| group.members());
        for member in members.plain().iter().chain(groups) {
            out.push(subscription_info(route, member));
        }
    }
    out.sort_by(|a, b| {
        (a.session.as_str(), a.subscription).cmp(&(b.session.as_str(), b.subscription))
    });
    out
}

/// Every route as a topic, ordered by filter.
pub(crate) fn topics(routes: &[std::sync::Arc<FilterRoute>]) -> Vec<TopicInfo> {
    let mut out: Vec<TopicInfo> = routes
        .iter()
        .map(|route| {
            let members = route.members();
            let mut topic = TopicInfo {
                filter: route.filter().to_string(),
                subscriptions: members.plain().len(),
                groups: members
                    .groups()
                    .iter()
                    .map(|group| GroupInfo {
                        name: group.name().to_string(),
                        members: group.members().len(),
                    })
                    .collect(),
                queued_messages: 0,
                queued_bytes: 0,
                dropped: 0,
            };
            let groups = members.groups().iter().flat_map(|group| group.members());
            for member in members.plain().iter().chain(groups) {
                let stats = member.queue.stats();
                topic.queued_messages += stats.depth;
                topic.queued_bytes += stats.bytes;
                topic.dropped += stats.dropped_total;
            }
            topic
        })
        .collect();
    out.sort_by(|a, b| a.filter.cmp(&b.filter));
    out
}

/// The open connections, each with its session's subscriptions.
pub(crate) fn connections(
    entries: Vec<Entry>,
    subscriptions: Vec<SubscriptionInfo>,
) -> Vec<ConnectionInfo> {
    let mut by_session: HashMap<String, Vec<SubscriptionInfo>> = HashMap::new();
    for subscription in subscriptions {
        by_session
            .entry(subscription.session.clone())
            .or_default()
            .push(subscription);
    }
    entries
        .into_iter()
        .map(|entry| {
            let session = entry.session.map(|id: SessionId| id.to_string());
            let subscriptions = session
                .as_ref()
                .and_then(|id| by_session.remove(id))
                .unwrap_or_default();
            let peer = entry.connection.peer();
            ConnectionInfo {
                id: entry.id,
                identity: peer.identity.to_string(),
                remote: peer.remote_addr.to_string(),
                name: entry.client_name,
                protocol: entry.connection.protocol().to_string(),
                connected_at_ms: entry
                    .connected_at
                    .duration_since(UNIX_EPOCH)
                    .map(|since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
                    .unwrap_or(0),
                uptime_ms: u64::try_from(entry.started.elapsed().as_millis()).unwrap_or(u64::MAX),
                session,
                resumed: entry.resumed,
                transport: entry.connection.stats(),
                subscriptions,
            }
        })
        .collect()
}
