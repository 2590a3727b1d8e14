//! `cassini bench sessions`: what replicating named sessions costs (issue #19,
//! docs/BENCHMARKS.md). For each storage mode, a cluster of `--nodes` whole brokers, every one
//! a Raft member (`cluster.members`), runs in this process beside a standalone broker started
//! the same way. On each, a publisher and an at-least-once subscriber of a *named* session sit
//! on one node (the session's owner), so on the cluster every message stored for the session
//! goes through the Raft log before its `PublishAck`; then again with the publisher on another
//! node, which delivers each message into the session's records before its `PublishAck` (the
//! owner queues it from there: two commits before delivery):
//!
//! - **throughput**: `--count` acknowledged publishes with `--window` of them in flight,
//!   acknowledged publishes per second from the first publish to the last `PublishAck`;
//! - **latency** at a fixed rate: publish → delivery and publish → `PublishAck`, both from each
//!   message's intended send time (no coordinated omission).
//!
//! Runs alternate cluster, standalone, cluster, ... `--repeat` times; the figures are medians
//! and their ratios. The failover rounds (`failover::measure_sessions`) kill a named session's
//! node among three `cassini serve` processes.
//!
//! A separate scenario from `bench cluster`: its cluster has no members (no Raft) and runs in
//! memory only, and its figures (issue #18) stay comparable from run to run.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cassini_bench::pacing::{spawn_paced, Schedule};
use cassini_bench::{Latencies, Report};
use cassini_broker::config::StorageMode;
use cassini_broker::BrokerConfig;
use cassini_client::{Client, ClientBuilder, Subscription};
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::child::ScratchDir;
use super::embedded::{bench_config, EmbeddedBroker};
use super::failover;
use super::local_cluster::LocalCluster;
use crate::cli::{SessionsBenchArgs, StorageArg};

/// How long a named session's first connection may be refused (`NO_QUORUM`) while the
/// cluster's Raft group elects its first leader.
const QUORUM_TIMEOUT: Duration = Duration::from_secs(30);
/// How long after the last publish a run waits for the deliveries still on their way.
const STRAGGLER_WAIT: Duration = Duration::from_secs(10);
/// Bytes at the front of a latency run's payload: the phase, then the intended send time.
const HEADER_BYTES: usize = 16;

/// Where a run's clients connect: node 1 of the cluster, or the standalone broker.
enum Target {
    Cluster(LocalCluster),
    Standalone(Box<EmbeddedBroker>),
}

impl Target {
    fn client(&self, name: &str) -> anyhow::Result<ClientBuilder> {
        match self {
            Self::Cluster(cluster) => cluster.client(0, name),
            Self::Standalone(broker) => broker.client(name),
        }
    }

    /// The publisher's client: on node 2 of the cluster when `across`, else where
    /// [`Target::client`] connects.
    fn publisher(&self, across: bool) -> anyhow::Result<ClientBuilder> {
        match self {
            Self::Cluster(cluster) if across => cluster.client(1, "bench-publisher"),
            _ => self.client("bench-publisher"),
        }
    }

    async fn stop(self) {
        match self {
            Self::Cluster(cluster) => cluster.stop().await,
            Self::Standalone(broker) => broker.stop().await,
        }
    }
}

/// The figures of one run of each kind against one target.
#[derive(Default)]
struct Samples {
    acked_per_s: Vec<f64>,
    delivery_p50: Vec<f64>,
    delivery_p99: Vec<f64>,
    ack_p50: Vec<f64>,
    ack_p99: Vec<f64>,
    /// Acknowledged publishes never delivered, over every run (at least once: must be 0).
    lost: u64,
    /// Publishes that failed, over every run.
    failed: u64,
}

