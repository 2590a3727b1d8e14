//! `cassini bench latency`: one publisher, one subscriber, a fixed offered rate; latency from
//! each message's intended send time.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cassini_broker::BrokerConfig;
use serde_json::json;

use super::embedded::EmbeddedBroker;
use super::paced_run::{measure, Phase, HEADER_BYTES};
use super::report::Latencies;
use crate::cli::LatencyArgs;

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
    let phase = |phase, seconds| Phase {
        topic: "bench.latency",
        rate: args.rate,
        size,
        phase,
        length: Duration::from_secs_f64(seconds),
    };
    measure(&publisher, &mut subscription, phase(0, args.warmup)).await?;
    let (latencies, lost) = measure(&publisher, &mut subscription, phase(1, args.duration)).await?;
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
