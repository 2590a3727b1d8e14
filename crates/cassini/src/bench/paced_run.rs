//! One measured phase shared by the latency scenarios: publish to a topic at a fixed rate from
//! a paced thread, and record each delivery's latency from its intended send time.

use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use cassini_client::{Client, Subscription};
use futures_util::StreamExt;

use super::pacing::{spawn_paced, Schedule};
use super::report::Latencies;

/// Bytes at the front of every payload: the phase, then the intended send time.
pub(crate) const HEADER_BYTES: usize = 16;

/// What to send in one phase.
pub(crate) struct Phase {
    /// Where to publish; `subscription` must receive it.
    pub(crate) topic: &'static str,
    /// Messages per second.
    pub(crate) rate: u64,
    /// Payload size (at least [`HEADER_BYTES`]).
    pub(crate) size: usize,
    /// Tags this phase's messages so stragglers of another phase are ignored.
    pub(crate) phase: u64,
    /// How long to send.
    pub(crate) length: Duration,
}

/// Runs one phase; returns the latencies and how many messages did not arrive.
pub(crate) async fn measure(
    publisher: &Client,
    subscription: &mut Subscription,
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
