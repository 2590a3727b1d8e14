//! `cassini bench durable`: acknowledged-publish throughput and latency, in memory and on
//! disk, with one and with many concurrent publishers.
//!
//! Each case starts a broker in-process, one at-least-once subscriber that reads and
//! acknowledges everything (so on disk every message is stored, then deleted), and
//! `publishers` clients on their own connections, each publishing with `ack` one message after
//! another for `--duration` seconds. Latency is from the call to its `PublishAck`. On disk an
//! acknowledgement waits for the group commit that made the message durable, so one publisher
//! measures the cost of a sync and many publishers show how far they share one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use cassini_broker::config::StorageMode;
use cassini_broker::BrokerConfig;
use serde_json::json;
use tokio::sync::Mutex;

use super::embedded::EmbeddedBroker;
use crate::cli::DurableArgs;
use cassini_bench::Latencies;

const TOPIC: &str = "bench.durable";

/// The figures of one case.
struct Case {
    storage: &'static str,
    publishers: usize,
    acked: u64,
    elapsed: Duration,
    latencies: Latencies,
    delivered: u64,
}

pub(crate) async fn run(args: DurableArgs) -> anyhow::Result<ExitCode> {
    let data_root = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("cassini-bench-durable-{}", std::process::id())),
    };
    let mut cases = Vec::new();
    for publishers in [1, args.publishers.max(1)] {
        for mode in [StorageMode::Memory, StorageMode::Disk] {
            let dir = data_root.join(format!("{publishers}-{mode:?}"));
            let case = run_case(&args, mode, publishers, dir).await;
            if args.data_dir.is_none() {
                let _ = std::fs::remove_dir_all(&data_root);
            }
            cases.push(case?);
        }
    }
    if args.json {
        let cases: Vec<_> = cases
            .iter()
            .map(|case| {
                json!({
                    "storage": case.storage,
                    "publishers": case.publishers,
                    "acked": case.acked,
                    "delivered": case.delivered,
                    "elapsed_s": case.elapsed.as_secs_f64(),
                    "acked_per_s": case.acked as f64 / case.elapsed.as_secs_f64(),
                    "latency": case.latencies.to_json(),
                })
            })
            .collect();
        println!(
            "{}",
            json!({ "scenario": "durable", "size": args.size, "cases": cases })
        );
    } else {
        println!(
            "durable: acknowledged publishes of {} B for {} s per case, one at-least-once subscriber",
            args.size, args.duration
        );
        // Latency rows start with a 22-character label and a space; this table puts its own
        // label and the rate there.
        let header = Latencies::header();
        println!(
            "{:<22} {:>10} {}",
            "case",
            "acked/s",
            header.get(23..).unwrap_or("")
        );
        for case in &cases {
            let label = format!("{} {} pub", case.storage, case.publishers);
            let rate = case.acked as f64 / case.elapsed.as_secs_f64();
            let row = case.latencies.row("");
            println!("{label:<22} {rate:>10.0} {}", row.get(23..).unwrap_or(""));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn run_case(
    args: &DurableArgs,
    mode: StorageMode,
    publishers: usize,
    data_dir: PathBuf,
) -> anyhow::Result<Case> {
    let mut config = BrokerConfig::default();
    config.storage.mode = mode;
    config.storage.data_dir = data_dir;
    let broker = EmbeddedBroker::start(config).await?;
    let subscriber = broker
        .client("bench-subscriber")?
        .subscription_buffer(65_536)
        .connect()
        .await
        .context("subscriber")?;
    let mut subscription = subscriber.subscribe_at_least_once(TOPIC).await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let reader = {
        let delivered = Arc::clone(&delivered);
        tokio::spawn(async move {
            while subscription.recv().await.is_some() {
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let mut clients = Vec::new();
    for i in 0..publishers {
        clients.push(
            broker
                .client(&format!("bench-publisher-{i}"))?
                .connect()
                .await
                .context("publisher")?,
        );
    }
    let payload = Bytes::from(vec![0x42; args.size]);
    let latencies = Arc::new(Mutex::new(Latencies::new()?));
    let length = Duration::from_secs_f64(args.duration);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in &clients {
        let (client, payload, latencies) =
            (client.clone(), payload.clone(), Arc::clone(&latencies));
        tasks.push(tokio::spawn(async move {
            let mut acked = 0u64;
            let mut own = Latencies::new()?;
            while started.elapsed() < length {
                let sent = Instant::now();
                client.publish_acked(TOPIC, payload.clone()).await?;
                own.record(sent.elapsed());
                acked += 1;
            }
            latencies.lock().await.merge(&own)?;
            anyhow::Ok(acked)
        }));
    }
    let mut acked = 0;
    for task in tasks {
        acked += task.await.context("publisher task")??;
    }
    let elapsed = started.elapsed();
    for client in clients {
        let _ = client.close().await;
    }
    // Let the subscriber take what is still on its way (up to 10 s), then stop.
    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered.load(Ordering::Relaxed) < acked && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = subscriber.close().await;
    reader.abort();
    let delivered = delivered.load(Ordering::Relaxed);
    broker.stop().await;
    let latencies = Arc::try_unwrap(latencies)
        .map_err(|_| anyhow::anyhow!("latencies still shared"))?
        .into_inner();
    Ok(Case {
        storage: match mode {
            StorageMode::Disk => "disk",
            _ => "memory",
        },
        publishers,
        acked,
        elapsed,
        latencies,
        delivered,
    })
}
