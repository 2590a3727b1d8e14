//! `request`: request/reply round trips against an echo responder on another connection, one
//! at a time (a closed loop: each round trip's latency is from its request to its reply).

use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use crate::args::RequestArgs;
use crate::latencies::Latencies;
use crate::peer::{BenchClient, Connector};
use crate::progress::Progress;
use crate::report::Report;

/// How long one request may wait for its reply.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The `request` scenario against `connector`'s broker.
pub async fn run<C: Connector>(connector: &C, args: &RequestArgs) -> anyhow::Result<Report> {
    const TOPIC: &str = "bench.echo";
    let stop = CancellationToken::new();
    let responder = connector
        .serve_echo(TOPIC, stop.clone())
        .await
        .context("echo responder")?;
    let requester = connector
        .connect("bench-requester")
        .await
        .context("requester")?;
    let payload = Bytes::from(vec![0x42; args.size]);
    // One unmeasured round trip: the first request sets up reply routes (inboxes).
    requester
        .request(TOPIC, payload.clone(), REPLY_TIMEOUT)
        .await
        .context("first request")?;

    let limit = Duration::from_secs_f64(args.duration);
    let progress = Progress::new(args.count, "round trips");
    let mut latencies = Latencies::new()?;
    let (mut failed, mut made) = (0u64, 0u64);
    let started = Instant::now();
    while made < args.count && started.elapsed() < limit {
        let sent = Instant::now();
        match requester
            .request(TOPIC, payload.clone(), REPLY_TIMEOUT)
            .await
        {
            Ok(reply) if reply.len() == payload.len() => latencies.record(sent.elapsed()),
            Ok(_) | Err(_) => failed += 1,
        }
        made += 1;
        if made.is_multiple_of(256) {
            progress.set(made);
        }
    }
    let elapsed = started.elapsed();
    progress.finish();
    stop.cancel();
    let _ = requester.close().await;
    let served = responder.await.context("responder task")??;

    let mut report = Report::new(
        "request",
        connector.broker(),
        format!(
            "request/reply of {} B, one request at a time, echo responder on another connection",
            args.size
        ),
    );
    report
        .param("count", args.count)
        .param("size", args.size)
        .param("duration_s", args.duration)
        .figure("round_trips", "round trips", latencies.count())
        .figure("failed", "failed or timed out", failed)
        .figure("served", "requests the responder served", served)
        .figure(
            "round_trips_per_s",
            "round trips per second",
            latencies.count() as f64 / elapsed.as_secs_f64().max(1e-9),
        )
        .latencies("latency", "request → reply", latencies);
    Ok(report)
}
