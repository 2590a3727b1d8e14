//! The flags of each scenario. Both binaries (`cassini bench` and `cassini-bench-peers`) flatten
//! these into their own commands, so a scenario takes the same flags whichever broker it
//! measures. Flag names are a contract with scripts (`bench/peers.sh`): add, never rename.

use std::path::PathBuf;

use clap::Args;

/// How a scenario reports.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `latency`: one publisher, one subscriber, a fixed offered rate.
#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    /// Offered rate, messages per second.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Measured seconds; fractions allowed.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Message size in bytes (at least 16: phase and send time).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Unmeasured warm-up seconds.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Draw the latency percentile curve into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// How to report.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `throughput`: one publisher to one subscriber, as fast as possible.
#[derive(Debug, Clone, Args)]
pub struct ThroughputArgs {
    /// How many messages to publish.
    #[arg(long, default_value_t = 1_000_000)]
    pub count: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// How to report.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `fanout`: one publisher, `--subscribers` subscribers, each on its own connection.
#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// How many messages to publish (each is delivered to every subscriber).
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Subscribers, each on a connection of its own.
    #[arg(long, default_value_t = 100)]
    pub subscribers: u32,
    /// How to report.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// `request`: request/reply round trips, one at a time, against an echo responder.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    /// Most round trips to make.
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    /// Stop after this many seconds even if `--count` was not reached; fractions allowed.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Request (and reply) size in bytes.
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Draw the round-trip percentile curve into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// How to report.
    #[command(flatten)]
    pub output: OutputArgs,
}
