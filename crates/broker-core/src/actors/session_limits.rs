//! Per-session limits checked when a subscription is made.
//!
//! The pending-bytes budget bounds the message bytes all of one session's subscription queues
//! may hold together. It is checked against each queue's byte *bound* (what the queue may grow
//! to), not its current depth, so a session can never exceed it however its subscribers stall.

use crate::config::BrokerLimits;
use crate::error::BrokerError;

/// Refuses a subscription whose queue bound of `requested` bytes, added to the bounds of the
/// session's existing subscriptions (`reserved`), would exceed the session's budget.
pub(crate) fn check_pending_bytes(
    limits: &BrokerLimits,
    reserved: impl Iterator<Item = usize>,
    requested: usize,
) -> Result<(), BrokerError> {
    let max = limits.max_pending_bytes_per_session;
    let in_use = reserved.fold(0u64, |sum, bytes| sum.saturating_add(bytes as u64));
    let requested = requested as u64;
    if in_use.saturating_add(requested) > max {
        return Err(BrokerError::PendingBytesLimit {
            max,
            in_use,
            requested,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_every_queue_bound() {
        let limits = BrokerLimits {
            max_pending_bytes_per_session: 10,
            ..BrokerLimits::default()
        };
        assert!(check_pending_bytes(&limits, [4, 4].into_iter(), 2).is_ok());
        let err = check_pending_bytes(&limits, [4, 4].into_iter(), 3);
        assert!(matches!(
            err,
            Err(BrokerError::PendingBytesLimit {
                max: 10,
                in_use: 8,
                requested: 3
            })
        ));
    }
}
