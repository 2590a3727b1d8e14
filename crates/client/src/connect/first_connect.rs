//! The first connection, tried again while it fails for a reason that may pass: the builder's
//! [`crate::ClientBuilder::retry_first_connect`].
//!
//! An edge device often starts before its network or its broker. With the option on, `connect`
//! keeps trying on the reconnect policy's schedule (the same backoff with full jitter and the
//! same `give_up_after`, counted from the first attempt) while [`classify`] says the failure is
//! worth another attempt (nothing listens, no answer, a broker that says "later"), and returns
//! at once on one that would only repeat (a refused certificate, a bad configuration).

use std::future::Future;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::connect::reconnect_policy::{classify, Backoff, Loss, ReconnectPolicy};
use crate::error::ConnectionError;

/// Runs `attempt` until it succeeds, fails for good, or `policy` gives up; returns the last
/// failure then.
pub(crate) async fn retried<T, Fut>(
    policy: ReconnectPolicy,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, ConnectionError>
where
    Fut: Future<Output = Result<T, ConnectionError>>,
{
    let mut backoff = Backoff::new(policy, Instant::now());
    let mut random = StdRng::from_rng(&mut rand::rng());
    loop {
        let error = match attempt().await {
            Ok(connected) => return Ok(connected),
            Err(error) => error,
        };
        if matches!(classify(&error), Loss::Final(_)) {
            return Err(error);
        }
        let Some(delay) = backoff.next_delay(Instant::now(), &mut random) else {
            return Err(error);
        };
        tracing::info!(%error, ?delay, "the first connection failed; trying again");
        tokio::time::sleep(delay).await;
    }
}
