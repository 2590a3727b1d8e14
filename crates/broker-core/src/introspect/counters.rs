//! Broker-wide counters. Each is one relaxed atomic add on the path that counts it; they are
//! read only by monitoring, which tolerates a count that is a moment old.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Why a message was dropped before reaching a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// `DropOldest`: an older queued message made room for a new one.
    DropOldest,
    /// `Latest`: a queued message was replaced by a newer one.
    Latest,
    /// `DropNewest`: the new message did not fit.
    DropNewest,
    /// `Close`: the queue overflowed and the subscription was closed (`SLOW_CONSUMER`).
    SlowConsumer,
}

impl DropReason {
    /// Every reason, in a fixed order.
    pub const ALL: [DropReason; 4] = [
        DropReason::DropOldest,
        DropReason::Latest,
        DropReason::DropNewest,
        DropReason::SlowConsumer,
    ];

    /// The label value used in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::DropOldest => "drop_oldest",
            DropReason::Latest => "latest",
            DropReason::DropNewest => "drop_newest",
            DropReason::SlowConsumer => "slow_consumer",
        }
    }
}

/// Counters of everything that passed through the broker since it started.
#[derive(Debug, Default)]
pub struct Counters {
    messages_received: AtomicU64,
    bytes_received: AtomicU64,
    publishes_rejected: AtomicU64,
    duplicates: AtomicU64,
    duplicates_skipped: AtomicU64,
    no_responders: AtomicU64,
    deliveries_queued: AtomicU64,
    delivery_bytes_queued: AtomicU64,
    dropped: [AtomicU64; 4],
    sessions_created: AtomicU64,
    sessions_resumed: AtomicU64,
    connections_refused_limit: AtomicU64,
    connections_refused_shutdown: AtomicU64,
    events_published: AtomicU64,
    events_dropped: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CountersSnapshot {
    /// Publishes accepted and routed (duplicates of acknowledged publishes excluded).
    pub messages_received: u64,
    /// Payload bytes of those publishes.
    pub bytes_received: u64,
    /// Publishes refused with `PublishRejected` (too large, bad topic, retained store full...).
    pub publishes_rejected: u64,
    /// Acknowledged publishes recognised as duplicates and not routed again.
    pub duplicates: u64,
    /// In a cluster: copies of an acknowledged publish resent through another node that were
    /// not handed again to subscriptions of this node that had it (those not replicated).
    pub duplicates_skipped: u64,
    /// Requests that reached no subscriber (answered with `NoResponders`).
    pub no_responders: u64,
    /// Message copies queued to subscriptions: the broker's outgoing messages, before any
    /// later drop by a full queue's policy.
    pub deliveries_queued: u64,
    /// Payload bytes of those copies.
    pub delivery_bytes_queued: u64,
    /// Messages dropped by a full queue's policy, `DropOldest`.
    pub dropped_oldest: u64,
    /// Messages replaced under `Latest`.
    pub dropped_latest: u64,
    /// Messages refused under `DropNewest`.
    pub dropped_newest: u64,
    /// Subscriptions closed for overflowing under `Close`.
    pub dropped_slow_consumer: u64,
    /// Sessions created by a `Hello` without resume (or whose resume found nothing).
    pub sessions_created: u64,
    /// Sessions resumed by a reconnecting client.
    pub sessions_resumed: u64,
    /// Connections refused over `max_connections`.
    pub connections_refused_limit: u64,
    /// Connections refused while shutting down.
    pub connections_refused_shutdown: u64,
    /// System events published on `$SYS.event.>` (not counted in `messages_received`).
    pub events_published: u64,
    /// System events dropped: the event queue was full (nobody took them in time), or the
    /// memory budget refused them.
    pub events_dropped: u64,
}

impl CountersSnapshot {
    /// Dropped messages for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::DropOldest => self.dropped_oldest,
            DropReason::Latest => self.dropped_latest,
            DropReason::DropNewest => self.dropped_newest,
            DropReason::SlowConsumer => self.dropped_slow_consumer,
        }
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Counters {
    /// A publish was accepted and routed.
    pub(crate) fn received(&self, payload_bytes: usize) {
        add(&self.messages_received, 1);
        add(&self.bytes_received, payload_bytes as u64);
    }

    /// A publish was refused.
    pub(crate) fn rejected(&self) {
        add(&self.publishes_rejected, 1);
    }

    /// An acknowledged publish was a duplicate.
    pub(crate) fn duplicate(&self) {
        add(&self.duplicates, 1);
    }

    /// A resent acknowledged publish was not handed again to a subscription that had it.
    pub(crate) fn duplicate_skipped(&self) {
        add(&self.duplicates_skipped, 1);
    }

    /// A request reached nobody.
    pub(crate) fn no_responders(&self) {
        add(&self.no_responders, 1);
    }

    /// A message copy of `payload_bytes` was queued to a subscription.
    pub(crate) fn queued(&self, payload_bytes: usize) {
        add(&self.deliveries_queued, 1);
        add(&self.delivery_bytes_queued, payload_bytes as u64);
    }

    /// `count` messages were dropped for `reason`.
    pub(crate) fn dropped(&self, reason: DropReason, count: u64) {
        let index = DropReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        add(&self.dropped[index], count);
    }

    /// A session was opened on a connection.
    pub(crate) fn session_opened(&self, resumed: bool) {
        add(
            if resumed {
                &self.sessions_resumed
            } else {
                &self.sessions_created
            },
            1,
        );
    }

    /// A connection was refused: over the limit, or during shutdown.
    pub(crate) fn connection_refused(&self, shutting_down: bool) {
        add(
            if shutting_down {
                &self.connections_refused_shutdown
            } else {
                &self.connections_refused_limit
            },
            1,
        );
    }

    /// A system event was published.
    pub(crate) fn event_published(&self) {
        add(&self.events_published, 1);
    }

    /// A system event was dropped.
    pub(crate) fn event_dropped(&self) {
        add(&self.events_dropped, 1);
    }

    /// The current values.
    pub fn snapshot(&self) -> CountersSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CountersSnapshot {
            messages_received: load(&self.messages_received),
            bytes_received: load(&self.bytes_received),
            publishes_rejected: load(&self.publishes_rejected),
            duplicates: load(&self.duplicates),
            duplicates_skipped: load(&self.duplicates_skipped),
            no_responders: load(&self.no_responders),
            deliveries_queued: load(&self.deliveries_queued),
            delivery_bytes_queued: load(&self.delivery_bytes_queued),
            dropped_oldest: load(&self.dropped[0]),
            dropped_latest: load(&self.dropped[1]),
            dropped_newest: load(&self.dropped[2]),
            dropped_slow_consumer: load(&self.dropped[3]),
            sessions_created: load(&self.sessions_created),
            sessions_resumed: load(&self.sessions_resumed),
            connections_refused_limit: load(&self.connections_refused_limit),
            connections_refused_shutdown: load(&self.connections_refused_shutdown),
            events_published: load(&self.events_published),
            events_dropped: load(&self.events_dropped),
        }
    }
}
