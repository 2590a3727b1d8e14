//! When to try again after the connection is lost: [`ReconnectPolicy`] and its backoff schedule.
//!
//! The schedule is arithmetic only: the current time and the random source are parameters, so
//! its bounds, its jitter and giving up are tested without waiting. The task that reconnects
//! ([`crate::connect::supervisor`]) does the sleeping.
//!
//! What a lost connection, or a failed attempt to get it back, means for the session: try
//! again, start a new session, or stop for good ([`classify`], a [`Loss`]). One function
//! decides, from the [`ConnectionError`] the loss reads as, so the task that
//! reconnects and a publish that meets a dead connection always agree. No I/O here.

use std::time::{Duration, Instant};

use cassini_protocol::ErrorCode;
use rand::Rng;

use crate::connect::connection_state::DisconnectReason;
use crate::error::ConnectionError;

/// How the client reconnects after it lost its connection without a goodbye.
///
/// Before attempt `n` (counting from 0) the client sleeps a random time between zero and
/// `min(max_backoff, initial_backoff * 2^n)` ("full jitter": clients that lost the same broker
/// do not all come back at the same moment). Each attempt is bounded by the builder's
/// `connect_timeout`. The defaults retry forever, every 10 s at most.
///
/// ```
/// use std::time::Duration;
/// use cassini_client::ReconnectPolicy;
///
/// let policy = ReconnectPolicy {
///     give_up_after: Some(Duration::from_secs(120)),
///     ..ReconnectPolicy::default()
/// };
/// assert_eq!(policy.backoff_ceiling(3), Duration::from_millis(800));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    /// Whether to reconnect at all. Off, a lost connection ends the client at once, as a
    /// [`crate::ConnectionState::Disconnected`]. Default: on.
    pub enabled: bool,
    /// The ceiling of the first sleep; it doubles with every failed attempt. Shorter comes back
    /// sooner after a blip, at the cost of more attempts against a broker that is down. Must be
    /// longer than zero. Default: 100 ms.
    pub initial_backoff: Duration,
    /// The largest ceiling of a sleep. Larger spares a broker that is down, at the cost of
    /// noticing later that it is back. Default: 10 s.
    pub max_backoff: Duration,
    /// How long to keep trying, counted from the first reconnect attempt (after the wait a
    /// broker's `GoingAway` asked for, if any); `None` tries forever. Default: `None`.
    pub give_up_after: Option<Duration>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(10),
            give_up_after: None,
        }
    }
}

impl ReconnectPolicy {
    /// A policy that never reconnects: the client ends when its connection does.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The longest sleep before attempt `attempt` (counting from 0):
    /// `min(max_backoff, initial_backoff * 2^attempt)`.
    pub fn backoff_ceiling(&self, attempt: u32) -> Duration {
        2u32.checked_pow(attempt)
            .and_then(|factor| self.initial_backoff.checked_mul(factor))
            .map_or(self.max_backoff, |ceiling| ceiling.min(self.max_backoff))
    }

    /// Why these settings cannot work, if they cannot.
    pub(crate) fn check(&self) -> Result<(), String> {
        if !self.enabled {
            return Ok(());
        }
        if self.initial_backoff.is_zero() {
            return Err("reconnect initial_backoff must be longer than zero".to_owned());
        }
        if self.max_backoff < self.initial_backoff {
            return Err("reconnect max_backoff must be at least initial_backoff".to_owned());
        }
        Ok(())
    }
}

/// The sleeps of one reconnection, from the moment the connection was lost until an attempt
/// succeeds or the policy gives up.
#[derive(Debug)]
pub(crate) struct Backoff {
    /// The schedule's settings.
    policy: ReconnectPolicy,
    /// When the connection was lost: `give_up_after` counts from here.
    started: Instant,
    /// Sleeps handed out so far.
    attempts: u32,
}

impl Backoff {
    /// The schedule for a connection lost at `started`.
    pub(crate) fn new(policy: ReconnectPolicy, started: Instant) -> Self {
        Self {
            policy,
            started,
            attempts: 0,
        }
    }

    /// How many sleeps were handed out.
    #[cfg(test)]
    pub(crate) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The sleep before the next attempt, or `None` once `give_up_after` has passed at `now`.
    /// A sleep never reaches past the give-up moment, so the last attempt happens then.
    pub(crate) fn next_delay(&mut self, now: Instant, random: &mut impl Rng) -> Option<Duration> {
        let remaining = match self.policy.give_up_after {
            Some(limit) => {
                let elapsed = now.saturating_duration_since(self.started);
                Some(limit.checked_sub(elapsed).filter(|left| !left.is_zero())?)
            }
            None => None,
        };
        let ceiling = self.policy.backoff_ceiling(self.attempts);
        self.attempts = self.attempts.saturating_add(1);
        let delay = full_jitter(ceiling, random);
        Some(remaining.map_or(delay, |left| delay.min(left)))
    }
}

