//! `cassini bench throughput`: one publisher sends `--count` messages of `--size` bytes as fast
//! as the client accepts them; one subscriber on another connection counts what arrives.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use cassini_broker::BrokerConfig;
use cassini_protocol::SubscribeOptions;
use futures_util::StreamExt;
use serde_json::json;

use super::embedded::EmbeddedBroker;
use crate::cli::ThroughputArgs;

pub(crate) async fn run(args: ThroughputArgs) -> anyhow::Result<ExitCode> {
    let broker = EmbeddedBroker::start(BrokerConfig::default()).await?;
    let subscriber = broker
        .client("bench-subscriber")?
        .subscription_buffer(65_536)
        .connect()
        .await
        .context("subscriber")?;
    // The subscriber keeps up or falls behind; a bound as large as the run shows the cost
    // without drops, and any drop is still counted.
    let options = SubscribeOptions {
        max_queued_messages: Some(u32::try_from(args.count).unwrap_or(u32::MAX)),
        max_queued_bytes: Some(64 * 1024 * 1024),
        ..SubscribeOptions::default()
    };
    let mut subscription = subscriber
        .subscribe_with("bench.throughput", options)
        .await?;
    let publisher = broker
        .client("bench-publisher")?
        .connect()
        .await
        .context("publisher")?;
    let payload = Bytes::from(vec![0x42; args.size]);
    let count = args.count;

    let started = Instant::now();
    let sender = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for _ in 0..count {
                publisher
                    .publish("bench.throughput", payload.clone())
                    .await?;
            }
            Ok::<_, cassini_client::ClientError>(())
        })
    };
    let mut received = 0u64;
    let mut last_sequence = 0u64;
    let quiet = Duration::from_secs(5);
    while last_sequence < count {
        let Ok(Some(message)) = tokio::time::timeout(quiet, subscription.next()).await else {
            break;
        };
        received += 1;
        last_sequence = message.sequence();
    }
    let elapsed = started.elapsed();
    sender.await.context("sender task")??;
    let lost = count - received;
    let rate = received as f64 / elapsed.as_secs_f64();
    let megabytes = rate * args.size as f64 / 1_000_000.0;
    if args.json {
        println!(
            "{}",
            json!({
                "scenario": "throughput",
                "count": count,
                "size": args.size,
                "received": received,
                "lost": lost,
                "elapsed_s": elapsed.as_secs_f64(),
                "msgs_per_s": rate,
                "mb_per_s": megabytes,
            })
        );
    } else {
        println!(
            "throughput: {count} messages of {} B, one publisher → one subscriber over mTLS QUIC",
            args.size
        );
        println!(
            "received {received} in {:.2} s: {:.0} msg/s, {:.1} MB/s; lost {lost}",
            elapsed.as_secs_f64(),
            rate,
            megabytes
        );
    }
    let _ = publisher.close().await;
    let _ = subscriber.close().await;
    broker.stop().await;
    Ok(ExitCode::SUCCESS)
}
