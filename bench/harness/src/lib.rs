//! Broker-neutral benchmark scenarios: the measuring code that `cassini bench` and the peer
//! adapters (`cassini-bench-peers`, for NATS and Mosquitto) share, so every broker is measured by
//! the same loop, the same clock and the same histogram.
//!
//! Nothing here asserts a timing: a scenario reports figures, to be compared as ratios against
//! other brokers (or another phase) measured in the same run.
//!
//! # Layout
//! - [`peer`]: the small client interface a broker adapter implements ([`Connector`],
//!   [`BenchClient`], [`BenchSubscription`]).
//! - [`args`]: the command-line flags of each scenario, shared by both binaries.
//! - [`pacing`]: a fixed offered rate, and latency from each message's intended send time.
//! - [`latencies`]: the HdrHistogram wrapper and its percentiles.
//! - [`latency`], [`throughput`], [`fanout`], [`request`]: the scenarios.
//! - [`report`]: a scenario's figures as a table or one JSON object.
//! - [`progress`]: the progress bar shown while a scenario runs (on a terminal only).
//! - [`plot`]: the latency percentile curve as an SVG file (plotters).

pub mod args;
pub mod fanout;
pub mod latencies;
pub mod latency;
pub mod pacing;
pub mod peer;
pub mod plot;
pub mod progress;
pub mod report;
pub mod request;
pub mod throughput;

pub use latencies::Latencies;
pub use peer::{answer_until_stopped, BenchClient, BenchSubscription, Connector};
pub use report::Report;
