//! `cassini bench datagram`: the latency of a reliable and a datagram subscription side by
//! side, with the subscriber's link losing 0%, 1% and 5% of its packets (both ways, through the
//! seeded faulty socket). A reliable stream holds every message behind a lost packet until it
//! is retransmitted; a datagram subscription loses that message and delays nothing.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use cassini_broker::BrokerConfig;
use cassini_client::{DeliveryClass, OversizeRule, SubscribeOptions};
use cassini_quic::faults::{FaultControl, FaultPlan};
use cassini_quic::server::ServerOptions;
use cassini_quic::tls::{CongestionControl, QuicOptions};
use serde_json::json;

use cassini_bench::latency::{measure, Phase, HEADER_BYTES};
use cassini_bench::{BenchClient, Latencies};

use super::cassini_peer::CassiniClient;
use super::embedded::EmbeddedBroker;
use crate::cli::DatagramArgs;

/// Packet loss rates measured, in percent.
const LOSS_PERCENT: [u32; 3] = [0, 1, 5];

pub(crate) async fn run(args: DatagramArgs) -> anyhow::Result<ExitCode> {
    let congestion = if args.bbr {
        CongestionControl::Bbr
    } else {
        CongestionControl::Cubic
    };
    let options = ServerOptions {
        quic: QuicOptions {
            congestion,
            ..QuicOptions::default()
        },
        ..ServerOptions::default()
    };
    let broker = EmbeddedBroker::start_with(BrokerConfig::default(), options).await?;
    let faults = FaultControl::new(FaultPlan::default());
    let subscriber = broker
        .client("bench-subscriber")?
        .socket_layer(faults.layer())
        .subscription_buffer(1 << 16)
        .connect()
        .await
        .context("subscriber")?;
    let subscriber = CassiniClient::new(subscriber, SubscribeOptions::default());
    let mut reliable = subscriber.subscribe("bench.dg.reliable").await?;
    let datagram_options = SubscribeOptions {
        delivery: DeliveryClass::Datagram {
            oversize: OversizeRule::Drop,
        },
        ..SubscribeOptions::default()
    };
    let mut datagram = subscriber
        .subscribe_with("bench.dg.datagram", datagram_options)
        .await?;
    let publisher = broker
        .client("bench-publisher")?
        .connect()
        .await
        .context("publisher")?;
    let publisher = CassiniClient::new(publisher, SubscribeOptions::default());
    let size = args.size.max(HEADER_BYTES);
    let mut rows = Vec::new();
    let mut phase_id = 0;
    for loss in LOSS_PERCENT {
        for (class, topic) in [
            ("reliable", "bench.dg.reliable"),
            ("datagram", "bench.dg.datagram"),
        ] {
            faults.set_plan(FaultPlan::loss(
                args.seed.wrapping_add(u64::from(loss)),
                f64::from(loss) / 100.0,
            ));
            let subscription = if class == "reliable" {
                &mut reliable
            } else {
                &mut datagram
            };
            let mut phase = |seconds: f64| {
                phase_id += 1;
                Phase {
                    topic,
                    rate: args.rate,
                    size,
                    phase: phase_id,
                    length: Duration::from_secs_f64(seconds),
                    label: topic,
                }
            };
            let warmup = phase(args.warmup);
            measure(&publisher, subscription, warmup).await?;
            let measured = phase(args.duration);
            let (latencies, lost) = measure(&publisher, subscription, measured).await?;
            rows.push((loss, class, latencies, lost));
        }
    }
    let p99 = |loss: u32, class: &str| {
        rows.iter()
            .find(|(l, c, _, _)| *l == loss && *c == class)
            .map_or(0, |(_, _, latencies, _)| latencies.at(0.99))
    };
    let goal_ratio = p99(5, "datagram") as f64 / p99(0, "datagram").max(1) as f64;
    if args.json {
        let results: Vec<_> = rows
            .iter()
            .map(|(loss, class, latencies, lost)| {
                json!({"loss_percent": loss, "class": class, "latency": latencies.to_json(), "lost": lost})
            })
            .collect();
        println!(
            "{}",
            json!({
                "scenario": "datagram",
                "rate": args.rate,
                "size": size,
                "duration_s": args.duration,
                "congestion": format!("{congestion:?}"),
                "results": results,
                "datagram_p99_5pct_over_lossless": goal_ratio,
            })
        );
    } else {
        println!(
            "datagram: {} msg/s of {} B for {} s per row; the subscriber's link loses packets both ways; broker congestion control {congestion:?}",
            args.rate, size, args.duration
        );
        println!("{}  lost", Latencies::header());
        for (loss, class, latencies, lost) in &rows {
            println!("{}  {lost}", latencies.row(&format!("{loss}% {class}")));
        }
        println!(
            "datagram p99 at 5% loss / lossless: {goal_ratio:.2}x (goal: at most 1.2x); reliable: {:.2}x",
            p99(5, "reliable") as f64 / p99(0, "reliable").max(1) as f64
        );
    }
    let _ = publisher.close().await;
    let _ = subscriber.close().await;
    broker.stop().await;
    Ok(ExitCode::SUCCESS)
}
