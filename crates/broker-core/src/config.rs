//! Broker configuration: plain structs with defaults. Each field says what it bounds and what
//! raising it costs.

use std::path::PathBuf;
use std::time::Duration;

use cassini_protocol::codec::DEFAULT_MAX_FRAME_BYTES;

use cassini_protocol::{Limits, OverflowPolicy, SubscribeOptions, TopicLimits};

/// Everything the broker core needs to know.
#[derive(Debug, Clone, Default)]
pub struct BrokerConfig {
    /// Size limits announced to clients and enforced on every frame.
    pub limits: BrokerLimits,
    /// Per-subscription queue bounds.
    pub queue: QueueConfig,
    /// Session lifetime rules.
    pub sessions: SessionConfig,
    /// The window in which a retried acknowledged publish is recognised as a duplicate.
    pub dedupe: DedupeConfig,
    /// What clients are told when the broker shuts down.
    pub shutdown: ShutdownConfig,
    /// Where state is kept: memory (the default) or disk.
    pub storage: StorageConfig,
    /// System events on `$SYS.event.>`.
    pub events: EventsConfig,
    /// The ACL the broker starts with (default: every authenticated client may do everything
    /// on non-system topics, but read only its own reply inboxes). Replace it while running with `BrokerHandle::set_acl`.
    pub acl: crate::acl::Acl,
    /// This node's cluster settings; `None` (the default): a standalone broker
    /// (docs/CLUSTERING.md).
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

/// System events (`crate::events`; docs/EVENTS.md).
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// How often the `stats` event is published; zero publishes none.
    pub stats_interval: Duration,
    /// Events waiting to be published at most; an event that finds the queue full is dropped
    /// and counted (`events_dropped`). Memory: up to this many events of a few hundred bytes.
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            stats_interval: Duration::from_secs(10),
            queue: 1024,
        }
    }
}

/// Graceful shutdown.
#[derive(Debug, Clone)]
pub struct ShutdownConfig {
    /// The reconnect hint sent to every client in `GoingAway`: how long to wait before
    /// reconnecting. Spreads a restart's reconnects out instead of inviting them at once.
    pub reconnect_hint: Duration,
    /// How long a shutdown waits for deliveries: each connection, after its `GoingAway`, keeps
    /// writing its session's queued messages and reading acknowledgements until everything is
    /// delivered (and, at least once, acknowledged) or this passes (less one second kept for
    /// the close to reach the client); then the actor tree is stopped anyway.
    pub drain: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            reconnect_hint: Duration::from_secs(2),
            drain: Duration::from_secs(3),
        }
    }
}

