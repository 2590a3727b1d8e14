//! How many bidirectional streams a client may have open at once, raised as it opens them.
//!
//! quinn sets aside state for every stream the peer may open as soon as it accepts a
//! connection (two hash-map entries each), so the limit a connection starts with is memory
//! every idle connection pays. [`BidiStreamLimit`] starts low and doubles each time the broker
//! has accepted half of the current limit, up to the configured maximum: a client that opens
//! streams is granted more long before it could run out, and an idle one never costs more
//! than the start. It owns only the arithmetic; the connection announces each new limit.

use std::sync::atomic::{AtomicU32, Ordering};

/// The bidirectional stream limit of one connection.
#[derive(Debug)]
pub(crate) struct BidiStreamLimit {
    /// The limit granted so far.
    granted: AtomicU32,
    /// The most it is raised to (`QuicOptions::max_concurrent_bidi_streams`).
    max: u32,
}

impl BidiStreamLimit {
    /// A connection that starts with `initial` streams and may be raised to `max`.
    pub(crate) fn new(initial: u32, max: u32) -> Self {
        Self {
            granted: AtomicU32::new(initial.min(max)),
            max,
        }
    }

    /// Records that the broker has accepted `accepted` of the client's streams in all; returns
    /// the new limit to announce when it grows.
    pub(crate) fn accepted(&self, accepted: u64) -> Option<u32> {
        self.granted
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |granted| {
                let half_used = accepted.saturating_mul(2) >= u64::from(granted);
                (half_used && granted < self.max).then(|| raised(granted, self.max))
            })
            .ok()
            .map(|previous| raised(previous, self.max))
    }

    /// The limit granted so far.
    #[cfg(test)]
    fn granted(&self) -> u32 {
        self.granted.load(Ordering::Relaxed)
    }
}

/// The limit after `granted`: twice as many, at least one more, at most `max`.
fn raised(granted: u32, max: u32) -> u32 {
    granted
        .saturating_mul(2)
        .max(granted.saturating_add(1))
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::BidiStreamLimit;

    #[test]
    fn doubles_each_time_half_of_the_limit_was_accepted_up_to_the_maximum() {
        let limit = BidiStreamLimit::new(8, 256);
        let raises: Vec<(u64, u32)> = (1..=300)
            .filter_map(|accepted| limit.accepted(accepted).map(|raised| (accepted, raised)))
            .collect();
        assert_eq!(
            raises,
            [(4, 16), (8, 32), (16, 64), (32, 128), (64, 256)],
            "the client is granted twice what it has opened, long before it runs out"
        );
        assert_eq!(limit.granted(), 256);
    }

    #[test]
    fn an_idle_connection_keeps_the_initial_limit() {
        let limit = BidiStreamLimit::new(8, 256);
        assert_eq!(limit.accepted(1), None, "the control stream alone");
        assert_eq!(limit.accepted(3), None);
        assert_eq!(limit.granted(), 8);
    }

    #[test]
    fn the_limit_never_exceeds_the_maximum() {
        let capped = BidiStreamLimit::new(8, 4);
        assert_eq!(capped.granted(), 4);
        assert_eq!(capped.accepted(4), None, "already at the maximum");
        let odd = BidiStreamLimit::new(1, 3);
        assert_eq!(odd.accepted(1), Some(2));
        assert_eq!(odd.accepted(1), Some(3));
        assert_eq!(odd.accepted(2), None);
    }
}
