//! Sending at a fixed offered rate, and measuring latency from each message's *intended* send
//! time, so a sender that stalls cannot hide the delay it caused (no coordinated omission).

use std::time::Duration;

use tokio::time::Instant;

/// Below this distance to the next send time the sender yields instead of sleeping: tokio's
/// timer has millisecond granularity, which would otherwise add up to a millisecond of
/// sender-side delay to every figure.
const SPIN_WINDOW: Duration = Duration::from_micros(300);

/// A fixed-rate schedule starting at `epoch`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schedule {
    pub(crate) epoch: Instant,
    pub(crate) interval: Duration,
}

impl Schedule {
    pub(crate) fn new(rate_per_second: u64) -> Self {
        Self {
            epoch: Instant::now(),
            interval: Duration::from_nanos(1_000_000_000 / rate_per_second.max(1)),
        }
    }

    /// When message `index` is meant to leave.
    pub(crate) fn intended(&self, index: u64) -> Instant {
        self.epoch + self.interval * u32::try_from(index).unwrap_or(u32::MAX)
    }

    /// Waits until message `index` is due.
    pub(crate) async fn wait_for(&self, index: u64) {
        let due = self.intended(index);
        loop {
            let now = Instant::now();
            if now >= due {
                return;
            }
            if due - now > SPIN_WINDOW {
                tokio::time::sleep_until(due - SPIN_WINDOW).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
    }

    /// Nanoseconds from the epoch to message `index`'s intended send time, carried in the
    /// payload.
    pub(crate) fn stamp(&self, index: u64) -> u64 {
        u64::try_from((self.intended(index) - self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Latency of a message stamped `stamp`, received now.
    pub(crate) fn latency(&self, stamp: u64) -> Duration {
        let intended = self.epoch + Duration::from_nanos(stamp);
        Instant::now().saturating_duration_since(intended)
    }
}
