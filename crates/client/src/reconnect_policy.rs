//! When to try again after the connection is lost: [`ReconnectPolicy`] and its backoff schedule.
//!
//! The schedule is arithmetic only: the current time and the random source are parameters, so
//! its bounds, its jitter and giving up are tested without waiting. The task that reconnects
//! ([`crate::supervisor`]) does the sleeping.

use std::time::{Duration, Instant};

use rand::Rng;

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
    /// How long to keep trying, counted from the moment the connection was lost; `None` tries
    /// forever. Default: `None`.
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

#[cfg(test)]
mod tests;
