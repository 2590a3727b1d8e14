//! The command-line grammar. Command names, flags and file names here are a contract with
//! users' scripts: add to them, never rename them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Cassini: a message broker over QUIC with mutual TLS.
#[derive(Debug, Parser)]
#[command(name = "cassini", version, about)]
pub(crate) struct Cli {
    /// Log output format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub(crate) log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Create and issue certificates.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Measure the broker (in-process, over real QUIC on loopback).
    Bench {
        #[command(subcommand)]
        scenario: BenchScenario,
    },
    /// Publish a message.
    Pub(PubArgs),
    /// Subscribe and print messages.
    Sub(SubArgs),
    /// Send a request and print the first reply.
    ///
    /// Exit status: 0 with a reply (printed to stdout), 2 when no reply came within
    /// `--timeout`, 3 when nobody subscribes to the topic (`error: no responders on TOPIC`), 1 on
    /// other errors.
    Req(ReqArgs),
    /// Answer requests on a topic.
    ///
    /// Serves requests one at a time until interrupted, or until `--count` requests were
    /// answered. Prints `serving TOPIC` to stderr once subscribed. Messages without a reply
    /// topic are skipped with a warning.
    Reply(ReplyArgs),
}

impl Command {
    /// The log level when `RUST_LOG` is not set: the broker talks, the tools stay quiet.
    pub(crate) fn default_log_level(&self) -> &'static str {
        match self {
            Command::Serve(_) => "info",
            _ => "warn",
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum CertsCommand {
    /// Create a CA, a server certificate and client certificates in a directory.
    Init(CertsInitArgs),
    /// Issue a client certificate signed by the directory's existing CA.
    Issue(CertsIssueArgs),
}

#[derive(Debug, Args)]
pub(crate) struct CertsInitArgs {
    /// Where to write the files.
    #[arg(long, default_value = "certs")]
    pub(crate) dir: PathBuf,
    /// An extra name (DNS name or IP address) for the server certificate; repeatable.
    /// localhost, 127.0.0.1 and ::1 are always included.
    #[arg(long = "server-name")]
    pub(crate) server_names: Vec<String>,
    /// A client to issue a certificate for; repeatable. Default: `dev`.
    #[arg(long = "client")]
    pub(crate) clients: Vec<String>,
    /// Replace an existing CA (every certificate it signed stops being trusted).
    #[arg(long)]
    pub(crate) force_new_ca: bool,
}

#[derive(Debug, Args)]
pub(crate) struct CertsIssueArgs {
    /// The client's name: its identity, in the certificate's SAN and CN.
    pub(crate) name: String,
    /// The directory holding `ca.crt` and `ca.key`.
    #[arg(long, default_value = "certs")]
    pub(crate) dir: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on (UDP).
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub(crate) listen: SocketAddr,
    /// Certificate directory; development certificates are created there if it has none.
    #[arg(long, default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// How long a session outlives a dropped connection, in seconds.
    #[arg(long, default_value_t = 300)]
    pub(crate) session_expiry: u64,
    /// Close a connection after this many seconds without a packet from the client.
    #[arg(long, default_value_t = 30)]
    pub(crate) idle_timeout: u64,
    /// Where state is kept: `memory` (lost on restart) or `disk` (sessions, subscriptions,
    /// at-least-once backlogs, retained values and the dedupe window survive a crash; see
    /// docs/DURABILITY.md).
    #[arg(long, value_enum, default_value_t = StorageArg::Memory)]
    pub(crate) storage: StorageArg,
    /// Drop a message that waited this many seconds unsent in a subscription's queue (the
    /// client gets a Gap); 0: no age bound. Sent, unacknowledged messages are never dropped.
    #[arg(long, default_value_t = 0)]
    pub(crate) max_backlog_age: u64,
    /// The directory of the disk store (`--storage disk`); created if missing.
    #[arg(long, default_value = "data")]
    pub(crate) data_dir: PathBuf,
    /// When an acknowledged publish is confirmed with `--storage disk`: `always` after it is on
    /// stable storage (fsync), `relaxed` as soon as it is routed (an acknowledged message can
    /// be lost if the broker dies within milliseconds).
    #[arg(long, value_enum, default_value_t = SyncArg::Always)]
    pub(crate) storage_sync: SyncArg,
    /// The most bytes of stored records with `--storage disk`; publishes that would store more
    /// are refused with STORAGE_FULL.
    #[arg(long, default_value_t = 1024 * 1024 * 1024)]
    pub(crate) storage_max_bytes: u64,
}

/// Where the broker keeps its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StorageArg {
    /// In memory.
    Memory,
    /// On disk, in `--data-dir`.
    Disk,
}

/// When an acknowledged publish is confirmed in disk mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SyncArg {
    /// After it is on stable storage.
    Always,
    /// Once it is routed; the write follows at once.
    Relaxed,
}

/// Where and as whom a tool connects.
#[derive(Debug, Args)]
pub(crate) struct ConnectArgs {
    /// Broker address.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub(crate) server: String,
    /// Certificate directory holding `ca.crt` and `client-NAME.crt`/`.key`.
    #[arg(long, default_value = "certs")]
    pub(crate) certs: PathBuf,
    /// Client name: selects `client-NAME.crt` and `client-NAME.key`.
    #[arg(long, default_value = "dev")]
    pub(crate) name: String,
    /// Name to verify the server certificate against.
    #[arg(long, default_value = "localhost")]
    pub(crate) server_name: String,
}