/// Size and count limits.
#[derive(Debug, Clone)]
pub struct BrokerLimits {
    /// Largest publish payload. Larger publishes are rejected with `PAYLOAD_TOO_LARGE`.
    pub max_payload_bytes: u32,
    /// Largest frame body. A declared length above it closes the connection before any
    /// allocation; it bounds the memory one stream can make the broker buffer.
    pub max_frame_bytes: u32,
    /// Most subscriptions per session.
    pub max_subscriptions_per_session: u32,
    /// Most subscriptions one certificate identity may hold over all its sessions; one more is
    /// refused with `TOO_MANY_SUBSCRIPTIONS`.
    pub max_subscriptions_per_identity: u32,
    /// Topic name and filter bounds.
    pub topics: TopicLimits,
    /// Most simultaneous connections; further ones are closed with `TOO_MANY_CONNECTIONS`.
    pub max_connections: usize,
    /// Most simultaneous connections of one certificate identity; further ones are closed with
    /// `TOO_MANY_CONNECTIONS_FOR_IDENTITY`, so one leaked or looping client key cannot take every
    /// connection slot.
    pub max_connections_per_identity: usize,
    /// Most message bytes (what each message really holds: `PublishedMessage::memory_size`) all
    /// of one session's subscription queues may hold together, counted by each queue's byte
    /// bound (a reservation, not what they hold now). A subscription that would exceed it is
    /// refused with `PENDING_BYTES_LIMIT`. The default, 4 GiB, lets a session make all
    /// `max_subscriptions_per_session` (1,024) subscriptions with the default queue bound
    /// (4 MiB): what the queues really hold is bounded by `max_memory_bytes` for the whole
    /// broker.
    pub max_pending_bytes_per_session: u64,
    /// Most publish streams a connection may have open at once; each holds a read buffer of up
    /// to one frame.
    pub max_publish_streams_per_connection: usize,
    /// How long a new connection has to open its control stream and send `Hello`.
    pub hello_timeout: Duration,
    /// Most topics with a retained value; a retained publish to a further topic is rejected
    /// with `RETAINED_STORE_FULL`. Memory: up to this many retained payloads.
    pub max_retained_topics: usize,
    /// Longest queue group name, in bytes.
    pub max_queue_group_bytes: usize,
    /// Most topics whose retained value one certificate identity set; a retained publish of
    /// that identity to a further topic is rejected with `RETAINED_QUOTA_EXCEEDED`. Replacing a
    /// value moves it to the new publisher's quota; clearing it (an empty payload) frees it.
    pub max_retained_topics_per_identity: usize,
    /// Most bytes of retained values (each counted as `PublishedMessage::memory_size`) one
    /// identity set; a retained publish beyond it is rejected with `RETAINED_QUOTA_EXCEEDED`.
    pub max_retained_bytes_per_identity: u64,
    /// Most bytes of retained values of all identities together; a retained publish beyond it
    /// is rejected with `RETAINED_STORE_FULL`. Bounds the retained store's memory.
    pub max_retained_bytes: u64,
    /// Most sessions, attached or detached, of one certificate identity. A new session beyond
    /// it ends that identity's longest-detached session; if none is detached, the new session
    /// is refused with `TOO_MANY_SESSIONS_FOR_IDENTITY`. Another identity's sessions are never
    /// touched.
    pub max_sessions_per_identity: usize,
    /// Most acknowledged publishes of one identity the dedupe window remembers; beyond it the
    /// identity's own oldest is forgotten, never another identity's. `DedupeConfig::max_entries`
    /// bounds all identities together.
    pub max_dedupe_entries_per_identity: usize,
    /// Most headers one publish may carry; more is refused with `TOO_MANY_HEADERS`. At most
    /// [`MAX_DECODED_HEADERS`](cassini_protocol::codec::MAX_DECODED_HEADERS) (the decoder keeps
    /// no more). Each header costs its key and value
    /// plus [`crate::message::HEADER_OVERHEAD_BYTES`] in memory.
    pub max_headers: u32,
    /// Most bytes of header keys and values together in one publish; more is refused with
    /// `HEADERS_TOO_LARGE`. The default leaves room in the default frame for a maximum payload,
    /// maximum headers and the longest topic.
    pub max_header_bytes: u32,
    /// The broker-wide memory budget, in bytes: what accepted messages (queued, in flight,
    /// retained, waiting for the disk, each counted once), the queue entries holding them
    /// (40 bytes in each queue a message waits in) and frame buffers may hold together.
    /// A publish that would go past it is refused with `MEMORY_BUDGET_EXCEEDED`, and so is a
    /// new subscription while it has no room for one frame of `max_frame_bytes`; frame buffers
    /// are refused (`PARTIAL_FRAMES_LIMIT`) only once they alone would fill it. The process
    /// itself needs more than this (code, connections, sessions, allocator slack).
    pub max_memory_bytes: u64,
    /// Most bytes all stream readers of all connections of one certificate identity may hold
    /// in frame buffers (partially received frames); a connection whose buffer would go past it
    /// is closed with `PARTIAL_FRAMES_LIMIT`. One reader holds up to one frame.
    pub max_partial_frame_bytes_per_identity: u64,
    /// Most topics whose traffic (messages and bytes published) is counted one by one for
    /// monitoring (`/topicz`); publishes to further topics are counted together as untracked
    /// until a topic idle for a sweep (a minute) is forgotten. Memory: about 100 bytes plus
    /// the name per topic.
    pub max_tracked_topics: usize,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            max_subscriptions_per_session: 1024,
            max_subscriptions_per_identity: 65_536,
            topics: TopicLimits::default(),
            max_connections: 100_000,
            max_connections_per_identity: 1024,
            max_pending_bytes_per_session: 4 * 1024 * 1024 * 1024,
            max_publish_streams_per_connection: 256,
            hello_timeout: Duration::from_secs(10),
            max_retained_topics: 10_000,
            max_queue_group_bytes: 128,
            max_retained_topics_per_identity: 1_000,
            max_retained_bytes_per_identity: 64 * 1024 * 1024,
            max_retained_bytes: 512 * 1024 * 1024,
            max_sessions_per_identity: 1024,
            max_dedupe_entries_per_identity: 10_000,
            max_headers: 256,
            max_header_bytes: 32 * 1024,
            max_memory_bytes: 1024 * 1024 * 1024,
            max_partial_frame_bytes_per_identity: 64 * 1024 * 1024,
            max_tracked_topics: 10_000,
        }
    }
}

