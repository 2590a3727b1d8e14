//! `cassini bench latency`: one publisher, one subscriber, a fixed offered rate; latency from
//! each message's intended send time.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cassini_broker::BrokerConfig;
use cassini_client::{Client, Subscription};
use futures_util::StreamExt;
use serde_json::json;

use super::embedded::EmbeddedBroker;
use super::pacing::{spawn_paced, Schedule};
use super::report::Latencies;
use crate::cli::LatencyArgs;

/// Bytes at the front of every payload: phase, then intended send time.
const HEADER_BYTES: usize = 16;

pub(crate) async fn run(args: LatencyArgs) -> anyhow::Result<ExitCode> {
    let broker = EmbeddedBroker::start(BrokerConfig::default()).await?;
    let subscriber = broker
        .client("bench-subscriber")?
        .connect()
        .await
        .context("subscriber")?;
    let mut subscription = subscriber.subscribe("bench.latency").await?;
    let publisher = broker
        .client("bench-publisher")?
        .connect()
        .await
        .context("publisher")?;
    let size = args.size.max(HEADER_BYTES);
    paced(
        &publisher,
        &mut subscription,
        args.rate,
        size,
        0,
        Duration::from_secs_f64(args.warmup),
    )
    .await?;
    let (latencies, lost) = paced(
        &publisher,
        &mut subscription,
        args.rate,
        size,
        1,
        Duration::from_secs_f64(args.duration),
    )
    .await?;
    if args.json {
        println!(
            "{}",
            json!({
                "scenario": "latency",
                "rate": args.rate,
                "size": size,
                "duration_s": args.duration,
                "latency": latencies.to_json(),
                "lost": lost,
            })
        );
    } else {
        println!(
            "latency: {} msg/s of {} B for {} s, one publisher and one subscriber over mTLS QUIC",
            args.rate, size, args.duration
        );
        println!("{}", Latencies::header());
        println!("{}", latencies.row("publish → deliver"));
        println!("lost: {lost}");
    }
    let _ = publisher.close().await;
    let _ = subscriber.close().await;
    broker.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// Sends at `rate` for `length` from a paced thread and records each delivery's latency.
async fn paced(
    publisher: &Client,
    subscription: &mut Subscription,
    rate: u64,
    size: usize,
    phase: u64,
    length: Duration,
) -> anyhow::Result<(Latencies, u64)> {
    let total = (rate as f64 * length.as_secs_f64()).round() as u64;
    let schedule = Schedule::new(rate);
    let sender = {
        let publisher = publisher.clone();
        spawn_paced(move |runtime| {
            for index in 0..total {
                schedule.wait_blocking(index);
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&phase.to_be_bytes());
                payload[8..16].copy_from_slice(&schedule.stamp(index).to_be_bytes());
                runtime.block_on(publisher.publish("bench.latency", Bytes::from(payload)))?;
            }
            Ok(())
        })
    };
    let mut latencies = Latencies::new()?;
    let deadline = schedule.intended(total) + Duration::from_secs(5);
    while latencies.count() < total {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline, subscription.next()).await else {
            break;
        };
        let payload = message.payload();
        if payload.len() < HEADER_BYTES || payload[..8] != phase.to_be_bytes() {
            continue;
        }
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&payload[8..16]);
        latencies.record(schedule.latency(u64::from_be_bytes(stamp)));
    }
    tokio::task::spawn_blocking(move || sender.join())
        .await
        .context("sender thread")?
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
    let lost = total - latencies.count();
    Ok((latencies, lost))
}
