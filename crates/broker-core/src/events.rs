//! System events: what the broker tells about itself on the reserved topics
//! `$SYS.event.<kind>` (see docs/EVENTS.md for every field).
//!
//! This module holds the events ([`Event`], [`EventKind`]) and the `EventSink` every part of
//! the broker emits them into. Emitting never waits: the sink is a bounded channel
//! (`events.queue` events) and an event that finds it full is dropped and counted
//! (`events_dropped`). The broker's system publisher (`system_events`, a task the supervisor
//! starts) drains it and publishes each event as JSON through the one admission path, and adds
//! the events it finds itself by looking (periodic stats, slow consumers of the dropping
//! policies, store warnings).
//!
//! Who may read them is the ACL's decision: system topics are reserved, so only an ACL rule
//! that names `$SYS` literally lets an identity subscribe (none does by default, as NATS's
//! system account is closed by default). No client may publish to them.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::introspect::counters::Counters;
use crate::log_budget::LogBudget;

/// The topic every event is published under: `$SYS.event.<kind>`.
pub const TOPIC_PREFIX: &str = "$SYS.event";

/// What an event is about; the last token of its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A client connected and its session is attached.
    Connect,
    /// A client that connected is gone, with the reason.
    Disconnect,
    /// A TLS handshake was refused: no, an untrusted or a revoked certificate, no identity in
    /// it, or a timeout.
    AuthenticationFailed,
    /// The ACL refused a publish, a subscription, a `reply_to` or a queue group.
    AuthorizationFailed,
    /// A subscription's queue overflowed: messages were dropped by its policy, or it was
    /// closed (`close` policy, `SLOW_CONSUMER`).
    SlowConsumer,
    /// A detached session expired (its subscriptions and queued messages are gone).
    SessionExpired,
    /// The disk store needs attention: nearly full, failed, or a slow commit.
    StoreWarning,
    /// The periodic statistics (`events.stats_interval`).
    Stats,
}

impl EventKind {
    /// Every kind, in a fixed order.
    pub const ALL: [EventKind; 8] = [
        EventKind::Connect,
        EventKind::Disconnect,
        EventKind::AuthenticationFailed,
        EventKind::AuthorizationFailed,
        EventKind::SlowConsumer,
        EventKind::SessionExpired,
        EventKind::StoreWarning,
        EventKind::Stats,
    ];

    /// The kind's name: the last token of its topic and the `kind` field of its payload.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Disconnect => "disconnect",
            EventKind::AuthenticationFailed => "authentication_failed",
            EventKind::AuthorizationFailed => "authorization_failed",
            EventKind::SlowConsumer => "slow_consumer",
            EventKind::SessionExpired => "session_expired",
            EventKind::StoreWarning => "store_warning",
            EventKind::Stats => "stats",
        }
    }

    /// The kind named `name` ([`EventKind::as_str`]).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }

    /// The topic events of this kind are published to: `$SYS.event.<kind>`.
    pub fn topic(self) -> String {
        format!("{TOPIC_PREFIX}.{}", self.as_str())
    }
}