impl BrokerLimits {
    /// The limits as announced in `Welcome`.
    pub fn announced(&self) -> Limits {
        Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_frame_bytes: self.max_frame_bytes,
            max_subscriptions: self.max_subscriptions_per_session,
            max_topic_bytes: u32::try_from(self.topics.max_bytes).unwrap_or(u32::MAX),
            max_topic_depth: u32::try_from(self.topics.max_depth).unwrap_or(u32::MAX),
            max_headers: self.max_headers,
            max_header_bytes: self.max_header_bytes,
            // Per connection: the driver fills it in.
            max_datagram_bytes: 0,
        }
    }
}

/// Bounds of the queue between a topic and a subscription's stream.
#[derive(Debug, Clone)]
pub struct QueueConfig {
    /// Messages a subscription queues when it asks for no bound of its own.
    pub default_messages: u32,
    /// Message bytes a subscription queues when it asks for no bound of its own (each message
    /// counted by `PublishedMessage::memory_size`: payload, topic, headers, `reply_to`, struct).
    pub default_bytes: u64,
    /// The most messages any subscription may ask for. Memory per stalled subscription is at
    /// most `max_bytes` plus one payload.
    pub max_messages: u32,
    /// The most message bytes any subscription may ask for.
    pub max_bytes: u64,
    /// In-flight window of an at-least-once subscription that asks for none: most messages
    /// sent and not yet acknowledged. Their bytes count against the byte bound separately
    /// from the queue's, so an at-least-once subscription holds at most twice its byte bound.
    pub default_max_in_flight: u32,
    /// The largest in-flight window any subscription may ask for.
    pub max_in_flight: u32,
    /// How long a delivery of an at-least-once subscription may stay unacknowledged on a live
    /// connection before it is sent again, when the subscription asks for no timeout.
    pub default_ack_timeout: Duration,
    /// The shortest ack timeout a subscription may ask for; shorter requests are raised to it.
    pub min_ack_timeout: Duration,
    /// The age bound of every subscription's backlog: a message that waited unsent longer is
    /// dropped as if by overflow (a `Gap` tells the client). Sent, unacknowledged messages of
    /// at-least-once subscriptions are never dropped by age. `None` (the default): no bound.
    pub max_backlog_age: Option<Duration>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            default_messages: 4096,
            default_bytes: 4 * 1024 * 1024,
            max_messages: 1_000_000,
            max_bytes: 64 * 1024 * 1024,
            default_max_in_flight: 1024,
            max_in_flight: 65_536,
            default_ack_timeout: Duration::from_secs(30),
            min_ack_timeout: Duration::from_millis(100),
            max_backlog_age: None,
        }
    }
}

/// The bounds one subscription gets, after defaults and caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueBounds {
    /// Most queued messages.
    pub max_messages: usize,
    /// Most queued message bytes (a message always fits into an empty queue).
    pub max_bytes: usize,
    /// What to do when full.
    pub overflow: OverflowPolicy,
    /// At-least-once delivery, if the subscription asked for it.
    pub acks: Option<AckBounds>,
    /// How long a message may wait unsent in the queue; older ones are dropped (announced as
    /// an `Overflow` gap) when the writer next takes from the queue. `None`: no age bound.
    pub max_age: Option<Duration>,
}

