//! The backoff schedule: doubling ceilings, jitter inside them, and giving up on time.

#![allow(clippy::expect_used)] // A failed expectation in a test panics on purpose.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;

fn policy(give_up_after: Option<Duration>) -> ReconnectPolicy {
    ReconnectPolicy {
        enabled: true,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(10),
        give_up_after,
    }
}

#[test]
fn the_defaults_are_on_from_100_ms_to_10_s_forever() {
    assert_eq!(ReconnectPolicy::default(), policy(None));
    assert!(!ReconnectPolicy::disabled().enabled);
}

#[test]
fn ceilings_double_from_the_initial_backoff_up_to_the_maximum() {
    let policy = policy(None);
    let ceilings: Vec<u64> = (0..10)
        .map(|attempt| policy.backoff_ceiling(attempt).as_millis() as u64)
        .collect();
    assert_eq!(
        ceilings,
        vec![100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000]
    );
    assert_eq!(policy.backoff_ceiling(u32::MAX), Duration::from_secs(10));
    assert_eq!(policy.backoff_ceiling(40), Duration::from_secs(10));
}

#[test]
fn every_sleep_is_jittered_between_zero_and_its_ceiling() {
    let policy = policy(None);
    let mut random = StdRng::seed_from_u64(7);
    let start = Instant::now();
    let mut backoff = Backoff::new(policy, start);
    let mut below_half = 0;
    for attempt in 0..2000 {
        let ceiling = policy.backoff_ceiling(attempt);
        let delay = backoff
            .next_delay(start, &mut random)
            .expect("never gives up");
        assert!(
            delay <= ceiling,
            "attempt {attempt}: {delay:?} > {ceiling:?}"
        );
        if delay < ceiling / 2 {
            below_half += 1;
        }
    }
    assert_eq!(backoff.attempts(), 2000);
    // Full jitter spreads sleeps over the whole range, not just near the ceiling.
    assert!(
        (800..1200).contains(&below_half),
        "{below_half} of 2000 below half"
    );
}

#[test]
fn it_gives_up_once_give_up_after_has_passed() {
    let mut random = StdRng::seed_from_u64(1);
    let start = Instant::now();
    let mut backoff = Backoff::new(policy(Some(Duration::from_secs(30))), start);
    assert!(backoff.next_delay(start, &mut random).is_some());
    let late = start + Duration::from_secs(29);
    let last = backoff
        .next_delay(late, &mut random)
        .expect("one second left");
    assert!(
        last <= Duration::from_secs(1),
        "a sleep never passes the deadline"
    );
    assert_eq!(
        backoff.next_delay(start + Duration::from_secs(30), &mut random),
        None
    );
    assert_eq!(
        backoff.next_delay(start + Duration::from_secs(31), &mut random),
        None
    );
}

#[test]
fn settings_that_would_spin_or_never_grow_are_refused() {
    let zero = ReconnectPolicy {
        initial_backoff: Duration::ZERO,
        ..policy(None)
    };
    assert!(zero.check().is_err());
    let inverted = ReconnectPolicy {
        max_backoff: Duration::from_millis(10),
        ..policy(None)
    };
    assert!(inverted.check().is_err());
    let disabled = ReconnectPolicy {
        enabled: false,
        ..zero
    };
    assert!(disabled.check().is_ok());
}