/// One system event. Its payload is this as a JSON object: `kind` (the [`EventKind`] name),
/// `time_ms` (when it happened, ms since the Unix epoch) and the kind's fields below.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A client connected: its `Hello` was answered and its session attached.
    Connect {
        /// The certificate identity.
        identity: String,
        /// The client's address.
        remote: String,
        /// The session it attached (hex).
        session: String,
        /// Whether the session was resumed rather than created.
        resumed: bool,
    },
    /// A connection that had connected ended.
    Disconnect {
        /// The certificate identity.
        identity: String,
        /// The client's address.
        remote: String,
        /// Its session (hex): ended by a goodbye, otherwise detached until it expires.
        session: String,
        /// Why, in words.
        reason: String,
        /// The close code's name when the broker closed it for a reason (`PROTOCOL_VIOLATION`,
        /// `SERVER_SHUTTING_DOWN`, ...); absent for a goodbye or a lost connection.
        code: Option<String>,
        /// Whether the client said goodbye.
        clean: bool,
        /// How long it was connected, in ms.
        connected_ms: u64,
    },
    /// A TLS handshake (client authentication) was refused.
    AuthenticationFailed {
        /// The client's address.
        remote: String,
        /// `tls` (certificate refused), `timeout`, `no_identity`, `revoked` (by a reload during
        /// the handshake) or `other`.
        failure: String,
        /// The transport's words.
        reason: String,
    },
    /// The ACL refused something a client asked.
    AuthorizationFailed {
        /// The certificate identity.
        identity: String,
        /// What was refused: `publish to`, `ask for replies on`, `subscribe to` or
        /// `join queue group`.
        action: String,
        /// The topic, filter or group.
        target: String,
    },
    /// A subscription's queue overflowed.
    SlowConsumer {
        /// The certificate identity, when known (the session is attached, or the session
        /// reported it).
        identity: Option<String>,
        /// The session (hex).
        session: String,
        /// The subscription's id in its session.
        subscription: u64,
        /// Its filter.
        filter: String,
        /// Its overflow policy: `drop_oldest`, `latest`, `drop_newest` or `close`.
        policy: String,
        /// Messages dropped since the last event for this subscription (with `closed`: the
        /// message that overflowed the queue and any dropped before it).
        dropped: u64,
        /// Whether the subscription was closed (`SLOW_CONSUMER`).
        closed: bool,
    },
    /// A detached session expired.
    SessionExpired {
        /// The certificate identity.
        identity: String,
        /// The session (hex).
        session: String,
        /// Its name, if it had one.
        name: Option<String>,
        /// How long it was detached, in ms.
        detached_ms: u64,
    },
    /// The disk store needs attention.
    StoreWarning {
        /// `nearly_full` (live bytes passed 90% of `storage.max_bytes`), `failed` (a commit
        /// failed: publishes are refused from now on) or `slow_commit` (a commit took over a
        /// second).
        warning: String,
        /// In words.
        detail: String,
        /// Live bytes now.
        live_bytes: u64,
        /// `storage.max_bytes`.
        max_bytes: u64,
    },
    /// The periodic statistics.
    Stats(Stats),
}

/// The periodic statistics: a summary of `/varz` (which has everything).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Seconds since the broker started.
    pub uptime_secs: u64,
    /// Open connections.
    pub connections: usize,
    /// Subscriptions in the routing index.
    pub subscriptions: usize,
    /// Publishes accepted since the start.
    pub messages_received: u64,
    /// Their payload bytes.
    pub bytes_received: u64,
    /// Message copies queued to subscriptions since the start.
    pub deliveries_queued: u64,
    /// Messages dropped by queue policies since the start (all reasons).
    pub dropped: u64,
    /// Publishes refused since the start.
    pub publishes_rejected: u64,
    /// Bytes the memory budget counts now.
    pub memory_used_bytes: usize,
    /// The memory budget.
    pub memory_limit_bytes: usize,
    /// Live bytes of the disk store (absent in memory mode).
    pub storage_live_bytes: Option<u64>,
    /// System events dropped since the start (the event queue was full).
    pub events_dropped: u64,
}

impl Event {
    /// The event's kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Event::Connect { .. } => EventKind::Connect,
            Event::Disconnect { .. } => EventKind::Disconnect,
            Event::AuthenticationFailed { .. } => EventKind::AuthenticationFailed,
            Event::AuthorizationFailed { .. } => EventKind::AuthorizationFailed,
            Event::SlowConsumer { .. } => EventKind::SlowConsumer,
            Event::SessionExpired { .. } => EventKind::SessionExpired,
            Event::StoreWarning { .. } => EventKind::StoreWarning,
            Event::Stats(_) => EventKind::Stats,
        }
    }

    /// The JSON payload: the event's fields with `kind` and `time_ms`.
    pub fn payload(&self, time_ms: u64) -> Vec<u8> {
        let mut value = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(fields) = &mut value {
            fields.insert("time_ms".into(), time_ms.into());
        }
        serde_json::to_vec(&value).unwrap_or_default()
    }
}

/// An event and when it happened (ms since the Unix epoch).
pub(crate) type Stamped = (u64, Event);

/// Where events are emitted; cheap to clone. See the module docs.
#[derive(Debug, Clone)]
pub(crate) struct EventSink {
    sender: mpsc::Sender<Stamped>,
    /// This broker's allowance per second of the kinds a client can cause at will.
    floods: Arc<FloodBudgets>,
}

/// See [`FLOOD_KINDS_PER_SECOND`].
#[derive(Debug)]
struct FloodBudgets {
    authentication_failed: LogBudget,
    authorization_failed: LogBudget,
    slow_consumer: LogBudget,
}

impl EventSink {
    /// A sink holding at most `capacity` events (at least 1) until the system publisher takes
    /// them, and the receiving end for that publisher.
    pub(crate) fn new(capacity: usize) -> (Self, mpsc::Receiver<Stamped>) {
        let (sender, receiver) = mpsc::channel(capacity.max(1));
        let floods = Arc::new(FloodBudgets {
            authentication_failed: LogBudget::new(FLOOD_KINDS_PER_SECOND),
            authorization_failed: LogBudget::new(FLOOD_KINDS_PER_SECOND),
            slow_consumer: LogBudget::new(FLOOD_KINDS_PER_SECOND),
        });
        (Self { sender, floods }, receiver)
    }

