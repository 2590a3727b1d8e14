//! `cassini bench`: measurements, not tests. Each scenario starts a broker in-process (or uses
//! `--server`), drives it with real clients over QUIC on loopback, and reports figures; it never
//! asserts a timing. Figures are meant to be compared as ratios within one run.
//!
//! The broker-neutral scenarios (`latency`, `throughput`, `fanout`, `request`) live in the
//! `cassini-bench` crate, shared with the NATS and Mosquitto adapters of `cassini-bench-peers`;
//! this module adds Cassini's adapter and the scenarios only Cassini has.
//!
//! - `cassini_peer`: Cassini behind `cassini-bench`'s client interface.
//! - `embedded`: the in-process broker.
//! - `hol`: head-of-line isolation between two subscriptions of one connection.
//! - `connections`: many idle mTLS connections, against a bare quinn endpoint in the same run;
//!   `bare_endpoint` is that endpoint, and `child` starts it (and the broker) as processes.
//! - `cluster`: a cluster in this process (`local_cluster`) against a standalone broker;
//!   `failover` kills nodes running as processes.
//! - `sessions`: named sessions replicated by a cluster with members against a standalone
//!   broker, and their failover.

pub(crate) mod bare_endpoint;
pub(crate) mod cassini_peer;
pub(crate) mod child;
pub(crate) mod cluster;
pub(crate) mod connections;
pub(crate) mod datagram;
pub(crate) mod durable;
pub(crate) mod embedded;
pub(crate) mod failover;
pub(crate) mod hol;
pub(crate) mod local_cluster;
pub(crate) mod sessions;

use std::process::ExitCode;

use cassini_bench::Report;

use crate::cli::BenchScenario;
use cassini_peer::CassiniConnector;

/// Runs one scenario.
pub(crate) async fn run(scenario: BenchScenario) -> anyhow::Result<ExitCode> {
    let (report, json, plot) = match scenario {
        BenchScenario::Hol(command) => return hol::run(command).await,
        BenchScenario::Datagram(args) => return datagram::run(args).await,
        BenchScenario::Durable(args) => return durable::run(args).await,
        BenchScenario::Connections(args) => return connections::run(args).await,
        BenchScenario::BareEndpoint(args) => return bare_endpoint::run(args).await,
        BenchScenario::Cluster(args) => {
            let json = args.json;
            (cluster::run(args).await?, json, None)
        }
        BenchScenario::Sessions(args) => {
            let json = args.json;
            (sessions::run(args).await?, json, None)
        }
        BenchScenario::Latency(command) => {
            let connector = CassiniConnector::start(&command.target).await?;
            let report = cassini_bench::latency::run(&connector, &command.args).await;
            connector.stop().await;
            (report?, command.args.output.json, command.args.plot)
        }
        BenchScenario::Throughput(command) => {
            let connector = CassiniConnector::start(&command.target)
                .await?
                .queue_for(command.args.count, command.args.size)
                .subscription_buffer(65_536);
            let report = cassini_bench::throughput::run(&connector, &command.args).await;
            connector.stop().await;
            (report?, command.args.output.json, None)
        }
        BenchScenario::Fanout(command) => {
            let connector = CassiniConnector::start(&command.target)
                .await?
                .queue_for(command.args.count, command.args.size)
                .subscription_buffer(4096);
            let report = cassini_bench::fanout::run(&connector, &command.args).await;
            connector.stop().await;
            (report?, command.args.output.json, None)
        }
        BenchScenario::Request(command) => {
            let connector = CassiniConnector::start(&command.target).await?;
            let report = cassini_bench::request::run(&connector, &command.args).await;
            connector.stop().await;
            (report?, command.args.output.json, command.args.plot)
        }
    };
    emit(&report, json, plot.as_deref())
}

fn emit(report: &Report, json: bool, plot: Option<&std::path::Path>) -> anyhow::Result<ExitCode> {
    report.emit(json, plot)?;
    Ok(ExitCode::SUCCESS)
}
