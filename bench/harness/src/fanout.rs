//! `fanout`: one publisher, `--subscribers` subscribers each on its own connection, all on one
//! topic. The figure is deliveries per second summed over the subscribers, from the first
//! publish to the last delivery.

use std::time::Instant;

use anyhow::Context;
use bytes::Bytes;

use crate::args::FanoutArgs;
use crate::peer::{BenchClient, Connector};
use crate::progress::Progress;
use crate::report::Report;
use crate::throughput::{drain, publish_all};

/// The `fanout` scenario against `connector`'s broker.
pub async fn run<C: Connector>(connector: &C, args: &FanoutArgs) -> anyhow::Result<Report> {
    const TOPIC: &str = "bench.fanout";
    let subscribers = args.subscribers.max(1);
    let connecting = Progress::new(u64::from(subscribers), "subscribing");
    let mut clients = Vec::new();
    let mut subscriptions = Vec::new();
    for index in 0..subscribers {
        let client = connector
            .connect(&format!("bench-subscriber-{index}"))
            .await
            .with_context(|| format!("subscriber {index}"))?;
        subscriptions.push(client.subscribe(TOPIC).await?);
        clients.push(client);
        connecting.set(u64::from(index) + 1);
    }
    connecting.finish();
    let publisher = connector
        .connect("bench-publisher")
        .await
        .context("publisher")?;
    let payload = Bytes::from(vec![0x42; args.size]);

    let count = args.count;
    let expected = count * u64::from(subscribers);
    let started = Instant::now();
    let receivers: Vec<_> = subscriptions
        .into_iter()
        .map(|mut subscription| {
            tokio::spawn(async move { drain(&mut subscription, count, None).await })
        })
        .collect();
    let sender = tokio::spawn(publish_all(publisher.clone(), TOPIC, payload, count));
    let progress = Progress::new(u64::from(subscribers), "subscribers done");
    let (mut delivered, mut last, mut slowest) = (0u64, started, u64::MAX);
    for (done, receiver) in receivers.into_iter().enumerate() {
        let (received, arrived) = receiver.await.context("subscriber task")?;
        delivered += received;
        slowest = slowest.min(received);
        last = last.max(arrived.unwrap_or(started));
        progress.set(done as u64 + 1);
    }
    progress.finish();
    sender.await.context("sender task")??;
    let elapsed = last.duration_since(started);
    let _ = publisher.close().await;
    for client in &clients {
        let _ = client.close().await;
    }

    let rate = delivered as f64 / elapsed.as_secs_f64().max(1e-9);
    let mut report = Report::new(
        "fanout",
        connector.broker(),
        format!(
            "{count} messages of {} B, one publisher → {subscribers} subscribers on {subscribers} connections",
            args.size
        ),
    );
    report
        .param("count", count)
        .param("size", args.size)
        .param("subscribers", subscribers)
        .figure("delivered", "deliveries", delivered)
        .figure("lost", "deliveries lost", expected - delivered)
        .figure("fewest_received", "fewest one subscriber got", slowest)
        .figure("elapsed_s", "seconds", elapsed.as_secs_f64())
        .figure("deliveries_per_s", "deliveries per second", rate)
        .figure(
            "published_per_s",
            "published per second",
            count as f64 / elapsed.as_secs_f64().max(1e-9),
        );
    Ok(report)
}