    /// Emits `event` now; never waits. A full queue (or a stopped publisher) drops it, counted
    /// in `counters` as `events_dropped`; so does a kind a client can cause at will past
    /// [`FLOOD_KINDS_PER_SECOND`] a second, so that it cannot crowd the others out.
    pub(crate) fn emit(&self, event: Event, counters: &Counters) {
        let floods = &self.floods;
        let budget = match event.kind() {
            EventKind::AuthenticationFailed => Some(&floods.authentication_failed),
            EventKind::AuthorizationFailed => Some(&floods.authorization_failed),
            EventKind::SlowConsumer => Some(&floods.slow_consumer),
            _ => None,
        };
        if budget.is_some_and(|budget| budget.admit().is_none()) {
            counters.event_dropped();
            return;
        }
        if self.sender.try_send((now_ms(), event)).is_err() {
            counters.event_dropped();
        }
    }
}

/// The most events a second of each kind a client can cause at will (a refused handshake, a
/// refused publish or subscribe, an overflowing subscription of its own); the rest of them are
/// dropped and counted, and the queue keeps room for every other kind.
pub const FLOOD_KINDS_PER_SECOND: u64 = 100;

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_kind_leaves_room_for_the_others() {
        let (sink, mut receiver) = EventSink::new(1_000);
        let counters = Counters::default();
        for i in 0..300 {
            let refused = Event::AuthorizationFailed {
                identity: "mallory".into(),
                action: "publish to".into(),
                target: format!("x.{i}"),
            };
            sink.emit(refused, &counters);
        }
        sink.emit(
            Event::SessionExpired {
                identity: "alice".into(),
                session: "s".into(),
                name: None,
                detached_ms: 0,
            },
            &counters,
        );
        let mut kinds = Vec::new();
        while let Ok((_, event)) = receiver.try_recv() {
            kinds.push(event.kind());
        }
        let floods = kinds
            .iter()
            .filter(|kind| **kind == EventKind::AuthorizationFailed)
            .count();
        // 100 a second (twice that if the loop straddles a second).
        assert!(floods <= 2 * FLOOD_KINDS_PER_SECOND as usize, "{floods}");
        assert_eq!(kinds.last(), Some(&EventKind::SessionExpired));
        assert_eq!(
            counters.snapshot().events_dropped,
            300 - floods as u64,
            "the rest counted"
        );
    }

    #[test]
    fn payloads_carry_kind_time_and_fields() {
        let event = Event::AuthorizationFailed {
            identity: "sensor-1".into(),
            action: "publish to".into(),
            target: "orders.x".into(),
        };
        let payload: serde_json::Value = serde_json::from_slice(&event.payload(42)).expect("JSON");
        assert_eq!(payload["kind"], "authorization_failed");
        assert_eq!(payload["time_ms"], 42);
        assert_eq!(payload["identity"], "sensor-1");
        assert_eq!(payload["target"], "orders.x");
        assert_eq!(event.kind().topic(), "$SYS.event.authorization_failed");
    }

    #[test]
    fn stats_are_flat() {
        let event = Event::Stats(Stats {
            uptime_secs: 1,
            connections: 2,
            subscriptions: 3,
            messages_received: 4,
            bytes_received: 5,
            deliveries_queued: 6,
            dropped: 7,
            publishes_rejected: 8,
            memory_used_bytes: 9,
            memory_limit_bytes: 10,
            storage_live_bytes: None,
            events_dropped: 11,
        });
        let payload: serde_json::Value = serde_json::from_slice(&event.payload(1)).expect("JSON");
        assert_eq!(payload["kind"], "stats");
        assert_eq!(payload["connections"], 2);
        assert_eq!(payload["events_dropped"], 11);
    }

    #[test]
    fn kinds_round_trip_by_name() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(EventKind::from_name("nope"), None);
    }

    #[test]
    fn a_full_sink_drops_and_counts() {
        let counters = Counters::default();
        let (sink, mut receiver) = EventSink::new(1);
        let event = || Event::AuthenticationFailed {
            remote: "127.0.0.1:1".into(),
            failure: "tls".into(),
            reason: "bad".into(),
        };
        sink.emit(event(), &counters);
        sink.emit(event(), &counters);
        assert_eq!(counters.snapshot().events_dropped, 1);
        assert!(receiver.try_recv().is_ok());
        assert!(receiver.try_recv().is_err());
    }
}