/// One storage mode's medians.
struct ModeFigures {
    cluster: Samples,
    /// The cluster with the publisher on another node than the session's.
    across: Samples,
    standalone: Samples,
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

fn storage_config(mode: StorageArg, data_dir: &Path) -> BrokerConfig {
    let mut config = bench_config();
    config.storage.mode = match mode {
        StorageArg::Memory => StorageMode::Memory,
        StorageArg::Disk => StorageMode::Disk,
    };
    config.storage.data_dir = data_dir.to_path_buf();
    config
}

/// Connects the client `builder` makes, again every 100 ms while it is refused, for at most
/// [`QUORUM_TIMEOUT`].
async fn connect_retrying(
    builder: impl Fn() -> anyhow::Result<ClientBuilder>,
) -> anyhow::Result<Client> {
    let deadline = Instant::now() + QUORUM_TIMEOUT;
    loop {
        match builder()?.connect().await {
            Ok(client) => return Ok(client),
            Err(err) if Instant::now() < deadline => {
                tracing::debug!(%err, "a named session's connection refused; trying again");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => {
                return Err(err).with_context(|| format!("no connection within {QUORUM_TIMEOUT:?}"))
            }
        }
    }
}

/// A named session's client on `target`, with an at-least-once subscription of `topic`.
async fn named_subscriber(
    target: &Target,
    session: &str,
    topic: &str,
) -> anyhow::Result<(Client, Subscription)> {
    let client = connect_retrying(|| {
        Ok(target
            .client("bench-subscriber")?
            .session_name(session)
            .subscription_buffer(65_536))
    })
    .await
    .context("connecting the named subscriber")?;
    let subscription = client
        .subscribe_at_least_once(topic)
        .await
        .context("the at-least-once subscription")?;
    Ok((client, subscription))
}

/// Counts the deliveries of `subscription` (acknowledging each by asking for the next) until
/// `count` or the subscription ends.
fn count_deliveries(
    mut subscription: Subscription,
    count: u64,
) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let delivered = Arc::new(AtomicU64::new(0));
    let task = {
        let delivered = Arc::clone(&delivered);
        tokio::spawn(async move {
            while delivered.load(Ordering::Relaxed) < count && subscription.recv().await.is_some() {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
            // Acknowledges the last one.
            let _ = tokio::time::timeout(Duration::from_millis(1), subscription.recv()).await;
        })
    };
    (delivered, task)
}

/// One throughput run: acknowledged publishes per second, and how many of them the subscriber
/// did not receive and how many failed.
async fn throughput(
    target: &Target,
    across: bool,
    args: &SessionsBenchArgs,
    session: &str,
    topic: &str,
) -> anyhow::Result<(f64, u64, u64)> {
    let (subscriber, subscription) = named_subscriber(target, session, topic).await?;
    let (delivered, reader) = count_deliveries(subscription, args.count);
    let publisher = target
        .publisher(across)?
        .connect()
        .await
        .context("connecting the publisher")?;
    let payload = Bytes::from(vec![0x42; args.size]);
    let window = args.window.max(1);
    let started = Instant::now();
    let mut in_flight = FuturesUnordered::new();
    let (mut sent, mut acked, mut failed) = (0u64, 0u64, 0u64);
    loop {
        while sent < args.count && in_flight.len() < window {
            in_flight.push(publisher.publish_acked(topic, payload.clone()));
            sent += 1;
        }
        match in_flight.next().await {
            Some(Ok(_)) => acked += 1,
            Some(Err(err)) => {
                tracing::warn!(%err, "an acknowledged publish failed");
                failed += 1;
            }
            None => break,
        }
    }
    let elapsed = started.elapsed();
    drop(in_flight);
    let deadline = Instant::now() + STRAGGLER_WAIT;
    while delivered.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lost = acked.saturating_sub(delivered.load(Ordering::Relaxed));
    reader.abort();
    let _ = publisher.close().await;
    let _ = subscriber.close().await;
    Ok((acked as f64 / elapsed.as_secs_f64(), lost, failed))
}

/// Latencies of one paced phase.
struct Phase {
    delivery: Latencies,
    ack: Latencies,
    lost: u64,
    failed: u64,
}

/// One phase at `args.rate` for `length`: each publish is acknowledged on a task of its own
/// (at most `--window` wait at once), so the pace holds while acknowledgements are slow.
async fn paced_phase(
    publisher: &Client,
    subscription: &mut Subscription,
    topic: &str,
    args: &SessionsBenchArgs,
    phase: u64,
    length: f64,
) -> anyhow::Result<Phase> {
    let total = (args.rate as f64 * length).round() as u64;
    let schedule = Schedule::new(args.rate);
    let size = args.size.max(HEADER_BYTES);
    let window = args.window.max(1);
    let slots = Arc::new(Semaphore::new(window));
    let acks = Arc::new(Mutex::new(Latencies::new()?));
    let failed = Arc::new(AtomicU64::new(0));
    let sender = {
        let (publisher, topic) = (publisher.clone(), Arc::<str>::from(topic));
        let (slots, acks, failed) = (Arc::clone(&slots), Arc::clone(&acks), Arc::clone(&failed));
        spawn_paced(move |runtime| {
            for index in 0..total {
                schedule.wait_blocking(index);
                let slot = runtime.block_on(Arc::clone(&slots).acquire_owned())?;
                let stamp = schedule.stamp(index);
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&phase.to_be_bytes());
                payload[8..16].copy_from_slice(&stamp.to_be_bytes());
                let (publisher, topic) = (publisher.clone(), Arc::clone(&topic));
                let (acks, failed) = (Arc::clone(&acks), Arc::clone(&failed));
                runtime.spawn(async move {
                    match publisher.publish_acked(&topic, Bytes::from(payload)).await {
                        Ok(_) => {
                            let latency = schedule.latency(stamp);
                            acks.lock()
                                .unwrap_or_else(|poisoned| poisoned.into_inner())
                                .record(latency);
                        }
                        Err(err) => {
                            tracing::warn!(%err, "an acknowledged publish failed");
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    drop(slot);
                });
            }
            anyhow::Ok(())
        })
    };
    let mut delivery = Latencies::new()?;
    let deadline = schedule.intended(total) + STRAGGLER_WAIT;
    while delivery.count() < total {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscription.recv()).await else {
            break;
        };
        let payload = message.payload();
        if payload.len() < HEADER_BYTES || payload[..8] != phase.to_be_bytes() {
            continue;
        }
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&payload[8..16]);
        delivery.record(schedule.latency(u64::from_be_bytes(stamp)));
    }
    tokio::task::spawn_blocking(move || sender.join())
        .await
        .context("sender thread")?
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
    // Every acknowledgement is in once every slot is free again.
    let all = u32::try_from(window).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(STRAGGLER_WAIT, slots.acquire_many(all)).await;
    let ack = acks
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone();
    let failed = failed.load(Ordering::Relaxed);
    Ok(Phase {
        lost: ack.count().saturating_sub(delivery.count()),
        delivery,
        ack,
        failed,
    })
}

/// One latency run: a warm-up phase, then the measured one.
async fn latency(
    target: &Target,
    across: bool,
    args: &SessionsBenchArgs,
    session: &str,
    topic: &str,
) -> anyhow::Result<Phase> {
    let (subscriber, mut subscription) = named_subscriber(target, session, topic).await?;
    let publisher = target
        .publisher(across)?
        .connect()
        .await
        .context("connecting the publisher")?;
    paced_phase(&publisher, &mut subscription, topic, args, 0, args.warmup).await?;
    let measured = paced_phase(&publisher, &mut subscription, topic, args, 1, args.duration).await;
    // Acknowledges the last delivery.
    let _ = tokio::time::timeout(Duration::from_millis(1), subscription.recv()).await;
    let _ = publisher.close().await;
    let _ = subscriber.close().await;
    measured
}

/// One run of each kind against `target`, added to `samples`.
async fn measure(
    target: &Target,
    across: bool,
    args: &SessionsBenchArgs,
    run: &str,
    samples: &mut Samples,
) -> anyhow::Result<()> {
    let (rate, lost, failed) = throughput(
        target,
        across,
        args,
        &format!("bench-throughput-{run}"),
        &format!("bench.sessions.throughput.{run}"),
    )
    .await?;
    samples.acked_per_s.push(rate);
    samples.lost += lost;
    samples.failed += failed;
    let phase = latency(
        target,
        across,
        args,
        &format!("bench-latency-{run}"),
        &format!("bench.sessions.latency.{run}"),
    )
    .await?;
    samples.delivery_p50.push(phase.delivery.at(0.50) as f64);
    samples.delivery_p99.push(phase.delivery.at(0.99) as f64);
    samples.ack_p50.push(phase.ack.at(0.50) as f64);
    samples.ack_p99.push(phase.ack.at(0.99) as f64);
    samples.lost += phase.lost;
    samples.failed += phase.failed;
    Ok(())
}

/// Every run of one storage mode, interleaved.
async fn measure_mode(args: &SessionsBenchArgs, mode: StorageArg) -> anyhow::Result<ModeFigures> {
    let dir = ScratchDir::new()?;
    let members: Vec<String> = (1..=args.nodes).map(|index| format!("n{index}")).collect();
    let cluster = LocalCluster::start_with(args.nodes, |name, config| {
        let mut config = BrokerConfig {
            storage: storage_config(mode, &dir.path().join(name)).storage,
            ..config
        };
        if let Some(cluster) = &mut config.cluster {
            cluster.members = members.clone();
        }
        config
    })
    .await?;
    let cluster = Target::Cluster(cluster);
    let standalone = Target::Standalone(Box::new(
        EmbeddedBroker::start(storage_config(mode, &dir.path().join("standalone"))).await?,
    ));
    let mut figures = ModeFigures {
        cluster: Samples::default(),
        across: Samples::default(),
        standalone: Samples::default(),
    };
    let mut outcome = Ok(());
    for round in 0..args.repeat {
        outcome = measure(
            &cluster,
            false,
            args,
            &format!("c{round}"),
            &mut figures.cluster,
        )
        .await;
        if outcome.is_err() {
            break;
        }
        outcome = measure(
            &cluster,
            true,
            args,
            &format!("x{round}"),
            &mut figures.across,
        )
        .await;
        if outcome.is_err() {
            break;
        }
        outcome = measure(
            &standalone,
            false,
            args,
            &format!("s{round}"),
            &mut figures.standalone,
        )
        .await;
        if outcome.is_err() {
            break;
        }
    }
    cluster.stop().await;
    standalone.stop().await;
    outcome.map(|()| figures)
}

/// Adds one storage mode's figures to `report`, under keys starting with `$mode`.
macro_rules! mode_figures {
    ($report:expr, $mode:literal, $figures:expr) => {{
        let figures = $figures;
        let (cluster, alone) = (&figures.cluster, &figures.standalone);
        let cluster_rate = median(cluster.acked_per_s.clone());
        let alone_rate = median(alone.acked_per_s.clone());
        let pairs = [
            (
                median(cluster.delivery_p50.clone()),
                median(alone.delivery_p50.clone()),
            ),
            (
                median(cluster.delivery_p99.clone()),
                median(alone.delivery_p99.clone()),
            ),
            (
                median(cluster.ack_p50.clone()),
                median(alone.ack_p50.clone()),
            ),
            (
                median(cluster.ack_p99.clone()),
                median(alone.ack_p99.clone()),
            ),
        ];
        $report
            .figure(
                concat!($mode, "_cluster_acked_per_s"),
                concat!($mode, ": cluster, acked publishes/s"),
                cluster_rate,
            )
            .figure(
                concat!($mode, "_standalone_acked_per_s"),
                concat!($mode, ": one broker, acked publishes/s"),
                alone_rate,
            )
            .figure(
                concat!($mode, "_acked_per_s_cluster_over_standalone"),
                concat!($mode, ": acked publishes/s, cluster / one broker"),
                ratio(cluster_rate, alone_rate),
            )
            .figure(
                concat!($mode, "_cluster_delivery_p50_us"),
                concat!($mode, ": cluster, publish → delivery p50 µs"),
                pairs[0].0,
            )
            .figure(
                concat!($mode, "_standalone_delivery_p50_us"),
                concat!($mode, ": one broker, publish → delivery p50 µs"),
                pairs[0].1,
            )
            .figure(
                concat!($mode, "_delivery_p50_cluster_over_standalone"),
                concat!($mode, ": publish → delivery p50, cluster / one broker"),
                ratio(pairs[0].0, pairs[0].1),
            )
            .figure(
                concat!($mode, "_cluster_delivery_p99_us"),
                concat!($mode, ": cluster, publish → delivery p99 µs"),
                pairs[1].0,
            )
            .figure(
                concat!($mode, "_standalone_delivery_p99_us"),
                concat!($mode, ": one broker, publish → delivery p99 µs"),
                pairs[1].1,
            )
            .figure(
                concat!($mode, "_delivery_p99_cluster_over_standalone"),
                concat!($mode, ": publish → delivery p99, cluster / one broker"),
                ratio(pairs[1].0, pairs[1].1),
            )
            .figure(
                concat!($mode, "_cluster_ack_p50_us"),
                concat!($mode, ": cluster, publish → PublishAck p50 µs"),
                pairs[2].0,
            )
            .figure(
                concat!($mode, "_standalone_ack_p50_us"),
                concat!($mode, ": one broker, publish → PublishAck p50 µs"),
                pairs[2].1,
            )
            .figure(
                concat!($mode, "_ack_p50_cluster_over_standalone"),
                concat!($mode, ": publish → PublishAck p50, cluster / one broker"),
                ratio(pairs[2].0, pairs[2].1),
            )
            .figure(
                concat!($mode, "_cluster_ack_p99_us"),
                concat!($mode, ": cluster, publish → PublishAck p99 µs"),
                pairs[3].0,
            )
            .figure(
                concat!($mode, "_standalone_ack_p99_us"),
                concat!($mode, ": one broker, publish → PublishAck p99 µs"),
                pairs[3].1,
            )
            .figure(
                concat!($mode, "_ack_p99_cluster_over_standalone"),
                concat!($mode, ": publish → PublishAck p99, cluster / one broker"),
                ratio(pairs[3].0, pairs[3].1),
            )
            .figure(
                concat!($mode, "_cluster_lost"),
                concat!($mode, ": cluster, acked but not delivered"),
                cluster.lost,
            )
            .figure(
                concat!($mode, "_standalone_lost"),
                concat!($mode, ": one broker, acked but not delivered"),
                alone.lost,
            )
            .figure(
                concat!($mode, "_failed"),
                concat!($mode, ": publishes failed"),
                cluster.failed + alone.failed + figures.across.failed,
            );
        let across = &figures.across;
        let across_rate = median(across.acked_per_s.clone());
        let across_ack = median(across.ack_p50.clone());
        let across_delivery = median(across.delivery_p50.clone());
        $report
            .figure(
                concat!($mode, "_across_acked_per_s"),
                concat!(
                    $mode,
                    ": cluster, publisher on another node, acked publishes/s"
                ),
                across_rate,
            )
            .figure(
                concat!($mode, "_across_acked_per_s_over_standalone"),
                concat!(
                    $mode,
                    ": acked publishes/s, publisher on another node / one broker"
                ),
                ratio(across_rate, alone_rate),
            )
            .figure(
                concat!($mode, "_across_ack_p50_us"),
                concat!(
                    $mode,
                    ": cluster, publisher on another node, PublishAck p50 µs"
                ),
                across_ack,
            )
            .figure(
                concat!($mode, "_across_ack_p50_over_standalone"),
                concat!(
                    $mode,
                    ": PublishAck p50, publisher on another node / one broker"
                ),
                ratio(across_ack, pairs[2].1),
            )
            .figure(
                concat!($mode, "_across_ack_p99_us"),
                concat!(
                    $mode,
                    ": cluster, publisher on another node, PublishAck p99 µs"
                ),
                median(across.ack_p99.clone()),
            )
            .figure(
                concat!($mode, "_across_delivery_p50_us"),
                concat!(
                    $mode,
                    ": cluster, publisher on another node, delivery p50 µs"
                ),
                across_delivery,
            )
            .figure(
                concat!($mode, "_across_delivery_p50_over_standalone"),
                concat!(
                    $mode,
                    ": delivery p50, publisher on another node / one broker"
                ),
                ratio(across_delivery, pairs[0].1),
            )
            .figure(
                concat!($mode, "_across_lost"),
                concat!(
                    $mode,
                    ": cluster, publisher on another node, acked but not delivered"
                ),
                across.lost,
            );
    }};
}

/// Runs `cassini bench sessions`.
pub(crate) async fn run(args: SessionsBenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(
        args.nodes >= 3,
        "replicated sessions need at least three members"
    );
    let mut report = Report::new(
        "sessions",
        format!(
            "cassini, {} members in-process against one broker",
            args.nodes
        ),
        format!(
            "named session, at-least-once subscriber and publisher on one node: {} acked \
             publishes with {} in flight; latency at {} msg/s of {} B; medians of {} \
             interleaved runs; failover after kill -9",
            args.count,
            args.window,
            args.rate,
            args.size.max(HEADER_BYTES),
            args.repeat
        ),
    );
    report
        .param("nodes", args.nodes)
        .param("count", args.count)
        .param("window", args.window)
        .param("rate", args.rate)
        .param("size", args.size)
        .param("repeat", args.repeat);
    let mut modes = args.storage.clone();
    modes.dedup();
    for mode in modes {
        let figures = measure_mode(&args, mode).await?;
        match mode {
            StorageArg::Memory => mode_figures!(report, "memory", figures),
            StorageArg::Disk => mode_figures!(report, "disk", figures),
        }
    }
    if args.failovers > 0 {
        let outcomes = failover::measure_sessions(args.failovers).await?;
        let rounds: Vec<_> = outcomes.iter().flatten().collect();
        let seconds = |of: fn(&failover::SessionFailover) -> Duration| -> Vec<f64> {
            rounds.iter().map(|round| of(round).as_secs_f64()).collect()
        };
        let delivering = seconds(|round| round.delivering);
        let worst = delivering.iter().copied().fold(0.0, f64::max);
        report
            .figure("failovers", "failovers resumed", Value::from(rounds.len()))
            .figure(
                "failover_sessions_lost",
                "failovers with the session lost",
                Value::from(outcomes.len() - rounds.len()),
            )
            .figure(
                "failover_detected_median_s",
                "failover: connection counted lost, median s",
                median(seconds(|round| round.detected)),
            )
            .figure(
                "failover_resumed_median_s",
                "failover: session resumed, median s",
                median(seconds(|round| round.resumed)),
            )
            .figure(
                "failover_median_s",
                "failover: delivering again, median s",
                median(delivering),
            )
            .figure("failover_max_s", "failover: delivering again, max s", worst);
    }
    Ok(report)
}
