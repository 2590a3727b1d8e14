//! Cassini's MQTT gateway: MQTT 3.1.1 and 5.0 clients on the same broker as QUIC clients, under
//! the same certificates, identity rule, ACL, limits, sessions and revocation (docs/MQTT.md).
//!
//! The gateway adds no second way into the broker. Each MQTT connection becomes, through
//! [`bridge`], a `cassini_broker::Connection` handed to `BrokerHandle::accept`, and the gateway
//! speaks Cassini's own frames on it: `Hello` with the client id as the session name, a
//! `Subscribe` per MQTT filter, a `Publish` (acknowledged for QoS 1) per MQTT `PUBLISH` on one
//! publish stream, which the broker admits through `admission::Publisher::admit` like any other.
//!
//! Layering (no file imports one above it): [`topics`], [`packets`] and [`stats`] at the bottom
//! (the topic mapping; the codec's packets in one form for both versions; the counters),
//! `codes` (Cassini error codes as MQTT reason codes) on `packets`, `headers` (MQTT 5 message
//! properties as Cassini headers and back) on `packets` and `topics`, [`bridge`] (the in-memory
//! transport) beside them, `frames` (Cassini frames on a bridged stream) on `bridge`, `will`
//! (will messages: when, and published on a connection of their own) on those, `options` (MQTT 5
//! subscription options kept per client id) and `stash` (deliveries that come before their
//! subscription's `Subscribed`, bounded) at the bottom, `session` (one
//! MQTT connection's state machine) on those, and [`server`] (the TCP and TLS listener) on top.

pub mod bridge;
mod codes;
mod frames;
mod headers;
mod options;
pub mod packets;
pub mod server;
mod session;
mod stash;
pub mod stats;
pub mod topics;
mod will;

pub use server::{MqttOptions, MqttServer};
pub use stats::MqttStats;
