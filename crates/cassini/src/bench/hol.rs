//! `cassini bench hol`: head-of-line isolation. One subscriber connection holds a `fast.x`
//! subscription, which it reads, and a `slow.x` subscription, which it never reads. The fast
//! topic's latency is measured at a fixed offered rate, first alone, then while another client
//! floods `slow.x` with large messages as fast as it can. With one QUIC stream per subscription
//! the flood should only fill the slow subscription's own queue.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cassini_broker::BrokerConfig;
use cassini_client::{Client, Subscription};
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::embedded::EmbeddedBroker;
use super::pacing::Schedule;
use super::report::Latencies;
use crate::cli::HolArgs;

/// Bytes at the front of every fast payload: phase, index, intended send time.
const HEADER_BYTES: usize = 24;

pub(crate) async fn run(args: HolArgs) -> anyhow::Result<ExitCode> {
    let broker = EmbeddedBroker::start(BrokerConfig::default()).await?;
    let subscriber = broker
        .client("bench-subscriber")?
        .subscription_buffer(64)
        .connect()
        .await
        .context("subscriber")?;
    let mut fast = subscriber.subscribe("fast.x").await?;
    let slow = subscriber.subscribe("slow.x").await?;
    let publisher = broker
        .client("bench-fast")?
        .connect()
        .await
        .context("publisher")?;

    let warmup = Duration::from_secs_f64(args.warmup);
    let measured = Duration::from_secs_f64(args.duration);
    measure(&publisher, &mut fast, &args, 0, warmup).await?;
    let (quiet, quiet_lost) = measure(&publisher, &mut fast, &args, 1, measured).await?;

    let flooder = broker
        .client("bench-flood")?
        .connect()
        .await
        .context("flooder")?;
    let stop = CancellationToken::new();
    let flood = tokio::spawn(flood(flooder, args.flood_size, stop.clone()));
    let (flooded, flooded_lost) = measure(&publisher, &mut fast, &args, 2, measured).await?;
    stop.cancel();
    let flood_messages = flood.await.context("flood task")??;
    let slow_dropped = slow.dropped();
    drop(slow);

    let ratio = flooded.at(0.99) as f64 / quiet.at(0.99).max(1) as f64;
    if args.json {
        let report = json!({
            "scenario": "hol",
            "rate": args.rate,
            "size": args.size,
            "duration_s": args.duration,
            "flood_size": args.flood_size,
            "quiet": quiet.to_json(),
            "quiet_lost": quiet_lost,
            "flooded": flooded.to_json(),
            "flooded_lost": flooded_lost,
            "flood_messages_published": flood_messages,
            "slow_subscription_dropped_reported": slow_dropped,
            "p99_ratio_flooded_over_quiet": ratio,
        });
        println!("{report}");
    } else {
        println!(
            "hol: fast.x at {} msg/s of {} B for {} s; flood of {} B messages on slow.x (never read) on the same connection",
            args.rate, args.size, args.duration, args.flood_size
        );
        println!("{}", Latencies::header());
        println!("{}", quiet.row("fast.x alone"));
        println!("{}", flooded.row("fast.x during flood"));
        println!(
            "lost: {quiet_lost} alone, {flooded_lost} during flood; flood published {flood_messages} messages"
        );
        println!("p99 during flood / p99 alone = {ratio:.2} (goal: at most 1.5)");
    }
    let _ = publisher.close().await;
    let _ = subscriber.close().await;
    broker.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Publishes `fast.x` at the offered rate for `length` and records each message's latency from
/// its intended send time. Returns the latencies and how many messages did not arrive.
async fn measure(
    publisher: &Client,
    fast: &mut Subscription,
    args: &HolArgs,
    phase: u64,
    length: Duration,
) -> anyhow::Result<(Latencies, u64)> {
    let total = (args.rate as f64 * length.as_secs_f64()).round() as u64;
    let schedule = Schedule::new(args.rate);
    let size = args.size.max(HEADER_BYTES);
    let sender = {
        let publisher = publisher.clone();
        tokio::spawn(async move {
            for index in 0..total {
                schedule.wait_for(index).await;
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&phase.to_be_bytes());
                payload[8..16].copy_from_slice(&index.to_be_bytes());
                payload[16..24].copy_from_slice(&schedule.stamp(index).to_be_bytes());
                publisher.publish("fast.x", Bytes::from(payload)).await?;
            }
            Ok::<_, cassini_client::ClientError>(())
        })
    };
    let mut latencies = Latencies::new()?;
    let deadline = schedule.intended(total) + Duration::from_secs(5);
    while latencies.count() < total {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, fast.next()).await else {
            break;
        };
        let payload = message.payload();
        if payload.len() < HEADER_BYTES || payload[..8] != phase.to_be_bytes() {
            continue;
        }
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&payload[16..24]);
        latencies.record(schedule.latency(u64::from_be_bytes(stamp)));
    }
    sender.await.context("sender task")??;
    let lost = total - latencies.count();
    Ok((latencies, lost))
}

/// Publishes `size`-byte messages to `slow.x` as fast as the client accepts them until stopped.
async fn flood(client: Client, size: usize, stop: CancellationToken) -> anyhow::Result<u64> {
    let payload = Bytes::from(vec![0x5a; size]);
    let mut published = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            sent = client.publish("slow.x", payload.clone()) => {
                sent?;
                published += 1;
            }
        }
    }
    let _ = client.close().await;
    Ok(published)
}