/// The in-flight window and ack timeout of an at-least-once subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckBounds {
    /// Most messages sent and not yet acknowledged.
    pub max_in_flight: usize,
    /// How long a sent message may stay unacknowledged before it is sent again.
    pub timeout: Duration,
}

impl QueueConfig {
    /// Resolves a subscriber's requested options against the defaults and caps.
    pub fn bounds_for(&self, options: &SubscribeOptions) -> QueueBounds {
        let messages = options
            .max_queued_messages
            .unwrap_or(self.default_messages)
            .clamp(1, self.max_messages.max(1));
        let bytes = options
            .max_queued_bytes
            .unwrap_or(self.default_bytes)
            .clamp(1, self.max_bytes.max(1));
        let acks = options.acks.map(|acks| AckBounds {
            max_in_flight: acks
                .max_in_flight
                .unwrap_or(self.default_max_in_flight)
                .clamp(1, self.max_in_flight.max(1)) as usize,
            timeout: acks
                .ack_timeout_ms
                .map_or(self.default_ack_timeout, |ms| {
                    Duration::from_millis(u64::from(ms))
                })
                .max(self.min_ack_timeout),
        });
        QueueBounds {
            max_messages: messages as usize,
            max_bytes: usize::try_from(bytes).unwrap_or(usize::MAX),
            overflow: options.overflow,
            acks,
            max_age: self.max_backlog_age,
        }
    }
}

/// Session lifetime.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// How long a session outlives a connection that dropped without saying goodbye. While
    /// detached, its subscriptions keep queueing within their bounds. A client that closes its
    /// connection normally ends its session at once.
    pub expiry: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            expiry: Duration::from_secs(300),
        }
    }
}

/// Bounds of the dedupe window.
#[derive(Debug, Clone, Copy)]
pub struct DedupeConfig {
    /// Most remembered publishes of all identities together; memory is about 100 bytes each.
    pub max_entries: usize,
    /// How long a publish is remembered.
    pub max_age: Duration,
}

impl Default for DedupeConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_age: Duration::from_secs(120),
        }
    }
}

/// Where the broker keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StorageMode {
    /// Everything in memory: a broker restart loses sessions, queues, retained values and the
    /// dedupe window.
    #[default]
    Memory,
    /// Sessions, subscriptions, at-least-once backlogs, retained values and the dedupe window
    /// on disk in [`StorageConfig::data_dir`], restored on start.
    Disk,
}

/// When an acknowledged publish is confirmed in disk mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SyncPolicy {
    /// `PublishAck` leaves only after the message is on stable storage (fsync). Concurrent
    /// publishes share one sync (group commit).
    #[default]
    Always,
    /// Opt-in: `PublishAck` leaves once the message is routed; the write follows at once, but
    /// an acknowledged message can be lost if the broker dies in between (a few milliseconds).
    Relaxed,
}

/// The storage section of the broker configuration.
#[derive(Debug, Clone)]
pub struct StorageConfig {
    /// Memory (default) or disk.
    pub mode: StorageMode,
    /// The directory holding the database file (`cassini.redb`); created if missing.
    pub data_dir: PathBuf,
    /// When acknowledged publishes are confirmed.
    pub sync: SyncPolicy,
    /// The most bytes of stored records. A publish that would store a message beyond it is
    /// refused with `STORAGE_FULL`; nothing stored is dropped to make room. The database file
    /// is larger than this by its B-tree overhead (see `docs/DURABILITY.md`).
    pub max_disk_bytes: u64,
    /// The most bytes of operations waiting for a commit. Publishers wait (QUIC flow control
    /// holds their clients) while more is waiting; this bounds the writer's memory.
    pub max_pending_bytes: usize,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            mode: StorageMode::Memory,
            data_dir: PathBuf::from("data"),
            sync: SyncPolicy::Always,
            max_disk_bytes: 1024 * 1024 * 1024,
            max_pending_bytes: 64 * 1024 * 1024,
        }
    }
}