/// A uniformly random duration from zero to `ceiling`, both included.
fn full_jitter(ceiling: Duration, random: &mut impl Rng) -> Duration {
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(random.random_range(0..=nanos))
}

/// What to do after a connection, or an attempt to connect, failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loss {
    /// Connect again and resume the session.
    Retry,
    /// The broker does not know the session (it expired): connect again with a new session and
    /// subscribe again.
    SessionLost,
    /// Do not connect again.
    Final(DisconnectReason),
}

/// What `error` means for the session.
///
/// Transient failures are retried: timeouts, resets, unreachable or unresolvable brokers, and
/// broker closes that say "later" (`SERVER_SHUTTING_DOWN`, `TOO_MANY_CONNECTIONS`,
/// `HELLO_TIMEOUT`, `INTERNAL`). Refusals that would only repeat are final: certificates,
/// versions, protocol errors either way, another identity's session. `SESSION_TAKEN_OVER` is
/// final so that two clients with one identity do not take the session from each other
/// forever.
pub(crate) fn classify(error: &ConnectionError) -> Loss {
    let refused = || {
        Loss::Final(DisconnectReason::Refused {
            reason: error.to_string(),
        })
    };
    match error {
        ConnectionError::Closed => Loss::Final(DisconnectReason::Closed),
        ConnectionError::Refused { code, .. } => match *code {
            ErrorCode::SESSION_TAKEN_OVER => Loss::Final(DisconnectReason::SessionTakenOver),
            ErrorCode::SESSION_NOT_FOUND => Loss::SessionLost,
            ErrorCode::PROTOCOL_VIOLATION
            | ErrorCode::MALFORMED_FRAME
            | ErrorCode::FRAME_TOO_LARGE
            | ErrorCode::UNSUPPORTED_VERSION
            | ErrorCode::SESSION_IDENTITY_MISMATCH
            | ErrorCode::INVALID_SESSION_NAME
            | ErrorCode::TOO_MANY_SUBSCRIPTIONS => refused(),
            _ => Loss::Retry,
        },
        ConnectionError::Certificate { .. }
        | ConnectionError::BrokerCertificate { .. }
        | ConnectionError::Protocol { .. }
        | ConnectionError::Config { .. }
        | ConnectionError::Tls(_) => refused(),
        _ => Loss::Retry,
    }
}

#[cfg(test)]
mod tests {
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
}

#[cfg(test)]
mod loss_tests {
    //! Which failures are retried, which start a new session, and which stop the client.

    use super::*;

    fn refused(code: ErrorCode) -> ConnectionError {
        ConnectionError::Refused {
            code,
            reason: "because".into(),
        }
    }

    #[test]
    fn transient_failures_are_retried() {
        let transient = [
            ConnectionError::ConnectionLost {
                reason: "timed out".into(),
            },
            ConnectionError::Connect {
                reason: "unreachable".into(),
            },
            ConnectionError::Timeout("connecting to the broker"),
            ConnectionError::Resolve {
                addr: "broker:7700".into(),
                reason: "no answer".into(),
            },
            refused(ErrorCode::SERVER_SHUTTING_DOWN),
            refused(ErrorCode::TOO_MANY_CONNECTIONS),
            refused(ErrorCode::INTERNAL),
            refused(ErrorCode::HELLO_TIMEOUT),
        ];
        for error in transient {
            assert_eq!(classify(&error), Loss::Retry, "{error}");
        }
    }

    #[test]
    fn an_unknown_session_starts_a_new_one() {
        assert_eq!(
            classify(&refused(ErrorCode::SESSION_NOT_FOUND)),
            Loss::SessionLost
        );
    }

    #[test]
    fn a_session_taken_over_is_final() {
        assert_eq!(
            classify(&refused(ErrorCode::SESSION_TAKEN_OVER)),
            Loss::Final(DisconnectReason::SessionTakenOver)
        );
    }

    #[test]
    fn refusals_that_would_repeat_are_final() {
        let repeating = [
            ConnectionError::Certificate {
                reason: "expired".into(),
            },
            ConnectionError::BrokerCertificate {
                reason: "unknown CA".into(),
            },
            ConnectionError::Protocol {
                reason: "bad frame".into(),
            },
            refused(ErrorCode::UNSUPPORTED_VERSION),
            refused(ErrorCode::PROTOCOL_VIOLATION),
            refused(ErrorCode::SESSION_IDENTITY_MISMATCH),
        ];
        for error in repeating {
            assert!(
                matches!(
                    classify(&error),
                    Loss::Final(DisconnectReason::Refused { .. })
                ),
                "{error}"
            );
        }
    }

    #[test]
    fn a_normal_close_is_final() {
        assert_eq!(
            classify(&ConnectionError::Closed),
            Loss::Final(DisconnectReason::Closed)
        );
    }
}
