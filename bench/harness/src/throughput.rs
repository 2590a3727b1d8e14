//! `throughput`: one publisher sends `--count` messages of `--size` bytes as fast as its client
//! accepts them; one subscriber on another connection counts what arrives. The rate is taken
//! from the first publish to the last delivery.

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;

use crate::args::ThroughputArgs;
use crate::peer::{publisher_and_subscriber, BenchClient, BenchSubscription, Connector};
use crate::progress::Progress;
use crate::report::Report;

/// A subscriber that receives nothing for this long is taken to have everything it will get.
pub const QUIET: Duration = Duration::from_secs(5);

/// Receives until `count` messages arrived or [`QUIET`] passed without one; returns how many
/// arrived and when the last one did.
///
/// One timer serves the whole run: when it fires, it is moved to [`QUIET`] after the last
/// message, and the run ends only if that time has passed. A timer per message would be
/// counted as the subscriber's cost.
pub async fn drain<S: BenchSubscription>(
    subscription: &mut S,
    count: u64,
    progress: Option<&Progress>,
) -> (u64, Option<Instant>) {
    let mut received = 0u64;
    let mut last = None;
    let mut waiting_since = Instant::now();
    let quiet = tokio::time::sleep(QUIET);
    tokio::pin!(quiet);
    while received < count {
        tokio::select! {
            biased;
            message = subscription.next() => {
                if message.is_none() {
                    break;
                }
                received += 1;
                let now = Instant::now();
                last = Some(now);
                waiting_since = now;
                if let Some(progress) = progress.filter(|_| received.is_multiple_of(1024)) {
                    progress.set(received);
                }
            }
            () = &mut quiet => {
                let deadline = waiting_since + QUIET;
                if Instant::now() >= deadline {
                    break;
                }
                quiet.as_mut().reset(deadline.into());
            }
        }
    }
    (received, last)
}

/// Publishes `count` copies of `payload` to `topic`, then flushes.
pub async fn publish_all<C: BenchClient>(
    publisher: C,
    topic: &'static str,
    payload: Bytes,
    count: u64,
) -> anyhow::Result<()> {
    for _ in 0..count {
        publisher.publish(topic, payload.clone()).await?;
    }
    publisher.flush().await
}

/// The `throughput` scenario against `connector`'s broker.
pub async fn run<C: Connector>(connector: &C, args: &ThroughputArgs) -> anyhow::Result<Report> {
    const TOPIC: &str = "bench.throughput";
    let (subscriber, mut subscription, publisher) =
        publisher_and_subscriber(connector, TOPIC).await?;
    let payload = Bytes::from(vec![0x42; args.size]);

    let progress = Progress::new(args.count, "received");
    let started = Instant::now();
    let sender = tokio::spawn(publish_all(publisher.clone(), TOPIC, payload, args.count));
    let (received, last) = drain(&mut subscription, args.count, Some(&progress)).await;
    progress.finish();
    sender.await.context("sender task")??;
    let elapsed = last.unwrap_or(started).duration_since(started);
    let _ = publisher.close().await;
    let _ = subscriber.close().await;

    let rate = received as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut report = Report::new(
        "throughput",
        connector.broker(),
        format!(
            "{} messages of {} B, one publisher → one subscriber",
            args.count, args.size
        ),
    );
    report
        .param("count", args.count)
        .param("size", args.size)
        .figure("received", "messages received", received)
        .figure("lost", "messages lost", args.count - received)
        .figure("elapsed_s", "seconds", elapsed.as_secs_f64())
        .figure("msgs_per_s", "messages per second", rate)
        .figure(
            "mb_per_s",
            "payload MB per second",
            rate * args.size as f64 / 1e6,
        );
    Ok(report)
}
