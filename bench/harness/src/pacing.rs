//! Sending at a fixed offered rate, and measuring latency from each message's *intended* send
//! time, so a sender that stalls cannot hide the delay it caused (no coordinated omission).

use std::time::Duration;

use tokio::time::Instant;

/// Runs `sender` on a thread of its own, so that precise pacing (blocking sleeps, see
/// [`Schedule::wait_blocking`]) never takes a worker away from the broker and the clients under
/// test. The sender gets the caller's runtime handle to drive its sends with
/// `Handle::block_on`, so whatever tasks a send spawns live on that runtime.
pub fn spawn_paced<T: Send + 'static>(
    sender: impl FnOnce(tokio::runtime::Handle) -> anyhow::Result<T> + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let handle = tokio::runtime::Handle::current();
    std::thread::spawn(move || sender(handle))
}

/// A fixed-rate schedule starting at `epoch`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// When message 0 is due.
    pub epoch: Instant,
    /// The gap between two messages.
    pub interval: Duration,
}

impl Schedule {
    /// A schedule of `rate_per_second` messages a second, starting now.
    pub fn new(rate_per_second: u64) -> Self {
        Self {
            epoch: Instant::now(),
            interval: Duration::from_nanos(1_000_000_000 / rate_per_second.max(1)),
        }
    }

    /// When message `index` is meant to leave.
    pub fn intended(&self, index: u64) -> Instant {
        self.epoch + self.interval * u32::try_from(index).unwrap_or(u32::MAX)
    }

    /// Blocks the thread until message `index` is due: the kernel's high-resolution timers wake
    /// it within tens of microseconds. Only for a thread of its own (see [`spawn_paced`]).
    pub fn wait_blocking(&self, index: u64) {
        let due = self.intended(index).into_std();
        let now = std::time::Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
    }

    /// Nanoseconds from the epoch to message `index`'s intended send time, carried in the
    /// payload.
    pub fn stamp(&self, index: u64) -> u64 {
        u64::try_from((self.intended(index) - self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Latency of a message stamped `stamp`, received now.
    pub fn latency(&self, stamp: u64) -> Duration {
        let intended = self.epoch + Duration::from_nanos(stamp);
        Instant::now().saturating_duration_since(intended)
    }
}
