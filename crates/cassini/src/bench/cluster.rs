//! `cassini bench cluster`: what a cluster costs against one broker, measured in one run
//! (docs/BENCHMARKS.md). A cluster of `--nodes` whole brokers runs in this process (each with
//! its client and cluster endpoints, real QUIC over loopback, certificates made in memory),
//! beside a standalone broker started the same way:
//!
//! - **latency** at a fixed rate with publisher and subscriber on one node, and on two nodes,
//!   interleaved `--repeat` times;
//! - **fan-out** 1 → `--subscribers` with the subscribers spread round robin over the nodes,
//!   beside the same fan-out on the standalone broker;
//! - **CPU per message** of node-local traffic (publisher and subscriber on one node of the
//!   cluster) against the standalone broker: the process's CPU time over the messages delivered,
//!   interleaved `--repeat` times;
//! - **failover** (`failover` module): the time from `kill -9` of a subscriber's node to that
//!   subscriber receiving again on another node, with three `cassini serve` processes.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cassini_bench::args::{FanoutArgs, LatencyArgs, OutputArgs, ThroughputArgs};
use cassini_bench::Report;
use serde_json::Value;

use super::cassini_peer::CassiniConnector;
use super::failover;
use super::local_cluster::{LocalCluster, Placement};
use crate::cli::{BenchTarget, ClusterBenchArgs};

/// The process's CPU time so far (user and system, every thread, from `/proc/self/stat`), in
/// clock ticks of 10 ms (Linux's `USER_HZ`).
fn cpu_ticks() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("parsing /proc/self/stat")?;
    // Fields after the name start at field 3 (state); utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let mut next = || -> anyhow::Result<u64> {
        Ok(fields.next().context("/proc/self/stat is short")?.parse()?)
    };
    Ok(next()? + next()?)
}

/// A number out of a scenario's JSON report, by path (`["latency", "p99_us"]`).
fn figure(report: &Report, path: &[&str]) -> f64 {
    let json = report.to_json();
    let value = path.iter().fold(&json, |value, key| &value[*key]);
    value.as_f64().unwrap_or(f64::NAN)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    numerator / denominator.max(f64::MIN_POSITIVE)
}

fn quiet() -> OutputArgs {
    OutputArgs { json: false }
}

/// The standalone broker the cluster is compared against.
fn standalone() -> BenchTarget {
    BenchTarget {
        server: None,
        certs: "certs".into(),
        name: "dev".into(),
        server_name: None,
    }
}

/// CPU time per delivered message, in microseconds, of one throughput run against `connector`.
async fn cpu_per_message(
    connector: &CassiniConnector,
    args: &ThroughputArgs,
) -> anyhow::Result<f64> {
    let before = cpu_ticks()?;
    let report = cassini_bench::throughput::run(connector, args).await?;
    let ticks = cpu_ticks()?.saturating_sub(before);
    let received = figure(&report, &["received"]);
    Ok(ticks as f64 * 10_000.0 / received.max(1.0))
}

