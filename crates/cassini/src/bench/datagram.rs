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
    let defaults = QuicOptions::default();
    let max_ack_delay = args
        .max_ack_delay_ms
        .map_or(defaults.max_ack_delay, Duration::from_millis);
    let client_quic = QuicOptions {
        max_ack_delay,
        ..defaults.clone()
    };
    let options = ServerOptions {
        quic: QuicOptions {
            congestion,
            max_ack_delay,
            ..QuicOptions::broker()
        },
        ..ServerOptions::default()
    };
    let broker = EmbeddedBroker::start_with(BrokerConfig::default(), options).await?;
    let faults = FaultControl::new(FaultPlan::default());
    let subscriber = broker
        .client("bench-subscriber")?
        .quic_options(client_quic.clone())
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
        .quic_options(client_quic)
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
            let before = broker.transport_of("bench-subscriber");
            let (latencies, lost) = measure(&publisher, subscription, measured).await?;
            let after = broker.transport_of("bench-subscriber");
            let path = PathFacts::between(before, after);
            rows.push((loss, class, latencies, lost, path));
        }
    }
    let p99 = |loss: u32, class: &str| {
        rows.iter()
            .find(|(l, c, ..)| *l == loss && *c == class)
            .map_or(0, |(_, _, latencies, ..)| latencies.at(0.99))
    };
    let goal_ratio = p99(5, "datagram") as f64 / p99(0, "datagram").max(1) as f64;
    if args.json {
        let results: Vec<_> = rows
            .iter()
            .map(|(loss, class, latencies, lost, path)| {
                json!({"loss_percent": loss, "class": class, "latency": latencies.to_json(), "lost": lost, "broker_path": path})
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
                "max_ack_delay_ms": max_ack_delay.as_millis(),
                "results": results,
                "datagram_p99_5pct_over_lossless": goal_ratio,
            })
        );
    } else {
        println!(
            "datagram: {} msg/s of {} B for {} s per row; the subscriber's link loses packets both ways; broker congestion control {congestion:?}; requested ACK delay {max_ack_delay:?}",
            args.rate, size, args.duration
        );
        println!(
            "{}  lost  (broker side: cwnd B, srtt us, packets lost, congestion events)",
            Latencies::header()
        );
        for (loss, class, latencies, lost, path) in &rows {
            println!(
                "{}  {lost}  ({}, {}, {}, {})",
                latencies.row(&format!("{loss}% {class}")),
                path.congestion_window,
                path.rtt_us,
                path.packets_lost,
                path.congestion_events
            );
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

/// What the broker's side of the subscriber connection saw during one measured row: the
/// window and RTT at its end, and the losses and congestion events during it.
#[derive(Debug, Default, serde::Serialize)]
struct PathFacts {
    congestion_window: u64,
    rtt_us: u64,
    packets_lost: u64,
    congestion_events: u64,
}

impl PathFacts {
    fn between(
        before: Option<cassini_broker::ConnectionStats>,
        after: Option<cassini_broker::ConnectionStats>,
    ) -> Self {
        let (Some(before), Some(after)) = (before, after) else {
            return Self::default();
        };
        Self {
            congestion_window: after.congestion_window,
            rtt_us: after.rtt_us,
            packets_lost: after.packets_lost.saturating_sub(before.packets_lost),
            congestion_events: after
                .congestion_events
                .saturating_sub(before.congestion_events),
        }
    }
}
