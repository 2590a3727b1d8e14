//! `latency`: one publisher, one subscriber on another connection, a fixed offered rate; each
//! message's latency is taken from its *intended* send time (see [`crate::pacing`]).
//!
//! [`measure`] is one measured phase; other scenarios (Cassini's `hol`) reuse it.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;

use crate::args::LatencyArgs;
use crate::latencies::Latencies;
use crate::pacing::{spawn_paced, Schedule};
use crate::peer::{publisher_and_subscriber, BenchClient, BenchSubscription, Connector};
use crate::progress::Progress;
use crate::report::Report;

/// Bytes at the front of every payload: the phase, then the intended send time.
pub const HEADER_BYTES: usize = 16;

/// How long after the last intended send time a phase waits for stragglers.
const STRAGGLER_WAIT: Duration = Duration::from_secs(5);

/// What to send in one phase.
#[derive(Debug, Clone)]
pub struct Phase {
    /// Where to publish; the subscription must receive it.
    pub topic: &'static str,
    /// Messages per second.
    pub rate: u64,
    /// Payload size (at least [`HEADER_BYTES`]).
    pub size: usize,
    /// Tags this phase's messages so stragglers of another phase are ignored.
    pub phase: u64,
    /// How long to send.
    pub length: Duration,
    /// What the progress bar says.
    pub label: &'static str,
}

/// Runs one phase: publishes from a paced thread while `subscription` records each delivery's
/// latency. Returns the latencies and how many messages did not arrive.
pub async fn measure<C: BenchClient>(
    publisher: &C,
    subscription: &mut C::Subscription,
    spec: Phase,
) -> anyhow::Result<(Latencies, u64)> {
    let total = (spec.rate as f64 * spec.length.as_secs_f64()).round() as u64;
    let schedule = Schedule::new(spec.rate);
    let (topic, size, phase) = (spec.topic, spec.size.max(HEADER_BYTES), spec.phase);
    let sender = {
        let publisher = publisher.clone();
        spawn_paced(move |runtime| {
            for index in 0..total {
                schedule.wait_blocking(index);
                let mut payload = vec![0u8; size];
                payload[..8].copy_from_slice(&phase.to_be_bytes());
                payload[8..16].copy_from_slice(&schedule.stamp(index).to_be_bytes());
                runtime.block_on(publisher.publish(topic, Bytes::from(payload)))?;
            }
            runtime.block_on(publisher.flush())
        })
    };
    let progress = Progress::new(total, spec.label);
    let mut latencies = Latencies::new()?;
    let deadline = schedule.intended(total) + STRAGGLER_WAIT;
    while latencies.count() < total {
        let Ok(Some(payload)) = tokio::time::timeout_at(deadline, subscription.next()).await else {
            break;
        };
        if payload.len() < HEADER_BYTES || payload[..8] != phase.to_be_bytes() {
            continue;
        }
        let mut stamp = [0u8; 8];
        stamp.copy_from_slice(&payload[8..16]);
        latencies.record(schedule.latency(u64::from_be_bytes(stamp)));
        if latencies.count().is_multiple_of(256) {
            progress.set(latencies.count());
        }
    }
    progress.finish();
    tokio::task::spawn_blocking(move || sender.join())
        .await
        .context("sender thread")?
        .map_err(|_| anyhow::anyhow!("the sender thread panicked"))??;
    let lost = total - latencies.count();
    Ok((latencies, lost))
}

/// The `latency` scenario against `connector`'s broker.
pub async fn run<C: Connector>(connector: &C, args: &LatencyArgs) -> anyhow::Result<Report> {
    const TOPIC: &str = "bench.latency";
    let (subscriber, mut subscription, publisher) =
        publisher_and_subscriber(connector, TOPIC).await?;
    let size = args.size.max(HEADER_BYTES);
    let phase = |phase, seconds, label| Phase {
        topic: TOPIC,
        rate: args.rate,
        size,
        phase,
        length: Duration::from_secs_f64(seconds),
        label,
    };
    measure(
        &publisher,
        &mut subscription,
        phase(0, args.warmup, "warm-up"),
    )
    .await?;
    let (latencies, lost) = measure(
        &publisher,
        &mut subscription,
        phase(1, args.duration, "measuring"),
    )
    .await?;
    let _ = publisher.close().await;
    let _ = subscriber.close().await;

    let mut report = Report::new(
        "latency",
        connector.broker(),
        format!(
            "{} msg/s of {size} B for {} s, one publisher and one subscriber",
            args.rate, args.duration
        ),
    );
    report
        .param("rate", args.rate)
        .param("size", size)
        .param("duration_s", args.duration)
        .figure("lost", "messages lost", lost)
        .latencies("latency", "publish → deliver", latencies);
    Ok(report)
}
