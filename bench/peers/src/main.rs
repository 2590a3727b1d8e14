//! `cassini-bench-peers`: the peer brokers' side of the benchmark suite.
//!
//! - `nats ... SCENARIO` and `mosquitto ... SCENARIO` run one of `cassini-bench`'s scenarios
//!   against a NATS or MQTT broker, with the same flags and the same report as `cassini bench
//!   SCENARIO --server ...`, measured by the same code. `mosquitto --label cassini-mqtt-qos0`
//!   measures Cassini's MQTT gateway with the very client that measures Mosquitto.
//! - `summary FILE` reads the JSON reports `bench/peers.sh` collected and prints the medians
//!   per broker and the Cassini/peer ratios.
//!
//! # Layout
//! - `nats`: the NATS adapter (async-nats).
//! - `mqtt`: the MQTT adapter (rumqttc), for Mosquitto and Cassini's MQTT gateway.
//! - `summary`: medians and ratios.

mod mqtt;
mod nats;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use cassini_bench::args::{FanoutArgs, LatencyArgs, RequestArgs, ThroughputArgs};
use cassini_bench::Connector;

/// Benchmark scenarios against peer brokers, and the side-by-side summary.
#[derive(Debug, Parser)]
#[command(name = "cassini-bench-peers", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Measure a NATS server (TLS with a client certificate unless `--plain`).
    Nats {
        #[command(flatten)]
        target: PeerTarget,
        /// Connect without TLS (the plain-text reference figure).
        #[arg(long)]
        plain: bool,
        #[command(subcommand)]
        scenario: Scenario,
    },
    /// Measure an MQTT 3.1.1 broker such as Mosquitto, or Cassini's MQTT gateway (TLS with a
    /// client certificate).
    Mosquitto {
        #[command(flatten)]
        target: PeerTarget,
        /// MQTT quality of service for publishes and subscriptions: 0 or 1.
        #[arg(long, default_value_t = 0)]
        qos: u8,
        /// The broker's name in the reports [default: mosquitto-qos0 or mosquitto-qos1];
        /// `bench/peers.sh` names Cassini's MQTT gateway `cassini-mqtt-qos0`/`-qos1`.
        #[arg(long)]
        label: Option<String>,
        #[command(subcommand)]
        scenario: Scenario,
    },
    /// Medians per broker and Cassini/peer ratios of a file of JSON reports, one per line.
    Summary {
        /// The reports (`bench/peers.sh` writes `results.jsonl`).
        file: PathBuf,
    },
}

/// Where the peer broker is and as whom to connect.
#[derive(Debug, Clone, Args)]
struct PeerTarget {
    /// Broker address, HOST:PORT.
    #[arg(long)]
    server: String,
    /// Certificate directory (`cassini certs init` layout): `ca.crt`, `client-NAME.crt`/`.key`.
    #[arg(long, default_value = "certs")]
    certs: PathBuf,
    /// Client name, selecting `client-NAME.crt` and `client-NAME.key`.
    #[arg(long, default_value = "dev")]
    name: String,
    /// Messages a subscription may buffer in the client (NATS drops beyond it, rumqttc stops
    /// reading).
    #[arg(long, default_value_t = 1 << 20)]
    subscription_capacity: usize,
}

/// One scenario of `cassini-bench`, with its flags.
#[derive(Debug, Subcommand)]
enum Scenario {
    /// Publish-to-delivery latency at a fixed offered rate.
    Latency(LatencyArgs),
    /// One publisher to one subscriber, as fast as possible.
    Throughput(ThroughputArgs),
    /// One publisher to `--subscribers` subscribers on as many connections.
    Fanout(FanoutArgs),
    /// Request/reply round trips against an echo responder.
    Request(RequestArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Nats {
                target,
                plain,
                scenario,
            } => run(&nats::NatsConnector::new(target, plain), scenario).await,
            Command::Mosquitto {
                target,
                qos,
                label,
                scenario,
            } => run(&mqtt::MqttConnector::new(target, qos, label)?, scenario).await,
            Command::Summary { file } => summary::print(&file),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run<C: Connector>(connector: &C, scenario: Scenario) -> anyhow::Result<()> {
    match scenario {
        Scenario::Latency(args) => cassini_bench::latency::run(connector, &args)
            .await?
            .emit(args.output.json, args.plot.as_deref()),
        Scenario::Throughput(args) => cassini_bench::throughput::run(connector, &args)
            .await?
            .emit(args.output.json, None),
        Scenario::Fanout(args) => cassini_bench::fanout::run(connector, &args)
            .await?
            .emit(args.output.json, None),
        Scenario::Request(args) => cassini_bench::request::run(connector, &args)
            .await?
            .emit(args.output.json, args.plot.as_deref()),
    }
}
