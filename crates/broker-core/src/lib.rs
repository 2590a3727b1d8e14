//! The Cassini broker core: an actor tree that routes messages, independent of any transport.
//!
//! This crate never names a QUIC type. It talks to connections through the small interface in
//! [`transport`], which `cassini-quic` implements over quinn (and tests may implement in memory).
//!
//! Layering (no file imports one above it): the foundations ([`config`], [`acl`], [`error`],
//! [`memory`], [`message`], [`transport`], [`storage`], [`queue`], [`retained`], [`dedupe`],
//! [`cluster`], [`router`], [`introspect`], [`events`]) name no task and no actor; `context`
//! bundles the state they share; the data plane (`admission`, `system_events` and
//! `connection`'s stream tasks) works on that context alone and reports upward only through
//! callbacks it defines; the actors start and own the data plane's tasks, with a connection's
//! driver between the session actors it asks and the listener task that runs it; [`broker`],
//! [`local`] and [`peer`] are the entry points on top. Inside the crate, items are named by the
//! module that defines them, never through the re-exports below.
//!
//! # Layout
//! - [`acl`]: who may publish and subscribe where; the ACL file format.
//! - [`cluster`]: this node's interest, its peers' interest and the bounded queue towards
//!   each peer (docs/CLUSTERING.md); the router's remote members.
//! - [`peer`]: the entry point for what a cluster peer sends: its interest and its forwards.
//! - [`broker`]: [`Broker::start`] and the [`BrokerHandle`] a transport hands connections to.
//! - [`config`]: every knob, with defaults.
//! - [`transport`]: the connection and stream interface the broker drives.
//! - [`error`]: the broker's error enum and the one place errors become wire codes.
//! - [`local`]: in-process clients for programs that embed the broker (and ractor actors).
//! - [`log_budget`]: a bound on lines per second for log lines a client can cause at will.
//! - [`memory`]: the broker-wide memory budget and the per-identity bound on frame buffers.
//! - [`message`]: the shared in-memory form of a published message, and what it holds.
//! - [`router`]: the subscription index read by the publish path; `filter_trie`, the token
//!   trie of filters it (and each cluster peer's interest) is kept in.
//! - [`retained`]: the retained store and its per-identity quotas.
//! - [`queue`]: the bounded per-subscription queue and its overflow policies.
//! - [`storage`]: durable state in disk mode (sessions, backlogs, retained values, dedupe
//!   window) and its recovery on start.
//! - [`dedupe`]: the window of recently accepted acknowledged publishes.
//! - [`introspect`]: counters, the connection registry, traffic per topic and snapshots for
//!   monitoring.
//! - [`events`]: the system events published on `$SYS.event.>` and the sink they are emitted
//!   into without waiting.
//! - `admission`: the one way in for a publish (stream, datagram, local or the broker's own
//!   system events): every check, then the router, and the counters.
//! - `system_events`: the system publisher, a task that publishes the emitted events through
//!   `admission` and adds the periodic ones (stats, slow consumers, store warnings).
//! - `ack_targets`: a session's queues as its connection sees them (acknowledgements, drain).
//! - `actors`: the supervisor and its managers (listener, session, subscriber, topic), each
//!   with one child per connection, session, subscription and filter.
//! - `context`: the state every part shares (configuration, router, dedupe window, store,
//!   registry, ACL, memory budget); it names no actor.
//! - `connection`: the tasks that read and write one connection's streams.

mod ack_targets;
pub mod acl;
mod actors;
mod admission;
pub mod broker;
pub mod cluster;
pub mod config;
mod connection;
mod context;
pub mod dedupe;
pub mod error;
pub mod events;
mod filter_trie;
pub mod introspect;
pub mod local;
pub mod log_budget;
pub mod memory;
pub mod message;
pub mod peer;
pub mod queue;
pub mod retained;
pub mod router;
pub mod storage;
mod system_events;
pub mod transport;

pub use acl::{Acl, AclError, AclHandle};
pub use broker::{Broker, BrokerHandle, BrokerStats, MemoryUse};
/// The cluster's Raft group (session ownership), for the transport that carries its RPCs.
pub use cassini_replication as replication;
pub use config::{BrokerConfig, BrokerLimits, QueueConfig};
pub use error::BrokerError;
pub use local::{LocalClient, LocalMessage, LocalPublish, LocalSubscription};
pub use transport::{
    Connection, ConnectionStats, PeerInfo, RecvStream, SendStream, TransportError,
};