/// Runs `cassini bench cluster`.
pub(crate) async fn run(args: ClusterBenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.nodes >= 2,
        "a cluster benchmark needs at least two nodes"
    );
    let cluster = Arc::new(LocalCluster::start(args.nodes).await?);
    let same_node = CassiniConnector::on_cluster(Arc::clone(&cluster), Placement::OneNode(0));
    let cross_node = CassiniConnector::on_cluster(
        Arc::clone(&cluster),
        Placement::Split {
            publisher: 0,
            others: 1,
        },
    );
    let latency = LatencyArgs {
        rate: args.rate,
        duration: args.duration,
        size: args.size,
        warmup: args.warmup,
        plot: None,
        output: quiet(),
    };
    let (mut same_p50, mut same_p99, mut cross_p50, mut cross_p99) =
        (vec![], vec![], vec![], vec![]);
    for _ in 0..args.repeat {
        let same = cassini_bench::latency::run(&same_node, &latency).await?;
        let cross = cassini_bench::latency::run(&cross_node, &latency).await?;
        same_p50.push(figure(&same, &["latency", "p50_us"]));
        same_p99.push(figure(&same, &["latency", "p99_us"]));
        cross_p50.push(figure(&cross, &["latency", "p50_us"]));
        cross_p99.push(figure(&cross, &["latency", "p99_us"]));
    }

    let fanout = FanoutArgs {
        count: args.fanout_count,
        size: args.size,
        subscribers: args.subscribers,
        output: quiet(),
    };
    let spread = CassiniConnector::on_cluster(Arc::clone(&cluster), Placement::Spread)
        .queue_for(fanout.count, fanout.size)
        .subscription_buffer(4096);
    let spread_report = cassini_bench::fanout::run(&spread, &fanout).await?;
    let alone = CassiniConnector::start(&standalone())
        .await?
        .queue_for(fanout.count, fanout.size)
        .subscription_buffer(4096);
    let alone_report = cassini_bench::fanout::run(&alone, &fanout).await?;
    alone.stop().await;

    let throughput = ThroughputArgs {
        count: args.count,
        size: args.size,
        output: quiet(),
    };
    let local = CassiniConnector::on_cluster(Arc::clone(&cluster), Placement::OneNode(0))
        .queue_for(throughput.count, throughput.size)
        .subscription_buffer(65_536);
    let (mut cluster_cpu, mut standalone_cpu) = (vec![], vec![]);
    for _ in 0..args.repeat {
        cluster_cpu.push(cpu_per_message(&local, &throughput).await?);
        let alone = CassiniConnector::start(&standalone())
            .await?
            .queue_for(throughput.count, throughput.size)
            .subscription_buffer(65_536);
        standalone_cpu.push(cpu_per_message(&alone, &throughput).await?);
        alone.stop().await;
    }
    drop((same_node, cross_node, spread, local));
    if let Ok(cluster) = Arc::try_unwrap(cluster) {
        cluster.stop().await;
    }

    let failovers = if args.failovers > 0 {
        failover::measure(args.failovers).await?
    } else {
        Vec::new()
    };

    let mut report = Report::new(
        "cluster",
        format!("cassini, {} nodes in-process", args.nodes),
        format!(
            "latency at {} msg/s of {} B, medians of {} interleaved runs; fan-out 1 → {}; \
             CPU per message of node-local traffic; failover after kill -9",
            args.rate, args.size, args.repeat, args.subscribers
        ),
    );
    let (same_p50, same_p99) = (median(same_p50), median(same_p99));
    let (cross_p50, cross_p99) = (median(cross_p50), median(cross_p99));
    let (cluster_cpu, standalone_cpu) = (median(cluster_cpu), median(standalone_cpu));
    let spread_rate = figure(&spread_report, &["deliveries_per_s"]);
    let alone_rate = figure(&alone_report, &["deliveries_per_s"]);
    report
        .param("nodes", args.nodes)
        .param("rate", args.rate)
        .param("size", args.size)
        .param("repeat", args.repeat)
        .param("subscribers", args.subscribers)
        .figure("same_node_p50_us", "same node p50 µs", same_p50)
        .figure("same_node_p99_us", "same node p99 µs", same_p99)
        .figure("cross_node_p50_us", "cross node p50 µs", cross_p50)
        .figure("cross_node_p99_us", "cross node p99 µs", cross_p99)
        .figure(
            "cross_over_same_p99",
            "cross / same node, p99",
            ratio(cross_p99, same_p99),
        )
        .figure(
            "fanout_spread_per_s",
            "fan-out, spread, deliveries/s",
            spread_rate,
        )
        .figure(
            "fanout_spread_lost",
            "fan-out, spread, lost",
            figure(&spread_report, &["lost"]),
        )
        .figure(
            "fanout_standalone_per_s",
            "fan-out, standalone, deliveries/s",
            alone_rate,
        )
        .figure(
            "fanout_spread_over_standalone",
            "fan-out, spread / standalone",
            ratio(spread_rate, alone_rate),
        )
        .figure(
            "cluster_cpu_us_per_msg",
            "node-local CPU µs/msg",
            cluster_cpu,
        )
        .figure(
            "standalone_cpu_us_per_msg",
            "standalone CPU µs/msg",
            standalone_cpu,
        )
        .figure(
            "cpu_cluster_over_standalone",
            "CPU, cluster / standalone",
            ratio(cluster_cpu, standalone_cpu),
        );
    if !failovers.is_empty() {
        let seconds: Vec<f64> = failovers.iter().map(Duration::as_secs_f64).collect();
        let worst = seconds.iter().copied().fold(0.0, f64::max);
        report
            .figure(
                "failovers",
                "failovers measured",
                Value::from(seconds.len()),
            )
            .figure("failover_median_s", "failover median s", median(seconds))
            .figure("failover_max_s", "failover max s", worst);
    }
    Ok(report)
}