#[derive(Debug, Args)]
pub(crate) struct PubArgs {
    /// Topic to publish to.
    pub(crate) topic: String,
    /// The message.
    pub(crate) message: String,
    /// How many times to publish it.
    #[arg(long, default_value_t = 1)]
    pub(crate) count: u64,
    /// A header `KEY=VALUE`; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    /// Keep the message as the topic's retained value, replayed to every new subscriber; an
    /// empty MESSAGE clears it.
    #[arg(long)]
    pub(crate) retain: bool,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct SubArgs {
    /// Filter to subscribe to (`*` one token, `>` the rest).
    pub(crate) topic: String,
    /// Exit 0 after this many messages.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    /// Give up after this many seconds (fractions allowed) and exit with status 2, unless
    /// `--count` messages arrived first.
    #[arg(long)]
    pub(crate) timeout: Option<f64>,
    /// Print one JSON object per message, with topic, sequence and headers.
    #[arg(long)]
    pub(crate) json: bool,
    /// Subscribe at least once: the broker keeps each message until it is printed and sends
    /// it again after a lost connection.
    #[arg(long)]
    pub(crate) ack: bool,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ReqArgs {
    /// Topic to send the request to.
    pub(crate) topic: String,
    /// The request payload.
    pub(crate) message: String,
    /// Seconds to wait for a reply (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub(crate) timeout: f64,
    /// Print the reply as one JSON object, with topic, headers and payload.
    #[arg(long)]
    pub(crate) json: bool,
    /// A header `KEY=VALUE` on the request; repeatable.
    #[arg(long = "header", value_parser = parse_header)]
    pub(crate) headers: Vec<(String, String)>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

#[derive(Debug, Args)]
pub(crate) struct ReplyArgs {
    /// Filter to serve (`*` one token, `>` the rest).
    pub(crate) topic: String,
    /// Reply with the request's payload (the default).
    #[arg(long, conflicts_with = "command")]
    pub(crate) echo: bool,
    /// Reply with the standard output of `sh -c CMD`, run with the request payload on its
    /// standard input. A command that fails (non-zero exit, killed after 10 seconds, output
    /// over the broker's payload limit, cannot start) gets a reply with the header
    /// `error: REASON` and whatever it printed.
    #[arg(long, value_name = "CMD")]
    pub(crate) command: Option<String>,
    /// Join this queue group: each request goes to one of the responders sharing the topic and
    /// group.
    #[arg(long, value_name = "GROUP")]
    pub(crate) queue: Option<String>,
    /// Exit 0 after answering this many requests.
    #[arg(long)]
    pub(crate) count: Option<u64>,
    #[command(flatten)]
    pub(crate) connect: ConnectArgs,
}

fn parse_header(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .ok_or_else(|| format!("header {raw:?} is not KEY=VALUE"))
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchScenario {
    /// Acknowledged-publish throughput and latency in memory and on disk (`--storage disk`),
    /// with one publisher and with `--publishers` concurrent ones.
    Durable(DurableArgs),
    /// Head-of-line isolation: the latency of a fast topic with and without a flood on another
    /// subscription of the same connection that is never read.
    Hol(HolArgs),
    /// Publish-to-delivery latency at a fixed offered rate, one publisher and one subscriber.
    Latency(LatencyArgs),
    /// Messages per second from one publisher to one subscriber, as fast as possible.
    Throughput(ThroughputArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DurableArgs {
    /// Measured seconds per case; fractions allowed.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Concurrent publishers of the second round (the first has one).
    #[arg(long, default_value_t = 16)]
    pub(crate) publishers: usize,
    /// Where the disk cases keep their store (one directory per case, left in place); default:
    /// a temporary directory, removed afterwards. Put it on the disk you want to measure.
    #[arg(long)]
    pub(crate) data_dir: Option<PathBuf>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct LatencyArgs {
    /// Offered rate, messages per second.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) rate: u64,
    /// Measured seconds; fractions allowed.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) duration: f64,
    /// Message size in bytes (at least 16: phase and send time).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Unmeasured warm-up seconds.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ThroughputArgs {
    /// How many messages to publish.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) count: u64,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Print one JSON object instead of a line of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct HolArgs {
    /// Offered rate of the fast topic, messages per second.
    #[arg(long, default_value_t = 2_000)]
    pub(crate) rate: u64,
    /// Measured seconds per phase (alone, then during the flood); fractions allowed.
    #[arg(long, default_value_t = 5.0)]
    pub(crate) duration: f64,
    /// Fast message size in bytes (at least 24: phase, index and send time).
    #[arg(long, default_value_t = 64)]
    pub(crate) size: usize,
    /// Size of each flood message in bytes.
    #[arg(long, default_value_t = 64 * 1024)]
    pub(crate) flood_size: usize,
    /// Flood messages per second; 0 floods as fast as the client accepts them.
    #[arg(long, default_value_t = 0)]
    pub(crate) flood_rate: u64,
    /// Unmeasured warm-up seconds before the first phase.
    #[arg(long, default_value_t = 1.0)]
    pub(crate) warmup: f64,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}
