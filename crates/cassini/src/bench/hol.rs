//! `cassini bench hol`: head-of-line isolation. One subscriber connection holds a `fast.x`
//! subscription, which it reads, and a `slow.x` subscription, which it never reads. The fast
//! topic's latency is measured at a fixed offered rate in three phases: alone; while another
//! client floods a subscription that a *different* connection never reads (the control: the same
//! CPU load, no shared connection); and while the flood goes to the unread `slow.x` on the fast
//! subscriber's *own* connection. With one QUIC stream per subscription the last two should
//! match: the flood fills only the slow subscription's own queue.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cassini_bench::latency::{measure, Phase};
use cassini_bench::pacing::{spawn_paced, Schedule};
use cassini_bench::{BenchClient, Connector, Latencies};
use cassini_client::Client;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::cassini_peer::{CassiniClient, CassiniConnector, CassiniSubscription};
use crate::cli::{HolArgs, HolCommand};

pub(crate) async fn run(command: HolCommand) -> anyhow::Result<ExitCode> {
    let args = command.args;
    let connector = CassiniConnector::start(&command.target)
        .await?
        .subscription_buffer(64);
    let subscriber = connector.connect("bench-subscriber").await?;
    let mut fast = subscriber.subscribe("fast.x").await?;
    let slow = subscriber.subscribe("slow.x").await?;
    let publisher = connector.connect("bench-fast").await?;

    let warmup = Duration::from_secs_f64(args.warmup);
    let measured = Duration::from_secs_f64(args.duration);
    measure(&publisher, &mut fast, phase(&args, 0, warmup)).await?;
    let (quiet, quiet_lost) = measure(&publisher, &mut fast, phase(&args, 1, measured)).await?;

    let bystander = connector.connect("bench-bystander").await?;
    let elsewhere = bystander.subscribe("slow.elsewhere").await?;
    let flooder = connector.client("bench-flood").await?;

    let stop = CancellationToken::new();
    let flood_task = tokio::spawn(flood(
        flooder.clone(),
        "slow.elsewhere",
        args.flood_size,
        args.flood_rate,
        stop.clone(),
    ));
    settle(&args, &publisher, &mut fast, 12).await?;
    let (control, control_lost) = measure(&publisher, &mut fast, phase(&args, 2, measured)).await?;
    stop.cancel();
    let control_flood = flood_task.await.context("flood task")??;
    drop(elsewhere);

    let stop = CancellationToken::new();
    let flood_task = tokio::spawn(flood(
        flooder.clone(),
        "slow.x",
        args.flood_size,
        args.flood_rate,
        stop.clone(),
    ));
    settle(&args, &publisher, &mut fast, 13).await?;
    let (flooded, flooded_lost) = measure(&publisher, &mut fast, phase(&args, 3, measured)).await?;
    stop.cancel();
    let flood_messages = flood_task.await.context("flood task")??;
    drop(slow);
    let _ = flooder.close().await;
    let _ = bystander.close().await;

    let ratio = flooded.at(0.99) as f64 / quiet.at(0.99).max(1) as f64;
    let isolation = flooded.at(0.99) as f64 / control.at(0.99).max(1) as f64;
    if args.json {
        let report = json!({
            "scenario": "hol",
            "rate": args.rate,
            "size": args.size,
            "duration_s": args.duration,
            "flood_size": args.flood_size,
            "flood_rate": args.flood_rate,
            "flood_settle_s": args.flood_settle,
            "alone": quiet.to_json(),
            "alone_lost": quiet_lost,
            "flood_on_other_connection": control.to_json(),
            "flood_on_other_connection_lost": control_lost,
            "flood_on_same_connection": flooded.to_json(),
            "flood_on_same_connection_lost": flooded_lost,
            "flood_messages_published": [control_flood, flood_messages],
            "p99_same_connection_over_alone": ratio,
            "p99_same_connection_over_other_connection": isolation,
        });
        println!("{report}");
    } else {
        let flood_rate = match args.flood_rate {
            0 => "as fast as possible".to_string(),
            rate => format!("at {rate} msg/s"),
        };
        println!(
            "hol: fast.x at {} msg/s of {} B, {} s per phase; flood of {} B messages {flood_rate} to a subscription that is never read",
            args.rate, args.size, args.duration, args.flood_size
        );
        println!("{}", Latencies::header());
        println!("{}", quiet.row("alone"));
        println!("{}", control.row("flood, other conn"));
        println!("{}", flooded.row("flood, same conn"));
        println!(
            "fast messages lost: {quiet_lost} / {control_lost} / {flooded_lost}; flood messages published: {control_flood} / {flood_messages}"
        );
        println!("p99 same connection / alone            = {ratio:.2} (goal: at most 1.5)");
        println!("p99 same connection / other connection = {isolation:.2} (1.0 = no head-of-line blocking)");
    }
    if let Some(path) = &args.plot {
        cassini_bench::plot::percentile_curve(
            path,
            "hol [cassini]: fast.x latency",
            &[
                ("alone", &quiet),
                ("flood, other conn", &control),
                ("flood, same conn", &flooded),
            ],
        )?;
    }
    let _ = publisher.close().await;
    let _ = subscriber.close().await;
    connector.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// With `--flood-settle`: keeps the fast topic going, unmeasured, while the flood starts, so the
/// measured phase sees the flood's steady state rather than its onset (the burst that fills the
/// slow subscription's client buffer and stream window).
async fn settle(
    args: &HolArgs,
    publisher: &CassiniClient,
    fast: &mut CassiniSubscription,
    tag: u64,
) -> anyhow::Result<()> {
    if args.flood_settle > 0.0 {
        let length = Duration::from_secs_f64(args.flood_settle);
        measure(publisher, fast, phase(args, tag, length)).await?;
    }
    Ok(())
}

fn phase(args: &HolArgs, phase: u64, length: Duration) -> Phase {
    Phase {
        topic: "fast.x",
        rate: args.rate,
        size: args.size,
        phase,
        length,
        label: match phase {
            0 => "warm-up",
            1 => "alone",
            2 => "flood elsewhere",
            3 => "flood same conn",
            _ => "flood settling",
        },
    }
}

/// Publishes `size`-byte messages to `topic` at `rate` per second (0: as fast as the client
/// accepts them) until stopped.
async fn flood(
    client: Client,
    topic: &'static str,
    size: usize,
    rate: u64,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let payload = Bytes::from(vec![0x5a; size]);
    if rate > 0 {
        let schedule = Schedule::new(rate);
        let sender = spawn_paced(move |runtime| {
            let mut published = 0u64;
            while !stop.is_cancelled() {
                schedule.wait_blocking(published);
                runtime.block_on(client.publish(topic, payload.clone()))?;
                published += 1;
            }
            Ok(published)
        });
        return tokio::task::spawn_blocking(move || sender.join())
            .await
            .context("flood thread")?
            .map_err(|_| anyhow::anyhow!("the flood thread panicked"))?;
    }
    let mut published = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            sent = client.publish(topic, payload.clone()) => {
                sent?;
                published += 1;
            }
        }
    }
    Ok(published)
}
