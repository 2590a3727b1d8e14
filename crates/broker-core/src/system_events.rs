//! The system publisher: the task that publishes system events (`crate::events`) on
//! `$SYS.event.<kind>`, started by the supervisor and stopped with the broker.
//!
//! It takes the events the broker emitted from the sink's bounded queue and publishes each as
//! JSON through the one admission path ([`Publisher::system`]), so every subscription (and its
//! queue bound and overflow policy) treats it like any message. It also looks for what no
//! handler reports as it happens:
//! - every `events.stats_interval`: a `stats` event;
//! - every second, only when the broker-wide drop counters moved: a `slow_consumer` event for
//!   each subscription whose policy dropped messages since the last look, and for each one
//!   closed by overflow (`close` policy) not yet reported (its session reports it when the
//!   subscription ends, if that comes first: a stalled subscriber's ends only when its stream
//!   moves again);
//! - every second in disk mode: a `store_warning` when the store failed, when its live bytes
//!   pass 90% of `storage.max_bytes` (again only after falling below 80%), or when a commit
//!   took over a second;
//! - every minute: a sweep of the traffic table (`introspect::traffic`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use cassini_protocol::{Publish, SessionId};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::admission::Publisher;
use crate::context::Shared;
use crate::events::{Event, Stamped, Stats};
use crate::introspect::counters::DropReason;
use crate::introspect::policy_name;
use crate::router::SubscriberKey;

/// How often slow consumers and the store are looked at.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How often the traffic table is swept.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// A commit slower than this is a `slow_commit` warning.
const SLOW_COMMIT_MICROS: u64 = 1_000_000;

/// Publishes events until the task is aborted (the supervisor does when it stops).
pub(crate) async fn run(shared: Arc<Shared>, mut events: mpsc::Receiver<Stamped>) {
    let started = Instant::now();
    let mut publisher = Publisher::system();
    let mut watch = Watch::default();
    let stats_interval = shared.config.events.stats_interval;
    let mut stats = tokio::time::interval(if stats_interval.is_zero() {
        Duration::from_secs(3600)
    } else {
        stats_interval
    });
    let mut checks = tokio::time::interval(CHECK_INTERVAL);
    let mut sweeps = tokio::time::interval(SWEEP_INTERVAL);
    for interval in [&mut stats, &mut checks, &mut sweeps] {
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // The first tick of an interval is at once: none is wanted at the start.
        interval.reset();
    }
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some((time_ms, event)) => publish(&shared, &mut publisher, time_ms, &event),
                None => return,
            },
            _ = stats.tick(), if !stats_interval.is_zero() => {
                let event = stats_event(&shared, started.elapsed());
                publish(&shared, &mut publisher, crate::events::now_ms(), &event);
            }
            _ = checks.tick() => {
                for event in watch.look(&shared) {
                    publish(&shared, &mut publisher, crate::events::now_ms(), &event);
                }
            }
            _ = sweeps.tick() => {
                shared.traffic.sweep();
            }
        }
    }
}

/// Publishes one event through admission (which counts it as published or dropped).
fn publish(shared: &Shared, publisher: &mut Publisher, time_ms: u64, event: &Event) {
    let mut publish = Publish {
        topic: event.kind().topic(),
        headers: Default::default(),
        payload: Bytes::from(event.payload(time_ms)),
        message_id: None,
        reply_to: None,
        retain: false,
        to_session: None,
        ack: false,
    };
    if let Err(err) = publisher.admit(shared, &mut publish) {
        tracing::debug!(topic = %publish.topic, %err, "a system event was not published");
    }
}

fn stats_event(shared: &Shared, uptime: Duration) -> Event {
    let counters = shared.router.counters().snapshot();
    let subscriptions = shared
        .router
        .routes()
        .iter()
        .map(|route| route.members().all().count())
        .sum();
    Event::Stats(Stats {
        uptime_secs: uptime.as_secs(),
        connections: shared.registry.len(),
        subscriptions,
        messages_received: counters.messages_received,
        bytes_received: counters.bytes_received,
        deliveries_queued: counters.deliveries_queued,
        dropped: DropReason::ALL
            .iter()
            .map(|reason| counters.dropped(*reason))
            .sum(),
        publishes_rejected: counters.publishes_rejected,
        memory_used_bytes: shared.memory.used(),
        memory_limit_bytes: shared.memory.limit(),
        storage_live_bytes: shared.storage.as_ref().map(|store| store.live_bytes()),
        events_dropped: counters.events_dropped,
    })
}

