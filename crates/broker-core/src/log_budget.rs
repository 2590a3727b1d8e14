//! A bound on how many lines one log site writes per second, for lines a client can make the
//! broker write at will (a refused handshake, a subscription ended, a session attached): past
//! the bound a line is counted instead, and the next line written says how many were left
//! out. The counters and metrics still count every event; only the log is thinned, so that a
//! flood of cheap actions cannot fill the disk the log is on.
//!
//! Each site keeps its own [`LogBudget`] in a `static`. The system events a client can cause at
//! will use the same bound per kind (`events::EventSink::emit`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lines a site writes per second at most, by default.
pub const DEFAULT_LINES_PER_SECOND: u64 = 20;

/// One log site's allowance of lines per second.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u64,
    /// The second (since the Unix epoch) `used` counts in.
    second: AtomicU64,
    used: AtomicU64,
    /// Lines left out since the last one written.
    suppressed: AtomicU64,
}

impl LogBudget {
    /// At most `per_second` lines a second.
    pub const fn new(per_second: u64) -> Self {
        Self {
            per_second,
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether a line may be written now: `Some(n)` with the lines left out since the last
    /// one written (log it with the line), `None` if this one is left out (and counted).
    pub fn admit(&self) -> Option<u64> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        self.admit_at(now)
    }

    /// [`LogBudget::admit`] in second `now` (since the Unix epoch).
    fn admit_at(&self, now: u64) -> Option<u64> {
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_the_bound_lines_are_counted_and_the_next_written_says_how_many() {
        let budget = LogBudget::new(3);
        let admitted: Vec<Option<u64>> = (0..5).map(|_| budget.admit_at(100)).collect();
        assert_eq!(admitted, [Some(0), Some(0), Some(0), None, None]);
        assert_eq!(
            budget.admit_at(101),
            Some(2),
            "the next second's first line"
        );
        assert_eq!(budget.admit_at(101), Some(0));
    }
}