/// What the periodic look remembers between looks.
#[derive(Default)]
struct Watch {
    /// The broker-wide drops (every policy), at the last look.
    drops: u64,
    /// Each subscription's drop count at the last look that saw it.
    dropped: HashMap<SubscriberKey, u64>,
    /// Whether the store was reported failed, or nearly full (until it fell below 80%).
    store_failed: bool,
    store_nearly_full: bool,
    /// The store's commit count at the last look.
    commits: u64,
}

impl Watch {
    /// The events found since the last look.
    fn look(&mut self, shared: &Shared) -> Vec<Event> {
        let mut found = Vec::new();
        self.slow_consumers(shared, &mut found);
        self.store(shared, &mut found);
        found
    }

    fn slow_consumers(&mut self, shared: &Shared, found: &mut Vec<Event>) {
        let counters = shared.router.counters().snapshot();
        let drops = DropReason::ALL
            .iter()
            .map(|reason| counters.dropped(*reason))
            .sum();
        if drops == self.drops {
            return;
        }
        self.drops = drops;
        let identities: HashMap<SessionId, String> = shared
            .registry
            .entries()
            .into_iter()
            .filter_map(|entry| {
                let session = entry.session?;
                Some((session, entry.connection.peer().identity.to_string()))
            })
            .collect();
        let mut seen = HashMap::with_capacity(self.dropped.len());
        for route in shared.router.routes() {
            let members = route.members();
            for member in members.all() {
                let dropped = member.queue.stats().dropped_total;
                let before = self.dropped.get(&member.key).copied().unwrap_or(0);
                seen.insert(member.key, dropped);
                let closed = member.queue.overflow_to_report();
                if dropped <= before && !closed {
                    continue;
                }
                found.push(Event::SlowConsumer {
                    identity: identities.get(&member.key.session).cloned(),
                    session: member.key.session.to_string(),
                    subscription: member.key.subscription,
                    filter: route.filter().to_string(),
                    policy: policy_name(member.queue.bounds().overflow).to_string(),
                    dropped: if closed {
                        dropped + 1
                    } else {
                        dropped - before
                    },
                    closed,
                });
            }
        }
        self.dropped = seen;
    }

    fn store(&mut self, shared: &Shared, found: &mut Vec<Event>) {
        let Some(store) = &shared.storage else {
            return;
        };
        let stats = store.stats();
        let warning = |warning: &str, detail: String| Event::StoreWarning {
            warning: warning.into(),
            detail,
            live_bytes: stats.live_bytes,
            max_bytes: stats.max_bytes,
        };
        if let Some(failure) = &stats.failed {
            if !self.store_failed {
                self.store_failed = true;
                found.push(warning(
                    "failed",
                    format!("the store failed, publishes are refused: {failure}"),
                ));
            }
        }
        let max = stats.max_bytes.max(1);
        if !self.store_nearly_full && stats.live_bytes.saturating_mul(10) > max.saturating_mul(9) {
            self.store_nearly_full = true;
            found.push(warning(
                "nearly_full",
                format!(
                    "the store holds {} of its {} bytes",
                    stats.live_bytes, stats.max_bytes
                ),
            ));
        } else if self.store_nearly_full
            && stats.live_bytes.saturating_mul(10) < max.saturating_mul(8)
        {
            self.store_nearly_full = false;
        }
        if stats.commits != self.commits {
            self.commits = stats.commits;
            if stats.last_commit_micros > SLOW_COMMIT_MICROS {
                found.push(warning(
                    "slow_commit",
                    format!(
                        "a commit (write and fsync) took {} ms",
                        stats.last_commit_micros / 1000
                    ),
                ));
            }
        }
    }
}
